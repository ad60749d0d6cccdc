"""train.init_from: a run starts from the weights of a training checkpoint, an HF folder or a Hub model id
(fresh optimizer, step 0), takes the model's shape from them, and resumes from its own checkpoints."""

from __future__ import annotations

import math
import re
import shutil

import pytest
import torch
from trainer_testlib import one_torch_thread, tiny_overrides, wiki_corpus

from trainer import checkpoint, distributed
from trainer.config import ConfigError, load_config
from trainer.train import Trainer, train

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


@pytest.fixture(scope="module")
def source(tmp_path_factory, shared_data):
    """A corpus, a 20-step tiny run (3 layers) and its float32 HF export."""
    from trainer.export import export_hf

    corpus = wiki_corpus(tmp_path_factory.mktemp("init"), shared_data)
    run = corpus["root"] / "source"
    shape = {"vocab_size": 512, "num_hidden_layers": 3}
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 20, "model.overrides": shape})))
    export_hf(checkpoint.load_model(run), corpus["root"] / "hf", dtype="float32")
    return {**corpus, "run": run, "hf": corpus["root"] / "hf", "weights": checkpoint.load_model(run).state_dict()}


def overrides(corpus, run_dir, **extra):
    return tiny_overrides(run_dir, corpus["root"] / "cache", corpus["tok"], [(corpus["wiki"], 1.0)], **extra)


def unstated(corpus, run_dir, **extra) -> dict:
    """Overrides that leave model.name and model.overrides unset: the shape comes from init_from."""
    cfg = overrides(corpus, run_dir, **extra)
    del cfg["model.name"], cfg["model.overrides"]
    return cfg


def trainer_for(cfg: dict) -> Trainer:
    return Trainer(load_config(None, cfg), distributed.setup("cpu"), False)


def same_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    return full.keys() == weights.keys() and all(torch.equal(full[k].cpu(), weights[k]) for k in weights)


@pytest.mark.parametrize("kind", ["run", "step", "hf"])
def test_a_run_starts_from_the_weights_with_a_fresh_optimizer(source, tmp_path, kind):
    spec = {"run": source["run"], "step": checkpoint.resolve(source["run"]), "hf": source["hf"]}[kind]
    trainer = trainer_for(unstated(source, tmp_path / "run", **{"train.init_from": str(spec)}))
    assert trainer.start == 0 and not trainer.optimizer.state
    assert trainer.model_cfg.num_hidden_layers == 3 and trainer.model_cfg.vocab_size == 512
    assert same_weights(trainer.model, source["weights"])


def test_the_first_loss_is_the_trained_models(source, tmp_path):
    """Under FSDP2 (one process on gloo) as in one process: the weights are loaded before sharding."""
    cold = train(load_config(None, overrides(source, tmp_path / "cold", **{"train.max_steps": 2})))
    runs = [train(load_config(None, unstated(source, tmp_path / name, **{"train.max_steps": 2,
                                                                          "train.init_from": str(source["run"]),
                                                                          **extra})))
            for name, extra in (("plain", {}), ("fsdp", {"distributed.strategy": "fsdp"}))]
    plain, fsdp = (r.history[0]["loss"] for r in runs)
    assert abs(cold.history[0]["loss"] - math.log(512)) < 0.3 and plain < cold.history[0]["loss"] - 0.5
    assert fsdp == pytest.approx(plain, abs=1e-5)
    meta = checkpoint.read_meta(tmp_path / "fsdp")
    assert meta["init_from"] == str(source["run"]) and meta["model_config"]["num_hidden_layers"] == 3


def test_a_conflicting_model_config_is_refused(source, tmp_path):
    stated = overrides(source, tmp_path / "run", **{"train.init_from": str(source["hf"])})  # model.name tiny: 2 layers
    with pytest.raises(ConfigError, match=rf"train.init_from {source['hf']} holds a model with num_hidden_layers=3, "
                                          r"but model.name 'tiny' with model.overrides asks for num_hidden_layers=2"):
        trainer_for(stated)
    assert same_weights(trainer_for({**stated, "model.overrides": {"vocab_size": 512, "num_hidden_layers": 3}}).model,
                        source["weights"])  # a config that repeats the shape is fine
    with pytest.raises(ConfigError, match=r"vocab_size=512, but .* asks for vocab_size=640"):
        trainer_for({**unstated(source, tmp_path / "b", **{"train.init_from": str(source["hf"])}),
                     "model.overrides": {"vocab_size": 640}})


def test_the_context_of_the_weights_may_be_extended(source, tmp_path):
    """RoPE shapes no weights: a longer data.seq_len than init_from's context is one override away, and
    neither message names a model.name the config never set (they sent the user back and forth)."""
    longer = unstated(source, tmp_path / "run", **{"train.init_from": str(source["hf"]), "data.seq_len": 512})
    with pytest.raises(ConfigError, match=rf"^data.seq_len 512 exceeds the model's context 256 \(that of train.init_from "
                                          rf"{re.escape(str(source['hf']))}\): set model.overrides."
                                          r"max_position_embeddings to at least 512"):
        trainer_for(longer)
    trainer = trainer_for({**longer, "model.overrides": {"max_position_embeddings": 512}})
    assert trainer.model_cfg.max_position_embeddings == 512 and trainer.model_cfg.num_hidden_layers == 3
    assert same_weights(trainer.model, source["weights"])
    with pytest.raises(ConfigError, match=r"holds a model with num_hidden_layers=3, but model.overrides asks for "
                                          r"num_hidden_layers=2: .*drop the shape fields of model.overrides"):
        trainer_for({**longer, "model.overrides": {"max_position_embeddings": 512, "num_hidden_layers": 2}})


@pytest.fixture(scope="module")
def other_tokenizer(source):
    """A BPE of another vocabulary (300 merges' worth, not 400) over the same corpus."""
    from trainer.tokenizer import train_tokenizer

    path = source["root"] / "tok-b.json"
    train_tokenizer(sorted((source["wiki"] / "data").glob("*.parquet")), vocab_size=300).save(str(path))
    return path


@pytest.mark.parametrize("kind", ["checkpoint", "hf with tokenizer.json"])
def test_weights_of_another_tokenizer_are_refused_unless_allowed(source, tmp_path, other_tokenizer, kind):
    """Embedding row i means token i of the tokenizer the weights learned: another data.tokenizer reads them
    as other tokens."""
    from trainer.export import export_hf
    from trainer.pretrained import InitError
    from trainer.tokenizer import load_tokenizer

    spec = source["run"]
    if kind != "checkpoint":
        spec = export_hf(checkpoint.load_model(source["run"]), tmp_path / "hf", load_tokenizer(source["tok"]))
    cfg = unstated(source, tmp_path / "run", **{"train.init_from": str(spec), "train.max_steps": 1,
                                                 "data.cache_dir": str(tmp_path / "cache")})
    assert same_weights(trainer_for(cfg).model, source["weights"])  # its own tokenizer: accepted
    other = {**cfg, "data.tokenizer": str(other_tokenizer)}
    with pytest.raises(InitError, match=rf"^train.init_from {re.escape(str(spec))} was trained with tokenizer .*"
                                        r"another vocabulary than data.tokenizer .*tok-b.json.*"
                                        r"train.init_from_tokenizer_check: false"):
        trainer_for(other)
    assert train(load_config(None, {**other, "train.init_from_tokenizer_check": False})).final_step == 1


def test_weights_that_carry_no_tokenizer_start_with_one_warning(source, tmp_path, capsys):
    trainer_for(unstated(source, tmp_path / "run", **{"train.init_from": str(source["hf"])}))
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "carries no tokenizer, so it cannot be checked" in out


def test_a_run_started_from_weights_resumes_from_its_own_checkpoints(source, tmp_path):
    """The resume reads its checkpoint, not init_from again: it works with the init source gone."""
    init = tmp_path / "init"
    shutil.copytree(source["hf"], init)
    cfg = unstated(source, tmp_path / "run", **{"train.init_from": str(init), "train.max_steps": 3})
    whole = train(load_config(None, {**cfg, "checkpoint.resume": "never"}))
    shutil.rmtree(tmp_path / "run")
    first = train(load_config(None, {**cfg, "train.max_steps": 2}))
    shutil.rmtree(init)
    resumed = train(load_config(None, cfg))
    assert resumed.start_step == 2 and {**first.losses, **resumed.losses} == whole.losses


def test_a_hub_model_id(source, tmp_path, monkeypatch):
    pytest.importorskip("aiohttp")
    import huggingface_hub.constants as hc

    from textbookgen.testing.fakehub import FakeHub

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with FakeHub() as hub:
        from huggingface_hub import HfApi

        # what HF_ENDPOINT sets when the client is imported
        monkeypatch.setattr(hc, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(hc, "HUGGINGFACE_CO_URL_TEMPLATE", hc.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}")
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("tester/phi-tiny")
        api.upload_folder(folder_path=str(source["hf"]), repo_id="tester/phi-tiny")
        trainer = trainer_for(unstated(source, tmp_path / "run", **{"train.init_from": "tester/phi-tiny"}))
        assert same_weights(trainer.model, source["weights"])
        with pytest.raises(ValueError, match="train.init_from tester/missing: no such Hub model"):
            trainer_for(unstated(source, tmp_path / "run2", **{"train.init_from": "tester/missing"}))


def test_nothing_loadable_is_one_clear_line(source, tmp_path):
    (tmp_path / "empty").mkdir()
    for spec, said in ((tmp_path / "empty", "neither an HF model folder (config.json + model.safetensors) nor a "
                                            "training checkpoint"),
                       (tmp_path / "no" / "such", "no such file or folder, and not a Hub model id")):
        with pytest.raises(ValueError, match=re.escape(f"train.init_from {spec}: {said}")):
            trainer_for(unstated(source, tmp_path / "run", **{"train.init_from": str(spec)}))

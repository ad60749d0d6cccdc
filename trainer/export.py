"""Hugging Face interop: `export_hf` writes a directory that `transformers.PhiForCausalLM.from_pretrained`
(and `AutoModelForCausalLM`, lm-eval `--model hf`) loads with no missing or unexpected keys; `load_hf`
reads such a directory (ours or microsoft/phi-1_5's HF-native format) back into our `Phi`.

Our parameter names already are HF's, so export is: unwrap (compile/DDP/FSDP2), cast, save.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer.distributed import shared_outcome
from trainer.files import load_weights, read_json
from trainer.model import Phi, PhiConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def unwrap(model: torch.nn.Module) -> Phi:
    """The `Phi` inside torch.compile (`_orig_mod`) and DDP (`module`) wrappers."""
    while not isinstance(model, Phi):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            raise TypeError(f"expected a trainer.model.Phi (possibly compiled/DDP-wrapped), got {type(model)}")
        model = inner
    return model


def hf_config(cfg: PhiConfig, dtype: str = "float32", eos_token_id: int = 50256) -> dict:
    """config.json for `PhiForCausalLM` (transformers >= 4.37 field names; v5 reads them too)."""
    return {
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_attention_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "partial_rotary_factor": cfg.partial_rotary_factor,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "layer_norm_eps": cfg.layer_norm_eps,
        "initializer_range": cfg.initializer_range,
        "hidden_act": "gelu_new",
        "qk_layernorm": False,
        "attention_dropout": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,  # transformers 4.x
        "dtype": dtype,  # transformers 5.x
    }


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file, with the mode a plain new file gets (safetensors writes 0600, which
    other users of a shared cluster cannot read)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def check_no_stale_tokenizer(out: Path) -> None:
    """Refuse to write weights without a tokenizer beside tokenizer files already there (an earlier export's):
    transformers, `generate` and `eval` would pair them with these weights, and a smaller vocabulary than the
    model's passes every check while giving the wrong ids. `train` runs it at start-up too, for the export at
    its end (checkpoint.export_hf), rather than after the whole run."""
    found = [name for name in _TOKENIZER_FILES if (out / name).is_file()]
    if found:
        raise ValueError(f"{out}: holds {', '.join(found)} from before, which loaders would pair with weights "
                         "exported without a tokenizer; export into a new folder, delete them, or export with the "
                         "tokenizer (without --no-tokenizer)")


def generation_config(eos_token_id: int) -> dict:
    """generation_config.json as transformers' `save_pretrained` writes it from config.json: written by every
    export, so that one left in the folder by another model (its eos id, sampling settings, length limits) no
    longer steers `generate()` of these weights."""
    return {"_from_model_config": True, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id}


def export_hf(model: torch.nn.Module, out_dir: str | Path, tokenizer=None, dtype: str = "float32") -> Path:
    """Write `model.safetensors` + `config.json` + `generation_config.json` (+ `tokenizer.json`/
    `tokenizer_config.json` when a `tokenizers.Tokenizer` is given) to `out_dir`. `dtype`: float32 | bfloat16 |
    float16. Under torch.distributed call it on every rank: FSDP2 (DTensor) parameters are gathered with
    `full_tensor()`, rank 0 writes, and a refusal or failure there is raised on every rank."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    phi = unwrap(model)
    tensors = {}
    for name, t in phi.state_dict().items():
        if hasattr(t, "full_tensor"):  # FSDP2 DTensor shard -> whole tensor (a collective)
            t = t.full_tensor()
        tensors[name] = t.detach().to("cpu", _DTYPES[dtype]).contiguous()
    out = Path(out_dir)
    shared_outcome(lambda: _write(phi.config, tensors, out, tokenizer, dtype))
    return out


def _write(cfg: PhiConfig, tensors: dict[str, torch.Tensor], out: Path, tokenizer, dtype: str) -> None:
    """The files of `export_hf` (rank 0's part)."""
    if tokenizer is None:
        check_no_stale_tokenizer(out)
    out.mkdir(parents=True, exist_ok=True)
    eos = 50256
    if tokenizer is not None:
        from trainer.tokenizer import EOS_TOKEN, eos_id

        eos = eos_id(tokenizer)
        _atomic_write(out / "tokenizer.json", lambda p: tokenizer.save(str(p)))
        tok_cfg = {"tokenizer_class": "CodeGenTokenizer" if eos == 50256 else "PreTrainedTokenizerFast",
                   "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
                   "add_prefix_space": False, "model_max_length": cfg.max_position_embeddings,
                   "clean_up_tokenization_spaces": False}
        _atomic_write(out / "tokenizer_config.json", lambda p: p.write_text(json.dumps(tok_cfg, indent=2)))
    _atomic_write(out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(hf_config(cfg, dtype, eos), indent=2) + "\n"))
    _atomic_write(out / "generation_config.json",
                  lambda p: p.write_text(json.dumps(generation_config(eos), indent=2) + "\n"))


def config_from_hf(hf: dict, source: str = "config.json") -> PhiConfig:
    """Our PhiConfig from an HF Phi config dict; refuses variants our model does not implement."""
    if not isinstance(hf, dict):
        raise ValueError(f"{source}: not a JSON object")
    if hf.get("model_type") != "phi":
        raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}, expected 'phi' (HF-native Phi format)")
    rope = hf.get("rope_parameters") or {}
    checks = {"qk_layernorm": (hf.get("qk_layernorm", False), False),
              "num_key_value_heads": (hf.get("num_key_value_heads") or hf.get("num_attention_heads"),
                                      hf.get("num_attention_heads")),
              "tie_word_embeddings": (hf.get("tie_word_embeddings", False), False)}
    for field, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"{source}: {field}={got!r} is not supported (phi-1.5 has {want!r})")
    if hf.get("hidden_act", "gelu_new") not in _GELU_TANH:
        raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (expected gelu_new)")
    if (hf.get("rope_scaling") or {}).get("type", (rope.get("rope_type") or "default")) != "default":
        raise ValueError(f"{source}: rope scaling is not supported")
    try:
        return PhiConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"], num_attention_heads=hf["num_attention_heads"],
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            partial_rotary_factor=rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5)),
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5), initializer_range=hf.get("initializer_range", 0.02))
    except KeyError as e:
        raise ValueError(f"{source}: missing field {e.args[0]!r}") from e


def load_hf(path: str | Path, **overrides) -> Phi:
    """Our `Phi` (fp32 parameters) from an HF Phi directory (config.json + model.safetensors, or a
    sharded `model.safetensors.index.json`). `overrides`: PhiConfig training switches, e.g. loss_chunk_size."""
    d = Path(path)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not found (expected an HF Phi directory)")
    cfg = config_from_hf(read_json(cfg_path), str(cfg_path))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    if (d / "model.safetensors").is_file():
        state = load_weights(d / "model.safetensors")
    elif (d / "model.safetensors.index.json").is_file():
        index = read_json(d / "model.safetensors.index.json")
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_weights(d / shard))
    else:
        raise FileNotFoundError(f"{d}: no model.safetensors or model.safetensors.index.json")
    with torch.device("meta"):
        model = Phi(cfg)
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{d}: weights do not fit a phi model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                         f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return model

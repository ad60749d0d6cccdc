"""Weights a run starts from (`train.init_from`) instead of a random init: an HF Phi folder (our export,
or microsoft/phi-1_5's HF-native format), a Hub model id, or one of our training checkpoints (its weights
only: the optimizer and the step start fresh). The model's shape comes from these weights, and their
tokenizer must be the run's (`check_tokenizer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer import checkpoint
from trainer.data import HUB_ID, first_line, hub_unreachable_reason, no_local_copy
from trainer.model import Phi

_HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json", "vocab.json",
              "merges.txt"]


class InitError(ValueError):
    """`train.init_from` names nothing loadable; the message names it and what was expected."""


def _locate(spec: str) -> tuple[str, Path]:
    """("hf", folder) for an HF model folder or a Hub id (downloaded), ("checkpoint", step folder) else."""
    path = Path(spec).expanduser()
    if not path.exists():
        return "hf", _download(spec)
    if (path / "config.json").is_file():
        return "hf", path
    try:
        return "checkpoint", checkpoint.resolve(path)
    except checkpoint.CheckpointError:
        raise InitError(f"train.init_from {spec}: neither an HF model folder (config.json + model.safetensors) nor "
                        f"a training checkpoint (step-*/meta.json there or under checkpoints/)") from None


def load_initial(spec: str) -> Phi:
    """A `Phi` (fp32, on the CPU) holding the weights of `spec`, with their model config."""
    from trainer.export import load_hf

    kind, path = _locate(spec)
    return _reported(spec, load_hf if kind == "hf" else checkpoint.load_model, path)


def check_tokenizer(spec: str, data_tokenizer: str, loaded: Any = None) -> str | None:
    """Refuse (InitError) init_from weights whose tokenizer has another vocabulary than data.tokenizer: each
    embedding row would stand for another token. Returns a warning when it cannot be told (the source
    carries no tokenizer, or one of the two cannot be loaded here), None when they match. `loaded`: data.tokenizer
    already loaded (the run's), so that it is not loaded twice; None: loaded here.

    The tokenizer of a training checkpoint is the data.tokenizer its meta.json records; that of an HF
    folder or Hub model its tokenizer.json or GPT-2 BPE files (vocab.json + merges.txt)."""
    from trainer.tokenizer import load_tokenizer, vocab_fingerprint

    kind, path = _locate(spec)
    theirs: Any = path
    if kind == "checkpoint":
        data = checkpoint.read_meta(path)["config"].get("data", {})
        theirs = None if data.get("synthetic") else data.get("tokenizer")
        if theirs == data_tokenizer:
            return None
    elif not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json", "merges.txt")):
        theirs = None
    if theirs is None:
        return (f"train.init_from {spec} carries no tokenizer, so it cannot be checked against data.tokenizer "
                f"{data_tokenizer!r}; make sure they are the same")
    try:
        have, want = load_tokenizer(theirs), loaded if loaded is not None else load_tokenizer(data_tokenizer)
    except (OSError, ValueError) as e:
        return f"cannot check train.init_from {spec}'s tokenizer against data.tokenizer {data_tokenizer!r}: {e}"
    if vocab_fingerprint(have) != vocab_fingerprint(want):
        raise InitError(f"train.init_from {spec} was trained with tokenizer {str(theirs)!r} ({have.get_vocab_size():,} "
                        f"tokens), another vocabulary than data.tokenizer {data_tokenizer!r} "
                        f"({want.get_vocab_size():,} tokens): its embeddings would stand for other tokens; set "
                        f"data.tokenizer to its tokenizer, or train.init_from_tokenizer_check: false to start from "
                        f"it anyway")
    return None


def _reported(spec: str, loader, path: Path) -> Phi:
    """`loader(path)`, its failures said in one line that names train.init_from."""
    try:
        return loader(path)
    except (OSError, ValueError, checkpoint.CheckpointError) as e:
        raise InitError(f"train.init_from {spec}: {e}") from e


def _download(repo_id: str) -> Path:
    """The local snapshot of a Hub model repo's config and safetensors weights (the HF cache is reused)."""
    if not HUB_ID.match(repo_id):
        raise InitError(f"train.init_from {repo_id}: no such file or folder, and not a Hub model id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except RepositoryNotFoundError as e:
        raise InitError(f"train.init_from {repo_id}: no such Hub model (or it is private){no_local_copy(repo_id)}") from e
    except LocalEntryNotFoundError as e:  # the Hub out of reach (its error is the cause), and no snapshot cached
        raise InitError(f"train.init_from {repo_id}: cannot reach the Hub ({hub_unreachable_reason(e)}) and the "
                        f"model is not in the HF cache{no_local_copy(repo_id)}: give a local folder (an HF Phi model "
                        f"folder or a training checkpoint)") from e
    except (HfHubHTTPError, OSError, ConnectionError, ValueError) as e:
        raise InitError(f"train.init_from {repo_id}: cannot download the Hub model{no_local_copy(repo_id)} "
                        f"(offline? give a local folder): {first_line(e)}") from e

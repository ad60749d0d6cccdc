"""Weights a run starts from (`train.init_from`) instead of a random init: an HF Phi folder (our export,
or microsoft/phi-1_5's HF-native format), a Hub model id, or one of our training checkpoints (its weights
only: the optimizer and the step start fresh). The model's shape comes from these weights."""

from __future__ import annotations

from pathlib import Path

from trainer import checkpoint
from trainer.data import HUB_ID
from trainer.model import Phi

_HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json"]


class InitError(ValueError):
    """`train.init_from` names nothing loadable; the message names it and what was expected."""


def load_initial(spec: str) -> Phi:
    """A `Phi` (fp32, on the CPU) holding the weights of `spec`, with their model config."""
    from trainer.export import load_hf

    path = Path(spec).expanduser()
    if not path.exists():
        return _reported(spec, load_hf, _download(spec))
    if (path / "config.json").is_file():
        return _reported(spec, load_hf, path)
    try:
        ckpt = checkpoint.resolve(path)
    except checkpoint.CheckpointError:
        raise InitError(f"train.init_from {spec}: neither an HF model folder (config.json + model.safetensors) nor "
                        f"a training checkpoint (step-*/meta.json there or under checkpoints/)") from None
    return _reported(spec, checkpoint.load_model, ckpt)


def _reported(spec: str, loader, path: Path) -> Phi:
    """`loader(path)`, its failures said in one line that names train.init_from."""
    try:
        return loader(path)
    except (OSError, ValueError, checkpoint.CheckpointError) as e:
        raise InitError(f"train.init_from {spec}: {e}") from e


def _download(repo_id: str) -> Path:
    """The local snapshot of a Hub model repo's config and safetensors weights (the HF cache is reused)."""
    if not HUB_ID.match(repo_id) or repo_id.startswith((".", "/", "~")):
        raise InitError(f"train.init_from {repo_id}: no such file or folder, and not a Hub model id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except RepositoryNotFoundError as e:
        raise InitError(f"train.init_from {repo_id}: no such Hub model (or it is private)") from e
    except (HfHubHTTPError, OSError, ConnectionError, ValueError) as e:
        raise InitError(f"train.init_from {repo_id}: cannot download the Hub model (offline? give a local "
                        f"folder): {e}") from e

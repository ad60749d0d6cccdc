"""Atomic, exactly resumable training checkpoints.

Layout under `run_dir/checkpoints/`:

    step-00000100/   meta.json (step, config, model config, data position: samples drawn, data seed and
                     fingerprint, the tokenizer's sha256), tokenizer.json (the tokenizer the weights were trained
                     with: export, generate and eval read it, and a resume is checked against it),
                     rng/rank-00000.pt, and
                     either model.pt + optim.pt (one process, DDP) or dcp/ (FSDP2, sharded, one file
                     per rank through torch.distributed.checkpoint; loads under any world size)
    latest           name of the newest complete checkpoint, or of the one a resume started from (`mark_start`)

A checkpoint is written into `step-N.tmp/`, fsynced, then renamed: a crash mid-save leaves the
previous checkpoint as `latest`. The data position is the number of samples drawn, under the data
seed (see trainer/data.py), and the learning rate is a function of the step, so model + optimizer +
step + samples + RNG is the whole state.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from trainer.data import fsync_path
from trainer.distributed import agreeing, shared_outcome
from trainer.files import load_weights, read_json

LATEST = "latest"
TOKENIZER_FILE = "tokenizer.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and current CUDA device), numpy and random, weights_only-loadable."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos,
                                                        has_gauss, gauss], "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fsync_path(Path(dirpath) / f)
        fsync_path(Path(dirpath))


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` through a fsynced temporary file: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save(root: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         meta: dict[str, Any], sharded: bool = False, keep: int | None = None, tokenizer: str | None = None) -> Path:
    """Write checkpoint `step` under `root` atomically; every rank calls it. Returns the final path.
    `tokenizer`: the run's tokenizer serialized (`Tokenizer.to_str()`), kept as tokenizer.json.
    A failure on any rank (a full disk, a folder it may not write) is raised on every rank
    (`distributed.shared_outcome`), so none waits for the others in a barrier; its partial `step-N.tmp/` is
    removed, and an OSError (ENOSPC; within DCP's CheckpointException too) is raised as one naming the checkpoint
    and what a rerun resumes from."""
    from trainer.distributed import shared_outcome

    root = Path(root)
    final, tmp = root / step_dir_name(step), root / (step_dir_name(step) + ".tmp")
    try:
        shared_outcome(lambda: _make_tmp(tmp))
        model_sd, optim_sd = get_state_dict(model, optimizer)
        shared_outcome(lambda: _write_states(tmp, model_sd, optim_sd, sharded), every=True)
        shared_outcome(lambda: _commit(root, tmp, final, {**meta, "step": step}, sharded, keep, tokenizer))
    except (CheckpointException, Exception) as e:  # DCP's is a BaseException; every rank alike (shared_outcome)
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        unwritten = _unwritten(e, root, final)
        if unwritten is None:
            raise
        raise unwritten from e
    return final


def _write_error(e: BaseException) -> OSError | None:
    """The OSError under a failed save: `e` itself, the first failing rank's within DCP's CheckpointException, or
    the context of torch.save's `RuntimeError: ... unexpected pos` (its writer into a Python stream); else None."""
    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError):
        e = e.__context__
    return e if isinstance(e, OSError) else None


def _unwritten(e: BaseException, root: Path, final: Path) -> OSError | None:
    """A failed save's OSError as one line naming the checkpoint, what became of it and what a rerun resumes from
    (None: not a write failure); marked `every_rank` as `e` is, so the CLI prints it once. A full disk names the
    checkpoint; another error (a folder it may not write) the path that failed, which the checkpoint's name
    would hide."""
    cause = _write_error(e)
    if cause is None:
        return None
    previous = find_latest(root)
    resume = f"from {previous.name}" if previous is not None else "(no earlier checkpoint: it starts over)"
    full = cause.errno in (errno.ENOSPC, errno.EDQUOT)
    path = str(final) if full or cause.filename is None else str(cause.filename)
    named = "" if path == str(final) else f" {final.name}"
    if getattr(cause, "renamed", False):
        marked = (root / LATEST).is_file() and (root / LATEST).read_text().strip() == final.name
        state = f"checkpoint{named} written{'' if marked else ', but not marked latest'}"
    else:
        state = f"checkpoint{named} not written (its partial {final.name}.tmp/ removed)"
    error = OSError(cause.errno, f"{cause.strerror or cause}; {state}: {'free space' if full else 'fix that'}, then "
                                 f"run the same command again to resume {resume}", path)
    error.every_rank = getattr(e, "every_rank", False)  # type: ignore[attr-defined]
    return error


def _make_tmp(tmp: Path) -> None:
    """Rank 0: an empty `step-N.tmp/rng/` for the ranks to write into (a crashed save's leftovers removed)."""
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "rng").mkdir(parents=True)


def _write_states(tmp: Path, model_sd: dict[str, Any], optim_sd: dict[str, Any], sharded: bool) -> None:
    """Every rank: its DCP shard (FSDP2) or, on rank 0, the whole model.pt + optim.pt; and its RNG state."""
    rank = _rank()
    if sharded:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    elif rank == 0:
        _save_file(model_sd, tmp / "model.pt")
        _save_file(optim_sd, tmp / "optim.pt")
    _save_file(rng_state(), tmp / "rng" / f"rank-{rank:05d}.pt")


def _save_file(obj: Any, path: Path) -> None:
    """`torch.save` through a Python file, a failed write raised as its OSError (ENOSPC) naming `path`: torch's
    own file writer loses the errno (`RuntimeError: ... unexpected pos 4992 vs 4886`); through a Python file the
    OSError is the context of that RuntimeError."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:
        cause = e.__context__
        if not isinstance(cause, OSError):
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from e


def _commit(root: Path, tmp: Path, final: Path, meta: dict[str, Any], sharded: bool, keep: int | None,
            tokenizer: str | None) -> None:
    """Rank 0: meta.json (+ tokenizer.json), fsync, rename `tmp` to `final`, point `latest` at it, prune."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    info = {**meta, "format": "dcp" if sharded else "torch", "world_size": world,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if tokenizer is not None:
        (tmp / TOKENIZER_FILE).write_text(tokenizer, encoding="utf-8")
        info["tokenizer_sha256"] = hashlib.sha256(tokenizer.encode()).hexdigest()
    (tmp / "meta.json").write_text(json.dumps(info, indent=2))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    try:
        write_atomic(root / LATEST, final.name + "\n")
        fsync_path(root)
        if keep:
            _prune(root, final, keep)
    except OSError as e:
        e.renamed = True  # type: ignore[attr-defined]  # the checkpoint is complete: `_unwritten` says so
        raise


def _prune(root: Path, newest: Path, keep: int) -> None:
    """Delete the checkpoints before `newest` that exceed `keep` (`newest` counts, and is never deleted).

    Later steps are left alone: they are not this run's history but a branch it was restarted before
    (--resume from an earlier step); `latest` names `newest`, and the run overwrites them as it gets there."""
    older = [p for p in list_checkpoints(root) if p.name < newest.name]  # zero-padded names sort by step
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def mark_start(root: str | Path, ckpt: Path | None) -> None:
    """Name checkpoint `ckpt`, which a run has just resumed from, as `root`'s `latest` (its path where it lies
    elsewhere), or none on a fresh start: a rerun after a crash before the run's first save goes on from where
    this start did, not from a later checkpoint of a branch that the resume abandoned, nor (for another run's
    checkpoint) from scratch, nor (after a fresh start) from the checkpoint an earlier start resumed from."""
    root = Path(root)
    if ckpt is None:
        (root / LATEST).unlink(missing_ok=True)
    elif find_latest(root) != ckpt:
        root.mkdir(parents=True, exist_ok=True)
        name = ckpt.name if ckpt.parent.resolve() == root.resolve() else str(ckpt.resolve())
        write_atomic(root / LATEST, name + "\n")


def check_fresh_start(root: str | Path) -> None:
    """Refuse a fresh start (resume=never) beside another run's checkpoints: pruning would mix the two,
    and a later auto-resume could continue the other run instead of this one."""
    found = list_checkpoints(root)
    if found:
        raise CheckpointError(
            f"checkpoint.resume is 'never' but {root} holds checkpoints of an earlier run (newest "
            f"{found[-1].name}): train in another run_dir (--run-dir), move or delete {root}, or continue "
            f"that run (--resume auto)")


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root (those with meta.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / "meta.json").is_file())


def find_latest(root: str | Path) -> Path | None:
    """The checkpoint named by `latest`, else the newest complete one; None when there is none."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "meta.json").is_file():
            return cand
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from itself, a checkpoints root, or a run directory."""
    p = Path(path)
    if (p / "meta.json").is_file():
        return p
    for root in (p, p / "checkpoints"):
        found = find_latest(root)
        if found is not None:
            return found
    if (p / "config.json").is_file() and any(p.glob("model*.safetensors*")):
        raise CheckpointError(f"{p}: an HF model folder (config.json + model.safetensors), not a training checkpoint "
                              f"(expected step-*/meta.json there or under checkpoints/); it is already in exported "
                              f"form (generate and eval read it; train.init_from starts a run from it)")
    if (p / "model.safetensors").is_file():
        raise CheckpointError(f"{p / 'config.json'}: missing (an exported model folder needs it)")
    raise CheckpointError(f"no checkpoint at {p} (expected step-*/meta.json there or under checkpoints/)")


_META_KEYS = ("format", "config", "model_config")


def read_meta(path: str | Path) -> dict[str, Any]:
    """The meta.json of the checkpoint at `path`, checked for the keys loading needs."""
    file = resolve(path) / "meta.json"
    meta = read_json(file)
    missing = [k for k in _META_KEYS if k not in meta] if isinstance(meta, dict) else list(_META_KEYS)
    if missing:
        raise CheckpointError(f"{file}: missing {', '.join(missing)} (not a complete checkpoint)")
    return meta


def _unexpected_keys(state: dict[str, Any], ckpt: Path) -> list[str]:
    """Weights and optimizer state in the sharded checkpoint that `state` has no place for: `dcp.load` fills
    only the keys it is asked for, so a checkpoint of a bigger model would otherwise load into a smaller one.
    Optimizer hyperparameters (param_groups) are left out: a newer torch may record more of them."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    saved = FileSystemReader(str(ckpt / "dcp")).read_metadata().state_dict_metadata
    wanted = flatten_state_dict(state)[0]
    prefixes = tuple(f"{k}." for k in state if k == "model") + (("optim.state.",) if "optim" in state else ())
    return sorted(k for k in saved if k.startswith(prefixes) and k not in wanted)


def _check_keys(state: dict[str, Any], ckpt: Path) -> None:
    """Refuse a sharded checkpoint that holds weights or optimizer state `state` has no place for
    (`_unexpected_keys`), or whose metadata cannot be read."""
    try:
        extra = _unexpected_keys(state, ckpt)
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{ckpt / 'dcp'}: the sharded checkpoint is damaged or incomplete "
                              f"({type(e).__name__}: {e})") from None
    if extra:
        shown = ", ".join(extra[:5]) + (f", ... ({len(extra)} in all)" if len(extra) > 5 else "")
        raise CheckpointError(f"{ckpt}: does not fit the model/optimizer: unexpected key(s) in the checkpoint: {shown}")


def _dcp_load(state: dict[str, Any], ckpt: Path) -> None:
    """`dcp.load` into `state`, its failures said in one line: a damaged or incomplete folder, or a
    checkpoint of another model. DCP wraps each rank's error in a CheckpointException (a BaseException), the same
    on every rank. The keys are checked first by rank 0 alone, its refusal raised on every rank (`shared_outcome`;
    the ranks' states have the same keys): each rank reading the metadata itself let one whose read failed (or whose
    node's copy differs) raise while the others went on into `dcp.load`'s collectives, waiting for it.
    Inside a rank-agreement (`distributed.agreeing`: train.init_from's load, by rank 0 alone) the rank loads the whole
    of `state` alone, with no collective, which would pair with those of a rank that failed before it got here."""
    shared_outcome(lambda: _check_keys(state, ckpt), every=agreeing())  # loading alone, each rank checks its copy
    try:
        with warnings.catch_warnings():  # loading a sharded checkpoint into one process is intended here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(ckpt / "dcp"), no_dist=agreeing())
    except (CheckpointException, Exception) as e:
        cause = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) else e
        if isinstance(cause, (OSError, EOFError, pickle.UnpicklingError, AssertionError)):
            parts = [p.strip() for p in str(cause).split(";") if p.strip()]  # DCP joins its reasons
            first = next((p for p in parts if p.startswith("global metadata")), parts[0] if parts else "truncated")
            raise CheckpointError(f"{ckpt / 'dcp'}: the sharded checkpoint is damaged or incomplete "
                                  f"({type(cause).__name__}: {first})") from None
        raise CheckpointError(f"{ckpt}: does not fit the model/optimizer: {cause}") from None


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         resume: bool = False) -> dict[str, Any]:
    """Restore model (and optimizer) from a checkpoint in either format; returns its meta. A training `resume`
    restores each rank's RNG state too, and is called by every rank of a process group: each reads its node's
    files, and a read failing on one rank is raised on all (the others would wait for it in the next collective)."""
    ckpt = resolve(path)
    meta = read_meta(ckpt)
    if meta["format"] == "dcp":
        model_sd, optim_sd = (get_state_dict(model, optimizer) if optimizer is not None
                              else (get_model_state_dict(model), None))
        state = {"model": model_sd} | ({"optim": optim_sd} if optimizer is not None else {})
        _dcp_load(state, ckpt)
        model_sd, optim_sd = state["model"], state.get("optim")
        opts = StateDictOptions(strict=True)
    else:
        def read() -> tuple[Any, Any]:  # mmap: ranks of one node share the page cache, not a copy each in RAM
            return (load_weights(ckpt / "model.pt", mmap=True),
                    load_weights(ckpt / "optim.pt", mmap=True) if optimizer else None)

        model_sd, optim_sd = shared_outcome(read, every=True) if resume else read()
        opts = StateDictOptions(full_state_dict=True, strict=True)
    try:
        if optimizer is not None:
            set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=opts)
        else:
            from torch.distributed.checkpoint.state_dict import set_model_state_dict

            set_model_state_dict(model, model_sd, options=opts)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: does not fit the model/optimizer: {e}") from e
    if resume:
        shared_outcome(lambda: _restore_rng(ckpt / "rng" / f"rank-{_rank():05d}.pt"), every=True)
    return meta


def _restore_rng(file: Path) -> None:
    """This rank's RNG state from `file`, where there is one (a resume under another world size may find none);
    a damaged file is named."""
    if not file.is_file():
        return
    try:
        set_rng_state(torch.load(file, weights_only=True))
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: damaged or unreadable RNG state ({type(e).__name__}: {e})") from e


def tokenizer_sha256(tok: Any) -> str:
    """sha256 of a `tokenizers.Tokenizer`'s serialization: the same for the same tokenizer whatever it was
    loaded from (a tokenizer.json, GPT-2's BPE files), and what a checkpoint records of its tokenizer.json."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def pinned_tokenizer(path: str | Path) -> Any:
    """The tokenizer kept with a training checkpoint, checked against the sha256 its meta.json records; None
    for a checkpoint that kept none (from before checkpoints did, or of a run on synthetic data)."""
    ckpt = resolve(path)
    sha = read_meta(ckpt).get("tokenizer_sha256")
    if sha is None:
        return None
    file = ckpt / TOKENIZER_FILE
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing (meta.json records the tokenizer the weights were trained with, "
                              f"sha256 {sha[:12]})") from None
    if hashlib.sha256(text).hexdigest() != sha:
        raise CheckpointError(f"{file}: not the tokenizer meta.json records (sha256 {sha[:12]}, the file's "
                              f"{hashlib.sha256(text).hexdigest()[:12]}): damaged or replaced")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text.decode("utf-8"))
    except Exception as e:  # tokenizers raises plain Exception on a JSON it cannot read
        raise CheckpointError(f"{file}: cannot read the tokenizer ({e})") from e


def tokenizer_for(path: str | Path, spec: str | Path | None) -> Any:
    """The tokenizer to read a training checkpoint with: the one kept with it, which `spec` (an explicit
    --tokenizer) must equal (by `tokenizer_sha256`): other ids would not be the weights'. None where the
    checkpoint kept none: the caller goes by `spec` or the config's data.tokenizer."""
    ckpt = resolve(path)
    pinned = pinned_tokenizer(ckpt)
    if pinned is None or spec is None:
        return pinned
    from trainer.tokenizer import load_tokenizer

    given = load_tokenizer(spec)
    if tokenizer_sha256(given) != tokenizer_sha256(pinned):
        raise ValueError(f"--tokenizer {spec}: not the tokenizer {ckpt} was trained with ({ckpt / TOKENIZER_FILE}, "
                         f"{pinned.get_vocab_size():,} tokens; this one {given.get_vocab_size():,}): its ids would not "
                         f"be the weights'; leave out --tokenizer to use the saved one")
    return pinned


def check_vocab(tokens: int, vocab_size: int, what: str) -> None:
    """Refuse a tokenizer with more tokens than the model has embedding rows: its ids past them index nothing
    (a broken export, an IndexError mid-generation)."""
    if tokens > vocab_size:
        raise ValueError(f"{what} has {tokens:,} tokens but the model only {vocab_size:,} (its vocab_size): not "
                         f"the tokenizer it was trained with; give that one")


def saved_tokenizer(path: str | Path) -> str:
    """The `data.tokenizer` a training checkpoint was made with; a ValueError where its config has none."""
    ckpt = resolve(path)
    spec = (read_meta(ckpt)["config"].get("data") or {}).get("tokenizer")
    if not spec:
        raise ValueError(f"{ckpt}: no data.tokenizer in the checkpoint's config; pass --tokenizer")
    return str(spec)


def saved_model_config(meta: dict[str, Any], **overrides):
    """The `PhiConfig` a checkpoint's meta records (with `overrides`); fields this code does not know are
    left out: a checkpoint may predate or outlive a switch."""
    from trainer.model import PhiConfig

    known = {f.name for f in dataclasses.fields(PhiConfig)}
    return PhiConfig(**{k: v for k, v in {**meta["model_config"], **overrides}.items() if k in known})


def load_model(path: str | Path, device: str = "cpu", **overrides) -> torch.nn.Module:
    """A `Phi` rebuilt from a training checkpoint's saved model config and weights (for export,
    generate, eval). `overrides`: PhiConfig training switches such as loss_chunk_size."""
    from trainer.model import Phi

    ckpt = resolve(path)
    cfg = saved_model_config(read_meta(ckpt), **overrides)
    with torch.device("meta"):
        model = Phi(cfg)
    model.to_empty(device=device)
    load(ckpt, model, optimizer=None)
    return model.eval()

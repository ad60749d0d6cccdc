"""The training loop: data by step, bf16 autocast over fp32 master weights, AdamW, accumulation,
clipping, atomic checkpoints, exact resume, validation loss (trainer/validate.py), metrics (JSONL,
TensorBoard, PNG) and MFU.

`train(cfg)` runs one process of a (possibly torchrun-launched) job; see trainer/distributed.py.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import itertools
import json
import math
import os
import platform
import signal
import sys
import threading
import time
import traceback
import typing
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer import checkpoint, distributed
from trainer.config import ConfigError, TrainConfig, dump_config
from trainer.data import (
    INDEX_NAME,
    BatchPlan,
    DataError,
    Holdout,
    Loader,
    MixtureSampler,
    SyntheticSampler,
    TokenStream,
    index_is_current,
    local_source,
    prepare,
    read_index,
    resolve_source,
)
from trainer.files import FileFormatError
from trainer.model import CONFIGS, Phi, PhiConfig, attention_kernel
from trainer.tokenizer import GIVE_TOKENIZER, load_tokenizer
from trainer.validate import Validator, ValSet

# dense bf16 peak per device (data sheets), for MFU; the first name found in the device's wins, so the PCIe and NVL
# H100s (lower clocks and power) come before the SXM one that "H100" alone means
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0,
               "A100": 312.0, "A800": 312.0, "L40S": 362.0, "A10G": 125.0}


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; training stops instead of learning from garbage."""


class RunDirBusy(BlockingIOError):
    """Another `train` holds the run folder: two runs into one interleave metrics.jsonl and overwrite each
    other's checkpoints."""


class NothingToTrain(Exception):
    """The resumed checkpoint is already at (or past) the step the run stops at; `step` is its step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class TrainResult:
    run_dir: Path
    start_step: int
    final_step: int
    stop_reason: str
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def losses(self) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.history}

    @property
    def val_losses(self) -> dict[int, float]:
        return {r["step"]: r["val_loss"] for r in self.history if "val_loss" in r}


# ----------------------------------------------------------------------------- pieces


# PhiConfig fields that do not shape the weights (training switches); all others come from init_from's weights
_SWITCHES = ("loss_chunk_size", "activation_checkpointing", "attn_impl", "fuse_projections", "fuse_out")
# the context: rotary positions shape no weights, so model.overrides may extend init_from's
_CONTEXT = "max_position_embeddings"


def model_config(cfg: TrainConfig, weights: PhiConfig | None = None, origin: str = "") -> PhiConfig:
    """The preset named by model.name with overrides and training switches applied, checked.

    `weights`: the model config of the weights the run starts from (train.init_from, or the checkpoint a
    run started from them resumes; `origin` names it). The shape is theirs; an explicit model.name or
    shape override that differs is an error, not a silently other model. The context
    (max_position_embeddings) is theirs unless model.overrides sets it: RoPE extends to any length."""
    m = cfg.model
    if m.name not in CONFIGS:
        raise ConfigError(f"model.name: unknown model {m.name!r} (known: {sorted(CONFIGS)})")
    fields = {f.name for f in dataclasses.fields(PhiConfig)}
    bad = sorted(set(m.overrides) - fields)
    if bad:
        raise ConfigError(f"model.overrides: {bad} are not PhiConfig fields (fields: {sorted(fields)})")
    changes = dict(_typed_overrides(m.overrides), activation_checkpointing=m.activation_checkpointing,
                   attn_impl=m.attn_impl)
    if m.loss_chunk_size is not None:
        changes["loss_chunk_size"] = m.loss_chunk_size
    try:
        pc = dataclasses.replace(CONFIGS[m.name], **changes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from e
    if weights is not None:
        pc = dataclasses.replace(pc, **_shape_of(weights, pc, cfg, origin))
    if cfg.data.seq_len > pc.max_position_embeddings:
        if _CONTEXT in m.overrides:
            whose = f"model.overrides.{_CONTEXT}"
        elif weights is not None:
            whose = f"that of {origin}"
        else:
            whose = f"model.name {m.name!r}" if "name" in m.model_fields_set else f"the default model {m.name!r}"
        raise ConfigError(f"data.seq_len {cfg.data.seq_len} exceeds the model's context {pc.max_position_embeddings} "
                          f"({whose}): set model.overrides.{_CONTEXT} to at least {cfg.data.seq_len} (rotary "
                          f"positions, no weights change) or lower data.seq_len")
    return pc


def _typed_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """model.overrides as PhiConfig's field types: YAML 1.1 reads `1e-5` (no dot) as a string, and a float
    layer count must not reach torch as a traceback; a value that does not convert names its field."""
    from pydantic import TypeAdapter, ValidationError

    hints = typing.get_type_hints(PhiConfig)
    out = {}
    for key, value in overrides.items():
        try:
            out[key] = TypeAdapter(hints[key]).validate_python(value)
        except ValidationError as e:
            raise ConfigError(f"model.overrides.{key}={value!r}: {e.errors()[0]['msg']}") from None
    return out


def _shape_fields() -> list[str]:
    """The PhiConfig fields that make the model the weights are for: not the switches or the context."""
    return [f.name for f in dataclasses.fields(PhiConfig) if f.name not in (*_SWITCHES, _CONTEXT)]


def _shape_of(weights: PhiConfig, asked: PhiConfig, cfg: TrainConfig, origin: str) -> dict[str, Any]:
    """The shape fields of `weights`, checked against those the config states: all of the preset's when
    model.name is set explicitly, else the shape fields in model.overrides (initializer_range is moot).
    The context comes from model.overrides when it sets one, else from the weights."""
    shape = _shape_fields()
    m = cfg.model
    by_name = "name" in m.model_fields_set
    stated = shape if by_name else [k for k in m.overrides if k in shape]
    differ = [k for k in stated if k != "initializer_range" and getattr(asked, k) != getattr(weights, k)]
    if differ:
        have = ", ".join(f"{k}={getattr(weights, k)!r}" for k in differ)
        want = ", ".join(f"{k}={getattr(asked, k)!r}" for k in differ)
        who = (f"model.name {m.name!r}{' with model.overrides' if m.overrides else ''}" if by_name
               else "model.overrides")
        raise ConfigError(f"{origin} holds a model with {have}, but {who} asks for {want}: the model comes from "
                          f"the weights; drop {'model.name and ' if by_name else ''}the shape fields of "
                          f"model.overrides, or make them match ({_CONTEXT} may differ)")
    context = {_CONTEXT: m.overrides.get(_CONTEXT, getattr(weights, _CONTEXT))}
    return {k: getattr(weights, k) for k in shape} | context


def lr_at(step: float, cfg: TrainConfig, end: float | None = None) -> float:
    """Learning rate at schedule position `step` (0-based optimizer steps; see `Trainer.schedule_position`)
    of a schedule that ends at `end` (default cfg.max_steps): a pure function, so resume needs no state."""
    s, base = cfg.schedule, cfg.optim.lr
    if step < s.warmup_steps:
        return base * (step + 1) / s.warmup_steps
    if s.kind == "constant":
        return base
    span = s.decay_steps or max(1, (cfg.max_steps if end is None else end) - s.warmup_steps)
    frac = min(1.0, (step - s.warmup_steps) / span)
    if s.kind == "cosine":
        return s.min_lr + (base - s.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    return base + (s.min_lr - base) * frac


def make_optimizer(model: Phi, cfg: TrainConfig, device: str) -> torch.optim.AdamW:
    """AdamW; weight decay on >=2-D weights only (not biases, not LayerNorms); fused kernel on CUDA."""
    o = cfg.optim
    fused = o.fused == "on" or (o.fused == "auto" and device.startswith("cuda"))
    return torch.optim.AdamW(model.param_groups(o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps,
                             fused=fused or None)


def apply_optim_config(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> list[str]:
    """Put the config's weight decay, betas and eps back after a resume (loading the optimizer's state
    restores the checkpoint's); returns what changed, e.g. ["betas (0.9, 0.98) -> (0.9, 0.95)"]. The
    groups are `Phi.param_groups`' (decayed first); lr follows the schedule every step anyway."""
    o, changed = cfg.optim, []
    for i, group in enumerate(optimizer.param_groups):
        wanted = {"weight_decay": o.weight_decay if i == 0 else 0.0, "betas": tuple(o.betas), "eps": o.eps}
        for key, value in wanted.items():
            old = tuple(group[key]) if key == "betas" else group[key]
            if old != value:
                changed.append(f"{key} {old} -> {value}")
                group[key] = value
    return list(dict.fromkeys(changed))


def peak_flops(device: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, tf in PEAK_TFLOPS.items():
        if key in name:
            return tf * 1e12
    return None


def dataset_dir(cfg: TrainConfig, i: int) -> Path:
    return Path(cfg.data.cache_dir) / cfg.data.datasets[i].cache_name


def val_dir(cfg: TrainConfig, i: int) -> Path:
    """Where dataset i's val_split is prepared: beside its training split."""
    ds = cfg.data.datasets[i]
    return Path(cfg.data.cache_dir) / f"{ds.cache_name}.{ds.val_split}"


@dataclass(frozen=True)
class DataPart:
    """One prepared folder of a dataset: its training split (with any holdout) or its val_split."""

    dataset: int
    folder: Path
    split: str
    holdout: Holdout


def _parts(cfg: TrainConfig, i: int) -> list[DataPart]:
    ds = cfg.data.datasets[i]
    parts = [DataPart(i, dataset_dir(cfg, i), ds.split, ds.holdout)]
    if ds.val_split:
        _check_val_split(cfg, i)
        parts.append(DataPart(i, val_dir(cfg, i), ds.val_split, Holdout()))
    return parts


def _check_val_split(cfg: TrainConfig, i: int, hub: bool = False) -> None:
    """A local source's files must name dataset i's val_split (a single file or unnamed files would make the
    validation set a copy of the training data); checked before any prepared copy is trusted. A Hub source
    (`hub`) is checked by `prepare_all` before it tokenizes any split of it: its snapshot is downloaded then
    anyway, and a missing val_split found after the training split cost that tokenizing (and replaced it)."""
    ds = cfg.data.datasets[i]
    if (local_source(ds.source) is None) != hub:
        return
    try:
        resolve_source(ds.source, ds.val_split, ds.revision, ds.endpoint, named=True, subset=ds.subset)
    except DataError as e:
        raise DataError(f"data.datasets.{i}.val_split {ds.val_split!r}: {e}") from None


def to_bf16_matrices(model: torch.nn.Module) -> None:
    """Pure bf16 (`train.precision: bf16`): the weight matrices are stored in bf16, and the LayerNorm gains
    and biases stay fp32 (autocast casts them where a matmul needs it). A gain near 1.0 has a bf16 step of
    2^-7, so an Adam update of lr 2e-4 would round away every step and the norms would never train."""
    for p in model.parameters():
        if p.ndim >= 2:
            p.data = p.data.to(torch.bfloat16)


def stale_datasets(cfg: TrainConfig) -> list[int]:
    """Numbers of the datasets whose tokenized copy (or that of their val_split) is missing or was made from
    another source, subset, split, revision, local files (by size and mtime), column, tokenizer or holdout:
    those would train on the wrong ids, or on documents meant for validation. A Hub source's new commits are
    not seen here (no network at start-up); `python -m trainer prepare` sees them."""
    return sorted({p.dataset for p in stale_parts(cfg)})


def stale_parts(cfg: TrainConfig, load: Callable[[str], Any] | None = None) -> list[DataPart]:
    """The prepared folders that `stale_datasets` finds missing or out of date, to pass to `prepare_all`.
    `load`: data.tokenizer (None where it cannot be loaded) from its spec; `_tokenizer_or_none` by default."""
    spec = cfg.data.tokenizer
    parts = [p for i in range(len(cfg.data.datasets)) for p in _parts(cfg, i)]
    prepared = [p for p in parts if (p.folder / INDEX_NAME).is_file()]
    stale = [p for p in parts if p not in prepared]
    tokenizer = (load or _tokenizer_or_none)(spec) if prepared else None  # a missing dataset is named before this
    for p in prepared:
        ds = cfg.data.datasets[p.dataset]
        if tokenizer is None:
            _check_recorded_tokenizer(p.folder, spec)
        if not index_is_current(p.folder, ds.source, tokenizer, split=p.split, column=ds.column,
                                revision=ds.revision, holdout=p.holdout, subset=ds.subset):
            stale.append(p)
    return stale


def _tokenizer_or_none(spec: str) -> Any:
    """The tokenizer, or None where it cannot be loaded (an offline node with the data prepared elsewhere):
    training then goes by the tokenizer the index records, with a warning, rather than refusing to start."""
    try:
        return load_tokenizer(spec)
    except ValueError as e:  # the Hub out of reach, say; a tokenizer path that does not exist still fails
        warnings.warn(f"cannot load tokenizer {spec!r} to check the prepared data against it ({e}); "
                      "going by the tokenizer the prepared data records", stacklevel=2)
        return None


def _check_recorded_tokenizer(folder: Path, spec: str) -> None:
    """Data prepared with another tokenizer than data.tokenizer, which cannot be loaded here to prepare it
    again, is an error: training on it would learn the wrong ids."""
    recorded = read_index(folder).get("tokenizer")
    if recorded != str(spec):
        raise DataError(f"{folder} was tokenized with {recorded or 'an unrecorded tokenizer'!r}, but data.tokenizer "
                        f"is {spec!r}, which cannot be loaded here to tokenize again; make it reachable (a local "
                        f"folder or file) or set data.tokenizer to the one the data was prepared with")


def prepare_all(cfg: TrainConfig, force: bool = False, progress: bool = True,
                stale: Collection[DataPart] | None = None) -> list[dict[str, Any]]:
    """Tokenize every dataset of the config (and its val_split) into data.cache_dir, skipping those up to
    date; returns the index of each dataset's training split.

    `stale`: the parts `stale_parts` found out of date (training start-up, which has just checked): only those
    are prepared, and the others' indexes are trusted instead of hashing their source files again (and a Hub
    source's without downloading it). None: every part is checked by hashing its sources."""
    indexes = []
    for i, ds in enumerate(cfg.data.datasets):
        if ds.val_split and (stale is None or any(p.dataset == i for p in stale)):
            _check_val_split(cfg, i, hub=True)
        for part in _parts(cfg, i):
            is_val = part.folder != dataset_dir(cfg, i)
            if stale is not None and part not in stale:
                index = read_index(part.folder)
            else:
                try:
                    index = prepare(ds.source, part.folder, cfg.data.tokenizer, split=part.split, column=ds.column,
                                    revision=ds.revision, endpoint=ds.endpoint, num_workers=cfg.data.prepare_workers,
                                    force=force, progress=progress, holdout=part.holdout, named=is_val,
                                    subset=ds.subset)
                except DataError as e:
                    if is_val:  # say which setting asked for this split
                        raise DataError(f"data.datasets.{i}.val_split {part.split!r}: {e}") from e
                    raise
            if not is_val:
                indexes.append(index)
    return indexes


def build_sampler(cfg: TrainConfig, vocab_size: int, info: distributed.DistInfo, progress: bool,
                  resumed: dict[str, Any] | None = None, samples: int = 0):
    """The sample source and a fingerprint of the data it draws from (checked on resume), the data prepared first
    where stale (`prepare_stale`): for one process (a notebook, a test). The Trainer calls the two apart, each rank's
    own reads (`open_sampler`) agreed on by every rank. `resumed`: the meta of the checkpoint the run goes on from,
    having drawn `samples` (see `mix_start`)."""
    prepare_stale(cfg, info, progress)
    return open_sampler(cfg, vocab_size, resumed, samples)


def prepare_stale(cfg: TrainConfig, info: distributed.DistInfo, progress: bool) -> None:
    """Prepare the datasets that are missing or out of date (on several processes: refused, `_stale_on_any_rank`)."""
    if not cfg.data.synthetic:
        stale = _stale_on_any_rank(cfg, info)
        if stale:
            prepare_all(cfg, progress=progress, stale=stale)


def open_sampler(cfg: TrainConfig, vocab_size: int, resumed: dict[str, Any] | None = None, samples: int = 0):
    """`build_sampler`'s sample source and fingerprint over the prepared data as it is: this rank's reads alone."""
    d = cfg.data
    if d.synthetic:
        return SyntheticSampler(vocab_size, d.seq_len, cfg.train.seed), "synthetic"
    streams = [TokenStream(dataset_dir(cfg, i)) for i in range(len(d.datasets))]
    for i, (ds, s) in enumerate(zip(d.datasets, streams, strict=True)):
        if s.index["vocab_size"] > vocab_size:
            raise ConfigError(f"dataset {ds.source}: tokenizer has {s.index['vocab_size']} tokens but the model "
                              f"only {vocab_size} (model.overrides.vocab_size)")
        if "holdout" in s.index and len(s) < 2 * d.seq_len + 1:
            raise ConfigError(f"data.datasets.{i}.{ds.holdout_setting}: holds out {s.index['holdout']['tokens']:,} of "
                              f"{ds.source}'s {s.index['total_tokens']:,} tokens, leaving {len(s):,} to train on "
                              f"(need at least {2 * d.seq_len + 1}); hold out less")
    key = [[s.index["key"], ds.weight] for ds, s in zip(d.datasets, streams, strict=True)] + [d.seq_len, d.mix_block]
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    names = [ds.cache_name for ds in d.datasets]
    start, offsets = mix_start(resumed, fingerprint, names, samples)
    sampler = MixtureSampler(streams, [ds.weight for ds in d.datasets], d.seq_len, cfg.train.seed,
                             d.mix_block, names=names, start=start, offsets=offsets)
    return sampler, fingerprint


def _stale_on_any_rank(cfg: TrainConfig, info: distributed.DistInfo) -> list[DataPart]:
    """`stale_parts` on one process. On several, data missing or out of date on any rank is refused on every rank
    (`prepare` first: the others would time out waiting): each rank judges the copy it reads (data.cache_dir may be
    a node's own disk), by the tokenizer rank 0 loaded and sent (a Hub load failing on one rank alone judged that
    rank's data by another rule)."""
    if not info.enabled:
        return stale_parts(cfg)
    tokenizer = distributed.from_rank_0(lambda: _tokenizer_or_none(cfg.data.tokenizer))
    mine = distributed.shared_outcome(lambda: stale_parts(cfg, lambda spec: tokenizer), every=True) or []
    found = distributed.gathered(sorted({p.dataset for p in mine}))
    datasets = sorted({i for each in found for i in each})
    if datasets:
        ranks = [rank for rank, each in enumerate(found) if each]
        where = "" if len(ranks) == len(found) else f" on rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}"
        pending = [cfg.data.datasets[i].source for i in datasets]
        raise DataError(f"tokenized data missing or out of date for {pending}{where}: run `python -m trainer prepare "
                        f"-c CONFIG` before a multi-process run (the other ranks would time out waiting), on each "
                        f"node whose data.cache_dir is its own")
    return []


def mix_start(resumed: dict[str, Any] | None, fingerprint: str, names: list[str],
              samples: int) -> tuple[int, list[int]]:
    """(sample, windows drawn of each dataset) the mix of a run that goes on from checkpoint meta `resumed`
    starts at. The same data and weights: where the saved run's mix started, so the run reads what one never
    stopped would. Another mix (weights changed, a dataset added): the checkpoint's `samples`, each dataset
    going on from the windows it drew (by name; a new one from its first), not from `block x its new quota`,
    which read again what a shrunk share had trained on and skipped windows of a grown one. A checkpoint
    from before this was recorded: sample 0, as then."""
    saved = (resumed or {}).get("mix")
    if saved is None:
        return 0, [0] * len(names)
    if resumed.get("data_fingerprint") == fingerprint:
        return saved["start"], saved["offsets"]
    return samples, [saved["drawn"].get(name, 0) for name in names]


def build_validator(cfg: TrainConfig, info: distributed.DistInfo) -> Validator | None:
    """The validation sets of the datasets that have one, when train.eval_interval asks for them."""
    d, t = cfg.data, cfg.train
    if not t.eval_interval or d.synthetic:
        return None
    sets = []
    for i, ds in enumerate(d.datasets):
        if not ds.has_validation:
            continue
        if ds.val_split:
            stream, what = TokenStream(val_dir(cfg, i)), f"data.datasets.{i}.val_split {ds.val_split!r}"
        else:
            stream, what = TokenStream(dataset_dir(cfg, i), held_out=True), f"data.datasets.{i}.{ds.holdout_setting}"
        if len(stream) < d.seq_len + 1:
            raise ConfigError(f"{what}: the validation set of {ds.source} has {len(stream):,} tokens, less than "
                              f"one window of data.seq_len + 1 = {d.seq_len + 1}; give it more")
        sets.append(ValSet.build(ds.cache_name, ds.weight, stream, d.seq_len, t.eval_tokens, t.micro_batch, info))
    return Validator(sets, t.micro_batch, info.device)


class MetricsLog:
    """metrics.jsonl (one record per optimizer step), optional TensorBoard, loss-curve PNG."""

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool, enabled: bool):
        self.path, self.enabled = run_dir / "metrics.jsonl", enabled
        self.tb = None
        if not enabled:
            return
        if self.path.is_file():  # drop records past the resumed step (they came from a lost future)
            old = self.path.read_bytes().decode("utf-8", errors="replace")
            kept = "".join(line + "\n" for line in self._records_up_to(old, resume_step))
            if kept != old:
                checkpoint.write_atomic(self.path, kept)  # a kill mid-rewrite leaves the history whole
        self._f = open(self.path, "a")
        if tensorboard:
            self.tb = summary_writer()(str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def _records_up_to(self, text: str, step: int) -> list[str]:
        """The lines of metrics.jsonl `text` with records up to `step`. An unreadable last line (a write cut
        short by a crash or a full disk) is dropped with a warning; one before it is an error naming it."""
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        kept = []
        for n, line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if n == lines[-1][0]:
                    print(f"warning: {self.path}:{n}: dropped an unreadable last line (a write cut short: {e})",
                          file=sys.stderr)
                    continue
                raise FileFormatError(f"{self.path}:{n}: not a JSON record ({e}); fix or delete that line") from None
            if isinstance(rec, dict) and rec.get("step", 0) <= step:
                kept.append(line)
        return kept

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    tag = f"val/{k.removeprefix('val_')}" if k.startswith("val_") else f"train/{k}"
                    self.tb.add_scalar(tag, v, rec["step"])

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            if self.tb is not None:
                self.tb.close()


def plot_metrics(jsonl: Path, png: Path) -> Path | None:
    """Loss (and learning rate) against tokens seen, from metrics.jsonl; validation losses as points on it."""
    records = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()] if jsonl.is_file() else []
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [r["tokens"] / 1e6 for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(tokens, [r["loss"] for r in records], lw=1, label="train loss")
    ax.set_xlabel("tokens (M)")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    val = [r for r in records if "val_loss" in r]
    val_tokens = [r["tokens"] / 1e6 for r in val]
    if val:
        ax.plot(val_tokens, [r["val_loss"] for r in val], "o-", color="tab:red", ms=4, lw=1.2, label="val loss")
    names = sorted({k for r in val for k in r if k.startswith("val_loss/")})
    colors = ["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    for k, color in zip(names if len(names) > 1 else [], itertools.cycle(colors)):
        ax.plot(val_tokens, [r.get(k, math.nan) for r in val], ".--", color=color, ms=3, lw=0.8, alpha=0.8,
                label=k.replace("val_loss/", "val "))
    lr_ax = ax.twinx()
    lrs = [r["lr"] for r in records]
    lr_ax.plot(tokens, lrs, color="tab:orange", lw=0.8, alpha=0.6, label="learning rate")
    lr_ax.set_ylim(0, 1.05 * max(max(lrs), 1e-12))  # from 0: a constant lr (phi-1.5's) is a line at the top,
    lr_ax.set_ylabel("learning rate")              # not a flat line on a 0.00096-0.00104 axis
    lines = ax.get_lines() + lr_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize="small")
    val_note = f", val {val[-1]['val_loss']:.4f} at step {val[-1]['step']}" if val else ""
    ax.set_title(f"{jsonl.parent.name}: step {records[-1]['step']}, loss {records[-1]['loss']:.4f}{val_note}")
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png)
    return png


class _StopFlag:
    """SIGINT/SIGTERM, or train.time_budget_s, ask the loop to stop at the next step boundary (and checkpoint)
    instead of dying. The budget counts from `started` (the process's start: importing torch, preparing data and
    building the model are spent from it too), and a stop comes while one more step, the exit checkpoint and the
    process's end still fit in it:
    a budget set to a machine's time limit ends with the checkpoint written, not killed mid-step. A second
    signal aborts, unless it comes within `REPEAT_S` of the first: that is the same request passed on, as
    torchrun re-sends the SIGTERM or SIGINT it gets to its workers, which a scheduler (SLURM's scancel) or a
    terminal's Ctrl-C has signalled already. Taken as an abort, it cut the checkpoint short, mid-collective:
    the ranks hung until torchrun killed them."""

    REPEAT_S = 5.0
    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    BUDGET = "time budget"

    def __init__(self, budget_s: float | None = None, started: float | None = None, exit_s: float = 0.0,
                 shutdown_s: float = 0.0) -> None:
        self.reason: str | None = None
        self._budget_s = budget_s
        self._t0 = time.perf_counter() if started is None else started
        self._signalled_at: float | None = None
        self._old: dict[int, Any] = {}
        self._last = time.perf_counter()
        self._cycles: list[float] = []
        self._saving = 0.0  # checkpoint seconds since the last `wanted`, left out of the step's time
        self.exit_s = exit_s  # seconds the exit checkpoint is expected to take: the last one's, else an estimate
        self.shutdown_s = shutdown_s  # then the process's own end

    def __enter__(self) -> _StopFlag:
        self._last = time.perf_counter()
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def saved(self, seconds: float) -> None:
        """A checkpoint took `seconds`: the exit one will take about as long."""
        self.exit_s = seconds
        self._saving += seconds

    def wanted(self) -> bool:
        """Whether this process wants to stop (asked once per step): a signal came, or the time budget leaves no
        room for another step (the slowest one since the first, which compiles), the exit checkpoint and the
        process's end."""
        now = time.perf_counter()
        self._cycles.append(now - self._last - self._saving)
        self._last, self._saving = now, 0.0
        next_step = max(self._cycles[1:] or self._cycles)
        if self._budget_s and now - self._t0 + next_step + self.exit_s + self.shutdown_s >= self._budget_s:
            self.reason = self.reason or self.BUDGET
        return self.reason is not None

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self._signalled_at is not None:
            if now - self._signalled_at < self.REPEAT_S:  # the first one, passed on by a launcher
                return
            raise KeyboardInterrupt  # asked again: give up at once
        self._signalled_at = now
        self.reason = self.reason or signal.Signals(signum).name
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after this step, with a checkpoint (send it "
                         f"again, {self.REPEAT_S:.0f} s or more from now, to abort)\n")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# what a rank may stop for (`_StopFlag.reason`), first the one that names a stop where ranks differ: every rank
# reports it (the CLI's exit code follows it), not only the rank that met it
STOP_REASONS = (*(sig.name for sig in _StopFlag.SIGNALS), _StopFlag.BUDGET)
CHECKPOINT_WRITE_GBPS = 0.5  # assumed until a checkpoint has been timed (the lent H200's local disk wrote 0.6)
SHUTDOWN_S = 5.0  # from the exit checkpoint to the process's end (an H200 with phi-1.5: 4 s)


def checkpoint_seconds(model: torch.nn.Module) -> float:
    """What the exit checkpoint should take before one has been timed: this rank's weights (its shards under
    FSDP2, which each rank writes) and AdamW's two fp32 moments at CHECKPOINT_WRITE_GBPS (phi-1.5: 17 GB, 34 s).
    Without it a time budget left no room for a checkpoint it had not seen (`checkpoint.every: 0`)."""
    params = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    return sum(p.numel() * (p.element_size() + 8) for p in params) / (CHECKPOINT_WRITE_GBPS * 1e9)


# ----------------------------------------------------------------------------- loop


def summary_writer() -> type:
    """TensorBoard's SummaryWriter, or a ConfigError saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError("log.tensorboard: needs the tensorboard package: pip install 'textbookgen[tensorboard]'") from e
    return SummaryWriter


def train(cfg: TrainConfig, progress: bool | None = None, started: float | None = None) -> TrainResult:
    """Train (or resume) the run described by `cfg`, holding its run folder; returns the per-step history of
    this process. A resume with nothing left to train says so and returns with no step run. train.time_budget_s
    counts from `started` (on the `time.perf_counter()` clock; the CLI gives the process's start), else from this
    call."""
    started = time.perf_counter() if started is None else started
    if cfg.log.tensorboard:
        summary_writer()  # before the run folder, the data or any weights are touched
    info = distributed.setup(cfg.train.device, cfg.distributed.backend, cfg.distributed.timeout_minutes)
    try:
        with run_lock(Path(cfg.run_dir), info):
            return _train_in_group(cfg, info, cfg.log.progress if progress is None else progress, started)
    except BaseException as e:
        _clear_frames(e)  # their locals hold the DDP model: see distributed.teardown
        raise
    finally:
        distributed.teardown()


def _clear_frames(error: BaseException) -> None:
    """Clear the locals of the finished frames in `error`'s traceback and in those of the errors it was raised from
    or during (`__cause__`, `__context__`: a log's close failing after its write did holds the write's frames)."""
    seen: set[int] = set()
    chain: list[BaseException | None] = [error]
    while chain:
        e = chain.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        chain += [e.__cause__, e.__context__]


def _train_in_group(cfg: TrainConfig, info: distributed.DistInfo, progress: bool, started: float) -> TrainResult:
    """`train`'s work between joining the process group and leaving it; the Trainer (and its DDP model) lives in
    this frame alone, so it is gone by the time `distributed.teardown` runs."""
    try:
        trainer = Trainer(cfg, info, progress, started)
    except NothingToTrain as e:
        if info.is_main:
            print(e)
        return TrainResult(Path(cfg.run_dir), e.step, e.step, "done")
    return trainer.run()


LOCK_FILE = ".lock"


def every_rank(error: Exception) -> Exception:
    """`error`, marked as a refusal that every rank of a torchrun raises alike (broadcast from rank 0, or
    decided from the same files), so that `report_user_errors` prints it on rank 0 only."""
    error.every_rank = True  # type: ignore[attr-defined]
    return error


@contextmanager
def run_lock(run_dir: Path, info: distributed.DistInfo) -> Iterator[None]:
    """Hold an exclusive lock on run_dir/.lock while the run lives (the OS drops it when the process dies, by
    kill -9 too), or refuse at once, naming the holder's pid. Rank 0 alone takes it, before any rank goes on
    (the others wait for its outcome, and raise the same refusal), so no rank writes into a held folder.
    A run folder made here for a start refused before it wrote anything is removed again."""
    made = info.is_main and not run_dir.exists()
    held, refusal = _take_lock(run_dir) if info.is_main else (None, None)
    if info.enabled:
        outcome = [refusal]
        dist.broadcast_object_list(outcome, src=0)
        refusal = outcome[0]
    if refusal:
        raise every_rank(RunDirBusy(errno.EBUSY, refusal, str(run_dir)))
    try:
        yield
    except BaseException:
        if made and held is not None and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            (run_dir / LOCK_FILE).unlink()  # while held: a start that opened it meanwhile sees it gone (_take_lock)
            with suppress(OSError):  # such a start has made a new one
                run_dir.rmdir()
        raise
    finally:
        if held is not None:
            held.close()


def _take_lock(run_dir: Path) -> tuple[Any, str | None]:
    """(the open lock file, None) where this process now holds run_dir, (None, why not) where another does;
    (None, None) on a file system without flock, which is warned about."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "pid unknown"
        f.close()
        return None, (f"in use by another train run ({holder}): wait for it to end, or train into another "
                      f"run_dir (--run-dir)")
    except OSError as e:  # some network file systems (Lustre without -o flock)
        f.close()
        warnings.warn(f"{run_dir}: cannot lock it ({e.strerror}); a second run into it would not be refused",
                      stacklevel=3)
        return None, None
    if not path.exists() or path.stat().st_ino != os.fstat(f.fileno()).st_ino:  # removed by a refused start
        f.close()
        return _take_lock(run_dir)
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {platform.node()}\n")
    f.flush()
    return f, None


class Trainer:
    """One process of a run: builds model, data and optimizer, resumes, steps, checkpoints, logs."""

    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo, show: bool, started: float | None = None):
        from rich.console import Console

        self.cfg, self.info, self.show = cfg, info, show
        self.started = time.perf_counter() if started is None else started
        self.console = Console(quiet=not info.is_main, soft_wrap=True)
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.tokenizer_warning: str | None = None
        data_start = self._open_run()
        self._setup_device()
        self._build_model()
        self._build_data(data_start)
        if self.tokenizer_warning:  # shown once the data is ready: tokenizing it fails with the same text otherwise
            self.console.print(self.tokenizer_warning, highlight=False)
        self._build_optimizer()
        self.start = self._resume()
        self.schedule_end = self.schedule_position(self.max_steps)

    def _open_run(self) -> tuple[int, int]:
        """Find the checkpoint to resume, where its data goes on, the run's tokenizer and the step it stops at,
        checking that the resume fits (seed, tokenizer, model shape) and has steps left (else NothingToTrain):
        all before anything is written, so a refused resume leaves the run folder as it was (`run` writes
        config.yaml). Returns (step, samples drawn) for the `BatchPlan`."""
        self.resume_from, self.resume_meta = distributed.shared_outcome(self._find_resume, every=True)
        self._check_same_resume()
        data_start = self._data_start()
        self.tokenizer = self._run_tokenizer()
        if self.cfg.checkpoint.export_hf:  # refused now, not by the export after the run (rank 0's tokenizer decides)
            distributed.shared_outcome(self._check_export_folder)
        self._check_resumed_model()
        self.tokens_at_start = self._tokens_at_start(data_start[1])
        self.max_steps = self._max_steps(data_start[0])
        if data_start[0] >= self.max_steps:
            budget = "" if self.cfg.train.max_tokens is None else f" (train.max_tokens {self.cfg.train.max_tokens:g})"
            raise NothingToTrain(f"{self.resume_from}: already at step {data_start[0]} >= max_steps {self.max_steps}"
                                 f"{budget}: nothing to train; raise train.max_steps (--max-steps) to go on",
                                 data_start[0])
        return data_start

    def _run_tokenizer(self) -> Any:
        """data.tokenizer, which each checkpoint keeps (export, generate and eval read it there). A resume
        refuses another one than its checkpoint kept: the embeddings would go on learning other ids. None on
        synthetic data; where data.tokenizer cannot be loaded here (the Hub offline), the checkpoint's. Rank 0 alone
        loads it and sends it to the others: a load that failed on one rank only (a Hub download, a folder its node
        lacks) left the others going on into a collective that rank never reached."""
        if self.cfg.data.synthetic:
            return None
        return distributed.from_rank_0(self._load_run_tokenizer)

    def _load_run_tokenizer(self) -> Any:
        """`_run_tokenizer`'s load and checks, on rank 0."""
        spec = self.cfg.data.tokenizer
        saved = checkpoint.pinned_tokenizer(self.resume_from) if self.resume_from is not None else None
        try:
            tok = load_tokenizer(spec)
        except ValueError as e:
            if saved is None:  # the library's hint names prepare's --tokenizer, which train does not take
                why = str(e).replace(GIVE_TOKENIZER, "set data.tokenizer to")
                self.tokenizer_warning = (f"[yellow]warning:[/] cannot load data.tokenizer {spec!r} ({why}): the "
                                          "checkpoints will not keep it")
            return saved
        if saved is not None and checkpoint.tokenizer_sha256(tok) != checkpoint.tokenizer_sha256(saved):
            raise every_rank(checkpoint.CheckpointError(
                f"data.tokenizer {spec!r} is not the tokenizer {self.resume_from} was trained with "
                f"({self.resume_from / checkpoint.TOKENIZER_FILE}, {saved.get_vocab_size():,} tokens; data.tokenizer "
                f"has {tok.get_vocab_size():,}): resuming would train on other token ids; set data.tokenizer back "
                f"to that one, or train in another run_dir (--run-dir)"))
        return tok

    def _check_export_folder(self) -> None:
        """The checks `export_hf` makes of run_dir/hf, before the run rather than after it: a run without a
        tokenizer may not export beside an earlier export's tokenizer files."""
        if self.tokenizer is None:
            from trainer.export import check_no_stale_tokenizer

            check_no_stale_tokenizer(self.run_dir / "hf")

    def _check_resumed_model(self) -> None:
        """A resume goes on with its checkpoint's model: a config that asks for another shape is refused in one
        line naming the fields (old -> new), before any weights are loaded."""
        if self.resume_meta is None:
            return
        saved = self.resume_meta["model_config"]
        asked = dataclasses.asdict(model_config(self.cfg, *self._weights_config(None)))
        differ = [k for k in _shape_fields() if k != "initializer_range" and k in saved and saved[k] != asked[k]]
        if differ:
            changes = ", ".join(f"{k} {saved[k]!r} -> {asked[k]!r}" for k in differ)
            raise every_rank(checkpoint.CheckpointError(
                f"{self.resume_from}: does not fit the model the config asks for ({changes}): a resume goes on with the "
                f"checkpoint's model; set model.name/model.overrides back, or train the new model in another "
                f"run_dir (--run-dir)"))

    def _setup_device(self) -> None:
        """The device this process trains on; fp32 matmuls outside autocast (pure fp32 runs) may use TF32."""
        self.device = self.info.device
        self.dev_type = torch.device(self.device).type
        if self.dev_type == "cuda":
            torch.set_float32_matmul_precision("high")

    def _build_model(self) -> None:
        """The model, seeded by train.seed, with train.init_from's weights on a fresh start: loaded by rank 0 and
        broadcast from it into every rank's unsharded model, so that FSDP2 (which broadcasts nothing) and DDP start
        from rank 0's weights on every rank, whatever copy of init_from another node holds, or none. The build is an
        agreement: a rank failing there (out of memory) would leave the others waiting in the broadcast."""
        weights, initial = self._initial_model()
        self.model_cfg = model_config(self.cfg, *self._weights_config(weights))
        self.model = distributed.shared_outcome(lambda: self._new_model(initial), every=True)
        if weights is not None:
            distributed.broadcast_module(self.model)
        if self.cfg.train.precision == "bf16":
            to_bf16_matrices(self.model)
        self.flops_per_token = self.model.flops_per_token(self.cfg.data.seq_len)

    def _new_model(self, initial: list[Phi]) -> Phi:
        """This rank's model of `model_cfg`, seeded by train.seed, holding the weights of the model in `initial`
        where there is one (rank 0's init_from), taken out of the list so that its copy is freed once loaded."""
        torch.manual_seed(self.cfg.train.seed)
        with torch.device(self.device):
            model = Phi(self.model_cfg)
        if initial:
            model.load_state_dict(initial.pop().state_dict())
        return model

    def _build_data(self, data_start: tuple[int, int]) -> None:
        """The sampler (preparing stale data first), the validation sets and this rank's `BatchPlan` from
        `data_start` (the step and samples drawn it goes on from). Each rank opens its node's copy of the data and
        reads its validation windows through `distributed.shared_outcome`: a rank failing there (a shard missing or
        truncated on its node alone) left the others going on into the model's wrapping (DDP's broadcast of the
        weights)."""
        cfg, info = self.cfg, self.info
        prepare_stale(cfg, info, self.show)
        self.sampler, self.data_fp, self.validator = distributed.shared_outcome(lambda: self._open_data(data_start),
                                                                                every=True)
        self.plan = BatchPlan(cfg.train.global_batch, cfg.train.micro_batch, info.world_size, info.rank, *data_start)

    def _open_data(self, data_start: tuple[int, int]) -> tuple[Any, str, Validator | None]:
        """This rank's sampler, data fingerprint and validation sets, a read failure naming the rank (its node's
        copy of the data is the one to prepare again)."""
        try:
            return (*open_sampler(self.cfg, self.model_cfg.vocab_size, self.resume_meta, data_start[1]),
                    build_validator(self.cfg, self.info))
        except (DataError, OSError) as e:
            if not self.info.enabled:
                raise
            raise DataError(f"{self.info.label}{e}") from e

    def _build_optimizer(self) -> None:
        """Wrap the model for the distributed strategy (DDP, FSDP2 or none, maybe compiled), then the optimizer,
        autocast and the peak FLOP/s that MFU is measured against."""
        cfg, mixed = self.cfg, self.cfg.train.precision != "fp32"
        self.strategy = distributed.choose_strategy(cfg.distributed.strategy, self.info,
                                                    cfg.distributed.timeout_minutes)
        self.wrapped = distributed.parallelize(
            self.model, self.info, self.strategy, cfg.train.compile,
            param_dtype=torch.bfloat16 if mixed else None,
            reshard_after_forward=cfg.distributed.reshard_after_forward)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.autocast = torch.autocast(self.dev_type, dtype=torch.bfloat16) if mixed else nullcontext()
        self.peak = peak_flops(self.device, cfg.log.peak_tflops)

    def _find_resume(self) -> tuple[Path | None, dict[str, Any] | None]:
        """The checkpoint this start resumes and its meta, or (None, None) for a fresh start (refused beside other
        checkpoints). Every rank reads its node's copy of the path, through `distributed.shared_outcome`: a rank
        that cannot (the checkpoint missing there, its meta.json damaged) left the others waiting for it in the
        next collective."""
        if self.cfg.checkpoint.resume == "never":
            checkpoint.check_fresh_start(self.ckpt_root)
        source = self._resume_source()
        return source, checkpoint.read_meta(source) if source is not None else None

    def _check_same_resume(self) -> None:
        """Refuse, on every rank, a start whose ranks found other checkpoints to go on from (nodes holding other
        copies of the run folder or the path): they would start at other steps, and their collectives would not
        match (a hang, or a crash at the end)."""
        mine = (str(self.resume_from), self.resume_meta["step"]) if self.resume_meta is not None else None
        found = distributed.gathered(mine)
        other = next((rank for rank, each in enumerate(found) if each != found[0]), None)
        if other is None:
            return

        def named(each: tuple[str, int] | None) -> str:
            return f"{each[0]} (step {each[1]})" if each else "none (a fresh start)"

        raise every_rank(checkpoint.CheckpointError(
            f"the ranks found other checkpoints to resume: rank 0 goes on from {named(found[0])}, rank {other} "
            f"from {named(found[other])} (their nodes hold other copies of checkpoint.resume's path); keep run_dir "
            f"(and a checkpoint named to resume) on a file system every node shares"))

    def _resume_source(self) -> Path | None:
        """The checkpoint this start resumes (checkpoint.resume), or None for a fresh start."""
        resume = self.cfg.checkpoint.resume
        if resume == "never":
            return None
        return checkpoint.find_latest(self.ckpt_root) if resume == "auto" else checkpoint.resolve(resume)

    def _initial_model(self) -> tuple[PhiConfig | None, list[Phi]]:
        """For a fresh start from train.init_from: its model config on every rank, and its weights on rank 0 (in a
        list, empty elsewhere); (None, []) otherwise (a resume takes its own checkpoint's). Rank 0 alone reads
        init_from (a path or Hub download only its node may hold; a sharded checkpoint read whole, with no
        collective) and sends the config (`from_rank_0`: its failure raised on every rank); the weights follow by
        broadcast (`_build_model`), not pickled. Each rank reading its node's copy let ranks start from other
        weights (FSDP2), and failed the run where a node held none."""
        spec = self.cfg.train.init_from
        if not spec or self.resume_from is not None:
            return None, []
        from trainer.pretrained import load_initial

        self._check_initial_tokenizer(spec)
        loaded: list[Phi] = []

        def load() -> PhiConfig:
            loaded.append(load_initial(spec))
            return loaded[0].config

        weights = distributed.from_rank_0(load)
        self.console.print(f"starting from the weights of {spec}")
        return weights, loaded

    def _check_initial_tokenizer(self, spec: str) -> None:
        """train.init_from's tokenizer checked against the run's (a doubt is warned about) by rank 0 alone, against
        the data.tokenizer it loaded and sent: each rank loading its own let a node's other copy (or a failed load,
        only warned about) decide for the whole run; a refusal is raised on every rank."""
        from trainer.pretrained import check_tokenizer

        if self.cfg.train.init_from_tokenizer_check and not self.cfg.data.synthetic:
            doubt = distributed.from_rank_0(lambda: check_tokenizer(spec, self.cfg.data.tokenizer, self.tokenizer))
            if doubt:
                self.console.print(f"[yellow]warning:[/] {doubt}")

    def _weights_config(self, initial: PhiConfig | None) -> tuple[PhiConfig | None, str]:
        """The model config of the weights the model must fit, and their name: init_from's (`initial`) on a fresh
        start, the resumed checkpoint's for a run that started from init_from; none (the config's model) otherwise."""
        if initial is not None:
            return initial, f"train.init_from {self.cfg.train.init_from}"
        if not self.cfg.train.init_from or self.resume_from is None:
            return None, ""
        return checkpoint.saved_model_config(self.resume_meta), f"checkpoint {self.resume_from}"

    def _resume(self) -> int:
        source = self.resume_from
        if source is None:
            return 0
        meta = checkpoint.load(source, self.model, self.optimizer, resume=True)
        changed = apply_optim_config(self.optimizer, self.cfg)
        if changed:
            self.console.print(f"optimizer settings from the config, not the checkpoint: {', '.join(changed)}")
        if meta.get("data_fingerprint") != self.data_fp:
            self.console.print(f"[yellow]warning:[/] the data differs from the checkpoint's "
                               f"({meta.get('data_fingerprint')} -> {self.data_fp}); {self._mix_note(meta)}",
                               highlight=False)
        self.console.print(f"resumed from {source} at step {meta['step']}")
        self._check_schedule(meta)
        return meta["step"]

    def _mix_note(self, meta: dict[str, Any]) -> str:
        """How the data goes on after a change of the data or the mix (the end of the warning that says so)."""
        if "mix" not in meta or not isinstance(self.sampler, MixtureSampler):
            return "the sample order will not match"
        drawn = ", ".join(f"{name} {n:,}" for name, n in zip(self.sampler.names, self.sampler.offsets, strict=True))
        return (f"each dataset goes on from the windows it drew ({drawn}); one whose tokens or data.seq_len "
                f"changed is read in a new order")

    def _check_schedule(self, meta: dict[str, Any]) -> None:
        """Warn when the resumed run goes on at another learning rate than the one that saved `meta` would have:
        a changed budget (--max-steps), optim.lr or schedule moves the curve, e.g. a finished cosine run
        extended jumps from min_lr back to the middle of a new decay."""
        saved, step = meta.get("next_lr"), meta["step"]
        now = lr_at(self.schedule_position(step), self.cfg, self.schedule_position(self.max_steps))
        if saved is not None and not math.isclose(now, saved, rel_tol=1e-6, abs_tol=1e-12):
            self.console.print(f"[yellow]warning:[/] step {step + 1} trains at lr {now:.3g}, where the run that saved "
                               f"{self.resume_from} would have gone on at {saved:.3g}: the schedule's end "
                               f"(max_steps/max_tokens), optim.lr or schedule.* changed (a jump up can spike the loss)",
                               highlight=False)

    def _data_start(self) -> tuple[int, int]:
        """(step, samples drawn before it) the data goes on from: the resumed checkpoint's, in its seed's order
        (a changed train.seed is refused unless checkpoint.allow_seed_change). A checkpoint from before these
        were recorded drew step x its config's global batch under its config's seed."""
        meta, t = self.resume_meta, self.cfg.train
        if meta is None:
            return 0, 0
        step = meta["step"]
        saved = meta["config"].get("train", {}) if isinstance(meta["config"], dict) else {}
        seed = meta.get("data_seed", saved.get("seed", t.seed))
        samples = meta.get("samples", step * saved.get("global_batch", t.global_batch))
        if seed != t.seed:
            if not self.cfg.checkpoint.allow_seed_change:
                raise checkpoint.CheckpointError(
                    f"train.seed is {t.seed} but {self.resume_from} was trained with seed {seed}: another seed "
                    f"reorders the data (samples read again, others never); set train.seed={seed}, or "
                    f"checkpoint.allow_seed_change=true to go on in seed {t.seed}'s order from sample {samples}")
            self.console.print(f"[yellow]warning:[/] train.seed {seed} -> {t.seed} (checkpoint.allow_seed_change): "
                               f"the data goes on in the new seed's order from sample {samples}")
        if samples != step * t.global_batch:
            self.console.print(f"data goes on from sample {samples} (global batch {t.global_batch} from step {step})")
        return step, samples

    def _tokens_at_start(self, samples: int) -> int:
        """Tokens trained on before this start: the checkpoint's count, else (a checkpoint from before it was
        recorded) its samples drawn x its config's seq_len. Not samples x today's data.seq_len: a resume under
        another seq_len (a context extension) would count the tokens already seen again, or lose some."""
        meta = self.resume_meta
        if meta is None:
            return 0
        saved = meta["config"].get("data", {}) if isinstance(meta["config"], dict) else {}
        return meta.get("tokens", samples * saved.get("seq_len", self.cfg.data.seq_len))

    def tokens_seen(self, step: int) -> int:
        """Tokens trained on by the end of step `step` (1-based) of this start, those of earlier starts included."""
        drawn = self.plan.samples_before(step) - self.plan.samples_before(self.plan.start_step)
        return self.tokens_at_start + drawn * self.cfg.data.seq_len

    def _max_steps(self, start: int) -> int:
        """The step to stop at, for a run going on from step `start`: train.max_steps, or where train.max_tokens
        is reached (counted in tokens seen, so a resume under another global batch or seq_len still stops at the
        token budget)."""
        t = self.cfg.train
        if t.max_tokens is None:
            return self.cfg.max_steps
        left = -(-max(0, int(t.max_tokens) - self.tokens_at_start) // self.cfg.data.seq_len)
        return start + -(-left // t.global_batch)

    def schedule_position(self, step: int) -> float:
        """Where optimizer step `step` is on the lr schedule, counted in steps of the run's budget unit: the
        step itself under train.max_steps; under train.max_tokens the samples drawn before it over
        train.global_batch. A resume under another global batch so goes on from the point of the curve it
        left and reaches the end where the trainer stops (at the token budget). Under a constant batch both
        are the step, and warmup_steps/decay_steps count optimizer steps as configured."""
        if self.cfg.train.max_tokens is None:
            return step
        return self.plan.samples_before(step) / self.cfg.train.global_batch

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        return lr_at(self.schedule_position(step), self.cfg, self.schedule_end)

    def save(self, step: int) -> None:
        meta = {"model_config": dataclasses.asdict(self.model_cfg), "config": self.cfg.model_dump(mode="json"),
                "data_fingerprint": self.data_fp, "samples": self.plan.samples_before(step),
                "tokens": self.tokens_seen(step),
                "data_seed": self.cfg.train.seed, "init_from": self.cfg.train.init_from, "next_lr": self.lr(step)}
        if isinstance(self.sampler, MixtureSampler):  # where this mix started, and each dataset's windows drawn
            drawn = self.sampler.drawn(meta["samples"])
            meta["mix"] = {"start": self.sampler.start, "offsets": self.sampler.offsets,
                           "drawn": dict(zip(self.sampler.names, drawn, strict=True))}
        path = checkpoint.save(self.ckpt_root, step, self.model, self.optimizer, meta,
                               sharded=self.strategy == "fsdp", keep=self.cfg.checkpoint.keep,
                               tokenizer=self.tokenizer.to_str() if self.tokenizer is not None else None)
        if self.cfg.log.plot:
            distributed.shared_outcome(lambda: plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png"))
        self.console.print(f"checkpoint {path}")

    def export(self, out: Path) -> None:
        """The trained weights as an HF folder (every rank calls it: FSDP gathers shards)."""
        from trainer.export import export_hf

        export_hf(self.model, out, tokenizer=self.tokenizer, dtype=self.cfg.checkpoint.export_dtype)
        self.console.print(f"exported {out}")

    def train_step(self, step: int, loader: Loader,
                   stop_wanted: Callable[[], str | None]) -> tuple[float, float, str | None]:
        """Forward/backward over the accumulation micro-steps, clip, update.

        The step's micro-batches are read first, their reading agreed on by every rank (`_step_batches`) before
        any forward: a read failing on one rank (a shard gone bad mid-run) left it raising while the others waited
        in the forward's FSDP2 all-gather or the backward's gradient all-reduce, a hang until the group's timeout.

        `stop_wanted()` (why this rank wants to stop, one of STOP_REASONS, or None) is asked once the gradients are
        in. Returns (mean loss, grad norm, why the ranks stop: the first of STOP_REASONS any rank gave, the same on
        every rank, or None). Raises TrainingDiverged, before the update, on a non-finite loss or gradient."""
        plan = self.plan
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(step)
        batches = distributed.shared_outcome(lambda: self._step_batches(step, loader), every=True)
        loss_sum = torch.zeros((), device=self.device)
        for micro, (x, y) in enumerate(batches):
            with distributed.grad_sync(self.wrapped, micro == plan.accum_steps - 1), self.autocast:
                loss = self.wrapped(x, labels=y)
                (loss / plan.accum_steps).backward()
            loss_sum += loss.detach().float()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip or float("inf"))
        if hasattr(gnorm, "full_tensor"):  # FSDP2: a DTensor
            gnorm = gnorm.full_tensor()
        # one all-reduce carries the mean loss and each rank's wish to stop, by reason (ranks must stop together, and
        # for one reason: a rank that got no signal itself exited 3, the one that got SIGTERM 143)
        reason = stop_wanted()
        votes = torch.tensor([float(reason == r) for r in STOP_REASONS], device=self.device)
        stats = distributed.all_reduce_sum(torch.cat([(loss_sum / plan.accum_steps).reshape(1), votes])).tolist()
        loss_val, gnorm_val = stats[0] / self.info.world_size, float(gnorm)
        stop = next((r for r, n in zip(STOP_REASONS, stats[1:], strict=True) if n > 0), None)
        if not (math.isfinite(loss_val) and math.isfinite(gnorm_val)):
            raise TrainingDiverged(
                f"step {step + 1}: loss is {loss_val}, grad norm {gnorm_val}; stopped before the update. "
                f"Last good checkpoint: {checkpoint.find_latest(self.ckpt_root) or 'none'}. Try a lower optim.lr, "
                f"warmup (schedule.warmup_steps), optim.grad_clip, or precision bf16-mixed.")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_val, gnorm_val, stop

    def _step_batches(self, step: int, loader: Loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels) of each micro-step of `step` on this rank, run by every rank through
        `distributed.shared_outcome`: a failed read is raised on every rank, as the reading rank's DataError naming
        that rank, the step and (from the read's error) the file. Costs one all-reduce of a flag per step, read on
        the host (0.17 ms on 2 H200s under NCCL); the loader has read the whole step ahead while the last one
        computed (`Loader`'s prefetch), and a step's micro-batches are on the device at once (this rank's share of
        the global batch, int64: 8 MB at phi-1.5's 2048 x 2048 on 4 GPUs)."""
        batches = []
        for micro in range(self.plan.accum_steps):
            try:
                data_step, data_micro, x, y = next(loader)
            except (OSError, ValueError) as e:  # also a DataError of the read: the rank and step added
                raise DataError(f"{self.info.label}step {step + 1}: reading the training data failed: {e}") from e
            assert (data_step, data_micro) == (step, micro)
            batches.append((x, y))
        return batches

    def record(self, step: int, loss: float, gnorm: float, dt: float) -> dict[str, Any]:
        tokens, seen = self.cfg.tokens_per_step, self.tokens_seen(step)
        rec = {"step": step, "loss": loss, "lr": self.lr(step - 1), "grad_norm": gnorm,
               "tokens": seen, "step_s": round(dt, 4), "tokens_per_s": round(tokens / dt, 1),
               "mfu": (round(self.flops_per_token * tokens / dt / (self.peak * self.info.world_size), 4)
                       if self.peak else None)}
        if self.dev_type == "cuda":
            rec["mem_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        return rec

    def validate(self) -> dict[str, float]:
        """Validation losses now (every rank calls it), and the seconds they took."""
        t0 = time.perf_counter()
        out = self.validator(self.wrapped, self.autocast)
        return {**out, "val_s": round(time.perf_counter() - t0, 4)}

    def _describe_validation(self) -> str:
        if self.validator is None:
            return ("[yellow]validation off:[/] synthetic data has no validation set"
                    if self.cfg.train.eval_interval else "")
        sets = ", ".join(f"{vs.name} {vs.windows * self.cfg.data.seq_len:,} tokens" for vs in self.validator.sets)
        return f"validation every {self.cfg.train.eval_interval} steps and at the last: {sets}"

    def _attention(self) -> str:
        """The attention kernel that the blocks' compute dtype gets here (fa4, flash or sdpa)."""
        dtype = torch.bfloat16 if self.cfg.train.precision != "fp32" else torch.float32
        return attention_kernel(self.model_cfg, torch.device(self.device), dtype)

    def _record_environment(self) -> None:
        """Append what this start of the run ran on to `environment.jsonl`: a resumed run may continue on
        other hardware or software, and throughput or loss differences are read against these lines."""
        cuda = self.dev_type == "cuda"
        rec = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "start_step": self.start,
               "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
               "device": torch.cuda.get_device_name(torch.device(self.device)) if cuda else platform.machine(),
               "world_size": self.info.world_size, "strategy": self.strategy, "attention": self._attention(),
               "precision": self.cfg.train.precision, "compile": self.cfg.train.compile,
               "cuda": torch.version.cuda if cuda else None}
        with (self.run_dir / "environment.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def run(self) -> TrainResult:
        """Train from `start` to `max_steps` or a stop; then the exit checkpoint, the HF export and the plot."""
        log = distributed.shared_outcome(self._open_log) or MetricsLog(self.run_dir, self.start, False, False)
        self._announce()
        result = TrainResult(self.run_dir, self.start, self.start, "done")
        loader = Loader(self.sampler, self.plan, self.start, self.device)  # start < max_steps: see _open_run
        try:
            last_saved = self._train_steps(loader, log, result)
            self._finish(result.final_step, last_saved)
        finally:
            loader.close()
            log.close()
        if self.cfg.log.plot:
            distributed.shared_outcome(lambda: plot_metrics(log.path, self.run_dir / "loss.png"))
        if result.stop_reason != "done":
            self.console.print(f"stopped at step {result.final_step}: {result.stop_reason}")
        return result

    def _open_log(self) -> MetricsLog:
        """Rank 0's start of the run's files: metrics.jsonl (an unreadable one is refused before anything is
        written), config.yaml, the checkpoints' `latest` and environment.jsonl. Run through
        `distributed.shared_outcome`: a refusal here reaches every rank."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(self.run_dir, self.start, self.cfg.log.tensorboard, True)
        try:
            (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
            checkpoint.mark_start(self.ckpt_root, self.resume_from)  # the history goes on from there, as metrics do
            self._record_environment()
        except BaseException:
            log.close()
            raise
        return log

    def _announce(self) -> None:
        """The run's header line (model, parallelism, precision, attention, batch, steps, data) and validation."""
        cfg, plan = self.cfg, self.plan
        self.console.print(
            f"[bold]{cfg.train.init_from or cfg.model.name}[/] {self.model.num_params(False):,} params | "
            f"{self.strategy} x{self.info.world_size} on {self.device} | {cfg.train.precision} | attention "
            f"{self._attention()} | batch "
            f"{cfg.train.global_batch}x{cfg.data.seq_len} (micro {plan.micro_batch}, accum "
            f"{plan.accum_steps}) | steps {self.start}->{self.max_steps} | data {', '.join(self.sampler.names)}")
        if isinstance(self.sampler, MixtureSampler):
            for line in self.sampler.epoch_lines(self.plan.samples_before(self.max_steps)):
                self.console.print(line)
        note = self._describe_validation()
        if note:
            self.console.print(note)
        for warning in self._setting_warnings():
            self.console.print(f"[yellow]warning:[/] {warning}", highlight=False)

    def _setting_warnings(self) -> list[str]:
        """Settings that would silently do little: a warmup as long as the run, a model vocabulary mostly
        unused by a much smaller data.tokenizer (a BPE of one's own under a preset's 51,200 rows)."""
        cfg, out = self.cfg, []
        warmup = cfg.schedule.warmup_steps
        if warmup and warmup >= self.schedule_end:  # the lr reaches optim.lr at step `warmup` (1-based)
            at_end = warmup == self.schedule_end
            reach = "reaches" if at_end else "never reaches"
            decay = "" if cfg.schedule.kind == "constant" else f" and the {cfg.schedule.kind} decay never starts"
            out.append(f"schedule.warmup_steps {warmup} is not below the run's {self.schedule_end:g} steps: the lr "
                       f"{reach} optim.lr {cfg.optim.lr:g}{' only at the last step' if at_end else ''}{decay}")
        rows, used = self.model_cfg.vocab_size, self.tokenizer.get_vocab_size() if self.tokenizer else None
        fresh = self.start == 0 and not cfg.train.init_from  # else the rows are the weights' own
        if fresh and used and rows - used > rows // 10 and "vocab_size" not in cfg.model.overrides:
            out.append(f"data.tokenizer has {used:,} tokens but the model {rows:,} embedding rows, "
                       f"{1 - used / rows:.0%} of them never used: set model.overrides.vocab_size={-(-used // 64) * 64} "
                       f"(a multiple of 64) for a model of that vocabulary")
        return out

    def _train_steps(self, loader: Loader, log: MetricsLog, result: TrainResult) -> int:
        """Step until `max_steps` or a stop (a signal, train.time_budget_s, on any rank), validating, logging
        and checkpointing at their intervals; each step's record goes into `result`, whose final_step and
        stop_reason follow. Returns the last step checkpointed (`start` if none)."""
        step = last_saved = self.start
        last_val = None
        bar = _progress(self.show and self.info.is_main, self.console)
        task = bar.add_task("train", total=self.max_steps, completed=step, status="")
        with _StopFlag(self.cfg.train.time_budget_s, self.started, checkpoint_seconds(self.model),
                       SHUTDOWN_S) as stop, bar:
            self.model.train()
            while step < self.max_steps:
                t0 = time.perf_counter()
                loss, gnorm, stopping = self.train_step(step, loader, lambda: stop.reason if stop.wanted() else None)
                step = result.final_step = step + 1
                rec = self.record(step, loss, gnorm, time.perf_counter() - t0)
                if self._validation_due(step):
                    rec.update(self.validate())
                    last_val = rec
                    self.console.print(f"step {step:>6}/{self.max_steps} | {_val_status(rec)}", highlight=False)
                distributed.shared_outcome(lambda rec=rec: log.write(rec))  # rank 0 writes: a full disk stops all
                result.history.append(rec)
                bar.update(task, completed=step, status=_status(rec, last_val))
                if step % self.cfg.log.every == 0 or step in (self.start + 1, self.max_steps):
                    self.console.print(f"step {step:>6}/{self.max_steps} | {_status(rec, last_val)}", highlight=False)
                if stopping:
                    result.stop_reason = stopping
                    break
                if self.cfg.checkpoint.every and step % self.cfg.checkpoint.every == 0:
                    t0 = time.perf_counter()
                    self.save(step)
                    stop.saved(time.perf_counter() - t0)
                    last_saved = step
        return last_saved

    def _validation_due(self, step: int) -> bool:
        """Validate at every train.eval_interval-th step and the last; not at a stop, so a stopped and resumed run
        validates at the steps where one never stopped does."""
        return self.validator is not None and (step % self.cfg.train.eval_interval == 0 or step == self.max_steps)

    def _finish(self, step: int, last_saved: int) -> None:
        """The exit checkpoint (checkpoint.at_exit, unless `step` was just saved) and the HF export (if any step ran)."""
        if self.cfg.checkpoint.at_exit and step != last_saved:
            self.save(step)
        if self.cfg.checkpoint.export_hf and step > self.start:
            self.export(self.run_dir / "hf")


def _status(rec: dict[str, Any], last_val: dict[str, Any] | None = None) -> str:
    parts = [f"loss {rec['loss']:.4f}"]
    if last_val is not None:
        parts.append(f"val {last_val['val_loss']:.4f}" + ("" if last_val is rec else f" @{last_val['step']}"))
    parts += [f"lr {rec['lr']:.2e}", f"gnorm {rec['grad_norm']:.3f}", f"{rec['tokens_per_s']:,.0f} tok/s"]
    if rec.get("mfu") is not None:
        parts.append(f"mfu {rec['mfu']:.1%}")
    if rec.get("mem_gb") is not None:
        parts.append(f"{rec['mem_gb']:.1f} GB")
    return " | ".join(parts)


def _val_status(rec: dict[str, Any]) -> str:
    """The validation line: mixed loss and perplexity, then each dataset's loss."""
    each = [f"{k.removeprefix('val_loss/')} {v:.4f}" for k, v in rec.items() if k.startswith("val_loss/")]
    return " | ".join([f"val_loss {rec['val_loss']:.4f}", f"val_ppl {rec['val_ppl']:.2f}", *each,
                       f"{rec['val_s']:.1f} s"])


def _progress(enabled: bool, console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled,
                    transient=True)

"""Training configuration: one YAML file, dotted CLI overrides, validated by pydantic.

Every field has a default, so a YAML file only states what differs. Unknown fields are errors (a typo
must not silently fall back to a default), and every error names the file and the dotted field.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from textbookgen.jsonl import decode_utf8
from textbookgen.yamlfile import Loc, dotted, key_path, read_yaml, yaml_problem
from trainer.data import Holdout, local_source

CONFIGS_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str = "tiny"
    """Key of `trainer.model.CONFIGS` ("phi-1.5", "demo-100m", "tiny")."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """PhiConfig fields to change, e.g. {n_layer: 4}; checked against PhiConfig when the model is built."""
    activation_checkpointing: bool = False
    loss_chunk_size: int | None = Field(None, ge=0)
    """Tokens per chunk of the fused lm_head+loss; 0 computes the full logits; None keeps the preset's."""
    attn_impl: Literal["auto", "sdpa", "flash", "fa4"] = "auto"
    """Attention kernel; auto takes FlashAttention-4 (Hopper/Blackwell), else flash_attn, else SDPA."""


class DatasetSource(_Section):
    source: str
    """A local folder in Hub layout (data/*.parquet), a parquet file, or a Hub dataset repo id."""
    weight: float = Field(1.0, gt=0)
    name: str | None = None
    """Folder name of the tokenized copy under data.cache_dir; derived from `source` when unset."""
    subset: str | None = None
    """The config of the source's README `configs:` (the Hub viewer's subset) to read; None: the default one."""
    split: str = "train"
    column: str = "text"
    revision: str | None = None
    endpoint: str | None = None
    """Hub endpoint (a mirror or a test server); None uses HF_ENDPOINT or huggingface.co."""
    val_split: str | None = None
    """Validation set: a split the publisher made for it (validation, test, ...), prepared beside `split`."""
    holdout_fraction: float = Field(0.0, ge=0, lt=1)
    """Validation set: about this fraction of `split`'s tokens, as whole documents chosen by a hash of their
    text, held out when the data is prepared (recorded in its index; training never draws them)."""
    holdout_tokens: int = Field(0, ge=0)
    """Validation set: whole documents of `split` (lowest text hashes first) that make at least this many tokens."""

    @model_validator(mode="after")
    def _one_validation_set(self) -> DatasetSource:
        chosen = [k for k in ("val_split", "holdout_fraction", "holdout_tokens") if getattr(self, k)]
        if len(chosen) > 1:
            raise ValueError(f"{', '.join(chosen)} are set together: give one validation set")
        if self.val_split is not None and self.val_split == self.split:
            raise ValueError(f"val_split {self.val_split!r} is the training split: name another split "
                             f"(validation, test) or hold out part of it (holdout_fraction, holdout_tokens)")
        return self

    @property
    def holdout(self) -> Holdout:
        return Holdout(self.holdout_fraction, self.holdout_tokens)

    @property
    def holdout_setting(self) -> str:
        """The holdout field this dataset sets, with its value ("holdout_fraction 0.05"); "" when none."""
        name = "holdout_fraction" if self.holdout_fraction else "holdout_tokens" if self.holdout_tokens else ""
        return name and f"{name} {getattr(self, name):g}"

    @property
    def has_validation(self) -> bool:
        return bool(self.val_split or self.holdout)

    @property
    def cache_name(self) -> str:
        if self.name:
            return self.name
        stem = self.source.rstrip("/").replace("\\", "/").split("/")[-1] or "dataset"
        if stem.endswith(".parquet"):
            stem = stem[: -len(".parquet")]
        return f"{stem}-{self.subset}-{self.split}" if self.subset else f"{stem}-{self.split}"


class DataSection(_Section):
    tokenizer: str = "gpt2-codegen"
    """Spec given to `trainer.tokenizer.load_tokenizer` (a folder of GPT-2 BPE files, a tokenizer.json, a Hub id)."""
    datasets: list[DatasetSource] = Field(default_factory=list)
    cache_dir: str = "data/tokens"
    seq_len: int = Field(2048, ge=8)
    mix_block: int = Field(1000, ge=1)
    """Samples per mixing block: each block holds each dataset in exact weight proportion."""
    prepare_workers: int = Field(0, ge=0)
    """Tokenizer processes for `prepare`; 0 means one per CPU core."""
    synthetic: bool = False
    """Random tokens instead of a dataset: for throughput benchmarks on machines without data."""

    @model_validator(mode="after")
    def _validation_not_trained_on(self) -> DataSection:
        """Two datasets of one source (same resolved source, revision, column): one must not train on the
        documents the other keeps for validation (its val_split, or its holdout under another rule). Overlapping
        *different* corpora are not caught: holdouts are chosen per dataset, see README (validation)."""
        def key(ds: DatasetSource, split: str) -> tuple:
            local = local_source(ds.source)
            return str(local.resolve()) if local else ds.source, ds.subset, split, ds.revision, ds.column

        for i, held in enumerate(self.datasets):
            for j, trains in enumerate(self.datasets):
                if i == j:
                    continue
                if held.val_split and key(trains, trains.split) == key(held, held.val_split):
                    what = f"val_split {held.val_split!r}"
                elif held.holdout and key(trains, trains.split) == key(held, held.split) and trains.holdout != held.holdout:
                    what = f"{held.holdout_setting} of split {held.split!r}"
                else:
                    continue
                raise ValueError(f"datasets.{j} trains on {trains.source} split {trains.split!r}, whose documents "
                                 f"datasets.{i} keeps for validation ({what}): they would be trained on; drop one "
                                 f"of the two, or give both the same validation set")
        return self


class OptimSection(_Section):
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-7, gt=0)
    grad_clip: float = Field(1.0, ge=0)
    """Max global grad norm; 0 disables clipping (the norm is still logged)."""
    fused: Literal["auto", "on", "off"] = "auto"


class ScheduleSection(_Section):
    kind: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    decay_steps: int | None = Field(None, ge=1)
    """Steps over which cosine/linear decay to min_lr after warmup; default: until the step the run stops at.
    Under train.max_tokens the schedule runs over the samples drawn, counted in steps of the current
    train.global_batch (warmup_steps too), so a resume under another global batch goes on along the curve."""


class TrainSection(_Section):
    global_batch: int = Field(2048, ge=1)
    """Sequences per optimizer step, over all ranks and accumulation micro-steps."""
    micro_batch: int = Field(8, ge=1)
    """Sequences per forward/backward on one rank."""
    max_steps: int | None = Field(None, ge=1)
    max_tokens: float | None = Field(None, gt=0)
    """Alternative to max_steps (set only one): train until this many tokens (rounded up to whole steps)."""
    time_budget_s: float | None = Field(None, gt=0)
    """End within this much wall time from the start of `train` (preparing data and building the model count
    too), with a checkpoint: the run stops while one more step (the slowest so far) and the exit checkpoint (as
    long as the last one took) still fit; for time-limited machines."""
    precision: Literal["bf16-mixed", "bf16", "fp32"] = "bf16-mixed"
    compile: bool = False
    device: str = "auto"
    seed: int = 1337
    """Seeds the initial weights and the data order (a resume under another seed is refused, see
    checkpoint.allow_seed_change)."""
    eval_interval: int = Field(0, ge=0)
    """Validation loss of every dataset's validation set (data.datasets.N.val_split / holdout_*) every this
    many steps and at the last step; 0 = never."""
    eval_tokens: int = Field(1 << 20, ge=1)
    """Tokens evaluated per dataset each time: the same whole seq_len windows, spread evenly over its validation
    set (all of it when smaller)."""
    init_from: str | None = None
    """Start from these weights instead of a random init: an HF Phi folder (our export, microsoft/phi-1_5's),
    a Hub model id, or a training checkpoint (weights only: fresh optimizer, step 0). The model's shape
    comes from the weights; model.name and model.overrides may only repeat it, but for the context
    (model.overrides.max_position_embeddings, which RoPE extends). A resume ignores it."""
    init_from_tokenizer_check: bool = True
    """Refuse init_from weights trained with another tokenizer than data.tokenizer (by vocabulary): their
    embeddings would mean other tokens. false starts from them anyway (a deliberate vocabulary transplant)."""

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainSection:
        if self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch})"
            )
        return self


class CheckpointSection(_Section):
    every: int = Field(500, ge=0)
    """Save every N steps; 0 saves only at exit."""
    keep: int = Field(2, ge=1)
    at_exit: bool = True
    resume: str = "auto"
    """"auto" resumes from the newest checkpoint in run_dir/checkpoints, "never" starts fresh, else a path."""
    allow_seed_change: bool = False
    """Resume under a train.seed other than the checkpoint's: the data goes on from the samples already
    drawn in the new seed's order (some samples repeat, others are never read). Refused otherwise."""
    export_hf: bool = False
    """At the end, also write run_dir/hf: an HF PhiForCausalLM folder (safetensors, config, tokenizer)."""
    export_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


class LogSection(_Section):
    every: int = Field(10, ge=1)
    tensorboard: bool = False
    plot: bool = True
    peak_tflops: float | None = Field(None, gt=0)
    """Per-device peak for MFU; None detects H100/H200/A100 (bf16 dense) and reports no MFU elsewhere."""
    progress: bool = True


class DistributedSection(_Section):
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """auto: DDP when launched by torchrun with more than one process."""
    reshard_after_forward: bool = False
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_minutes: float = Field(30, gt=0, le=10080, allow_inf_nan=False)
    """How long a rank waits in a collective for the others before the run fails: work one rank does alone
    (rank 0 downloading or reading train.init_from, writing a checkpoint) must end within it. 30 minutes (gloo's
    default; under NCCL's 10 a Hub download of phi-1.5's weights slower than that would end in a bare watchdog
    timeout); a real hang
    (a rank stuck) is found that much later. At most a week (10080)."""


class TrainConfig(_Section):
    run_dir: str = "runs/default"
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    train: TrainSection = Field(default_factory=TrainSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    log: LogSection = Field(default_factory=LogSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if not self.data.synthetic and not self.data.datasets:
            raise ValueError("data.datasets is empty: name at least one dataset (or set data.synthetic: true)")
        if self.train.max_steps is None and self.train.max_tokens is None:
            raise ValueError("set train.max_steps or train.max_tokens")
        if self.train.max_steps is not None and self.train.max_tokens is not None:
            raise ValueError(f"train.max_steps ({self.train.max_steps}) and train.max_tokens "
                             f"({self.train.max_tokens:g}) are both set; keep one: --set train.max_steps=null "
                             f"to train by tokens, or --set train.max_tokens=null to train by steps")
        if self.train.precision == "bf16" and self.distributed.strategy == "fsdp":
            raise ValueError("train.precision bf16 with distributed.strategy fsdp: pure bf16 keeps LayerNorm gains "
                             "and biases in fp32, and FSDP2 needs one parameter dtype per block; use bf16-mixed, "
                             "whose fp32 shards are gathered in bf16 (most of pure bf16's memory saving)")
        if self.train.eval_interval and not self.data.synthetic:
            if not any(d.has_validation for d in self.data.datasets):
                raise ValueError(f"train.eval_interval is {self.train.eval_interval} but no dataset has a validation "
                                 f"set: give data.datasets.N a val_split, holdout_fraction or holdout_tokens")
            if self.train.eval_tokens < self.data.seq_len:
                raise ValueError(f"train.eval_tokens ({self.train.eval_tokens}) is less than one sequence "
                                 f"(data.seq_len {self.data.seq_len})")
        names = [d.cache_name for d in self.data.datasets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"data.datasets: two datasets share the cache name {sorted(dup)}; give each a `name`")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.train.global_batch * self.data.seq_len

    @property
    def max_steps(self) -> int:
        """Optimizer steps to train: max_steps, or max_tokens rounded up to whole steps."""
        if self.train.max_steps is not None:
            return self.train.max_steps
        return -(-int(self.train.max_tokens) // self.tokens_per_step)


def _where(loc: Loc, msg: str, path: Path | None, lines: dict[Loc, int], overrides: dict[Loc, str]) -> str:
    """Where the problem `msg` at `loc` comes from, as the recipe loader says it: the override (`--set`, or the
    CLI flag) that gave the field (or a section above it); for a check over a whole section, the overrides
    inside it that the message names; else the file's line for the field (or its nearest section); else the
    section's overrides."""
    above = [k for k in overrides if loc[: len(k)] == k]
    if above:
        return overrides[max(above, key=len)]
    inside = [k for k in overrides if k[: len(loc)] == loc]
    named = [k for k in inside if re.search(rf"\b{re.escape(dotted(k[len(loc):]))}\b", msg)]
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    if not named and path is not None and line is not None:
        return f"{path}:{line}"
    shown = named or (inside if loc else [])
    return ", ".join(overrides[k] for k in shown) or (str(path) if path is not None else "")


def _sections() -> dict[Loc, type[BaseModel]]:
    """Each section's model by its place in the config, list items' fields under the list's (no index)."""
    return {(): TrainConfig, ("model",): ModelSection, ("data",): DataSection, ("data", "datasets"): DatasetSource,
            ("optim",): OptimSection, ("schedule",): ScheduleSection, ("train",): TrainSection,
            ("checkpoint",): CheckpointSection, ("log",): LogSection, ("distributed",): DistributedSection}


def _unknown_field_hint(loc: Loc) -> str:
    """For an unknown field at `loc`: the sections that have a field of that name (`train.lr` -> optim.lr), else
    a field of its own section spelled alike (`train.max_step` -> train.max_steps), else a plea to check it."""
    name, where = str(loc[-1]), tuple(k for k in loc[:-1] if not isinstance(k, int))
    sections = _sections()
    if where not in sections:
        return "check the spelling"
    elsewhere = [dotted(sec + (name,)) for sec, m in sections.items() if sec != where and name in m.model_fields]
    if elsewhere:
        return f"did you mean {' or '.join(elsewhere)}?"
    alike = difflib.get_close_matches(name, list(sections[where].model_fields), n=1, cutoff=0.6)
    return f"did you mean {dotted(loc[:-1] + (alike[0],))}?" if alike else "check the spelling"


def _format_errors(err: ValidationError, path: Path | None, lines: dict[Loc, int], overrides: dict[Loc, str]) -> str:
    """One self-contained line per problem, `file:line: field: message` (or `--set key: ...`), as the recipe
    loader's; pydantic's own rendering runs over several lines per problem with no file or line."""
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            msg = f"unknown field ({_unknown_field_hint(loc)})"
        else:
            msg = {"missing": "required field missing"}.get(e["type"], e["msg"].removeprefix("Value error, "))
        where = _where(loc, msg, path, lines, overrides)
        field = "" if where == f"--set {dotted(loc)}" else dotted(loc)
        out.append(": ".join(part for part in (where, field, msg) if part))
    return "\n".join(out)


def _set_dotted(tree: dict, name: str, value: Any, origin: str) -> None:
    keys = name.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"{origin}: {'.'.join(keys[: i + 1])}: no list item {key} (list has {len(node)})")
            idx = int(key)
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {'.'.join(keys[:i])} is a value, not a section")
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value), the value read as YAML (numbers, booleans, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.max_steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"--set {text!r}: value is not valid YAML{column}: {yaml_problem(e, in_file=False)}") from None
    return key.strip(), value


def _read_config_file(path: Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    """The mapping a config file holds, and the line of each of its fields. Bad bytes, bad YAML, a repeated
    key, an empty file or a top level that is not a mapping raise a one-line ConfigError `<file>:<line>: ...`,
    as the recipe loader's."""
    doc = read_yaml(decode_utf8(path.read_bytes(), path, error=ConfigError), path, ConfigError)
    if doc.data is None:
        raise ConfigError(f"{path}: empty config file (state what differs from the defaults, e.g. data.datasets "
                          f"and train.max_steps, or start from a bundled config: tiny, demo-100m, phi-1.5)")
    if not isinstance(doc.data, dict):
        raise ConfigError(f"{path}:{doc.lines[()]}: the top level must be a mapping of sections "
                          f"(model:, data:, train:, ...), got a {type(doc.data).__name__}")
    return doc.data, doc.lines


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, else a bundled config by name ("tiny" -> trainer/configs/tiny.yaml)."""
    p = Path(path)
    if p.is_file():
        return p
    bundled = CONFIGS_DIR / f"{p.name.removesuffix('.yaml')}.yaml"
    if p.parent == Path(".") and bundled.is_file():
        return bundled
    known = ", ".join(sorted(f.stem for f in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"config file not found: {path} (bundled configs: {known})")


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                flags: dict[str, str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply dotted overrides, validate. Problems raise a
    ConfigError of one line each, naming the file and line, or the `--set`, and the field. `flags` names the
    CLI flag that gave an override ({"train.max_steps": "--max-steps"}), for errors to name it instead."""
    tree: dict[str, Any] = {}
    lines: dict[Loc, int] = {}
    p: Path | None = None
    if path is not None:
        p = resolve_config_path(path)
        tree, lines = _read_config_file(p)
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    origins = {key: (flags or {}).get(key, f"--set {key}") for key, _ in items}
    for key, value in items:
        _set_dotted(tree, key, value, origins[key])
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, p, lines, {key_path(k): o for k, o in origins.items()})) from None


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

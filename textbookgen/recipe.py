"""Recipes: one YAML file that describes one reproducible dataset build, validated with pydantic.

Errors name the file, the line and the field (`recipes/x.yaml:12: taxonomy.grow.target: ...`): the
YAML is composed into nodes first, which keep their line marks, and pydantic's error locations are
mapped back onto them. Paths in a recipe are relative to the recipe file. `builtin:NAME` names a
root topic list shipped in `textbookgen/topics/`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
from collections.abc import Mapping
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from textbookgen.curation import CurationConfig
from textbookgen.jsonl import decode_utf8
from textbookgen.taxonomy import PER_CALL
from textbookgen.websamples import LID_MIN_SCORE, MIN_SCRIPT_SHARE, SCRIPTS
from textbookgen.yamlfile import dotted, key_path, read_yaml

if TYPE_CHECKING:
    from textbookgen.taxonomy import Taxonomy

TOPICS_DIR = Path(__file__).with_name("topics")


def builtin_topics(source: str) -> Path:
    """The file of a shipped topic list `builtin:NAME`; ValueError naming the built-ins when there is none."""
    path = TOPICS_DIR / f"{source.removeprefix('builtin:')}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in TOPICS_DIR.glob("*.yaml")))
        raise ValueError(f"no built-in topic list {source!r} (built-ins: {names})")
    return path
REASONING_MODELS = re.compile(r"(gpt-5(?!-chat)|o[1-9])\b")
"""OpenAI's reasoning models (gpt-5 family but gpt-5-chat; o1, o3, o4-mini): temperature and top_p 1 only."""
KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "openai-compatible": "OPENAI_API_KEY",
}


class RecipeError(ValueError):
    """A recipe is invalid; `str()` is `file:line: field: problem`, one line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderConfig(_Strict):
    """Which API serves the model. `base_url` points at a vLLM server, a proxy or the emulator; a list of URLs
    spreads the requests over replicas of the model (one server per GPU node)."""

    name: Literal["openai", "anthropic", "openai-compatible"] = "openai"
    base_url: str | list[str] | None = None
    api_key_env: str | None = None  # the environment variable holding the key (never the key itself)
    batch: bool = False  # the provider's batch API for the documents: half price, answers within 24 h
    batch_size: int = Field(10_000, ge=1, strict=True)
    batch_poll_s: float = Field(60.0, ge=0.0)
    timeout_s: float = Field(120.0, gt=0.0, allow_inf_nan=False)  # per attempt; reasoning models need more
    max_attempts: int = Field(8, ge=1, strict=True)  # per request, over transient errors (429, 5xx, timeouts)
    # stop once 50 requests finished and more than this share failed (null: never): a bad prompt or model
    max_error_rate: float | None = Field(0.5, ge=0.0, le=1.0)

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, v: str | None) -> str | None:
        from textbookgen.providers import check_key_variable

        return v if v is None else check_key_variable(v)

    @field_validator("base_url")
    @classmethod
    def _urls(cls, v: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        from textbookgen.providers import replica_urls

        replica_urls(info.data.get("name", "openai"), v)
        return v

    @model_validator(mode="after")
    def _batch_api_exists(self) -> ProviderConfig:
        if self.batch and self.name == "openai-compatible":
            raise ValueError("batch: true needs name openai or anthropic (OpenAI-compatible servers have no batch "
                             "API; a local server is fastest live)")
        if self.batch:
            from textbookgen.providers import replica_urls

            replica_urls(self.name, self.base_url, batch=True)  # several URLs: one line naming the reason
        return self

    @property
    def urls(self) -> list[str]:
        """The server URLs `base_url` names: none, one, or one per replica."""
        from textbookgen.providers import replica_urls

        return replica_urls(self.name, self.base_url)

    @property
    def key_env(self) -> str:
        return self.api_key_env or KEY_ENV[self.name]

    def has_credentials(self) -> bool:
        """A key in the environment, or a server of your own (local, or any openai-compatible one)."""
        if os.environ.get(self.key_env) or (self.name == "openai-compatible" and self.base_url):
            return True
        hosts = {url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0] for url in self.urls}
        return bool(hosts) and hosts <= {"127.0.0.1", "localhost", "::1", "[::1]"}

    def api_key(self) -> str | None:
        """The key to hand the engine: the environment's, or a placeholder for a server of your own. A
        variable named in `api_key_env` must be set: the server wants that key, and a placeholder would only
        come back as an authentication failure that hides the cause."""
        unset = self.unset_key()
        if unset:
            raise RecipeError(unset)
        return os.environ.get(self.key_env) or ("EMPTY" if self.has_credentials() else None)

    def unset_key(self) -> str | None:
        """Why `api_key()` fails: the variable `api_key_env` names is not set; None when it is (or none is
        named)."""
        if self.api_key_env and not os.environ.get(self.api_key_env):
            return f"${self.api_key_env} (provider.api_key_env) is not set"
        return None


class SamplingConfig(_Strict):
    """None (`null`): not sent, the model's own default (OpenAI's reasoning models take no other)."""

    temperature: float | None = Field(0.8, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, strict=True)  # None: each template's own default


class LimitsConfig(_Strict):
    """Your account's rate limits (None: learned from the provider's headers) and concurrency."""

    rpm: int | None = Field(None, ge=1, strict=True)
    tpm: int | None = Field(None, ge=1, strict=True)  # input + output tokens (OpenAI's tokens-per-minute)
    input_tpm: int | None = Field(None, ge=1, strict=True)
    output_tpm: int | None = Field(None, ge=1, strict=True)
    concurrency: int = Field(64, ge=1, strict=True)


class ModelPrice(_Strict):
    """USD per million tokens at the standard API (the batch API bills `pricing.BATCH_DISCOUNT` of it): what
    a self-hosted model costs you (GPU hours over tokens served), or a contract price unlike the list's."""

    input_per_mtok: float = Field(..., ge=0.0, allow_inf_nan=False)
    output_per_mtok: float = Field(..., ge=0.0, allow_inf_nan=False)


class BudgetConfig(_Strict):
    """For the whole build: taxonomy growth and documents, over every run in the output folder."""

    max_cost_usd: float | None = Field(None, gt=0)
    max_output_tokens: int | None = Field(None, ge=1, strict=True)


class GrowConfig(_Strict):
    """Expand the root topics through the LLM to `target` leaves (phi-1.5 used ~20,000)."""

    target: int = Field(..., ge=1, strict=True)
    per_call: int = Field(PER_CALL, ge=2, le=100, strict=True)
    max_depth: int | None = Field(None, ge=1, strict=True)
    model: str | None = None  # default: the recipe's model
    temperature: float | None = Field(0.7, ge=0.0, le=2.0)  # None: not sent
    max_tokens: int = Field(1024, ge=16, strict=True)
    similarity: float = Field(90.0, ge=50.0, le=100.0)


class TaxonomyConfig(_Strict):
    source: str
    format: Literal["yaml", "csv", "markdown"] | None = None
    select: str | None = None
    name: str | None = None
    grow: GrowConfig | None = None
    weighting: Literal["hierarchical", "flat"] = "hierarchical"
    max_per_topic: int | None = Field(None, ge=1, strict=True)
    min_per_topic: int = Field(0, ge=0, strict=True)

    def grows(self, leaves: int) -> bool:
        """Whether a build grows roots of `leaves` leaves: `grow` is set and they fall short of `grow.target`.
        Growth only adds leaves under the ones it has, so roots that meet the target grow nothing: their topics
        are the build's, and no growth is planned, paid or credited to the model."""
        return self.grow is not None and leaves < self.grow.target

    @field_validator("source")
    @classmethod
    def _exists(cls, v: str, info: ValidationInfo) -> str:
        if v.startswith("builtin:"):
            builtin_topics(v)
            return v
        _check_file(v, info, "taxonomy file")
        return v


class RetrievalConfig(_Strict):
    """Topic-conditioned seeds: this share of prompts get an extract BM25-retrieved for their topic."""

    share: float = Field(0.5, ge=0.0, le=1.0)
    top_k: int = Field(20, ge=1, strict=True)


class LanguageFilterConfig(_Strict):
    """Keep only extracts in the recipe's `language`. With `model` (a fastText language-ID model such
    as lid.176.bin, GlotLID or OpenLID: a path, an http(s) URL, or a Hub model repo `hf:org/name` for its
    model.bin, `hf:org/name/file.bin` for another file), the model's top label must be the language
    (`label`, default from `language`: `en` or `eng_Latn`) with probability >= `min_score`. Without a
    model, at least `min_script_share` of the letters must be in the language's script(s) (`scripts`,
    default from `language`): this drops Russian or Korean pages from an English pool, but lets French
    or German through (same script)."""

    model: str | None = None
    label: str | None = None
    min_score: float = Field(LID_MIN_SCORE, gt=0.0, le=1.0)
    scripts: list[str] | None = Field(None, min_length=1)
    min_script_share: float = Field(MIN_SCRIPT_SHARE, gt=0.0, le=1.0)

    @field_validator("model")
    @classmethod
    def _model_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not v.startswith(("hf:", "hf://", "http://", "https://")):
            _check_file(v, info, "language-ID model")
        return v

    @field_validator("scripts")
    @classmethod
    def _known_scripts(cls, v: list[str] | None) -> list[str] | None:
        unknown = [s for s in v or () if s not in SCRIPTS]
        if unknown:
            raise ValueError(f"unknown script(s) {unknown} (known: {', '.join(sorted(SCRIPTS))})")
        return v


class WebSamplesConfig(_Strict):
    source: str  # a file or folder (parquet/jsonl/json/txt, .gz), an http(s) URL, or hf:org/name
    text_field: str | None = None
    split: str = "train"
    config: str | None = None
    limit: int | None = Field(20_000, ge=1, strict=True)
    min_chars: int = Field(200, ge=0, strict=True)
    max_chars: int | None = Field(None, ge=1, strict=True)
    extract_chars: int = Field(1000, ge=100, strict=True)
    share: float = Field(1.0, ge=0.0, le=1.0)  # share of prompts seeded with an extract at all
    retrieval: RetrievalConfig | None = None
    # on by default (the script check for the recipe's language); `false` turns it off
    language_filter: LanguageFilterConfig | None = Field(default_factory=LanguageFilterConfig)

    @field_validator("language_filter", mode="before")
    @classmethod
    def _filter_switch(cls, v: Any) -> Any:
        """`language_filter: false` turns the filter off, `true` asks for the defaults."""
        if v is True:
            return {}
        return None if v is False else v

    @field_validator("source")
    @classmethod
    def _exists(cls, v: str, info: ValidationInfo) -> str:
        if not v.startswith(("hf:", "hf://", "http://", "https://")):
            _check_file(v, info, "web-sample source", allow_dir=True)
        return v

    @property
    def is_remote(self) -> bool:
        return self.source.startswith(("hf:", "hf://", "http://", "https://"))


class MixEntry(_Strict):
    template: str  # a built-in name or a .j2 file
    weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    audiences: dict[str, float] = Field(default_factory=lambda: {"general": 1.0})
    styles: dict[str, float] = Field(default_factory=lambda: {"academic": 1.0})
    formats: dict[str, float] = Field(default_factory=lambda: {"markdown": 1.0})
    max_tokens: int | None = Field(None, ge=1, strict=True)

    @field_validator("audiences", "styles", "formats")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        """Relative weights within the entry: a negative one is meaningless, and all zeros would
        silently drop the entry from the mix whatever its `weight`."""
        if not all(math.isfinite(w) for w in v.values()):
            raise ValueError(f"weights must be finite numbers, got {v}")
        negative = {k: w for k, w in v.items() if w < 0}
        if negative:
            raise ValueError(f"weights must be >= 0, got {negative}")
        if sum(v.values()) <= 0:
            raise ValueError("needs at least one positive weight")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str, info: ValidationInfo) -> str:
        """The template parses and reads only the variables rendering gives it (else the build would fail at
        its prompts, after growing the taxonomy)."""
        from textbookgen.templates import TemplateError, load_template, undeclared_variables

        try:
            template = load_template(v, _base_dir(info))
        except TemplateError as e:
            raise ValueError(str(e)) from None
        unknown = undeclared_variables(template)
        if unknown:
            raise ValueError("; ".join(f"{template.origin}:{u}" for u in unknown))
        return v


class HubConfig(_Strict):
    repo_id: str | None = None
    private: bool = False
    push: bool = False  # push after the card is written (or pass `--push`)
    # push even when requests failed or the budget stopped generation (or pass `--push-incomplete`); the
    # card says the dataset is incomplete. Off: a partial dataset is written locally, never published
    push_incomplete: bool = False

    @field_validator("repo_id")
    @classmethod
    def _a_repo(cls, v: str | None) -> str | None:
        """A repo id the push would refuse is refused with the recipe, before a build pays for what it pushes."""
        from textbookgen.hub import check_repo_id

        return v if v is None else check_repo_id(v)


class Recipe(_Strict):
    """One dataset build. See recipes/*.yaml for commented examples."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][\w.-]*$")
    version: str = "0.1.0"
    description: str = ""
    license: str = "apache-2.0"
    provider: ProviderConfig = Field(default_factory=ProviderConfig)
    model: str
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)  # null: no budget
    # by model name, over textbookgen.pricing.PRICES; a model in neither counts as $0 (`--price` adds one)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    taxonomy: TaxonomyConfig
    web_samples: WebSamplesConfig | None = None
    mix: list[MixEntry] = Field(..., min_length=1)
    audiences: dict[str, str] = Field(default_factory=dict)  # extra audiences: name -> description
    styles: dict[str, str] = Field(default_factory=dict)
    formats: dict[str, str] = Field(default_factory=dict)
    language: str = "English"
    system: str | None = None
    samples: int = Field(..., ge=1, strict=True)
    seed: int = Field(0, strict=True)
    curation: CurationConfig = Field(default_factory=CurationConfig)
    output: str | None = None  # default: build/<name> beside the recipe
    hub: HubConfig = Field(default_factory=HubConfig)
    card_template: str | None = None

    # set by load_recipe
    _path: Path | None = None
    _hash: str = ""
    _where: Any = None  # _Where: the file's lines and the overrides, for problems found after loading

    @field_validator("budget", "prices", mode="before")
    @classmethod
    def _null_is_none(cls, v: Any) -> Any:
        """`budget: null` (or `--set budget=null`) is no budget, `prices: null` no prices of your own."""
        return {} if v is None else v

    @field_validator("card_template")
    @classmethod
    def _card(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            _check_file(v, info, "card template")
        return v

    # ---- resolved views ----------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    @property
    def hash(self) -> str:
        """sha256 (16 hex) of the recipe file's bytes."""
        return self._hash

    def resolve(self, p: str) -> Path:
        path = Path(p).expanduser()
        return (path if path.is_absolute() else self.base_dir / path).resolve()

    def taxonomy_path(self) -> Path:
        src = self.taxonomy.source
        if src.startswith("builtin:"):
            return builtin_topics(src)
        return self.resolve(src)

    def output_dir(self) -> Path:
        return self.resolve(self.output) if self.output else self.base_dir / "build" / self.name

    def tables(self) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        from textbookgen.templates import AUDIENCES, FORMATS, STYLES

        return {**AUDIENCES, **self.audiences}, {**STYLES, **self.styles}, {**FORMATS, **self.formats}

    def resolved_curation(self) -> CurationConfig:
        """The curation settings with their file paths resolved against the recipe's folder."""
        return self.curation.with_paths_from(self.base_dir)

    def sampling_notes(self) -> list[str]:
        """Sampling settings the model is known to refuse with a 400 on every request: worth a warning
        before a build, not an error (a proxy or a newer snapshot may take them)."""
        notes = []
        s = self.sampling
        if self.provider.name == "anthropic" and s.temperature is not None and s.top_p is not None:
            notes.append(
                "sampling: temperature and top_p are both set; Claude Sonnet 4.5, Haiku 4.5 and Opus 4.1 "
                "refuse that (400 `temperature` and `top_p` cannot both be specified): keep temperature, "
                "set top_p: null"
            )
        grow = self.taxonomy.grow
        knobs = [("sampling.temperature", self.model, s.temperature), ("sampling.top_p", self.model, s.top_p)]
        if grow is not None:
            knobs.append(("taxonomy.grow.temperature", grow.model or self.model, grow.temperature))
        for field, model, value in knobs:
            if value not in (None, 1) and REASONING_MODELS.match(model.rsplit("/", 1)[-1]):
                notes.append(
                    f"{field}: {value}: {model} samples at 1 only and refuses any other value (400); "
                    f"set {field}: null"
                )
        return notes

    def price_table(self) -> dict[str, tuple[float, float]]:
        """`prices` as the engine and `textbookgen.pricing` take them: {model: (input, output) per 1M}."""
        return {m: (p.input_per_mtok, p.output_per_mtok) for m, p in self.prices.items()}

    def models(self) -> dict[str, str]:
        """The models the build sends requests to, by the field naming each (growth's, if its own)."""
        grow = self.taxonomy.grow
        if grow is None or grow.model in (None, self.model):
            return {"model": self.model}
        return {"model": self.model, "taxonomy.grow.model": grow.model}

    def model_prices(self) -> dict[str, dict[str, float]]:
        """The price (USD per 1M tokens, standard API) each model of the build is counted at, for the
        manifest; a model without one is left out (it counts as $0)."""
        from textbookgen.pricing import is_priced, price_of

        table = self.price_table()
        return {
            m: dict(zip(("input_per_mtok", "output_per_mtok"), price_of(m, table), strict=True))
            for m in self.models().values()
            if is_priced(m, table)
        }

    def notes(self) -> list[str]:
        """What is worth a warning before a build pays: sampling the model refuses (`sampling_notes`), and a key
        variable named but not set where the build would otherwise go ahead (it stops before its first request)."""
        unset = self.provider.unset_key() if self.provider.has_credentials() else None
        key = [f"{unset}: export it before building (a build stops before its first request)"] * bool(unset)
        return [*self.sampling_notes(), *key]

    def unpriced_budget_problems(self, *, grows: bool) -> list[tuple[tuple[Any, ...], str]]:
        """A dollar budget over a model with no price (in neither `pricing.PRICES` nor `prices:`): its requests
        would count as $0, so the budget could never stop them, an unbounded spend. Refused before any request,
        as `generate --max-cost` and the SDK refuse it (`engine.unpriced_budget`); names each such model and the
        field that names it. `grows`: the taxonomy grows (`TaxonomyConfig.grows`, known once its roots are read
        and the build has no grown tree cached), so growth's own model (`models`) is sent requests too; else
        only the documents' model is, and growth's needs no price."""
        from textbookgen.pricing import is_priced, unknown_model_lead

        if self.budget.max_cost_usd is None:
            return []
        table = self.price_table()
        models = self.models() if grows else {"model": self.model}
        unpriced = {field: m for field, m in models.items() if not is_priced(m, table)}
        if not unpriced:
            return []
        named = " and ".join(f"{m} ({field})" for field, m in unpriced.items())
        one = len(unpriced) == 1
        m = next(iter(unpriced.values()))
        lead = unknown_model_lead(((f"{m} ({field})", m) for field, m in unpriced.items()), table)
        return [(("budget", "max_cost_usd"), (
            f"{lead}{named} {'has' if one else 'have'} no price, so {'its' if one else 'their'} requests would count as $0 "
            f"and this budget could never stop them: give {'its' if one else 'each its'} price in USD per 1M tokens, "
            f"`prices: {{{m}: {{input_per_mtok: IN, output_per_mtok: OUT}}}}` in the recipe (0 and 0 for a free "
            f"server of your own) or --price {m}=IN,OUT, or drop budget.max_cost_usd (budget.max_output_tokens "
            "bounds a build without prices)"
        ))]

    def problem_text(self, problems: list[tuple[tuple[Any, ...], str]]) -> str:
        """Problems (field location, message) found after loading, as `load_recipe` reports its own: one line
        each, `file:line: field: message`, or naming the `--set` / `--price` that set the field."""
        where = self._where or _Where(self._path or Path("recipe"), {}, {})
        return "\n".join(where.format(loc, msg) for loc, msg in problems)

    def public_dict(self) -> dict[str, Any]:
        """The recipe as data, for manifests and cards (it never holds a key: only its env name)."""
        return self.model_dump(mode="json")


def _problems(recipe: Recipe) -> list[tuple[tuple[Any, ...], str]]:
    """What pydantic cannot see: mix names that are neither built in nor defined, an output folder
    that a file stands in the way of, a budget that cannot hold the build's requests (a dollar budget at no price,
    a request over it), and curation files (benchmarks, classifier model) that are not there."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    tables = dict(zip(("audiences", "styles", "formats"), recipe.tables(), strict=True))
    for i, entry in enumerate(recipe.mix):
        for dim, table in tables.items():
            unknown = sorted(set(getattr(entry, dim)) - set(table))
            if unknown:
                problems.append(((("mix", i, dim)), f"unknown {dim} {unknown} (known: {', '.join(table)})"))
    if sum(e.weight for e in recipe.mix) <= 0:
        problems.append((("mix",), "all mix weights are 0"))
    out = recipe.output_dir()
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        problems.append((("output",), f"{out} cannot be the output folder: {blocker} is a file"))
    lf = recipe.web_samples.language_filter if recipe.web_samples else None
    if lf is not None and not lf.model:  # a model is loaded (maybe fetched) when the samples are opened
        from textbookgen.websamples import WebSampleError, make_language_filter

        try:
            make_language_filter(lf, recipe.language, recipe.base_dir)
        except WebSampleError as e:
            problems.append((("web_samples", "language_filter"), str(e).split(": ", 1)[-1]))
    problems += recipe.unpriced_budget_problems(grows=False)  # growth's model: `deferred_problems`, the build
    problems += _unaffordable(recipe)
    cur = recipe.resolved_curation()
    for i, b in enumerate(cur.decontamination.benchmarks):
        if not b.path.startswith("hf://") and not Path(b.path).exists():
            loc = ("curation", "decontamination", "benchmarks", i, "path")
            problems.append((loc, f"benchmark file not found: {b.path}"))
    if cur.classifier.model_path and not Path(cur.classifier.model_path).is_file():
        problems.append(
            (
                ("curation", "classifier", "model_path"),
                f"classifier model not found: {cur.classifier.model_path}",
            )
        )
    return problems


def deferred_problems(recipe: Recipe, tax: Taxonomy) -> list[tuple[tuple[Any, ...], str]]:
    """What a build rejects only on reaching it, checked here with its taxonomy at hand, without the network
    or paid work (`textbookgen validate`): a dollar budget on growth's own model with no price where the roots
    grow, too few topics for `samples` under the per-topic caps, a template that fails to render for a real
    topic, an output folder that cannot be written, a classifier model that does not load (curation comes after
    every paid request)."""
    problems = recipe.unpriced_budget_problems(grows=recipe.taxonomy.grows(len(tax.leaves())))
    problems += _taxonomy_fit(recipe, tax)
    leaves = tax.leaves()
    for i, entry in enumerate(recipe.mix if leaves else []):
        problem = _render_problem(recipe, entry, leaves[0].path)
        if problem:
            problems.append((("mix", i, "template"), problem))
    out = recipe.output_dir()
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        problems.append((("output",), f"{out} cannot be the output folder: {existing} is not writable"))
    problems += web_source_problems(recipe)
    classifier = recipe.resolved_curation().classifier
    if classifier.enabled and classifier.model_path and Path(classifier.model_path).is_file():
        from textbookgen.curation.classifier import QualityModel

        try:
            QualityModel.load(classifier.model_path, classifier.positive_label)
        except (ValueError, OSError) as e:
            problems.append((("curation", "classifier", "model_path"), str(e)))
    return problems


def web_source_problems(recipe: Recipe) -> list[tuple[tuple[Any, ...], str]]:
    """Why `web_samples.source` cannot be read here, found without reading it: a Hub dataset needs the
    `datasets` package (a local path is checked with the recipe). The build checks this before growth is paid."""
    wc = recipe.web_samples
    if wc is None or not wc.source.startswith(("hf:", "hf://")) or importlib.util.find_spec("datasets") is not None:
        return []
    return [(("web_samples", "source"), f"{wc.source}: reading Hub datasets needs `pip install datasets`")]


def repeated_prompts_note(recipe: Recipe, tax: Taxonomy) -> str | None:
    """How many prompts must repeat an earlier one word for word (at least, `forced_repeats`): the plan counts
    them exactly once rendered; `validate` warns before, as a recipe asking for more documents than topics x
    cells is a mistake it would otherwise call ok. None where the build grows the taxonomy (its topics are not
    known yet); a `grow.target` the roots already meet grows nothing, so their prompts are the build's."""
    if recipe.taxonomy.grows(len(tax.leaves())):
        return None
    forced = forced_repeats(recipe, tax)
    if not forced or not forced[0]:
        return None
    repeated, topics, most, cells = forced
    more = "raise taxonomy.grow.target" if recipe.taxonomy.grow is not None else "add topics (taxonomy.grow)"
    return recipe.problem_text([(("samples",), (
        f"at least {repeated:,} of {recipe.samples:,} prompts repeat an earlier one word for word "
        f"({topics:,} topics, up to {most:,} prompts each, over {cells:,} mix cells "
        f"(template x audience x style x format) and no web extracts): {more}, audiences, "
        "styles or formats, web_samples, or lower samples"
    ))])


def forced_repeats(recipe: Recipe, tax: Taxonomy) -> tuple[int, int, int, int] | None:
    """The prompts drawn from `tax` that must repeat an earlier one word for word, at least: those a topic gets
    beyond its mix cells, where nothing else tells them apart; with the topics used, the most prompts a topic gets
    and the cells. None where something may (web extracts, a template drawing `words`)."""
    from collections import Counter

    from textbookgen.templates import expand_mix, load_template, template_variables

    web = recipe.web_samples
    if web is not None and web.share > 0:
        return None
    if any("words" in template_variables(load_template(e.template, recipe.base_dir)) for e in recipe.mix):
        return None
    cells = len(expand_mix([e.model_dump() for e in recipe.mix]))
    tc = recipe.taxonomy
    per_topic = Counter(t.id for t in tax.sample(recipe.samples, recipe.seed, weighting=tc.weighting,
                                                  max_per_topic=tc.max_per_topic, min_per_topic=tc.min_per_topic))
    repeated = sum(max(0, n - cells) for n in per_topic.values())
    return repeated, len(per_topic), max(per_topic.values(), default=0), cells


def _taxonomy_fit(recipe: Recipe, tax: Taxonomy) -> list[tuple[tuple[Any, ...], str]]:
    """The topics sampled for `samples` under the per-topic caps and quotas, as the prompts stage samples
    them; a taxonomy the build grows first is checked against `grow.target` leaves, the most growth gives."""
    tc = recipe.taxonomy
    leaves = len(tax.leaves())
    if tc.grows(leaves):
        return grown_caps_problems(recipe, tax)
    try:
        tax.sample(recipe.samples, recipe.seed, weighting=tc.weighting, max_per_topic=tc.max_per_topic,
                   min_per_topic=tc.min_per_topic)
    except ValueError as e:
        return [caps_problem(recipe, e, leaves)]
    return []


def grown_caps_problems(recipe: Recipe, roots: Taxonomy) -> list[tuple[tuple[Any, ...], str]]:
    """The per-topic caps against the `grow.target` leaves the build grows `roots` to, before growth is paid (the
    prompts stage checks the tree grown, which may stop short): `max_per_topic` x target under `samples`, or
    `min_per_topic` x target over it, can never be met. A root leaf's `meta.quota` replaces its cap and its minimum
    where it stays a leaf (`Taxonomy.sample` fills quotas first): either is refused only if it cannot be met
    whichever of those topics growth expands."""
    tc = recipe.taxonomy
    assert tc.grow is not None
    target, samples = tc.grow.target, recipe.samples
    quotas = [t.meta["quota"] for t in roots.leaves() if "quota" in t.meta]
    cap = tc.max_per_topic
    # samples a root leaf's quota takes beyond the cap where it stays a leaf (the cap holds only the other leaves)
    extra = sum(max(0, q - cap) for q in quotas) if cap is not None else 0
    if cap is not None and cap * target + extra < samples:
        over = f", plus {extra:,} for root topics whose quota is over it," if extra else ""
        problem = (f"max_per_topic={cap} x {target:,} topics (taxonomy.grow.target){over} < {samples:,} samples: "
                   "raise taxonomy.max_per_topic or taxonomy.grow.target, or lower samples")
        return [(("taxonomy", "max_per_topic"), problem)]
    # samples a root leaf's quota frees where it stays a leaf (its quota under the minimum every other leaf gets)
    freed = sum(max(0, tc.min_per_topic - q) for q in quotas)
    if tc.min_per_topic * target - freed > samples:
        under = f", less {freed:,} for root topics whose quota is under it," if freed else ""
        problem = (f"min_per_topic={tc.min_per_topic} x {target:,} topics (taxonomy.grow.target){under} "
                   f"> {samples:,} samples: lower taxonomy.min_per_topic or raise samples, or grow fewer topics "
                   "(taxonomy.grow.target)")
        return [(("taxonomy", "min_per_topic"), problem)]
    return []


def caps_problem(recipe: Recipe, error: ValueError, leaves: int) -> tuple[tuple[Any, ...], str]:
    """A `Taxonomy.sample` refusal (per-topic caps or quotas that cannot fit `samples` over `leaves` topics) as a
    recipe problem naming the fields that fix it: validation and a build (whose grown taxonomy validation never
    saw) report it alike."""
    tc = recipe.taxonomy
    field = next((f for f in ("max_per_topic", "min_per_topic") if str(error).startswith(f)), "source")
    if field == "max_per_topic":
        more = "taxonomy.grow.target" if tc.grow is not None else "the topics (taxonomy.source)"
        fix = f"raise taxonomy.max_per_topic or {more}, or lower samples"
    elif field == "min_per_topic":
        fewer = ", or grow fewer topics (taxonomy.grow.target)" if tc.grow is not None else ""
        fix = f"lower taxonomy.min_per_topic or raise samples{fewer}"
    else:
        fix = f"change the topics' quotas (meta.quota in {tc.source}) or samples"
    return ("taxonomy", field), f"{error} (the taxonomy has {leaves:,} leaf topics): {fix}"


def _render_problem(recipe: Recipe, entry: MixEntry, topic_path: tuple[str, ...]) -> str | None:
    """Why a mix entry's template fails to render for this topic (with and without a web extract, where the
    recipe has web samples), as the prompts stage renders it; None when it renders."""
    from textbookgen.templates import TemplateError, load_template, simple_words, variables

    template = load_template(entry.template, recipe.base_dir)
    audiences, styles, formats = recipe.tables()
    for extract in (None, "An extract of a web page.") if recipe.web_samples else (None,):
        v = variables(topic_path=topic_path, audience=next(iter(entry.audiences)),
                      style=next(iter(entry.styles)), format=next(iter(entry.formats)), web_extract=extract,
                      language=recipe.language, words=simple_words(recipe.seed, 0), audiences=audiences,
                      styles=styles, formats=formats)
        try:
            template.render(**v)
        except TemplateError as e:
            return str(e)
    return None


def _unaffordable(recipe: Recipe) -> list[tuple[tuple[Any, ...], str]]:
    """Requests no budget can hold: the engine sends one only when its worst case (its max_tokens of output,
    at the model's price) fits beside what is spent, so a max_tokens over `budget.max_output_tokens`, or whose
    output alone costs more than `budget.max_cost_usd`, stops the build before it sends anything."""
    from textbookgen.pricing import BATCH_DISCOUNT, price_of
    from textbookgen.templates import load_template

    b = recipe.budget
    if b.max_output_tokens is None and b.max_cost_usd is None:
        return []
    docs = BATCH_DISCOUNT if recipe.provider.batch else 1.0
    asks: dict[tuple[Any, ...], tuple[str, int, str, float]] = {}  # field: what, max_tokens, model, factor
    for i, e in enumerate(recipe.mix):
        if e.max_tokens is not None:
            asks[("mix", i, "max_tokens")] = ("max_tokens", e.max_tokens, recipe.model, docs)
        elif recipe.sampling.max_tokens is not None:
            asks[("sampling", "max_tokens")] = ("max_tokens", recipe.sampling.max_tokens, recipe.model, docs)
        else:
            default = load_template(e.template, recipe.base_dir).max_tokens
            asks[("mix", i, "template")] = ("its default max_tokens", default, recipe.model, docs)
    grow = recipe.taxonomy.grow
    if grow is not None:
        grow_model = grow.model or recipe.model
        asks[("taxonomy", "grow", "max_tokens")] = ("max_tokens", grow.max_tokens, grow_model, 1.0)
    table = recipe.price_table()
    problems = []
    for loc, (what, n, model, factor) in asks.items():
        worst = n * price_of(model, table)[1] * factor / 1e6
        if b.max_output_tokens is not None and n > b.max_output_tokens:
            over = f"over budget.max_output_tokens {b.max_output_tokens:,}"
        elif b.max_cost_usd is not None and worst > b.max_cost_usd:
            over = (f"${worst:,.4f} of output at {model}'s price, over budget.max_cost_usd "
                    f"${b.max_cost_usd:,.4f}")
        else:
            continue
        problems.append((loc, f"{what} {n:,} is {over}: no single request can fit the budget, so the build "
                              "would send none; lower max_tokens or raise the budget"))
    return problems


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir") or Path.cwd())


def _check_file(v: str, info: ValidationInfo, what: str, *, allow_dir: bool = False) -> None:
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = _base_dir(info) / p
    if not (p.is_file() or (allow_dir and p.is_dir())):
        raise ValueError(f"{what} not found: {p}")


# ---- loading with line numbers -----------------------------------------------------------------
def load_recipe(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    prices: Mapping[str, tuple[float, float]] | None = None,
) -> Recipe:
    """Read and validate a recipe; raise RecipeError naming the file, line and field of each problem.
    `overrides` ({"samples": 10, "provider.base_url": "..."}) are applied before validation, and `prices`
    ({model: (input, output) USD per 1M tokens}, `--price`) over the recipe's own."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a folder, not a recipe file") from None
    doc = read_yaml(decode_utf8(raw, path, error=RecipeError), path, RecipeError)
    if not isinstance(doc.data, dict):
        raise RecipeError(f"{path}:{doc.lines.get((), 1)}: a recipe is a YAML mapping (name:, model:, taxonomy:, ...)")
    data = doc.data
    for name, value in (overrides or {}).items():
        _set_dotted(data, name, value)
    if prices:
        _add_prices(data, prices)
    labels = {key_path(k): f"--set {dotted(key_path(k))}" for k in overrides or {}}
    labels.update({("prices", m): f"--price {m}" for m in prices or {}})
    where = _Where(path, doc.lines, labels)
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as e:
        raise RecipeError(_format_errors(where, e)) from None
    recipe._path = path.resolve()
    recipe._where = where
    problems = _problems(recipe)
    if problems:
        raise RecipeError(recipe.problem_text(problems))
    given = repr(sorted((overrides or {}).items())) + (repr(sorted(prices.items())) if prices else "")
    recipe._hash = hashlib.sha256(raw + given.encode()).hexdigest()[:16]
    return recipe


def _add_prices(data: dict[str, Any], prices: Mapping[str, tuple[float, float]]) -> None:
    """`--price MODEL=IN,OUT` over the recipe's `prices:`, whose other models keep theirs (a `prices:` that is
    no mapping is left for validation to report)."""
    table = data.get("prices")
    if table is None:
        table = data["prices"] = {}
    if isinstance(table, dict):
        table.update({m: {"input_per_mtok": i, "output_per_mtok": o} for m, (i, o) in prices.items()})


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one `--set a.b.0.c=VALUE`: missing (or null) mappings are created on the way, list items
    are addressed by index; going through anything else is a RecipeError naming the key."""
    keys = key_path(dotted)
    cur: Any = data
    for depth, key in enumerate(keys):
        above = ".".join(str(k) for k in keys[:depth]) or "the recipe"
        if isinstance(cur, list) and not (isinstance(key, int) and key < len(cur)):
            raise RecipeError(
                f"--set {dotted}: {above} is a list of {len(cur)} item(s): use an index 0..{len(cur) - 1}"
            )
        if not isinstance(cur, (dict, list)):
            raise RecipeError(f"--set {dotted}: {above} is {cur!r}, not a mapping")
        if isinstance(cur, dict):
            key = str(key)
        if depth == len(keys) - 1:
            cur[key] = value
        elif isinstance(cur, dict) and cur.get(key) is None:
            cur[key] = {}
        cur = cur[key]


class _Where:
    """Where a problem comes from: the `--set` (or `--price`) that set the field, else the file's line."""

    def __init__(
        self, path: Path, lines: dict[tuple[Any, ...], int], overrides: dict[tuple[Any, ...], str]
    ) -> None:
        self.path, self.lines, self.overrides = path, lines, overrides  # field -> the option that set it

    def format(self, loc: tuple[Any, ...], msg: str) -> str:
        field = ".".join(str(x) for x in loc) or "(recipe)"
        for key, option in self.overrides.items():
            if loc and (key[: len(loc)] == loc or loc[: len(key)] == key):
                return f"{option}: {msg}" if loc == key else f"{option}: {field}: {msg}"
        line = next((self.lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in self.lines), 1)
        return f"{self.path}:{line}: {field}: {msg}"


def _format_errors(where: _Where, err: ValidationError) -> str:
    out = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key ({_key_hint(loc)})"
        elif e["type"] == "missing":
            msg = "required field missing"
        out.append(where.format(loc, msg))
    return "\n".join(out)


def _key_hint(loc: tuple[Any, ...]) -> str:
    """For an unknown key at `loc`: the key it was probably meant to be, else the keys its mapping takes."""
    keys = _known_keys(loc[:-1])
    close = get_close_matches(str(loc[-1]), keys, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"{dotted(loc[:-1]) or 'a recipe'} takes {', '.join(keys)}"


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys of the mapping at `loc`, found by walking the recipe's models (a list item or a mapping's value
    by its type): pydantic's error for an unknown key does not say which keys were allowed."""
    ann: Any = Recipe
    for key in loc:
        ann = _without_none(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel) and key in ann.model_fields:
            ann = ann.model_fields[key].annotation
        elif get_origin(ann) in (list, dict):
            ann = get_args(ann)[-1]
        else:
            return []
    ann = _without_none(ann)
    return list(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else []


def _without_none(ann: Any) -> Any:
    """`X | None` -> X (an optional section's own type)."""
    args = [a for a in get_args(ann) if a is not type(None)]
    return args[0] if type(None) in get_args(ann) and len(args) == 1 else ann

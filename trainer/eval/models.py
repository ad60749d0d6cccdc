"""Models for evaluation: one `CausalLM` interface (`loglikelihood`, `generate`) over any transformers
causal LM, and loaders for our checkpoints (HF exports, training checkpoints) and any HF model path.

Scoring reproduces lm-evaluation-harness's `HFLM.loglikelihood` token for token (same context /
continuation split, same left truncation, same empty-context prefix token), but computes a context
shared by several choices once: contexts run batched (right-padded, sorted longest first) with the KV
cache kept, the cache rows are gathered per continuation, and only the continuations run again, with
explicit position ids. One-token continuations (BoolQ, MMLU letters) need no second pass at all; a
context with a single continuation (WinoGrande's partial scoring) runs whole, as in lm_eval.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer.files import FileFormatError, read_json

__all__ = ["CausalLM", "load_model", "phi_to_hf", "wrap_tokenizer"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def wrap_tokenizer(tok: Any, name: str = "") -> Any:
    """An HF tokenizer from a `tokenizers.Tokenizer` (ours), called `name` (its spec) in errors; HF tokenizers
    pass through."""
    if hasattr(tok, "encode") and hasattr(tok, "decode") and hasattr(tok, "eos_token_id"):
        return tok
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>" if tok.token_to_id("<|endoftext|>") is not None else None
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos,
                                   clean_up_tokenization_spaces=False, name_or_path=name)


@dataclass
class _Group:
    """One distinct context and the continuations scored against it."""

    ctx: list[int]
    conts: list[tuple[int, list[int]]]  # (request index, continuation tokens)


class CausalLM:
    """Log-likelihood scoring and greedy generation for a transformers causal LM.

    `strategy="prefix"` (default) computes each context once and reuses its KV cache for the choices;
    `strategy="full"` scores whole context+continuation sequences like lm_eval (sorted by length,
    batched, one-token continuations sharing a forward). Both give the same numbers.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str | torch.device | None = None,
                 batch_size: int = 32, max_batch_tokens: int = 16384, max_length: int | None = None,
                 strategy: str = "prefix", progress: bool = False) -> None:
        if strategy not in ("prefix", "full"):
            raise ValueError(f"strategy must be 'prefix' or 'full', got {strategy!r}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.tokenizer = wrap_tokenizer(tokenizer)
        from transformers import PreTrainedTokenizerBase

        # transformers tokenizers' verbose=False: no "longer than the specified maximum sequence length ... will
        # result in indexing errors" warning for the long contexts (8-shot GSM8K) that scoring and generation
        # left-truncate themselves; another tokenizer object may not take the keyword
        self._quiet = {"verbose": False} if isinstance(self.tokenizer, PreTrainedTokenizerBase) else {}
        self.batch_size, self.max_batch_tokens, self.strategy, self.progress = (
            batch_size, max_batch_tokens, strategy, progress)
        cfg = model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions",
                                                                                                  2048)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None

    # ------------------------------------------------------------------ tokens (lm_eval's rules)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Conditioning token for an empty context: BOS, else EOS (as lm_eval). Refused without either id: scoring
        would otherwise fail later on a None token id, naming neither the tokenizer nor the cause (a token set but
        not in the vocabulary has no id, and is named)."""
        tok = self.tokenizer
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if prefix is None:
            name = getattr(tok, "name_or_path", "") or type(tok).__name__
            unknown = [f"its {kind} token {t!r}" for kind in ("BOS", "EOS")
                       if (t := getattr(tok, f"{kind.lower()}_token", None))]
            why = f" ({' and '.join(unknown)} not in its vocabulary)" if unknown else ""
            raise ValueError(f"the tokenizer ({name}) has no BOS or EOS token id to condition an empty context on"
                             f"{why}; use a tokenizer that has one (e.g. <|endoftext|>)")
        return prefix

    def tok_encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, **self._quiet))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm_eval's `_encode_pair`: trailing context spaces move to the continuation; the continuation's
        tokens are those of `context+continuation` after the context's own token count."""
        if not context:
            prefix = self.prefix_token_id
            cont = self.tokenizer.encode(continuation, add_special_tokens=False, **self._quiet)
            return ([prefix], cont) if not cont or prefix != cont[0] else (cont[:1], cont[1:])
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole, ctx = self.tok_encode(context + continuation), self.tok_encode(context)
        return ctx, whole[len(ctx):]

    # ------------------------------------------------------------------ log-likelihood

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of log-probs of the continuation given the context, whether greedy decoding gives it)."""
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in requests])

    def loglikelihood_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        pairs = [self._truncate(c, x) for c, x in pairs]
        score = self._score_prefix if self.strategy == "prefix" else self._score_full
        with torch.inference_mode():
            return score(pairs)

    def _truncate(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """lm_eval keeps the last `max_length + 1` tokens of context+continuation (the input drops one)."""
        if not cont:
            raise ValueError("empty continuation: nothing to score")
        if len(cont) > self.max_length:
            raise ValueError(f"continuation of {len(cont)} tokens exceeds the model length {self.max_length}")
        keep = self.max_length + 1 - len(cont)
        return (ctx[-keep:] if len(ctx) > keep else ctx), cont

    def _log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits.float(), dim=-1)

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Index batches of at most batch_size rows and max_batch_tokens padded tokens (inputs sorted longest first)."""
        out: list[list[int]] = []
        cur: list[int] = []
        width = 0
        for i, n in enumerate(lengths):
            if cur and (len(cur) >= self.batch_size or max(width, n) * (len(cur) + 1) > self.max_batch_tokens):
                out.append(cur)
                cur, width = [], 0
            cur.append(i)
            width = max(width, n)
        return out + ([cur] if cur else [])

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _score_full(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """lm_eval's scheme: one forward per distinct (context + continuation[:-1]), longest first."""
        keyed: dict[tuple[int, ...], list[int]] = {}
        for i, (c, x) in enumerate(pairs):
            keyed.setdefault(tuple(c + x[:-1]), []).append(i)
        keys = sorted(keyed, key=len, reverse=True)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for batch in self._progress(self._batches([len(k) for k in keys]), "scoring"):
            ids, _ = self._pad([list(keys[b]) for b in batch])
            logits = self.model(input_ids=ids).logits  # right padding, as lm_eval: no mask needed
            for row, b in enumerate(batch):
                for i in keyed[keys[b]]:
                    c, x = pairs[i]  # log-softmax over the continuation's positions only
                    results[i] = self._sum_greedy(self._log_probs(logits[row, len(c) - 1 : len(c) - 1 + len(x)]), x)
        return results

    def _sum_greedy(self, lp: torch.Tensor, cont: list[int]) -> tuple[float, bool]:
        target = torch.tensor(cont, device=lp.device)
        return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())

    def _score_prefix(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Contexts shared by several multi-token continuations run once and lend their KV cache; contexts
        with only one-token continuations need just their own forward; the rest (one continuation per
        context, e.g. WinoGrande's partial scoring) gain nothing from sharing and run as whole sequences."""
        groups: dict[tuple[int, ...], _Group] = {}
        for i, (c, x) in enumerate(pairs):
            groups.setdefault(tuple(c), _Group(c, [])).conts.append((i, x))
        shared, whole = [], []
        for g in groups.values():
            if len({tuple(x[:-1]) for _, x in g.conts if len(x) > 1}) == 1:
                whole += [i for i, _ in g.conts]
            else:
                shared.append(g)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        if whole:
            for i, r in zip(whole, self._score_full([pairs[i] for i in whole]), strict=True):
                results[i] = r
        order = sorted(shared, key=lambda g: len(g.ctx), reverse=True)
        for batch in self._progress(self._batches([len(g.ctx) for g in order]), "scoring"):
            self._score_context_batch([order[b] for b in batch], results)
        return results

    def _score_context_batch(self, groups: list[_Group], results: list[tuple[float, bool]]) -> None:
        ids, mask = self._pad([g.ctx for g in groups])
        lens = torch.tensor([len(g.ctx) for g in groups], device=self.device)
        needs_cache = any(len(x) > 1 for g in groups for _, x in g.conts)
        last = sorted({len(g.ctx) - 1 for g in groups})
        kw: dict[str, Any] = {"use_cache": needs_cache}
        if self._keep_kw:
            kw[self._keep_kw] = torch.tensor(last, device=self.device)
        out = self.model(input_ids=ids, **kw)  # right padding: causal attention never sees it, no mask needed
        logits = out.logits if self._keep_kw else out.logits[:, last]
        first = self._log_probs(logits[torch.arange(len(groups)), [last.index(len(g.ctx) - 1) for g in groups]])
        # requests with one-token continuations are done; longer ones run their tokens[:-1] on the cache
        rows: dict[tuple[int, tuple[int, ...]], list[tuple[int, list[int]]]] = {}
        for gi, g in enumerate(groups):
            for i, x in g.conts:
                if len(x) == 1:
                    results[i] = self._sum_greedy(first[gi : gi + 1], x)
                else:
                    rows.setdefault((gi, tuple(x[:-1])), []).append((i, x))
        if not rows:
            return
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        keys = sorted(rows, key=lambda k: len(k[1]), reverse=True)
        ctx_width = ids.shape[1]
        per_row = [ctx_width + len(k[1]) for k in keys]
        for chunk in self._batches(per_row):
            gidx = torch.tensor([keys[c][0] for c in chunk], device=self.device)
            xs, xmask = self._pad([list(keys[c][1]) for c in chunk])
            pos = lens[gidx][:, None] + torch.arange(xs.shape[1], device=self.device)[None, :]
            sub = _select_cache(cache, gidx)
            logp = self._log_probs(self.model(input_ids=xs, attention_mask=torch.cat([mask[gidx], xmask], 1),
                                              position_ids=pos, use_cache=True, **{self._cache_kw: sub}).logits)
            for row, c in enumerate(chunk):
                gi = keys[c][0]
                for i, x in rows[keys[c]]:
                    lp = torch.cat([first[gi : gi + 1], logp[row, : len(x) - 1]])
                    results[i] = self._sum_greedy(lp, x)

    def _progress(self, batches: list[list[int]], what: str) -> Iterable[list[int]]:
        """`batches`, advancing a bar on stderr as each is taken (stdout keeps the report table alone)."""
        if not self.progress:
            return batches
        from rich.console import Console
        from rich.progress import track

        return track(batches, description=what, console=Console(stderr=True), transient=True)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 256, until: Sequence[str] = (),
                 batch_size: int | None = None) -> list[str]:
        """Greedy continuations, cut before the first stop string in `until` (EOS, where the tokenizer has one,
        always stops)."""
        tok = self.tokenizer
        max_new_tokens = min(max_new_tokens, self.max_length - 1)
        encoded = [self.tok_encode(p)[-(self.max_length - max_new_tokens):] for p in prompts]  # left-truncated
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        out: list[str] = [""] * len(prompts)
        bs = batch_size or self.batch_size
        # left padding is masked out, so any id does where the tokenizer has neither pad nor EOS (ours without
        # <|endoftext|>): None failed in torch.full, outside any refusal naming the tokenizer
        pad = next(t for t in (tok.pad_token_id, self.eos_token_id, 0) if t is not None)
        starts = [[start] for start in range(0, len(order), bs)]
        for (start,) in self._progress(starts, "generating"):
            idx = order[start : start + bs]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):  # left padding
                ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]) :] = 1
            stop = _StopOnStrings(tok, list(until), width)
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                          eos_token_id=self.eos_token_id, stopping_criteria=[stop])
            for r, i in enumerate(idx):
                new = gen[r, width:].tolist()
                if self.eos_token_id in new:
                    new = new[: new.index(self.eos_token_id)]
                out[i] = _cut(tok.decode(new, skip_special_tokens=True), until)
        return out


def _cut(text: str, until: Sequence[str]) -> str:
    for s in until:
        if s and s in text:
            text = text[: text.index(s)]
    return text


class _StopOnStrings:
    """Stops generation once every row's new text contains one of the stop strings."""

    def __init__(self, tokenizer: Any, until: list[str], prompt_len: int) -> None:
        self.tokenizer, self.until, self.prompt_len = tokenizer, [s for s in until if s], prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = []
        for row in input_ids[:, self.prompt_len :]:
            text = self.tokenizer.decode(row[-64:].tolist(), skip_special_tokens=False)
            done.append(any(s in text for s in self.until))
        return torch.tensor(done, device=input_ids.device)


def _select_cache(cache: Any, idx: torch.Tensor) -> Any:
    """A new DynamicCache holding rows `idx` of `cache` (transformers 4.x and 5.x layouts)."""
    from transformers import DynamicCache

    if hasattr(cache, "layers"):
        kv = [(layer.keys, layer.values) for layer in cache.layers]
    elif hasattr(cache, "key_cache"):
        kv = list(zip(cache.key_cache, cache.value_cache, strict=True))
    else:  # legacy tuple of (k, v)
        kv = [(k, v) for k, v in cache]
    new = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        new.update(k.index_select(0, idx), v.index_select(0, idx), layer)
    return new


# ---------------------------------------------------------------------- loading


def phi_to_hf(phi: torch.nn.Module) -> Any:
    """Our `trainer.model.Phi` as a `transformers.PhiForCausalLM` with the same weights (names are HF's)."""
    from transformers import PhiConfig, PhiForCausalLM

    from trainer.export import hf_config, unwrap

    phi = unwrap(phi)
    cfg = {k: v for k, v in hf_config(phi.config).items() if k not in ("architectures", "model_type",
                                                                         "torch_dtype", "dtype")}
    hf = PhiForCausalLM(PhiConfig(**cfg))
    hf.load_state_dict({k: v.detach().float() for k, v in phi.state_dict().items()}, strict=True)
    return hf


def _load_tokenizer(spec: str) -> Any:
    """A tokenizer from a spec (an HF tokenizer folder, else `trainer.tokenizer.load_tokenizer`'s specs)."""
    p = Path(spec)
    if p.is_dir() and (p / "tokenizer_config.json").exists():
        return _dir_tokenizer(p)
    from trainer.tokenizer import load_tokenizer

    return wrap_tokenizer(load_tokenizer(spec), spec)


def _dir_tokenizer(path: Path) -> Any:
    """The tokenizer saved in an HF model folder (ours: tokenizer.json + tokenizer_config.json)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (path / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except Exception:  # e.g. a tokenizer_class this transformers lacks: the JSON is enough
            return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), name_or_path=str(path))
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):  # transformers would build an empty one
        raise FileNotFoundError(f"{path / 'tokenizer.json'}: missing (no tokenizer files there); pass --tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: no tokenizer files there; pass --tokenizer") from e


def _dir_model(path: Path) -> Any:
    """The transformers model of an HF folder; a broken weights file is named."""
    from safetensors import SafetensorError, safe_open
    from transformers import AutoModelForCausalLM

    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise FileFormatError(f"{weights}: corrupt or unreadable weights ({e})") from e
    try:
        return AutoModelForCausalLM.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise FileFormatError(f"{path}: cannot load the model ({type(e).__name__}: {e})") from e


def load_model(spec: str | Path | torch.nn.Module, tokenizer: Any = None, device: str | None = None,
               dtype: str | None = None, **kwargs: Any) -> CausalLM:
    """A `CausalLM` from: a `trainer.model.Phi` or HF model object; an HF model directory (ours from
    `export_hf`, or any transformers causal LM); a training checkpoint; or a Hub id (when online).

    `tokenizer`: a tokenizer object, a path/spec for `trainer.tokenizer.load_tokenizer`, or None to use the
    model directory's own (a training checkpoint's: the one it kept, which a path/spec must equal). One with more
    tokens than a phi model's vocab_size is refused. `dtype`: float32 (default on CPU) | bfloat16 (default on
    GPU) | float16.
    """
    if dtype and dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _DTYPES[dtype] if dtype else (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    tok_spec = str(tokenizer) if isinstance(tokenizer, (str, Path)) else None
    if tok_spec is not None:
        tokenizer = _load_tokenizer(tok_spec)
    if isinstance(spec, torch.nn.Module):
        model = spec if hasattr(spec, "generate") else phi_to_hf(spec)
        if tokenizer is None:
            raise ValueError("pass `tokenizer` (an object or a path) for a model given as an object")
    elif (Path(spec).expanduser() / "config.json").is_file():  # an HF folder: ours (export_hf) or any causal LM
        p = Path(spec).expanduser()
        read_json(p / "config.json")  # a broken one is named before transformers reads it
        tokenizer = tokenizer or _dir_tokenizer(p)
        model = _dir_model(p)
    elif Path(spec).expanduser().exists():  # a training checkpoint: step folder, checkpoints root or run dir
        from trainer.checkpoint import load_model as load_checkpoint
        from trainer.checkpoint import resolve, saved_tokenizer, tokenizer_for

        ckpt = resolve(Path(spec).expanduser())
        model = phi_to_hf(load_checkpoint(ckpt))
        if tok_spec is not None or tokenizer is None:  # a tokenizer object given stays the caller's choice
            pinned = tokenizer_for(ckpt, tok_spec)
            if pinned is not None:
                tokenizer = pinned
            elif tokenizer is None:
                tokenizer = _load_tokenizer(saved_tokenizer(ckpt))
    elif str(spec).startswith((".", "/", "~")) or str(spec).count("/") > 1:  # not a Hub id (org/name)
        raise FileNotFoundError(f"{spec}: no such folder")
    else:  # a Hub id: downloaded, or from the HF cache when the Hub is out of reach
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trainer.data import first_line, no_local_copy
        from trainer.tokenizer import _hub_unreachable

        offline = _hub_unreachable(str(spec), "config.json")  # one try: transformers retries ~25 s, logging each
        cache_only = {"local_files_only": True} if offline else {}
        try:
            model = AutoModelForCausalLM.from_pretrained(str(spec), **cache_only)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(spec), **cache_only)
        except OSError as e:  # offline, not on the Hub, or a mistyped local folder: transformers says it in lines
            why = f"the Hub is out of reach ({offline}) and the HF cache has no copy" if offline else first_line(e)
            raise FileNotFoundError(f"{spec}: cannot load it as a Hub model ({why}){no_local_copy(str(spec))}; "
                                    "give a run, checkpoint or exported folder") from None
    tokenizer = wrap_tokenizer(tokenizer, tok_spec or ("" if isinstance(spec, torch.nn.Module) else str(spec)))
    if getattr(model.config, "model_type", None) == "phi":
        from trainer.checkpoint import check_vocab

        check_vocab(len(tokenizer), model.config.vocab_size, f"--tokenizer {tok_spec}" if tok_spec else "the tokenizer")
    model = model.to(device=device, dtype=torch_dtype)
    return CausalLM(model, tokenizer, device=device, **kwargs)

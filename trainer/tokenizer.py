"""The CodeGen-mono tokenizer of phi-1.5, built with `tokenizers`, and a trainer for custom BPEs.

CodeGen-mono = GPT-2 byte-level BPE (50,257 tokens, `<|endoftext|>` = 50256) plus 38 whitespace tokens
added exactly as salesforce/CodeGen `create_custom_gpt2_tokenizer` does: runs of 31..2 spaces
(ids 50257..50286), then runs of 9..2 tabs (ids 50287..50294). They are *added tokens*: `tokenizers`
splits the text on them (leftmost-longest) before byte-level BPE, so `"\\n    return"` becomes
`["\\n", "    ", "return"]`, while GPT-2 alone gives `["\\n", "   ", " return"]`. The model pads the
vocabulary to 51,200 rows; ids 50295.. are never produced.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS_TOKEN = "<|endoftext|>"
EOS_ID = 50256
MAX_VOCAB = 1 << 20  # 4x the largest common vocabularies (Gemma's 256k); far larger aborts the Rust BPE trainer
# CodeGen's order: include_whitespace(2, 32) then include_tabs(2, 10), each longest run first
WHITESPACE_TOKENS = [" " * n for n in reversed(range(2, 32))] + ["\t" * n for n in reversed(range(2, 10))]
# (vocab, merges) file-name pairs, HF names first, then OpenAI's originals
_BPE_FILES = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]
GPT2_REPO = "openai-community/gpt2"


def _byte_level(tok: Tokenizer) -> Tokenizer:
    """GPT-2's byte-level pipeline: no prefix space, regex pre-split, byte-level decoder."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def add_whitespace_tokens(tok: Tokenizer) -> Tokenizer:
    """Append CodeGen's 38 whitespace tokens as (non-special) added tokens, matched before BPE."""
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in WHITESPACE_TOKENS])
    return tok


def build_codegen_tokenizer(vocab: str | Path, merges: str | Path, whitespace_tokens: bool = True) -> Tokenizer:
    """CodeGen-mono from GPT-2 BPE files (`encoder.json`/`vocab.json` + `vocab.bpe`/`merges.txt`)."""
    for p in (vocab, merges):
        if not Path(p).is_file():
            raise FileNotFoundError(f"tokenizer file not found: {p}")
    try:
        bpe = models.BPE.from_file(str(vocab), str(merges))
    except Exception as e:  # tokenizers raises plain Exception on bad JSON / merges lines
        raise ValueError(f"cannot read GPT-2 BPE files {vocab} + {merges}: {e}") from e
    tok = _byte_level(Tokenizer(bpe))
    if tok.token_to_id(EOS_TOKEN) != EOS_ID:
        raise ValueError(f"{vocab}: {EOS_TOKEN!r} must have id {EOS_ID} (GPT-2 vocabulary), "
                         f"got {tok.token_to_id(EOS_TOKEN)}")
    tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    if whitespace_tokens:
        add_whitespace_tokens(tok)
        first, last = tok.token_to_id(WHITESPACE_TOKENS[0]), tok.token_to_id(WHITESPACE_TOKENS[-1])
        if (first, last) != (50257, 50294):
            raise ValueError(f"{vocab}: whitespace tokens got ids {first}..{last}, expected 50257..50294 "
                             "(the vocabulary must hold exactly GPT-2's 50,257 tokens)")
    return tok


# prepare's options (--tokenizer with a SOURCE, data.tokenizer with a config); the CLI names each command's own
GIVE_TOKENIZER = "give --tokenizer (data.tokenizer in a config)"
_USE_LOCAL = (f"{GIVE_TOKENIZER} a folder holding GPT-2's BPE files (vocab.json + merges.txt, or OpenAI's "
              "encoder.json + vocab.bpe) or a tokenizer.json")


def _hub_unreachable(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    """Why the Hub cannot be asked for `filename` now (HF_HUB_OFFLINE, or no answer to one HEAD), None when
    it answers at all. huggingface_hub retries a network error 5 times over ~24 s, logging each try; this one
    try lets an offline machine fall back to the HF cache, or fail, at once and quietly."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import HFValidationError, get_session

    from trainer.data import first_line

    try:
        url = hf_hub_url(repo_id, filename, revision=revision)
    except HFValidationError:
        return None  # not a repo id: the download names the problem
    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # DNS, refused, timeout, proxy, TLS: the client's own classes (httpx or requests)
        return f"no network: {first_line(e)}"
    return None  # any HTTP status: the download says what it means, as before


def _cached(repo_id: str, filenames: Iterable[str], revision: str | None) -> list[str] | None:
    """Paths of `filenames` in the local HF cache, None unless all are there."""
    from huggingface_hub import try_to_load_from_cache

    paths = [try_to_load_from_cache(repo_id, f, revision=revision) for f in filenames]
    return paths if all(isinstance(p, str) for p in paths) else None


def _endpoint_note() -> str:
    """" at URL (HF_ENDPOINT)" where HF_ENDPOINT moves the Hub (a mirror, a test server), which may lack GPT-2's
    files: a bare 404 for openai-community/gpt2 would otherwise read as a fault of the Hub itself."""
    from huggingface_hub import constants

    default = getattr(constants, "_HF_DEFAULT_ENDPOINT", "https://huggingface.co")
    return "" if constants.ENDPOINT.rstrip("/") == default else f" at {constants.ENDPOINT} (HF_ENDPOINT)"


def codegen_from_hub(repo_id: str = GPT2_REPO, revision: str | None = None) -> Tokenizer:
    """CodeGen-mono built the way Salesforce did: GPT-2's `vocab.json` + `merges.txt` from the Hub
    (the local HF cache is used when present, and alone when the Hub is out of reach) plus the whitespace tokens."""
    from huggingface_hub import hf_hub_download

    from trainer.data import first_line

    files = ("vocab.json", "merges.txt")
    offline = _hub_unreachable(repo_id, files[0], revision)
    paths = _cached(repo_id, files, revision) if offline else None
    if offline and paths is None:
        raise ValueError(f"cannot fetch GPT-2's BPE files from the Hub repo {repo_id!r}{_endpoint_note()} "
                         f"({offline}) and they are not in the HF cache: {_USE_LOCAL}")
    if paths is None:
        try:
            paths = [hf_hub_download(repo_id, f, revision=revision) for f in files]
        except Exception as e:
            raise ValueError(f"cannot fetch GPT-2's BPE files from the Hub repo {repo_id!r}{_endpoint_note()} "
                             f"({first_line(e)}): {_USE_LOCAL}") from e
    return build_codegen_tokenizer(*paths)


def load_tokenizer(spec: str | Path = "gpt2-codegen") -> Tokenizer:
    """A `tokenizers.Tokenizer` from, in this order:
    a `tokenizer.json` file; a directory holding `tokenizer.json`, or GPT-2 BPE files (`vocab.json` +
    `merges.txt` or `encoder.json` + `vocab.bpe`, built into CodeGen-mono); `"gpt2-codegen"` (CodeGen-mono
    from GPT-2's files on the Hub); else a Hub repo id with a tokenizer.json (e.g. "microsoft/phi-1_5")."""
    if str(spec) == "gpt2-codegen" and not Path(spec).exists():
        return codegen_from_hub()
    p = Path(spec)
    if p.is_file():
        try:
            return Tokenizer.from_file(str(p))
        except Exception as e:
            raise ValueError(f"{p}: not a tokenizers JSON file: {e}") from e
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return load_tokenizer(p / "tokenizer.json")
        for v, m in _BPE_FILES:
            if (p / v).is_file() and (p / m).is_file():
                return build_codegen_tokenizer(p / v, p / m)
        raise FileNotFoundError(f"{p}: no tokenizer.json, vocab.json+merges.txt or encoder.json+vocab.bpe there; "
                                f"{_USE_LOCAL}")
    if p.suffix == ".json" or str(spec).startswith((".", "/", "~")) or str(spec).count("/") > 1:
        raise FileNotFoundError(f"tokenizer not found: {spec} (no such file or folder); {_USE_LOCAL}")
    offline = _hub_unreachable(str(spec), "tokenizer.json")
    if offline:
        cached = _cached(str(spec), ["tokenizer.json"], None)
        if cached is None:
            raise ValueError(f"cannot load tokenizer {spec!r}: no such path here, and the Hub is out of reach "
                             f"({offline}) with nothing in the HF cache: {_USE_LOCAL}")
        return load_tokenizer(cached[0])
    try:
        return Tokenizer.from_pretrained(str(spec))
    except Exception as e:
        raise ValueError(f"cannot load tokenizer {spec!r} from the Hub (no such path here either): {e}") from e


def vocab_fingerprint(tok: Tokenizer) -> str:
    """sha256 of the token -> id mapping (added tokens included): two tokenizers with the same one give the
    same ids, whatever their JSON says otherwise (a Hub tokenizer.json and our CodeGen-mono build)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(tok.get_vocab(with_added_tokens=True).items())).encode()).hexdigest()


def eos_id(tok: Tokenizer) -> int:
    """Id of `<|endoftext|>`, the document separator (50256 for CodeGen/GPT-2)."""
    i = tok.token_to_id(EOS_TOKEN)
    if i is None:
        raise ValueError(f"tokenizer has no {EOS_TOKEN!r} token")
    return i


def _iter_texts(files: Iterable[str | Path], columns: Iterable[str]) -> Iterator[str]:
    """Text of `.txt`/`.md`/`.py` files (whole file) and of the column of `.parquet`/`.jsonl` files (each file's
    own, from `columns`)."""
    for f, column in zip(map(Path, files), columns, strict=True):
        if not f.is_file():
            raise FileNotFoundError(f"training file not found: {f}")
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f)
            if column not in pf.schema_arrow.names:
                raise ValueError(f"{f}: no {column!r} column (columns: {pf.schema_arrow.names}); name the text "
                                 f"column with --column (or the dataset's `column` in the config)")
            kind = pf.schema_arrow.field(column).type
            if str(kind) not in ("string", "large_string"):
                raise ValueError(f"{f}: column {column!r} holds {kind}, expected strings")
            from trainer.data import column_texts

            row = 0
            for batch in pf.iter_batches(columns=[column], batch_size=1024):
                texts = column_texts(batch.column(0), f, column, row)
                row += len(texts)
                yield from (t for t in texts if t)
        elif f.suffix == ".jsonl":
            from textbookgen.jsonl import iter_jsonl

            for n, row in iter_jsonl(f):
                if column not in row:
                    raise ValueError(f"{f}:{n}: no {column!r} field (fields: {sorted(row)}); name the text field "
                                     f"with --column (or the dataset's `column` in the config)")
                if not isinstance(row[column], str):
                    raise ValueError(f"{f}:{n}: {column!r} is {type(row[column]).__name__}, expected a string")
                if row[column]:
                    yield row[column]
        else:
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{f}: not UTF-8 text ({e})") from e
            if text:
                yield text


def train_tokenizer(files: Iterable[str | Path], vocab_size: int, whitespace_tokens: bool = True,
                    min_frequency: int = 2, column: str | Sequence[str] = "text",
                    held_out: Sequence[Callable[[str], bool] | None] | None = None) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE on text files (`.txt/.md/.py`, or `column` of `.parquet/.jsonl`:
    one name for all, or one per file, as datasets of one mix name their text columns differently).

    `held_out`: per file, a test of the documents to leave out (None: none), as a dataset's validation holdout
    (`trainer.data.held_out`), so the tokenizer never reads what the model is validated on.

    `<|endoftext|>` gets id 0; with `whitespace_tokens` CodeGen's 38 whitespace runs are appended as
    added tokens, so the final size is `vocab_size + 38`. Save with `tok.save("tokenizer.json")`."""
    if not 257 + 1 <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} is outside 258..{MAX_VOCAB} (256 byte tokens + {EOS_TOKEN} "
                         "up to the largest size supported)")
    paths = list(files)
    columns = [column] * len(paths) if isinstance(column, str) else list(column)
    if len(columns) != len(paths):
        raise ValueError(f"{len(columns)} column names for {len(paths)} files: give one, or one per file")
    held = [None] * len(paths) if held_out is None else list(held_out)
    if len(held) != len(paths):
        raise ValueError(f"{len(held)} held_out tests for {len(paths)} files: give one per file")
    texts = itertools.chain.from_iterable(  # file by file, each without its held-out documents
        _iter_texts([p], [c]) if h is None else itertools.filterfalse(h, _iter_texts([p], [c]))
        for p, c, h in zip(paths, columns, held, strict=True))
    first = next(texts, None)
    if first is None:
        shown = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise ValueError(f"no text to train on in {shown}")
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True)
    tok.train_from_iterator(itertools.chain([first], texts), trainer=trainer)
    if whitespace_tokens:
        add_whitespace_tokens(tok)
    return tok

"""CodeGen-mono tokenizer against two independent references on real text and code:
OpenAI's original GPT-2 `encoder.py` BPE (re-stated below) with CodeGen's whitespace runs split off
first, and transformers' CodeGenTokenizer built from the same files plus `add_tokens`."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
import regex  # noqa: E402

from trainer.tokenizer import (  # noqa: E402
    EOS_ID,
    WHITESPACE_TOKENS,
    build_codegen_tokenizer,
    eos_id,
    load_tokenizer,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tok_dir(shared_data: Path) -> Path:
    return shared_data / "tokenizer_gpt2"


@pytest.fixture(scope="module")
def tok(tok_dir: Path):
    return load_tokenizer(tok_dir)


class OpenAIEncoder:
    """openai/gpt-2 src/encoder.py (bytes_to_unicode, get_pairs, bpe, encode), verbatim in logic."""

    PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]):
        self.encoder = encoder
        self.ranks = {m: i for i, m in enumerate(merges)}
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        self.byte_encoder = dict(zip(bs, map(chr, cs), strict=True))
        self.bpe = lru_cache(maxsize=None)(self._bpe)

    def _bpe(self, token: str) -> tuple[str, ...]:
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            new, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new.extend(word[i:])
                    break
                new.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return word

    def encode(self, text: str) -> list[int]:
        ids = []
        for token in regex.findall(self.PAT, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        return ids


# CodeGen's added tokens: leftmost-longest runs of 2..31 spaces / 2..9 tabs, and the EOS special token
_ADDED = regex.compile(r"(<\|endoftext\|>| {2,31}|\t{2,9})")


def reference_encode(ref: OpenAIEncoder, text: str) -> list[int]:
    ids = []
    for i, piece in enumerate(_ADDED.split(text)):
        if i % 2:  # a matched added token
            ids.append(EOS_ID if piece == "<|endoftext|>" else 50257 + WHITESPACE_TOKENS.index(piece))
        elif piece:
            ids.extend(ref.encode(piece))
    return ids


@pytest.fixture(scope="module")
def ref(tok_dir: Path) -> OpenAIEncoder:
    encoder = json.loads((tok_dir / "encoder.json").read_text(encoding="utf-8"))
    lines = (tok_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    return OpenAIEncoder(encoder, [tuple(x.split()) for x in lines if x])


def _jsonl_gz(path: Path, n: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> list[str]:
    wiki = [r["eng_Latn"][:3000] for r in _jsonl_gz(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", 25)]
    code = [r["prompt"] + r["canonical_solution"]
            for r in _jsonl_gz(shared_data / "humaneval" / "HumanEval.jsonl.gz", 40)]
    tiny = (shared_data / "tinystories_tiny_sample_cs336" / "tinystories_sample.txt").read_text(encoding="utf-8")
    return wiki + code + [tiny]


def test_added_token_ids_match_derived_table(tok, tok_dir: Path):
    table = json.loads((tok_dir / "codegen_phi15_added_tokens.derived.json").read_text(encoding="utf-8"))
    assert len(table) == 38
    assert {t: tok.token_to_id(t) for t in table} == table
    assert tok.get_vocab_size() == 50295 and eos_id(tok) == EOS_ID == 50256


def test_known_ids(tok):
    assert tok.encode("Hello world").ids == [15496, 995]  # the CodeGen/GPT-2 docstring example
    assert tok.encode(" Hello world").ids == [18435, 995]
    assert tok.encode("\n    return x").ids == [198, 50284, 7783, 2124]  # 4 spaces = 50284, then "return"
    assert tok.encode("a<|endoftext|>b").ids[1] == EOS_ID


def test_indented_code_uses_whitespace_tokens(tok, ref):
    code = ("class Stack:\n    def push(self, x):\n        if x is None:\n            raise ValueError('x')\n"
            "        self.items.append(x)  # keep  order\n\tfor i in range(3):\n\t\t\tpass\n"
            + " " * 33 + "deep\n" + " " * 32 + "edge\n" + "\t" * 11 + "tabs\n")
    ids = tok.encode(code).ids
    assert ids == reference_encode(ref, code)
    for n in (4, 8, 12):
        assert 50257 + WHITESPACE_TOKENS.index(" " * n) in ids
    assert 50293 in ids and 50287 in ids and 50294 in ids  # 3 tabs, 9 tabs, 9+2 tabs
    assert ids != ref.encode(code)  # plain GPT-2 would tokenize the indentation differently
    assert tok.decode(ids) == code


def test_golden_real_text_and_code_vs_openai_encoder(tok, ref, samples):
    batch = tok.encode_batch(samples)
    for text, enc in zip(samples, batch, strict=True):
        assert enc.ids == reference_encode(ref, text), text[:80]
        assert tok.decode(enc.ids, skip_special_tokens=False) == text
    assert sum(i >= 50257 for e in batch for i in e.ids) > 100  # the code really used whitespace tokens


def test_matches_transformers_codegen_tokenizer(tok, tok_dir, samples):
    transformers = pytest.importorskip("transformers")
    vocab = json.loads((tok_dir / "encoder.json").read_text(encoding="utf-8"))
    lines = (tok_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    hf = transformers.CodeGenTokenizer(vocab=vocab, merges=[tuple(x.split()) for x in lines if x])
    hf.add_tokens(WHITESPACE_TOKENS)
    for text in samples[::3]:
        assert tok.encode(text).ids == hf(text)["input_ids"]


def test_load_from_tokenizer_json_and_hf_file_names(tok, tok_dir, tmp_path):
    tok.save(str(tmp_path / "tokenizer.json"))
    code = "def f():\n        return 1\n"
    assert load_tokenizer(tmp_path / "tokenizer.json").encode(code).ids == tok.encode(code).ids
    assert load_tokenizer(tmp_path).encode(code).ids == tok.encode(code).ids
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "vocab.json").write_bytes((tok_dir / "encoder.json").read_bytes())
    (hf_dir / "merges.txt").write_bytes((tok_dir / "vocab.bpe").read_bytes())
    assert load_tokenizer(hf_dir).encode(code).ids == tok.encode(code).ids
    plain = build_codegen_tokenizer(tok_dir / "encoder.json", tok_dir / "vocab.bpe", whitespace_tokens=False)
    assert plain.get_vocab_size() == 50257


def test_gpt2_codegen_spec_builds_from_hub_files(tok, tok_dir, monkeypatch):
    import huggingface_hub

    import trainer.tokenizer

    monkeypatch.setattr(trainer.tokenizer, "_hub_unreachable", lambda *a: None)  # the Hub answers (a fake one)
    names = {"vocab.json": "encoder.json", "merges.txt": "vocab.bpe"}
    calls = []

    def fake_download(repo_id, filename, revision=None):  # no network in tests: serve the same files
        calls.append((repo_id, filename))
        return str(tok_dir / names[filename])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    built = load_tokenizer("gpt2-codegen")
    assert calls == [("openai-community/gpt2", "vocab.json"), ("openai-community/gpt2", "merges.txt")]
    code = "if x:\n        y = 1\n"
    assert built.encode(code).ids == tok.encode(code).ids

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ValueError, match=r"cannot fetch GPT-2's BPE files .*\(no network\): give --tokenizer"):
        load_tokenizer("gpt2-codegen")


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "missing" / "tokenizer.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(bad)
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        build_codegen_tokenizer(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_train_tokenizer(shared_data, tmp_path):
    src = shared_data / "tinystories_tiny_sample_cs336" / "tinystories_sample.txt"
    code = tmp_path / "code.py"
    code.write_text("def add(a, b):\n    return a + b\n" * 20, encoding="utf-8")
    tok = train_tokenizer([src, code], vocab_size=400)
    assert eos_id(tok) == 0 and tok.get_vocab_size() == 400 + 38
    text = "Once upon a time, there was a little girl.\n    return a + b\n"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert tok.token_to_id("    ") in ids and len(ids) < len(text.encode()) * 0.6  # merges learnt
    with pytest.raises(FileNotFoundError, match="training file"):
        train_tokenizer([tmp_path / "nope.txt"], vocab_size=400)
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer([src], vocab_size=100)


def test_train_tokenizer_names_the_bad_jsonl_line(tmp_path):
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"text": "one"}\n\n{"text": broken}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs\.jsonl:3: invalid JSON"):
        train_tokenizer([bad], vocab_size=400)
    bad.write_text('{"text": "one"}\n{"body": "two"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs\.jsonl:2: no 'text' field"):
        train_tokenizer([bad], vocab_size=400)
    bad.write_text('{"text": "one"}\n{"text": 7}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs\.jsonl:2: 'text' is int, expected a string"):
        train_tokenizer([bad], vocab_size=400)

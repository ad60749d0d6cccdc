"""`textbookgen dedup` honours the --config's exact.enabled and minhash.enabled, and its flags override them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from textbookgen.cli import app

BASE = "the quick brown fox jumps over the lazy dog while the farmer counts his sheep in field number {}"


@pytest.fixture()
def corpus(tmp_path):
    """An exact copy (of doc 0) and near copies (docs 1-3 differ in one word only)."""
    docs = [BASE.format(i) for i in range(4)] + [BASE.format(0)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return src


def _dedup(tmp_path, src, config: str | None, *flags: str):
    args = ["dedup", str(src), "-o", str(tmp_path / "out.jsonl"), *flags]
    if config is not None:
        (tmp_path / "c.yaml").write_text(config)
        args += ["--config", str(tmp_path / "c.yaml")]
    return CliRunner().invoke(app, args)


def test_a_config_with_minhash_off_runs_exact_dedup_only(tmp_path, corpus):
    res = _dedup(tmp_path, corpus, "minhash:\n  enabled: false\n")
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert list(stats) == ["exact_dedup"] and stats["exact_dedup"]["kept"] == 4


def test_flags_override_the_config(tmp_path, corpus):
    res = _dedup(tmp_path, corpus, "minhash:\n  enabled: false\n", "--minhash", "--no-exact")
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.stdout)) == ["minhash_dedup"]
    res = _dedup(tmp_path, corpus, "exact:\n  enabled: false\n")
    assert list(json.loads(res.stdout)) == ["minhash_dedup"]


def test_both_off_is_refused_rather_than_copying_the_input(tmp_path, corpus):
    res = _dedup(tmp_path, corpus, "exact:\n  enabled: false\n", "--no-minhash")
    assert res.exit_code == 1 and "both off" in res.output and not (tmp_path / "out.jsonl").exists()
    res = _dedup(tmp_path, corpus, None, "--no-minhash", "--index", str(tmp_path / "idx"))
    assert res.exit_code == 1 and "--index needs MinHash" in res.output

"""`train-tokenizer -c` refuses holdout_tokens counted under the BPE it is about to replace: prepare then counts
under the new one and holds out other documents, some of which the new BPE was trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from trainer_testlib import tiny_overrides, wiki_corpus

from trainer.cli import main
from trainer.config import _set_dotted


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return wiki_corpus(tmp_path_factory.mktemp("h12tok"), shared_data)


def _config(corpus, folder: Path) -> Path:
    tree: dict = {}
    for k, v in tiny_overrides(folder / "run", folder / "cache", corpus["tok"], [(corpus["wiki"], 1.0)]).items():
        _set_dotted(tree, k, v, "test")
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("spelling", ["file", "folder"])
def test_holdout_tokens_counted_under_the_tokenizer_being_replaced_is_refused(corpus, tmp_path, capsys, spelling):
    out = tmp_path / "tok" / "tokenizer.json"
    spec = out if spelling == "file" else out.parent
    args = ["train-tokenizer", "-c", str(_config(corpus, tmp_path)), "--set", f"data.tokenizer={spec}",
            "--vocab-size", "300", "--out", str(out)]
    fraction = ["--set", "data.datasets.0.holdout_fraction=0.1"]
    assert main([*args, *fraction]) == 0 and out.is_file()  # the first BPE: the text alone picks the documents
    first = out.read_bytes()
    capsys.readouterr()

    assert main([*args, "--set", "data.datasets.0.holdout_tokens=3000", "--vocab-size", "400"]) == 2
    err = capsys.readouterr().err
    assert f"data.datasets.0.holdout_tokens holds out the documents that make 3,000 tokens under data.tokenizer, " \
           f"which is {out}, replaced by this run" in err, err
    assert out.read_bytes() == first

"""A wheel install works without the source checkout: it carries the card templates (`datasets_cards/`, kept
at the repository root and mapped into the package), every module and data file, and finds them itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the build backend reads; copied so that the build writes its build/ and egg-info in tmp, not the repo.
SOURCES = ("pyproject.toml", "README.md", "textbookgen", "trainer", "datasets_cards")
PACKAGE_DATA = {".py", ".j2", ".yaml", ".md", ".json"}
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def _backend_missing() -> str | None:
    """Why the wheel cannot be built offline here, or None."""
    if find_spec("pip") is None or find_spec("setuptools") is None:
        return "pip or setuptools is not installed in this environment"
    setuptools = version("setuptools")  # not imported: its distutils shim must not load in the test process
    if int(setuptools.split(".")[0]) < 77:
        return f"setuptools {setuptools} < 77 (pyproject.toml's build requirement)"
    return None


pytestmark = pytest.mark.skipif(_backend_missing() is not None, reason=str(_backend_missing()))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(source)], check=True, capture_output=True)  # fmt: skip
    (whl,) = out.glob("textbookgen-*.whl")
    return whl


def _package_files() -> set[str]:
    """The names in the wheel of every module and data file of the source tree's packages."""
    files = {
        p.relative_to(ROOT).as_posix()
        for pkg in ("textbookgen", "trainer")
        for p in (ROOT / pkg).rglob("*")
        if p.is_file() and p.suffix in PACKAGE_DATA and "__pycache__" not in p.parts
    }
    return files | {f"textbookgen/datasets_cards/{p.name}" for p in (ROOT / "datasets_cards").glob("*.md")}


def test_the_wheel_carries_the_card_templates_and_every_package_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"textbookgen/datasets_cards/_base.md", "textbookgen/datasets_cards/quickstart.md"} <= names
    assert sorted(_package_files() - names) == []  # e.g. a new subpackage missing from pyproject's list
    assert not [n for n in names if n.startswith(("datasets_cards/", "textbookgen/datasets_cards/examples"))]


def test_the_sdist_carries_the_card_templates(source, tmp_path):
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=source, check=True, capture_output=True,
                         text=True)  # fmt: skip
    with tarfile.open(tmp_path / run.stdout.strip().splitlines()[-1]) as sdist:
        members = {m.split("/", 1)[-1] for m in sdist.getnames()}
    assert {f"datasets_cards/{p.name}" for p in (ROOT / "datasets_cards").glob("*.md")} <= members


RENDER = """
import json, sys
from pathlib import Path
from textbookgen.card import CARDS_DIR, card_template_of, render_card
from textbookgen.recipe import load_recipe

recipe_path, data, mine = sys.argv[1:4]
base = card_template_of(load_recipe(recipe_path, {"card_template": None}))
out = {"cards_dir": str(CARDS_DIR), "base": str(base)}
if base is not None:
    out["base_card"] = render_card(Path(data), base, {"name": "wheel", "license": "apache-2.0"}, {}).read_text()
    out["my_card"] = render_card(Path(data), Path(mine), {"name": "mine", "license": "mit"}, {}).read_text()
print(json.dumps(out))
"""


def test_an_installed_wheel_finds_and_renders_its_base_card(wheel, tmp_path):
    """The wheel's own textbookgen (not this checkout's: `-S` skips the editable install's .pth) gives a
    recipe without `card_template` the packaged `_base.md`, which a user's template elsewhere extends."""
    from test_dataset import sample_documents

    from textbookgen.dataset import write_dataset

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    write_dataset(sample_documents(20), tmp_path / "data")
    mine = tmp_path / "cards" / "mine.md"
    mine.parent.mkdir()
    mine.write_text('{% extends "_base.md" %}\n{% block summary %}My own summary.{% endblock %}\n')
    paths = sysconfig.get_paths()
    deps = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))  # its dependencies
    run = subprocess.run([sys.executable, "-S", "-c", RENDER, str(QUICKSTART), str(tmp_path / "data"), str(mine)],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{deps}"},
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["cards_dir"] == str(site / "textbookgen" / "datasets_cards")
    assert out["base"] == str(site / "textbookgen" / "datasets_cards" / "_base.md")
    assert out["base_card"].startswith("---\n") and "pretty_name: wheel" in out["base_card"]
    assert "My own summary." in out["my_card"] and "license: mit" in out["my_card"]

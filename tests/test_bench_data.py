"""bench/ scripts that read ../shared/data skip in one line where it is absent, and find every file where it is."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
READERS = {  # script: its smallest arguments
    "curate.py": ["--docs", "10", "--repeats", "1"],
    "dedup.py": ["--docs", "50", "--speed-docs", "5"],
    "diversity.py": ["--prompts", "5"],
    "eval.py": ["--items", "1", "--repeats", "1"],
    "quality.py": ["--bucket", "1000"],
}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    sys.path.insert(0, str(path.parent))  # as `python bench/x.py` does: the scripts import bench/shared_data.py
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
        sys.path.remove(str(path.parent))
    return module


@pytest.mark.parametrize("script", sorted(READERS))
def test_bench_skips_in_one_line_without_shared_data(script, tmp_path, monkeypatch, capsys):
    """A user's clone has no ../shared/data: the bench says so and exits 0 instead of a traceback."""
    copy = tmp_path / "repo" / "bench" / script  # ../shared/data of this copy does not exist
    copy.parent.mkdir(parents=True)
    shutil.copy(BENCH / script, copy)
    shutil.copy(BENCH / "shared_data.py", copy.parent)
    monkeypatch.setattr(sys, "argv", [str(copy), *READERS[script]])
    with pytest.raises(SystemExit) as stop:
        _load(copy).main()
    assert stop.value.code in (0, None)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"skipped: {script} reads the shared data: {tmp_path / 'shared' / 'data'}")
    assert "not found" in out[-1]


def test_bench_data_files_exist_in_shared_data(shared_data):
    """Where the shared data is, no bench skips: every file each one names is there."""
    files = [f for s in ("curate.py", "dedup.py", "quality.py") for f in _load(BENCH / s).DATA_FILES]
    evaluation = _load(BENCH / "eval.py")
    files += evaluation.data_files(shared_data, ["arc_easy", "hellaswag", "boolq", "winogrande", "mmlu@5"])
    diversity = _load(BENCH / "diversity.py")
    files += [shared_data / rel for rel in diversity.SEEDS]
    files.append(shared_data / "sciphi_topics" / "tayn_evol_evol_grade_school.yaml.gz")
    assert all(f.is_relative_to(shared_data) for f in files)
    assert [f for f in files if not f.exists()] == []

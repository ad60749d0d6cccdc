"""The shared data the benchmarks read: only developer and CI machines have ../shared/data, and without
it there is nothing to measure. Imported by the scripts beside it (`python bench/x.py` puts bench/ on
the path)."""

from __future__ import annotations

import sys
from pathlib import Path


def skip_without(files: list[Path]) -> None:
    """Exit 0 with one line, naming the script and the first missing file, where the shared data is absent."""
    if missing := [f for f in files if not f.exists()]:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        print(f"skipped: {Path(sys.argv[0]).name} reads the shared data: {missing[0]} not found{more}")
        raise SystemExit(0)

"""Rebuild the example card: `recipes/quickstart.yaml` built end to end against the provider emulator.

The build is the real one (taxonomy, prompts, generation through the official `openai` client with the
journal, curation, dataset, card with plots); only the model is `textbookgen.testing.emulator`, so the
example costs nothing and is reproducible. The card, its plots, the recipe, the manifest and the journal
summary are copied into datasets_cards/examples/quickstart/ (the parquet shards are not kept).

    python datasets_cards/examples/make_example.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[2]
DEST = Path(__file__).resolve().parent / "quickstart"
KEPT = ("README.md", "assets", "recipe.yaml", "manifest.json", "journal_summary.json")
NOTE = (
    "> **Example card.** This is the card of `recipes/quickstart.yaml` built by\n"
    "> `datasets_cards/examples/make_example.py` against textbookgen's provider emulator\n"
    "> (`textbookgen.testing.emulator`) instead of the real model: the documents are the emulator's\n"
    "> deterministic text, and the cost is what the price table charges for the same tokens.\n"
    "> Everything else (prompts, journal, curation, card, plots) is what a real build writes.\n\n"
)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, Emulator(EmulatorConfig(latency_median_s=0.05, seed=0)) as emu:
        out = Path(tmp) / "build"
        env = {**os.environ, "OPENAI_API_KEY": "sk-emulator"}
        subprocess.run(
            [sys.executable, "-m", "textbookgen", "build", str(ROOT / "recipes" / "quickstart.yaml"),
             "--no-progress", "--set", f"provider.base_url={emu.openai_base_url}", "--set", f"output={out}"],
            check=True, env=env, cwd=ROOT,
        )
        shutil.rmtree(DEST, ignore_errors=True)
        DEST.mkdir(parents=True)
        for name in KEPT:
            src = out / "dataset" / name
            if src.is_dir():
                shutil.copytree(src, DEST / name)
            elif src.exists():
                shutil.copy2(src, DEST / name)
    readme = DEST / "README.md"
    text = readme.read_text(encoding="utf-8")
    end = text.index("\n---\n", 4) + len("\n---\n")  # after the YAML metadata block
    readme.write_text(text[:end] + "\n" + NOTE + text[end:].lstrip("\n"), encoding="utf-8")
    print(f"example card written to {DEST}")


if __name__ == "__main__":
    main()

"""A recipe whose roots already meet `taxonomy.grow.target` grows nothing, yet its manifest said `grown_to` the
target and its card "grown by the model toward N leaves"."""

from __future__ import annotations

import json
from pathlib import Path

from test_build import prose_responder

from textbookgen.build import build
from textbookgen.recipe import load_recipe
from textbookgen.testing.emulator import Emulator, EmulatorConfig

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def _built(tmp_path: Path, target: int) -> tuple[dict, str]:
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        sets = {"provider.base_url": emu.openai_base_url, "provider.name": "openai-compatible", "samples": 4,
                "web_samples": None, "taxonomy.grow.target": target, "taxonomy.grow.per_call": 4,
                "curation.decontamination.benchmarks": [], "output": str(tmp_path / f"o{target}")}
        res = build(load_recipe(QUICKSTART, sets), progress=False, push=False)
    out = res.out_dir
    return json.loads((out / "manifest.json").read_text()), (out / "dataset" / "README.md").read_text()


def test_a_grow_target_the_roots_meet_is_not_reported_as_growth(tmp_path):
    manifest, card = _built(tmp_path, 2)
    assert manifest["taxonomy"]["grown_to"] is None
    assert "grown by the model" not in card

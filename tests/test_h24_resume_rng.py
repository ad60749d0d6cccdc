"""2 gloo ranks (test_h15's launcher): a resume reads each rank's own RNG state (rng/rank-N.pt). One that rank 1
could not read was raised on rank 1 alone, and rank 0 went on into the run's next collective, to wait for it
there (a hang under NCCL; gloo's "connection closed" once rank 1 was gone). Now both raise rank 1's error, which
names the file."""

from __future__ import annotations

import json

import pytest
import test_h15_rank_errors as h15


@pytest.mark.slow
def test_an_rng_state_rank_1_cannot_read_stops_every_rank(tmp_path):
    h15.synthetic_run(tmp_path, **{"checkpoint.every": 2})
    assert [o.get("ok") for o in h15.two_ranks("train", tmp_path)] == [2, 2]
    rng = tmp_path / "run" / "checkpoints" / "step-00000002" / "rng" / "rank-00001.pt"
    rng.write_bytes(rng.read_bytes()[:100])  # cut short, as by a disk error on its node
    overrides = json.loads((tmp_path / "overrides.json").read_text())
    (tmp_path / "overrides.json").write_text(json.dumps({**overrides, "train.max_steps": 3}))
    outcomes = h15.two_ranks("train", tmp_path)
    assert [o.get("error") for o in outcomes] == ["CheckpointError", "CheckpointError"], outcomes
    assert all(o["message"].startswith(f"{rng}: damaged or unreadable RNG state") for o in outcomes), outcomes

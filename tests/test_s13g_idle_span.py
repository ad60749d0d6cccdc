"""The rate a header-less server took since it began refusing (`AdmissionController._sustained_rpm`) counted idle
seconds in its span: a caller with no work for a while between two 429s of one run read as a server taking a
fraction of its limit, and the rest of the run was held near that. Virtual time and the emulator's limiter, as in
test_h6_headerless_start (its `arrivals`: the work comes in two waves)."""

from __future__ import annotations

import pytest
import test_h6_headerless_start as h6


@pytest.mark.parametrize("idle_s, latency", [(9.0, 0.02), (9.0, 0.5), (6.0, 0.02)])
def test_seconds_nobody_asked_in_are_not_counted_as_a_rate_the_server_refused(idle_s, latency):
    """1200 RPM per 1-s window: 60 requests (the slow start's 429 begins a run of them, its pace left over the
    limit), nothing for `idle_s`, then 1200 more, refused at once. Counted over the idle seconds the server took
    458 RPM, and from 10 s after the second wave the run went at 726, 695 and 977 RPM; now about 1195."""
    seen = h6._run(1200, latency, 60 + 1200, arrivals=[0.0] * 60 + [idle_s] * 1200)
    done = max(seen["ok"])
    start = idle_s + 10.0
    assert h6._between(seen["ok"], start, done) >= 0.95 * 1200 / 60 * (done - start)
    assert len(seen["refused"]) <= 8

"""The slow start at a server that sends no rate-limit headers and limits per minute (the emulator's default
window_s=60: a minute's requests at once, then the refill), in the virtual time of test_h6_headerless_start's
harness. The slow start spends the whole burst, so the rate sent in the second before the first 429 is ~60x the
limit; 3/4 cuts from it took ~14 round trips to come down, into ~100 429s. Now the cut goes at once to the rate
the server took since it began refusing."""

from __future__ import annotations

import pytest
import test_h6_headerless_start as h6


@pytest.mark.parametrize("rpm, latency, most_refused, finished_by",
                         [(1200, 0.02, 30, 43.0), (300, 0.2, 12, 43.5), (60, 0.2, 16, 56.0)])
def test_a_spent_minute_burst_is_followed_by_the_limit_not_by_a_hundred_429s(rpm, latency,
                                                                             most_refused, finished_by):
    """A minute's burst, then 40 s at the limit. Before: 116 429s at 1200 RPM (88 in the first 5 s), 18 at 300,
    24 at 60, done in 45.9, 43.8 and 64.1 s; now 25, 11 and 13, done in 41.5, 42.4 and 53.1 s (the refill goes as
    fast as before: 19.8 a second at 1200 RPM, before 19.3)."""
    seen = h6._run(rpm=rpm, latency=latency, n=rpm + rpm // 60 * 40, window_s=60.0)
    assert len(seen["refused"]) <= most_refused
    assert max(seen["ok"]) <= finished_by


def test_the_one_second_window_is_as_it_was():
    """Where the server's bucket is a second's, the rate sent before a 429 is about the limit: the estimate is
    not below 3/4 of it and the cuts are as before (h6's cases: same 429s, same finish)."""
    seen = h6._run(rpm=1200, latency=0.02, n=200)
    assert len(seen["refused"]) == 5 and max(seen["ok"]) == pytest.approx(9.4, abs=0.05)

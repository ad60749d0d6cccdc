"""The cut to the rate a header-less server took since it began refusing (`_sustained_rpm`, 3b3a121), where
answers take seconds: it counted the requests answered since, over the time up to the last one sent, so the
successes still being generated were missing while the 429s (back in a round trip) were in, and the run was held
at about 2/3 of the limit. Virtual time and the emulator's limiter, as in test_h6_headerless_start."""

from __future__ import annotations

import test_h6_headerless_start as h6


def test_answers_of_seconds_do_not_hold_the_rate_under_the_limit():
    """1200 RPM, answers in 0.05 to 8 s: the minute's burst, then 429s at about 39 s. Counted as answered, the rate
    the server took read 777 RPM and 50 to 90 s admitted 691 requests (limit 800); counted as sent, ~1200."""
    admitted = h6._run(1200, (0.05, 8.0), 3000, concurrency=200, window_s=60.0)["ok"]
    assert sum(50.0 <= t < 90.0 for t in admitted) >= 0.95 * 800

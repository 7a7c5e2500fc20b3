"""The engine's throughput gauge reports what it sustains: lines finishing in waves give the
rate of the work, not the spike of a wave, and an idle engine decays to zero."""

from __future__ import annotations

from loomstack_inference.throughput import SustainedRate


def test_waves_of_finished_lines_give_the_sustained_rate() -> None:
    rate = SustainedRate(window_seconds=60)
    rate.started(now=0.0)
    # 256 lines of 64 tokens finish every 20 s (an engine sustaining ~819 tokens/s); the old
    # per-heartbeat rate read 256 * 64 / 5 = 3,277 tokens/s in a wave's interval and 0 between.
    for wave in range(1, 7):
        for _ in range(256):
            rate.finished(64, now=wave * 20.0)
        tokens, lines = rate.rates(now=wave * 20.0 + 1)
        assert 780 <= tokens <= 820 and 12 <= lines <= 12.9
    # Idle: the gauge decays, then reads 0 a window after the last line, not the last spike.
    rate.idle()
    assert rate.rates(now=150.0)[0] < rate.rates(now=121.0)[0]
    assert rate.rates(now=181.0) == (0.0, 0.0)


def test_a_new_busy_period_starts_its_own_span() -> None:
    rate = SustainedRate(window_seconds=60)
    rate.started(now=1000.0)
    rate.finished(100, now=1002.0)
    assert rate.rates(now=1004.0)[0] == 25.0  # 100 tokens over 4 s of work
    rate.idle()
    rate.started(now=2000.0)
    assert rate.rates(now=2001.0) == (0.0, 0.0)

"""What an engine sustains: output tokens (and lines) per second over the last minute of work.

Lines finish in waves (a full engine completes hundreds of lines within a second or two, then
none for the time a line takes to generate), so a rate over each few-second heartbeat swings
between zero and several times the real one, and a rate kept from the last busy interval stays
at its spike once the engine goes idle. Counting what finished in a sliding window, over the
part of the window the engine was busy, gives the rate it sustains while working and decays to
zero once it has been idle for a window.
"""

from __future__ import annotations

import time
from collections import deque


class SustainedRate:
    """Tokens and lines finished in the last `window` seconds, per second of work."""

    def __init__(self, window_seconds: float = 60.0) -> None:
        self.window = window_seconds
        self._done: deque[tuple[float, int]] = deque()  # (finished at, output tokens)
        self._busy_since: float | None = None

    def started(self, now: float | None = None) -> None:
        """Work began (a shard or request while nothing else ran)."""
        if self._busy_since is None:
            self._busy_since = time.monotonic() if now is None else now

    def idle(self) -> None:
        """Nothing runs any more; the next `started` begins a new busy period."""
        self._busy_since = None

    def finished(self, tokens: int, now: float | None = None) -> None:
        """One line (or request) finished with `tokens` output tokens."""
        self._done.append((time.monotonic() if now is None else now, tokens))

    def rates(self, now: float | None = None) -> tuple[float, float]:
        """(output tokens/s, lines/s) over the window's busy part; 0 with nothing in it."""
        now = time.monotonic() if now is None else now
        while self._done and self._done[0][0] < now - self.window:
            self._done.popleft()
        if not self._done:
            return 0.0, 0.0
        # Since the busy period began (at most a window back); once idle, since the oldest
        # line of the window finished, so the rate decays as the window empties.
        first = self._busy_since if self._busy_since is not None else self._done[0][0]
        span = min(self.window, max(now - first, 1e-3))
        tokens = sum(t for _, t in self._done)
        return tokens / span, len(self._done) / span

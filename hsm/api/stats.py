"""Per-verb call counts, errors by code and latency, kept for getStats and /metrics."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

# Upper bounds of the latency histogram, in seconds (the last bucket is +Inf).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class VerbStats:
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))


class CallStats:
    """Thread-safe counters; recording a call costs one lock and a bisect."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verbs: dict[str, VerbStats] = {}
        self._codes: dict[int, int] = {}

    def record(self, verb: str, seconds: float, code: int) -> None:
        slot = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            stats = self._verbs.get(verb)
            if stats is None:
                stats = self._verbs[verb] = VerbStats()
            stats.calls += 1
            stats.seconds += seconds
            stats.max_seconds = max(stats.max_seconds, seconds)
            stats.buckets[slot] += 1
            if code:
                stats.errors += 1
                self._codes[code] = self._codes.get(code, 0) + 1

    def snapshot(self) -> tuple[dict[str, VerbStats], dict[int, int]]:
        with self._lock:
            verbs = {name: VerbStats(s.calls, s.errors, s.seconds, s.max_seconds, list(s.buckets))
                     for name, s in self._verbs.items()}
            return verbs, dict(self._codes)

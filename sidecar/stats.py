"""Ingestion of the runtime's exact step counts into a decayed window of the `num_tokens` distribution."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from graphpilot.runtime.profile import StatsWindow, bucket_for


@dataclass
class DecayedWindow:
    """Forwards per `num_tokens`, every older interval weighted by `decay` once more.

    With decay d the window's effective length is 1 / (1 - d) intervals (d = 0.7: about 3.3).
    Sizes whose weight falls under `min_weight` forwards are forgotten, so the coverage target
    (largest bucket) follows the traffic instead of remembering one old long prompt forever.
    """

    decay: float = 0.7
    min_weight: float = 0.05
    counts: dict[int, float] = field(default_factory=dict)
    rejects: dict[str, float] = field(default_factory=dict)

    def add(self, window: StatsWindow) -> None:
        """Age the window by one interval, then add one interval's exact counts."""
        self.counts = {n: w * self.decay for n, w in self.counts.items() if w * self.decay >= self.min_weight}
        self.rejects = {
            r: w * self.decay for r, w in self.rejects.items() if w * self.decay >= self.min_weight
        }
        for n, c in window.num_tokens.items():
            self.counts[n] = self.counts.get(n, 0.0) + c
        for r, c in window.rejects.items():
            self.rejects[r] = self.rejects.get(r, 0.0) + c

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct sizes [m] and their weights [m]."""
        if not self.counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        sizes = np.array(sorted(self.counts), dtype=np.int64)
        return sizes, np.array([self.counts[int(n)] for n in sizes])

    @property
    def total(self) -> float:
        return float(sum(self.counts.values()))

    def quantile(self, q: float) -> int:
        """Smallest observed size whose cumulative weight reaches q of the total (q=1: the largest)."""
        sizes, weights = self.arrays()
        if len(sizes) == 0:
            return 0
        if q >= 1.0:
            return int(sizes[-1])
        cum = np.cumsum(weights)
        return int(sizes[int(np.searchsorted(cum, q * cum[-1]))])

    def padding_waste(self, buckets: tuple[int, ...]) -> float:
        """Share of replayed tokens that are padding: sum(bucket - n) / sum(bucket) over graph forwards."""
        padded = computed = 0.0
        for n, w in self.counts.items():
            b = bucket_for(buckets, n)
            if b is not None:
                padded += w * (b - n)
                computed += w * b
        return padded / computed if computed else 0.0

    def distribution(self, limit: int = 256) -> dict[str, float]:
        """The heaviest `limit` sizes, for /status."""
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])[:limit]
        return {str(n): round(w, 3) for n, w in sorted(top)}


@dataclass
class Cursor:
    """Where the next GET /admin/stats starts; notices runtime restarts and lost steps."""

    value: int = 0
    restarts: int = 0
    lost_steps: int = 0

    def accept(self, window: StatsWindow) -> bool:
        """Take a window's cursor; False when the runtime restarted (its cursor went backwards)."""
        if window.cursor < self.value:
            self.value = 0
            self.restarts += 1
            return False
        self.value = window.cursor
        self.lost_steps += window.lost_steps
        return True


@dataclass
class Recent:
    """The last few raw windows, each tagged with the bucket set that served it (for evaluation)."""

    maxlen: int = 32
    items: deque[tuple[StatsWindow, tuple[int, ...]]] = field(default_factory=deque)

    def add(self, window: StatsWindow, buckets: tuple[int, ...]) -> None:
        """Keep one interval's window and the buckets in force during it."""
        self.items.append((window, buckets))
        while len(self.items) > self.maxlen:
            self.items.popleft()

    def since(self, index: int) -> list[tuple[StatsWindow, tuple[int, ...]]]:
        """Windows added after the first `index` ones still held."""
        return list(self.items)[index:]

    def clear(self) -> None:
        """Forget every window (after a restart the old costs no longer describe the process)."""
        self.items.clear()

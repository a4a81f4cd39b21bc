"""Cost model: replay seconds and graph memory per bucket size, eager seconds per forward.

Sources, most trusted first:
- replay time and memory the runtime measured per captured bucket (`bucket_stats` of GET /admin/profile),
  remembered across profiles, so sizes captured once stay measured;
- between measured sizes, linear interpolation; outside them, a least-squares affine fit
  (slope clamped >= 0); the measured points are first made nondecreasing (running max), which keeps
  g(n) monotone, as the optimiser requires, and errs towards the dearer reading of noisy ones;
- eager forwards cost g(n) + `eager_overhead_seconds`: the same layer-stack work plus the kernel-launch
  time that a graph removes. The overhead is fitted from windows with eager forwards (see `calibrate`);
  until then it is `eager_overhead_ratio` times the smallest bucket's replay time (launch-bound regime).

Padding: each token a replay computes also costs `padding_token_seconds` (tau), real or padding, on
both paths. Real tokens then add the same constant to every bucket set, so the objective becomes
time + tau * padded tokens: padding is never free, even where measured replay times are flat (decode
sizes, CPU). tau is `padding_weight` times the live average forward seconds per token.

Memory: the graph pool is shared by all buckets and sized by the largest one (boundary buffers are
slices of one max-sized buffer), so the runtime reports the pool on the largest bucket and only a small
overhead on each other bucket. Modelled as pool(n) = bytes_per_token * n for the largest bucket (fitted
through the origin over every largest bucket seen) plus the median per-bucket overhead for each bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphpilot.runtime.profile import StatsWindow, bucket_for

# Used only before the runtime reported any replay time: relative costs, not seconds.
PRIOR_SECONDS = 1e-3
PRIOR_TOKENS_PER_DOUBLING = 512


@dataclass
class CostModel:
    """Learned per-size costs; feed it profiles and stats windows, ask it for arrays."""

    eager_overhead_ratio: float = 4.0
    replay_seconds: dict[int, float] = field(default_factory=dict)  # bucket -> measured replay
    capture: dict[int, float] = field(default_factory=dict)  # bucket -> measured capture seconds
    pool_bytes: dict[int, int] = field(default_factory=dict)  # largest bucket -> its memory_bytes
    bucket_bytes: float = 0.0
    eager_overhead_seconds: float | None = None  # fitted; None until eager forwards were seen
    padding_token_seconds: float = 0.0  # tau: the charge of every computed token (see the module doc)
    _fit: list[float] = field(default_factory=lambda: [0.0] * 5)  # decayed sums for calibrate()

    def observe_profile(self, buckets: tuple[int, ...], bucket_stats: list[dict[str, Any]]) -> None:
        """Remember the replay time and memory of every captured bucket the runtime reported."""
        by_size = {int(s["num_tokens"]): s for s in bucket_stats}
        for n, s in by_size.items():
            if float(s.get("replay_seconds", 0.0)) > 0:
                self.replay_seconds[n] = float(s["replay_seconds"])
            if float(s.get("capture_seconds", 0.0)) > 0:
                self.capture[n] = float(s["capture_seconds"])
        if not buckets or buckets[-1] not in by_size:
            return
        top = by_size[buckets[-1]]
        if int(top.get("memory_bytes", 0)) > 0:
            self.pool_bytes[buckets[-1]] = int(top["memory_bytes"])
        others = [int(by_size[b].get("memory_bytes", 0)) for b in buckets[:-1] if b in by_size]
        if others:
            self.bucket_bytes = float(np.median(others))

    def graph_seconds(self, sizes: np.ndarray) -> np.ndarray:
        """[n] modelled seconds of a replay of a bucket at each size, padding charge included."""
        return self.replay_estimate(sizes) + self.padding_token_seconds * np.asarray(sizes, dtype=np.float64)

    def replay_estimate(self, sizes: np.ndarray) -> np.ndarray:
        """[n] replay seconds of a bucket at each size: measured, interpolated or extrapolated."""
        xs, ys = self._monotone_points()
        slope = self._slope(xs, ys)
        sizes = np.asarray(sizes, dtype=np.float64)
        inner = np.interp(sizes, xs, ys)
        above = ys[-1] + slope * (sizes - xs[-1])
        below = np.maximum(ys[0] - slope * (xs[0] - sizes), 0.0)
        return np.where(sizes > xs[-1], above, np.where(sizes < xs[0], below, inner))

    def capture_seconds(self, sizes: np.ndarray) -> np.ndarray:
        """[n] modelled time to capture a bucket of each size: c0 + c1 * its replay time.

        Capture replays a bucket a few times (c1) plus fixed work (c0: graph instantiation, warm-up);
        least squares over the buckets the runtime reported both times for, both clamped >= 0.
        """
        sizes = np.asarray(sizes, dtype=np.float64)
        both = sorted(n for n in self.capture if n in self.replay_seconds)
        if not both:
            return np.zeros(len(sizes))
        r = np.array([self.replay_seconds[n] for n in both])
        c = np.array([self.capture[n] for n in both])
        if len(both) >= 2 and np.ptp(r) > 0:
            c1, c0 = np.polyfit(r, c, 1)
        else:
            c1, c0 = 0.0, float(np.mean(c))
        c1, c0 = max(float(c1), 0.0), max(float(c0), 0.0)
        return c0 + c1 * self.replay_estimate(sizes)

    def eager_seconds(self, sizes: np.ndarray) -> np.ndarray:
        """[n] seconds of one eager forward of each size."""
        return self.graph_seconds(sizes) + self.eager_overhead()

    def eager_overhead(self) -> float:
        """Extra seconds an eager forward pays over a replay of the same size."""
        if self.eager_overhead_seconds is not None:
            return self.eager_overhead_seconds
        _, ys = self._monotone_points()
        return self.eager_overhead_ratio * float(ys[0])

    def pool_bytes_for(self, sizes: np.ndarray) -> np.ndarray:
        """[n] graph-pool bytes when each size is the largest bucket."""
        if not self.pool_bytes:
            return np.zeros(len(sizes))
        n = np.array(list(self.pool_bytes), dtype=np.float64)
        y = np.array(list(self.pool_bytes.values()), dtype=np.float64)
        per_token = float(np.dot(n, y) / np.dot(n, n))
        return per_token * np.asarray(sizes, dtype=np.float64)

    def memory_bytes(self, buckets: tuple[int, ...]) -> float:
        """Modelled graph memory of a bucket set."""
        return float(self.pool_bytes_for(np.array([buckets[-1]]))[0]) + self.bucket_bytes * len(buckets)

    def expected_seconds(
        self,
        sizes: np.ndarray,
        weights: np.ndarray,
        buckets: tuple[int, ...],
        max_padding_ratio: float = 1.0,
        padding_charge: bool = True,
    ) -> float:
        """Expected forward seconds of the window's forwards under a bucket set (the optimiser's model).

        Without `padding_charge`, the modelled forward time alone (tau left out).
        """
        if not padding_charge:
            tau, self.padding_token_seconds = self.padding_token_seconds, 0.0
            try:
                return self.expected_seconds(sizes, weights, buckets, max_padding_ratio)
            finally:
                self.padding_token_seconds = tau
        if len(sizes) == 0:
            return 0.0
        b = np.asarray(buckets)
        idx = np.searchsorted(b, sizes)  # smallest bucket >= size
        bucket = b[np.minimum(idx, len(b) - 1)].astype(np.float64)
        g, e = self.graph_seconds(bucket), self.eager_seconds(sizes)
        too_padded = (bucket - sizes) / bucket > max_padding_ratio
        served = np.where(idx >= len(b), e, np.where(too_padded, np.maximum(e, g), g))
        return float(np.dot(weights, served))

    def observe_token_cost(self, window: StatsWindow, padding_weight: float, decay: float) -> None:
        """Update tau from one window: padding_weight * forward seconds per real token (decayed mean)."""
        tokens = window.graph_tokens + window.eager_tokens
        if tokens <= 0 or window.forward_seconds <= 0:
            return
        tau = padding_weight * window.forward_seconds / tokens
        old = self.padding_token_seconds
        self.padding_token_seconds = tau if old == 0 else decay * old + (1 - decay) * tau

    def calibrate(self, window: StatsWindow, buckets: tuple[int, ...], decay: float) -> None:
        """Fit the eager overhead from one window: residual time = c0 * forwards + overhead * eager forwards.

        c0 soaks up per-forward work outside the layer stack (embedding, logits, sampling) that both
        paths pay; two unknowns by decayed least squares, solved only when eager and graph windows mix.
        """
        counts = window.num_tokens
        num_forwards = float(sum(counts.values()))
        num_eager = float(sum(window.rejects.values()))
        if num_forwards <= 0 or window.forward_seconds <= 0:
            return
        # every forward priced as a replay (time alone, no padding charge): its bucket, or its own
        # size when it ran eager
        served = np.array([bucket_for(buckets, n) or n for n in counts], dtype=np.float64)
        graph_equiv = float(
            np.dot(self.replay_estimate(served), np.array(list(counts.values()), dtype=np.float64))
        )
        residual = window.forward_seconds - graph_equiv
        s = self._fit
        terms = (num_forwards**2, num_forwards * num_eager, num_eager**2, num_forwards * residual)
        for i, t in enumerate((*terms, num_eager * residual)):
            s[i] = s[i] * decay + t
        det = s[0] * s[2] - s[1] ** 2
        if s[2] > 0 and det > 1e-9 * s[0] * s[2]:
            self.eager_overhead_seconds = max(0.0, (s[0] * s[4] - s[1] * s[3]) / det)

    def _monotone_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Measured (size, seconds) sorted by size with seconds made nondecreasing."""
        if not self.replay_seconds:
            return np.array([1.0]), np.array([PRIOR_SECONDS])
        items = sorted(self.replay_seconds.items())
        xs = np.array([n for n, _ in items], dtype=np.float64)
        ys = np.maximum.accumulate(np.array([s for _, s in items], dtype=np.float64))
        return xs, ys

    @staticmethod
    def _slope(xs: np.ndarray, ys: np.ndarray) -> float:
        """Least-squares slope (seconds per token), >= 0; a prior when fewer than two points."""
        if len(xs) < 2:
            return float(ys[0]) / PRIOR_TOKENS_PER_DOUBLING
        slope = float(np.polyfit(xs, ys, 1)[0])
        return max(slope, 0.0)

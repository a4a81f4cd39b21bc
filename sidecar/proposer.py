"""One proposal: the optimal bucket set for the decayed window, priced against the live buckets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .costmodel import CostModel
from .optimizer import Problem, solve
from .settings import SidecarSettings
from .stats import DecayedWindow


@dataclass(frozen=True)
class Proposal:
    """The optimiser's answer for the current window, and how it compares with the live buckets."""

    buckets: tuple[int, ...]
    mem_fraction_static: float | None
    gain: float  # modelled relative fall of forward time
    urgent: bool  # the live buckets miss the coverage target, or send a share of forwards eager
    coverage_target: int
    memory_bytes: float
    payback_seconds: float  # capture time of the new buckets / forward time saved per second

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, buckets=list(self.buckets))


def _with_candidates(
    sizes: np.ndarray, weights: np.ndarray, extra: set[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Add sizes of weight 0 (not observed, but worth a bucket) in sorted order."""
    new = np.array(sorted(extra - set(sizes.tolist())), dtype=np.int64)
    if len(new) == 0:
        return sizes, weights
    at = np.searchsorted(sizes, new)
    return np.insert(sizes, at, new), np.insert(weights, at, 0.0)


URGENT_EAGER_SHARE = 0.05  # share of forwards the live set sends eager that makes a retune urgent


def eager_share(
    sizes: np.ndarray, weights: np.ndarray, buckets: tuple[int, ...], max_padding_ratio: float
) -> float:
    """Share of the window's forwards that `buckets` would run eagerly (too many tokens or padding)."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    b = np.asarray(buckets, dtype=np.float64)
    idx = np.searchsorted(b, sizes, side="left")
    above = idx >= len(b)
    chosen = b[np.minimum(idx, len(b) - 1)]
    too_padded = (chosen - sizes) / chosen > max_padding_ratio
    return float(weights[above | too_padded].sum()) / total


def propose_buckets(
    s: SidecarSettings,
    model: CostModel,
    window: DecayedWindow,
    live: tuple[int, ...],
    limit: int,
    max_padding_ratio: float,
    budget: float,
    forward_seconds: float,
) -> Proposal | None:
    """Best buckets for the window under the model, with the gain and payback the gate needs."""
    sizes, weights = window.arrays()
    if len(sizes) == 0:
        return None
    limit = limit or int(sizes[-1])
    target = min(window.quantile(s.coverage_quantile), limit)
    # the largest bucket gets headroom above the largest size seen, so a slightly longer prompt
    # does not force a new capture: a candidate of weight 0 that the largest bucket must reach
    top = min(limit, math.ceil(target * (1 + s.coverage_headroom)))
    # prefills fill the batch budget under load: once traffic reaches half of it, cover all of it
    # (if the memory budget holds that), rather than recapture the largest bucket step by step; a
    # live set that covers it keeps doing so: giving that up for one more bucket among short sizes
    # costs an interval of eager forwards and a recapture when long prompts come back
    if (2 * top >= limit or live[-1] >= limit) and model.memory_bytes((limit,)) <= budget:
        top = limit
    # live buckets join the candidates (weight 0) so that keeping one is always possible; so do the
    # powers of two up to the largest bucket, with a little weight (insurance): a set with room keeps
    # a bucket every doubling, and sizes that come back later replay within the padding limit instead
    # of running eager until the next retune (the optimiser's weights only: the gain and the eager
    # share below are the traffic's)
    doublings = {1 << i for i in range(top.bit_length()) if 1 << i >= sizes[0]}
    live_above = {b for b in live if b >= sizes[0]}
    sizes, weights = _with_candidates(sizes, weights, {top} | live_above | doublings)
    insured = weights + np.isin(sizes, list(doublings)) * s.insurance_share * float(weights.sum())
    problem = Problem(
        sizes=sizes,
        weights=insured,
        graph_seconds=model.graph_seconds(sizes),
        eager_seconds=model.eager_seconds(sizes),
        pool_bytes=model.pool_bytes_for(sizes),
        bucket_bytes=model.bucket_bytes,
        max_buckets=s.max_buckets,
        memory_budget=budget,
        min_top_index=int(np.searchsorted(sizes, top)),
        max_padding_ratio=max_padding_ratio,
        bucket_cost=_capture_cost(s, model, sizes, live),
    )
    solution = solve(problem)
    if solution is None:
        return None
    # the gate judges forward time alone: the padding charge shapes the set, not whether to move
    current = model.expected_seconds(sizes, weights, live, max_padding_ratio, padding_charge=False)
    proposed = model.expected_seconds(
        sizes, weights, solution.buckets, max_padding_ratio, padding_charge=False
    )
    gain = (current - proposed) / current if current > 0 else 0.0
    # seconds of forwards saved per second of wall time, against the capture time of new buckets
    saved_per_second = gain * forward_seconds / s.interval_seconds
    new = np.array(sorted(set(solution.buckets) - set(live)), dtype=np.int64)
    capture = float(model.capture_seconds(new).sum())
    # forwards that fall back to eager, above the largest bucket or padded past the runtime's limit,
    # make a change urgent: the gain rules then wait for no evaluation or threshold
    eager_now = eager_share(sizes, weights, live, max_padding_ratio)
    eager_new = eager_share(sizes, weights, solution.buckets, max_padding_ratio)
    misfit = eager_now >= URGENT_EAGER_SHARE and eager_new <= eager_now / 2
    return Proposal(
        buckets=solution.buckets,
        mem_fraction_static=None,
        gain=gain,
        urgent=solution.covered and (live[-1] < target or misfit),
        coverage_target=target,
        memory_bytes=solution.memory_bytes,
        payback_seconds=capture / saved_per_second if saved_per_second > 0 else math.inf,
    )


def _capture_cost(
    s: SidecarSettings, model: CostModel, sizes: np.ndarray, live: tuple[int, ...]
) -> np.ndarray:
    """[m] capture time of a new bucket, in the DP's units: seconds of forwards per window.

    The window holds about interval / (1 - decay) seconds of traffic; capture time spread over
    max_payback_seconds weighs capture / payback * window seconds against the window's cost.
    """
    window_seconds = s.interval_seconds / (1 - s.decay) if s.decay < 1 else s.interval_seconds
    kappa = model.capture_seconds(sizes) * window_seconds / s.max_payback_seconds
    return np.where(np.isin(sizes, live), 0.0, kappa)

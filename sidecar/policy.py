"""Memory-fraction policy and the safety rules around every profile change."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphpilot.runtime.profile import GraphProfile, StatsWindow

from .costmodel import CostModel


@dataclass
class MemoryPolicy:
    """Moves mem_fraction_static one bounded step at a time, from KV pressure, within [lo, hi].

    Pressure (preemptions, or waiting requests while the KV cache is nearly full) asks for more KV:
    raise the fraction; at the upper bound, shrink the graph-memory budget instead so the next bucket
    set frees graph memory for KV. A KV cache that stays mostly empty gives memory back (more headroom
    against OOM), unless its free blocks serve the prefix cache: while that finds `cache_keep` of the
    prompt tokens or more, the memory stays. A failed apply (OOM, failed capture) caps the fraction below what failed and blocks
    raises for a backoff that doubles on every failure.
    """

    lo: float
    hi: float
    step: float
    kv_high: float = 0.9
    kv_low: float = 0.5
    low_intervals: int = 6  # hysteresis: this many quiet intervals in a row before giving memory back
    cache_keep: float = 0.1  # a prefix cache hit rate that keeps the KV memory (cached blocks count as free)
    ceiling: float = math.inf
    backoff_until: float = -math.inf
    backoff_seconds: float = 300.0
    budget_scale: float = 1.0  # share of the configured graph-memory budget the optimiser may use
    budget_cap: float = math.inf  # bytes: below what the last failed capture was modelled to need
    _low_streak: int = 0

    def pressure(self, window: StatsWindow) -> bool:
        """Does the KV cache limit the traffic right now?"""
        full = window.kv_cache_usage_ratio >= self.kv_high
        return window.num_preemptions > 0 or (window.num_requests_waiting > 0 and full)

    def propose(self, current: float | None, window: StatsWindow, now: float) -> float | None:
        """A new mem_fraction_static, or None to keep the current one."""
        if current is None:
            return None  # the runtime does not manage a static fraction (CPU)
        queries = window.prefix_cache_query_tokens
        caching = queries > 0 and window.prefix_cache_hit_tokens / queries >= self.cache_keep
        quiet = window.kv_cache_usage_ratio < self.kv_low and not caching
        self._low_streak = self._low_streak + 1 if quiet else 0
        upper = min(self.hi, self.ceiling)
        if self.pressure(window):
            if now >= self.backoff_until and current + 1e-9 < upper:
                return round(min(current + self.step, upper), 4)
            self.budget_scale = max(0.25, self.budget_scale / 2)  # trade graph memory for KV instead
            return None
        if self._low_streak >= self.low_intervals:
            self._low_streak = 0
            self.budget_scale = min(1.0, self.budget_scale * 2)
            if current - 1e-9 > self.lo:
                return round(max(current - self.step, self.lo), 4)
        if current > upper + 1e-9:
            return round(max(upper, self.lo), 4)  # above a ceiling set by an earlier failure
        return None

    def on_failure(self, attempted: float | None, graph_bytes: float, now: float) -> float:
        """Back off after an OOM or failed capture; returns how long non-urgent changes should wait.

        The fraction is capped below what failed, the graph budget halved and kept under 3/4 of
        what the failed bucket set was modelled to need (the model was too optimistic).
        """
        if attempted is not None:
            self.ceiling = min(self.ceiling, attempted - self.step)
        if graph_bytes > 0:
            self.budget_cap = min(self.budget_cap, 0.75 * graph_bytes)
        wait = self.backoff_seconds
        self.backoff_until = now + wait
        self.backoff_seconds *= 2
        self.budget_scale = max(0.25, self.budget_scale / 2)
        return wait

    def graph_budget(self, configured: float) -> float:
        """The graph-memory budget the optimiser may use now."""
        return min(configured * self.budget_scale, self.budget_cap)


@dataclass
class SafetyGate:
    """Minimum gain (the hysteresis band), cooldown, and a hold on profiles that failed or regressed."""

    min_gain: float
    cooldown_seconds: float
    hold_seconds: float
    max_payback_seconds: float = math.inf
    last_apply: float = -math.inf
    held: dict[tuple[int, ...], float] = field(default_factory=dict)  # buckets -> held until
    paused_until: float = -math.inf  # after a measured regression: the model was wrong, stop guessing

    def refuse(
        self, buckets: tuple[int, ...], gain: float, urgent: bool, now: float, payback: float = 0.0
    ) -> str | None:
        """Why this bucket change must not be applied now, or None when it may be.

        Urgent changes (the live buckets miss traffic: too_many_tokens rejects) skip the gain rules.
        """
        if self.held.get(buckets, -math.inf) > now:
            return "held_after_rollback"
        if now - self.last_apply < self.cooldown_seconds:
            return "cooldown"
        if urgent:
            return None
        if self.paused_until > now:
            return "paused_after_failure"
        if gain < self.min_gain:
            return "below_min_gain"
        if payback > self.max_payback_seconds:
            return "capture_cost"
        return None

    def hold(self, buckets: tuple[int, ...], now: float, pause: float = 0.0) -> None:
        """Keep a bucket set that failed or regressed out of proposals for a while.

        With `pause` seconds (a measured regression, a failed capture), hold every non-urgent retune
        too: the model mispredicted, and a neighbouring set would most likely fail the same way.
        """
        self.held[buckets] = now + self.hold_seconds
        self.paused_until = max(self.paused_until, now + pause)

    def applied(self, now: float) -> None:
        """Start the cooldown."""
        self.last_apply = now


@dataclass
class Decision:
    """One thing the tuner decided, with what it predicted and, once measured, what it got."""

    time: float
    action: str  # retune | mem_fraction | rollback | restore
    result: str  # applied | rolled_back | superseded | rejected | skipped | kept | dry_run | error
    reason: str
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    predicted_gain: float | None = None
    measured_gain: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Evaluation:
    """Measures an applied bucket set against the one it replaced.

    Forward seconds per window are compared with what the *old* set would have cost on the *same*
    windows: calib = measured / modelled under the old set before the apply, then
    expected_old = calib * modelled_old(after windows), both modelled when judged, by the same
    model: the apply makes the runtime measure replays the model had only extrapolated (the sizes
    that ran eager before), and a calibration taken with the model of before would be divided by a
    prediction of after. A small drift of the traffic moves both sides alike. A large shift does
    not (what the model leaves out, such as attention over long prompts or sampling, differs by
    size), so when the before and after distributions are far apart (total variation above a
    limit) the apply is not judged: the comparison would be noise.
    """

    old: GraphProfile
    new: GraphProfile
    predicted_gain: float
    decision: Decision
    max_padding_ratio: float = 1.0
    before: list[StatsWindow] = field(default_factory=list)  # served by the old set, before the apply
    windows: list[StatsWindow] = field(default_factory=list)  # served by the new set

    def add(self, window: StatsWindow) -> None:
        """Count one more interval served by the new set."""
        self.windows.append(window)

    def ready(self, intervals: int, min_forwards: int) -> bool:
        """Enough intervals with enough forwards to judge."""
        forwards = sum(sum(w.num_tokens.values()) for w in self.windows)
        return len(self.windows) >= intervals and forwards >= min_forwards

    def traffic_shift(self) -> float:
        """Total variation distance between the size distributions before and after the apply."""
        before, after = distribution(self.before), distribution(self.windows)
        keys = set(after) | set(before)
        return 0.5 * sum(abs(after.get(k, 0.0) - before.get(k, 0.0)) for k in keys)

    def measured_gain(self, model: CostModel) -> float:
        """1 - measured seconds / seconds the old set would have taken (negative: a regression)."""
        sizes, weights = merged_distribution(self.windows)
        measured = sum(w.forward_seconds for w in self.windows)
        modelled = model.expected_seconds(
            sizes, weights, self.old.buckets, self.max_padding_ratio, padding_charge=False
        )
        expected_old = calibration(self.before, model, self.old.buckets, self.max_padding_ratio) * modelled
        return 1.0 - measured / expected_old if expected_old > 0 else 0.0


def calibration(
    windows: list[StatsWindow], model: CostModel, buckets: tuple[int, ...], max_padding_ratio: float = 1.0
) -> float:
    """Measured forward seconds / modelled seconds under `buckets` (1.0 without data)."""
    sizes, weights = merged_distribution(windows)
    modelled = model.expected_seconds(sizes, weights, buckets, max_padding_ratio, padding_charge=False)
    measured = sum(w.forward_seconds for w in windows)
    return measured / modelled if modelled > 0 and measured > 0 else 1.0


def distribution(windows: list[StatsWindow]) -> dict[int, float]:
    """Share of forwards per size over several windows (empty stays empty)."""
    counts = forward_counts(windows)
    total = sum(counts.values())
    return {n: c / total for n, c in counts.items()} if total else {}


def merged_distribution(windows: list[StatsWindow]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted sizes [m] and exact (undecayed) forward counts [m] over several windows."""
    counts = forward_counts(windows)
    sizes = np.array(sorted(counts), dtype=np.int64)
    return sizes, np.array([counts[int(n)] for n in sizes], dtype=np.float64)


def forward_counts(windows: list[StatsWindow]) -> dict[int, int]:
    """Forwards per size, summed over several windows."""
    counts: dict[int, int] = {}
    for w in windows:
        for n, c in w.num_tokens.items():
            counts[n] = counts.get(n, 0) + c
    return counts

"""The bucket optimiser is exact (equals brute force over all integer bucket sets) and respects K and memory."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from graphpilot.runtime.profile import bucket_for
from graphpilot.sidecar.optimizer import Problem, solve


@st.composite
def instances(draw: st.DrawFn) -> tuple[Problem, dict]:
    """A small instance with costs defined on every integer 1..n, so brute force can try any bucket set."""
    n = draw(st.integers(1, 9))
    steps = st.lists(st.integers(0, 4), min_size=n, max_size=n)
    # integer-valued costs: exact float sums, so ties are real ties
    g = np.cumsum(draw(steps)) + 1.0  # nondecreasing replay cost
    e = np.cumsum(draw(steps)) + draw(st.integers(0, 6))  # nondecreasing eager cost
    pool = np.cumsum(draw(steps)).astype(float)
    observed = sorted(draw(st.sets(st.integers(1, n), min_size=1)))
    # buckets captured now cost nothing to keep; a new one costs `capture` once. Current buckets
    # become candidates of weight 0 (the DP's candidate argument needs them).
    current = {b for b in draw(st.sets(st.integers(1, n))) if b >= observed[0]}
    capture = float(draw(st.integers(0, 3)))
    sizes = np.array(sorted(set(observed) | current))
    weights = np.array([draw(st.integers(1, 5)) if x in observed else 0 for x in sizes.tolist()], dtype=float)
    budget = draw(st.one_of(st.just(math.inf), st.integers(0, 30).map(float)))
    p = Problem(
        sizes=sizes,
        weights=weights,
        graph_seconds=g[sizes - 1],
        eager_seconds=e[sizes - 1],
        pool_bytes=pool[sizes - 1],
        bucket_bytes=float(draw(st.integers(0, 3))),
        max_buckets=draw(st.integers(1, 4)),
        memory_budget=budget,
        min_top_index=draw(st.integers(0, len(observed) - 1)),
        max_padding_ratio=draw(st.sampled_from([1.0, 0.5, 0.25, 0.0])),
        bucket_cost=np.array([0.0 if x in current else capture for x in sizes.tolist()]),
    )
    coverage_size = int(sizes[p.min_top_index])
    return p, {
        "n": n,
        "g": g,
        "e": e,
        "pool": pool,
        "current": current,
        "capture": capture,
        "top": coverage_size,
    }


def cost_of(p: Problem, full: dict, buckets: tuple[int, ...]) -> float:
    """The model the optimiser promises to minimise, evaluated directly."""
    total = 0.0
    for x, w in zip(p.sizes.tolist(), p.weights.tolist(), strict=True):
        b = bucket_for(buckets, x)
        if b is None:
            total += w * full["e"][x - 1]
        elif (b - x) / b > p.max_padding_ratio:
            total += w * max(full["e"][x - 1], full["g"][b - 1])
        else:
            total += w * full["g"][b - 1]
    return total


def memory_of(p: Problem, full: dict, buckets: tuple[int, ...]) -> float:
    return float(full["pool"][buckets[-1] - 1] + p.bucket_bytes * len(buckets))


def brute_force(p: Problem, full: dict) -> tuple[bool, float] | None:
    """Best (covered?, cost + capture) over every set of at most K integers >= the smallest size."""
    best = None
    for k in range(1, p.max_buckets + 1):
        for buckets in itertools.combinations(range(int(p.sizes[0]), full["n"] + 1), k):
            if memory_of(p, full, buckets) > p.memory_budget:
                continue
            one_off = full["capture"] * len(set(buckets) - full["current"])
            key = (buckets[-1] < full["top"], cost_of(p, full, buckets) + one_off)
            best = key if best is None or key < best else best
    return None if best is None else (not best[0], best[1])


@settings(max_examples=400, deadline=None)
@given(instances())
def test_optimiser_equals_brute_force(case: tuple[Problem, dict]) -> None:
    p, full = case
    solution, expected = solve(p), brute_force(p, full)
    if expected is None:
        assert solution is None
        return
    assert solution is not None
    assert (solution.covered, solution.cost + solution.one_off_cost) == expected
    assert cost_of(p, full, solution.buckets) == solution.cost


@settings(max_examples=200, deadline=None)
@given(instances())
def test_never_exceeds_k_or_the_memory_budget(case: tuple[Problem, dict]) -> None:
    p, full = case
    solution = solve(p)
    if solution is None:
        return
    assert 1 <= len(solution.buckets) <= p.max_buckets
    assert memory_of(p, full, solution.buckets) <= p.memory_budget
    assert solution.memory_bytes == memory_of(p, full, solution.buckets)
    assert set(solution.buckets) <= set(p.sizes.tolist())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 64))
def test_large_instances_respect_k_budget_and_coverage(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = np.unique(rng.integers(1, 8193, 3000))
    g = 4e-3 + 3e-6 * sizes
    p = Problem(sizes, rng.random(len(sizes)) + 0.1, g, g + 0.018, 2.3e5 * sizes.astype(float), 2e6, k,
                2.0e9, len(sizes) - 1, 0.5)  # fmt: skip
    solution = solve(p)
    assert solution is not None and solution.covered
    assert solution.buckets[-1] == sizes[-1]  # too_many_tokens rejects vanish
    assert len(solution.buckets) <= k
    assert 2.3e5 * solution.buckets[-1] + 2e6 * len(solution.buckets) <= 2.0e9


def test_coverage_gives_way_only_when_the_budget_cannot_hold_the_largest_size() -> None:
    sizes = np.array([1, 8, 64, 4096])
    g = np.array([1.0, 1.0, 2.0, 50.0])
    p = Problem(sizes, np.ones(4), g, g + 5, np.array([1.0, 8, 64, 4096]), 0.0, 4, 100.0, 3, 1.0)
    solution = solve(p)
    assert solution is not None and not solution.covered
    assert solution.buckets[-1] == 64  # the largest bucket the budget allows; 4096 runs eager

"""The bucket optimiser is exact (equals brute force over all integer bucket sets) and respects K and memory."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from graphpilot.runtime.profile import bucket_for
from graphpilot.sidecar import optimizer
from graphpilot.sidecar.optimizer import Problem, Solution, padding_within, solve


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


# --- the fast DP against a plain O(K m^2) one -------------------------------------------------------


def reference_tables(p: Problem, num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """F[k-1, j] and the leftmost argmin, straight from the recurrence: every block cost summed from h."""
    m = len(p.sizes)
    g = np.asarray(p.graph_seconds, dtype=float)
    e = np.maximum.accumulate(p.eager_seconds)
    kappa = np.zeros(m) if p.bucket_cost is None else np.asarray(p.bucket_cost, dtype=float)
    block = np.full((m + 1, m), np.inf)  # block[i + 1, j]: sizes i+1..j served by a bucket at sizes[j]
    for j in range(m):
        x = p.sizes[: j + 1]
        within = padding_within(x, p.sizes[j], p.max_padding_ratio)
        h = np.where(within, g[j], np.maximum(e[: j + 1], g[j]))
        block[: j + 1, j] = np.cumsum((p.weights[: j + 1] * h)[::-1])[::-1] + kappa[j]
    f = np.full((num_layers, m), np.inf)
    opt = np.full((num_layers, m), -1)
    f[0] = block[0]
    for k in range(2, num_layers + 1):
        for j in range(k - 1, m):
            cost = f[k - 2, :j] + block[1 : j + 1, j]
            opt[k - 1, j] = int(np.argmin(cost))  # the leftmost on ties
            f[k - 1, j] = cost[opt[k - 1, j]]
    return f, opt


@st.composite
def dp_instances(draw: st.DrawFn) -> Problem:
    """Up to 40 sizes with integer costs (exact sums: ties are real ties), weight-0 candidates, one-off
    bucket costs, any padding limit, a budget: every case the layer solvers treat specially."""
    m = draw(st.integers(1, 40))
    sizes = np.cumsum(draw(st.lists(st.integers(1, 30), min_size=m, max_size=m)))
    steps = st.lists(st.integers(0, 5), min_size=m, max_size=m)
    g = np.cumsum(draw(steps)) + float(draw(st.integers(1, 4)))
    e = np.cumsum(draw(steps)) + float(draw(st.integers(0, 30)))  # dearer or cheaper than g
    weights = np.array(draw(st.lists(st.integers(0, 9), min_size=m, max_size=m)), dtype=float)
    kappa = draw(st.one_of(st.none(), st.lists(st.integers(0, 6), min_size=m, max_size=m).map(np.array)))
    return Problem(
        sizes=sizes,
        weights=weights,
        graph_seconds=g,
        eager_seconds=e,
        pool_bytes=np.cumsum(draw(steps)).astype(float),
        bucket_bytes=float(draw(st.integers(0, 3))),
        max_buckets=draw(st.integers(1, 10)),
        memory_budget=draw(st.one_of(st.just(math.inf), st.integers(0, 80).map(float))),
        min_top_index=draw(st.integers(0, m - 1)),
        max_padding_ratio=draw(st.sampled_from([1.0, 0.75, 0.5, 0.2, 0.0])),
        bucket_cost=None if kappa is None else kappa.astype(float),
    )


@settings(max_examples=300, deadline=None)
@given(dp_instances())
def test_tables_equal_the_reference_dp(p: Problem) -> None:
    num_layers = min(p.max_buckets, len(p.sizes))
    f, opt = optimizer._tables(p, num_layers)
    ref_f, ref_opt = reference_tables(p, num_layers)
    assert np.array_equal(f, ref_f)
    for k in range(2, num_layers + 1):  # rows j < k - 1 cannot hold k buckets: no argmin to compare
        assert np.array_equal(opt[k - 1, k - 1 :], ref_opt[k - 1, k - 1 :])


@settings(max_examples=300, deadline=None)
@given(dp_instances())
def test_each_layer_solver_equals_the_reference_dp(p: Problem) -> None:
    """The hull (with every row it cannot settle left to its D&C) and the plain D&C, on every layer."""
    num_layers = min(p.max_buckets, len(p.sizes))
    ref_f, ref_opt = reference_tables(p, num_layers)
    pre = optimizer._Prefix.of(p)
    for k in range(2, num_layers + 1):
        solved = [optimizer._dc_layer(ref_f[k - 2], ref_opt[k - 2], pre, k)]
        hull = optimizer._hull_layer(ref_f[k - 2], ref_opt[k - 2], pre, k, max_unsettled=len(p.sizes))
        solved += [hull] if hull is not None else []
        for f, opt in solved:
            assert np.array_equal(f, ref_f[k - 1])
            assert np.array_equal(opt[k - 1 :], ref_opt[k - 1, k - 1 :])


def reference_solve(p: Problem) -> Solution | None:
    """solve() with the reference tables: the same selection (budget, coverage, ties) on top."""
    fast_tables = optimizer._tables
    try:
        optimizer._tables = reference_tables
        return solve(p)
    finally:
        optimizer._tables = fast_tables


@settings(max_examples=200, deadline=None)
@given(dp_instances())
def test_solution_equals_the_reference_dp(p: Problem) -> None:
    assert solve(p) == reference_solve(p)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_float_costs_match_the_reference_dp(seed: int) -> None:
    """Real-valued costs (the H200 shape plus noise) on a few hundred sizes: equal up to rounding."""
    rng = np.random.default_rng(seed)
    sizes = np.unique(rng.integers(1, 8193, rng.integers(50, 300)))
    g = np.maximum.accumulate(4e-3 + 3e-6 * np.maximum(sizes - 64, 0) * rng.uniform(0.5, 1.5, len(sizes)))
    weights = rng.pareto(1.2, len(sizes)) * rng.integers(0, 2, len(sizes))  # heavy tail, some weight-0
    p = Problem(sizes, weights, g, g + 0.018, 2.3e5 * sizes.astype(float), 2e6, 12, 3e9, 0,
                float(rng.choice([0.5, 0.25, 1.0])))  # fmt: skip
    num_layers = min(12, len(sizes))
    f, _ = optimizer._tables(p, num_layers)
    ref_f, _ = reference_tables(p, num_layers)
    finite = np.isfinite(ref_f)
    assert np.array_equal(finite, np.isfinite(f))
    assert np.allclose(f[finite], ref_f[finite], rtol=1e-12, atol=1e-12)
    fast, reference = solve(p), reference_solve(p)
    assert fast is not None and reference is not None
    assert math.isclose(fast.cost, reference.cost, rel_tol=1e-12)

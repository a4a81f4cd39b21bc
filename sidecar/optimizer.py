"""Bucket optimiser: the best set of at most K `num_tokens` buckets for an observed distribution.

Model (all arrays are indexed by the sorted distinct observed sizes x_0 < x_1 < ... < x_{m-1}):

- a forward of x tokens replays the smallest bucket b >= x and costs g(b) seconds;
- a forward above the largest bucket runs eager and costs e(x) seconds;
- a forward whose padding exceeds the runtime's limit, (b - x) / b > r, also runs eager; it is charged
  max(e(x), g(b)): what it really costs when eager is dearer (launch-bound sizes), and no less than the
  replay it avoided otherwise. That keeps h(x, b), the charge of x under bucket b, nondecreasing in b,
  which both arguments below need;
- the graph pool costs pool(largest bucket) bytes (boundary buffers are slices of one max-sized
  buffer, so activations scale with the largest bucket only) plus `bucket_bytes` per captured bucket.

A bucket may also carry a one-off cost (capture time, amortised; 0 for buckets captured now).

g, e and pool must be nondecreasing in size (the cost model guarantees it), and every set serves the
smallest observed size (decode at batch 1 always gets a graph). Then an optimal bucket set only needs
sizes equal to observed values: take any optimal set and lower each bucket b to the largest observed
x <= b that it serves (a bucket that serves nothing is dropped). Every forward keeps the same bucket
index, h and pool can only fall, the count only falls, and the largest bucket still covers the same
observed sizes, so the coverage rule keeps holding. Hence the DP below searches candidates only among
observed sizes, and the tests check it against brute force over *all* integer sets. With one-off
costs, the buckets captured now join the candidates (weight 0): lowering a new bucket to a candidate
then never raises its one-off cost either.

DP: F_k[j] = cheapest cost of serving x_0..x_j with k buckets, the largest at x_j:
    F_1[j] = C(-1, j),   F_k[j] = min_{i<j} F_{k-1}[i] + C(i, j),
    C(i, j) = sum_{i<l<=j} w_l h(x_l, x_j) + one-off cost of a bucket at x_j.
C obeys the quadrangle inequality because h is nondecreasing in the bucket, so the best i is monotone
in j (and in k) and each layer is computed by divide and conquer, level-synchronously in numpy:
O(K * m log m) element operations, no Python loop over m. C is O(1) from prefix sums (see _block_cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class Problem:
    """One optimisation instance; every array has one entry per observed distinct size."""

    sizes: Array  # [m] sorted distinct observed num_tokens
    weights: Array  # [m] forwards per size in the window (> 0)
    graph_seconds: Array  # [m] replay cost of a bucket at sizes[i], nondecreasing
    eager_seconds: Array  # [m] cost of one eager forward of sizes[i] (made nondecreasing by solve)
    pool_bytes: Array  # [m] shared graph pool when sizes[i] is the largest bucket, nondecreasing
    bucket_bytes: float  # memory each captured bucket adds on top of the pool
    max_buckets: int
    memory_budget: float = math.inf
    min_top_index: int = 0  # coverage: the largest bucket must be >= sizes[min_top_index]
    max_padding_ratio: float = 1.0  # the runtime's limit on (bucket - num_tokens) / bucket
    bucket_cost: Array | None = None  # [m] one-off cost of a bucket at sizes[i] (capture, amortised)


@dataclass(frozen=True)
class _Prefix:
    """Prefix sums and per-bucket indices that make a block cost O(1).

    C(i, j) = g_j * (W[j+1] - W[a]) + X_j(a) with a = i + 1, where X_j(a) adds, for the sizes of the
    block whose padding under x_j is over the limit (indices a .. within_j - 1) and whose eager cost is
    above g_j (indices >= cheap_j), e_l - g_j each: X_j(a) = (E[w] - E[q]) - g_j * (W[w] - W[q]) with
    w = within_j, q = clip(a, cheap_j, w). X_j is 0 when a >= w, so most blocks skip it.
    """

    g: Array  # [m] graph seconds
    wc: Array  # [m+1] wc[t] = sum of w over indices < t
    ec: Array  # [m+1] ec[t] = sum of w * e over indices < t
    within: Array  # [m] first index whose padding under bucket j is within the limit
    cheap: Array  # [m] first index whose eager cost reaches g_j (e is nondecreasing)
    kappa: Array  # [m] one-off cost of a bucket at j (depends on j only: the QI still holds)

    @classmethod
    def of(cls, p: Problem) -> _Prefix:
        e = np.maximum.accumulate(p.eager_seconds)
        x = p.sizes.astype(np.float64)
        within = np.searchsorted(x, x * (1 - p.max_padding_ratio), side="left")
        return cls(
            g=p.graph_seconds,
            wc=np.concatenate(([0.0], np.cumsum(p.weights))),
            ec=np.concatenate(([0.0], np.cumsum(p.weights * e))),
            within=_fix_within(x, within, p.max_padding_ratio),
            cheap=np.searchsorted(e, p.graph_seconds, side="left"),
            kappa=np.zeros(len(x)) if p.bucket_cost is None else np.asarray(p.bucket_cost, dtype=np.float64),
        )

    def block_cost(self, i: Array, j: Array) -> Array:
        """C(i, j) for index arrays: sizes i+1..j served by bucket j (i = -1: from the smallest)."""
        return self.g[j] * (self.wc[j + 1] - self.wc[i + 1]) + self.extra(i + 1, j)

    def extra(self, a: Array, j: Array) -> Array:
        """X_j(a): what eager forwards (padding over the limit) add over g_j, for blocks starting at a."""
        w = self.within[j]
        q = np.minimum(np.maximum(a, self.cheap[j]), w)
        return (self.ec[w] - self.ec[q]) - self.g[j] * (self.wc[w] - self.wc[q])


def padding_within(num_tokens: Array | float, bucket: Array | float, max_padding_ratio: float) -> Array:
    """The runtime's rule: a bucket serves num_tokens unless (bucket - num_tokens) / bucket > limit."""
    return np.asarray((np.asarray(bucket) - num_tokens) / np.asarray(bucket) <= max_padding_ratio)


def _fix_within(x: Array, within: Array, r: float) -> Array:
    """Correct searchsorted's float threshold by one index against the exact rule."""
    j = np.arange(len(x))
    w = within.copy()
    back = (w > 0) & padding_within(x[np.maximum(w - 1, 0)], x, r)
    w[back] -= 1
    ahead = (w < j) & ~padding_within(x[np.minimum(w, len(x) - 1)], x, r)
    w[ahead] += 1
    return w


@dataclass(frozen=True)
class Solution:
    """The chosen buckets, their expected cost over the window (minimised together with the one-off
    bucket costs) and their modelled memory."""

    buckets: tuple[int, ...]
    cost: float
    memory_bytes: float
    covered: bool  # the largest bucket reaches the coverage target
    one_off_cost: float = 0.0  # sum of the chosen buckets' bucket_cost (not in `cost`)


@dataclass(frozen=True)
class _Level:
    """One level of the divide-and-conquer tree over j, with every per-j quantity precomputed.

    The tree and these rows are the same for every layer k, so they are built once per solve.
    """

    mids: Array  # [s] j solved at this level, ascending
    left: Array  # [s] nearest j solved before, to the left (m = none)
    right: Array  # [s] nearest j solved before, to the right (m + 1 = none)
    g: Array  # [s, 1] g_j
    const: Array  # [s] g_j * W[j+1]
    has_extra: Array  # [s] some block ending at j can hold eager sizes dearer than g_j


def _tree(pre: _Prefix) -> list[_Level]:
    """Levels of the D&C over j in [0, m)."""
    m = len(pre.g)
    levels = []
    lo, hi = np.array([0]), np.array([m - 1])
    while len(lo):
        mid = (lo + hi) >> 1
        levels.append(
            _Level(
                mids=mid,
                left=np.where(lo > 0, lo - 1, m),
                right=np.where(hi < m - 1, hi + 1, m + 1),
                g=pre.g[mid][:, None],
                const=pre.g[mid] * pre.wc[mid + 1] + pre.kappa[mid],
                has_extra=pre.cheap[mid] < pre.within[mid],
            )
        )
        lo, hi = np.concatenate((lo, mid + 1)), np.concatenate((mid - 1, hi))
        keep = lo <= hi
        order = np.argsort(lo[keep], kind="stable")
        lo, hi = lo[keep][order], hi[keep][order]
    return levels


def _layer(prev: Array, prev_opt: Array, pre: _Prefix, k: int, tree: list[_Level]) -> tuple[Array, Array]:
    """F_k and argmin from F_{k-1}: every j's best i lies between its solved neighbours' best i."""
    m = len(prev)
    cur = np.empty(m)
    opt = np.empty(m + 2, dtype=np.int64)
    opt[m], opt[m + 1] = k - 2, m - 2  # sentinels: the bounds when a side has no solved neighbour
    wc1 = pre.wc[1:]  # prev[i] - g_j * W[i+1] is the i-dependent part of every block cost
    for lv in tree:
        # Knuth: opt_{k-1}[j] <= opt_k[j]; monotone: opt[left] <= opt[j] <= opt[right]; and i < j.
        # j < k-1 cannot hold k buckets: they get the range {k-2}, and inf below.
        b = np.maximum(np.minimum(opt[lv.right], lv.mids - 1), k - 2)
        a = np.minimum(np.maximum(opt[lv.left], prev_opt[lv.mids]), b)
        lengths = b - a + 1
        if len(a) * int(lengths.max()) <= 2 * int(lengths.sum()) + 64:
            best, arg = _rows_min(prev, wc1, pre, lv, a, b, slice(None))  # even widths: a rectangle
        else:
            best, arg = _ragged_min(prev, wc1, pre, lv, a, b, slice(None))  # uneven: no padding work
        cur[lv.mids], opt[lv.mids] = best + lv.const, arg
    cur[: k - 1] = np.inf
    return cur, opt[:m]


def _rows_min(
    prev: Array, wc1: Array, pre: _Prefix, lv: _Level, a: Array, b: Array, rows: Array | slice
) -> tuple[Array, Array]:
    """Per row s: min and leftmost argmin over i in [a_s, b_s] of prev[i] - g_j W[i+1] + X_j(i+1).

    One [rows, width] rectangle; indices past b_s repeat b_s, harmless for a leftmost argmin.
    """
    a, b, mids = a[rows], b[rows], lv.mids[rows]
    if len(a) == 0:
        return np.empty(0), np.empty(0, dtype=np.int64)
    i = np.minimum(a[:, None] + np.arange(int((b - a).max()) + 1), b[:, None])  # [s, width]
    val = prev[i] - lv.g[rows] * wc1[i]
    need = lv.has_extra[rows] & (a + 1 < pre.within[mids])  # X_j is 0 unless the block starts low
    if need.any():
        val[need] += pre.extra(i[need] + 1, mids[need][:, None])
    col = np.argmin(val, axis=1)
    r = np.arange(len(a))
    return val[r, col], i[r, col]


def _ragged_min(
    prev: Array, wc1: Array, pre: _Prefix, lv: _Level, a: Array, b: Array, rows: Array | slice
) -> tuple[Array, Array]:
    """The same as _rows_min for rows of very different widths: one flat array, minima by reduceat."""
    a, b, mids = a[rows], b[rows], lv.mids[rows]
    lengths = b - a + 1
    starts = np.zeros(len(a), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    i = np.arange(int(lengths.sum())) + np.repeat(a - starts, lengths)  # [n] consecutive within a row
    val = prev[i]
    val -= np.repeat(lv.g[rows, 0], lengths) * wc1[i]
    need_rows = lv.has_extra[rows] & (a + 1 < pre.within[mids])  # X_j is 0 unless the block starts low
    if need_rows.any():
        need = np.repeat(need_rows, lengths)
        val[need] += pre.extra(i[need] + 1, np.repeat(mids, lengths)[need])
    best = np.minimum.reduceat(val, starts)
    hit = np.flatnonzero(val == np.repeat(best, lengths))
    row = np.searchsorted(starts, hit, side="right") - 1
    first = hit[np.concatenate(([True], row[1:] != row[:-1]))]  # leftmost argmin per row
    return best, i[first]


def _tables(p: Problem, num_layers: int) -> tuple[Array, Array]:
    """F[k-1, j] and argmin tables for k = 1..num_layers."""
    m = len(p.sizes)
    pre = _Prefix.of(p)
    f = np.full((num_layers, m), np.inf)
    opt = np.full((num_layers, m), -1, dtype=np.int64)
    f[0] = pre.block_cost(np.full(m, -1), np.arange(m)) + pre.kappa
    tree = _tree(pre)
    for k in range(2, num_layers + 1):
        f[k - 1], opt[k - 1] = _layer(f[k - 2], opt[k - 2], pre, k, tree)
    return f, opt


def _max_buckets_fitting(p: Problem) -> Array:
    """[m] how many buckets fit the memory budget when sizes[t] is the largest."""
    room = p.memory_budget - p.pool_bytes
    if p.bucket_bytes <= 0:
        fit = np.where(room >= 0, p.max_buckets, 0)
    else:
        with np.errstate(invalid="ignore"):
            fit = np.floor(np.where(room >= 0, room / p.bucket_bytes, 0))
    return np.minimum(np.minimum(fit, p.max_buckets), np.arange(1, len(p.sizes) + 1)).astype(np.int64)


def solve(p: Problem) -> Solution | None:
    """Optimal bucket set under K, the memory budget and coverage; None when nothing fits."""
    m = len(p.sizes)
    if m == 0 or p.max_buckets < 1:
        return None
    kfit = _max_buckets_fitting(p)
    if kfit.max() < 1:
        return None
    f, opt = _tables(p, int(kfit.max()))
    # tail[t]: eager cost of every size above sizes[t]
    e = np.maximum.accumulate(p.eager_seconds)
    tail = np.concatenate((np.cumsum((p.weights * e)[::-1])[::-1][1:], [0.0]))
    # best k <= kfit[t] per top t; with one-off bucket costs more buckets are no longer free
    usable = np.arange(1, len(f) + 1)[:, None] <= kfit[None, :]  # [K, m]
    cols = np.where(usable, f, np.inf)
    best = cols.min(axis=0)
    total = best + tail
    covering = np.where((np.arange(m) >= p.min_top_index) & np.isfinite(total), total, np.inf)
    is_covered = bool(np.isfinite(covering).any())
    t = int(np.argmin(covering if is_covered else total))
    # fewest buckets among (float-)ties: a bucket that gains nothing only costs memory and capture
    k = int(np.flatnonzero(cols[:, t] <= best[t] * (1 + 1e-12) + 1e-300)[0]) + 1
    buckets = _backtrack(p.sizes, opt, k, t)
    one_off = float(sum(_kappa_of(p, buckets)))
    return Solution(
        buckets=buckets,
        cost=float(f[k - 1, t] + tail[t]) - one_off,
        memory_bytes=float(p.pool_bytes[t] + k * p.bucket_bytes),
        covered=is_covered,
        one_off_cost=one_off,
    )


def _kappa_of(p: Problem, buckets: tuple[int, ...]) -> list[float]:
    if p.bucket_cost is None:
        return [0.0]
    idx = np.searchsorted(p.sizes, buckets)
    return [float(v) for v in np.asarray(p.bucket_cost)[idx]]


def _backtrack(sizes: Array, opt: Array, k: int, t: int) -> tuple[int, ...]:
    """Bucket sizes of the DP path ending with k buckets, the largest at index t."""
    chosen = []
    while k >= 1:
        chosen.append(int(sizes[t]))
        t = int(opt[k - 1, t])
        k -= 1
    return tuple(sorted(chosen))

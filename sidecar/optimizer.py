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
C is O(1) from prefix sums (see _Prefix): with W the prefix sum of w,
    F_k[j] = g_j W[j+1] + kappa_j + min_{i<j} (F_{k-1}[i] - g_j W[i+1] + X_j(i+1)),
where X_j(i+1) >= 0 is what the forwards over the padding limit add (0 unless the block starts below
extra_below[j]). Each layer k is solved in two exact steps:

1. Lower hull. Drop X and the constraint i < j: phi_j(i) = F_{k-1}[i] - g_j W[i+1] is the intercept
   of the line of slope g_j through the point (W[i+1], F_{k-1}[i]), so its minimum over all i is at
   the vertex of the lower convex hull of those points where the edge slopes cross g_j. The edge
   slopes are sorted, and so is g: one merge gives every row's minimiser i*. When i* < j and
   X_j(i*+1) = 0 (the block stays inside the padding limit), i* is the row's optimum: any other
   predecessor i costs phi_j(i) + X_j(i+1) >= phi_j(i) >= phi_j(i*). It is also the leftmost optimum
   (an equal one further left would be an equal minimiser of phi_j, and i* is the leftmost), the
   same argmin the D&C below picks.
2. Divide and conquer for the other rows. C obeys the quadrangle inequality because h is nondecreasing
   in the bucket, so the leftmost best i is monotone in j, and in k (Knuth: opt_{k-1}[j] <= opt_k[j]).
   A row the hull left is bounded by the argmins of the nearest solved rows around it and by the
   previous layer's. For small k most blocks reach past the padding limit and the hull settles few
   rows; such a layer is solved by D&C alone, level by level over strided rows.

Both steps go in rounds (hull pruning rounds, D&C levels), each a few dozen vectorised numpy calls
over all its rows, with no Python loop over m. The tests compare every layer, values and leftmost
argmins, with a plain O(K m^2) DP on integer costs (where float sums are exact), and real-valued
costs to rounding.
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
    wc1: Array  # [m] wc[t + 1]: weight up to and including t (the x of candidate t on the hull)
    ec: Array  # [m+1] ec[t] = sum of w * e over indices < t
    within: Array  # [m] first index whose padding under bucket j is within the limit
    cheap: Array  # [m] first index whose eager cost reaches g_j (e is nondecreasing)
    kappa: Array  # [m] one-off cost of a bucket at j (depends on j only: the QI still holds)
    const: Array  # [m] g_j W[j+1] + kappa_j: the part of F_k[j] that does not depend on i
    extra_below: Array  # [m] X_j(i+1) can be > 0 only for i < extra_below[j] (-1: never)
    repeated_x: bool  # some weight is 0, so two candidates share a hull x
    index: Array  # [m] 0..m-1

    @classmethod
    def of(cls, p: Problem) -> _Prefix:
        e = np.maximum.accumulate(p.eager_seconds)
        x = p.sizes.astype(np.float64)
        r = p.max_padding_ratio
        within = _fix_within(x, np.searchsorted(x, x * (1 - r), side="left"), r)
        cheap = np.searchsorted(e, p.graph_seconds, side="left")
        g = np.asarray(p.graph_seconds, dtype=np.float64)
        wc = np.concatenate(([0.0], np.cumsum(p.weights)))
        kappa = np.zeros(len(x)) if p.bucket_cost is None else np.asarray(p.bucket_cost, dtype=np.float64)
        return cls(
            g=g,
            wc=wc,
            wc1=wc[1:],
            ec=np.concatenate(([0.0], np.cumsum(p.weights * e))),
            within=within,
            cheap=cheap,
            kappa=kappa,
            const=g * wc[1:] + kappa,
            # blocks starting at a = i + 1 < within_j hold sizes over the padding limit; they cost more
            # than g_j only where the eager cost is dearer (indices >= cheap_j)
            extra_below=np.where(cheap < within, within - 1, -1),
            repeated_x=bool((wc[2:] == wc[1:-1]).any()),
            index=np.arange(len(x)),
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


_IOTA = np.arange(1 << 14)


def _iota(n: int) -> Array:
    """np.arange(n), sliced from a cached array (the D&C asks for one per level)."""
    global _IOTA
    if n > len(_IOTA):
        _IOTA = np.arange(max(n, 2 * len(_IOTA)))
    return _IOTA[:n]


def _row_minima(prev: Array, pre: _Prefix, a: Array, b: Array, rows: Array) -> tuple[Array, Array]:
    """Per row j = rows[s]: min over i in [a_s, b_s] of prev[i] - g_j W[i+1] + X_j(i+1), and its leftmost i.

    All candidates of all rows are laid end to end in one array. Each value is packed with its index
    into a complex number, which numpy orders lexicographically (real part first), so one
    minimum.reduceat gives every row's minimum and, among equal values, the smallest index.
    """
    lengths = b - a + 1
    ends = lengths.cumsum()
    starts = ends - lengths
    i = (a - starts).repeat(lengths)
    i += _iota(int(ends[-1]))
    z = np.empty(len(i), dtype=np.complex128)
    vals = z.real
    np.multiply(pre.g[rows].repeat(lengths), pre.wc1[i], out=vals)
    np.subtract(prev[i], vals, out=vals)
    # candidates i < extra_below[j] open blocks that reach sizes over the padding limit
    below = pre.extra_below[rows]
    low = (a < below).nonzero()[0]
    if 2 * len(low) > len(rows):  # most rows: correct every candidate (X is 0 where it does not apply)
        vals += pre.extra(i + 1, rows.repeat(lengths))
    elif len(low):
        n_low = np.minimum(b[low], below[low] - 1) - a[low] + 1
        low_ends = n_low.cumsum()
        at = (starts[low] - (low_ends - n_low)).repeat(n_low)
        at += _iota(int(low_ends[-1]))
        vals[at] += pre.extra(i[at] + 1, rows[low].repeat(n_low))
    z.imag = i
    best = np.minimum.reduceat(z, starts)
    return best.real, best.imag.astype(np.int64)


def _dc_layer(prev: Array, prev_opt: Array, pre: _Prefix, k: int) -> tuple[Array, Array]:
    """F_k and its argmin by divide and conquer over j, every row bounded by the rows solved before it.

    Rows are solved in levels of fixed stride. The first level takes every S-th row (and the last one)
    with only the Knuth bound opt_{k-1}[j] <= opt_k[j] < j: its width is about the span of a bucket,
    so S is set to the mean span of the previous layer. Each later level halves the stride and solves
    the rows halfway between solved ones, within their argmins: opt[j - h] <= opt[j] <= opt[j + h].
    Rows j < k - 1 cannot hold k buckets: they get the range {k - 2} (a valid bound) and inf.
    """
    m = len(prev)
    cur = np.empty(m)
    mean_span = (m - 1) / 2 - float(prev_opt.mean())  # mean of j - opt_{k-1}[j]
    stride = min(1 << max(1, round(math.log2(max(mean_span, 1.0)))), 1 << max(1, math.ceil(math.log2(m))))
    o = np.empty(m + stride + 1, dtype=np.int64)  # o[j + 1] = opt[j]; o[0] and o[m:] are sentinels
    o[0] = k - 2
    rows = np.arange(stride - 1, m, stride)
    if len(rows) == 0 or rows[-1] != m - 1:
        rows = np.append(rows, m - 1)
    b = np.maximum(rows - 1, k - 2)
    a = np.minimum(np.maximum(prev_opt[rows], k - 2), b)
    best, arg = _row_minima(prev, pre, a, b, rows)
    cur[rows] = best + pre.const[rows]
    o[rows + 1] = arg
    o[m:] = o[m]  # right neighbours past the end: bounded by the last row
    h = stride // 2
    while h >= 1:
        step = 2 * h
        count = (m - h + step - 1) // step  # rows h-1, h-1+2h, ... below m-1
        if count:
            level = slice(h - 1, m - 1, step)
            rows = np.arange(h - 1, h - 1 + step * count, step)
            b = np.minimum(o[step : step * (count + 1) : step], rows - 1)  # opt[j + h]
            np.maximum(b, k - 2, out=b)
            a = np.maximum(o[0 : step * count : step], prev_opt[level])  # opt[j - h], Knuth
            np.minimum(a, b, out=a)
            best, arg = _row_minima(prev, pre, a, b, rows)
            cur[level] = best + pre.const[level]
            o[h:m:step] = arg
        h //= 2
    cur[: k - 1] = np.inf
    return cur, o[1 : m + 1]


HULL_MAX_ROUNDS = 32  # past this the layer is left to the D&C (a chain that loses one point a round)


def _lower_hull(x: Array, y: Array) -> Array | None:
    """Indices of the lower convex hull of the points (x, y), x strictly increasing; None if it takes
    more than HULL_MAX_ROUNDS rounds.

    A point that is not strictly below the chord of its two neighbours is not a hull vertex, and
    dropping it leaves the hull unchanged, so rounds drop all such points at once until none is left.
    While many go per round the points are compacted; once few do, a linked list over them is kept
    and only the neighbours of the dropped points are tested again.
    """
    points = np.arange(len(x))
    px, py = x, y
    rounds = iter(range(HULL_MAX_ROUNDS))
    for _ in rounds:
        n = len(points)
        if n < 3:
            return points
        slope = (py[1:] - py[:-1]) / (px[1:] - px[:-1])
        convex = slope[:-1] < slope[1:]
        kept = convex.nonzero()[0]
        if len(kept) == n - 2:
            return points
        if n >= 2048 and n - 2 - len(kept) < n // 16:
            dropped = (~convex).nonzero()[0] + 1
            break
        at = np.empty(len(kept) + 2, dtype=np.int64)
        at[0], at[-1] = 0, n - 1
        np.add(kept, 1, out=at[1:-1])
        points = points[at]
        px, py = x[points], y[points]
    else:
        return None
    prev, nxt = np.arange(-1, n - 1), np.arange(1, n + 1)
    alive = np.ones(n, dtype=bool)
    for _ in rounds:
        alive[dropped] = False
        # unlink each run of consecutive dropped points: its outer neighbours now face each other
        chained = nxt[dropped[:-1]] == dropped[1:]
        left = prev[dropped[np.concatenate(([True], ~chained))]]
        right = nxt[dropped[np.concatenate((~chained, [True]))]]
        nxt[left], prev[right] = right, left
        test = np.stack((left, right), axis=1).ravel()
        test = test[np.concatenate(([True], test[1:] != test[:-1]))]
        test = test[(test > 0) & (test < n - 1)]
        before, after = prev[test], nxt[test]
        slope_in = (py[test] - py[before]) / (px[test] - px[before])
        slope_out = (py[after] - py[test]) / (px[after] - px[test])
        dropped = test[slope_in >= slope_out]
        if len(dropped) == 0:
            return points[alive]
    return None


def _hull_layer(
    prev: Array, prev_opt: Array, pre: _Prefix, k: int, max_unsettled: int | None = None
) -> tuple[Array, Array] | None:
    """F_k and its argmin from the lower hull of (W[i+1], F_{k-1}[i]) (see the module docstring), and
    by D&C for the rows the hull does not settle. None when more than `max_unsettled` rows (default
    m / 8) are left, too many for this to pay, or when the hull does not converge."""
    m = len(prev)
    first = k - 2  # F_{k-1} is finite from here on
    x, y = pre.wc1[first:], prev[first:]
    ids = None
    if pre.repeated_x:  # weight-0 sizes: keep the lowest point of each x (the leftmost on ties)
        runs = np.concatenate(([True], x[1:] != x[:-1])).nonzero()[0]
        lowest = np.minimum.reduceat(y + 1j * np.arange(len(y)), runs)
        ids = lowest.imag.astype(np.int64)
        x, y = x[ids], lowest.real
    g = pre.g
    # the smallest and largest slope's minimisers bound every row's (minimisers move right with g)
    lo = int((y - g[0] * x).argmin())
    hi = int((y - g[-1] * x).argmin())
    hull = _lower_hull(x[lo : hi + 1], y[lo : hi + 1])
    if hull is None:
        return None
    hull += lo
    # row j's minimiser: the first hull vertex whose outgoing edge is not less steep than g_j
    hx, hy = x[hull], y[hull]
    edge = _count_below((hy[1:] - hy[:-1]) / (hx[1:] - hx[:-1]), g)
    arg = (hull if ids is None else ids[hull])[edge] + first
    unsettled = ((arg >= pre.index) | (arg < pre.extra_below)).nonzero()[0]
    unsettled = unsettled[unsettled >= k - 1]
    if len(unsettled) > (m // 8 if max_unsettled is None else max_unsettled):
        return None
    cur = prev[arg] - g * pre.wc1[arg]
    cur += pre.const
    o = np.empty(m + 1, dtype=np.int64)  # o[j + 1] = opt[j]; o[0]: left sentinel
    o[0] = k - 2
    o[1:] = arg
    o[1:k] = k - 2
    if len(unsettled):
        _solve_between(prev, prev_opt, pre, k, unsettled, cur, o)
    cur[: k - 1] = np.inf
    return cur, o[1:]


def _count_below(sorted_keys: Array, queries: Array) -> Array:
    """For sorted queries: how many keys are strictly below each one (np.searchsorted, side="left").

    Few keys: search the keys into the queries and count. About as many keys as queries (a hull that
    keeps most points): np.interp, which starts each search from the previous answer, gives a float
    position; rounding can put it one off at a key, so it is corrected and checked against the keys.
    """
    n = len(queries)
    if 4 * len(sorted_keys) < n:
        at = np.searchsorted(queries, sorted_keys, side="right")  # first query above each key
        return np.bincount(at, minlength=n + 1)[:n].cumsum()
    position = np.interp(queries, sorted_keys, np.arange(len(sorted_keys), dtype=np.float64))
    count = np.ceil(position).astype(np.int64)
    padded = np.concatenate(([-np.inf], sorted_keys, [np.inf]))  # padded[c] = key c - 1
    count -= padded[count] >= queries
    count += padded[count + 1] < queries
    if not ((padded[count] < queries) & (padded[count + 1] >= queries)).all():
        count = np.searchsorted(sorted_keys, queries, side="left")
    return count


DIRECT_WORK = 2048  # a run of rows is solved in one pass when rows x candidate range is below this


def _solve_between(
    prev: Array, prev_opt: Array, pre: _Prefix, k: int, rows: Array, cur: Array, o: Array
) -> None:
    """Solve `rows` (sorted), every other row being solved already: D&C over each run of consecutive
    rows within the argmins of the solved rows around it (a small run is solved in one pass)."""
    m = len(prev)
    gap = (rows[1:] - rows[:-1] != 1).nonzero()[0]
    lo = np.concatenate((rows[:1], rows[gap + 1]))
    hi = np.concatenate((rows[gap], rows[-1:]))
    while len(lo):
        left = o[lo]  # opt[lo - 1]
        right = np.where(hi + 1 < m, o[np.minimum(hi + 2, m)], m)  # opt[hi + 1]; m: no row there
        count = hi - lo + 1
        whole = (count * (np.minimum(right, hi) - left + 1) <= DIRECT_WORK) | (count == 1)
        mid = (lo + hi) >> 1
        n_whole = count[whole]
        ends = n_whole.cumsum()
        run_rows = (lo[whole] - (ends - n_whole)).repeat(n_whole) + _iota(int(ends[-1]) if len(ends) else 0)
        split = ~whole
        j = np.concatenate((run_rows, mid[split]))
        b = np.concatenate((right[whole].repeat(n_whole), right[split]))
        np.minimum(b, j - 1, out=b)
        np.maximum(b, k - 2, out=b)
        a = np.concatenate((left[whole].repeat(n_whole), left[split]))
        np.maximum(a, prev_opt[j], out=a)
        np.minimum(a, b, out=a)
        best, arg = _row_minima(prev, pre, a, b, j)
        cur[j] = best + pre.const[j]
        o[j + 1] = arg
        lo, hi, mid = lo[split], hi[split], mid[split]
        lo, hi = np.concatenate((lo, mid + 1)), np.concatenate((mid - 1, hi))
        keep = lo <= hi
        lo, hi = lo[keep], hi[keep]


def _tables(p: Problem, num_layers: int) -> tuple[Array, Array]:
    """F[k-1, j] and argmin tables for k = 1..num_layers.

    The hull settles more rows as k grows (blocks get shorter, so fewer reach past the padding limit).
    After a layer where it did not pay, the D&C alone solves the next 1, 2, 4, ... layers before the
    hull is tried again, so inputs it never suits lose only a few attempts.
    """
    m = len(p.sizes)
    pre = _Prefix.of(p)
    f = np.full((num_layers, m), np.inf)
    opt = np.full((num_layers, m), -1, dtype=np.int64)
    f[0] = pre.block_cost(np.full(m, -1), np.arange(m)) + pre.kappa
    backoff, skip = 1, 0
    for k in range(2, num_layers + 1):
        layer = None
        if skip:
            skip -= 1
        else:
            layer = _hull_layer(f[k - 2], opt[k - 2], pre, k)
            backoff, skip = (1, 0) if layer is not None else (2 * backoff, backoff)
        f[k - 1], opt[k - 1] = layer or _dc_layer(f[k - 2], opt[k - 2], pre, k)
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

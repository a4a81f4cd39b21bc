"""Trace-driven simulator: replays a `num_tokens` trace against measured per-bucket costs.

`SimRuntime` speaks the admin API contract (the same `RuntimeAPI` the HTTP client provides), so the
real `Tuner` runs against it unchanged, on a simulated clock. A trace is a list of intervals, each a
dict num_tokens -> forwards. The runtime rules it reproduces: smallest bucket >= num_tokens, eager when
above the largest bucket (`too_many_tokens`) or when padding would exceed `max_padding_ratio`
(`padding_ratio`), capture time charged for every newly captured bucket, capture fails (rolled back)
when the modelled graph memory exceeds the GPU's free memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphpilot.runtime.profile import BucketStats, GraphProfile, StatsWindow, bucket_for
from graphpilot.sidecar.optimizer import Problem, solve


@dataclass(frozen=True)
class CostTable:
    """Per-size costs: replay and eager seconds at measured sizes (interpolated between), memory model."""

    sizes: tuple[int, ...]
    replay_seconds: tuple[float, ...]
    eager_seconds: tuple[float, ...]
    pool_bytes_per_token: float  # the largest bucket's activations
    bucket_bytes: float  # each bucket's own overhead
    capture_seconds_per_bucket: float  # fixed part of one bucket's capture
    source: str = ""
    capture_replays: float = 5.0  # plus this many replays of the bucket (warm-up, capture, timing)

    def replay(self, n: float) -> float:
        """Seconds of one replay of a bucket of n tokens."""
        return float(np.interp(n, self.sizes, self.replay_seconds))

    def eager(self, n: float) -> float:
        """Seconds of one eager forward of n tokens."""
        return float(np.interp(n, self.sizes, self.eager_seconds))

    def capture(self, n: float) -> float:
        """Seconds to capture one bucket of n tokens."""
        return self.capture_seconds_per_bucket + self.capture_replays * self.replay(n)

    def memory(self, buckets: tuple[int, ...]) -> float:
        """Graph-pool bytes of a bucket set."""
        return self.pool_bytes_per_token * buckets[-1] + self.bucket_bytes * len(buckets)

    @classmethod
    def load(cls, path: Path) -> CostTable:
        """Read a table written by a measuring benchmark (JSON with these field names)."""
        d = json.loads(path.read_text())
        return cls(
            sizes=tuple(int(n) for n in d["sizes"]),
            replay_seconds=tuple(float(x) for x in d["replay_seconds"]),
            eager_seconds=tuple(float(x) for x in d["eager_seconds"]),
            pool_bytes_per_token=float(d["pool_bytes_per_token"]),
            bucket_bytes=float(d["bucket_bytes"]),
            capture_seconds_per_bucket=float(d["capture_seconds_per_bucket"]),
            source=str(d.get("source", path.name)),
            capture_replays=float(d.get("capture_replays", 5.0)),
        )


def h200_table() -> CostTable:
    """Costs of a Qwen3-0.6B-shaped stack on the H200, from the architecture's measured facts.

    Decode step at batch 1: 4.0 ms breakable graph, 22 ms eager (launch-bound: the 18 ms gap is
    per-forward launch time). Above that, compute: 2 * 0.6e9 FLOP per token at about 400 TFLOP/s
    reached is 3 µs per token, on both paths. Graph memory: boundary buffers of 28 layers at
    hidden 1024 in bf16, about 0.23 MB per token of the largest bucket, 2 MB per bucket.
    """
    sizes = (1, 64, 256, 1024, 4096, 16384, 65536)
    replay = tuple(4.0e-3 + 3e-6 * max(n - 64, 0) for n in sizes)
    eager = tuple(22.0e-3 + 3e-6 * max(n - 64, 0) for n in sizes)
    # capture: 40 buckets up to 1,024 tokens took 4.8 s on the 8B shape, 0.12 s a bucket; here
    # 0.08 s fixed + 5 replays (about 0.1 s for small buckets, more for large ones)
    return CostTable(sizes, replay, eager, 0.23e6, 2e6, 0.08, source="architecture facts (H200, 0.6B shape)")


@dataclass
class SimRuntime:
    """A runtime on a simulated clock: serves trace intervals, answers the admin API."""

    costs: CostTable
    buckets: tuple[int, ...]
    max_num_batched_tokens: int = 8192
    graph_memory_limit: float = float("inf")  # a capture above this fails (OOM) and rolls back
    max_padding_ratio: float = 0.5
    slowdown: dict[tuple[int, ...], float] = field(default_factory=dict)  # injected regressions
    mem_fraction_static: float | None = None  # changes only at a restart: a new one is pending
    pending_mem_fraction: float | None = None
    busy_seconds: float = 0.0  # forwards + captures
    tokens: int = 0
    applies: int = 0
    _step: int = 0
    _log: list[tuple[int, StatsWindow]] = field(default_factory=list)  # (last step, counts)

    def serve(self, counts: dict[int, int], **gauges: float) -> float:
        """Run one interval's forwards; returns the seconds they took. `gauges`: KV and queue readings."""
        w = StatsWindow(cursor=0, since=0)
        for name, value in gauges.items():
            setattr(w, name, type(getattr(w, name))(value))
        factor = self.slowdown.get(self.buckets, 1.0)
        for n, c in counts.items():
            b = bucket_for(self.buckets, n)
            reason = _reject_reason(b, n, self.max_padding_ratio)
            if reason is None:
                assert b is not None
                w.replays[b] = w.replays.get(b, 0) + c
                w.graph_tokens += n * c
                w.padded_tokens += (b - n) * c
                w.forward_seconds += c * self.costs.replay(b) * factor
            else:
                w.rejects[reason] = w.rejects.get(reason, 0) + c
                w.eager_tokens += n * c
                w.forward_seconds += c * self.costs.eager(n)
            w.num_tokens[n] = c
        self._step += sum(counts.values())
        self._log.append((self._step, w))
        self.busy_seconds += w.forward_seconds
        self.tokens += sum(n * c for n, c in counts.items())
        return w.forward_seconds

    def restart(self, buckets: tuple[int, ...] | None = None) -> None:
        """A process restart: step numbering and the log start again; a pending fraction takes effect."""
        self._step, self._log = 0, []
        if buckets is not None:
            self.buckets = buckets
        if self.pending_mem_fraction is not None:
            self.mem_fraction_static, self.pending_mem_fraction = self.pending_mem_fraction, None

    async def get_stats(self, cursor: int) -> StatsWindow:
        """Exact counts of the steps after `cursor`."""
        out = StatsWindow(cursor=self._step, since=min(cursor, self._step))
        for last, w in self._log:
            if last > cursor:
                _merge(out, w)
        return out

    async def get_profile(self) -> dict[str, Any]:
        """GET /admin/profile."""
        stats = [
            BucketStats(
                b, int(self.costs.bucket_bytes), self.costs.replay(b), self.costs.capture_seconds_per_bucket
            )
            for b in self.buckets
        ]
        stats[-1].memory_bytes += int(self.costs.pool_bytes_per_token * self.buckets[-1])
        return {
            "buckets": list(self.buckets),
            "mem_fraction_static": self.mem_fraction_static,
            "backend": "cuda",
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "graph_memory_bytes": int(self.costs.memory(self.buckets)),
            "bucket_stats": [s.to_dict() for s in stats],
            "pending_restart": None
            if self.pending_mem_fraction is None
            else {"mem_fraction_static": self.pending_mem_fraction},
        }

    async def put_profile(self, profile: GraphProfile) -> dict[str, Any]:
        """PUT /admin/profile: capture new buckets (charged as busy time), or roll back on OOM."""
        if self.costs.memory(profile.buckets) > self.graph_memory_limit:
            return {"result": "rolled_back", "reason": "capture OOM", "profile": await self.get_profile()}
        if profile.mem_fraction_static not in (None, self.mem_fraction_static):
            self.pending_mem_fraction = profile.mem_fraction_static  # kept for the next start
        new = set(profile.buckets) - set(self.buckets)
        self.busy_seconds += sum(self.costs.capture(b) for b in new)
        self.buckets = profile.buckets
        self.applies += 1
        return {"result": "applied", "reason": "", "profile": await self.get_profile()}

    @property
    def throughput(self) -> float:
        """Tokens per busy second so far."""
        return self.tokens / self.busy_seconds if self.busy_seconds else 0.0


def _reject_reason(bucket: int | None, n: int, max_padding_ratio: float) -> str | None:
    if bucket is None:
        return "too_many_tokens"
    if (bucket - n) / bucket > max_padding_ratio:
        return "padding_ratio"
    return None


def _merge(out: StatsWindow, w: StatsWindow) -> None:
    for attr in ("num_tokens", "replays", "rejects"):
        dst, src = getattr(out, attr), getattr(w, attr)
        for k, v in src.items():
            dst[k] = dst.get(k, 0) + v
    for attr in ("padded_tokens", "graph_tokens", "eager_tokens", "forward_seconds", "generation_tokens",
                 "num_preemptions", "prefix_cache_query_tokens", "prefix_cache_hit_tokens"):  # fmt: skip
        setattr(out, attr, getattr(out, attr) + getattr(w, attr))
    for attr in ("kv_cache_usage_ratio", "num_requests_waiting", "num_requests_running"):
        setattr(out, attr, getattr(w, attr))  # gauges: the latest reading


Trace = list[dict[int, int]]  # one dict num_tokens -> forwards per interval


def run_static(trace: Trace, costs: CostTable, buckets: tuple[int, ...], **runtime: Any) -> SimRuntime:
    """Serve the whole trace with one fixed bucket set."""
    rt = SimRuntime(costs, tuple(buckets), **runtime)
    for counts in trace:
        rt.serve(counts)
    return rt


async def run_tuned(
    trace: Trace, costs: CostTable, buckets: tuple[int, ...], settings: Any, **runtime: Any
) -> Any:
    """Serve the trace while the real Tuner retunes every interval; returns (runtime, tuner)."""
    from .actuator import NullStore
    from .tuner import Tuner

    rt = SimRuntime(costs, tuple(buckets), **runtime)
    now = [0.0]
    tuner = Tuner(settings, rt, NullStore(), clock=lambda: now[0])
    for counts in trace:
        rt.serve(counts)
        now[0] += settings.interval_seconds
        await tuner.tick()
    return rt, tuner


def table_problem(
    costs: CostTable, sizes: np.ndarray, weights: np.ndarray, k: int, budget: float, max_padding_ratio: float
) -> Problem:
    """The optimiser's problem with costs from a cost table, covering the largest size."""
    return Problem(
        sizes=sizes,
        weights=weights,
        graph_seconds=np.array([costs.replay(n) for n in sizes]),
        eager_seconds=np.array([costs.eager(n) for n in sizes]),
        pool_bytes=costs.pool_bytes_per_token * sizes.astype(np.float64),
        bucket_bytes=costs.bucket_bytes,
        max_buckets=k,
        memory_budget=budget,
        min_top_index=len(sizes) - 1,
        max_padding_ratio=max_padding_ratio,
    )


def hindsight_candidates(
    trace: Trace, costs: CostTable, max_buckets: int, budget: float, max_padding_ratio: float = 0.5
) -> list[tuple[int, ...]]:
    """Static bucket sets worth trying in hindsight: the DP optimum of the whole trace for each K' <= K."""
    counts: dict[int, int] = {}
    for interval in trace:
        for n, c in interval.items():
            counts[n] = counts.get(n, 0) + c
    sizes = np.array(sorted(counts), dtype=np.int64)
    weights = np.array([counts[int(n)] for n in sizes], dtype=np.float64)
    out = []
    for k in sorted({1, 2, 4, 8, 16, 24, max_buckets} & set(range(1, max_buckets + 1))):
        problem = table_problem(costs, sizes, weights, k, budget, max_padding_ratio)
        solution = solve(problem)
        if solution is not None:
            out.append(solution.buckets)
    return out

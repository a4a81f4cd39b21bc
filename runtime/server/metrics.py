"""Prometheus metrics on an explicit registry: engine state read at scrape time, latencies observed here.

Names follow the metric contract in ARCHITECTURE.md (prefix graphpilot_, `_total` on counters, base
units). Counters the engine keeps (replays, rejects, tokens) are read from it when scraped; counts
derived from the step log (tokens by path, padding, the num_tokens histogram) are accumulated here by
cursor, so every forward is counted exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from graphpilot.runtime.profile import REJECT_REASONS, StatsWindow
from graphpilot.runtime.server.loop import AsyncEngine, Observer

P = "graphpilot_"
REQUEST_STATUSES = ("stop", "length", "abort", "error", "invalid", "unavailable")
RECAPTURE_RESULTS = ("applied", "rolled_back", "rejected")
NUM_TOKENS_BUCKETS = tuple(float(2**i) for i in range(17))  # 1 .. 65536
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StepTotals:
    """Running totals of the engine's step log since start, read by cursor."""

    def __init__(self) -> None:
        self.cursor = 0
        self.graph_tokens = self.eager_tokens = self.padded_tokens = 0
        self.num_tokens_counts = [0] * len(NUM_TOKENS_BUCKETS)  # per histogram bucket, not cumulative
        self.num_forwards = 0
        self.num_tokens_sum = 0
        self._lock = threading.Lock()

    def update(self, step_log: Any) -> None:
        with self._lock:
            w: StatsWindow = step_log.window(self.cursor)
            if w.since != self.cursor:  # the log restarted: nothing to add to
                return
            self.cursor = w.cursor
            self.graph_tokens += w.graph_tokens
            self.eager_tokens += w.eager_tokens
            self.padded_tokens += w.padded_tokens
            for n, count in w.num_tokens.items():
                self.num_forwards += count
                self.num_tokens_sum += n * count
                slot = next((i for i, le in enumerate(NUM_TOKENS_BUCKETS) if n <= le), None)
                if slot is not None:
                    self.num_tokens_counts[slot] += count

    def histogram(self) -> HistogramMetricFamily:
        with self._lock:
            cumulative, total = [], 0
            for le, count in zip(NUM_TOKENS_BUCKETS, self.num_tokens_counts, strict=True):
                total += count
                cumulative.append((_le(le), total))
            cumulative.append(("+Inf", self.num_forwards))
            return HistogramMetricFamily(P + "forward_num_tokens", "Tokens per forward (before padding).",
                                         buckets=cumulative, sum_value=self.num_tokens_sum)  # fmt: skip


def _le(v: float) -> str:
    return str(int(v)) if v == int(v) else str(v)


class EngineCollector(Collector):
    """Engine state, read when /metrics is scraped."""

    def __init__(self, runtime: AsyncEngine, totals: StepTotals) -> None:
        self.runtime, self.totals = runtime, totals

    def collect(self) -> Iterator[Metric]:
        engine = self.runtime.engine
        if engine is None:
            return
        self.totals.update(engine.step_log)
        runner = engine.runner
        yield _labelled(CounterMetricFamily, "graph_replays_total", "Graph replays per bucket.", "bucket",
                        {str(k): v for k, v in sorted(dict(runner.replays).items())})  # fmt: skip
        rejects = {r: 0 for r in REJECT_REASONS} | dict(runner.rejects)
        yield _labelled(
            CounterMetricFamily, "graph_rejects_total", "Eager forwards per reject reason.", "reason", rejects
        )
        t = self.totals
        tokens = {"graph": t.graph_tokens, "eager": t.eager_tokens}
        yield _labelled(
            CounterMetricFamily, "forward_tokens_total", "Forward tokens by path.", "path", tokens
        )
        yield CounterMetricFamily(
            P + "graph_padded_tokens_total", "Padding tokens replayed.", value=t.padded_tokens
        )
        yield t.histogram()
        recaptures = {r: 0 for r in RECAPTURE_RESULTS} | dict(runner.recaptures)
        yield _labelled(
            CounterMetricFamily,
            "graph_recaptures_total",
            "Bucket-set captures by result.",
            "result",
            recaptures,
        )
        buckets = runner.buckets
        yield _gauge("graph_buckets", "Captured buckets.", len(buckets))
        yield _gauge(
            "graph_max_bucket_tokens", "Largest captured bucket (tokens).", buckets[-1] if buckets else 0
        )
        yield _gauge("graph_memory_bytes", "Graph memory of the captured buckets.", runner.graph_memory_bytes)
        yield _gauge("graph_capture_seconds", "Duration of the last applied capture.", runner.capture_seconds)
        yield _gauge("graph_capturing", "1 while a new bucket set is being captured.", int(runner.capturing))
        pool, sched = engine.kv.pool, engine.scheduler
        yield _gauge("kv_cache_usage_ratio", "Share of KV cache blocks in use.", pool.usage)
        yield _gauge("kv_cache_capacity_tokens", "KV cache capacity in tokens.", pool.capacity_tokens)
        yield _gauge(
            "mem_fraction_static",
            "Memory fraction this process started with.",
            engine.config.mem_fraction_static,
        )
        yield _gauge(
            "mixed_step_tokens",
            "Token budget of a step that also decodes (0: none, max_num_batched_tokens applies).",
            sched.mixed_step_tokens or 0,
        )
        yield _gauge("num_requests_running", "Requests in the running batch.", len(sched.running))
        yield _gauge("num_requests_waiting", "Requests waiting to be scheduled.", len(sched.waiting))
        yield CounterMetricFamily(
            P + "num_preemptions_total", "Requests preempted for KV space.", value=sched.num_preemptions
        )
        yield CounterMetricFamily(
            P + "prompt_tokens_total",
            "Prompt tokens of started requests.",
            value=engine.counters["prompt_tokens"],
        )
        yield CounterMetricFamily(P + "generation_tokens_total", "Generated tokens.", value=engine.counters["generation_tokens"])  # fmt: skip
        pool = engine.kv.pool
        yield CounterMetricFamily(
            P + "prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache at admission.",
            value=pool.query_tokens,
        )
        yield CounterMetricFamily(
            P + "prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache at admission (not computed again).",
            value=pool.hit_tokens,
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, doc, value=value)


def _labelled(cls: Any, name: str, doc: str, label: str, values: Mapping[str, float]) -> Metric:
    family = cls(P + name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


class ServerMetrics(Observer):
    """Request latencies and outcomes, observed by the server; the engine collector next to them."""

    def __init__(self, runtime: AsyncEngine, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.totals = StepTotals()
        self.requests = Counter(P + "requests", "API requests by outcome.", ["status"], registry=registry)
        for status in REQUEST_STATUSES:
            self.requests.labels(status)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time from arrival to the first token.",
                              buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.itl = Histogram(P + "inter_token_latency_seconds", "Time between two tokens of a request.",
                             buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "Time from arrival to the last token.",
                             buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        registry.register(EngineCollector(runtime, self.totals))
        runtime.observer = self

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def finished(self, status: str, seconds: float) -> None:
        self.requests.labels(status).inc()
        if status in ("stop", "length"):
            self.e2e.observe(seconds)

    def refused(self, status: str) -> None:
        """A request answered with an error before it reached the engine (invalid | unavailable)."""
        self.requests.labels(status).inc()

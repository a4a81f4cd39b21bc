"""Bucket runner: picks a bucket per forward, replays it, and captures/retunes bucket sets live.

Backends: `cuda` (breakable CUDA graphs), `eager` (the same segmented, padded path without graphs:
CPU and debugging), `off` (plain eager forward). A new bucket set is captured a few buckets per
engine step into a fresh graph pool while the old set keeps serving, then swapped in; a capture that
fails (out of memory included) discards the new set and keeps the last good one.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from graphpilot.runtime.engine.context import ForwardContext, build_attention_metadata, forward_context
from graphpilot.runtime.engine.kv_cache import NULL_BLOCK
from graphpilot.runtime.graphs.breaks import break_handler
from graphpilot.runtime.graphs.segments import CaptureBreaks, CapturedBucket, EagerBreaks, SharedBuffers
from graphpilot.runtime.profile import BucketStats, ProfileError, bucket_for, validate_buckets

log = logging.getLogger(__name__)


class CaptureError(RuntimeError):
    """A bucket could not be captured (out of memory, or an injected failure in tests)."""


@dataclass
class Route:
    """How one forward ran: replayed `bucket`, or eager for `reason`."""

    num_tokens: int
    bucket: int | None = None
    reason: str | None = None


@dataclass
class ApplyResult:
    result: str  # applied | rolled_back (capture failed) | superseded (a newer request) | rejected
    reason: str
    buckets: tuple[int, ...]


@dataclass
class _Pending:
    buckets: tuple[int, ...]
    todo: list[int]  # largest first
    captured: dict[int, CapturedBucket] = field(default_factory=dict)
    stats: dict[int, BucketStats] = field(default_factory=dict)
    pool: Any = None
    started: float = field(default_factory=time.perf_counter)
    on_done: list[Callable[[ApplyResult], None]] = field(default_factory=list)


class GraphRunner:
    def __init__(
        self,
        model: Any,
        backend: str,
        max_tokens: int,
        max_padding_ratio: float,
        device: torch.device,
        block_size: int = 16,
        paged_group: int | None = None,
    ):
        self.model, self.backend, self.device = model, backend, device
        self.block_size, self.paged_group = block_size, paged_group
        self.max_tokens, self.max_padding_ratio = max_tokens, max_padding_ratio
        self.shared = SharedBuffers(max_tokens, device)
        self.buckets: tuple[int, ...] = ()
        self.graphs: dict[int, CapturedBucket] = {}
        self.bucket_stats: dict[int, BucketStats] = {}
        self.replays: Counter[int] = Counter()
        self.rejects: Counter[str] = Counter()
        self.recaptures: Counter[str] = Counter()
        self.last_apply: ApplyResult | None = None
        self.capture_seconds = 0.0
        self.fail_capture_at: set[int] = set()  # fault injection for tests: buckets whose capture fails
        self.progress: Callable[[int, int, int], None] | None = None  # (done, total, bucket)
        self._pending: _Pending | None = None
        # one capture stream for every capture: cuBLAS keeps a workspace per stream
        self._stream = torch.cuda.Stream() if backend == "cuda" else None
        self.hidden_out = torch.empty(0)

    # ---- profile changes -------------------------------------------------------------------------

    @property
    def capturing(self) -> bool:
        return self._pending is not None

    @property
    def graph_memory_bytes(self) -> int:
        return sum(s.memory_bytes for s in self.bucket_stats.values())

    def request(
        self, buckets: tuple[int, ...] | list[int], on_done: Callable[[ApplyResult], None] | None = None
    ) -> None:
        """Start capturing a new bucket set; it replaces the current one when complete."""
        try:
            new = validate_buckets(list(buckets))
        except ProfileError as e:
            return self._finish_early(ApplyResult("rejected", str(e), self.buckets), on_done)
        if self.backend == "off":
            return self._finish_early(ApplyResult("rejected", "graph backend is off", self.buckets), on_done)
        if new[-1] > self.max_tokens:
            reason = f"bucket {new[-1]} exceeds max_num_batched_tokens ({self.max_tokens})"
            return self._finish_early(ApplyResult("rejected", reason, self.buckets), on_done)
        if self._pending is None and new == self.buckets:
            return self._finish_early(ApplyResult("applied", "unchanged: already captured", new), on_done)
        if self._pending is not None:
            self._abandon("superseded by a newer profile")
        self._pending = _Pending(new, sorted(new, reverse=True), on_done=[on_done] if on_done else [])
        if self.backend == "cuda":
            self._pending.pool = torch.cuda.graph_pool_handle()

    def _finish_early(self, res: ApplyResult, on_done: Callable[[ApplyResult], None] | None) -> None:
        self.last_apply = res
        if on_done:
            on_done(res)

    def advance(self, budget_seconds: float = float("inf")) -> ApplyResult | None:
        """Capture pending buckets until the budget is spent (at least one); swap in when complete."""
        p = self._pending
        if p is None:
            return None
        deadline = time.perf_counter() + budget_seconds
        try:
            while p.todo:
                bucket = p.todo.pop(0)
                p.captured[bucket], p.stats[bucket] = self._capture_one(bucket, p.pool)
                if self.progress:
                    self.progress(len(p.buckets) - len(p.todo), len(p.buckets), bucket)
                if time.perf_counter() >= deadline:
                    return None
        except (CaptureError, torch.OutOfMemoryError, RuntimeError) as e:
            log.warning("capture failed, keeping the last good bucket set: %s", e)
            return self._complete(
                ApplyResult("rolled_back", f"capture failed: {e}", self.buckets), swap=False
            )
        return self._complete(ApplyResult("applied", "captured", p.buckets), swap=True)

    def _complete(self, res: ApplyResult, swap: bool) -> ApplyResult:
        p = self._pending
        assert p is not None
        self._pending = None
        if swap:
            self.buckets, self.graphs, self.bucket_stats = p.buckets, p.captured, p.stats
            self.capture_seconds = time.perf_counter() - p.started
        else:
            p.captured.clear()  # free the half-captured set
        self._release_memory()
        self.recaptures[res.result] += 1
        self.last_apply = res
        for cb in p.on_done:
            cb(res)
        return res

    def _abandon(self, reason: str) -> None:
        self._complete(ApplyResult("superseded", reason, self.buckets), swap=False)

    def _release_memory(self) -> None:
        gc.collect()
        if self.backend == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    # ---- capture -----------------------------------------------------------------------------------

    def _capture_context(self, rows: int) -> ForwardContext:
        # one request whose every position reads and writes the scratch block: real KV is never touched
        pages = [NULL_BLOCK] * -(-rows // self.block_size)
        meta = build_attention_metadata(
            [rows], [rows], [pages], self.block_size, self.device, self.paged_group
        )
        self.shared.slot_mapping[:rows].zero_()  # it still holds the last live step's slots
        meta.slot_mapping = self.shared.slot_mapping[:rows]
        return ForwardContext(num_tokens=rows, attn=meta)

    def _run_eager(self, rows: int) -> torch.Tensor:
        with break_handler(EagerBreaks(self.shared, rows)):
            return self.model.forward_stack(self.shared.input_ids[:rows], self.shared.positions[:rows])

    def _capture_one(self, bucket: int, pool: Any) -> tuple[CapturedBucket, BucketStats]:
        if bucket in self.fail_capture_at:
            raise CaptureError(f"injected capture failure at bucket {bucket}")
        stats = BucketStats(num_tokens=bucket)
        start = time.perf_counter()
        with torch.inference_mode(), forward_context(self._capture_context(bucket)):
            if self.backend != "cuda":  # nothing to capture: one timed run reserves the buffers
                stats.replay_seconds = _time(lambda: self._run_eager(bucket), self.device, repeats=1)
                stats.capture_seconds = time.perf_counter() - start
                return CapturedBucket(bucket), stats
            # warm-up: kernels chosen, shared buffers reserved (never allocate inside a capture)
            self.hidden_out = self.shared.get("hidden", self._run_eager(bucket))
            graph, stats.memory_bytes = self._capture_cuda(bucket, pool)
            stats.replay_seconds = _time(lambda: graph.replay(bucket), self.device)
        stats.capture_seconds = time.perf_counter() - start
        return graph, stats

    def _capture_cuda(self, bucket: int, pool: Any) -> tuple[CapturedBucket, int]:
        # graph memory = device memory the capture takes; cached eager blocks go back first so that
        # neither reading counts them
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free_before = torch.cuda.mem_get_info()[0]
        captured = CapturedBucket(bucket)
        handler = CaptureBreaks(self.shared, pool, captured)
        stream = self._stream
        assert stream is not None
        stream.wait_stream(torch.cuda.current_stream())
        gc.freeze()
        try:
            with torch.cuda.stream(stream), break_handler(handler):
                handler.begin()
                hidden = self.model.forward_stack(
                    self.shared.input_ids[:bucket], self.shared.positions[:bucket]
                )
                self.hidden_out[:bucket].copy_(hidden)
                handler.end()
        except BaseException:
            handler.abort()
            raise
        finally:
            gc.unfreeze()
        del hidden
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return captured, max(0, free_before - torch.cuda.mem_get_info()[0])

    # ---- forward -----------------------------------------------------------------------------------

    def can_run(self, num_tokens: int) -> tuple[int | None, str | None]:
        """The bucket to replay for this many tokens, or the reject reason for eager fallback."""
        if self.backend == "off":
            return None, "disabled"
        if not self.buckets:
            return None, "capturing" if self.capturing else "disabled"
        bucket = bucket_for(self.buckets, num_tokens)
        if bucket is None:
            return None, "too_many_tokens"
        if (bucket - num_tokens) / bucket > self.max_padding_ratio:
            return None, "padding_ratio"
        return bucket, None

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> tuple[torch.Tensor, Route]:
        """Final hidden states [n, hidden] of the live batch, and how they were computed."""
        n = input_ids.shape[0]
        bucket, reason = self.can_run(n)
        route = Route(n, bucket, reason)
        with forward_context(ctx):
            if bucket is None:
                self.rejects[reason or "disabled"] += 1
                return self.model.forward_stack(input_ids, positions), route
            self.replays[bucket] += 1
            self.bucket_stats[bucket].replays += 1
            shared = self.shared
            shared.input_ids[:n].copy_(input_ids)
            shared.positions[:n].copy_(positions)
            shared.slot_mapping[:n].copy_(ctx.attn.slot_mapping[:n])
            if bucket > n:  # padded rows: token 0 at position 0, writing the scratch block
                shared.input_ids[n:bucket].zero_()
                shared.positions[n:bucket].zero_()
                shared.slot_mapping[n:bucket].zero_()
            ctx.attn.slot_mapping = shared.slot_mapping[:bucket]
            if self.backend == "eager":
                return self._run_eager(bucket)[:n], route
            self.graphs[bucket].replay(n)
            return self.hidden_out[:n], route


def _time(fn: Callable[[], Any], device: torch.device, repeats: int = 2) -> float:
    """Mean wall time of fn (synchronised on GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats

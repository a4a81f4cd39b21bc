"""Segmented execution of the layer stack: eager (padded) and CUDA-graph capture/replay.

A bucket of `N` tokens runs the stack on `N` rows. At each `@graph_break` the segmented path runs the
op eagerly on the live rows only (`n <= N`, read from the forward context) and writes its output into
a shared boundary buffer, so padded rows stay finite (their KV writes go to the scratch block: the
runner pads the slot mapping with it). Under capture,
the break also ends the current CUDA graph and opens the next one.

Memory: every tensor that crosses a break is copied into a buffer shared by *all* buckets and layers
(one max-sized buffer per boundary, sliced per bucket); everything else a capture allocates is freed
back to the one graph pool when its capture ends, so the next (smaller) bucket reuses it. Buckets never
replay at the same time, so sharing is safe, and graph memory stays near one bucket's activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from graphpilot.runtime.engine.context import get_forward_context
from graphpilot.runtime.graphs.breaks import writes_out


class SharedBuffers:
    """One max-sized buffer per boundary key; buckets use the first N rows."""

    def __init__(self, max_tokens: int, device: torch.device) -> None:
        self.max_tokens, self.device = max_tokens, device
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}
        self._by_storage: dict[int, torch.Tensor] = {}
        self.input_ids = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self.slot_mapping = torch.zeros(max_tokens, dtype=torch.long, device=device)  # 0: scratch slot

    def get(self, key: str, like: torch.Tensor) -> torch.Tensor:
        return self.get_shaped(key, tuple(like.shape[1:]), like.dtype)

    def get_shaped(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        full_key = (key, shape, dtype)
        buf = self._buffers.get(full_key)
        if buf is None:
            buf = torch.zeros(self.max_tokens, *shape, dtype=dtype, device=self.device)
            self._buffers[full_key] = buf
            self._by_storage[buf.untyped_storage().data_ptr()] = buf
        return buf

    def full_view(self, a: torch.Tensor) -> torch.Tensor | None:
        """The same view as `a` over all max_tokens rows, if `a` is rows 0.. of a shared buffer."""
        base = self._by_storage.get(a.untyped_storage().data_ptr())
        if base is None or a.dim() == 0 or a.storage_offset() >= max(1, a.stride(0)):
            return None
        return base.as_strided((self.max_tokens, *a.shape[1:]), a.stride(), a.storage_offset())

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


def _is_row(a: Any, rows: int) -> bool:
    return isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == rows


@dataclass
class Break:
    """One eager op between two graph segments, reading and writing fixed-address buffers."""

    fn: Callable[..., torch.Tensor]
    args: list[Any]  # shared input buffers (full size) for row tensors, other args as given
    row_args: list[bool]
    out: torch.Tensor  # shared output buffer (full size)
    into_out: bool = False  # the op writes into `out=` itself: no copy
    # per live row count: the arguments' and the output's first n rows (views cost a microsecond
    # each to make, and a step runs a break per layer)
    views: dict[int, tuple[list[Any], torch.Tensor]] = field(default_factory=dict, repr=False)

    def run(self, n: int) -> None:
        got = self.views.get(n)
        if got is None:
            args = [a[:n] if r else a for a, r in zip(self.args, self.row_args, strict=True)]
            got = self.views[n] = (args, self.out[:n])
        args, out = got
        if self.into_out:
            self.fn(*args, out=out)
        else:
            out.copy_(self.fn(*args))


class EagerBreaks:
    """Break handler of the eager backend: live rows through the op, padded rows left finite."""

    def __init__(self, shared: SharedBuffers, rows: int) -> None:
        self.shared, self.rows = shared, rows

    def __call__(self, fn: Callable[..., torch.Tensor], args: tuple[Any, ...]) -> torch.Tensor:
        n = get_forward_context().num_tokens
        for i, a in enumerate(args):
            if _is_row(a, self.rows):
                self.shared.get(f"in{i}", a)  # reserve now: never allocate inside a capture
        out = fn(*[a[:n] if _is_row(a, self.rows) else a for a in args])
        buf = self.shared.get("out", out)
        buf[:n].copy_(out)
        return buf[: self.rows]


@dataclass
class CapturedBucket:
    num_tokens: int
    segments: list[torch.cuda.CUDAGraph] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)

    def replay(self, n: int) -> None:
        for i, graph in enumerate(self.segments):
            graph.replay()
            if i < len(self.breaks):
                self.breaks[i].run(n)


class CaptureBreaks:
    """Break handler while capturing one bucket: close the segment, run the op, open the next."""

    def __init__(self, shared: SharedBuffers, pool: Any, bucket: CapturedBucket) -> None:
        self.shared, self.pool, self.bucket = shared, pool, bucket
        self.rows = bucket.num_tokens
        self.graph: torch.cuda.CUDAGraph | None = None

    def begin(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")

    def end(self) -> None:
        assert self.graph is not None
        self.graph.capture_end()
        self.bucket.segments.append(self.graph)
        self.graph = None

    def stage(self, name: str, rows: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """`break_input` under capture: rows of a shared buffer, which breaks then read in place."""
        return self.shared.get_shaped(f"stage:{name}", shape, dtype)[:rows]

    def abort(self) -> None:
        """End a capture that failed half-way so the stream leaves capture mode."""
        if self.graph is not None:
            with contextlib.suppress(RuntimeError):
                self.graph.capture_end()
            self.graph = None

    def __call__(self, fn: Callable[..., torch.Tensor], args: tuple[Any, ...]) -> torch.Tensor:
        rows = [_is_row(a, self.rows) for a in args]
        bufs = []
        for i, (a, r) in enumerate(zip(args, rows, strict=True)):
            if r:
                buf = self.shared.full_view(a)  # built in a shared buffer already (`break_input`)
                if buf is None:
                    buf = self.shared.get(f"in{i}", a)
                    buf[: self.rows].copy_(a)  # captured: the segment ends by writing its boundary
                bufs.append(buf)
            else:
                bufs.append(a)
        self.end()
        probe = fn(*[b[: self.rows] if r else b for b, r in zip(bufs, rows, strict=True)])
        brk = Break(fn, bufs, rows, self.shared.get("out", probe), writes_out(fn))
        brk.out[: self.rows].copy_(probe)
        self.bucket.breaks.append(brk)
        self.begin()
        return brk.out[: self.rows]

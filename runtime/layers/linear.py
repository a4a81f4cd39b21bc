"""Matrix multiplies of the model: cuBLAS, or the skinny Triton kernel where it measured faster.

`GemmTable.tune` times cuBLAS and a few tile configurations of the skinny kernel
(`runtime/kernels/gemm.py`, `skinny_candidates`) on every distinct weight shape of the model for 1, 2,
4, 8, 16 and 32 rows, each as a CUDA graph of back-to-back calls (no launch overhead) that cycle
through copies of the weight larger than the L2 cache together, as in a forward where every layer
has its own weights, and records where the fastest skinny configuration beats cuBLAS. `linear` then
dispatches on (n, k, bias, rows rounded up to a power of two): the graph of a bucket and the eager
forward of the same rows take the same kernel. Without a tuned table (CPU, tests, `gemm_backend="cublas"`) everything is torch.

An MLP's gate/up multiply is also timed against the skinny kernel's gated form (the activation in
its epilogue, `kernels.gemm`): the pair it replaces, this table's choice for the multiply and then
the activation kernel, is captured and timed the same way. `silu_mul_linear` takes the gated kernel
for the row counts where it measured faster (`GATED_MLP` off: never).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

MAX_ROWS = 32  # the most rows the skinny kernel takes (kernels.gemm.MAX_ROWS)
GATED_MLP = True  # time the gated kernel against the multiply-then-activation pair (False: never use it)


class GemmTable:
    """Which kernel runs `x @ w.T` for each (n, k, bias, rows): the skinny kernel where it measured
    faster than cuBLAS on this GPU, cuBLAS everywhere else. Rows round up to a power of two."""

    def __init__(self) -> None:
        self.skinny: dict[tuple[int, int, bool, int], tuple[int, int, int]] = {}
        self.gated: dict[tuple[int, int, int], tuple[int, int, int]] = {}  # (2n, k, rows): gated tiles
        self.measured: list[dict[str, float | int | bool]] = []
        self.kernel: Callable[..., torch.Tensor] | None = None

    def lookup(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[int, int, int] | None:
        m = x.shape[0]
        if m == 0 or m > MAX_ROWS or not self.skinny:
            return None
        rows = 1 << (m - 1).bit_length()
        return self.skinny.get((weight.shape[0], weight.shape[1], bias is not None, rows))

    def lookup_gated(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int] | None:
        m = x.shape[0]
        if m == 0 or m > MAX_ROWS or not self.gated:
            return None
        return self.gated.get((weight.shape[0], weight.shape[1], 1 << (m - 1).bit_length()))

    @torch.inference_mode()
    def tune(
        self,
        weights: list[tuple[torch.Tensor, torch.Tensor | None]],
        gated: list[torch.Tensor] | None = None,
        reps: int = 10,
    ) -> None:
        """Time cuBLAS and the skinny kernel's candidate tiles on each distinct weight shape of the
        model for 1..MAX_ROWS rows; then, for each distinct shape of the `gated` weights ([gate | up]),
        the gated kernel against the chosen multiply followed by the activation."""
        seen: dict[tuple[int, int, bool], tuple[torch.Tensor, torch.Tensor | None]] = {}
        for w, b in weights:
            seen.setdefault((w.shape[0], w.shape[1], b is not None), (w, b))
        from graphpilot.runtime.kernels.gemm import skinny_candidates, skinny_mm
        from graphpilot.runtime.kernels.launch import num_sms

        self.kernel = skinny_mm
        sms = num_sms(next(iter(seen.values()))[0].device)
        for (n, k, has_bias), (w, b) in seen.items():
            for rows, x, it, calls in _row_sweep(w, reps):
                out = torch.empty(rows, n, dtype=w.dtype, device=w.device)
                cublas = graph_us(lambda x=x, b=b, out=out, it=it: _torch_mm(x, next(it), b, out), calls)
                cfg, ours = _fastest(skinny_mm, skinny_candidates(n, sms), x, it, b, out, calls)
                if cfg is not None and ours < cublas:
                    self.skinny[(n, k, has_bias, rows)] = cfg
                self.measured.append(
                    {"n": n, "k": k, "bias": has_bias, "rows": rows, "cublas_us": round(cublas, 2),
                     "skinny_us": round(ours, 2), "skinny_config": "{}x{}s{}".format(*cfg) if cfg else None}
                )  # fmt: skip
        if GATED_MLP and gated:
            self._tune_gated(gated, reps, sms)
        self.measured.sort(key=lambda m: m["rows"])  # by row count, shapes in model order

    def _tune_gated(self, weights: list[torch.Tensor], reps: int, sms: int) -> None:
        from graphpilot.runtime.kernels.fused import silu_and_mul
        from graphpilot.runtime.kernels.gemm import skinny_candidates, skinny_mm

        gated_mm = functools.partial(skinny_mm, gated=True)
        shapes: dict[tuple[int, int], torch.Tensor] = {}
        for w in weights:
            shapes.setdefault((w.shape[0], w.shape[1]), w)
        for (n2, k), w in shapes.items():
            # the same weight rows per program as the plain kernel's candidates: half as many outputs
            candidates = list(
                dict.fromkeys((max(16, bn // 2), bk, st) for bn, bk, st in skinny_candidates(n2, sms))
            )
            for rows, x, it, calls in _row_sweep(w, reps):
                out = torch.empty(rows, n2 // 2, dtype=w.dtype, device=w.device)
                pair = graph_us(lambda x=x, it=it: silu_and_mul(linear(x, next(it), table=self)), calls)
                cfg, ours = _fastest(gated_mm, candidates, x, it, None, out, calls)
                if cfg is not None and ours < pair:
                    self.gated[(n2, k, rows)] = cfg
                self.measured.append(
                    {"n": n2, "k": k, "bias": False, "rows": rows, "gated": True, "pair_us": round(pair, 2),
                     "gated_us": round(ours, 2), "gated_config": "{}x{}s{}".format(*cfg) if cfg else None}
                )  # fmt: skip


def _row_sweep(w: torch.Tensor, reps: int) -> Iterator[tuple[int, torch.Tensor, Iterator[torch.Tensor], int]]:
    """For 1, 2, 4 .. MAX_ROWS rows: the row count, an input of that many rows, the cycle through
    `w`'s cold copies (made once per weight) and a call count of whole cycles (no copy twice in a row)."""
    ws = cold_copies(w)
    calls = len(ws) * -(-reps // len(ws))
    it = itertools.cycle(ws)
    rows = 1
    while rows <= MAX_ROWS:
        yield rows, torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device), it, calls
        rows *= 2


def cold_copies(w: torch.Tensor) -> list[torch.Tensor]:
    """`w` and enough copies of it that cycling through them reads more than the L2 cache holds, so
    a timed call finds its weight in memory, not in L2 (what a forward's layers each find)."""
    l2 = torch.cuda.get_device_properties(w.device).L2_cache_size if w.is_cuda else 0
    nbytes = w.numel() * w.element_size()
    return [w] + [w.clone() for _ in range(min(31, -(-3 * l2 // (2 * nbytes)) - 1))]


def _fastest(
    kernel: Callable[..., torch.Tensor],
    candidates: list[tuple[int, int, int]],
    x: torch.Tensor,
    w: Iterator[torch.Tensor],
    b: torch.Tensor | None,
    out: torch.Tensor,
    reps: int,
) -> tuple[tuple[int, int, int] | None, float]:
    """Time the skinny kernel with each of `candidates`, a candidate whose tiles do not fit in this
    GPU's shared memory with fewer pipeline stages (then shorter K tiles): the fastest configuration
    that ran and its microseconds ((None, inf) when none fits)."""
    from triton.runtime.errors import OutOfResources

    best, best_us = None, float("inf")
    for block_n, block_k0, stages0 in candidates:
        fallbacks = (
            (block_n, block_k, stages)
            for block_k in (block_k0, block_k0 // 2, block_k0 // 4)
            for stages in range(stages0, 1, -1)
        )
        for tried in fallbacks:  # the first that fits is the candidate's time
            try:
                us = graph_us(lambda tried=tried: kernel(x, next(w), b, out, *tried), reps)
            except OutOfResources:
                continue
            if us < best_us:
                best, best_us = tried, us
            break
    return best, best_us


def _torch_mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    if b is None:
        return torch.mm(x, w.t(), out=out)
    return torch.addmm(b, x, w.t(), out=out)


def graph_us(fn: Callable[[], object], reps: int, iters: int = 5) -> float:
    """Median microseconds per call of `fn`, `reps` calls replayed as one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(1000 * start.elapsed_time(end) / reps)
    return sorted(times)[len(times) // 2]


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    table: GemmTable | None = None,
) -> torch.Tensor:
    """x @ weight.T (+ bias), by the kernel `table` chose for this shape (cuBLAS without a table)."""
    cfg = table.lookup(x, weight, bias) if table is not None else None
    if cfg is not None and table is not None and table.kernel is not None:
        return table.kernel(x, weight, bias, out, *cfg)
    if out is None:
        return F.linear(x, weight, bias)
    return _torch_mm(x, weight, bias, out)


def silu_mul_linear(x: torch.Tensor, weight: torch.Tensor, table: GemmTable | None) -> torch.Tensor | None:
    """silu(x @ gate.T) * (x @ up.T) for weight = [gate | up] in one kernel, where `table` measured
    that faster than the multiply followed by the activation; None where it did not (the caller
    runs the pair)."""
    cfg = table.lookup_gated(x, weight) if table is not None else None
    if cfg is None or table is None or table.kernel is None:
        return None
    return table.kernel(x, weight, None, None, *cfg, gated=True)

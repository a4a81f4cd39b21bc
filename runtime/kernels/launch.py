"""A leaner launch path for Triton kernels called once per layer per step.

`kernel[grid](...)` re-derives every argument's specialisation (dtype, 16-byte alignment, ints equal
to 1 or divisible by 16), hashes it and looks the compiled kernel up on every call: 10-20 us of host
time, paid dozens of times per step between graph segments. `FastKernel` keys the compiled kernel on
the same facts, computed in a few Python operations, and then calls Triton's compiled launcher
directly. The first call for a new key goes through Triton (which compiles) and fills the cache.
Set GRAPHPILOT_FAST_LAUNCH=0 to always use Triton's path.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from triton import knobs

FAST_LAUNCH = os.environ.get("GRAPHPILOT_FAST_LAUNCH", "1") != "0"


def _spec(arg: Any, specialize: bool) -> Any:
    """What Triton specialises a runtime argument on (ints: also whether they fit in 32 bits)."""
    if isinstance(arg, torch.Tensor):
        return (arg.dtype, arg.data_ptr() % 16 == 0)
    if isinstance(arg, bool) or not isinstance(arg, int):
        return type(arg)
    fits32 = -(2**31) <= arg < 2**31
    return (fits32, arg == 1, arg % 16 == 0) if specialize else fits32


class FastKernel:
    """Wraps a `@triton.jit` function whose constexpr parameters all come after its runtime ones."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        params = getattr(fn, "params", None) or getattr(getattr(fn, "fn", None), "params", [])
        self.no_spec = {p.num for p in params if p.do_not_specialize}
        self.constexpr_names = [p.name for p in params if p.is_constexpr]
        self._compiled: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}

    def __call__(self, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
        if not FAST_LAUNCH or not args[0].is_cuda:
            self.fn[grid](*args, **meta)
            return
        key = (
            args[0].device.index,
            tuple(_spec(a, i not in self.no_spec) for i, a in enumerate(args)),
            tuple(sorted(meta.items())),
        )
        hit = self._compiled.get(key)
        if hit is None:
            kernel = self.fn[grid](*args, **meta)
            self._compiled[key] = (kernel, tuple(meta[n] for n in self.constexpr_names))
            return
        kernel, constexprs = hit
        stream = torch.cuda.current_stream(args[0].device).cuda_stream
        grid3 = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
        full = (*args, *constexprs)
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        launch_metadata = kernel.launch_metadata(grid3, stream, *full) if enter is not None else None
        kernel.run(
            *grid3, stream, kernel.function, kernel.packed_metadata, launch_metadata, enter, leave, *full
        )

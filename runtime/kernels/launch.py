"""A leaner launch path for Triton kernels called once per layer per step.

`kernel[grid](...)` re-derives every argument's specialisation (dtype, 16-byte alignment, ints equal
to 1 or divisible by 16), hashes it and looks the compiled kernel up on every call: 10-20 us of host
time, paid dozens of times per step between graph segments. `FastKernel` keys the compiled kernel on
the facts that can change between calls of one call site (pointer alignment, the specialised ints,
the constexprs, the tensors' dtypes), computed with a few cheap operations, and then calls Triton's
compiled launcher directly. The first call for a new key goes through Triton (which compiles) and
fills the cache. (The dtypes matter where one call site sees two: the sampler gets bf16 logits, or
fp32 ones where a row has a bias or a mask; a kernel compiled for one reads the other's bytes wrong.)
`bind` goes one step further for a launch repeated once per layer with only the layer's cache
tensors changing (attention): it resolves everything once and returns a function of those tensors. Both hand the launcher tensors as their device addresses: given a tensor, Triton's
launcher calls its `data_ptr()` and asks the driver whether the address is a device one, about half
a microsecond per pointer, where an int goes straight in (the first call, through Triton, has checked
the call site's tensors; with a launch hook set, as a profiler does, the tensors go as they are). Set
GRAPHPILOT_FAST_LAUNCH=0 to always take Triton's path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from triton import knobs

FAST_LAUNCH = os.environ.get("GRAPHPILOT_FAST_LAUNCH", "1") != "0"
DEPENDENT_LAUNCH = os.environ.get("GRAPHPILOT_PDL", "1") != "0"


class FastKernel:
    """Wraps a `@triton.jit` function whose constexpr parameters all come after its runtime ones."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        params = getattr(fn, "params", None) or getattr(getattr(fn, "fn", None), "params", [])
        self.no_spec = {p.num for p in params if p.do_not_specialize}
        self.constexpr_names = [p.name for p in params if p.is_constexpr]
        self._compiled: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}
        self._tensor_idx: tuple[int, ...] | None = None
        self._int_idx: tuple[int, ...] = ()

    def _key(self, args: tuple[Any, ...], meta: dict[str, Any]) -> tuple[tuple[Any, ...], list[Any]]:
        """(the compiled kernel's key, `args` with every tensor replaced by its device address)."""
        if self._tensor_idx is None:  # argument kinds are fixed per kernel
            self._tensor_idx = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
            self._int_idx = tuple(
                i for i, a in enumerate(args)
                if isinstance(a, int) and not isinstance(a, bool) and i not in self.no_spec
            )  # fmt: skip
        flat = list(args)
        aligned = 0
        dtypes = []
        for i in self._tensor_idx:
            ptr = flat[i] = args[i].data_ptr()
            aligned = (aligned << 1) | (ptr & 15 == 0)
            dtypes.append(args[i].dtype)
        ints = tuple((args[i] == 1, args[i] & 15 == 0, -(2**31) <= args[i] < 2**31) for i in self._int_idx)
        return (args[0].device.index, aligned, tuple(dtypes), ints, *meta.values()), flat

    def __call__(self, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
        if not FAST_LAUNCH or not args[0].is_cuda:
            self.fn[grid](*args, **meta)
            return
        key, flat = self._key(args, meta)
        hit = self._compiled.get(key)
        if hit is None:
            kernel = self.fn[grid](*args, **meta)
            self._compiled[key] = (kernel, tuple(meta[n] for n in self.constexpr_names))
            return
        kernel, constexprs = hit
        stream = torch._C._cuda_getCurrentRawStream(key[0])
        grid3 = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
        enter, leave = _hooks()
        if enter is None:
            launch_metadata, full = None, (*flat, *constexprs)
        else:  # a hook (a profiler) may read the arguments: give it the tensors
            full = (*args, *constexprs)
            launch_metadata = kernel.launch_metadata(grid3, stream, *full)
        kernel.run(
            *grid3, stream, kernel.function, kernel.packed_metadata, launch_metadata, enter, leave, *full
        )

    def bind(
        self, grid: tuple[int, ...], swap: tuple[int, ...], *args: Any, **meta: Any
    ) -> Callable[..., bool] | None:
        """A launcher of this call with the arguments at positions `swap` replaced per call, on the
        current stream; None where there is nothing compiled for it yet (call it once first).
        The launcher returns False, launching nothing, for tensors of other alignment than `args`'."""
        if not FAST_LAUNCH or not args[0].is_cuda or _hooks() != (None, None):
            return None
        key, flat = self._key(args, meta)
        hit = self._compiled.get(key)
        if hit is None:
            return None
        kernel, constexprs = hit
        stream = torch._C._cuda_getCurrentRawStream(key[0])
        grid3 = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
        head = (*grid3, stream, kernel.function, kernel.packed_metadata, None, None, None)
        full = [*flat, *constexprs]
        aligned = [flat[i] & 15 == 0 for i in swap]

        def launch(*tensors: torch.Tensor) -> bool:
            for i, t, a in zip(swap, tensors, aligned, strict=True):
                ptr = t.data_ptr()
                if (ptr & 15 == 0) != a:
                    return False
                full[i] = ptr
            kernel.run(*head, *full)
            return True

        return launch


def _hooks() -> tuple[Any, Any]:
    """Triton's launch enter/exit hooks, None where there are none (an empty hook chain would still
    make every launch build its metadata and call into Python twice)."""
    hooks = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    return tuple(None if h is None or not getattr(h, "calls", True) else h for h in hooks)  # type: ignore[return-value]


_PROPS: dict[int, Any] = {}


def _props(device: torch.device) -> Any:
    """`device`'s properties, cached (kernels consult them on every launch)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _PROPS:
        _PROPS[index] = torch.cuda.get_device_properties(index)
    return _PROPS[index]


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (kernels size their grids by it every step)."""
    if device.type != "cuda":
        return 32  # Triton's CPU interpreter (tests): a small GPU, so both decode attention paths run
    return int(_props(device).multi_processor_count)


def dependent_launch(device: torch.device) -> bool:
    """Whether the per-layer kernels on `device` launch with programmatic dependent launch (PDL,
    Hopper and later; GRAPHPILOT_PDL=0 turns it off). Such a kernel is scheduled while the kernel
    before it in the stream is still finishing, and each of its programs waits (`gdc_wait`, before
    any load or store) for that kernel's writes: the launch latency and the previous kernel's tail
    overlap. That holds inside a captured graph too, where a decode layer is a chain of small kernels.
    Every kernel launched so must call `gdc_wait` in every program, so that waiting on it also waits
    on everything before it."""
    return DEPENDENT_LAUNCH and device.type == "cuda" and _props(device).major >= 9

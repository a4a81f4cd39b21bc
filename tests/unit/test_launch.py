"""The cached Triton launch (`kernels.launch.FastKernel`) on the CPU, with Triton's compile-and-launch
path and the CUDA stream faked: which calls reuse a compiled kernel and which compile another."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from graphpilot.runtime.kernels import launch


class _OnDevice(torch.Tensor):
    """A CPU tensor that says it is on a GPU, so the launch takes its cached path."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


def _on_device(t: torch.Tensor) -> torch.Tensor:
    return torch.Tensor._make_subclass(_OnDevice, t)


class _Compiled:
    def __init__(self, dtype: torch.dtype, ran: list[Any]) -> None:
        self.dtype, self.ran = dtype, ran
        self.function = self.packed_metadata = None

    def run(self, *args: Any) -> None:
        self.ran.append(self.dtype)


class _Jit:
    """Stands in for a `@triton.jit` function: `fn[grid](*args)` compiles (for the first tensor's
    dtype) and launches, and returns the compiled kernel."""

    def __init__(self) -> None:
        self.params: list[Any] = []  # no specialisation flags, no constexprs
        self.compiled: list[torch.dtype] = []
        self.ran: list[Any] = []

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def compile_and_run(*args: Any, **meta: Any) -> _Compiled:
            self.compiled.append(args[0].dtype)
            self.ran.append(args[0].dtype)
            return _Compiled(args[0].dtype, self.ran)

        return compile_and_run


def test_a_cached_launch_is_reused_only_for_the_dtypes_it_was_compiled_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sampler hands one call site bf16 logits, or fp32 ones where a row has a bias or a mask: a
    kernel compiled for bf16 must not launch on fp32 rows (it would read them at bf16 strides)."""
    monkeypatch.setattr(launch, "FAST_LAUNCH", True)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0)
    jit = _Jit()
    kernel = launch.FastKernel(jit)
    bf16 = _on_device(torch.zeros(4, 64, dtype=torch.bfloat16))
    fp32 = _on_device(torch.zeros(4, 64, dtype=torch.float32))
    for logits in (bf16, bf16, fp32, fp32, bf16):
        kernel((4,), logits, 64)
    assert jit.compiled == [torch.bfloat16, torch.float32]  # one compile per dtype
    assert jit.ran == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32, torch.bfloat16]

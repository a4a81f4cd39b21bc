"""Triton kernels for the GPU path; the layers fall back to plain torch ops elsewhere (CPU, tests)."""

from __future__ import annotations

import importlib.util

import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None


def use_triton(x: torch.Tensor) -> bool:
    """True when `x` lives on a CUDA device and Triton is importable."""
    return HAS_TRITON and x.is_cuda

"""RMSNorm, optionally fused with the residual add that precedes it (one Triton kernel on the GPU)."""

from __future__ import annotations

import torch
from torch import nn

from graphpilot.runtime.kernels import HAS_TRITON, use_triton

if HAS_TRITON:
    from graphpilot.runtime.kernels.fused import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32, scale in the input dtype: the same order of rounding as transformers.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # x, residual: [num_tokens, hidden] (q/k norm: [num_tokens, heads, head_dim])
        if use_triton(x) and x.dim() == 2:
            out, new_residual = rms_norm(x, self.weight, self.eps, residual)
            return out if new_residual is None else (out, new_residual)
        if residual is None:
            return self._norm(x)
        residual = x + residual
        return self._norm(residual), residual

"""Paged KV cache: a block pool, per-request block tables, and allocation that cannot leak."""

from __future__ import annotations

import torch

from graphpilot.runtime.engine.request import Request

NULL_BLOCK = 0  # scratch block: graph capture and padded rows write here, never a request


class BlockPool:
    """Fixed-size blocks of `block_size` token slots; block 0 is reserved as scratch."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        assert num_blocks >= 2, "the KV cache needs at least one usable block"
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_blocks = list(range(num_blocks - 1, NULL_BLOCK, -1))  # pop() hands out low ids first

    @property
    def capacity_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / (self.num_blocks - 1)

    def blocks_needed(self, req: Request, num_new_tokens: int) -> int:
        total = req.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(req.block_table))

    def can_allocate(self, req: Request, num_new_tokens: int) -> bool:
        return self.blocks_needed(req, num_new_tokens) <= self.num_free_blocks

    def allocate(self, req: Request, num_new_tokens: int) -> None:
        need = self.blocks_needed(req, num_new_tokens)
        assert need <= self.num_free_blocks, "allocate() without can_allocate()"
        req.block_table.extend(self.free_blocks.pop() for _ in range(need))

    def free(self, req: Request) -> None:
        self.free_blocks.extend(reversed(req.block_table))
        req.block_table = []
        req.num_computed_tokens = 0

    def slots(self, req: Request, num_tokens: int) -> list[int]:
        """Slots of the request's positions [0, num_tokens)."""
        bs = self.block_size
        return [req.block_table[p // bs] * bs + p % bs for p in range(num_tokens)]


class KVCache:
    """Per-layer K and V tensors: [num_blocks * block_size, num_kv_heads, head_dim]."""

    def __init__(
        self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device,
    ) -> None:  # fmt: skip
        shape = (num_blocks * block_size, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.pool = BlockPool(num_blocks, block_size)


def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

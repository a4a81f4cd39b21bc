"""Paged KV cache: a block pool, per-request block tables, and allocation that cannot leak.

With prefix caching, a full block of prompt tokens whose K/V are computed is kept under a key of its
tokens and every token before them (a hash chain over the prompt's blocks). A new request starts
from the longest run of its prompt's blocks found there: it shares those blocks (reference-counted)
and computes only the rest. A block nobody holds stays cached until the pool needs it: unkeyed free
blocks go first, then cached ones, least recently freed first and a request's last blocks before its
first (as vLLM and SGLang keep theirs). At least one prompt token is always computed, since the step
that computes the last one samples the first output token.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

import torch

from graphpilot.runtime.engine.request import Request

NULL_BLOCK = 0  # scratch block: graph capture and padded rows write here, never a request


class BlockPool:
    """Fixed-size blocks of `block_size` token slots; block 0 is reserved as scratch."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False) -> None:
        assert num_blocks >= 2, "the KV cache needs at least one usable block"
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_blocks = list(range(num_blocks - 1, NULL_BLOCK, -1))  # pop() hands out low ids first
        self.prefix_caching = prefix_caching
        self.refs = [0] * num_blocks  # requests holding each block
        self.cached: dict[bytes, int] = {}  # prefix key -> block holding those tokens' K/V
        self.key_of: dict[int, bytes] = {}  # the reverse
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody holds, LRU first
        self.query_tokens = 0  # prompt tokens looked up, and found, at admission
        self.hit_tokens = 0

    @property
    def capacity_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks) + len(self.evictable)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / (self.num_blocks - 1)

    def blocks_needed(self, req: Request, num_new_tokens: int) -> int:
        total = req.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(req.block_table))

    def can_allocate(self, req: Request, num_new_tokens: int, hits: list[int] | None = None) -> bool:
        """Room for `num_new_tokens` more tokens, after the cached blocks `hits` (`prefix_hits`) if given."""
        if not hits:
            return self.blocks_needed(req, num_new_tokens) <= self.num_free_blocks
        total = len(hits) * self.block_size + num_new_tokens
        taken = sum(1 for b in hits if self.refs[b] == 0)  # leave the free pool when shared again
        return -(-total // self.block_size) - len(hits) <= self.num_free_blocks - taken

    def allocate(self, req: Request, num_new_tokens: int) -> None:
        need = self.blocks_needed(req, num_new_tokens)
        assert need <= self.num_free_blocks, "allocate() without can_allocate()"
        for _ in range(need):
            block = self.free_blocks.pop() if self.free_blocks else self._evict()
            self.refs[block] = 1
            req.block_table.append(block)

    def _evict(self) -> int:
        block, _ = self.evictable.popitem(last=False)
        del self.cached[self.key_of.pop(block)]
        return block

    def free(self, req: Request) -> None:
        self.cache_computed(req)  # what it computed stays reusable (stopped, aborted or preempted)
        plain = []
        for block in reversed(req.block_table):  # a request's last blocks are evicted first
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.key_of:
                    self.evictable[block] = None
                else:
                    plain.append(block)
        self.free_blocks.extend(plain)
        req.block_table = []
        req.num_computed_tokens = 0
        req.num_cached_blocks = 0

    # ---- prefix caching ------------------------------------------------------------------------------

    def shareable_blocks(self, req: Request) -> int:
        """How many of a request's first prompt blocks it may take from the cache: full blocks short
        of its last token (whose step samples), none when it asks for prompt logprobs (every prompt
        position is then computed)."""
        if req.params.prompt_logprobs is not None:
            return 0
        return min(req.num_tokens - 1, req.num_prompt_tokens) // self.block_size

    def prefix_hits(self, req: Request) -> list[int]:
        """Cached blocks holding the longest run of a waiting request's shareable blocks; [] without
        prefix caching or for a request that holds blocks."""
        if not self.prefix_caching or req.block_table:
            return []
        hits = []
        for key in prefix_keys(req, self.block_size, self.shareable_blocks(req)):
            block = self.cached.get(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def share(self, req: Request, hits: list[int]) -> None:
        """Start a waiting request from its cached blocks `hits` (`prefix_hits`, then `can_allocate`)."""
        if self.prefix_caching:
            self.query_tokens += req.num_prompt_tokens
            self.hit_tokens += len(hits) * self.block_size
        for block in hits:
            if self.refs[block] == 0:
                del self.evictable[block]
            self.refs[block] += 1
        req.block_table = list(hits)
        req.num_cached_blocks = len(hits)
        req.num_computed_tokens = len(hits) * self.block_size

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix: blocks nobody holds become plain free blocks."""
        self.free_blocks.extend(self.evictable)
        self.evictable.clear()
        self.cached.clear()
        self.key_of.clear()

    def cache_computed(self, req: Request) -> bool:
        """Key the request's full prompt blocks whose K/V earlier steps computed (a block whose key
        another block holds already stays unkeyed, and is freed as a plain block); True once all
        its full prompt blocks are done."""
        if not self.prefix_caching:
            return True
        full = req.num_prompt_tokens // self.block_size
        count = min(req.num_computed_tokens // self.block_size, full)
        if count <= req.num_cached_blocks:
            return req.num_cached_blocks >= full
        keys = prefix_keys(req, self.block_size, count)
        for i in range(req.num_cached_blocks, count):
            block = req.block_table[i]
            if keys[i] not in self.cached and block not in self.key_of:
                self.cached[keys[i]] = block
                self.key_of[block] = keys[i]
        req.num_cached_blocks = count
        return count >= full

    def slots(self, req: Request, num_tokens: int) -> list[int]:
        """Slots of the request's positions [0, num_tokens)."""
        bs = self.block_size
        return [req.block_table[p // bs] * bs + p % bs for p in range(num_tokens)]


def prefix_keys(req: Request, block_size: int, count: int) -> list[bytes]:
    """Keys of the request's first `count` prompt blocks: each a digest of the block's tokens and the
    key before it, so equal keys mean equal prefixes (kept on the request, made once)."""
    keys = req.prefix_keys
    while len(keys) < count:
        i = len(keys)
        tokens = array("q", req.prompt_token_ids[i * block_size : (i + 1) * block_size]).tobytes()
        keys.append(hashlib.blake2b((keys[-1] if keys else b"") + tokens, digest_size=16).digest())
    return keys[:count]


class KVCache:
    """Per-layer K and V tensors: [num_blocks * block_size, num_kv_heads, head_dim]."""

    def __init__(
        self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device, prefix_caching: bool = False,
    ) -> None:  # fmt: skip
        shape = (num_blocks * block_size, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.pool = BlockPool(num_blocks, block_size, prefix_caching)


def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

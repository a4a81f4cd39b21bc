"""KV pool accounting: no interleaving of arrive/step/finish/abort/preempt leaks a block."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from graphpilot.runtime.engine.kv_cache import BlockPool, prefix_keys
from graphpilot.runtime.engine.request import Request, SamplingParams, Status
from graphpilot.runtime.engine.scheduler import Scheduler

ops = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.integers(1, 90)),
        st.tuples(st.just("step"), st.integers(0, 0)),
        st.tuples(st.just("finish"), st.integers(0, 50)),
        st.tuples(st.just("abort"), st.integers(0, 50)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=ops,
    num_blocks=st.integers(4, 24),
    budget=st.integers(1, 64),
    mixed=st.one_of(st.none(), st.integers(1, 64)),
    prefix_caching=st.booleans(),
)
def test_random_interleavings_leak_no_blocks(
    ops: list[tuple[str, int]], num_blocks: int, budget: int, mixed: int | None, prefix_caching: bool
) -> None:
    # every prompt is 0, 1, 2, ...: with prefix caching, requests share their first blocks
    pool = BlockPool(num_blocks, block_size=4, prefix_caching=prefix_caching)
    sched = Scheduler(pool, max_num_batched_tokens=budget, max_running_requests=8, mixed_step_tokens=mixed)
    reqs: list[Request] = []
    for op, arg in ops:
        if op == "arrive" and arg <= pool.capacity_tokens - 8:
            reqs.append(Request(list(range(arg)), SamplingParams(max_tokens=8)))
            sched.add(reqs[-1])
        elif op == "step":
            batch = sched.schedule()
            for req, n in zip(batch.requests, batch.num_new_tokens, strict=True) if batch else ():
                req.num_computed_tokens += n
                if req.num_computed_tokens == req.num_tokens:
                    req.output_token_ids.append(1)
        elif op in ("finish", "abort") and reqs:
            sched.finish(reqs[arg % len(reqs)], "stop" if op == "finish" else "abort")
        holders = Counter(b for r in reqs for b in r.block_table)
        assert len(holders) + pool.num_free_blocks == num_blocks - 1  # block 0 is the scratch block
        assert all(pool.refs[b] == n for b, n in holders.items())
        assert all(pool.key_of[b] == k for k, b in pool.cached.items())
        assert all(not r.block_table for r in reqs if r.status is not Status.RUNNING)
    for r in reqs:
        sched.finish(r, "abort")
    assert pool.num_free_blocks == num_blocks - 1
    assert not sched.has_unfinished()


def _compute(pool: BlockPool, req: Request) -> None:
    """Admit a waiting request from its cached prefix and compute its whole prompt."""
    hits = pool.prefix_hits(req)
    n = req.num_tokens - len(hits) * pool.block_size
    assert pool.can_allocate(req, n, hits)
    pool.share(req, hits)
    pool.allocate(req, n)
    req.num_computed_tokens += n


def test_a_repeated_prompt_starts_from_its_cached_blocks_and_computes_its_last_token() -> None:
    pool = BlockPool(num_blocks=16, block_size=4, prefix_caching=True)
    a = Request(list(range(40)), SamplingParams())
    _compute(pool, a)
    pool.free(a)  # its 10 full prompt blocks stay cached, held by nobody
    assert pool.num_free_blocks == 15 and len(pool.cached) == 10
    b = Request(list(range(40)), SamplingParams())
    hits = pool.prefix_hits(b)
    assert len(hits) == 9  # not the last block: the step that computes token 39 samples the first output
    _compute(pool, b)
    assert b.block_table[:9] == hits and pool.hit_tokens == 36 and pool.query_tokens == 80
    c = Request([*range(20), 99, *range(21, 40)], SamplingParams())  # differs at token 20 (block 5)
    assert pool.prefix_hits(c) == b.block_table[:5]
    pool.reset_prefix_cache()
    assert pool.prefix_hits(c) == [] and pool.num_free_blocks == 15 - len(b.block_table)
    pool.free(b)
    assert pool.num_free_blocks == 15


def test_cached_blocks_are_evicted_least_recently_freed_and_last_blocks_first() -> None:
    pool = BlockPool(num_blocks=9, block_size=4, prefix_caching=True)
    old, new = Request(list(range(16)), SamplingParams()), Request(list(range(100, 116)), SamplingParams())
    for req in (old, new):
        _compute(pool, req)
        pool.free(req)
    assert pool.num_free_blocks == 8 and len(pool.cached) == 8
    big = Request(list(range(200, 210)), SamplingParams())  # 3 blocks: all from the cache
    _compute(pool, big)
    assert len(pool.prefix_hits(Request(list(range(17)), SamplingParams()))) == 1  # old kept its first block
    assert len(pool.prefix_hits(Request(list(range(100, 117)), SamplingParams()))) == 4  # new kept all four


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=24),
    seed=st.integers(0, 2**16),
    num_blocks=st.integers(6, 30),
)
def test_shared_prefixes_under_preemption_and_aborts_stay_consistent(
    lengths: list[int], seed: int, num_blocks: int
) -> None:
    """Prompts 0, 1, 2, ... of random lengths arrive while others run, finish or abort: a keyed block
    is only ever held where its key is the holder's own prefix, and nothing leaks."""
    rng = random.Random(seed)
    pool = BlockPool(num_blocks, block_size=4, prefix_caching=True)
    sched = Scheduler(pool, max_num_batched_tokens=16, max_running_requests=6)
    reqs: list[Request] = []

    def step() -> None:
        batch = sched.schedule()
        for req, n in zip(batch.requests, batch.num_new_tokens, strict=True) if batch else ():
            req.num_computed_tokens += n
            if req.num_computed_tokens == req.num_tokens:
                req.output_token_ids.append(7)
                if req.at_max_tokens:
                    sched.finish(req, "length")
        for r in reqs:
            keys = prefix_keys(r, pool.block_size, r.num_cached_blocks)
            for i in range(r.num_cached_blocks):
                assert pool.key_of.get(r.block_table[i], keys[i]) == keys[i]
        holders = Counter(b for r in reqs for b in r.block_table)
        assert len(holders) + pool.num_free_blocks == num_blocks - 1
        assert all(pool.refs[b] == n for b, n in holders.items())

    for length in lengths:
        length = min(length, pool.capacity_tokens - 6)  # each request fits the pool alone
        reqs.append(Request(list(range(length)), SamplingParams(max_tokens=rng.randint(1, 6))))
        sched.add(reqs[-1])
        for _ in range(rng.randint(0, 3)):
            step()
        if rng.random() < 0.1:
            sched.finish(rng.choice(reqs), "abort")
    for _ in range(400):
        if not sched.has_unfinished():
            break
        step()
    assert not sched.has_unfinished()
    assert pool.num_free_blocks == num_blocks - 1
    assert pool.query_tokens >= pool.hit_tokens

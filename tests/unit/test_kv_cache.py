"""KV pool accounting: no interleaving of arrive/step/finish/abort/preempt leaks a block."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from graphpilot.runtime.engine.kv_cache import BlockPool
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
)
def test_random_interleavings_leak_no_blocks(
    ops: list[tuple[str, int]], num_blocks: int, budget: int, mixed: int | None
) -> None:
    pool = BlockPool(num_blocks, block_size=4)
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
        held = sum(len(r.block_table) for r in reqs)
        assert held + pool.num_free_blocks == num_blocks - 1  # block 0 is the scratch block
        assert all(not r.block_table for r in reqs if r.status is not Status.RUNNING)
    for r in reqs:
        sched.finish(r, "abort")
    assert pool.num_free_blocks == num_blocks - 1
    assert not sched.has_unfinished()

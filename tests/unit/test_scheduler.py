"""Step budgets: decodes are never starved, and a step that decodes takes prefill only up to the knee."""

from __future__ import annotations

import pytest

from graphpilot.runtime.engine.kv_cache import BlockPool
from graphpilot.runtime.engine.request import Request, SamplingParams, Status
from graphpilot.runtime.engine.scheduler import Scheduler
from graphpilot.runtime.profile import MIXED_STEP_MIN_TOKENS, mixed_step_knee

PARAMS = SamplingParams(max_tokens=64)


def run_step(sched: Scheduler) -> dict[str, int]:
    """Schedule one step, mark its tokens computed (a sampled token where a request is complete)."""
    batch = sched.schedule()
    assert batch is not None
    for req, n in zip(batch.requests, batch.num_new_tokens, strict=True):
        req.num_computed_tokens += n
        if req.num_computed_tokens == req.num_tokens:
            req.output_token_ids.append(7)
    return {r.request_id: n for r, n in zip(batch.requests, batch.num_new_tokens, strict=True)}


def decoding(sched: Scheduler, n: int, prompt: int = 5) -> list[Request]:
    reqs = [Request(list(range(prompt)), PARAMS, request_id=f"d{i}") for i in range(n)]
    for r in reqs:
        sched.add(r)
    run_step(sched)  # all prefilled: each now needs one decode token
    return reqs


def test_a_step_with_decodes_takes_prefill_only_up_to_the_budget() -> None:
    sched = Scheduler(BlockPool(64, block_size=16), max_num_batched_tokens=256, max_running_requests=8,
                      mixed_step_tokens=20)  # fmt: skip
    decoding(sched, 4)
    sched.add(Request(list(range(100)), PARAMS, request_id="long"))
    step = run_step(sched)
    assert [step[f"d{i}"] for i in range(4)] == [1, 1, 1, 1]
    assert step["long"] == 16  # 20 - 4 decodes
    # with nothing decoding (a cold start) the whole budget goes to prefill
    cold = Scheduler(BlockPool(64, block_size=16), max_num_batched_tokens=256, max_running_requests=8,
                     mixed_step_tokens=20)  # fmt: skip
    cold.add(Request(list(range(100)), PARAMS, request_id="long"))
    assert run_step(cold) == {"long": 100}


def test_without_a_budget_the_chunk_fills_max_num_batched_tokens() -> None:
    sched = Scheduler(BlockPool(64, block_size=16), max_num_batched_tokens=64, max_running_requests=8)
    decoding(sched, 4)
    sched.add(Request(list(range(100)), PARAMS, request_id="long"))
    assert run_step(sched)["long"] == 60


def test_an_older_prefill_never_takes_the_decode_tokens_behind_it() -> None:
    sched = Scheduler(BlockPool(64, block_size=16), max_num_batched_tokens=10, max_running_requests=8)
    long = Request(list(range(100)), PARAMS, request_id="long")  # admitted first, 10 tokens in
    short = [Request([1, 2], PARAMS, request_id=f"d{i}", output_token_ids=[7]) for i in range(3)]
    for req, computed in ((long, 10), *((r, 2) for r in short)):
        sched.pool.allocate(req, computed)
        req.num_computed_tokens = computed
        req.status = Status.RUNNING
        sched.running.append(req)
    step = run_step(sched)
    assert [step[f"d{i}"] for i in range(3)] == [1, 1, 1]
    assert step["long"] == 7


def test_more_decodes_than_the_budget_still_all_decode() -> None:
    sched = Scheduler(BlockPool(64, block_size=16), max_num_batched_tokens=64, max_running_requests=16,
                      mixed_step_tokens=4)  # fmt: skip
    reqs = decoding(sched, 12)
    sched.add(Request(list(range(30)), PARAMS, request_id="new"))
    step = run_step(sched)
    assert all(step[r.request_id] == 1 for r in reqs)
    assert "new" not in step  # no token left for prefill this step


def test_a_request_with_its_last_token_in_flight_hands_its_slot_on_at_once() -> None:
    """Under async scheduling a request's last token is a placeholder while the next step is
    scheduled: that step admits the waiting request in its slot, with its blocks."""
    sched = Scheduler(BlockPool(4, block_size=16), max_num_batched_tokens=64, max_running_requests=1)
    last = Request(list(range(20)), SamplingParams(max_tokens=3), request_id="last")
    sched.add(last)
    run_step(sched)
    last.output_token_ids += [7, -1]  # its third and last token is in flight
    sched.add(Request(list(range(30)), PARAMS, request_id="next"))
    assert run_step(sched) == {"next": 30}  # two blocks of the three usable: only last's were free
    assert not last.block_table and sched.running[0].request_id == "next"
    sched.finish(last, "length")  # the engine reads the token: nothing left to release
    assert last.finished and sched.pool.num_free_blocks == 1


def test_a_decode_only_step_lists_the_longest_contexts_first() -> None:
    """The attention kernel launches programs in batch order; longest first, a long request never
    starts last. A step with a prefill chunk keeps the running order."""
    sched = Scheduler(BlockPool(64, block_size=16), max_num_batched_tokens=256, max_running_requests=8)
    for i, prompt in enumerate((5, 40, 12, 40, 30)):
        sched.add(Request(list(range(prompt)), PARAMS, request_id=f"r{i}"))
    assert list(run_step(sched)) == ["r0", "r1", "r2", "r3", "r4"]  # prefill: arrival order
    sched.add(Request(list(range(3)), PARAMS, request_id="late"))
    assert list(run_step(sched)) == ["r0", "r1", "r2", "r3", "r4", "late"]  # with chunks: running order
    assert list(run_step(sched)) == [
        "r1",
        "r3",
        "r4",
        "r2",
        "r0",
        "late",
    ]  # decode only: 41, 41, 31, 13, 6, 3
    sched.longest_first = False
    assert list(run_step(sched)) == ["r0", "r1", "r2", "r3", "r4", "late"]


def test_a_decode_only_step_goes_back_and_forth_in_rounds_of_decode_round() -> None:
    """Longest first in the first round of requests, shortest first in the next, and so on: the GPU
    hands each SM a long request's attention program, then a short one's."""
    sched = Scheduler(BlockPool(64, block_size=16), max_num_batched_tokens=512, max_running_requests=8,
                      decode_round=3)  # fmt: skip
    for prompt in (10, 70, 30, 50, 20, 60, 40):
        sched.add(Request(list(range(prompt)), PARAMS, request_id=f"r{prompt}"))
    run_step(sched)  # prefill
    assert list(run_step(sched)) == ["r70", "r60", "r50", "r20", "r30", "r40", "r10"]
    Scheduler.snake_order = False
    try:
        assert list(run_step(sched)) == ["r70", "r60", "r50", "r40", "r30", "r20", "r10"]
    finally:
        Scheduler.snake_order = True


# replay seconds per bucket as measured on a qwen3-8b shape (bench/results/graphs-qwen3-8b-before-window.json)
QWEN3_8B = {1: 4.46, 2: 4.52, 4: 4.57, 8: 4.63, 16: 4.65, 24: 4.75, 32: 4.75, 48: 4.92, 64: 4.94,
            96: 5.30, 128: 5.36, 160: 5.88, 192: 6.35, 256: 6.82, 512: 11.3, 2048: 46.2}  # fmt: skip


def test_knee_is_the_last_bucket_that_costs_about_a_decode_step() -> None:
    assert mixed_step_knee(QWEN3_8B, 2048) == 128  # 5.36 <= 1.25 x 4.65; 160 costs 5.88
    flat = {b: 1.0 for b in (1, 8, 64, 512, 2048)}
    assert mixed_step_knee(flat, 2048) == 2048
    assert mixed_step_knee(flat, 512) == 512  # never above max_num_batched_tokens


def test_knee_stops_at_the_first_expensive_bucket_and_has_a_floor() -> None:
    noisy = {1: 1.0, 32: 1.1, 64: 2.0, 256: 1.0}  # a spuriously cheap large bucket after 64
    assert mixed_step_knee(noisy, 2048) == MIXED_STEP_MIN_TOKENS
    steep = {1: 1.0, 2: 3.0, 4: 5.0}
    assert mixed_step_knee(steep, 2048) == MIXED_STEP_MIN_TOKENS
    assert mixed_step_knee({}, 2048) is None
    assert mixed_step_knee({1: 0.0}, 2048) is None  # nothing measured


@pytest.mark.parametrize("bad", [0, -5])
def test_a_budget_below_one_is_refused(tiny_dir: str, bad: int) -> None:
    from graphpilot.runtime.config import ConfigError, EngineConfig

    with pytest.raises(ConfigError, match="mixed_step_tokens must be >= 1"):
        EngineConfig(model=tiny_dir, mixed_step_tokens=bad)


def test_engine_keeps_outputs_and_caps_steps_that_decode(tiny_dir: str) -> None:
    from helpers import make_engine

    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    ps = [" ".join(["alpha beta gamma"] * (5 + 7 * i)) for i in range(6)]
    plain = make_engine(tiny_dir, graph_backend="eager", max_num_batched_tokens=64)
    assert plain.scheduler.mixed_step_tokens is None  # no measured knee off CUDA graphs: no cap
    capped = make_engine(tiny_dir, graph_backend="eager", max_num_batched_tokens=64, mixed_step_tokens=8)
    reqs = [capped.requests[capped.add_request(p, params)] for p in ps]
    sizes = []
    while capped.has_unfinished():
        decodes = sum(1 for r in capped.scheduler.running if r.num_tokens - r.num_computed_tokens == 1)
        capped.step()
        sizes.append((decodes, capped.step_log.records(capped.step_log.seq - 1)[0].num_tokens))
    assert max(n for d, n in sizes if d == 0) == 64  # a cold step still takes the whole budget
    assert max(n for d, n in sizes if d > 0) == 8
    assert [r.output_token_ids for r in reqs] == [c.token_ids for c in plain.generate(ps, params)]

"""Async scheduling (step N+1 prepared while step N runs) gives exactly what the synchronous engine gives."""

from __future__ import annotations

import pytest
from test_engine import GREEDY, prompts

from graphpilot.runtime.engine.request import SamplingParams
from helpers import make_engine


def _pair(tiny_dir: str, **kw):
    return make_engine(tiny_dir, **kw), make_engine(tiny_dir, async_scheduling=True, **kw)


def _drain(engine) -> list:
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    return outs


@pytest.mark.parametrize("backend", ["off", "eager"])
def test_mixed_prefill_and_decode_batches_match_the_synchronous_engine(tiny_dir: str, backend: str) -> None:
    sync, overlapped = _pair(tiny_dir, graph_backend=backend, max_num_batched_tokens=64)
    ps = prompts(32)
    expected = sync.generate(ps, GREEDY)
    got = overlapped.generate(ps, GREEDY)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert [c.text for c in got] == [c.text for c in expected]
    assert all(t >= 0 for c in got for t in c.token_ids)  # no placeholder ever leaks out
    _drain(overlapped)
    assert overlapped.kv.pool.usage == 0.0


def test_a_finishing_request_hands_its_slot_on_without_an_extra_step(tiny_dir: str) -> None:
    """One slot, three requests: the async engine runs as many forwards as the synchronous one (the
    next request starts in the step after the last token, not a step later)."""
    sync, overlapped = _pair(tiny_dir, graph_backend="off", max_running_requests=1)
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    ps = prompts(3, seed=4)
    expected = sync.generate(ps, params)
    got = overlapped.generate(ps, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert overlapped.step_log.seq == sync.step_log.seq == 3 * 6  # a prefill and 5 decodes each
    assert overlapped.kv.pool.usage == 0.0


def test_decode_steps_back_and_forth_in_rounds_give_the_same_tokens(tiny_dir: str) -> None:
    """The GPU's decode order (longest first, then shortest first in the next round, ...) only
    permutes a step's rows: every request gets the tokens it gets in arrival order."""
    sync, overlapped = _pair(tiny_dir, graph_backend="eager")
    overlapped.scheduler.decode_round = 5
    ps = prompts(16, seed=6)
    assert [c.token_ids for c in overlapped.generate(ps, GREEDY)] == [
        c.token_ids for c in sync.generate(ps, GREEDY)
    ]


def test_preemption_under_async_scheduling_keeps_outputs_and_blocks(tiny_dir: str) -> None:
    sync, overlapped = _pair(tiny_dir, graph_backend="off", max_total_tokens=320, block_size=16)
    ps = prompts(12, seed=3, max_words=30)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    got = overlapped.generate(ps, params)
    assert overlapped.scheduler.num_preemptions > 0
    assert [c.token_ids for c in got] == [c.token_ids for c in sync.generate(ps, params)]
    _drain(overlapped)
    assert overlapped.kv.pool.num_free_blocks == overlapped.kv.pool.num_blocks - 1


def test_stop_strings_eos_and_length_finish_as_in_the_synchronous_engine(tiny_dir: str) -> None:
    sync, overlapped = _pair(tiny_dir, graph_backend="off")
    free = sync.generate(["the model"], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0]
    first = free.token_ids[0]
    sync.eos_token_ids = overlapped.eos_token_ids = {first}
    cases = [
        SamplingParams(max_tokens=10, temperature=0.0, stop=(free.text[3:6],)),
        SamplingParams(max_tokens=5, temperature=0.0),  # EOS at the first token
        SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True),
    ]
    for params in cases:
        a = sync.generate(["the model", "small fast server"], params)
        b = overlapped.generate(["the model", "small fast server"], params)
        assert [(c.token_ids, c.text, c.finish_reason) for c in b] == [
            (c.token_ids, c.text, c.finish_reason) for c in a
        ]


def test_abort_while_a_step_is_in_flight(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off", async_scheduling=True)
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    a = engine.add_request("the model graph token", params)
    b = engine.add_request("small fast server", params)
    engine.step()
    engine.step()  # a's second token is in flight now
    req_a = engine.requests[a]
    assert req_a.output_token_ids[-1] < 0  # its placeholder: the host has not read the token yet
    assert engine.abort(a)
    assert all(t >= 0 for t in req_a.output_token_ids)
    outs = _drain(engine)
    assert {o.request_id for o in outs} == {b}
    assert outs[-1].finished and outs[-1].num_output_tokens == 20
    assert engine.kv.pool.usage == 0.0


def test_seeded_sampling_is_the_same_with_async_scheduling(tiny_dir: str) -> None:
    sync, overlapped = _pair(tiny_dir, graph_backend="off")
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    ps = ["the model graph", *prompts(5, seed=9)]
    assert [c.token_ids for c in overlapped.generate(ps, params)] == [
        c.token_ids for c in sync.generate(ps, params)
    ]


def test_live_retune_under_async_scheduling_keeps_outputs(tiny_dir: str) -> None:
    """A capture waits for the step in flight (captures run between steps), then serving resumes."""
    sync, overlapped = _pair(tiny_dir, graph_backend="eager", graph_buckets=(1, 2, 4, 8, 16, 32, 64))
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    ps = prompts(12, seed=5)
    expected = [c.token_ids for c in sync.generate(ps, params)]
    ids = [overlapped.add_request(p, params) for p in ps]
    outputs: dict[str, list[int]] = {i: [] for i in ids}
    ladders, results = [(4, 16, 64), (1, 2, 3, 5, 8, 64), (1, 2, 4, 8, 16, 32, 64)], []
    while overlapped.has_unfinished():
        if ladders and not overlapped.runner.capturing:
            overlapped.apply_profile(ladders.pop(0), on_done=results.append)
        for o in overlapped.step():
            outputs[o.request_id] += o.new_token_ids
    assert [r.result for r in results] == ["applied"] * 3, [r.reason for r in results]
    assert [outputs[i] for i in ids] == expected

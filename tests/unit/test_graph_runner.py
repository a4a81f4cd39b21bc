"""The breakable graph runner on the CPU (eager backend): the same segmented, padded path as CUDA."""

from __future__ import annotations

import pytest
import torch
from test_engine import GREEDY, prompts

from graphpilot.runtime.engine.kv_cache import NULL_BLOCK
from graphpilot.runtime.engine.request import SamplingParams
from graphpilot.runtime.graphs.breaks import break_handler, graph_break
from helpers import forward_logits, make_engine, new_request

BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def test_graph_break_is_a_plain_call_outside_the_runner() -> None:
    calls = []

    @graph_break
    def op(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    assert torch.equal(op(torch.ones(3)), torch.full((3,), 2.0))
    with break_handler(lambda fn, args: calls.append(fn) or fn(*args) + 1):
        assert torch.equal(op(torch.ones(3)), torch.full((3,), 3.0))
    assert calls == [op.__wrapped__]


@pytest.mark.parametrize("num_tokens", [1, 2, 3, 7, 8, 13, 31, 32, 50])
def test_eager_backend_equals_off_at_every_bucket(tiny_dir: str, num_tokens: int) -> None:
    """The padded, segmented forward gives the unpadded one's logits to fp32 rounding, and the same
    greedy tokens. Not bit for bit: a BLAS may multiply 3 rows with another kernel than the 4 of
    their bucket (MKL's sgemm does on some CPUs), which changes the order of the sums."""
    off = make_engine(tiny_dir, graph_backend="off")
    eager = make_engine(tiny_dir, graph_backend="eager", graph_buckets=BUCKETS)
    ids = torch.randint(
        0, 512, (num_tokens + 3,), generator=torch.Generator().manual_seed(num_tokens)
    ).tolist()
    ra, rb = new_request(), new_request()
    # prefill of num_tokens, then a decode step through the cache
    for chunk in (ids[:num_tokens], ids[num_tokens : num_tokens + 1]):
        a, b = forward_logits(off, ra, chunk), forward_logits(eager, rb, chunk)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        assert torch.equal(b.argmax(-1), a.argmax(-1))
    assert sum(eager.runner.replays.values()) == 2 and not eager.runner.rejects


@pytest.mark.parametrize("num_requests", [1, 2, 8, 32])
def test_batches_of_prefill_and_decode_match_off_with_zero_rejects(tiny_dir: str, num_requests: int) -> None:
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    ps = prompts(num_requests, seed=num_requests, max_words=40)
    off = make_engine(tiny_dir, graph_backend="off", max_num_batched_tokens=64)
    eager = make_engine(tiny_dir, graph_backend="eager", max_num_batched_tokens=64, graph_buckets=BUCKETS)
    assert [c.token_ids for c in eager.generate(ps, params)] == [
        c.token_ids for c in off.generate(ps, params)
    ]
    assert not eager.runner.rejects
    assert sum(eager.runner.replays.values()) > 0
    mixed = eager.step_log.window(0)
    assert mixed.graph_tokens > 0 and mixed.eager_tokens == 0


def test_forward_above_the_largest_bucket_is_rejected_and_still_correct(tiny_dir: str) -> None:
    off = make_engine(tiny_dir, graph_backend="off")
    eager = make_engine(tiny_dir, graph_backend="eager", graph_buckets=(1, 2, 4, 8))
    ids = list(range(10, 40))
    a, b = forward_logits(off, new_request(), ids), forward_logits(eager, new_request(), ids)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert eager.runner.rejects == {"too_many_tokens": 1}


def test_padding_above_the_limit_falls_back_with_its_reason(tiny_dir: str) -> None:
    eager = make_engine(tiny_dir, graph_backend="eager", graph_buckets=(1, 64), graph_max_padding_ratio=0.5)
    forward_logits(eager, new_request(), list(range(5)))  # 5 -> 64 pads 92%
    forward_logits(eager, new_request(), list(range(40)))  # 40 -> 64 pads 37%
    assert eager.runner.rejects == {"padding_ratio": 1}
    assert eager.runner.replays == {64: 1}


def test_off_backend_rejects_as_disabled(tiny_dir: str) -> None:
    off = make_engine(tiny_dir, graph_backend="off")
    off.generate(["the model"], GREEDY)
    assert set(off.runner.rejects) == {"disabled"} and not off.runner.replays


def test_padded_rows_never_write_the_kv_cache(tiny_dir: str) -> None:
    eager = make_engine(tiny_dir, graph_backend="eager", graph_buckets=(16,))
    req = new_request()
    forward_logits(eager, req, list(range(3)))  # 3 real rows padded to 16
    used = set(eager.kv.pool.slots(req, 3))
    k = eager.kv.k[0]
    written = {int(i) for i in (k.abs().sum(dim=(1, 2)) > 0).nonzero().flatten()}
    scratch = set(range(NULL_BLOCK * 16, NULL_BLOCK * 16 + 16))
    assert written - scratch == used


def test_failed_capture_rolls_back_and_generation_continues(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="eager", graph_buckets=BUCKETS)
    expected = [c.token_ids for c in engine.generate(prompts(4), GREEDY)]
    results = []
    engine.runner.fail_capture_at = {8}
    engine.apply_profile((1, 4, 8, 12, 64), on_done=results.append)
    got = [c.token_ids for c in engine.generate(prompts(4), GREEDY)]
    assert results[0].result == "rolled_back" and "bucket 8" in results[0].reason
    assert engine.runner.buckets == BUCKETS
    assert got == expected
    assert engine.runner.recaptures["rolled_back"] == 1


def test_live_retune_between_steps_keeps_outputs_identical(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="eager", graph_buckets=BUCKETS)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    ps = prompts(16, seed=5)
    expected = [c.token_ids for c in engine.generate(ps, params)]
    ids = [engine.add_request(p, params) for p in ps]
    results, outputs = [], {i: [] for i in ids}
    ladders = [(4, 16, 64), (1, 2, 3, 5, 8, 64), (64,), BUCKETS]
    applied_under_load = 0
    while engine.has_unfinished():
        if ladders and not engine.runner.capturing:  # the next profile once the last one landed
            engine.apply_profile(ladders.pop(0), on_done=results.append)
            applied_under_load += 1
        for o in engine.step():
            outputs[o.request_id] += o.new_token_ids
    assert applied_under_load == 4
    assert [r.result for r in results] == ["applied"] * 4, [r.reason for r in results]
    assert [outputs[i] for i in ids] == expected
    assert engine.runner.buckets == BUCKETS


def test_a_newer_profile_supersedes_one_still_capturing(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="eager", graph_buckets=BUCKETS)
    results = []
    engine.apply_profile((2, 64), on_done=results.append)
    engine.apply_profile((4, 64), on_done=results.append)
    engine.generate(prompts(2), GREEDY)
    assert [r.result for r in results] == ["superseded", "applied"]
    assert engine.runner.buckets == (4, 64) and engine.runner.recaptures["rolled_back"] == 0


def test_applying_the_current_set_captures_nothing(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="eager", graph_buckets=BUCKETS)
    results = []
    engine.apply_profile(BUCKETS, on_done=results.append)
    assert results[0].result == "applied" and not engine.runner.capturing
    assert engine.runner.recaptures == {"applied": 1}  # the start-up capture only


@pytest.mark.parametrize(
    ("buckets", "message"),
    [((), "must not be empty"), ((0, 4), "out of range"), ((8, 4096), "exceeds max_num_batched_tokens")],
)
def test_invalid_bucket_sets_are_rejected_and_nothing_changes(tiny_dir: str, buckets, message: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="eager", graph_buckets=BUCKETS)
    results = []
    engine.apply_profile(buckets, on_done=results.append)
    assert results[0].result == "rejected" and message in results[0].reason
    assert engine.runner.buckets == BUCKETS and not engine.runner.capturing


def test_per_bucket_stats_are_measured(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="eager", graph_buckets=BUCKETS)
    engine.generate(prompts(8), GREEDY)
    stats = engine.runner.bucket_stats
    assert sorted(stats) == list(BUCKETS)
    assert all(s.replay_seconds > 0 and s.capture_seconds > 0 for s in stats.values())
    assert sum(s.replays for s in stats.values()) == sum(engine.runner.replays.values())


def test_break_inputs_built_in_shared_buffers_are_read_in_place() -> None:
    """Under capture, `break_input` hands out rows of a shared buffer; a break over a view of it needs
    no copy at the segment's end, and its replay reads the same memory for any live row count."""
    from graphpilot.runtime.graphs.breaks import break_input
    from graphpilot.runtime.graphs.segments import SharedBuffers

    shared = SharedBuffers(max_tokens=8, device=torch.device("cpu"))

    class Staging:  # the capture handler's staging, without a GPU
        def __call__(self, fn, args):
            return fn(*args)

        def stage(self, name, rows, shape, dtype):
            return shared.get_shaped(f"stage:{name}", shape, dtype)[:rows]

    with break_handler(Staging()):
        qkv = break_input("qkv", 3, (6,), torch.float32, torch.device("cpu"))
    assert break_input("qkv", 3, (6,), torch.float32, torch.device("cpu")).data_ptr() != qkv.data_ptr()
    q = qkv[:, :4]
    full = shared.full_view(q)
    assert full is not None and full.shape == (8, 4)
    qkv.copy_(torch.arange(18.0).view(3, 6))
    assert torch.equal(full[:3], q)  # the replay-time view of the first rows is this capture's q
    assert shared.full_view(qkv[1:]) is None  # not rows 0..: must be copied
    assert shared.full_view(torch.zeros(3, 4)) is None  # not a shared buffer: must be copied

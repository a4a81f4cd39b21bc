"""Engine behaviour a user sees: batching never changes greedy outputs, limits, stops, errors."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphpilot.runtime.engine.engine import Engine, RequestError
from graphpilot.runtime.engine.request import SamplingError, SamplingParams
from graphpilot.runtime.models.presets import WORDS
from helpers import make_engine


def prompts(n: int, seed: int = 0, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, max_words))) for _ in range(n)]


def alone(engine: Engine, ps: list[str], params: SamplingParams) -> list[list[int]]:
    return [engine.generate([p], params)[0].token_ids for p in ps]


GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("backend", ["off", "eager"])
def test_32_mixed_prompts_together_equal_each_alone(tiny_dir: str, backend: str) -> None:
    # a small token budget forces chunked prefill and prefill+decode mixed in one forward
    engine = make_engine(tiny_dir, graph_backend=backend, max_num_batched_tokens=64)
    ps = prompts(32)
    together = [c.token_ids for c in engine.generate(ps, GREEDY)]
    assert together == alone(engine, ps, GREEDY)
    assert engine.kv.pool.usage == 0.0


def test_kv_exhaustion_preempts_and_requeues_without_dropping(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off", max_total_tokens=320, block_size=16)
    ps = prompts(12, seed=3, max_words=30)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    together = engine.generate(ps, params)
    assert engine.scheduler.num_preemptions > 0
    assert all(len(c.token_ids) == 40 and c.finish_reason == "length" for c in together)
    assert [c.token_ids for c in together] == alone(engine, ps, params)
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks - 1


def test_max_running_requests_caps_the_batch(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off", max_running_requests=3)
    for p in prompts(8):
        engine.add_request(p, GREEDY)
    peak = 0
    while engine.has_unfinished():
        engine.step()
        peak = max(peak, len(engine.scheduler.running))
    assert peak == 3


def test_stop_string_cuts_the_text(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off")
    free = engine.generate(["the model"], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0]
    stop = free.text[3:6]
    cut = engine.generate(["the model"], SamplingParams(max_tokens=10, temperature=0.0, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]


def test_eos_stops_unless_ignored(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off")
    first = engine.generate(["the model"], SamplingParams(max_tokens=1, temperature=0.0))[0].token_ids[0]
    engine.eos_token_ids = {first}  # make the model's first greedy token the end token
    assert (
        engine.generate(["the model"], SamplingParams(max_tokens=5, temperature=0.0))[0].finish_reason
        == "stop"
    )
    kept = engine.generate(["the model"], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))[0]
    assert len(kept.token_ids) == 5 and kept.finish_reason == "length"


def test_abort_frees_blocks_and_others_continue(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off")
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    a = engine.add_request("the model graph token", params)
    b = engine.add_request("small fast server", params)
    engine.step()
    engine.step()
    assert engine.abort(a)
    assert not engine.abort(a)
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert {o.request_id for o in outs} == {b}
    assert outs[-1].finished and outs[-1].num_output_tokens == 20
    assert engine.kv.pool.usage == 0.0


def test_seeded_sampling_is_reproducible_in_any_batch(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off")
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    solo = engine.generate(["the model graph"], params)[0].token_ids
    crowd = engine.generate(
        ["the model graph", *prompts(7, seed=9)],
        [params] + [SamplingParams(max_tokens=10, temperature=1.0)] * 7,
    )
    assert crowd[0].token_ids == solo


def test_top_k_one_is_greedy(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off")
    greedy = engine.generate(
        ["cache request"], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    )
    topk1 = engine.generate(
        ["cache request"], SamplingParams(max_tokens=8, temperature=1.5, top_k=1, ignore_eos=True)
    )
    assert greedy[0].token_ids == topk1[0].token_ids


def test_a_greedy_request_gets_the_same_tokens_beside_sampled_ones_in_bf16(tiny_dir: str) -> None:
    # an all-greedy batch takes the argmax of the logits in the model's dtype, a batch with a
    # sampled request casts them to fp32 first: the greedy request must not see the difference
    engine = make_engine(tiny_dir, graph_backend="off", dtype="bfloat16")
    prompt = "the model graph cache"
    alone = engine.generate([prompt], GREEDY)[0].token_ids
    beside = engine.generate(
        [prompt, "request"], [GREEDY, SamplingParams(max_tokens=12, temperature=1.0, seed=3)]
    )
    assert beside[0].token_ids == alone
    assert len(alone) == 12


def test_prompt_longer_than_the_context_is_refused(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off", max_model_len=64)
    with pytest.raises(RequestError, match="maximum context length is 64 tokens"):
        engine.add_request(list(range(60)), SamplingParams(max_tokens=8))
    assert not engine.has_unfinished()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"logprobs": 21}, "logprobs must be within 0..20"),
        ({"frequency_penalty": -2.5}, "frequency_penalty must be within -2..2"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_tokens": 4, "min_tokens": 5}, "min_tokens must be within 0..max_tokens"),
        ({"logit_bias": ((3, 101.0),)}, "logit_bias values must be within -100..100"),
    ],
)
def test_invalid_sampling_values_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(SamplingError, match=message):
        SamplingParams(**kwargs)


def test_empty_and_out_of_vocabulary_prompts_are_refused(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="off")
    with pytest.raises(RequestError, match="empty"):
        engine.add_request("", GREEDY)
    with pytest.raises(RequestError, match=r"within 0\.\.511"):
        engine.add_request([5, 100000], GREEDY)


def test_triton_attention_needs_a_gpu(tiny_dir: str) -> None:
    from graphpilot.runtime.config import ConfigError

    with pytest.raises(ConfigError, match="attention_backend triton needs a CUDA GPU"):
        make_engine(tiny_dir, device="cpu", attention_backend="triton")


def test_step_inputs_travel_in_one_copy_with_every_part_16_byte_aligned() -> None:
    """A step's inputs go to the device in one copy. Every part starts on a 16-byte boundary even
    when parts have odd lengths: Triton specialises a kernel on its pointers' alignment, so a
    misaligned part would compile a new kernel variant in the middle of serving."""
    import torch

    from graphpilot.runtime.engine.context import build_step_inputs

    ids = [11, 12, 13, 21, 31, 32]
    inp = build_step_inputs(
        ids, [3, 1, 2], [3, 9, 7], [[4], [5, 6, 7], [8, 9]], 4, torch.device("cpu"), 2, [2, 3, 5]
    )
    a = inp.attn
    parts = [inp.input_ids, inp.positions, a.slot_mapping, inp.sample_rows, a.block_tables,
             a.query_start_loc, a.seq_lens, a.block_req, a.block_q0]  # fmt: skip
    base = inp.input_ids.untyped_storage().data_ptr()
    for part in parts:
        assert part is not None and part.untyped_storage().data_ptr() == base  # one buffer
        assert (part.data_ptr() - base) % 16 == 0
    assert inp.input_ids.tolist() == ids
    assert inp.positions.tolist() == [0, 1, 2, 8, 5, 6]
    assert a.slot_mapping.tolist() == [16, 17, 18, 28, 37, 38]  # page * 4 + position % 4
    assert inp.sample_rows.tolist() == [2, 3, 5]
    assert a.block_tables.tolist() == [[4, 0, 0], [5, 6, 7], [8, 9, 0]]
    assert a.query_start_loc is not None and a.query_start_loc.tolist() == [0, 3, 4, 6]
    assert a.seq_lens is not None and a.seq_lens.tolist() == [3, 9, 7]


def test_decode_step_inputs_put_each_request_at_its_last_position() -> None:
    """A decode-only step (one token per request, the engine's most common step) takes a shorter
    path on the host; its inputs are those of the general rule: request i's one token is row i at
    position context - 1, one attention program per request, every part 16-byte aligned."""
    import torch

    from graphpilot.runtime.engine.context import build_step_inputs

    inp = build_step_inputs(
        [7, 8, 9], [1, 1, 1], [5, 1, 12], [[3, 4], [6], [1, 2, 9]], 4, torch.device("cpu"), 4, [0, 1, 2]
    )
    a = inp.attn
    base = inp.input_ids.untyped_storage().data_ptr()
    parts = [inp.positions, a.slot_mapping, inp.sample_rows, a.block_tables, a.query_start_loc, a.seq_lens,
             a.block_req, a.block_q0]  # fmt: skip
    for part in parts:
        assert part is not None and (part.data_ptr() - base) % 16 == 0
    assert inp.positions.tolist() == [4, 0, 11]
    assert a.slot_mapping.tolist() == [16, 24, 39]  # page * 4 + position % 4
    assert a.query_start_loc is not None and a.query_start_loc.tolist() == [0, 1, 2, 3]
    assert a.seq_lens is not None and a.seq_lens.tolist() == [5, 1, 12]
    assert a.block_req is not None and a.block_req.tolist() == [0, 1, 2]
    assert a.block_q0 is not None and a.block_q0.tolist() == [0, 0, 0]
    assert a.block_q == 1 and a.max_seq_len == 12 and a.query_start == [0, 1, 2]


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_prompts_that_share_a_prefix_compute_it_once_with_the_same_tokens(
    tiny_dir: str, async_scheduling: bool
) -> None:
    shared = " ".join(random.Random(5).choices(WORDS, k=80))
    ps = [f"{shared} {tail}" for tail in ("red blue", "the answer is", "green")]
    cached = make_engine(tiny_dir, graph_backend="eager", async_scheduling=async_scheduling)
    plain = make_engine(tiny_dir, graph_backend="eager", async_scheduling=async_scheduling,
                        enable_prefix_caching=False)  # fmt: skip
    # the first computes the prefix; the next two, queued after it, start from its blocks
    got = cached.generate(ps[:1], GREEDY) + cached.generate(ps[1:], GREEDY)
    assert [c.token_ids for c in got] == [c.token_ids for c in plain.generate(ps, GREEDY)]
    ids = [cached.encode(p) for p in ps]
    bs = cached.kv.pool.block_size
    common = [next(i for i, (a, b) in enumerate(zip(ids[0], x, strict=False)) if a != b) for x in ids[1:]]
    expected = sum(min(c, len(ids[0])) // bs * bs for c in common)
    assert expected >= 2 * 4 * bs  # a prefix of several blocks
    assert cached.kv.pool.hit_tokens == expected
    assert cached.kv.pool.query_tokens == sum(len(x) for x in ids)
    assert plain.kv.pool.hit_tokens == 0
    assert cached.kv.pool.usage == 0.0  # cached blocks nobody holds count as free


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_stop_token_ids_end_the_output_but_not_before_min_tokens(
    tiny_dir: str, async_scheduling: bool
) -> None:
    engine = make_engine(tiny_dir, graph_backend="eager", async_scheduling=async_scheduling)
    # seeded sampling repeats its draws; pick a token that first appears third or later
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=3, ignore_eos=True)
    prompt = "red blue green the answer"
    free = engine.generate([prompt], params)[0].token_ids
    i = next(i for i in range(2, len(free) - 2) if free[i] not in free[:i])
    stop = dataclasses.replace(params, stop_token_ids=(free[i],))
    stopped = engine.generate([prompt], stop)[0]
    assert stopped.token_ids == free[: i + 1] and stopped.finish_reason == "stop"
    late = engine.generate([prompt], dataclasses.replace(stop, min_tokens=i + 2))[0]
    assert free[i] not in late.token_ids[: i + 2]  # never sampled below min_tokens
    assert late.token_ids[:i] == free[:i] and len(late.token_ids) >= i + 2
    assert late.finish_reason == "length" or late.token_ids[-1] == free[i]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    async_scheduling=st.booleans(),
    kv_tokens=st.sampled_from([128, 160, 4096]),
)
def test_every_sampling_feature_together_under_preemption_and_aborts(
    tiny_dir: str, seed: int, async_scheduling: bool, kv_tokens: int
) -> None:
    """Random mixes of greedy, seeded, penalised, logprobs, prompt-logprobs, stop-token and
    min_tokens requests, some sharing a prefix, in a KV cache small enough to preempt, with aborts:
    each greedy or seeded request gets exactly the tokens it gets alone, every list has its length,
    and no block leaks."""
    rng = random.Random(seed)
    engine = make_engine(tiny_dir, graph_backend="eager", async_scheduling=async_scheduling,
                         max_total_tokens=kv_tokens, max_num_batched_tokens=48)  # fmt: skip
    shared = " ".join(rng.choices(WORDS, k=20))
    work = []
    for i in range(10):
        text = (shared + " " if rng.random() < 0.5 else "") + " ".join(
            rng.choices(WORDS, k=rng.randint(1, 12))
        )
        max_tokens = rng.randint(1, 16)
        params = SamplingParams(
            max_tokens=max_tokens, temperature=rng.choice([0.0, 0.9]), seed=i, ignore_eos=True,
            logprobs=rng.choice([None, 0, 3]), prompt_logprobs=rng.choice([None, None, 2]),
            frequency_penalty=rng.choice([0.0, 0.8]), repetition_penalty=rng.choice([1.0, 1.2]),
            stop_token_ids=tuple(rng.sample(range(500), 3)) if rng.random() < 0.3 else (),
            min_tokens=rng.randint(0, max_tokens),
            logit_bias=((rng.randrange(500), rng.choice([-5.0, 5.0])),) if rng.random() < 0.3 else (),
        )  # fmt: skip
        work.append((text, params))
    ids = [engine.add_request(text, params) for text, params in work]
    reqs = [engine.requests[i] for i in ids]
    aborted = set(rng.sample(range(10), 2))
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        if steps == 3:
            for k in aborted:
                engine.abort(ids[k])
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks - 1
    for k, (req, (text, params)) in enumerate(zip(reqs, work, strict=True)):
        if k in aborted and req.finish_reason == "abort":
            continue
        out = req.output_token_ids
        assert params.min_tokens <= len(out) <= params.max_tokens
        assert req.finish_reason == "length" or out[-1] in params.stop_token_ids
        assert params.logprobs is None or [e.token_id for e in req.output_logprobs] == out
        if params.prompt_logprobs is not None:
            assert [e.token_id for e in req.prompt_logprobs] == req.prompt_token_ids[1:]
        alone = make_engine(tiny_dir, graph_backend="eager").generate([text], params)[0]
        assert alone.token_ids == out, f"request {k}"


def test_logit_bias_forces_and_bans_tokens(tiny_dir: str) -> None:
    engine = make_engine(tiny_dir, graph_backend="eager")
    prompt = "red blue green the answer"
    free = engine.generate([prompt], GREEDY)[0].token_ids
    forced = engine.generate([prompt], dataclasses.replace(GREEDY, logit_bias=((7, 100.0),)))[0].token_ids
    assert forced == [7] * len(free)
    banned = engine.generate([prompt], dataclasses.replace(GREEDY, logit_bias=((free[0], -100.0),)))[0]
    assert free[0] not in banned.token_ids
    with pytest.raises(RequestError, match="logit_bias"):
        engine.add_request(prompt, dataclasses.replace(GREEDY, logit_bias=((10**6, 1.0),)))


def test_stats_windows_count_preemptions_and_prefix_hits_once(tiny_dir: str) -> None:
    """The autotuner's reads: each window holds the preemptions and prefix-cache tokens of its own
    steps, not the running totals (which would read as KV pressure forever after one preemption)."""
    engine = make_engine(tiny_dir, graph_backend="off", max_total_tokens=320, block_size=16)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    engine.generate(prompts(12, seed=3, max_words=30), params)
    first = engine.step_log.window(0)
    assert first.num_preemptions == engine.scheduler.num_preemptions > 0
    assert first.prefix_cache_query_tokens == engine.kv.pool.query_tokens
    shared = prompts(1, seed=4, max_words=60)[0]
    engine.generate([shared], params)
    engine.generate([shared], params)  # the repeat finds its prefix
    second = engine.step_log.window(first.cursor)
    assert second.num_preemptions == 0
    assert second.prefix_cache_hit_tokens == engine.kv.pool.hit_tokens - first.prefix_cache_hit_tokens > 0
    assert engine.step_log.window(second.cursor).prefix_cache_hit_tokens == 0  # nothing new since


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_requests_arriving_together_compute_their_shared_prefix_once(
    tiny_dir: str, async_scheduling: bool
) -> None:
    """Four requests behind one 80-word system prompt, queued at once with budget for all: the first
    computes the prefix, the others wait for its blocks and start from them, with the same tokens."""
    system = " ".join(random.Random(6).choices(WORDS, k=80))
    ps = [f"{system} {q}" for q in ("red", "blue green", "the answer is", "small")]
    cached = make_engine(tiny_dir, graph_backend="eager", async_scheduling=async_scheduling,
                         max_num_batched_tokens=2048)  # fmt: skip
    got = cached.generate(ps, GREEDY)
    plain = make_engine(tiny_dir, graph_backend="eager", enable_prefix_caching=False)
    assert [c.token_ids for c in got] == [c.token_ids for c in plain.generate(ps, GREEDY)]
    ids = [cached.encode(p) for p in ps]
    bs = cached.kv.pool.block_size
    common = min(next(i for i, (a, b) in enumerate(zip(ids[0], x, strict=False)) if a != b) for x in ids[1:])
    assert common >= 4 * bs
    assert cached.kv.pool.hit_tokens >= 3 * (common // bs) * bs  # each of the three after the first

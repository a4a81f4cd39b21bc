"""The official openai client against a real server: completions and chat, streaming and not."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import openai
import pytest

PROMPTS = [f"{a} + {b} =" for a, b in [(1, 2), (17, 25), (300, 4), (9, 9)]] + [
    "hello world", "the graph replay of a bucket", "what is the answer", "red blue green",
]  # fmt: skip


def client(rt, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=rt.openai_url, api_key="unused", max_retries=0, timeout=120, **kw)


def aclient(rt) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=rt.openai_url, api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(tiny_runtime):
    models = client(tiny_runtime).models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_completion_and_usage(tiny_runtime):
    c = client(tiny_runtime).completions.create(
        model="tiny", prompt="hello world", max_tokens=6, temperature=0
    )
    assert c.object == "text_completion"
    assert c.choices[0].finish_reason == "length"
    assert c.choices[0].text
    assert c.usage.completion_tokens == 6
    assert c.usage.prompt_tokens > 0
    assert c.usage.total_tokens == c.usage.prompt_tokens + 6


def test_streamed_completion_equals_the_whole_one(tiny_runtime):
    api = client(tiny_runtime)
    whole = api.completions.create(model="tiny", prompt="red blue green", max_tokens=12, temperature=0)
    chunks = list(api.completions.create(model="tiny", prompt="red blue green", max_tokens=12, temperature=0,
                                         stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_list_of_prompts_gets_one_choice_each(tiny_runtime):
    api = client(tiny_runtime)
    both = api.completions.create(model="tiny", prompt=PROMPTS[:2], max_tokens=5, temperature=0)
    one = [api.completions.create(model="tiny", prompt=p, max_tokens=5, temperature=0) for p in PROMPTS[:2]]
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [o.choices[0].text for o in one]
    assert both.usage.completion_tokens == 10


def test_chat_streaming_and_not(tiny_runtime):
    api = client(tiny_runtime)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is the answer"}]
    whole = api.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens <= 10
    chunks = list(
        api.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_seeded_sampling_is_reproducible(tiny_runtime):
    api = client(tiny_runtime)
    kw = {"model": "tiny", "prompt": "hello", "max_tokens": 8, "temperature": 1.0, "seed": 7}
    assert api.completions.create(**kw).choices[0].text == api.completions.create(**kw).choices[0].text


def test_32_concurrent_clients_get_their_greedy_results(tiny_runtime):
    api = client(tiny_runtime)
    expected = {p: api.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0).choices[0].text
                for p in PROMPTS}  # fmt: skip
    chat_msgs = [{"role": "user", "content": "hello world"}]
    chat_expected = api.chat.completions.create(
        model="tiny", messages=chat_msgs, max_tokens=10, temperature=0
    )

    async def one(i: int) -> tuple[str, str]:
        c, p = aclient(tiny_runtime), PROMPTS[i % len(PROMPTS)]
        kind = i % 4
        if kind == 0:
            r = await c.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0)
            return r.choices[0].text, expected[p]
        if kind == 1:
            stream = await c.completions.create(
                model="tiny", prompt=p, max_tokens=10, temperature=0, stream=True
            )
            return "".join([ch.choices[0].text async for ch in stream]), expected[p]
        if kind == 2:
            r = await c.chat.completions.create(
                model="tiny", messages=chat_msgs, max_tokens=10, temperature=0
            )
            return r.choices[0].message.content, chat_expected.choices[0].message.content
        stream = await c.chat.completions.create(model="tiny", messages=chat_msgs, max_tokens=10, temperature=0,
                                                 stream=True)  # fmt: skip
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        return text, chat_expected.choices[0].message.content

    async def run() -> list[tuple[str, str]]:
        return await asyncio.gather(*(one(i) for i in range(32)))

    results = asyncio.run(run())
    assert len(results) == 32
    for got, want in results:
        assert got == want


def _metric(rt, name: str) -> float:
    for line in httpx.get(rt.base_url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} is not in /metrics")


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_the_request(tiny_runtime, stream):
    aborted = _metric(tiny_runtime, 'graphpilot_requests_total{status="abort"}')
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 1500, "ignore_eos": True, "stream": stream}
    with httpx.Client(timeout=120) as http:
        if stream:
            with http.stream("POST", tiny_runtime.openai_url + "/completions", json=body) as r:
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
        else:
            with contextlib.suppress(httpx.ReadTimeout):  # the client gives up long before 1500 tokens
                http.post(tiny_runtime.openai_url + "/completions", json=body, timeout=1.0)
    # the server notices, aborts the request and frees its slot: nothing keeps running
    deadline = time.monotonic() + 60
    while _metric(tiny_runtime, 'graphpilot_requests_total{status="abort"}') < aborted + 1:
        assert time.monotonic() < deadline, "the abandoned request was never aborted"
        time.sleep(0.1)
    while _metric(tiny_runtime, "graphpilot_num_requests_running") > 0:
        assert time.monotonic() < deadline, "an aborted request kept running"
        time.sleep(0.1)


def test_async_scheduling_serves_the_same_greedy_results(tiny_runtime, runtime_factory):
    """`--async-scheduling` (step N+1 prepared while step N runs): the same text for every client."""
    rt = runtime_factory("--async-scheduling")
    sync_api = client(tiny_runtime)
    expected = {p: sync_api.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0).choices[0].text
                for p in PROMPTS}  # fmt: skip

    async def one(i: int) -> tuple[str, str]:
        c, p = aclient(rt), PROMPTS[i % len(PROMPTS)]
        if i % 2:
            stream = await c.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0,
                                                stream=True)  # fmt: skip
            return "".join([ch.choices[0].text async for ch in stream]), expected[p]
        r = await c.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0)
        return r.choices[0].text, expected[p]

    async def run() -> list[tuple[str, str]]:
        return await asyncio.gather(*(one(i) for i in range(16)))

    for got, want in asyncio.run(run()):
        assert got == want
    assert rt.stop() == 0


def test_completion_logprobs_streamed_and_not(tiny_runtime):
    api = client(tiny_runtime)
    kw = dict(model="tiny", prompt="red blue green", max_tokens=10, temperature=0, logprobs=2)
    whole = api.completions.create(**kw).choices[0]
    lp = whole.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 10
    for i, (tok, value, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True)):
        assert value <= 0 and top[tok] == value
        assert value == max(top.values())  # greedy: the sampled token is the most likely one
        assert 1 <= len(top) <= 3  # the 2 most likely, and the sampled one (here among them)
        assert lp.text_offset[i] == sum(len(t) for t in lp.tokens[:i])
    chunks = list(api.completions.create(**kw, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp.tokens
    assert [v for s in streamed for v in s.token_logprobs] == lp.token_logprobs
    assert [o for s in streamed for o in s.text_offset] == lp.text_offset
    plain = api.completions.create(model="tiny", prompt="red blue green", max_tokens=10, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == whole.text


def test_chat_logprobs_bytes_spell_the_message(tiny_runtime):
    """Each token's UTF-8 bytes, joined, are the message (a token may hold part of a character)."""
    api = client(tiny_runtime)
    msgs = [{"role": "user", "content": "wörld € 300 + 4 ="}]
    c = api.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                    logprobs=True, top_logprobs=4, extra_body={"ignore_eos": True})  # fmt: skip
    content = c.choices[0].logprobs.content
    assert len(content) == 12
    assert (
        b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
        == c.choices[0].message.content
    )
    for e in content:
        assert len(e.top_logprobs) == 4
        assert e.logprob == e.top_logprobs[0].logprob  # greedy
        assert [t.logprob for t in e.top_logprobs] == sorted(
            (t.logprob for t in e.top_logprobs), reverse=True
        )
    bare = api.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=3, temperature=0, logprobs=True
    )
    assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)


def test_n_choices_per_prompt(tiny_runtime):
    """n=3 over two prompts: choice i * 3 + j is prompt i's j-th, each sampled on its own (a seeded
    call repeats), and the prompt tokens count once per prompt."""
    api = client(tiny_runtime)
    kw = dict(model="tiny", prompt=["red blue green", "17 + 25 ="], max_tokens=8, temperature=1.0, seed=7)
    c = api.completions.create(**kw, n=3)
    assert [ch.index for ch in c.choices] == list(range(6))
    texts = [ch.text for ch in c.choices]
    assert len(set(texts[:3])) > 1 and len(set(texts[3:])) > 1  # different draws, not copies
    assert [ch.text for ch in api.completions.create(**kw, n=3).choices] == texts
    single = api.completions.create(**kw)  # n=1: the seed's own draw is every prompt's first choice
    assert [ch.text for ch in single.choices] == [texts[0], texts[3]]
    assert c.usage.prompt_tokens == single.usage.prompt_tokens
    assert c.usage.completion_tokens == 6 * 8
    greedy = api.completions.create(model="tiny", prompt="hello world", max_tokens=6, temperature=0, n=2)
    assert greedy.choices[0].text == greedy.choices[1].text


def test_chat_n_choices_streamed_equal_the_whole(tiny_runtime):
    api = client(tiny_runtime)
    kw = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=1.0,
              seed=11, n=2)  # fmt: skip
    whole = api.chat.completions.create(**kw)
    parts = {0: "", 1: ""}
    for chunk in api.chat.completions.create(**kw, stream=True):
        for ch in chunk.choices:
            parts[ch.index] += ch.delta.content or ""
    assert parts == {ch.index: ch.message.content for ch in whole.choices}


def test_penalties_change_a_repetitive_greedy_answer(tiny_runtime):
    api = client(tiny_runtime)
    kw = dict(model="tiny", prompt="hello wörld", max_tokens=12, temperature=0)
    plain = api.completions.create(**kw).choices[0].text
    penalised = api.completions.create(**kw, frequency_penalty=1.5, extra_body={"repetition_penalty": 1.5})
    assert penalised.choices[0].text != plain
    assert api.completions.create(**kw, presence_penalty=0.0).choices[0].text == plain  # 0: no change


def test_echo_scores_the_prompt_as_lm_eval_asks(tiny_runtime):
    """echo + logprobs + max_tokens 1 (how evaluation harnesses score a continuation): the prompt's
    text and tokens first, the first without a log-probability; the stream says the same."""
    api = client(tiny_runtime)
    prompt = "red blue green the answer is"
    kw = dict(model="tiny", prompt=prompt, max_tokens=1, temperature=0, logprobs=1, echo=True)
    c = api.completions.create(**kw)
    ch, n = c.choices[0], c.usage.prompt_tokens
    assert ch.text.startswith(prompt) and len(ch.text) > len(prompt)
    lp = ch.logprobs
    assert len(lp.tokens) == n + 1 and "".join(lp.tokens[:n]) == prompt
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v < 0 and lp.top_logprobs[i][lp.tokens[i]] == v for i, v in enumerate(lp.token_logprobs) if i)
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(n + 1)]
    chunks = [x.choices[0] for x in api.completions.create(**kw, stream=True) if x.choices]
    assert "".join(x.text for x in chunks) == ch.text
    assert [v for x in chunks if x.logprobs for v in x.logprobs.token_logprobs] == lp.token_logprobs
    plain = api.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0, echo=True)
    assert plain.choices[0].text.startswith(prompt) and plain.choices[0].logprobs is None


def test_tokenize_counts_what_the_completions_count_and_detokenize_inverts_it(tiny_runtime):
    root = tiny_runtime.base_url
    prompt = "red blue wörld € 300 + 4 ="
    t = httpx.post(root + "/tokenize", json={"model": "tiny", "prompt": prompt}, timeout=60).json()
    api = client(tiny_runtime)
    assert (
        t["count"]
        == len(t["tokens"])
        == api.completions.create(model="tiny", prompt=prompt, max_tokens=1).usage.prompt_tokens
    )
    assert t["max_model_len"] == 2048
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]
    chat = httpx.post(root + "/tokenize", json={"messages": msgs}, timeout=60).json()
    assert (
        chat["count"]
        == api.chat.completions.create(model="tiny", messages=msgs, max_tokens=1).usage.prompt_tokens
    )
    assert httpx.post(root + "/detokenize", json={"tokens": t["tokens"]}, timeout=60).json() == {
        "prompt": prompt
    }
    for body, status in [
        ({"prompt": "a", "messages": msgs}, 400),
        ({}, 400),
        ({"prompt": "a", "model": "x"}, 404),
    ]:
        assert httpx.post(root + "/tokenize", json=body, timeout=60).status_code == status
    assert httpx.post(root + "/detokenize", json={"tokens": [10**7]}, timeout=60).status_code == 400


def test_n_choices_compute_their_prompt_once(tiny_runtime):
    prompt = "n choices share " + "blue green red the answer " * 16
    before = _metric(tiny_runtime, "graphpilot_prefix_cache_hits_total")
    c = client(tiny_runtime).completions.create(
        model="tiny", prompt=prompt, max_tokens=4, temperature=1.0, n=4, seed=1
    )
    full_blocks = (c.usage.prompt_tokens - 1) // 16
    assert (
        _metric(tiny_runtime, "graphpilot_prefix_cache_hits_total") - before == 3 * full_blocks * 16
    )  # the three choices after the first start from its blocks

"""Invalid requests get a 4xx with an OpenAI-shaped error that says what is wrong; the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

GOOD = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {}}}

CASES = [
    # (name, body or raw bytes, status, words the message must contain)
    ("bad json", b'{"model": "tiny", "prompt": ', 400, "not valid JSON"),
    ("not an object", b"[1, 2, 3]", 400, "body"),
    ("unknown model", {**GOOD, "model": "gpt-9"}, 404, "gpt-9"),
    ("negative max_tokens", {**GOOD, "max_tokens": -3}, 400, "max_tokens"),
    ("zero max_tokens", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ("top_p above 1", {**GOOD, "top_p": 1.5}, 400, "top_p"),
    ("temperature above 2", {**GOOD, "temperature": 3}, 400, "temperature"),
    ("n above 16", {**GOOD, "n": 17}, 400, "n"),
    ("best_of other than n", {**GOOD, "n": 2, "best_of": 3}, 400, "best_of"),
    ("missing prompt", {"model": "tiny"}, 400, "prompt"),
    ("empty prompt", {**GOOD, "prompt": ""}, 400, "empty"),
    ("token id out of vocabulary", {**GOOD, "prompt": [1, 999999]}, 400, "token ids"),
    ("prompt over the context", {**GOOD, "prompt": "hello " * 3000}, 400, "maximum context length"),
    ("max_tokens over the context", {**GOOD, "max_tokens": 100000}, 400, "maximum context length"),
    ("negative seed", {**GOOD, "seed": -1}, 400, "seed"),
    ("logprobs above 20", {**GOOD, "logprobs": 21}, 400, "logprobs"),
    ("presence_penalty above 2", {**GOOD, "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("repetition_penalty 0", {**GOOD, "repetition_penalty": 0}, 400, "repetition_penalty"),
    ("min_tokens above max_tokens", {**GOOD, "min_tokens": 5}, 400, "min_tokens"),
    ("stop token out of vocabulary", {**GOOD, "stop_token_ids": [999999]}, 400, "stop_token_ids"),
    ("logit_bias key not a token id", {**GOOD, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ("logit_bias above 100", {**GOOD, "logit_bias": {"5": 200}}, 400, "logit_bias"),
    ("structured output", {**GOOD, "response_format": {"type": "json_object"}}, 400, "response_format"),
]


@pytest.mark.parametrize(("name", "body", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_invalid_completion_request(tiny_runtime, name, body, status, words):
    url = tiny_runtime.openai_url + "/completions"
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
    else:
        r = httpx.post(url, json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert words in err["message"]
    assert httpx.post(url, json=GOOD, timeout=60).status_code == 200  # still serving


def test_invalid_chat_requests(tiny_runtime):
    url = tiny_runtime.openai_url + "/chat/completions"
    for body, words in [
        ({"model": "tiny", "messages": []}, "messages"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "hi " * 3000}]},
            "maximum context length",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
            "needs logprobs",
        ),
        ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]}, "tool calling"),
    ]:
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]["message"]


def test_oversize_body_gets_413(tiny_runtime):
    big = b'{"model": "tiny", "prompt": "' + b"a" * (2 << 20) + b'"}'
    r = httpx.post(tiny_runtime.openai_url + "/completions", content=big,
                   headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert r.status_code == 413
    assert "larger than the limit" in r.json()["error"]["message"]


def test_openai_client_raises_typed_errors(tiny_runtime):
    api = openai.OpenAI(base_url=tiny_runtime.openai_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        api.completions.create(model="nope", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="top_p"):
        api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], top_p=2.0)
    ok = api.completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_unknown_path_and_method(tiny_runtime):
    assert httpx.get(tiny_runtime.base_url + "/v1/nothing").status_code == 404
    assert httpx.get(tiny_runtime.openai_url + "/completions").status_code == 405

"""SIGTERM under load: new requests get 503, accepted ones complete (or end with a clean error), exit 0."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import openai

NUM_STREAMING, NUM_WHOLE = 10, 6


async def _request(rt, i: int, max_tokens: int, started: set[int]) -> tuple[str, str]:
    """('ok', finish_reason) or ('error', message); a hang fails the test through the client timeout."""
    c = openai.AsyncOpenAI(base_url=rt.openai_url, api_key="unused", max_retries=0, timeout=120)
    kw = {
        "model": "tiny",
        "prompt": f"request {i}",
        "max_tokens": max_tokens,
        "extra_body": {"ignore_eos": True},
    }
    try:
        if i < NUM_STREAMING:
            reason, n = None, 0
            async for chunk in await c.completions.create(stream=True, **kw):
                started.add(i)
                n += 1
                reason = chunk.choices[0].finish_reason or reason
            return "ok", str(reason)
        started.add(i)
        r = await c.completions.create(**kw)
        assert r.usage.completion_tokens == max_tokens
        return "ok", str(r.choices[0].finish_reason)
    except openai.APITimeoutError:
        raise
    except openai.APIError as e:
        return "error", str(e)


def _metric(rt, name: str) -> float:
    for line in httpx.get(rt.base_url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def _load_then_sigterm(
    rt, max_tokens: int, late: bool
) -> tuple[list[tuple[str, str]], httpx.Response | None]:
    started: set[int] = set()
    tasks = [
        asyncio.create_task(_request(rt, i, max_tokens, started)) for i in range(NUM_STREAMING + NUM_WHOLE)
    ]
    deadline = time.monotonic() + 120
    while len(started) < NUM_STREAMING + NUM_WHOLE or _metric(rt, "graphpilot_num_requests_running") < 4:
        assert time.monotonic() < deadline, "the load never got going"
        await asyncio.sleep(0.05)
    rt.signal(signal.SIGTERM)
    while httpx.get(rt.base_url + "/ready").status_code == 200:  # the signal is handled asynchronously
        await asyncio.sleep(0.02)
    answer = None
    if late:  # a request that arrives while the server drains
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(rt.openai_url + "/completions", json={"model": "tiny", "prompt": "late"})
    return list(await asyncio.gather(*tasks)), answer


def test_sigterm_drains_in_flight_requests(runtime_factory):
    rt = runtime_factory()
    results, late = asyncio.run(_load_then_sigterm(rt, max_tokens=120, late=True))
    assert late is not None and late.status_code == 503
    assert "shutting down" in late.json()["error"]["message"]
    assert results == [("ok", "length")] * (NUM_STREAMING + NUM_WHOLE)  # every accepted request completed
    assert rt.stop(timeout=60) == 0
    assert "Traceback" not in rt.logs()


def test_drain_timeout_ends_requests_with_a_clean_error(runtime_factory):
    rt = runtime_factory("--drain-timeout", "0.5")
    results, _ = asyncio.run(_load_then_sigterm(rt, max_tokens=1500, late=False))
    errors = [msg for kind, msg in results if kind == "error"]
    assert errors, results  # 1500 tokens cannot finish within half a second of draining
    assert all("shutting down" in msg for msg in errors), errors
    assert all(reason == "length" for kind, reason in results if kind == "ok")
    assert rt.stop(timeout=60) == 0

"""Live retune under load: the bucket set changes while streaming clients run; nobody notices."""

from __future__ import annotations

import asyncio
import threading

import httpx
import openai

PROMPTS = [f"{a} + {b} =" for a in (3, 41, 777, 12) for b in (5, 60)] + [
    "hello world", "the graph replay of a bucket", "what is the answer", "red blue green",
    "we make a new road", "one two three four", "the server keeps serving", "memory cache request",
]  # fmt: skip
MAX_TOKENS = 20
# each a different bucket set; the one with 48 fails to capture (injected) and must roll back
RETUNES = [
    [1, 2, 4, 8, 16, 64, 256],
    [1, 4, 16],  # prefills above 16 tokens run eagerly (too_many_tokens)
    [2, 8, 32, 128],  # decode of one request pads to 2
    [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233],
    [1, 16, 48, 128],  # rolled back
    [1, 2, 4, 8, 16, 32, 64, 128, 256],
    [256],
]
NUM_CLIENTS = 16


def test_retune_under_load_changes_no_output(runtime_factory):
    rt = runtime_factory("--debug-fail-capture-at", "48")
    api = openai.OpenAI(base_url=rt.openai_url, api_key="unused", max_retries=0)
    expected = {p: api.completions.create(model="tiny", prompt=p, max_tokens=MAX_TOKENS, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].text for p in PROMPTS}  # fmt: skip
    loaded = threading.Event()  # every client is streaming
    retuned = threading.Event()
    answers: list[dict] = []

    def retune() -> None:
        loaded.wait(120)
        with httpx.Client(base_url=rt.admin_url, timeout=120) as admin:
            for buckets in RETUNES:
                answers.append(admin.put("/admin/profile", json={"buckets": buckets}).json())
        retuned.set()

    async def client(i: int, streaming: set[int]) -> list[tuple[str, str]]:
        c = openai.AsyncOpenAI(base_url=rt.openai_url, api_key="unused", max_retries=0, timeout=120)
        results = []
        n = 0
        while not retuned.is_set() or n == 0:  # keep the load on until the last retune answered
            p = PROMPTS[(i + n) % len(PROMPTS)]
            stream = await c.completions.create(model="tiny", prompt=p, max_tokens=MAX_TOKENS, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True})  # fmt: skip
            text = ""
            async for chunk in stream:
                text += chunk.choices[0].text
                streaming.add(i)
                if len(streaming) == NUM_CLIENTS:
                    loaded.set()
            results.append((text, expected[p]))
            n += 1
        return results

    async def load() -> list[list[tuple[str, str]]]:
        streaming: set[int] = set()
        return await asyncio.gather(*(client(i, streaming) for i in range(NUM_CLIENTS)))

    worker = threading.Thread(target=retune)
    worker.start()
    per_client = asyncio.run(load())
    worker.join()

    assert [a["result"] for a in answers] == ["applied"] * 4 + ["rolled_back"] + ["applied"] * 2, answers
    assert "capture failed" in answers[4]["reason"]
    assert answers[4]["profile"]["buckets"] == RETUNES[3]  # the last good set kept serving
    assert answers[-1]["profile"]["buckets"] == RETUNES[-1]
    outputs = [r for results in per_client for r in results]
    assert len(outputs) >= NUM_CLIENTS
    mismatched = [(got, want) for got, want in outputs if got != want]
    assert not mismatched, f"{len(mismatched)} of {len(outputs)} outputs changed: {mismatched[:3]}"
    metrics = httpx.get(rt.base_url + "/metrics").text
    assert 'graphpilot_graph_recaptures_total{result="applied"} 7.0' in metrics  # start-up + 6
    assert 'graphpilot_graph_recaptures_total{result="rolled_back"} 1.0' in metrics
    assert 'graphpilot_requests_total{status="error"} 0.0' in metrics

"""OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions (SSE streaming too)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from graphpilot.runtime.engine.request import SamplingParams, TokenLogprob
from graphpilot.runtime.server.loop import AsyncEngine, RequestGroup
from graphpilot.runtime.server.protocol import (
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    _Sampling,
    usage,
)
from graphpilot.runtime.server.text import ChatTemplate, TextDelta, TokenText

router = APIRouter()


def _runtime(request: Request) -> AsyncEngine:
    return request.app.state.runtime


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The one served model."""
    engine = _runtime(request).engine
    card: dict[str, Any] = {"id": request.app.state.served_model_name, "object": "model", "created": 0,
                            "owned_by": "graphpilot"}  # fmt: skip
    if engine is not None:
        card["max_model_len"] = engine.max_model_len
    return {"object": "list", "data": [card]}


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Text completion; one choice per prompt."""
    engine = _check(request, body)
    tokenized = await asyncio.to_thread(
        lambda: [engine.encode(p) if isinstance(p, str) else p for p in body.prompts()]
    )
    call = _Call(
        "cmpl", "text_completion", request.app.state.served_model_name, body, _token_text(request, body)
    )
    if body.echo:
        texts = [p if isinstance(p, str) else engine.tokenizer.decode(p) for p in body.prompts()]
        call.echo = list(zip(texts, tokenized, strict=True))
    return await _serve(request, body, call, tokenized, body.max_tokens or 16)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion over the model's chat template (ChatML when the checkpoint has none)."""
    engine = _check(request, body)
    state = request.app.state
    ids = await asyncio.to_thread(engine.encode, _render_chat(request, engine, body.messages))
    max_tokens = body.max_new_tokens() or max(1, engine.max_model_len - len(ids))
    call = _Call("chatcmpl", "chat.completion", state.served_model_name, body, _token_text(request, body))
    return await _serve(request, body, call, [ids], max_tokens)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    """A prompt's token ids as the completions endpoints count them (`messages`: through the chat
    template, as /v1/chat/completions renders them)."""
    engine = _check(request, body)
    text = body.prompt if body.messages is None else _render_chat(request, engine, body.messages)
    ids = await asyncio.to_thread(engine.encode, text or "")
    return {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    """Token ids back to text (special tokens kept)."""
    engine = _check(request, body)
    vocab = engine.model_config.vocab_size
    if any(not 0 <= t < vocab for t in body.tokens):
        raise APIError(400, f"tokens must be within 0..{vocab - 1}", param="tokens")
    return {"prompt": engine.tokenizer.decode(body.tokens, skip_special_tokens=False)}


def _render_chat(request: Request, engine: Any, messages: list[ChatMessage]) -> str:
    """Messages through the checkpoint's chat template (loaded once per app)."""
    state = request.app.state
    if getattr(state, "chat_template", None) is None:
        state.chat_template = ChatTemplate.from_model_dir(engine.config.model)
    return state.chat_template.render([{"role": m.role, "content": m.text()} for m in messages])


def sampling_params(body: _Sampling, max_tokens: int) -> SamplingParams:
    """The engine's SamplingParams for a request body (SamplingError: the server answers 400)."""
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                          top_k=body.top_k, seed=body.seed, stop=body.stop_list(),
                          ignore_eos=body.ignore_eos, logprobs=body.logprob_count(),
                          prompt_logprobs=body.prompt_logprob_count(),
                          presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                          repetition_penalty=body.repetition_penalty,
                          stop_token_ids=tuple(body.stop_token_ids or ()), min_tokens=body.min_tokens,
                          logit_bias=body.logit_bias_pairs())  # fmt: skip


def _token_text(request: Request, body: _Sampling) -> TokenText | None:
    """The server's TokenText when the call asks for logprobs."""
    if body.logprob_count() is None:
        return None
    state = request.app.state
    if getattr(state, "token_text", None) is None:
        state.token_text = TokenText(_runtime(request).engine.tokenizer)
    return state.token_text


def _check(request: Request, body: Any) -> Any:
    engine = _runtime(request).check_ready()
    if body.model is not None and body.model != request.app.state.served_model_name:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves "
                       f"{request.app.state.served_model_name!r}", param="model", code="model_not_found")  # fmt: skip
    return engine


class _Call:
    """Shapes one call's responses and chunks (completion or chat)."""

    def __init__(self, prefix: str, obj: str, model: str, body: _Sampling, tokens: TokenText | None) -> None:
        self.id, self.object, self.model = f"{prefix}-{uuid.uuid4().hex}", obj, model
        self.created = int(time.time())
        self.chat = obj == "chat.completion"
        self.body = body
        self.tokens = tokens  # set when the call asks for logprobs
        self._offset: dict[int, int] = {}  # per choice: where its next token's text starts
        self._started: set[int] = set()  # choices that have sent their first chunk
        self.echo: list[tuple[str, list[int]]] | None = None  # completions with echo: each prompt's text, ids
        self.prompt_logprobs: dict[int, list[TokenLogprob]] = {}  # per echoing choice, until its first chunk

    def envelope(self, choices: list[dict[str, Any]], chunk: bool = False) -> dict[str, Any]:
        obj = self.object + (".chunk" if self.chat and chunk else "")
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def choice(
        self, index: int, text: str, finish_reason: str | None, chunk: bool = False,
        logprobs: list[TokenLogprob] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        if not self.chat:
            lead = None
            if self.echo is not None and index not in self._started:  # the choice's first chunk
                prompt_text, prompt_ids = self.echo[index // self.body.n]
                text, lead = prompt_text + text, prompt_ids[0]
                logprobs = [*self.prompt_logprobs.pop(index, []), *(logprobs or [])]
            lps = self._logprobs(index, logprobs or [], lead)
            return {"index": index, "text": text, "logprobs": lps, "finish_reason": finish_reason}
        lps = self._logprobs(index, logprobs or [])
        key = "delta" if chunk else "message"
        content: dict[str, Any] = {"content": text} if chunk else {"role": "assistant", "content": text}
        if chunk and finish_reason is not None and not text:
            content = {}
        return {"index": index, key: content, "logprobs": lps, "finish_reason": finish_reason}

    def keep_prompt_logprobs(self, index: int, out: Any) -> None:
        """An echoing choice's prompt logprobs (they come with its first output token)."""
        if self.echo is not None and out.prompt_logprobs is not None:
            self.prompt_logprobs[index] = out.prompt_logprobs

    def _logprobs(
        self, index: int, entries: list[TokenLogprob], lead: int | None = None
    ) -> dict[str, Any] | None:
        """The choice's `logprobs` for these tokens (a stream's chunks continue the text offsets);
        `lead`: an echoed prompt's first token, which has none."""
        self._started.add(index)
        if self.tokens is None:
            return None
        if self.chat:
            return self.tokens.chat(entries)
        out = self.tokens.completion(entries, self._offset.get(index, 0), lead)
        self._offset[index] = self._offset.get(index, 0) + sum(len(t) for t in out["tokens"])
        return out


async def _serve(
    request: Request, body: _Sampling, call: _Call, prompts: list[Any], max_tokens: int
) -> Response:
    """Queue `body.n` requests per prompt, choice i * n + j being prompt i's j-th (a seeded call's
    j-th choice draws from seed + j), and answer with them, streamed or whole."""
    params = [
        dataclasses.replace(
            sampling_params(body, max_tokens), seed=None if body.seed is None else body.seed + j
        )
        for j in range(body.n)
    ]
    rids = [f"{call.id}-{i}" for i in range(len(prompts) * body.n)]
    group = await _runtime(request).add(
        [p for p in prompts for _ in range(body.n)], params * len(prompts), rids
    )
    if body.stream:
        return StreamingResponse(_stream(call, group), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip
    return await _until_disconnected(request, _collect(call, group))


async def _collect(call: _Call, group: RequestGroup) -> JSONResponse:
    final: dict[int, Any] = {}
    logprobs: dict[int, list[TokenLogprob]] = {}
    try:
        async for i, out in group:
            logprobs.setdefault(i, []).extend(out.logprobs or [])
            call.keep_prompt_logprobs(i, out)
            if out.finished:
                final[i] = out
    finally:
        group.close()
    choices = [
        call.choice(i, o.text, o.finish_reason, logprobs=logprobs[i]) for i, o in sorted(final.items())
    ]
    resp = call.envelope(choices)
    n = call.body.n  # the prompt counts once however many choices it has (as OpenAI counts it)
    resp["usage"] = usage(sum(o.num_prompt_tokens for i, o in final.items() if i % n == 0),
                          sum(o.num_output_tokens for o in final.values()))  # fmt: skip
    return JSONResponse(resp)


async def _stream(call: _Call, group: RequestGroup) -> AsyncIterator[str]:
    stops = call.body.stop_list()
    deltas = [TextDelta(stops) for _ in group.request_ids]
    counts = [[0, 0] for _ in group.request_ids]  # prompt, completion tokens
    pending: list[list[TokenLogprob]] = [[] for _ in group.request_ids]  # not yet in a chunk
    try:
        if call.chat:
            for i in range(len(group.request_ids)):
                yield _sse(call.envelope([{"index": i, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}], chunk=True))  # fmt: skip
        async for i, out in group:
            counts[i] = [out.num_prompt_tokens, out.num_output_tokens]
            pending[i].extend(out.logprobs or [])
            call.keep_prompt_logprobs(i, out)
            text = deltas[i].update(out.text, out.finished)
            if text or out.finished:
                choice = call.choice(i, text, out.finish_reason, chunk=True, logprobs=pending[i])
                pending[i] = []
                yield _sse(call.envelope([choice], chunk=True))
    except Exception as e:  # the stream has started: report the error in-band, as OpenAI does
        yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
    finally:
        group.close()
    opts = call.body.stream_options
    if opts is not None and opts.include_usage:
        last = call.envelope([], chunk=True)
        n = call.body.n
        last["usage"] = usage(sum(c[0] for c in counts[::n]), sum(c[1] for c in counts))
        yield _sse(last)
    yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _until_disconnected(request: Request, work: Awaitable[Response]) -> Response:
    """Run `work`, cancelling it (and so aborting its requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        watch.cancel()
        return task.result()
    task.cancel()
    return Response(status_code=499)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass

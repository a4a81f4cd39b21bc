"""The public app factory: OpenAI API, /health, /ready, /metrics, and the engine's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphpilot.runtime.server.loop import AsyncEngine, EngineDead, EngineNotReady
from graphpilot.runtime.server.metrics import ServerMetrics
from graphpilot.runtime.server.openai_api import router
from graphpilot.runtime.server.protocol import APIError, error_response

DEFAULT_MAX_REQUEST_BYTES = 4 << 20


@dataclass
class ServerSettings:
    served_model_name: str
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


def create_app(
    runtime: AsyncEngine, settings: ServerSettings, registry: CollectorRegistry | None = None
) -> FastAPI:
    """The public app; its lifespan builds the engine in a thread and stops it at shutdown."""
    registry = registry or CollectorRegistry()
    metrics = ServerMetrics(runtime, registry)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        ticker = asyncio.create_task(_update_totals(runtime, metrics))
        try:
            yield
        finally:
            ticker.cancel()
            await runtime.stop()

    app = FastAPI(title="GraphPilot runtime", version="0.1.0", lifespan=lifespan)
    app.state.runtime, app.state.metrics = runtime, metrics
    app.state.served_model_name = settings.served_model_name
    app.include_router(router)
    _add_errors(app, runtime, metrics)

    @app.get("/health", responses={503: {"description": "the engine failed"}})
    async def health() -> JSONResponse:
        """The process is alive (the engine may still be loading); 503 once the engine has failed."""
        if runtime.error is not None:
            return JSONResponse({"status": "failed", "error": runtime.error}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", responses={503: {"description": "loading, draining or failed"}})
    async def ready() -> JSONResponse:
        """200 once the graphs are captured and requests are accepted; 503 before, and while draining."""
        if runtime.ready:
            return JSONResponse({"status": "ready"})
        status = "failed" if runtime.error else "draining" if runtime.draining else "loading"
        return JSONResponse({"status": status, "error": runtime.error}, status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app


async def _update_totals(runtime: AsyncEngine, metrics: ServerMetrics) -> None:
    # between scrapes too, so the step log's ring buffer never drops a step before it is counted
    while True:
        await asyncio.sleep(5.0)
        if runtime.engine is not None:
            await asyncio.to_thread(metrics.totals.update, runtime.engine.step_log)


def _add_errors(app: FastAPI, runtime: AsyncEngine, metrics: ServerMetrics) -> None:
    def refuse(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> JSONResponse:  # fmt: skip
        metrics.refused("unavailable" if status == 503 else "invalid")
        return error_response(status, message, type_, param, code)

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return refuse(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        message, param = validation_message(e.errors())
        return refuse(400, message, param=param)

    @app.exception_handler(ValueError)  # RequestError, SamplingError, TemplateError
    async def value_error(_: Request, e: ValueError) -> JSONResponse:
        code = "context_length_exceeded" if "context length" in str(e) else None
        return refuse(400, str(e), code=code)

    @app.exception_handler(EngineNotReady)
    async def not_ready(_: Request, e: EngineNotReady) -> JSONResponse:
        return refuse(503, str(e), "service_unavailable")

    @app.exception_handler(EngineDead)
    async def dead(_: Request, e: EngineDead) -> JSONResponse:
        if runtime.draining:
            return error_response(503, str(e), "service_unavailable")
        return error_response(500, str(e), "server_error")


def validation_message(errors: Any) -> tuple[str, str | None]:
    """One readable line from pydantic errors: 'field: what is wrong', the field as `param`."""
    errors = list(errors)
    for err in errors:
        if err.get("type") == "json_invalid":
            return f"the body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}", None
    locs = [[str(x) for x in err.get("loc", ()) if x != "body"] for err in errors]
    if not locs[0] and errors[0].get("type") == "value_error":  # a model validator: "field: why"
        message = str(errors[0]["msg"]).removeprefix("Value error, ")
        return message, message.split(":", 1)[0]
    first = locs[0][:1] if locs and locs[0] else []
    if len(errors) > 1 and first and all(loc[:1] == first for loc in locs):
        # one field, several union branches failed: name the forms it may take
        forms = ", ".join(dict.fromkeys(loc[1] for loc in locs if len(loc) > 1))
        return f"{first[0]}: invalid value; allowed forms: {forms}", first[0]
    parts = [f"{'.'.join(loc) or 'body'}: {str(err['msg']).removeprefix('Value error, ')}"
             for loc, err in zip(locs, errors, strict=True)][:3]  # fmt: skip
    return "; ".join(dict.fromkeys(parts)) or "invalid request", first[0] if first else None


class BodyLimit:
    """Reads the whole body first and answers 413 above `max_bytes` (the app never sees it)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending the body
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        msg = f"the request body is larger than the limit of {self.max_bytes} bytes"
        await error_response(413, msg, code="request_too_large")(scope, receive, send)

"""Admin API (its own port): the graph profile, live retunes, and exact step stats for the autotuner.

GET /admin/profile, PUT /admin/profile (waits for the capture result), GET /admin/stats?cursor=N.
A bearer token guards every route when one is configured (required when bound beyond loopback).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from graphpilot.runtime.profile import BucketStats, GraphProfile, ProfileError
from graphpilot.runtime.server.loop import AsyncEngine, EngineNotReady
from graphpilot.runtime.server.protocol import APIError, error_response

log = logging.getLogger(__name__)


class AdminState:
    """What the admin API keeps besides the engine: a profile waiting for the next start."""

    def __init__(self, runtime: AsyncEngine, state_file: str | None = None) -> None:
        self.runtime, self.state_file = runtime, state_file
        self.pending_restart: dict[str, Any] | None = None

    def profile(self) -> dict[str, Any]:
        engine = self.runtime.check_started()
        runner = engine.runner
        stats = [runner.bucket_stats.get(b) or BucketStats(num_tokens=b) for b in runner.buckets]
        return {
            "buckets": list(runner.buckets),
            "mem_fraction_static": engine.config.mem_fraction_static,
            "backend": runner.backend,
            "max_num_batched_tokens": engine.config.max_num_batched_tokens,
            "mixed_step_tokens": engine.scheduler.mixed_step_tokens,
            "graph_max_padding_ratio": runner.max_padding_ratio,
            "graph_memory_bytes": runner.graph_memory_bytes,
            "bucket_stats": [s.to_dict() for s in stats],
            "pending_restart": self.pending_restart,
        }

    def keep_for_restart(self, mem_fraction: float, current: float) -> str:
        """Record a mem_fraction_static change for the next start; say so in the answer's reason."""
        if mem_fraction == current:
            self.pending_restart = None
            return ""
        self.pending_restart = {
            "mem_fraction_static": mem_fraction,
            "reason": "mem_fraction_static sizes the KV cache at start; it takes effect at the next start",
        }
        return f"; mem_fraction_static {mem_fraction} takes effect at the next start (now {current})"

    def persist(self, buckets: list[int]) -> None:
        """Write the profile the next start should use to the state file, if there is one."""
        if not self.state_file:
            return
        engine = self.runtime.engine
        mem = (self.pending_restart or {}).get("mem_fraction_static", engine.config.mem_fraction_static)
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"graph_buckets": buckets, "mem_fraction_static": mem}, f)
        os.replace(tmp, self.state_file)


def create_admin_app(
    runtime: AsyncEngine, token: str | None = None, state_file: str | None = None
) -> FastAPI:
    """The admin app; it shares the engine with the public app (which owns the lifespan)."""
    admin = AdminState(runtime, state_file)

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise APIError(
                401, "a valid 'Authorization: Bearer <token>' header is required", "authentication_error"
            )

    app = FastAPI(
        title="GraphPilot runtime admin API", dependencies=[Depends(authorize)], docs_url=None, redoc_url=None
    )
    app.state.admin = admin
    _errors(app)

    @app.get("/admin/profile")
    async def get_profile() -> dict[str, Any]:
        """Captured buckets, memory fraction, per-bucket capture memory and replay time."""
        return admin.profile()

    @app.put("/admin/profile")
    async def put_profile(request: Request) -> JSONResponse:
        """Apply a profile live; answers applied / rolled_back / rejected and why."""
        try:
            profile = GraphProfile.from_dict(await _json(request))
        except ProfileError as e:
            return JSONResponse({"result": "rejected", "reason": str(e), "profile": admin.profile()}, 400)
        engine = runtime.check_started()
        note = ""
        if profile.mem_fraction_static is not None:
            note = admin.keep_for_restart(profile.mem_fraction_static, engine.config.mem_fraction_static)
        res = await runtime.apply_profile(profile.buckets)
        log.info("profile apply", extra={"result": res.result, "reason": res.reason})
        if res.result != "rejected":
            admin.persist(list(engine.runner.buckets))
        body = {"result": res.result, "reason": res.reason + note, "profile": admin.profile()}
        return JSONResponse(body, status_code=409 if res.result == "rejected" else 200)

    @app.post("/admin/reset_prefix_cache")
    async def reset_prefix_cache() -> dict[str, Any]:
        """Forget every cached prompt prefix (for benchmarks); running requests keep their blocks."""
        engine = runtime.check_started()
        return {"result": "reset", "forgotten_blocks": await asyncio.to_thread(engine.reset_prefix_cache)}

    @app.get("/admin/stats")
    async def get_stats(
        cursor: int = Query(0, ge=0, description="The cursor of the previous read."),
    ) -> dict[str, Any]:
        """Exact counts of the steps after `cursor`, plus KV and queue state now."""
        engine = runtime.check_started()
        w = engine.step_log.window(cursor)
        w.kv_cache_usage_ratio = engine.kv.pool.usage
        w.kv_cache_capacity_tokens = engine.kv.pool.capacity_tokens
        w.num_requests_running = len(engine.scheduler.running)
        w.num_requests_waiting = len(engine.scheduler.waiting)
        return w.to_dict()

    return app


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as e:
        raise ProfileError(f"the body is not valid JSON: {e}") from e


def _errors(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(EngineNotReady)
    async def not_ready(_: Request, e: EngineNotReady) -> JSONResponse:
        return error_response(503, str(e), "service_unavailable")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        return error_response(400, f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}")

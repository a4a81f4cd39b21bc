"""FastAPI app factory: /health, /metrics, /status, and the tuning loop in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .actuator import ProfileStore, RuntimeAPI, RuntimeClient, make_store
from .metrics import TunerMetrics
from .settings import SidecarSettings
from .tuner import Tuner


def create_app(
    settings: SidecarSettings | None = None,
    api: RuntimeAPI | None = None,
    store: ProfileStore | None = None,
) -> FastAPI:
    """The sidecar app; `api` and `store` default to the real admin API and the configured store."""
    settings = settings or SidecarSettings()
    client = RuntimeClient(settings) if api is None else None
    metrics = TunerMetrics()
    tuner = Tuner(settings, api or client, store or make_store(settings), metrics)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(tuner.run(stop), name="graphpilot-autotune")
        try:
            yield
        finally:
            stop.set()
            await task
            if client is not None:
                await client.aclose()

    app = FastAPI(title="GraphPilot autotuner", lifespan=lifespan)
    app.state.tuner = tuner

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Process alive; says whether the runtime answered the last read."""
        return {"status": "ok", "runtime_reachable": tuner.failures == 0}

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        """Prometheus exposition of graphpilot_autotune_*."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/status")
    def status() -> dict[str, Any]:
        """Window distribution, current and proposed profile, recent decisions."""
        return tuner.status()

    return app

"""A fake of the runtime's admin API (the sidecar's boundary), backed by the simulator's runtime model."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException

from graphpilot.runtime.profile import GraphProfile, ProfileError
from graphpilot.sidecar.actuator import RuntimeClient
from graphpilot.sidecar.settings import SidecarSettings
from graphpilot.sidecar.simulator import CostTable, SimRuntime


def cost_table() -> CostTable:
    """Small, round costs: 1 ms per replay plus 1 µs per token; eager pays 4 ms more."""
    sizes = (1, 65536)
    return CostTable(
        sizes=sizes,
        replay_seconds=tuple(1e-3 + 1e-6 * n for n in sizes),
        eager_seconds=tuple(5e-3 + 1e-6 * n for n in sizes),
        pool_bytes_per_token=1000.0,
        bucket_bytes=1e5,
        capture_seconds_per_bucket=0.01,
    )


def admin_app(sim: SimRuntime, token: str | None = None, extra: dict[str, Any] | None = None) -> FastAPI:
    """GET/PUT /admin/profile and GET /admin/stats as the contract describes them."""

    def auth(authorization: str | None = Header(None)) -> None:
        if token is not None and authorization != f"Bearer {token}":
            raise HTTPException(401, "bad token")

    app = FastAPI(dependencies=[Depends(auth)])

    @app.get("/admin/profile")
    async def get_profile() -> dict[str, Any]:
        return {**await sim.get_profile(), **(extra or {})}

    @app.put("/admin/profile")
    async def put_profile(body: dict[str, Any]) -> dict[str, Any]:
        try:
            profile = GraphProfile.from_dict(body)
        except ProfileError as e:
            raise HTTPException(422, str(e)) from e
        answer = await sim.put_profile(profile)
        answer["profile"] = await get_profile()
        return answer

    @app.get("/admin/stats")
    async def get_stats(cursor: int = 0) -> dict[str, Any]:
        return (await sim.get_stats(cursor)).to_dict()

    return app


def client_for(app: FastAPI, settings: SidecarSettings) -> RuntimeClient:
    """The real HTTP client of the sidecar, talking to `app` in process."""
    return RuntimeClient(settings, transport=httpx.ASGITransport(app=app))


def settings(**overrides: Any) -> SidecarSettings:
    """Fast, deterministic settings for tests (no environment)."""
    base: dict[str, Any] = {
        "interval_seconds": 10.0,
        "cooldown_seconds": 0.0,
        "eval_intervals": 1,
        "eval_min_forwards": 10,
        "min_gain_ratio": 0.02,
        "max_buckets": 8,
        "admin_url": "http://runtime",
    }
    base.update(overrides)
    return SidecarSettings(**base)

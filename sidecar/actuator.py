"""Talking to the outside: the runtime's admin API, and where the tuned profile is kept."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from graphpilot.runtime.profile import GraphProfile, ProfileError, StatsWindow

from .settings import SidecarSettings

log = logging.getLogger("graphpilot.sidecar")

GROUP_PATH = "/apis/graphpilot.dev/v1alpha1"


class RuntimeUnavailable(Exception):
    """The admin API did not answer usefully (down, restarting, refused our token)."""


class RuntimeAPI(Protocol):
    """The admin API as the tuner sees it; the simulator and the HTTP client both provide it."""

    async def get_profile(self) -> dict[str, Any]: ...

    async def put_profile(self, profile: GraphProfile) -> dict[str, Any]: ...

    async def get_stats(self, cursor: int) -> StatsWindow: ...


class RuntimeClient:
    """HTTP client of GET/PUT /admin/profile and GET /admin/stats."""

    def __init__(self, settings: SidecarSettings, transport: httpx.AsyncBaseTransport | None = None):
        headers = {}
        if settings.admin_token is not None:
            headers["Authorization"] = f"Bearer {settings.admin_token.get_secret_value()}"
        self._apply_timeout = settings.apply_timeout_seconds
        self._http = httpx.AsyncClient(
            base_url=settings.admin_url,
            headers=headers,
            timeout=settings.request_timeout_seconds,
            transport=transport,
        )

    async def get_profile(self) -> dict[str, Any]:
        """The runtime's current profile, per-bucket stats and pending restart."""
        return await self._call("GET", "/admin/profile")

    async def put_profile(self, profile: GraphProfile) -> dict[str, Any]:
        """Ask the runtime to apply a profile; answers applied / rolled_back / rejected."""
        # the runtime answers once the new buckets are captured: that can take a while
        return await self._call("PUT", "/admin/profile", json=profile.to_dict(), timeout=self._apply_timeout)

    async def get_stats(self, cursor: int) -> StatsWindow:
        """Exact counts since `cursor`."""
        return StatsWindow.from_dict(await self._call("GET", "/admin/stats", params={"cursor": cursor}))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            r = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise RuntimeUnavailable(f"{method} {path}: {type(e).__name__}: {e}") from e
        if r.status_code in (400, 409, 422) and method == "PUT":
            # the runtime refused the profile itself: a decision, not an outage
            return _refusal(r)
        if r.status_code != 200:
            raise RuntimeUnavailable(f"{method} {path}: HTTP {r.status_code}: {r.text[:200]}")
        data: dict[str, Any] = r.json()
        return data


def _refusal(r: httpx.Response) -> dict[str, Any]:
    """The runtime's own answer to a refused PUT if it sent one, else a rejected answer with its text."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "result" in body:
        return body
    return {"result": "rejected", "reason": r.text[:500]}


class ProfileStore(Protocol):
    """Where the tuned profile survives sidecar and pod restarts."""

    async def load(self) -> GraphProfile | None: ...

    async def save(self, profile: GraphProfile) -> None: ...


class NullStore:
    """No persistence configured."""

    async def load(self) -> GraphProfile | None:
        """Nothing was kept."""
        return None

    async def save(self, profile: GraphProfile) -> None:
        """Keep nothing."""


class FileStore:
    """A local JSON file: {"profile": {...}, "updatedAt": RFC3339}; written atomically."""

    def __init__(self, path: Path):
        self.path = path

    async def load(self) -> GraphProfile | None:
        """The kept profile, or None if the file is absent or unreadable."""
        try:
            return GraphProfile.from_dict(json.loads(self.path.read_text())["profile"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ProfileError) as e:
            log.warning("ignoring unreadable state file", extra={"path": str(self.path), "error": str(e)})
            return None

    async def save(self, profile: GraphProfile) -> None:
        """Replace the file with this profile."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"profile": profile.to_dict(), "updatedAt": rfc3339()}, indent=2))
        os.replace(tmp, self.path)


class ClusterStore:
    """`status.autotuner` of this pod's own InferenceService, written through the status subresource.

    The sidecar's Role allows only get and patch on inferenceservices/status, limited by resourceNames
    to its own InferenceService; a JSON merge patch touches `status.autotuner` and nothing else.
    """

    def __init__(self, settings: SidecarSettings, transport: httpx.AsyncBaseTransport | None = None):
        assert settings.namespace and settings.name
        self.url = f"{GROUP_PATH}/namespaces/{settings.namespace}/inferenceservices/{settings.name}/status"
        self.pod = settings.pod_name or os.environ.get("HOSTNAME", "")
        self.sa_dir = settings.service_account_dir
        ca = self.sa_dir / "ca.crt"
        self._http = httpx.AsyncClient(
            base_url=settings.kube_api_url or _in_cluster_url(),
            verify=str(ca) if ca.exists() else True,
            timeout=settings.request_timeout_seconds,
            transport=transport,
        )

    def _headers(self) -> dict[str, str]:
        token_file = self.sa_dir / "token"
        # re-read every call: projected service-account tokens rotate
        token = token_file.read_text().strip() if token_file.exists() else ""
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def load(self) -> GraphProfile | None:
        """status.autotuner.profile of the InferenceService, or None."""
        try:
            r = await self._http.get(self.url, headers=self._headers())
            r.raise_for_status()
            record = (r.json().get("status") or {}).get("autotuner") or {}
            return GraphProfile.from_dict(record["profile"]) if "profile" in record else None
        except (httpx.HTTPError, ValueError, ProfileError) as e:
            log.warning("cannot read the tuned profile from the InferenceService", extra={"error": str(e)})
            return None

    async def save(self, profile: GraphProfile) -> None:
        """Merge-patch status.autotuner with the profile, the time and this pod's name."""
        body = {
            "status": {"autotuner": {"profile": profile.to_dict(), "updatedAt": rfc3339(), "pod": self.pod}}
        }
        headers = {**self._headers(), "Content-Type": "application/merge-patch+json"}
        r = await self._http.patch(self.url, content=json.dumps(body), headers=headers)
        r.raise_for_status()


def _in_cluster_url() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def make_store(settings: SidecarSettings) -> ProfileStore:
    """The InferenceService status in a cluster, else the state file, else nothing."""
    if settings.namespace and settings.name:
        return ClusterStore(settings)
    if settings.state_file is not None:
        return FileStore(settings.state_file)
    return NullStore()


def rfc3339(t: float | None = None) -> str:
    """UTC time as RFC 3339 with seconds, as Kubernetes writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))

"""A thin, typed door to the API server: get, server-side apply, delete, status patch (raw REST paths)."""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from typing import Any

import httpx
import kopf

FIELD_MANAGER = "graphpilot-operator"

# kind -> plural, for the kinds the operator owns or reads.
PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ServiceMonitor": "servicemonitors",
    "InferenceService": "inferenceservices",
    "KopfPeering": "kopfpeerings",
    "ClusterKopfPeering": "clusterkopfpeerings",
}


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def retriable(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500


def object_path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    """REST path of an object; an empty namespace means a cluster-scoped kind."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{PLURALS[kind]}" if namespace else f"{prefix}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if info.insecure:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if info.ca_path:
        ctx.load_verify_locations(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        ctx.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
    if info.certificate_path and info.private_key_path:
        ctx.load_cert_chain(os.fsdecode(info.certificate_path), os.fsdecode(info.private_key_path))
    elif info.certificate_data and info.private_key_data:
        with tempfile.TemporaryDirectory() as tmp:  # ssl reads key pairs from files only
            cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
            for path, data in ((cert, info.certificate_data), (key, info.private_key_data)):
                with open(path, "wb") as f:
                    f.write(base64.b64decode(data))
            ctx.load_cert_chain(cert, key)
    return ctx


def login() -> kopf.ConnectionInfo:
    """The same credentials kopf finds: the pod's service account, else the kubeconfig."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig found")
    return info


class Kube:
    """One connection, shared by the handler threads (httpx's pool is thread-safe)."""

    def __init__(self, info: kopf.ConnectionInfo | None = None) -> None:
        self._fixed = info
        self.http = self._connect()

    def _connect(self) -> httpx.Client:
        info = self._fixed or login()
        headers = {"Accept": "application/json", "User-Agent": FIELD_MANAGER}
        if info.token:
            headers["Authorization"] = f"Bearer {info.token}"
        auth = (info.username, info.password) if info.username and info.password else None
        return httpx.Client(
            base_url=info.server, verify=_ssl_context(info), headers=headers, auth=auth, timeout=30
        )

    def _call(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
              content_type: str = "application/json") -> dict[str, Any] | None:  # fmt: skip
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type}
        try:
            resp = self.http.request(method, path, content=data, params=params, headers=headers)
            if resp.status_code == 401 and self._fixed is None:  # a rotated service-account token
                self.http = self._connect()
                resp = self.http.request(method, path, content=data, params=params, headers=headers)
        except httpx.HTTPError as e:
            raise KubeError(0, str(e)) from e
        if resp.status_code >= 400:
            raise KubeError(resp.status_code, _reason(resp))
        return resp.json() if resp.content else None

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", object_path(api_version, kind, namespace, name))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's field manager; it owns every field it sets."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
        out = self._call("PATCH", path, manifest, params, content_type="application/apply-patch+yaml")
        assert out is not None
        return out

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create the object unless it exists; True when this call created it."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace", ""))
        try:
            self._call("POST", path, manifest)
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        return True

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", object_path(api_version, kind, namespace, name), body)
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        return True

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        """JSON merge patch of the status subresource: keys not in `status` are left alone."""
        path = object_path(api_version, kind, namespace, name) + "/status"
        self._call("PATCH", path, {"status": status}, content_type="application/merge-patch+json")

    def serves(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves this resource (e.g. a CRD that may not be installed)."""
        try:
            out = self._call("GET", f"/apis/{group_version}")
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in (out or {}).get("resources") or ())


def _reason(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("message") or resp.reason_phrase)
    except ValueError:
        return resp.text[:500] or resp.reason_phrase

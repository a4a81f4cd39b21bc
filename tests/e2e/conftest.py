"""The e2e tier: a real Kubernetes control plane on 127.0.0.1, started once per test session.

Fixtures:
    cluster    (session) a running tests/cluster/cluster.py Cluster: .kubeconfig, .server, .bin_dir,
               .ca_file, .env, .node_names, .kubectl(*args), .kubectl_json(*args), .apply(*dicts),
               .run(tool, *args), .log_tails()
    namespace  (function) a fresh namespace (its default ServiceAccount exists), deleted after the test

The binaries come from tests/cluster/build.sh (a no-op when cached). If they cannot be built or the
control plane does not start, the tests fail with the reason: they never skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from cluster import HERE as CLUSTER_DIR
from cluster import Cluster, ClusterError, wait_until

# build.sh's outcome: None until it ran, then "" when it succeeded or the reason it failed.
_build_error: str | None = None


def _build_tools(config: pytest.Config) -> str:
    """Run build.sh once with its progress on the terminal; return "" or why it failed."""
    global _build_error
    if _build_error is not None:
        return _build_error
    capture = config.pluginmanager.getplugin("capturemanager")
    last: deque[str] = deque(maxlen=30)
    with capture.global_and_fixture_disabled():
        proc = subprocess.Popen(
            ["bash", str(CLUSTER_DIR / "build.sh")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            last.append(line)
        returncode = proc.wait()
    _build_error = (
        "" if returncode == 0 else f"tests/cluster/build.sh failed (exit {returncode}):\n{''.join(last)}"
    )
    return _build_error


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build before any test runs, so a cold build (tens of minutes) never counts against a test's timeout."""
    if any("cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        _build_tools(session.config)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running control plane with GRAPHPILOT_E2E_NODES (default 2) fake 8-GPU nodes."""
    error = _build_tools(request.config)
    if error:
        pytest.fail(error, pytrace=False)
    num_nodes = int(os.environ.get("GRAPHPILOT_E2E_NODES", "2"))
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), num_nodes=num_nodes)
    try:
        cluster.start()
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace named after the test, deleted (without waiting) when it ends."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the controller-manager has made the namespace's default ServiceAccount.
    wait_until(
        f"ServiceAccount default in {name}",
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)

"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, controller-manager,
scheduler and kwok with fake GPU nodes.

Used by the e2e fixture (tests/e2e/conftest.py) and by up.sh/down.sh:

    python3 tests/cluster/cluster.py up [--nodes N] [--state-dir DIR]
    python3 tests/cluster/cluster.py down [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from components import apiserver_args, controller_manager_args, etcd_args, kwok_args, scheduler_args
from nodes import gpu_node_manifest
from pki import Pki, create_pki, write_kubeconfig
from procs import Proc, log_tail, start_proc

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GRAPHPILOT_CACHE") or Path.home() / ".cache" / "graphpilot")
STATE_FILE = "cluster.json"
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]


class ClusterError(RuntimeError):
    """The control plane could not start; the message carries the components' log tails."""


def versions() -> dict[str, str]:
    """KUBERNETES_VERSION, ETCD_VERSION, KWOK_VERSION, HELM_VERSION from versions.env."""
    lines = (line.strip() for line in (HERE / "versions.env").read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def default_bin_dir() -> Path:
    return CACHE / f"k8s-{versions()['KUBERNETES_VERSION']}" / "bin"


def default_state_dir() -> Path:
    return CACHE / "cluster"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Cluster:
    """One control plane: its processes, ports, PKI, kubeconfig and logs live in state_dir."""

    def __init__(
        self, state_dir: Path, bin_dir: Path | None = None, num_nodes: int = 2, detach: bool = False
    ) -> None:
        """detach=False ties the processes to this one: they get SIGKILL if it dies without stop()."""
        self.detach = detach
        self.state_dir = Path(state_dir).resolve()
        self.bin_dir = Path(bin_dir or default_bin_dir()).resolve()
        self.num_nodes = num_nodes
        self.kubeconfig = self.state_dir / "admin.kubeconfig"
        self.ca_file = self.state_dir / "pki" / "ca.crt"
        self.ports: dict[str, int] = {}
        self.procs: list[Proc] = []

    # -- user API ------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The API server URL, https://127.0.0.1:<port>."""
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def node_names(self) -> list[str]:
        return [f"gpu-node-{i}" for i in range(self.num_nodes)]

    @property
    def env(self) -> dict[str, str]:
        """Environment for tools run against this cluster: KUBECONFIG set, the bin dir on PATH."""
        path = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def run(
        self, tool: str, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a cached tool (kubectl, helm, ...) against this cluster; raise with its stderr on failure."""
        argv = [str(self.bin_dir / tool), *args]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl <args>` as cluster admin; raise CalledProcessError (with stderr) unless check=False."""
        return self.run("kubectl", *args, input=input, check=check, timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        """`kubectl <args> -o json`, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, *objects: dict[str, Any]) -> None:
        """Server-side apply of manifests given as dicts."""
        items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(items))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> Cluster:
        """Start everything and wait until /readyz answers ok and every fake node is Ready."""
        missing = [b for b in [*COMPONENTS, "kubectl"] if not (self.bin_dir / b).exists()]
        if missing:
            raise ClusterError(f"missing {', '.join(missing)} in {self.bin_dir}; run tests/cluster/build.sh")
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            # Never wipe a directory that an earlier start did not make.
            if not (self.state_dir / STATE_FILE).exists():
                raise ClusterError(f"{self.state_dir} is not empty and holds no control plane; pick another")
            shutil.rmtree(self.state_dir)
        (self.state_dir / "logs").mkdir(parents=True)
        try:
            self._start(timeout)
        except Exception as exc:
            tails = self.log_tails()
            self.stop()
            raise ClusterError(f"control plane failed to start: {exc}\n{tails}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        pki = create_pki(self.state_dir / "pki")
        self.ports = {name: free_port() for name in ["etcd", "etcd-peer", "apiserver", "cm", "scheduler"]}
        self._save()
        self._spawn("etcd", etcd_args(self.state_dir, self.ports))
        etcd_health = f"http://127.0.0.1:{self.ports['etcd']}/health"
        wait_until("etcd /health", lambda: self._answers(etcd_health), timeout)
        self._spawn("kube-apiserver", apiserver_args(self.state_dir, self.ports, pki))
        write_kubeconfig(self.kubeconfig, pki, self.server, "admin", "kubernetes-admin")
        admin = self._admin_tls(pki)
        wait_until("kube-apiserver /readyz", lambda: self._answers(f"{self.server}/readyz", admin), timeout)
        for name, stem, user in [
            ("controller-manager", "controller-manager", "system:kube-controller-manager"),
            ("scheduler", "scheduler", "system:kube-scheduler"),
            ("kwok", "kwok", "kwok-controller"),
        ]:
            write_kubeconfig(self.state_dir / f"{name}.kubeconfig", pki, self.server, stem, user)
        self._spawn("kube-controller-manager", controller_manager_args(self.state_dir, self.ports, pki))
        self._spawn("kube-scheduler", scheduler_args(self.state_dir, self.ports))
        self._spawn("kwok", kwok_args(self.state_dir))
        # Plain create, not apply: the Node's status (GPU capacity) is kept only on create.
        nodes = {"apiVersion": "v1", "kind": "List", "items": [gpu_node_manifest(n) for n in self.node_names]}
        self.kubectl("create", "-f", "-", input=json.dumps(nodes))
        # Their serving certificates are self-signed at start; /healthz needs no client identity.
        insecure = ssl._create_unverified_context()
        cm_healthz = f"https://127.0.0.1:{self.ports['cm']}/healthz"
        wait_until("kube-controller-manager /healthz", lambda: self._answers(cm_healthz, insecure), timeout)
        scheduler_healthz = f"https://127.0.0.1:{self.ports['scheduler']}/healthz"
        wait_until("kube-scheduler /healthz", lambda: self._answers(scheduler_healthz, insecure), timeout)
        self.kubectl(
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            f"--timeout={int(timeout)}s",
            timeout=timeout + 10,
        )
        # Pods need the namespace's default ServiceAccount, which the controller-manager creates.
        wait_until(
            "the default ServiceAccount",
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            timeout,
        )

    def stop(self) -> None:
        """Stop every component (its whole process group), newest first; leave the state dir for its logs."""
        for proc in reversed(self.procs):
            proc.stop()
        self.procs = []
        if (self.state_dir / STATE_FILE).exists():
            self._save()

    def is_running(self) -> bool:
        return bool(self.procs) and all(p.alive() for p in self.procs)

    def log_tails(self, lines: int = 25) -> str:
        logs = sorted((self.state_dir / "logs").glob("*.log")) if (self.state_dir / "logs").exists() else []
        return "\n".join(log_tail(path, lines) for path in logs)

    @classmethod
    def load(cls, state_dir: Path) -> Cluster:
        """Attach to a control plane that `up` started in state_dir."""
        data = json.loads((Path(state_dir) / STATE_FILE).read_text())
        cluster = cls(Path(state_dir), Path(data["bin_dir"]), data["num_nodes"], detach=True)
        cluster.ports = data["ports"]
        cluster.procs = [Proc.from_dict(p) for p in data["procs"]]
        return cluster

    # -- internals -----------------------------------------------------------------------------

    def _save(self) -> None:
        data = {
            "bin_dir": str(self.bin_dir),
            "num_nodes": self.num_nodes,
            "ports": self.ports,
            "server": self.server if "apiserver" in self.ports else None,
            "kubeconfig": str(self.kubeconfig),
            "procs": [p.to_dict() for p in self.procs],
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = self.state_dir / "logs" / f"{name}.log"
        argv = [str(self.bin_dir / name), *args]
        self.procs.append(start_proc(name, argv, log, env, die_with_parent=not self.detach))
        self._save()

    @staticmethod
    def _admin_tls(pki: Pki) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki.ca_crt))
        context.load_cert_chain(str(pki.crt("admin")), str(pki.key("admin")))
        return context

    def _answers(self, url: str, context: ssl.SSLContext | None = None) -> bool:
        """True when url answers 200; raises as soon as any component has exited."""
        for proc in self.procs:
            if not proc.alive():
                raise ClusterError(f"{proc.name} exited")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return bool(response.status == 200)
        except OSError:
            return False


# -- command line ------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    if (state_dir / STATE_FILE).exists():
        old = Cluster.load(state_dir)
        if old.is_running():
            print(f"already running: {old.server}", file=sys.stderr)
            print(f"export KUBECONFIG={old.kubeconfig}")
            return 0
        old.stop()
    cluster = Cluster(state_dir, Path(args.bin_dir) if args.bin_dir else None, args.nodes, detach=True)
    start = time.monotonic()
    print(f"starting the control plane in {cluster.state_dir} ...", file=sys.stderr)
    try:
        cluster.start()
    except ClusterError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"ready in {time.monotonic() - start:.1f}s: {cluster.server}, nodes {', '.join(cluster.node_names)}",
        file=sys.stderr,
    )
    print(f"logs in {cluster.state_dir / 'logs'}; stop it with `make cluster-down`", file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    if not (state_dir / STATE_FILE).exists():
        print(f"no control plane in {state_dir}", file=sys.stderr)
        return 0
    Cluster.load(state_dir).stop()
    print(f"stopped; logs kept in {state_dir / 'logs'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ["up", "down"]:
        cmd = sub.add_parser(name)
        cmd.add_argument("--state-dir", default=str(default_state_dir()), help="default: %(default)s")
        if name == "up":
            cmd.add_argument("--nodes", type=int, default=2, help="fake GPU nodes (default: %(default)s)")
            cmd.add_argument("--bin-dir", help=f"binaries (default: {default_bin_dir()})")
    args = parser.parse_args(argv)
    return _up(args) if args.command == "up" else _down(args)


if __name__ == "__main__":
    sys.exit(main())

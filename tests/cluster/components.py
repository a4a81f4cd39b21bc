"""Command-line flags of each control-plane component: everything on 127.0.0.1, state under state_dir."""

from __future__ import annotations

from pathlib import Path

from pki import FRONT_PROXY_CLIENT, SERVICE_CLUSTER_IP_RANGE, Pki


def etcd_args(state_dir: Path, ports: dict[str, int]) -> list[str]:
    client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
    return [
        "--name=graphpilot-test",
        f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=graphpilot-test={peer}",
        "--log-level=warn",
        # Test data is disposable: skipping fsync makes every write an order of magnitude faster.
        "--unsafe-no-fsync",
    ]


def apiserver_args(state_dir: Path, ports: dict[str, int], pki: Pki) -> list[str]:
    return [
        f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['apiserver']}",
        "--advertise-address=127.0.0.1",
        # The in-cluster `kubernetes` Service cannot point at a loopback address; nothing in-cluster needs it.
        "--endpoint-reconciler-type=none",
        f"--tls-cert-file={pki.crt('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--client-ca-file={pki.ca_crt}",
        f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.crt('front-proxy-client')}",
        f"--proxy-client-key-file={pki.key('front-proxy-client')}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        f"--cert-dir={state_dir / 'apiserver'}",
        "--profiling=false",
    ]


def controller_manager_args(state_dir: Path, ports: dict[str, int], pki: Pki) -> list[str]:
    kubeconfig = state_dir / "controller-manager.kubeconfig"
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['cm']}",
        f"--cert-dir={state_dir / 'controller-manager'}",
        "--leader-elect=false",
        # `*` runs every default controller: service accounts and their tokens, garbage collection,
        # deployments, replica sets, node lifecycle, namespaces, ...
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_crt}",
        f"--cluster-signing-cert-file={pki.ca_crt}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--profiling=false",
    ]


def scheduler_args(state_dir: Path, ports: dict[str, int]) -> list[str]:
    kubeconfig = state_dir / "scheduler.kubeconfig"
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['scheduler']}",
        f"--cert-dir={state_dir / 'scheduler'}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def kwok_args(state_dir: Path) -> list[str]:
    kwok_dir = state_dir / "kwok"
    kwok_dir.mkdir(exist_ok=True)
    config = kwok_dir / "kwok.yaml"
    # An explicit, empty configuration: kwok's built-in node and pod stages (nodes Ready with
    # leases, pods Running and Ready), and nothing read from the user's home directory.
    config.write_text("apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n")
    return [
        f"--kubeconfig={state_dir / 'kwok.kubeconfig'}",
        f"--config={config}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--node-lease-duration-seconds=40",
        "--cidr=10.244.0.0/16",
        "--node-ip=10.240.0.1",
    ]

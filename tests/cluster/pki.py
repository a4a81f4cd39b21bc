"""Certificates and kubeconfigs for the local control plane, made with the openssl CLI."""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# The first address of the service range is the in-cluster `kubernetes` Service.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
APISERVER_SANS = [
    "IP:127.0.0.1",
    f"IP:{KUBERNETES_SERVICE_IP}",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
]
# Client identities: (file stem, common name = user, organisation = group or None).
CLIENTS = [
    ("admin", "kubernetes-admin", "system:masters"),
    ("controller-manager", "system:kube-controller-manager", None),
    ("scheduler", "system:kube-scheduler", None),
    ("kwok", "kwok-controller", "system:masters"),
]
FRONT_PROXY_CLIENT = "front-proxy-client"
DAYS = "3650"
LEAF = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"


@dataclass(frozen=True)
class Pki:
    """Paths of the files one control plane needs."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl(
        *["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"],
        path.name,
        cwd=path.parent,
    )


def _self_signed_ca(pki: Pki, stem: str, common_name: str) -> None:
    _ec_key(pki.key(stem))
    _openssl(*f"req -x509 -new -key {stem}.key -subj /CN={common_name} -days {DAYS} -out {stem}.crt".split(),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=pki.dir)  # fmt: skip


def _sign(pki: Pki, name: str, subject: str, extensions: str, ca: str = "ca") -> None:
    """Issue `name`.crt for a new `name`.key, signed by the CA `ca`."""
    ext = pki.dir / f"{name}.ext"
    ext.write_text(LEAF + extensions)
    _ec_key(pki.key(name))
    csr = f"{name}.csr"
    _openssl("req", "-new", "-key", pki.key(name).name, "-subj", subject, "-out", csr, cwd=pki.dir)
    _openssl(*f"x509 -req -in {csr} -CA {ca}.crt -CAkey {ca}.key -CAcreateserial -days {DAYS}".split(),
             *f"-sha256 -extfile {ext.name} -out {name}.crt".split(), cwd=pki.dir)  # fmt: skip
    (pki.dir / csr).unlink()
    ext.unlink()


def create_pki(dir: Path) -> Pki:
    """CAs, apiserver serving cert, client certs and the service-account key pair."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed; it makes the control plane's certificates")
    dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(dir)
    _self_signed_ca(pki, "ca", "graphpilot-test-ca")
    san = ",".join(APISERVER_SANS)
    _sign(pki, "apiserver", "/CN=kube-apiserver", f"extendedKeyUsage=serverAuth\nsubjectAltName={san}\n")
    for stem, user, group in CLIENTS:
        subject = f"/CN={user}" + (f"/O={group}" if group else "")
        _sign(pki, stem, subject, "extendedKeyUsage=clientAuth\n")
    # The aggregation layer's own CA: the apiserver proxies to extension API servers with this client
    # cert, and the controller-manager and scheduler find it in extension-apiserver-authentication.
    _self_signed_ca(pki, "front-proxy-ca", "graphpilot-test-front-proxy-ca")
    _sign(pki, "front-proxy-client", f"/CN={FRONT_PROXY_CLIENT}", "extendedKeyUsage=clientAuth\n",
          ca="front-proxy-ca")  # fmt: skip
    # Service-account tokens are signed with RS256, which every client verifies.
    _openssl(*["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"], cwd=dir)
    _openssl(*["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"], cwd=dir)
    for path in dir.iterdir():
        if path.suffix == ".key":
            path.chmod(0o600)
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, pki: Pki, server: str, client: str, user: str) -> Path:
    """A kubeconfig with embedded certificates, so it keeps working when copied elsewhere."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: graphpilot-test
  cluster:
    server: {server}
    certificate-authority-data: {_b64(pki.ca_crt)}
users:
- name: {user}
  user:
    client-certificate-data: {_b64(pki.crt(client))}
    client-key-data: {_b64(pki.key(client))}
contexts:
- name: graphpilot-test
  context:
    cluster: graphpilot-test
    user: {user}
current-context: graphpilot-test
"""
    )
    path.chmod(0o600)
    return path

#!/usr/bin/env bash
# Start the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok GPU nodes)
# from the binaries build.sh cached, and print the KUBECONFIG export line.
# Arguments go to `cluster.py up`: --nodes N, --state-dir DIR, --bin-dir DIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/cluster.py" up "$@"

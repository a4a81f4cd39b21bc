#!/usr/bin/env bash
# Stop the control plane that up.sh started; its logs stay in the state dir.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/cluster.py" down "$@"

#!/usr/bin/env bash
# Installs the Debian packages the tests need (a fresh machine has none of them).
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  echo "system-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "system-deps: ok ($(prometheus --version 2>&1 | head -1))"

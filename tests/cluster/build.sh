#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, helm) from the Go module proxy and cache it by version.
#
# A no-op when the cache already holds binaries built from the same versions and modules.
# Environment:
#   GRAPHPILOT_CACHE   cache root (default: $HOME/.cache/graphpilot)
#   BUILD_JOBS         go build -p (default: number of CPUs)
#   FORCE=1            rebuild even when the cache is up to date
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${GRAPHPILOT_CACHE:-$HOME/.cache/graphpilot}"
bin_dir="$cache_root/k8s-$KUBERNETES_VERSION/bin"
stamp="$bin_dir/.stamp"
binaries=(etcd kwok helm kubectl kube-scheduler kube-controller-manager kube-apiserver)
jobs="${BUILD_JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"

log() { printf '[cluster-tools] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "Go is not installed (need Go >= 1.25 to build the control plane)"

# The stamp is the versions, the pinned modules, this script (its flags) and the Go toolchain:
# any change rebuilds.
want_stamp() {
    {
        cat "$here/versions.env" "$here/build.sh"
        go env GOVERSION GOOS GOARCH
        cat "$here"/modules/*/go.mod "$here"/modules/*/go.sum "$here"/modules/*/*.go
    } | sha256sum | cut -d' ' -f1
}
want="$(want_stamp)"

up_to_date() {
    [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || return 1
    for b in "${binaries[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done
}

report_up_to_date() {
    log "up to date: Kubernetes v$KUBERNETES_VERSION, etcd v$ETCD_VERSION, kwok v$KWOK_VERSION, helm v$HELM_VERSION in $bin_dir"
}
if [[ "${FORCE:-0}" != 1 ]] && up_to_date; then
    report_up_to_date
    exit 0
fi

# One build at a time per version: a second caller waits, then finds the first one's result.
mkdir -p "$bin_dir"
if command -v flock >/dev/null; then
    exec 9>"$bin_dir/../.build.lock"
    if ! flock -n 9; then
        log "another build of the same version is running; waiting for it"
        flock 9
        if [[ "${FORCE:-0}" != 1 ]] && up_to_date; then
            report_up_to_date
            exit 0
        fi
    fi
fi

# A module's go.mod must pin exactly the version named in versions.env.
check_pin() {  # module-dir module-path version (read from go.mod itself: works offline)
    local got
    got="$(sed -nE "s#^(require)?[[:space:]]*$2 (v[^[:space:]]+).*#\2#p" "$here/modules/$1/go.mod" | head -1)"
    [[ "$got" == "$3" ]] ||
        die "tests/cluster/versions.env says $2 $3 but tests/cluster/modules/$1/go.mod pins ${got:-nothing}; update one to match the other"
}

download() {  # module-dir
    local out
    if ! out="$(cd "$here/modules/$1" && go mod download 2>&1)"; then
        die "cannot download the Go modules of tests/cluster/modules/$1 from GOPROXY=$(go env GOPROXY).
The control plane is built from the Go module proxy; check the network or GOPROXY.
$(tail -5 <<<"$out")"
    fi
}

release_time() {  # module-dir module-path: the module's publication time, a reproducible build date
    (cd "$here/modules/$1" && go list -mod=readonly -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "$2")
}

elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# Prints a heartbeat every minute so a long cold build never looks stuck.
heartbeat() {  # name start
    # sleep must not hold our stdout: a reader waiting for EOF would wait for it after we exit.
    while sleep 60 </dev/null >/dev/null 2>&1; do log "  ... still building $1 ($(elapsed "$2"))"; done
}

build() {  # index name module-dir package ldflags
    local i="$1" name="$2" dir="$3" pkg="$4" ldflags="$5" start hb
    start=$(date +%s)
    log "[$i/${#binaries[@]}] building $name"
    heartbeat "$name" "$start" &
    hb=$!
    if ! (cd "$here/modules/$dir" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -p "$jobs" -trimpath \
        -ldflags "-s -w $ldflags" -o "$tmp_dir/$name" "$pkg"); then
        kill "$hb" 2>/dev/null || true
        die "building $name failed (see the go output above)"
    fi
    kill "$hb" 2>/dev/null || true
    wait "$hb" 2>/dev/null || true
    log "[$i/${#binaries[@]}] $name done in $(elapsed "$start")"
}

check_pin kubernetes k8s.io/kubernetes "v$KUBERNETES_VERSION"
check_pin etcd go.etcd.io/etcd/server/v3 "v$ETCD_VERSION"
check_pin kwok sigs.k8s.io/kwok "v$KWOK_VERSION"
check_pin helm helm.sh/helm/v3 "v$HELM_VERSION"

total_start=$(date +%s)
log "building Kubernetes v$KUBERNETES_VERSION, etcd v$ETCD_VERSION, kwok v$KWOK_VERSION, helm v$HELM_VERSION into $bin_dir"
log "a cold build compiles thousands of packages and takes tens of minutes on a small machine"
for m in kubernetes etcd kwok helm; do
    log "downloading modules for $m"
    download "$m"
done

tmp_dir="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$tmp_dir"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT

k8s_minor="${KUBERNETES_VERSION#*.}"
k8s_minor="${k8s_minor%%.*}"
k8s_date="$(release_time kubernetes k8s.io/kubernetes)"
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=v$KUBERNETES_VERSION -X $pkg.gitMajor=${KUBERNETES_VERSION%%.*}"
    k8s_ldflags+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=${k8s_date:-1970-01-01T00:00:00Z}"
    k8s_ldflags+=" -X $pkg.gitCommit="
done
kwok_ldflags="-X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=v$KUBERNETES_VERSION"
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
# as helm's own release build: the Kubernetes version it assumes without a cluster (helm template,
# lint) is that of the client-go it links, not its 1.20 fallback
helm_k8s=$(awk '$1 == "k8s.io/client-go" {print $2}' "$here/modules/helm/go.mod")
helm_k8s_minor=$(echo "$helm_k8s" | cut -d. -f2)
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_k8s_minor"
done

build 1 etcd etcd . ""
build 2 kwok kwok sigs.k8s.io/kwok/cmd/kwok "$kwok_ldflags"
build 3 helm helm helm.sh/helm/v3/cmd/helm "$helm_ldflags"
build 4 kubectl kubernetes k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
build 5 kube-scheduler kubernetes k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
build 6 kube-controller-manager kubernetes k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build 7 kube-apiserver kubernetes k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"

for b in "${binaries[@]}"; do mv -f "$tmp_dir/$b" "$bin_dir/$b"; done
echo "$want" >"$stamp"
log "done in $(elapsed "$total_start"): $(du -sh "$bin_dir" | cut -f1) in $bin_dir"

# Source this to import graphpilot from a source tree without installing it (e.g. on a GPU machine
# that has torch but no package index):  . hack/source-env.sh
_gp_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_gp_site=$(mktemp -d)/site
mkdir -p "$_gp_site/graphpilot"
for _d in runtime sidecar operator; do ln -sfn "$_gp_root/$_d" "$_gp_site/graphpilot/$_d"; done
export PYTHONPATH="$_gp_site${PYTHONPATH:+:$PYTHONPATH}"
unset _gp_root _gp_site _d

#!/usr/bin/env bash
# Sets vbm up (system packages, release build) and runs the service with its state in ./vbm-data
# and its backup repository in ./vbm-repo (created on first start). Prints an API key on first
# start. Override with VBM_DATA, VBM_REPO, VBM_LISTEN (default 127.0.0.1:8080).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh >&2
vbm="${CARGO_TARGET_DIR:-target}/release/vbm"
data=${VBM_DATA:-$root/vbm-data}
repo=${VBM_REPO:-$root/vbm-repo}
mkdir -p "$data"
if [ ! -e "$data/.first-key-printed" ]; then
	echo "== an admin API key for the REST API (shown once; keep it):" >&2
	"$vbm" apikey create --data "$data" --name first-admin >&2
	touch "$data/.first-key-printed"
fi
exec "$vbm" serve --data "$data" --repo "$repo" --init-repo --listen "${VBM_LISTEN:-127.0.0.1:8080}"

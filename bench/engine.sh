#!/usr/bin/env bash
# The engine benchmark (issue 5): full backup, day-2 incremental and restore of a 4 GiB ext4 image
# served by the testbed over HTTPS, each next to its limit measured in the same run (raw curl,
# the repository codec's 2-core ceiling) and next to restic and borg on the same data.
#
#   bench/engine.sh            prints a Markdown report (copy it into bench/RESULTS.md)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/deps.sh
missing=()
for p in restic borgbackup curl; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
image=$(bash bench/make-image.sh)
work=${VBM_BENCH_DIR:-/var/tmp/vbm-bench}/engine-work
cargo build --release -p vbm-engine --example engine_bench >&2
# The benchmark writes "day 2" into its disk: work on a copy, keep the cached image pristine.
disk=${VBM_BENCH_DIR:-/var/tmp/vbm-bench}/engine-disk.img
cp --sparse=always "$image" "$disk"
trap 'rm -f "$disk"' EXIT
"${CARGO_TARGET_DIR:-target}/release/examples/engine_bench" --image "$disk" --work "$work" "$@"

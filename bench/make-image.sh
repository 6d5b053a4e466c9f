#!/usr/bin/env bash
# The benchmarks' realistic disk: a 4 GiB raw image holding an ext4 file system filled with real
# files of this machine (shared libraries, binaries, docs, a JVM, compilers: a mix of compressible
# and incompressible data, ~3.3 GiB used). Cached: built once per machine.
#
#   bench/make-image.sh [OUT]      default ${VBM_BENCH_DIR:-/var/tmp/vbm-bench}/usr-4g.img
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${VBM_BENCH_DIR:-/var/tmp/vbm-bench}
out=${1:-$dir/usr-4g.img}
if [ -s "$out" ]; then
	echo "$out"
	exit 0
fi
mkdir -p "$dir"
stage=$(mktemp -d "$dir/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# Hard links (same file system) or copies: mkfs.ext4 -d reads one tree.
for src in /usr/share /usr/bin /usr/lib/x86_64-linux-gnu /usr/lib/jvm /usr/lib/llvm-14 /usr/lib/go-1.19; do
	[ -d "$src" ] || continue
	mkdir -p "$stage$(dirname "$src")"
	cp -al "$src" "$stage$src" 2>/dev/null || cp -a "$src" "$stage$src"
done
bash "$root/testbed/mkimage.sh" "$stage" "$out" 4G >/dev/null
echo "$out"

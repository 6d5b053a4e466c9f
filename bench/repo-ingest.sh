#!/usr/bin/env bash
# Repository ingest/restore throughput against the raw limits of the same data (issue 4).
#
#   bash bench/repo-ingest.sh            # VBM_BENCH_DIR (default /var/tmp/vbm-bench) caches the image
#
# Uses the benchmarks' shared realistic disk (bench/make-image.sh: a 4 GiB raw ext4 image filled
# with ~3.3 GiB of this machine's /usr, cached). Without that script, or with VBM_BENCH_SRC set,
# it builds its own (mkfs.ext4 -d from that directory; if it does not fit, its largest
# subdirectories are left out of a hard-link copy until it does). Then it runs crates/repo/examples/ingest_bench.rs in release mode, which
# prints SHA-256 and zstd rates (1 core), plain file write+fsync and cold read rates, and the
# repository's ingest and restore throughput on both cores, all from the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

bench_dir="${VBM_BENCH_DIR:-/var/tmp/vbm-bench}"
src="${VBM_BENCH_SRC:-/usr}"
threads="${VBM_BENCH_THREADS:-$(( $(nproc) + 1 ))}"
level="${VBM_BENCH_LEVEL:-3}"
img="$bench_dir/ext4-4g.img"
mkdir -p "$bench_dir"

if ! command -v mkfs.ext4 >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq e2fsprogs >/dev/null
fi

if [ -z "${VBM_BENCH_SRC:-}" ] && [ -f bench/make-image.sh ]; then
  img=$(bash bench/make-image.sh)
  src="$img (bench/make-image.sh)"
elif [ ! -s "$img" ]; then
  budget=$(( 3300 * 1024 * 1024 ))   # leaves room for ext4 metadata in 4 GiB
  stage="$src"
  if [ "$(du -sb "$src" | cut -f1)" -gt "$budget" ]; then
    stage="$bench_dir/stage"
    rm -rf "$stage"; mkdir -p "$stage"
    cp -al "$src/." "$stage/" 2>/dev/null || cp -a "$src/." "$stage/"
    while [ "$(du -sb "$stage" | cut -f1)" -gt "$budget" ]; do
      biggest=$(find "$stage" -mindepth 2 -maxdepth 2 -type d -exec du -sb {} + | sort -n | tail -n 1 | cut -f2)
      echo "image: leaving out ${biggest#"$stage"/} to fit 4 GiB" >&2
      rm -rf "$biggest"
    done
  fi
  echo "building $img from $src ..." >&2
  rm -f "$img.tmp"
  truncate -s 4G "$img.tmp"
  mkfs.ext4 -q -F -d "$stage" "$img.tmp"
  mv "$img.tmp" "$img"
  [ "$stage" = "$src" ] || rm -rf "$stage"
fi

cargo build --release --quiet -p vbm-repo --example ingest_bench
target="${CARGO_TARGET_DIR:-target}"
echo "== vbm repository benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -r), source $src)"
"$target/release/examples/ingest_bench" --image "$img" --workdir "$bench_dir" \
  --threads "$threads" --level "$level"

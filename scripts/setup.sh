#!/usr/bin/env bash
# Sets vbm up on a fresh Debian machine: system packages, then a release build.
# The binary ends up at ./target/release/vbm (or $CARGO_TARGET_DIR/release/vbm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --locked -p vbm
bin="${CARGO_TARGET_DIR:-target}/release/vbm"
echo "vbm is built: $bin"
"$bin" --version

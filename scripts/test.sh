#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what the tests need, check formatting and lints,
# then run every test (unit, integration against the vCenter testbed, fault-matrix tests).
# Ends with the test runner's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

# Keep build artefacts outside the clone so a fresh clone reuses them (override with CARGO_TARGET_DIR).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vbm/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

start=$(date +%s)
echo "== testbed"
bash testbed/build.sh >/dev/null
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo nextest"
log="$(mktemp -t vbm-nextest.XXXXXX)"
set +e
cargo nextest run --workspace --locked --profile ci 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "== suite took $(( $(date +%s) - start ))s"
# The runner's own summary line comes last.
grep -E '^\s+Summary \[' "$log" | tail -n 1 || echo "no test summary (the build failed?)"
exit "$status"

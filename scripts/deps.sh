#!/usr/bin/env bash
# Installs, idempotently, the system packages vbm's build, tests and demo need on Debian 12.
# Runs `apt-get update` only when something is missing. Safe to run again and again.
set -euo pipefail

packages=(
  golang-go                         # builds testbed/vcsim (the vCenter simulator)
  golang-github-vmware-govmomi-dev  # govmomi 0.24: the simulator itself
  e2fsprogs                         # mkfs.ext4 -d: realistic disk images for benchmarks
  util-linux                        # flock: one testbed build at a time
  ca-certificates
  prometheus                        # promtool: vbm-server's /metrics test
  faketime                          # vbm-server's clock-jump tests (T1)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "deps: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "deps: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "deps: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest >&2
fi

# schemathesis (PyPI): vbm-server's schema-driven API test (FAULT-MATRIX I1).
if ! command -v schemathesis >/dev/null 2>&1; then
  echo "deps: installing schemathesis" >&2
  python3 -m pip install -q schemathesis >&2 || pip3 install -q --break-system-packages schemathesis >&2
fi

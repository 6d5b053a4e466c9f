#!/usr/bin/env bash
# Builds the vCenter testbed (testbed/vcsim, Go, GOPATH mode against Debian's govmomi 0.24).
#
#   testbed/build.sh            -> builds ${VBM_TESTBED_BIN:-<repo>/target/testbed/vbm-vcsim}
#
# Installs golang-go and golang-github-vmware-govmomi-dev with apt-get when they are missing.
# Does nothing when the binary is newer than every source file. The last line on stdout is the
# path of the binary; everything else goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${VBM_TESTBED_BIN:-$root/target/testbed/vbm-vcsim}"
gopath=/usr/share/gocode
govmomi="$gopath/src/github.com/vmware/govmomi/simulator"

log() { echo "testbed/build.sh: $*" >&2; }

find_go() {
	# Prefer Debian's Go (the one govmomi 0.24 was packaged for), then whatever is on PATH.
	if [ -x /usr/lib/go/bin/go ]; then
		echo /usr/lib/go/bin/go
	elif command -v go >/dev/null 2>&1; then
		command -v go
	fi
}

up_to_date() {
	[ -x "$out" ] || return 1
	[ -z "$(find "$here/vcsim" "$here/build.sh" -newer "$out" \( -name '*.go' -o -name build.sh \) -print -quit)" ]
}

if up_to_date; then
	log "up to date"
	echo "$out"
	exit 0
fi

GO="$(find_go)"
if [ -z "$GO" ] || [ ! -d "$govmomi" ]; then
	log "installing golang-go and golang-github-vmware-govmomi-dev"
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || { log "not root and no sudo: install golang-go golang-github-vmware-govmomi-dev"; exit 1; }
		sudo="sudo"
	fi
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -q >&2
	$sudo apt-get install -y -q --no-install-recommends golang-go golang-github-vmware-govmomi-dev >&2
	GO="$(find_go)"
fi
[ -n "$GO" ] || { log "no go binary after installation"; exit 1; }

cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vbm-go-build"
mkdir -p "$cache" "$(dirname "$out")"
start=$(date +%s)
# GOPATH mode: /usr/share/gocode is read-only and only read; the package builds from its own
# directory (import path "_/.../testbed/vcsim"), so no go.mod is needed.
(
	cd "$here/vcsim"
	env -u GOFLAGS GO111MODULE=off GOPATH="$gopath" GOCACHE="$cache" GOTOOLCHAIN=local \
		"$GO" build -trimpath -o "$out.tmp.$$" . >&2
)
mv -f "$out.tmp.$$" "$out"
log "built $out with $("$GO" version | cut -d' ' -f3) in $(( $(date +%s) - start ))s"
echo "$out"

#!/usr/bin/env bash
# A tour of vbm without a vCenter: starts the testbed (govmomi's vCenter simulator, extended with
# real disk files and Changed Block Tracking), then lists its VMs, backs one up (full), simulates
# a guest write, backs it up again (incremental: only the changed blocks travel), verifies, and
# restores to a directory, checking the restored disk against the source.
#
#   bash scripts/demo.sh            (the testbed stops when the script ends)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/deps.sh
cargo build --release --locked -p vbm >&2
vbm="${CARGO_TARGET_DIR:-target}/release/vbm"
testbed=$(bash testbed/build.sh | tail -n 1)

work=$(mktemp -d -t vbm-demo.XXXXXX)
ready="$work/testbed.json"
# The testbed exits when its stdin closes, i.e. when this script ends.
coproc TESTBED { exec "$testbed" --spec testbed/specs/demo.json --data-dir "$work/datastores" --exit-on-stdin-eof 2>"$work/testbed.log"; }
read -r line <&"${TESTBED[0]}"
echo "$line" >"$ready"
field() { python3 -c "import json,sys; print(json.load(open('$ready'))['$1'])"; }
url=$(field sdk_url) user=$(field user) thumbprint=$(field thumbprint_sha256)
export VCENTER_PASSWORD=$(field password)
vc=(--vcenter "$url" --user "$user" --thumbprint "$thumbprint")
control="${url%/sdk}/_testbed"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step vbm vms list "${vc[@]}"
"$vbm" vms list "${vc[@]}"

step vbm repo init "$work/repo"
"$vbm" repo init "$work/repo"

step vbm backup "${vc[@]}" --vm web-frontend --repo "$work/repo"
"$vbm" backup "${vc[@]}" --vm web-frontend --repo "$work/repo"

echo
echo "# the guest writes 1 MiB into its disk (the testbed's control endpoint plays the guest)"
curl -sk -X POST "$control/vms/web-frontend/disks/2000/write" -d '{"offset": 10485760, "length": 1048576, "seed": 7}' >/dev/null

step vbm backup "${vc[@]}" --vm web-frontend --repo "$work/repo"
"$vbm" backup "${vc[@]}" --vm web-frontend --repo "$work/repo"

step vbm backups list --repo "$work/repo"
"$vbm" backups list --repo "$work/repo"

step vbm verify --repo "$work/repo"
"$vbm" verify --repo "$work/repo"

latest=$("$vbm" backups list --repo "$work/repo" --json | python3 -c "import json,sys; print(json.load(sys.stdin)[-1]['id'])")
step vbm restore --repo "$work/repo" --backup "$latest" --to-dir "$work/restored"
"$vbm" restore --repo "$work/repo" --backup "$latest" --to-dir "$work/restored"

source_sha=$(curl -sk "$control/vms/web-frontend/disks/2000/sha256" | python3 -c "import json,sys; print(json.load(sys.stdin)['sha256'])")
restored_sha=$(sha256sum "$work/restored/web-frontend/web-frontend-flat.vmdk" | cut -d' ' -f1)
echo
echo "source disk   sha256 $source_sha"
echo "restored disk sha256 $restored_sha"
[ "$source_sha" = "$restored_sha" ] && echo "identical." || { echo "DIFFERENT" >&2; exit 1; }
echo
echo "Files are in $work. Next: 'vbm serve' runs the same as a service with schedules, retention and a REST API (see README)."

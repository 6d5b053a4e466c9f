#!/usr/bin/env bash
# Makes a raw ext4 disk image from a directory, for benchmarks and realistic testbed disks:
#
#   testbed/mkimage.sh DIR OUT SIZE        e.g. testbed/mkimage.sh /usr/share/doc /tmp/doc.img 512M
#
# SIZE is anything truncate(1) accepts (bytes, or 512M, 2G, ...). Use a multiple of 1 MiB so the
# image can serve as a testbed disk ({"fill": {"kind": "image", "path": OUT}}) as it is.
# Installs e2fsprogs when mkfs.ext4 is missing. Prints OUT as the last line.
set -euo pipefail

if [ $# -ne 3 ]; then
	echo "usage: $0 DIR OUT SIZE" >&2
	exit 2
fi
dir=$1 out=$2 size=$3
[ -d "$dir" ] || { echo "mkimage.sh: $dir is not a directory" >&2; exit 2; }

mkfs=$(command -v mkfs.ext4 || true)
[ -n "$mkfs" ] || [ ! -x /sbin/mkfs.ext4 ] || mkfs=/sbin/mkfs.ext4
if [ -z "$mkfs" ]; then
	echo "mkimage.sh: installing e2fsprogs" >&2
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q e2fsprogs >&2
	mkfs=$(command -v mkfs.ext4 || echo /sbin/mkfs.ext4)
fi

rm -f "$out"
trap 'rm -f "$out"' ERR
truncate -s "$size" "$out"
# -d copies the directory tree into the new file system (e2fsprogs >= 1.43); no mount, no root needed.
"$mkfs" -q -F -d "$dir" "$out"
echo "$out"

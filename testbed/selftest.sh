#!/usr/bin/env bash
# Black-box self-test of the vCenter testbed with curl and jq: starts the binary with
# specs/default.json and specs/awkward.json and checks sessions, inventory, snapshots + changeIds,
# QueryChangedDiskAreas paging, /folder transfers and auth, RegisterVM, and every fault kind.
#
#   testbed/selftest.sh            (builds the binary first via build.sh)
#
# Ends with "N passed, M failed"; exits non-zero when anything failed.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin="$("$here/build.sh" | tail -n 1)" || { echo "build failed" >&2; exit 1; }
command -v jq >/dev/null || { echo "selftest.sh needs jq (apt-get install jq)" >&2; exit 1; }

tmp="$(mktemp -d)"
pid=""
trap 'stop_tb; rm -rf "$tmp"' EXIT

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok - $1"; }
no() { fail=$((fail + 1)); echo "not ok - $1${2:+ ($2)}"; }
check() { # check NAME COMMAND... : passes when the command succeeds
	local name=$1
	shift
	if "$@" >/dev/null 2>&1; then ok "$name"; else no "$name"; fi
}
eq() { # eq NAME EXPECTED ACTUAL
	if [ "$2" == "$3" ]; then ok "$1"; else no "$1" "expected [$2], got [$3]"; fi
}

# --- testbed lifecycle ------------------------------------------------------------------------------

start_tb() {
	local spec=$1
	rm -f "$tmp/stdin" "$tmp/out" "$tmp/err"
	mkfifo "$tmp/stdin"
	local t0
	t0=$(date +%s%N)
	"$bin" --spec "$spec" --plain-listen 127.0.0.1:0 --exit-on-stdin-eof <"$tmp/stdin" >"$tmp/out" 2>"$tmp/err" &
	pid=$!
	exec 3>"$tmp/stdin" # holding the fifo open keeps the testbed alive; closing it stops it
	for _ in $(seq 200); do
		[ -s "$tmp/out" ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.02
	done
	startup_ms=$((($(date +%s%N) - t0) / 1000000))
	if ! [ -s "$tmp/out" ]; then
		echo "testbed did not start:" >&2
		cat "$tmp/err" >&2
		return 1
	fi
	SDK=$(jq -r .sdk_url "$tmp/out")
	CTL=$(jq -r .control_url "$tmp/out")
	PLAIN=$(jq -r .plain_sdk_url "$tmp/out")
	BASE=${SDK%/sdk}
	USER_=$(jq -r .user "$tmp/out")
	PASS_=$(jq -r .password "$tmp/out")
	jq -r .cert_pem "$tmp/out" >"$tmp/ca.pem"
	rm -f "$tmp/cookies"
}

stop_tb() {
	if [ -n "$pid" ]; then
		exec 3>&- 2>/dev/null
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		pid=""
	fi
}

# --- helpers ----------------------------------------------------------------------------------------

uri() { jq -rn --arg s "$1" '$s|@uri'; }
xmlesc() { printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'; }

# soap BODY -> response body in $tmp/resp, HTTP status echoed
soap() {
	curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -c "$tmp/cookies" -o "$tmp/resp" -w '%{http_code}' \
		-H 'Content-Type: text/xml; charset=utf-8' -H 'SOAPAction: urn:vim25/6.5' \
		--data-binary "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>$1</soapenv:Body></soapenv:Envelope>" \
		"$SDK"
}
resp() { cat "$tmp/resp"; }
# xval TAG: text of every <TAG ...>text</TAG> in the last response, one per line
xval() {
	grep -o "<$1[^>]*>[^<]*</$1>" "$tmp/resp" | sed -e 's/^<[^>]*>//' -e 's/<[^>]*>$//' \
		-e 's/&lt;/</g' -e 's/&gt;/>/g' -e 's/&quot;/"/g' -e "s/&#39;/'/g" -e 's/&amp;/\&/g'
}
faulttype() { grep -o 'Fault xmlns="urn:vim25" xsi:type="[^"]*"' "$tmp/resp" | sed 's/.*xsi:type="//; s/"$//'; }

ctl() { # ctl METHOD PATH [JSON]
	if [ $# -ge 3 ]; then
		curl -sS --cacert "$tmp/ca.pem" -X "$1" -H 'Content-Type: application/json' --data-binary "$3" "$CTL$2"
	else
		curl -sS --cacert "$tmp/ca.pem" -X "$1" "$CTL$2"
	fi
}

# Manager morefs of the simulated vCenter; the ESX section switches them to ESXi's.
SM=SessionManager
PC=propertyCollector
ROOT=group-d1

login() {
	rm -f "$tmp/cookies"
	soap "<Login xmlns=\"urn:vim25\"><_this type=\"SessionManager\">$SM</_this><userName>$(xmlesc "$1")</userName><password>$(xmlesc "$2")</password></Login>"
}

rp() { # rp TYPE MOID PATHS... : RetrievePropertiesEx of one object
	local type=$1 moid=$2 paths=""
	shift 2
	for p in "$@"; do paths="$paths<pathSet>$p</pathSet>"; done
	soap "<RetrievePropertiesEx xmlns=\"urn:vim25\"><_this type=\"PropertyCollector\">$PC</_this><specSet><propSet><type>$type</type>$paths</propSet><objectSet><obj type=\"$type\">$(xmlesc "$moid")</obj></objectSet></specSet><options/></RetrievePropertiesEx>"
}

vm_names_via_soap() {
	soap "<CreateContainerView xmlns=\"urn:vim25\"><_this type=\"ViewManager\">ViewManager</_this><container type=\"Folder\">$ROOT</container><type>VirtualMachine</type><recursive>true</recursive></CreateContainerView>" >/dev/null
	local view
	view=$(xval returnval)
	soap "<RetrievePropertiesEx xmlns=\"urn:vim25\"><_this type=\"PropertyCollector\">$PC</_this><specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet></propSet><objectSet><obj type=\"ContainerView\">$view</obj><skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><name>v</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet><options><maxObjects>100</maxObjects></options></RetrievePropertiesEx>" >/dev/null
	xval val | sort
}

task_wait() { # task_wait TASKMOID -> sets task_state, task_result, task_fault, task_message
	task_state=""
	for _ in $(seq 50); do
		rp Task "$1" info.state info.result info.error >/dev/null
		task_state=$(grep -o 'TaskInfoState">[a-z]*' "$tmp/resp" | sed 's/.*>//')
		case $task_state in success | error) break ;; esac
		sleep 0.05
	done
	task_result=$(grep -o '<name>info.result</name><val[^>]*>[^<]*' "$tmp/resp" | sed 's/.*>//')
	task_fault=$(grep -o '<fault [^>]*type="[^"]*"' "$tmp/resp" | sed 's/.*type="//; s/"$//')
	task_message=$(grep -o '<localizedMessage>[^<]*' "$tmp/resp" | sed 's/.*>//')
}

create_snapshot() { # create_snapshot VMMOID NAME -> sets snap to the new snapshot's moid ("" on failure)
	soap "<CreateSnapshot_Task xmlns=\"urn:vim25\"><_this type=\"VirtualMachine\">$1</_this><name>$(xmlesc "$2")</name><memory>false</memory><quiesce>false</quiesce></CreateSnapshot_Task>" >/dev/null
	task_wait "$(xval returnval)"
	snap=""
	if [ "$task_state" == success ]; then snap=$task_result; fi
}

snapshot_change_id() { # snapshot_change_id SNAPMOID KEY
	rp VirtualMachineSnapshot "$1" config.hardware.device >/dev/null
	sed 's/<VirtualDevice /\n&/g' "$tmp/resp" | grep "<key>$2</key>" | grep -o '<changeId>[^<]*' | sed 's/.*>//'
}

# qcda VM SNAP KEY CHANGEID CAPACITY: pages the windows from 0 to capacity and sets areas to the
# "start+length" list of every changed area (space separated); returns non-zero on a fault (type in
# qcda_fault). qcda_calls counts the calls.
qcda() {
	qcda_pages "$@" >"$tmp/areas"
	local rc=$?
	areas=$(tr '\n' ' ' <"$tmp/areas" | sed 's/ $//')
	return $rc
}
qcda_pages() {
	local vm=$1 snap=$2 key=$3 cid=$4 cap=$5 off=0 status len start
	qcda_fault=""
	qcda_calls=0
	while [ "$off" -lt "$cap" ]; do
		status=$(soap "<QueryChangedDiskAreas xmlns=\"urn:vim25\"><_this type=\"VirtualMachine\">$vm</_this>${snap:+<snapshot type=\"VirtualMachineSnapshot\">$snap</snapshot>}<deviceKey>$key</deviceKey><startOffset>$off</startOffset><changeId>$(xmlesc "$cid")</changeId></QueryChangedDiskAreas>")
		qcda_calls=$((qcda_calls + 1))
		if [ "$status" != 200 ]; then
			qcda_fault=$(faulttype)
			return 1
		fi
		grep -o '<changedArea><start>[0-9]*</start><length>[0-9]*</length>' "$tmp/resp" | sed 's/<changedArea><start>\([0-9]*\)<\/start><length>\([0-9]*\)<\/length>/\1+\2/'
		start=$(grep -o '<returnval><startOffset>[0-9]*' "$tmp/resp" | sed 's/.*>//')
		len=$(grep -o '</startOffset><length>[0-9]*' "$tmp/resp" | head -1 | sed 's/.*>//')
		[ "$len" -gt 0 ] || return 1
		off=$((start + len))
	done
}

# expected_blocks OFFSET LENGTH BLOCKSIZE -> the block-aligned extent as "start+length"
expected_blocks() {
	local first=$(($1 / $3)) last=$((($1 + $2 - 1) / $3))
	echo "$((first * $3))+$(((last - first + 1) * $3))"
}

folder_url() { # folder_url DCPATH DSNAME PATH-SEGMENTS...
	local dc=$1 ds=$2 p=""
	shift 2
	for s in "$@"; do p="$p/$(uri "$s")"; done
	echo "$BASE/folder$p?dcPath=$(uri "$dc")&dsName=$(uri "$ds")"
}

# =====================================================================================================
echo "# default.json"
start_tb "$here/specs/default.json" || exit 1
echo "# startup with default.json: ${startup_ms} ms"
check "startup line has a 32-byte SHA-256 thumbprint" test "$(jq -r .thumbprint_sha256 "$tmp/out" | tr ':' '\n' | wc -l)" -eq 32
check "certificate verifies for 127.0.0.1" curl -sS --cacert "$tmp/ca.pem" -o /dev/null "$BASE/sdk/vimServiceVersions.xml"

status=$(soap '<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>')
eq "RetrieveServiceContent without a session" "200 VirtualCenter" "$status $(xval apiType)"
status=$(rp Folder group-d1 name)
eq "RetrievePropertiesEx without a session is NotAuthenticated" "500 NotAuthenticated" "$status $(faulttype)"
status=$(login "$USER_" "wrong-password")
eq "Login with a wrong password is InvalidLogin" "500 InvalidLogin" "$status $(faulttype)"
status=$(login "someone-else" "$PASS_")
eq "Login with a wrong user is InvalidLogin" "500 InvalidLogin" "$status $(faulttype)"
status=$(login "$USER_" "$PASS_")
eq "Login with the right credentials" "200" "$status"
check "Login set vmware_soap_session" grep -q vmware_soap_session "$tmp/cookies"

eq "VM list through a container view" "$(ctl GET /info | jq -r '.vms[].name' | sort)" "$(vm_names_via_soap)"

info=$(ctl GET /vms/web01)
VM=$(jq -r .moref <<<"$info")
CAP=$(jq -r '.disks[0].capacity_bytes' <<<"$info")
eq "control info by instance uuid" "web01" "$(ctl GET "/vms/$(jq -r .instance_uuid <<<"$info")" | jq -r .name)"
IUUID=$(jq -r .instance_uuid <<<"$info")
soap "<FindByUuid xmlns=\"urn:vim25\"><_this type=\"SearchIndex\">SearchIndex</_this><uuid>${IUUID^^}</uuid><vmSearch>true</vmSearch><instanceUuid>true</instanceUuid></FindByUuid>" >/dev/null
eq "FindByUuid with an upper-case instance UUID" "$VM" "$(xval returnval)"
rp VirtualMachine "$VM" config.hardware.device >/dev/null
check "a CBT VM's own disk backing carries a changeId" grep -q '<changeId>52 ' "$tmp/resp"

create_snapshot "$VM" "vbm-1"
S1=$snap
C1=$(snapshot_change_id "$S1" 2000)
check "CreateSnapshot gives a snapshot" test -n "$S1"
check "snapshot changeId has the real format" grep -Eq '^52( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}/1$' <<<"$C1"

# A guest write across a block boundary, then the next backup snapshot.
WOFF=$((5 * 1048576 + 1000))
WLEN=200000
w=$(ctl POST /vms/web01/disks/2000/write "{\"offset\": $WOFF, \"length\": $WLEN, \"seed\": 11}")
eq "control write reports its range" "$WOFF $WLEN" "$(jq -r '"\(.offset) \(.length)"' <<<"$w")"
create_snapshot "$VM" "vbm-2"
S2=$snap
C2=$(snapshot_change_id "$S2" 2000)
check "second snapshot has sequence 2 of the same epoch" test "${C2%/*}/2" == "$C2" -a "${C1%/*}" == "${C2%/*}"
eq "first snapshot keeps its own changeId" "$C1" "$(snapshot_change_id "$S1" 2000)"
qcda "$VM" "$S2" 2000 "$C1" "$CAP"
eq "QueryChangedDiskAreas paging returns exactly the written blocks" "$(expected_blocks $WOFF $WLEN 65536)" "$areas"
check "QueryChangedDiskAreas needed several windows" test "$qcda_calls" -ge 2
qcda "$VM" "$S2" 2000 "$C2" "$CAP"
eq "no changes since the newest snapshot" "" "$areas"
qcda "$VM" "$S2" 2000 "*" "$CAP"
check "changeId * on a thin disk reports allocated areas" test -n "$areas"
qcda "$VM" "$S2" 2000 "52 00 11 22 33 44 55 66-77 88 99 aa bb cc dd ee/1" "$CAP" >/dev/null
eq "unknown changeId is a FileFault" "FileFault" "$qcda_fault"
check "FileFault names the -ctk.vmdk" grep -q 'web01-ctk.vmdk' "$tmp/resp"
status=$(soap "<QueryChangedDiskAreas xmlns=\"urn:vim25\"><_this type=\"VirtualMachine\">$VM</_this><snapshot type=\"VirtualMachineSnapshot\">$S2</snapshot><deviceKey>2000</deviceKey><startOffset>$((CAP + 512))</startOffset><changeId>*</changeId></QueryChangedDiskAreas>")
eq "startOffset beyond the capacity is InvalidArgument" "500 InvalidArgument" "$status $(faulttype)"
status=$(soap "<QueryChangedDiskAreas xmlns=\"urn:vim25\"><_this type=\"VirtualMachine\">$VM</_this><snapshot type=\"VirtualMachineSnapshot\">$S2</snapshot><deviceKey>2999</deviceKey><startOffset>0</startOffset><changeId>*</changeId></QueryChangedDiskAreas>")
eq "unknown deviceKey is InvalidArgument" "500 InvalidArgument" "$status $(faulttype)"
status=$(soap "<QueryChangedDiskAreas xmlns=\"urn:vim25\"><_this type=\"VirtualMachine\">$VM</_this><snapshot type=\"VirtualMachineSnapshot\">snapshot-99999</snapshot><deviceKey>2000</deviceKey><startOffset>0</startOffset><changeId>*</changeId></QueryChangedDiskAreas>")
eq "unknown snapshot is ManagedObjectNotFound" "500 ManagedObjectNotFound" "$status $(faulttype)"

# CBT off -> FileFault; enabling it through ReconfigVM starts an epoch.
DB=$(ctl GET /vms/db01 | jq -r .moref)
create_snapshot "$DB" "db-1"
S3=$snap
qcda "$DB" "$S3" 2000 "*" 67108864 >/dev/null
eq "QueryChangedDiskAreas on a VM without CBT is a FileFault" "FileFault" "$qcda_fault"
soap "<ReconfigVM_Task xmlns=\"urn:vim25\"><_this type=\"VirtualMachine\">$DB</_this><spec><changeTrackingEnabled>true</changeTrackingEnabled></spec></ReconfigVM_Task>" >/dev/null
task_wait "$(xval returnval)"
eq "ReconfigVM changeTrackingEnabled=true" "success" "$task_state"
create_snapshot "$DB" "db-2"
S4=$snap
check "the snapshot after enabling CBT has a changeId" test -n "$(snapshot_change_id "$S4" 2000)"
qcda "$DB" "$S4" 2000 "*" 67108864
eq "changeId * on a thick disk is the whole disk" "0+16777216 16777216+16777216 33554432+16777216 50331648+16777216" "$areas"
qcda "$DB" "$S4" 2001 "*" 16777216
eq "changeId * on an all-zero thin disk is empty" "" "$areas"

# CBT reset invalidates old changeIds.
ctl POST /vms/web01/cbt/reset >/dev/null
create_snapshot "$VM" "vbm-3"
S5=$snap
qcda "$VM" "$S5" 2000 "$C2" "$CAP" >/dev/null
eq "after a CBT reset the old changeId is a FileFault" "FileFault" "$qcda_fault"

# Snapshot removal.
soap "<RemoveSnapshot_Task xmlns=\"urn:vim25\"><_this type=\"VirtualMachineSnapshot\">$S5</_this><removeChildren>false</removeChildren><consolidate>true</consolidate></RemoveSnapshot_Task>" >/dev/null
task_wait "$(xval returnval)"
eq "RemoveSnapshot_Task" "success" "$task_state"
eq "snapshot list after removal" "vbm-1 vbm-2" "$(ctl GET /snapshots | jq -r '.[] | select(.vm=="web01") | .snapshots[].name' | tr '\n' ' ' | sed 's/ $//')"

# /folder: auth, Range, round trip, DELETE.
URL=$(folder_url DC0 datastore1 web01 web01-flat.vmdk)
eq "/folder without credentials is 401" "401" "$(curl -sS --cacert "$tmp/ca.pem" -o /dev/null -w '%{http_code}' "$URL")"
eq "/folder with a wrong basic password is 401" "401" "$(curl -sS --cacert "$tmp/ca.pem" -u "$USER_:nope" -o /dev/null -w '%{http_code}' "$URL")"
eq "/folder with basic auth is 200" "200" "$(curl -sS --cacert "$tmp/ca.pem" -u "$USER_:$PASS_" -o /dev/null -w '%{http_code}' -I "$URL")"
curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o "$tmp/flat" "$URL"
eq "GET of the flat file matches the control sha256" "$(ctl GET /vms/web01/disks/2000/sha256 | jq -r .sha256)" "$(sha256sum <"$tmp/flat" | cut -d' ' -f1)"
hdr=$(curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -r 1048576-2097151 -D - -o "$tmp/range" "$URL")
eq "Range GET is 206 with Content-Range" "206 bytes 1048576-2097151/$CAP" "$(grep -o '^HTTP/[0-9.]* [0-9]*' <<<"$hdr" | cut -d' ' -f2) $(grep -i '^content-range:' <<<"$hdr" | cut -d' ' -f2- | tr -d '\r')"
eq "Range GET body matches" "$(dd if="$tmp/flat" bs=1048576 skip=1 count=1 2>/dev/null | sha256sum)" "$(sha256sum <"$tmp/range")"
head -c 300000 /dev/urandom >"$tmp/up"
PUT_URL=$(folder_url DC0 datastore1 "upload dir" "file #1 & more.bin")
eq "PUT a new file" "200" "$(curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -T "$tmp/up" -o /dev/null -w '%{http_code}' "$PUT_URL")"
curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o "$tmp/down" "$PUT_URL"
check "PUT then GET round trip" cmp "$tmp/up" "$tmp/down"
eq "DELETE a file is 204" "204" "$(curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -X DELETE -o /dev/null -w '%{http_code}' "$PUT_URL")"
eq "DELETE again is 404" "404" "$(curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -X DELETE -o /dev/null -w '%{http_code}' "$PUT_URL")"

# RegisterVM of uploaded files attaches the VMX's disks.
for f in db01.vmx db01.vmdk db01-flat.vmdk db01_1.vmdk db01_1-flat.vmdk db01.nvram; do
	curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o "$tmp/f" "$(folder_url DC0 datastore1 db01 "$f")"
	curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -T "$tmp/f" -o /dev/null "$(folder_url DC0 datastore1 restore-db01 "$f")"
done
rp VirtualMachine "$DB" resourcePool >/dev/null
POOL=$(grep -o 'type="ResourcePool">[^<]*' "$tmp/resp" | sed 's/.*>//')
VMFOLDER=$(ctl GET /info | jq -r '.datacenters[0].vm_folder')
soap "<RegisterVM_Task xmlns=\"urn:vim25\"><_this type=\"Folder\">$VMFOLDER</_this><path>[datastore1] restore-db01/db01.vmx</path><name>db01-restored</name><asTemplate>false</asTemplate><pool type=\"ResourcePool\">$POOL</pool></RegisterVM_Task>" >/dev/null
task_wait "$(xval returnval)"
eq "RegisterVM_Task of uploaded files" "success" "$task_state"
eq "registered VM shows the VMX's disks" "[datastore1] restore-db01/db01.vmdk 67108864 false|[datastore1] restore-db01/db01_1.vmdk 16777216 true" \
	"$(ctl GET /vms/db01-restored | jq -r '[.disks[] | "\(.file) \(.capacity_bytes) \(.thin)"] | join("|")')"
eq "registered disk content equals the original" "$(ctl GET /vms/db01/disks/2000/sha256 | jq -r .sha256)" "$(ctl GET /vms/db01-restored/disks/2000/sha256 | jq -r .sha256)"
eq "registered VM starts without CBT" "false" "$(ctl GET /vms/db01-restored | jq -r .cbt)"
soap "<RegisterVM_Task xmlns=\"urn:vim25\"><_this type=\"Folder\">$VMFOLDER</_this><path>[datastore1] nowhere/x.vmx</path><name>x</name><asTemplate>false</asTemplate><pool type=\"ResourcePool\">$POOL</pool></RegisterVM_Task>" >/dev/null
task_wait "$(xval returnval)"
eq "RegisterVM_Task of a missing .vmx fails" "error" "$task_state"

# Faults.
ctl POST /faults '{"kind": "transfer_fail", "path_contains": "web01-flat", "status": 503, "count": 2}' >/dev/null
codes=""
for _ in 1 2 3; do codes="$codes$(curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o /dev/null -w '%{http_code}' -r 0-99 "$URL") "; done
eq "transfer_fail fires count times" "503 503 206 " "$codes"
ctl POST /faults '{"kind": "transfer_truncate", "path_contains": "web01-flat", "after_bytes": 100000}' >/dev/null
curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o "$tmp/cut" "$URL" 2>/dev/null
rc=$?
eq "transfer_truncate cuts the body (curl exit 18, 100000 bytes)" "18 100000" "$rc $(stat -c %s "$tmp/cut")"
ctl POST /faults '{"kind": "transfer_slow", "path_contains": "web01-flat", "bytes_per_sec": 4000000}' >/dev/null
t=$(curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o /dev/null -r 0-1999999 -w '%{time_total}' "$URL")
check "transfer_slow throttles (2 MB at 4 MB/s takes >= 0.4 s)" awk -v t="$t" 'BEGIN { exit !(t >= 0.4) }'
ctl POST /faults '{"kind": "transfer_stall", "path_contains": "web01-flat", "after_bytes": 1000, "seconds": 1}' >/dev/null
t=$(curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o /dev/null -r 0-99999 -w '%{time_total}' "$URL")
check "transfer_stall pauses the body" awk -v t="$t" 'BEGIN { exit !(t >= 0.9) }'
ctl POST /faults '{"kind": "task_fail", "method": "CreateSnapshot_Task", "vm": "web01", "message": "Quiesce failed"}' >/dev/null
before=$(ctl GET /snapshots | jq '[.[] | select(.vm=="web01") | .snapshots[]] | length')
soap "<CreateSnapshot_Task xmlns=\"urn:vim25\"><_this type=\"VirtualMachine\">$VM</_this><name>x</name><memory>false</memory><quiesce>true</quiesce></CreateSnapshot_Task>" >/dev/null
task_wait "$(xval returnval)"
eq "task_fail: the task ends in error with the fault and message" "error SnapshotFault Quiesce failed" "$task_state $task_fault $task_message"
eq "task_fail: no snapshot was created" "$before" "$(ctl GET /snapshots | jq '[.[] | select(.vm=="web01") | .snapshots[]] | length')"
ctl POST /faults '{"kind": "soap_fault", "method": "RetrieveProperties", "fault": "", "status": 503}' >/dev/null
ctl POST /faults '{"kind": "soap_fault", "method": "RetrievePropertiesEx", "fault": "InvalidState", "message": "busy"}' >/dev/null
status=$(rp VirtualMachine "$VM" name)
eq "soap_fault answers the fault" "500 InvalidState busy" "$status $(faulttype) $(xval faultstring)"
eq "soap_fault with an empty fault is a bare status with Retry-After" "503 1" \
	"$(curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -D - -o /dev/null -H 'Content-Type: text/xml' --data-binary '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><RetrieveProperties xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><specSet><propSet><type>Folder</type><pathSet>name</pathSet></propSet><objectSet><obj type="Folder">group-d1</obj></objectSet></specSet></RetrieveProperties></soapenv:Body></soapenv:Envelope>' "$SDK" | awk '/^HTTP/ {s=$2} tolower($1)=="retry-after:" {r=$2} END {gsub("\r","",r); print s, r}')"
ctl POST /faults '{"kind": "slow_soap", "method": "RetrievePropertiesEx", "delay_ms": 500}' >/dev/null
t0=$(date +%s%N)
rp VirtualMachine "$VM" name >/dev/null
check "slow_soap delays the call" test $((($(date +%s%N) - t0) / 1000000)) -ge 450
eq "every fault rule fired" "1 1 1 1 1 1 1" "$(ctl GET /faults | jq -r '[.[] | select(.kind != "transfer_fail") | .fired] | map(tostring) | join(" ")')"
ctl DELETE /faults >/dev/null
eq "session_expire" "1" "$(ctl POST /faults '{"kind": "session_expire"}' | jq -r .expired_sessions)"
status=$(rp VirtualMachine "$VM" name)
eq "after session_expire SOAP is NotAuthenticated" "500 NotAuthenticated" "$status $(faulttype)"
eq "after session_expire /folder is 401" "401" "$(curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o /dev/null -w '%{http_code}' -I "$URL")"
eq "logging in again works" "200" "$(login "$USER_" "$PASS_")"
eq "and the new session reads properties" "200 web01" "$(rp VirtualMachine "$VM" name) $(xval val)"
eq "Logout" "200" "$(soap '<Logout xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this></Logout>')"
stats=$(ctl GET /stats)
eq "stats count logins, logouts and sessions" "2 1 0" "$(jq -r '"\(.logins) \(.logouts) \(.active_sessions)"' <<<"$stats")"
check "stats count /folder GET bytes" test "$(jq -r '.folder_get_bytes.per_path["[datastore1] web01/web01-flat.vmdk"]' <<<"$stats")" -gt "$CAP"
check "plain HTTP listener serves the same SDK" curl -sS -f -o /dev/null -H 'Content-Type: text/xml' --data-binary '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent></soapenv:Body></soapenv:Envelope>' "$PLAIN"
DATA_DIR=$(jq -r .data_dir "$tmp/out")
stop_tb
check "the temporary data dir is removed at exit" test ! -e "$DATA_DIR"

# =====================================================================================================
echo "# awkward.json"
start_tb "$here/specs/awkward.json" || exit 1
echo "# startup with awkward.json: ${startup_ms} ms"
check "awkward.json starts in under 2 s" test "$startup_ms" -lt 2000
login "$USER_" "$PASS_" >/dev/null
eq "odd VM names through the SDK" "$(ctl GET /info | jq -r '.vms[].name' | sort)" "$(vm_names_via_soap)"
soap '<CreateContainerView xmlns="urn:vim25"><_this type="ViewManager">ViewManager</_this><container type="Folder">group-d1</container><type>VirtualMachine</type><recursive>true</recursive></CreateContainerView>' >/dev/null
view=$(xval returnval)
soap "<RetrievePropertiesEx xmlns=\"urn:vim25\"><_this type=\"PropertyCollector\">propertyCollector</_this><specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet></propSet><objectSet><obj type=\"ContainerView\">$view</obj><skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><name>v</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet><options><maxObjects>4</maxObjects></options></RetrievePropertiesEx>" >/dev/null
token=$(xval token)
page1=$(xval val | wc -l)
soap "<ContinueRetrievePropertiesEx xmlns=\"urn:vim25\"><_this type=\"PropertyCollector\">propertyCollector</_this><token>$token</token></ContinueRetrievePropertiesEx>" >/dev/null
eq "RetrievePropertiesEx pages by maxObjects and ContinueRetrievePropertiesEx ends the list" "4 2 no-token" "$page1 $(xval val | wc -l) $(grep -q '<token>' "$tmp/resp" && echo token || echo no-token)"
status=$(soap "<ContinueRetrievePropertiesEx xmlns=\"urn:vim25\"><_this type=\"PropertyCollector\">propertyCollector</_this><token>$token</token></ContinueRetrievePropertiesEx>")
eq "a used-up token is InvalidArgument" "500 InvalidArgument" "$status $(faulttype)"
check "the %2f-escaped name is kept as vCenter shows it" grep -qx 'a%2fb slash-vm' <(vm_names_via_soap)
N="web 01 #1 & co + more"
info=$(ctl GET "/vms/$(uri "$N")")
eq "VM in nested folders inside a datacenter inside folders" "/Europe/West & Co/DC West/vm/Prod/Web Tier/Front/$N" "$(jq -r .inventory_path <<<"$info")"
eq "disks on two datastores" "ds1 ds 2" "$(jq -r '[.disks[].datastore] | join(" ")' <<<"$info")"
URL=$(folder_url "Europe/West & Co/DC West" "ds 2" "$N" "${N}_1-flat.vmdk")
curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o "$tmp/flat" "$URL"
eq "GET through escaped dcPath, dsName and path" "$(ctl GET "/vms/$(uri "$N")/disks/2001/sha256" | jq -r .sha256)" "$(sha256sum <"$tmp/flat" | cut -d' ' -f1)"
eq "10 MiB + 64 KiB thick disk" "10551296" "$(stat -c %s "$tmp/flat")"
VM=$(jq -r .moref <<<"$info")
create_snapshot "$VM" "bk"
S=$snap
qcda "$VM" "$S" 2001 "*" 10551296
eq "changeId * on the odd-sized thick disk covers it exactly in 4 MiB windows" "0+4194304 4194304+4194304 8388608+2162688" "$areas"
C=$(snapshot_change_id "$S" 2001)
ctl POST "/vms/$(uri "$N")/disks/2001/write" '{"offset": 10551296, "length": 1, "zero": true}' | grep -q error && ok "a write past the end is refused" || no "a write past the end is refused"
ctl POST "/vms/$(uri "$N")/disks/2001/write" '{"offset": 10485760, "data_base64": "AAECAwQFBgcICQ=="}' >/dev/null
create_snapshot "$VM" "bk2"
S2=$snap
qcda "$VM" "$S2" 2001 "$C" 10551296
eq "a write into the last partial block" "10485760+65536" "$areas"
U="Ünïcødé-vm"
eq "pre-existing user snapshots with changeIds" "before-upgrade:/1 after upgrade #2:/2" \
	"$(ctl GET /snapshots | jq -r --arg u "$U" '[.[] | select(.vm==$u) | .snapshots[] | "\(.name):/\(.change_ids["2000"] | split("/")[1])"] | join(" ")')"
eq "independent disks carry no changeId" "persistent:yes independent_persistent:no independent_nonpersistent:no" \
	"$(ctl GET "/vms/$(uri "50%25 load")" | jq -r '[.disks[] | "\(.mode):\(if .change_id == "" then "no" else "yes" end)"] | join(" ")')"
stop_tb

# =====================================================================================================
echo "# esx.json"
start_tb "$here/specs/esx.json" || exit 1
echo "# startup with esx.json: ${startup_ms} ms"
SM=ha-sessionmgr
PC=ha-property-collector
ROOT=ha-folder-root
soap '<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>' >/dev/null
eq "ESX mode: apiType HostAgent, no instanceUuid, ESXi's manager morefs" "HostAgent||ha-sessionmgr ha-property-collector ha-folder-root" \
	"$(xval apiType)|$(xval instanceUuid)|$(xval sessionManager) $(xval propertyCollector) $(xval rootFolder)"
eq "ESX mode: the startup line says HostAgent with an empty instance_uuid" "HostAgent|" "$(jq -r '"\(.api_type)|\(.instance_uuid)"' "$tmp/out")"
eq "ESX mode: one datacenter ha-datacenter with the spec's host and datastores" "ha-datacenter ha-host:esx01.lab.local datastore1,datastore2" \
	"$(ctl GET /info | jq -r '[.datacenters[] | "\(.name) \(.hosts | map("\(.moref):\(.name)") | join(",")) \(.datastores | map(.name) | join(","))"] | join(";")')"
login "$USER_" "$PASS_" >/dev/null
eq "ESX mode: VM list through a container view on ha-folder-root" "$(ctl GET /info | jq -r '.vms[].name' | sort)" "$(vm_names_via_soap)"
status=$(soap "<SessionIsActive xmlns=\"urn:vim25\"><_this type=\"SessionManager\">$SM</_this><sessionID>x</sessionID><userName>$USER_</userName></SessionIsActive>")
eq "ESX mode: SessionIsActive is NotImplemented, as on a real ESXi" "500 NotImplemented" "$status $(faulttype)"
info=$(ctl GET /vms/esx-web01)
VM=$(jq -r .moref <<<"$info")
curl -sS --cacert "$tmp/ca.pem" -b "$tmp/cookies" -o "$tmp/flat" "$(folder_url ha-datacenter datastore2 esx-web01 esx-web01_1-flat.vmdk)"
eq "ESX mode: /folder GET with dcPath=ha-datacenter" "$(ctl GET /vms/esx-web01/disks/2001/sha256 | jq -r .sha256)" "$(sha256sum <"$tmp/flat" | cut -d' ' -f1)"
create_snapshot "$VM" "vbm-esx-1"
C1=$(snapshot_change_id "$snap" 2000)
ctl POST /vms/esx-web01/disks/2000/write '{"offset": 3000000, "length": 70000, "seed": 5}' >/dev/null
create_snapshot "$VM" "vbm-esx-2"
qcda "$VM" "$snap" 2000 "$C1" 33554432
eq "ESX mode: QueryChangedDiskAreas returns exactly the written blocks" "$(expected_blocks 3000000 70000 65536)" "$areas"
stop_tb
printf '{"esx": true, "datacenters": [{"datastores": [{"name": "d"}], "clusters": [{"name": "C0", "hosts": ["h"]}]}]}' >"$tmp/esx-cluster.json"
"$bin" --spec "$tmp/esx-cluster.json" >/dev/null 2>"$tmp/err"
eq "ESX mode: a cluster is a spec error (exit 2)" "2 yes" "$? $(grep -q 'has no clusters' "$tmp/err" && echo yes || echo no)"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

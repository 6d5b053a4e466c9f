package main

// Changed Block Tracking, which vcsim 0.24 lacks entirely.
//
// Model: per VM disk an epoch (16 random bytes, shown as the part of a changeId before the "/"),
// a sequence number seq (the number of the last changeId handed out in this epoch) and, per
// cbt_block_size block, the sequence tag of the last write. A guest write lands with tag seq+1;
// creating a snapshot increments seq and stamps "<epoch>/<seq>" on the snapshot's disk backings.
// So the changes between changeId E/S and a snapshot stamped E/Q are the blocks tagged in (S, Q].
// Turning CBT on, resetting it, or resizing the disk starts a new epoch: older changeIds become
// unknown and QueryChangedDiskAreas answers FileFault for them, as a real host does after a reset.

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type vmState struct {
	cbt   bool
	disks map[int32]*diskState
}

type diskState struct {
	mu sync.Mutex

	key       int32
	fileName  string // "[ds] vm/disk.vmdk"
	descPath  string
	flatPath  string
	datastore string
	capacity  int64
	thin      bool
	mode      string

	blockSize int64
	alloc     bitmap // blocks ever allocated (non-zero at creation or written since); nil = not scanned yet
	epoch     []byte // nil while CBT is off
	seq       int64
	written   []int64 // per block: sequence tag of the last write in this epoch (0 = none)
}

func (d *diskState) independent() bool { return strings.HasPrefix(d.mode, "independent") }

func (d *diskState) blocks() int64 { return (d.capacity + d.blockSize - 1) / d.blockSize }

func (d *diskState) newEpoch() {
	d.epoch = make([]byte, 16)
	_, _ = rand.Read(d.epoch)
	d.epoch[0] = 0x52 // real changeIds start with "52 "
	d.seq = 0
	d.written = make([]int64, d.blocks())
}

func (d *diskState) stopTracking() {
	d.epoch, d.seq, d.written = nil, 0, nil
}

func formatEpoch(e []byte) string {
	var b strings.Builder
	for i, x := range e {
		if i == 8 {
			b.WriteByte('-')
		} else if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%02x", x)
	}
	return b.String()
}

func (d *diskState) changeID(seq int64) string {
	return fmt.Sprintf("%s/%d", formatEpoch(d.epoch), seq)
}

// parseChangeID splits "52 ab ...-.. ../17" into the epoch text and the sequence number.
func parseChangeID(id string) (string, int64, bool) {
	i := strings.LastIndex(id, "/")
	if i < 0 {
		return "", 0, false
	}
	seq, err := strconv.ParseInt(id[i+1:], 10, 64)
	if err != nil || seq < 0 {
		return "", 0, false
	}
	return id[:i], seq, true
}

// ctkFile is the file a real host names in the FileFault for an unusable changeId.
func (d *diskState) ctkFile() string {
	return strings.TrimSuffix(d.fileName, ".vmdk") + "-ctk.vmdk"
}

func (d *diskState) ensureAlloc() error {
	if d.alloc != nil {
		return nil
	}
	a, err := scanAllocation(d.flatPath, d.capacity, d.blockSize)
	if err != nil {
		return err
	}
	d.alloc = a
	return nil
}

// vmStateLocked returns the CBT state of a VM, creating it on first sight. tb.mu must be held.
func (tb *Testbed) vmStateLocked(ref types.ManagedObjectReference, cbt bool) *vmState {
	vs := tb.vms[ref]
	if vs == nil {
		vs = &vmState{cbt: cbt, disks: map[int32]*diskState{}}
		tb.vms[ref] = vs
	}
	return vs
}

// ensureDiskLocked returns the state of one disk, creating it from the device on first sight.
// The caller holds the VM's vcsim lock (it reads dev) and tb.mu.
func (tb *Testbed) ensureDiskLocked(vm *simulator.VirtualMachine, vs *vmState, dev *types.VirtualDisk) (*diskState, error) {
	if d := vs.disks[dev.Key]; d != nil {
		return d, nil
	}
	fileName, dsRef, flat := diskBacking(dev)
	dcRef, _ := datacenterOf(vm.Self)
	desc, ds, err := tb.localPath(fileName, dsRef, dcRef)
	if err != nil {
		return nil, err
	}
	d := &diskState{
		key:       dev.Key,
		fileName:  fileName,
		descPath:  desc,
		flatPath:  flatPathOf(desc),
		datastore: ds.Name,
		capacity:  diskCapacity(dev),
		mode:      "persistent",
		blockSize: tb.spec.CBTBlockSize,
	}
	if flat != nil {
		d.thin = isTrue(flat.ThinProvisioned)
		if flat.DiskMode != "" {
			d.mode = flat.DiskMode
		}
	}
	if vs.cbt {
		d.newEpoch()
	}
	vs.disks[dev.Key] = d
	return d, nil
}

// flatPathOf finds the flat extent of a descriptor from its extent line; for a missing or
// unreadable descriptor it falls back to the usual "<name>-flat.vmdk".
func flatPathOf(descPath string) string {
	if data, err := os.ReadFile(descPath); err == nil && len(data) > 0 && len(data) < 1<<20 {
		if d, err := parseDescriptor(string(data)); err == nil && len(d.Extents) > 0 {
			return joinDir(descPath, d.Extents[0].File)
		}
	}
	return strings.TrimSuffix(descPath, ".vmdk") + "-flat.vmdk"
}

func joinDir(file, name string) string {
	if strings.HasPrefix(name, "/") {
		return name
	}
	i := strings.LastIndex(file, "/")
	return file[:i+1] + name
}

// syncVMLocked brings the testbed's CBT state in line with vcsim's config of the VM and stamps
// the current changeIds on the VM's own disk backings (a real vCenter shows them there too).
// The caller holds the VM's vcsim lock.
func (tb *Testbed) syncVMLocked(vm *simulator.VirtualMachine) {
	if vm.Config == nil {
		return
	}
	on := isTrue(vm.Config.ChangeTrackingEnabled)
	tb.mu.Lock()
	vs := tb.vmStateLocked(vm.Self, on)
	if vs.cbt != on {
		vs.cbt = on
		for _, d := range vs.disks {
			d.mu.Lock()
			if on {
				d.newEpoch()
			} else {
				d.stopTracking()
			}
			d.mu.Unlock()
		}
	}
	present := map[int32]bool{}
	ids := map[int32]string{}
	for _, dev := range vmDisks(vm.Config.Hardware.Device) {
		present[dev.Key] = true
		d, err := tb.ensureDiskLocked(vm, vs, dev)
		if err != nil {
			continue
		}
		d.mu.Lock()
		if d.epoch != nil && !d.independent() {
			ids[dev.Key] = d.changeID(d.seq)
		} else {
			ids[dev.Key] = ""
		}
		d.mu.Unlock()
	}
	for key := range vs.disks {
		if !present[key] {
			delete(vs.disks, key) // the disk was removed from the VM
		}
	}
	tb.mu.Unlock()
	setChangeIDsLocked(vm, ids)
}

// setChangeIDsLocked puts changeIds on the VM's disk backings. The caller holds the VM's lock.
func setChangeIDsLocked(vm *simulator.VirtualMachine, ids map[int32]string) {
	editDisksLocked(vm, func(disk *types.VirtualDisk) bool {
		id, ok := ids[disk.Key]
		_, _, flat := diskBacking(disk)
		if !ok || flat == nil || flat.ChangeId == id {
			return false
		}
		flat.ChangeId = id
		return true
	})
}

// editDisksLocked replaces the VM's disks for which edit returns true by edited copies. Devices
// are never changed in place: vcsim's snapshot config shares the device objects with the VM until
// afterCreateSnapshot gives it its own, and readers of the snapshot only hold the snapshot's lock.
// The caller holds the VM's lock.
func editDisksLocked(vm *simulator.VirtualMachine, edit func(disk *types.VirtualDisk) bool) {
	var out []types.BaseVirtualDevice
	changed := false
	for _, dev := range vm.Config.Hardware.Device {
		if disk, ok := dev.(*types.VirtualDisk); ok {
			c := deepCopy(disk).(*types.VirtualDisk)
			if edit(c) {
				out = append(out, c)
				changed = true
				continue
			}
		}
		out = append(out, dev)
	}
	if changed {
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: out}})
	}
}

// afterCreateSnapshot stamps changeIds on a new snapshot. vcsim copies the VM config into the
// snapshot shallowly (the device list is shared with the VM and with other snapshots), so the
// snapshot gets a deep copy with its own backings. Tasks in vcsim 0.24 run synchronously, so
// this runs before the client has even seen the task moref: a client that polls the task to
// success and then reads snapshot.config.hardware.device always finds the changeIds.
func (tb *Testbed) afterCreateSnapshot(vmRef, snapRef types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	snap, ok := simulator.Map.Get(snapRef).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return
	}
	var cfg types.VirtualMachineConfigInfo
	simulator.Map.WithLock(vm, func() {
		tb.syncVMLocked(vm)
		ids := map[int32]string{}
		tb.mu.Lock()
		vs := tb.vms[vm.Self]
		for _, dev := range vmDisks(vm.Config.Hardware.Device) {
			d := vs.disks[dev.Key]
			if d == nil {
				continue
			}
			d.mu.Lock()
			if d.epoch != nil && !d.independent() {
				d.seq++
				ids[dev.Key] = d.changeID(d.seq)
			}
			d.mu.Unlock()
		}
		tb.mu.Unlock()
		setChangeIDsLocked(vm, ids)
		cfg = deepCopy(*vm.Config).(types.VirtualMachineConfigInfo)
	})
	simulator.Map.WithLock(snap, func() { snap.Config = cfg })
}

// --- QueryChangedDiskAreas -----------------------------------------------------------------------

type qcdaError struct {
	msg   string
	fault types.BaseMethodFault
}

func (e *qcdaError) Error() string { return e.msg }

func fileFault(d *diskState) *qcdaError {
	ctk := d.ctkFile()
	ds, rel, _ := splitDatastorePath(ctk)
	return &qcdaError{
		msg:   fmt.Sprintf("Error caused by file /vmfs/volumes/%s/%s", ds, rel),
		fault: &types.FileFault{File: ctk},
	}
}

func invalidArgument(prop, msg string) *qcdaError {
	return &qcdaError{msg: msg, fault: &types.InvalidArgument{InvalidProperty: prop}}
}

func notFound(ref types.ManagedObjectReference) *qcdaError {
	return &qcdaError{
		msg:   fmt.Sprintf("The object '%s:%s' has already been deleted or has not been completely created", ref.Type, ref.Value),
		fault: &types.ManagedObjectNotFound{Obj: ref},
	}
}

func (tb *Testbed) queryChangedDiskAreas(req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, *qcdaError) {
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		return nil, notFound(req.This)
	}
	var d *diskState
	var cbtOn bool
	var devFound bool
	var capacity int64
	simulator.Map.WithLock(vm, func() {
		tb.syncVMLocked(vm)
		for _, dev := range vmDisks(vm.Config.Hardware.Device) {
			if dev.Key == req.DeviceKey {
				tb.mu.Lock()
				vs := tb.vms[vm.Self]
				d = vs.disks[dev.Key]
				cbtOn = vs.cbt
				tb.mu.Unlock()
				capacity = diskCapacity(dev)
				devFound = true
			}
		}
	})

	// The end point of the query: the snapshot's changeId, or "now" without a snapshot.
	endChangeID := ""
	if req.Snapshot != nil {
		snap, ok := simulator.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
		if !ok || snap.Vm != vm.Self {
			return nil, notFound(*req.Snapshot)
		}
		devFound = false
		simulator.Map.WithLock(snap, func() {
			for _, dev := range vmDisks(snap.Config.Hardware.Device) {
				if dev.Key == req.DeviceKey {
					devFound = true
					capacity = diskCapacity(dev)
					if _, _, flat := diskBacking(dev); flat != nil {
						endChangeID = flat.ChangeId
					}
				}
			}
		})
	}
	if !devFound || d == nil {
		return nil, invalidArgument("deviceKey", fmt.Sprintf("A specified parameter was not correct: deviceKey %d", req.DeviceKey))
	}
	if req.StartOffset < 0 || req.StartOffset > capacity {
		return nil, invalidArgument("startOffset", fmt.Sprintf("A specified parameter was not correct: startOffset %d (capacity %d)", req.StartOffset, capacity))
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if !cbtOn || d.epoch == nil {
		return nil, fileFault(d)
	}
	start := req.StartOffset
	end := min64(start+tb.spec.QCDAWindow, capacity)
	info := &types.DiskChangeInfo{StartOffset: start, Length: end - start}
	if start == end {
		return info, nil
	}

	var inWindow func(b int64) bool
	if req.ChangeId == "*" {
		if !d.thin {
			info.ChangedArea = []types.DiskChangeExtent{{Start: start, Length: end - start}}
			return info, nil
		}
		if err := d.ensureAlloc(); err != nil {
			return nil, fileFault(d)
		}
		inWindow = func(b int64) bool { return d.alloc.get(b) }
	} else {
		if d.independent() {
			return nil, fileFault(d)
		}
		epoch := formatEpoch(d.epoch)
		e, from, ok := parseChangeID(req.ChangeId)
		if !ok || e != epoch || from > d.seq {
			return nil, fileFault(d)
		}
		to := d.seq + 1 // no snapshot: everything written up to now
		if req.Snapshot != nil {
			se, sseq, ok := parseChangeID(endChangeID)
			if !ok || se != epoch {
				return nil, fileFault(d) // the snapshot was taken in another epoch (or without CBT)
			}
			to = sseq
		}
		if from > to {
			return nil, fileFault(d)
		}
		inWindow = func(b int64) bool {
			return b < int64(len(d.written)) && d.written[b] > from && d.written[b] <= to
		}
	}

	bs := d.blockSize
	for b := start / bs; b*bs < end; {
		if !inWindow(b) {
			b++
			continue
		}
		first := b
		for b*bs < end && inWindow(b) {
			b++
		}
		s := first * bs
		e := b * bs
		if s < start {
			s = start
		}
		if e > end {
			e = end
		}
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: s, Length: e - s})
	}
	return info, nil
}

// --- guest writes, resize, reset --------------------------------------------------------------------

// diskFor finds (and if needed creates) the CBT state of one disk of a VM.
func (tb *Testbed) diskFor(vm *simulator.VirtualMachine, key int32) (*diskState, bool) {
	var d *diskState
	simulator.Map.WithLock(vm, func() {
		tb.syncVMLocked(vm)
		tb.mu.Lock()
		d = tb.vms[vm.Self].disks[key]
		tb.mu.Unlock()
	})
	return d, d != nil
}

// write applies a simulated guest write and records it for CBT.
func (d *diskState) write(off int64, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(data)) > d.capacity {
		return fmt.Errorf("write [%d, %d) is outside the disk (capacity %d)", off, off+int64(len(data)), d.capacity)
	}
	f, err := os.OpenFile(d.flatPath, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	first, last := off/d.blockSize, (off+int64(len(data))-1)/d.blockSize
	if err := d.ensureAlloc(); err == nil {
		d.alloc.setRange(first, last+1)
	}
	if d.epoch != nil {
		for b := first; b <= last; b++ {
			d.written[b] = d.seq + 1
		}
	}
	return nil
}

func (d *diskState) sha256() (string, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return fileSHA256(d.flatPath)
}

func fileSHA256(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// grow extends the flat file and the descriptor to capacity. The CBT epoch of the disk restarts:
// after a resize real ESXi may lose track (KB 2090639), and vbm must treat it as a reason for a full.
func (d *diskState) grow(capacity int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if capacity < d.capacity {
		return fmt.Errorf("cannot shrink a disk (capacity %d, requested %d)", d.capacity, capacity)
	}
	if err := os.Truncate(d.flatPath, capacity); err != nil {
		return err
	}
	if err := rewriteDescriptorCapacity(d.descPath, capacity); err != nil {
		return err
	}
	d.capacity = capacity
	if d.alloc != nil {
		d.alloc = d.alloc.grow(d.blocks())
	}
	if d.epoch != nil {
		d.newEpoch()
	}
	return nil
}

func (d *diskState) resetEpoch() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.epoch != nil {
		d.newEpoch()
	}
}

// rewriteDescriptorCapacity changes the size of the (single) extent line of a descriptor and
// its geometry.
func rewriteDescriptorCapacity(descPath string, capacity int64) error {
	data, err := os.ReadFile(descPath)
	if err != nil {
		return err
	}
	text := string(data)
	loc := extentLine.FindStringSubmatchIndex(text)
	if loc == nil {
		return fmt.Errorf("%s: no extent line", descPath)
	}
	text = text[:loc[4]] + strconv.FormatInt(capacity/512, 10) + text[loc[5]:]
	c := capacity / (255 * 63 * 512)
	if c < 1 {
		c = 1
	}
	if c > 65535 {
		c = 65535
	}
	text = cylindersLine.ReplaceAllString(text, fmt.Sprintf("ddb.geometry.cylinders = \"%d\"", c))
	return writeFileAtomic(descPath, []byte(text))
}

var (
	extentLine    = regexp.MustCompile(`(?m)^(RW|RDONLY|NOACCESS)\s+(\d+)`)
	cylindersLine = regexp.MustCompile(`(?m)^ddb\.geometry\.cylinders\s*=.*$`)
)

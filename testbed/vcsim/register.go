package main

// RegisterVM and disk reconciliation.
//
// vcsim 0.24 registers a VM without reading its .vmx: it only checks that the .vmx,
// "<name>.nvram" (name = the name argument!) and vmware.log exist, and the new VM has no disks.
// The testbed creates the two missing helper files before vcsim looks, and afterwards reads the
// VMX's scsiX:Y.fileName entries and attaches those disks through ReconfigVM, so that the
// registered VM's config.hardware.device shows them like a real vCenter would.

import (
	"context"
	"fmt"
	"log"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// registerTarget resolves the datacenter, datastore and local .vmx path of a RegisterVM call.
func (tb *Testbed) registerTarget(req *types.RegisterVM_Task) (vmxLocal string, ds *dsInfo, rel string, err error) {
	dcRef, ok := datacenterOf(req.This)
	if !ok {
		return "", nil, "", fmt.Errorf("folder %s is not inside a datacenter", req.This)
	}
	dc := tb.dcByRef(dcRef)
	dsName, rel, ok := splitDatastorePath(req.Path)
	if !ok || dc == nil {
		return "", nil, "", fmt.Errorf("bad path %q", req.Path)
	}
	ds = dc.datastore(dsName)
	if ds == nil {
		return "", nil, "", fmt.Errorf("unknown datastore %q", dsName)
	}
	return filepath.Join(ds.Dir, filepath.FromSlash(path.Clean("/"+rel))), ds, rel, nil
}

// prepareRegister creates "<name>.nvram" and vmware.log next to an existing .vmx, because vcsim
// refuses to register without them. A missing .vmx is left alone so that the task fails as in vcsim.
func (tb *Testbed) prepareRegister(req *types.RegisterVM_Task) {
	vmx, _, rel, err := tb.registerTarget(req)
	if err != nil {
		return
	}
	if fi, err := os.Stat(vmx); err != nil || !fi.Mode().IsRegular() {
		return
	}
	name := req.Name
	if name == "" {
		name = path.Dir(rel) // vcsim's default name
	}
	dir := filepath.Dir(vmx)
	nvram := filepath.Join(dir, name+".nvram")
	if _, err := os.Stat(nvram); os.IsNotExist(err) {
		// Prefer a copy of the NVRAM the VMX names, so the new file is a plausible one.
		data := []byte{}
		if raw, err := os.ReadFile(vmx); err == nil {
			if n, ok := parseVMX(raw).Get("nvram"); ok && !strings.Contains(n, "/") {
				if b, err := os.ReadFile(filepath.Join(dir, n)); err == nil {
					data = b
				}
			}
		}
		if err := os.WriteFile(nvram, data, 0o644); err != nil {
			log.Printf("register: cannot create %s: %v", nvram, err)
		}
	}
	logFile := filepath.Join(dir, "vmware.log")
	if _, err := os.Stat(logFile); os.IsNotExist(err) {
		_ = os.WriteFile(logFile, vmwareLog(name), 0o644)
	}
}

// afterRegister attaches the disks named in the VMX to the freshly registered VM.
func (tb *Testbed) afterRegister(req *types.RegisterVM_Task, vmRef types.ManagedObjectReference) {
	vmxLocal, ds, rel, err := tb.registerTarget(req)
	if err != nil {
		return
	}
	raw, err := os.ReadFile(vmxLocal)
	if err != nil {
		return
	}
	vmx := parseVMX(raw)
	disks, ctrls := vmxDisks(vmx)

	var devices []types.BaseVirtualDevice
	for bus, dev := range ctrls {
		devices = append(devices, scsiController(bus, dev))
	}
	for i, d := range disks {
		dsPath, err := vmxDiskDatastorePath(ds.Name, path.Dir(rel), d.FileName)
		if err != nil {
			log.Printf("register %s: %v", req.Path, err)
			continue
		}
		local, dsi, err := tb.localPath(dsPath, nil, ds.DC.Ref)
		if err != nil {
			log.Printf("register %s: disk %s: %v", req.Path, dsPath, err)
			continue
		}
		text, err := os.ReadFile(local)
		if err != nil {
			log.Printf("register %s: disk %s: %v (not attached)", req.Path, dsPath, err)
			continue
		}
		desc, err := parseDescriptor(string(text))
		if err != nil {
			log.Printf("register %s: disk %s: %v (not attached)", req.Path, dsPath, err)
			continue
		}
		unit := int32(d.Unit)
		mode := d.Mode
		switch mode {
		case "persistent", "independent_persistent", "independent_nonpersistent", "nonpersistent", "undoable", "append":
		default:
			mode = "persistent"
		}
		disk := &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key:           int32(2000 + 16*d.Bus + d.Unit),
				DeviceInfo:    &types.Description{Label: fmt.Sprintf("Hard disk %d", i+1)},
				ControllerKey: int32(1000 + d.Bus),
				UnitNumber:    &unit,
				Backing: &types.VirtualDiskFlatVer2BackingInfo{
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: dsPath, Datastore: &dsi.Ref},
					DiskMode:                     mode,
					ThinProvisioned:              types.NewBool(desc.Thin),
				},
			},
			CapacityInKB:    desc.Capacity / 1024,
			CapacityInBytes: desc.Capacity,
		}
		devices = append(devices, disk)
	}

	spec := types.VirtualMachineConfigSpec{}
	if g, ok := vmx.Get("guestOS"); ok {
		if id := guestIDFromVMX(g); id != "" {
			spec.GuestId = id
		}
	}
	if m, ok := vmx.Get("memSize"); ok {
		fmt.Sscan(m, &spec.MemoryMB)
	}
	if c, ok := vmx.Get("numvcpus"); ok {
		fmt.Sscan(c, &spec.NumCPUs)
	}
	spec.DeviceChange = attachSpecs(devices)
	if err := tb.reconfigure(vmRef, spec); err != nil {
		log.Printf("register %s: attaching %d disks failed: %v", req.Path, len(disks), err)
	}
	tb.mu.Lock()
	delete(tb.vms, vmRef) // CBT state of the new VM starts off
	tb.mu.Unlock()
	tb.reconcileVM(vmRef)
	if err := tb.refreshStorage(vmRef); err != nil {
		log.Printf("register %s: %v", req.Path, err)
	}
}

// attachSpecs adds devices without a file operation, so that disks attach the existing files.
// (object.VirtualDeviceList.ConfigSpec would ask to create them, which vcsim refuses when the
// files exist.)
func attachSpecs(devices []types.BaseVirtualDevice) []types.BaseVirtualDeviceConfigSpec {
	var out []types.BaseVirtualDeviceConfigSpec
	for _, d := range devices {
		out = append(out, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: d})
	}
	return out
}

func scsiController(bus int, virtualDev string) types.BaseVirtualDevice {
	summary := map[string]string{
		"pvscsi":     "VMware paravirtual SCSI",
		"lsisas1068": "LSI Logic SAS",
		"buslogic":   "BusLogic",
	}[strings.ToLower(virtualDev)]
	if summary == "" {
		summary = "LSI Logic"
	}
	base := types.VirtualSCSIController{
		VirtualController: types.VirtualController{
			VirtualDevice: types.VirtualDevice{
				Key:        int32(1000 + bus),
				DeviceInfo: &types.Description{Label: fmt.Sprintf("SCSI controller %d", bus), Summary: summary},
			},
			BusNumber: int32(bus),
		},
		SharedBus:          types.VirtualSCSISharingNoSharing,
		ScsiCtlrUnitNumber: 7,
	}
	switch strings.ToLower(virtualDev) {
	case "pvscsi":
		return &types.ParaVirtualSCSIController{VirtualSCSIController: base}
	case "lsisas1068":
		return &types.VirtualLsiLogicSASController{VirtualSCSIController: base}
	case "buslogic":
		return &types.VirtualBusLogicController{VirtualSCSIController: base}
	default:
		return &types.VirtualLsiLogicController{VirtualSCSIController: base}
	}
}

// reconfigure runs ReconfigVM_Task through the in-process client and waits for it.
func (tb *Testbed) reconfigure(vmRef types.ManagedObjectReference, spec types.VirtualMachineConfigSpec) error {
	tb.internalMu.Lock()
	defer tb.internalMu.Unlock()
	ctx := context.Background()
	task, err := object.NewVirtualMachine(tb.client, vmRef).Reconfigure(ctx, spec)
	if err != nil {
		return err
	}
	return task.Wait(ctx)
}

func (tb *Testbed) refreshStorage(vmRef types.ManagedObjectReference) error {
	tb.internalMu.Lock()
	defer tb.internalMu.Unlock()
	return object.NewVirtualMachine(tb.client, vmRef).RefreshStorageInfo(context.Background())
}

// reconcileVM runs after calls that may add, create or resize disks (CreateVM_Task,
// ReconfigVM_Task, RegisterVM_Task): vcsim creates new disks as two empty files, so a real
// descriptor and a sparse flat extent of the right size are written; a disk whose capacity grew
// gets a larger flat file (and a new CBT epoch); the CBT flag is synced.
func (tb *Testbed) reconcileVM(vmRef types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		dcRef, _ := datacenterOf(vm.Self)
		uuids := map[int32]string{}
		for i, dev := range vmDisks(vm.Config.Hardware.Device) {
			fileName, dsRef, flat := diskBacking(dev)
			local, _, err := tb.localPath(fileName, dsRef, dcRef)
			if err != nil {
				continue
			}
			fi, err := os.Stat(local)
			if err == nil && fi.Size() == 0 {
				thin := flat != nil && isTrue(flat.ThinProvisioned)
				if err := materializeDisk(local, diskCapacity(dev), thin, seedFor(tb.spec.Seed, vm.Self.Value, fmt.Sprint(i), fileName)); err != nil {
					log.Printf("materialize %s: %v", fileName, err)
				}
			}
			if flat != nil && flat.Uuid == "" {
				if text, err := os.ReadFile(local); err == nil {
					if desc, err := parseDescriptor(string(text)); err == nil && desc.UUID != [16]byte{} {
						uuids[dev.Key] = desc.backingUUID()
					}
				}
			}
			tb.mu.Lock()
			var d *diskState
			if vs := tb.vms[vm.Self]; vs != nil {
				d = vs.disks[dev.Key]
			}
			tb.mu.Unlock()
			if d != nil && diskCapacity(dev) > d.capacity {
				if err := d.grow(diskCapacity(dev)); err != nil {
					log.Printf("grow %s: %v", fileName, err)
				}
			}
		}
		// vcsim leaves capacityInBytes unset and the backing uuid empty; a real vCenter fills both.
		editDisksLocked(vm, func(disk *types.VirtualDisk) bool {
			changed := false
			if disk.CapacityInBytes == 0 && disk.CapacityInKB > 0 {
				disk.CapacityInBytes = disk.CapacityInKB * 1024
				changed = true
			}
			if _, _, flat := diskBacking(disk); flat != nil && uuids[disk.Key] != "" && flat.Uuid == "" {
				flat.Uuid = uuids[disk.Key]
				changed = true
			}
			return changed
		})
		tb.syncVMLocked(vm)
	})
}

// materializeDisk turns vcsim's empty descriptor into a real one with a sparse flat extent.
func materializeDisk(descPath string, capacity int64, thin bool, seed uint64) error {
	base := strings.TrimSuffix(filepath.Base(descPath), ".vmdk")
	flatName := base + "-flat.vmdk"
	flatPath := filepath.Join(filepath.Dir(descPath), flatName)
	f, err := os.OpenFile(flatPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if fi, err := f.Stat(); err == nil && fi.Size() < capacity {
		if err := f.Truncate(capacity); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	desc := newDescriptor(flatName, capacity, thin, seed)
	return writeFileAtomic(descPath, []byte(desc.Text()))
}

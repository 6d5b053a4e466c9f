package main

// Building the inventory from a spec through the in-process govmomi client (vcsim's Service is a
// soap.RoundTripper, so no HTTP and no login are involved) plus the files behind every VM.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// diskPlan is one disk of a VM, with its names decided before anything is created.
type diskPlan struct {
	spec      *DiskSpec
	index     int
	ds        *dsInfo
	name      string // descriptor file name, e.g. "web01_1.vmdk"
	dsPath    string // "[ds 2] web01/web01_1.vmdk"
	descLocal string
	flatLocal string
	unit      int32
	desc      *diskDescriptor
	alloc     bitmap
}

type vmPlan struct {
	spec  *VMSpec
	dc    *dcInfo
	ds    *dsInfo // datastore of the .vmx
	disks []*diskPlan
}

func sanitizeDirName(name string) string {
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

func (tb *Testbed) build(ctx context.Context) error {
	c := tb.client
	root := object.NewRootFolder(c)
	folders := map[string]*object.Folder{"": root}
	usedDirs := map[string]bool{}

	// ensureFolder creates (once) a folder path below parent, keyed by a unique cache prefix.
	ensureFolder := func(cacheKey string, parent *object.Folder, p string) (*object.Folder, error) {
		cur := parent
		key := cacheKey
		if p == "" {
			return parent, nil
		}
		for _, part := range strings.Split(p, "/") {
			key += "/" + part
			if f, ok := folders[key]; ok {
				cur = f
				continue
			}
			f, err := cur.CreateFolder(ctx, part)
			if err != nil {
				return nil, fmt.Errorf("create folder %q: %v", key, err)
			}
			folders[key] = f
			cur = f
		}
		return cur, nil
	}

	var plans []*vmPlan
	for i := range tb.spec.Datacenters {
		dcSpec := &tb.spec.Datacenters[i]
		var dc *object.Datacenter
		if tb.spec.ESX {
			// ESXi's only datacenter exists from the start (validateESX named it ha-datacenter).
			dc = object.NewDatacenter(c, esx.Datacenter.Reference())
		} else {
			parent, err := ensureFolder("root:", root, dcSpec.Folder)
			if err != nil {
				return err
			}
			dc, err = parent.CreateDatacenter(ctx, dcSpec.Name)
			if err != nil {
				return fmt.Errorf("create datacenter %q: %v", dcSpec.Name, err)
			}
		}
		dcFolders, err := dc.Folders(ctx)
		if err != nil {
			return err
		}
		info := &dcInfo{Name: dcSpec.Name, Path: dcSpec.Path(), Ref: dc.Reference(), VMFolder: dcFolders.VmFolder.Reference()}
		tb.dcs = append(tb.dcs, info)

		var hosts []*object.HostSystem
		addHost := func(name, cluster string, add func(types.HostConnectSpec) (*object.Task, error)) error {
			task, err := add(types.HostConnectSpec{HostName: name})
			if err != nil {
				return err
			}
			res, err := task.WaitForResult(ctx, nil)
			if err != nil {
				return fmt.Errorf("add host %q: %v", name, err)
			}
			h := object.NewHostSystem(c, res.Result.(types.ManagedObjectReference))
			pool, err := h.ResourcePool(ctx)
			if err != nil {
				return err
			}
			hosts = append(hosts, h)
			info.Hosts = append(info.Hosts, hostInfo{Name: name, Ref: h.Reference(), Cluster: cluster, Pool: pool.Reference()})
			return nil
		}
		if tb.spec.ESX {
			// The host exists already (validateESX allows exactly one and names it).
			h, err := tb.esxHost(dcSpec.Hosts[0])
			if err != nil {
				return err
			}
			pool, err := h.ResourcePool(ctx)
			if err != nil {
				return err
			}
			hosts = append(hosts, h)
			info.Hosts = append(info.Hosts, hostInfo{Name: dcSpec.Hosts[0], Ref: h.Reference(), Pool: pool.Reference()})
		} else {
			for _, cs := range dcSpec.Clusters {
				cl, err := dcFolders.HostFolder.CreateCluster(ctx, cs.Name, types.ClusterConfigSpecEx{})
				if err != nil {
					return fmt.Errorf("create cluster %q: %v", cs.Name, err)
				}
				info.Clusters = append(info.Clusters, cs.Name)
				for _, h := range cs.Hosts {
					if err := addHost(h, cs.Name, func(s types.HostConnectSpec) (*object.Task, error) {
						return cl.AddHost(ctx, s, true, nil, nil)
					}); err != nil {
						return err
					}
				}
			}
			for _, h := range dcSpec.Hosts {
				if err := addHost(h, "", func(s types.HostConnectSpec) (*object.Task, error) {
					return dcFolders.HostFolder.AddStandaloneHost(ctx, s, true, nil, nil)
				}); err != nil {
					return err
				}
			}
		}

		for _, dsSpec := range dcSpec.Datastores {
			dirName := sanitizeDirName(dsSpec.Name)
			if usedDirs[dirName] {
				dirName = sanitizeDirName(dcSpec.Name) + "-" + dirName
			}
			for n := 2; usedDirs[dirName]; n++ {
				dirName = fmt.Sprintf("%s-%d", sanitizeDirName(dsSpec.Name), n)
			}
			usedDirs[dirName] = true
			dir := filepath.Join(tb.dataDir, dirName)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			ref, err := tb.createDatastore(ctx, dsSpec.Name, dsSpec.Type, dir, hosts)
			if err != nil {
				return fmt.Errorf("create datastore %q: %v", dsSpec.Name, err)
			}
			info.Datastores = append(info.Datastores, &dsInfo{Name: dsSpec.Name, Dir: dir, Ref: ref, DC: info})
		}

		for _, f := range dcSpec.VMFolders {
			if _, err := ensureFolder(info.Ref.Value+":vm", dcFolders.VmFolder, f); err != nil {
				return err
			}
		}
		for j := range dcSpec.VMs {
			vm := &dcSpec.VMs[j]
			p := &vmPlan{spec: vm, dc: info, ds: info.datastore(vm.Datastore)}
			for k := range vm.Disks {
				d := &vm.Disks[k]
				dp := &diskPlan{spec: d, index: k, ds: info.datastore(d.Datastore)}
				dp.name = vm.Name + ".vmdk"
				if k > 0 {
					dp.name = fmt.Sprintf("%s_%d.vmdk", vm.Name, k)
				}
				dp.dsPath = fmt.Sprintf("[%s] %s/%s", dp.ds.Name, vm.Name, dp.name)
				dp.descLocal = filepath.Join(dp.ds.Dir, vm.Name, dp.name)
				dp.flatLocal = strings.TrimSuffix(dp.descLocal, ".vmdk") + "-flat.vmdk"
				dp.unit = int32(k)
				if k >= 7 {
					dp.unit++ // unit 7 belongs to the SCSI controller itself
				}
				dp.desc = newDescriptor(filepath.Base(dp.flatLocal), d.Capacity, *d.Thin, seedFor(tb.spec.Seed, "descriptor", vm.Name, fmt.Sprint(k)))
				p.disks = append(p.disks, dp)
			}
			plans = append(plans, p)
			if _, err := ensureFolder(info.Ref.Value+":vm", dcFolders.VmFolder, vm.Folder); err != nil {
				return err
			}
		}
	}

	if err := tb.generateDisks(plans); err != nil {
		return err
	}
	for _, p := range plans {
		folder := folders[p.dc.Ref.Value+":vm"]
		if p.spec.Folder != "" {
			folder = folders[p.dc.Ref.Value+":vm/"+p.spec.Folder]
		}
		if folder == nil {
			folder = object.NewFolder(c, p.dc.VMFolder)
		}
		if err := tb.createVM(ctx, p, folder); err != nil {
			return fmt.Errorf("vm %q: %v", p.spec.Name, err)
		}
	}
	return nil
}

// esxHost returns the one host of the ESX model (ha-host), renamed as the spec says. vcsim names
// it localhost.localdomain; a real host shows its configured host name (often its FQDN).
func (tb *Testbed) esxHost(name string) (*object.HostSystem, error) {
	ref := esx.HostSystem.Reference()
	sh, ok := simulator.Map.Get(ref).(*simulator.HostSystem)
	if !ok {
		return nil, fmt.Errorf("the ESX model has no host %s", ref.Value)
	}
	var parent types.ManagedObjectReference
	simulator.Map.WithLock(sh, func() {
		sh.Name = name
		sh.Summary.Config.Name = name
		parent = *sh.Parent
	})
	if cr, ok := simulator.Map.Get(parent).(*mo.ComputeResource); ok {
		simulator.Map.WithLock(cr, func() { cr.Name = name })
	}
	return object.NewHostSystem(tb.client, ref), nil
}

// createDatastore makes one datastore backed by dir and mounts it on every host. vcsim's
// CreateLocalDatastore makes a new Datastore object per call, so it is called on the first host
// only and the other hosts get the mount added directly.
func (tb *Testbed) createDatastore(ctx context.Context, name, kind, dir string, hosts []*object.HostSystem) (types.ManagedObjectReference, error) {
	if len(hosts) == 0 {
		return types.ManagedObjectReference{}, fmt.Errorf("no hosts")
	}
	dss, err := hosts[0].ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	ds, err := dss.CreateLocalDatastore(ctx, name, dir)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	ref := ds.Reference()
	sds := simulator.Map.Get(ref).(*simulator.Datastore)
	simulator.Map.WithLock(sds, func() {
		// VMFS is what vbm expects for CBT "*" semantics; vcsim says OTHER.
		sds.Summary.Type = string(types.HostFileSystemVolumeFileSystemTypeVMFS)
		if kind != "" {
			sds.Summary.Type = kind
		}
	})
	for _, h := range hosts[1:] {
		sh := simulator.Map.Get(h.Reference()).(*simulator.HostSystem)
		simulator.Map.WithLock(sh, func() {
			sh.Datastore = append(sh.Datastore, ref)
		})
		if hdss, ok := simulator.Map.Get(sh.ConfigManager.DatastoreSystem.Reference()).(*simulator.HostDatastoreSystem); ok {
			simulator.Map.WithLock(hdss, func() {
				hdss.Datastore = append(hdss.Datastore, ref)
			})
		}
		switch cr := simulator.Map.Get(*sh.Parent).(type) {
		case *simulator.ClusterComputeResource:
			simulator.Map.WithLock(cr, func() {
				if simulator.FindReference(cr.Datastore, ref) == nil {
					cr.Datastore = append(cr.Datastore, ref)
				}
			})
		case *mo.ComputeResource:
			simulator.Map.WithLock(cr, func() {
				if simulator.FindReference(cr.Datastore, ref) == nil {
					cr.Datastore = append(cr.Datastore, ref)
				}
			})
		}
		simulator.Map.WithLock(sds, func() {
			sds.Host = append(sds.Host, types.DatastoreHostMount{
				Key: h.Reference(),
				MountInfo: types.HostMountInfo{
					AccessMode: string(types.HostMountModeReadWrite),
					Mounted:    types.NewBool(true),
					Accessible: types.NewBool(true),
				},
			})
		})
	}
	return ref, nil
}

// generateDisks writes every descriptor and flat extent, in parallel (it is the slow part of startup).
func (tb *Testbed) generateDisks(plans []*vmPlan) error {
	var all []*diskPlan
	for _, p := range plans {
		for _, d := range p.disks {
			if err := os.MkdirAll(filepath.Dir(d.descLocal), 0o755); err != nil {
				return err
			}
			all = append(all, d)
		}
		if err := os.MkdirAll(filepath.Join(p.ds.Dir, p.spec.Name), 0o755); err != nil {
			return err
		}
	}
	work := make(chan *diskPlan)
	errs := make(chan error, len(all))
	var wg sync.WaitGroup
	for i := 0; i < runtime.NumCPU(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range work {
				seed := seedFor(tb.spec.Seed, "data", d.dsPath)
				alloc, err := generateFlat(d.flatLocal, d.spec, seed, tb.spec.CBTBlockSize)
				if err == nil {
					d.alloc = alloc
					err = os.WriteFile(d.descLocal, []byte(d.desc.Text()), 0o644)
				}
				if err != nil {
					errs <- fmt.Errorf("disk %s: %v", d.dsPath, err)
				}
			}
		}()
	}
	for _, d := range all {
		work <- d
	}
	close(work)
	wg.Wait()
	close(errs)
	return <-errs
}

func (tb *Testbed) createVM(ctx context.Context, p *vmPlan, folder *object.Folder) error {
	c := tb.client
	s := p.spec
	var host hostInfo
	for _, h := range p.dc.Hosts {
		if h.Name == s.Host {
			host = h
		}
	}
	var devices []types.BaseVirtualDevice
	devices = append(devices, scsiController(0, "lsilogic"))
	for _, d := range p.disks {
		unit := d.unit
		ds := d.ds.Ref
		devices = append(devices, &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key:           2000 + int32(d.index),
				DeviceInfo:    &types.Description{Label: fmt.Sprintf("Hard disk %d", d.index+1)},
				ControllerKey: 1000,
				UnitNumber:    &unit,
				Backing: &types.VirtualDiskFlatVer2BackingInfo{
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: d.dsPath, Datastore: &ds},
					DiskMode:                     d.spec.Mode,
					ThinProvisioned:              types.NewBool(*d.spec.Thin),
					EagerlyScrub:                 types.NewBool(false),
					Uuid:                         d.desc.backingUUID(),
				},
			},
			CapacityInKB:    d.spec.Capacity / 1024,
			CapacityInBytes: d.spec.Capacity,
		})
	}
	changes := attachSpecs(devices)
	config := types.VirtualMachineConfigSpec{
		Name:                  s.Name,
		GuestId:               s.GuestID,
		MemoryMB:              int64(s.MemoryMB),
		NumCPUs:               s.CPUs,
		Version:               "vmx-14",
		ChangeTrackingEnabled: types.NewBool(s.CBT),
		Files:                 &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s] %s/%s.vmx", p.ds.Name, s.Name, s.Name)},
		DeviceChange:          changes,
	}
	task, err := folder.CreateVM(ctx, config, object.NewResourcePool(c, host.Pool), object.NewHostSystem(c, host.Ref))
	if err != nil {
		return err
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return err
	}
	vmRef := res.Result.(types.ManagedObjectReference)

	// vcsim created empty .vmx/.nvram/vmware.log files; give them plausible contents.
	svm := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	var biosUUID, instanceUUID string
	simulator.Map.WithLock(svm, func() { biosUUID, instanceUUID = svm.Config.Uuid, svm.Config.InstanceUuid })
	dir := filepath.Join(p.ds.Dir, s.Name)
	if err := os.WriteFile(filepath.Join(dir, s.Name+".vmx"), tb.vmxFor(p, biosUUID, instanceUUID), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, s.Name+".nvram"), nvramBytes(seedFor(tb.spec.Seed, "nvram", s.Name)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "vmware.log"), vmwareLog(s.Name), 0o644); err != nil {
		return err
	}

	// Hand the allocation maps computed while generating to the CBT state.
	tb.reconcileVM(vmRef)
	tb.mu.Lock()
	if vs := tb.vms[vmRef]; vs != nil {
		for _, d := range p.disks {
			if ds := vs.disks[2000+int32(d.index)]; ds != nil && d.alloc != nil {
				ds.alloc = d.alloc
			}
		}
	}
	tb.mu.Unlock()

	vm := object.NewVirtualMachine(c, vmRef)
	if s.Power == "on" {
		t, err := vm.PowerOn(ctx)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return fmt.Errorf("power on: %v", err)
		}
	}
	for _, name := range s.Snapshots {
		t, err := vm.CreateSnapshot(ctx, name, "created by the vbm testbed spec", false, false)
		if err != nil {
			return err
		}
		res, err := t.WaitForResult(ctx, nil)
		if err != nil {
			return fmt.Errorf("snapshot %q: %v", name, err)
		}
		tb.afterCreateSnapshot(vmRef, res.Result.(types.ManagedObjectReference))
	}
	return vm.RefreshStorageInfo(ctx)
}

// vmxFor renders the VMX of a spec VM. Disks on the VM's own datastore are named relative to
// the .vmx; disks on another datastore get an absolute /vmfs/volumes/<datastore name>/... path.
func (tb *Testbed) vmxFor(p *vmPlan, biosUUID, instanceUUID string) []byte {
	s := p.spec
	v := newVMX()
	v.Set(".encoding", "UTF-8")
	v.Set("config.version", "8")
	v.Set("virtualHW.version", "14")
	v.Set("displayName", s.Name)
	v.Set("guestOS", vmxGuestOS(s.GuestID))
	v.Set("memSize", fmt.Sprint(s.MemoryMB))
	v.Set("numvcpus", fmt.Sprint(s.CPUs))
	v.Set("nvram", s.Name+".nvram")
	v.Set("uuid.bios", vmxUUID(biosUUID))
	v.Set("vc.uuid", vmxUUID(instanceUUID))
	if s.CBT {
		v.Set("ctkEnabled", "TRUE")
	}
	v.Set("scsi0.present", "TRUE")
	v.Set("scsi0.virtualDev", "lsilogic")
	for _, d := range p.disks {
		prefix := fmt.Sprintf("scsi0:%d.", d.unit)
		v.Set(prefix+"present", "TRUE")
		if d.ds == p.ds {
			v.Set(prefix+"fileName", d.name)
		} else {
			v.Set(prefix+"fileName", fmt.Sprintf("/vmfs/volumes/%s/%s/%s", d.ds.Name, s.Name, d.name))
		}
		if d.spec.Mode != "persistent" {
			v.Set(prefix+"mode", strings.ReplaceAll(d.spec.Mode, "_", "-"))
		}
		if s.CBT {
			v.Set(prefix+"ctkEnabled", "TRUE")
		}
	}
	return v.Bytes()
}

// vmxUUID turns "564d1234-..." into the VMX form "56 4d 12 34 ... -...".
func vmxUUID(u string) string {
	h := strings.ReplaceAll(u, "-", "")
	if len(h) != 32 {
		return u
	}
	var parts []string
	for i := 0; i < 32; i += 2 {
		sep := " "
		if i == 0 {
			sep = ""
		} else if i == 16 {
			sep = "-"
		}
		parts = append(parts, sep+h[i:i+2])
	}
	return strings.Join(parts, "")
}

package main

// The JSON views of the control endpoint: /info, /vms, /snapshots and /stats.

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type diskInfoJSON struct {
	Key            int32  `json:"key"`
	Label          string `json:"label"`
	File           string `json:"file"`
	DescriptorPath string `json:"descriptor_path"`
	FlatPath       string `json:"flat_path"`
	CapacityBytes  int64  `json:"capacity_bytes"`
	Thin           bool   `json:"thin"`
	Mode           string `json:"mode"`
	Datastore      string `json:"datastore"`
	ControllerKey  int32  `json:"controller_key"`
	UnitNumber     int32  `json:"unit_number"`
	ChangeID       string `json:"change_id"`
}

type vmInfoJSON struct {
	Name          string         `json:"name"`
	Moref         string         `json:"moref"`
	InstanceUUID  string         `json:"instance_uuid"`
	BiosUUID      string         `json:"bios_uuid"`
	Datacenter    string         `json:"datacenter"`
	Folder        string         `json:"folder"`
	InventoryPath string         `json:"inventory_path"`
	Host          string         `json:"host"`
	Power         string         `json:"power"`
	CBT           bool           `json:"cbt"`
	Snapshots     []string       `json:"snapshots"`
	VmxPath       string         `json:"vmx_path"`
	VmxLocalPath  string         `json:"vmx_local_path"`
	Disks         []diskInfoJSON `json:"disks"`
}

func entityName(ref types.ManagedObjectReference) (string, *types.ManagedObjectReference) {
	obj := simulator.Map.Get(ref)
	e, ok := obj.(mo.Entity)
	if !ok {
		return "", nil
	}
	var name string
	var parent *types.ManagedObjectReference
	simulator.Map.WithLock(obj, func() {
		name = e.Entity().Name
		if p := e.Entity().Parent; p != nil {
			c := *p
			parent = &c
		}
	})
	return name, parent
}

// vmFolderPath returns the folder path of a VM below its datacenter's VM folder ("Prod/Web").
func (tb *Testbed) vmFolderPath(parent *types.ManagedObjectReference) (string, *dcInfo) {
	var parts []string
	for p := parent; p != nil; {
		if p.Type == "Datacenter" {
			break
		}
		name, up := entityName(*p)
		if up != nil && up.Type == "Datacenter" {
			// p is the datacenter's "vm" folder itself
			dc := tb.dcByRef(*up)
			for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
				parts[i], parts[j] = parts[j], parts[i]
			}
			return strings.Join(parts, "/"), dc
		}
		parts = append(parts, name)
		p = up
	}
	return strings.Join(parts, "/"), nil
}

func (tb *Testbed) vmInfo(vm *simulator.VirtualMachine) *vmInfoJSON {
	simulator.Map.WithLock(vm, func() { tb.syncVMLocked(vm) })
	info := &vmInfoJSON{Snapshots: []string{}, Disks: []diskInfoJSON{}}
	var parent *types.ManagedObjectReference
	var host *types.ManagedObjectReference
	simulator.Map.WithLock(vm, func() {
		info.Name = vm.Name
		info.Moref = vm.Self.Value
		if vm.Parent != nil {
			p := *vm.Parent
			parent = &p
		}
		if vm.Runtime.Host != nil {
			h := *vm.Runtime.Host
			host = &h
		}
		switch vm.Runtime.PowerState {
		case types.VirtualMachinePowerStatePoweredOn:
			info.Power = "on"
		case types.VirtualMachinePowerStateSuspended:
			info.Power = "suspended"
		default:
			info.Power = "off"
		}
		if vm.Snapshot != nil {
			var walk func([]types.VirtualMachineSnapshotTree)
			walk = func(list []types.VirtualMachineSnapshotTree) {
				for _, s := range list {
					info.Snapshots = append(info.Snapshots, s.Name)
					walk(s.ChildSnapshotList)
				}
			}
			walk(vm.Snapshot.RootSnapshotList)
		}
		if vm.Config == nil {
			return
		}
		info.InstanceUUID = vm.Config.InstanceUuid
		info.BiosUUID = vm.Config.Uuid
		info.CBT = isTrue(vm.Config.ChangeTrackingEnabled)
		info.VmxPath = vm.Config.Files.VmPathName
		dcRef, _ := datacenterOf(vm.Self)
		if p, _, err := tb.localPath(info.VmxPath, nil, dcRef); err == nil {
			info.VmxLocalPath = p
		}
		tb.mu.Lock()
		vs := tb.vms[vm.Self]
		for _, dev := range vmDisks(vm.Config.Hardware.Device) {
			fileName, _, flat := diskBacking(dev)
			di := diskInfoJSON{Key: dev.Key, File: fileName, CapacityBytes: diskCapacity(dev), ControllerKey: dev.ControllerKey, Mode: "persistent"}
			if dev.UnitNumber != nil {
				di.UnitNumber = *dev.UnitNumber
			}
			if dev.DeviceInfo != nil {
				di.Label = dev.DeviceInfo.GetDescription().Label
			}
			if flat != nil {
				di.Thin = isTrue(flat.ThinProvisioned)
				di.ChangeID = flat.ChangeId
				if flat.DiskMode != "" {
					di.Mode = flat.DiskMode
				}
			}
			if vs != nil {
				if d := vs.disks[dev.Key]; d != nil {
					di.DescriptorPath, di.FlatPath, di.Datastore = d.descPath, d.flatPath, d.datastore
				}
			}
			info.Disks = append(info.Disks, di)
		}
		tb.mu.Unlock()
	})
	folder, dc := tb.vmFolderPath(parent)
	info.Folder = folder
	if dc != nil {
		info.Datacenter = dc.Path
		info.InventoryPath = "/" + dc.Path + "/vm/" + folder
		if folder != "" {
			info.InventoryPath += "/"
		}
		info.InventoryPath += info.Name
	}
	if host != nil {
		info.Host, _ = entityName(*host)
	}
	return info
}

func (tb *Testbed) vmInfos() []*vmInfoJSON {
	out := []*vmInfoJSON{}
	for _, vm := range allVMs() {
		out = append(out, tb.vmInfo(vm))
	}
	return out
}

type dsJSON struct {
	Name  string `json:"name"`
	Moref string `json:"moref"`
	Dir   string `json:"dir"`
}

type hostJSON struct {
	Name    string `json:"name"`
	Moref   string `json:"moref"`
	Cluster string `json:"cluster,omitempty"`
}

type dcJSON struct {
	Name       string     `json:"name"`
	Path       string     `json:"path"`
	Moref      string     `json:"moref"`
	VMFolder   string     `json:"vm_folder"`
	Datastores []dsJSON   `json:"datastores"`
	Hosts      []hostJSON `json:"hosts"`
	Clusters   []string   `json:"clusters"`
}

func (tb *Testbed) info() map[string]interface{} {
	out := map[string]interface{}{}
	raw, _ := json.Marshal(tb.startup)
	_ = json.Unmarshal(raw, &out)
	var dcs []dcJSON
	for _, dc := range tb.dcs {
		d := dcJSON{Name: dc.Name, Path: dc.Path, Moref: dc.Ref.Value, VMFolder: dc.VMFolder.Value, Clusters: dc.Clusters, Datastores: []dsJSON{}, Hosts: []hostJSON{}}
		if d.Clusters == nil {
			d.Clusters = []string{}
		}
		for _, ds := range dc.Datastores {
			d.Datastores = append(d.Datastores, dsJSON{Name: ds.Name, Moref: ds.Ref.Value, Dir: ds.Dir})
		}
		for _, h := range dc.Hosts {
			d.Hosts = append(d.Hosts, hostJSON{Name: h.Name, Moref: h.Ref.Value, Cluster: h.Cluster})
		}
		dcs = append(dcs, d)
	}
	out["datacenters"] = dcs
	out["vms"] = tb.vmInfos()
	out["cbt_block_size"] = tb.spec.CBTBlockSize
	out["qcda_window"] = tb.spec.QCDAWindow
	return out
}

type snapshotJSON struct {
	Name        string            `json:"name"`
	Moref       string            `json:"moref"`
	ID          int32             `json:"id"`
	Description string            `json:"description"`
	CreateTime  string            `json:"create_time"`
	Parent      string            `json:"parent,omitempty"`
	ParentMoref string            `json:"parent_moref,omitempty"`
	Quiesced    bool              `json:"quiesced"`
	Current     bool              `json:"current"`
	ChangeIDs   map[string]string `json:"change_ids"`
}

type vmSnapshotsJSON struct {
	VM        string         `json:"vm"`
	Moref     string         `json:"moref"`
	Snapshots []snapshotJSON `json:"snapshots"`
}

func (tb *Testbed) snapshots() []vmSnapshotsJSON {
	out := []vmSnapshotsJSON{}
	for _, vm := range allVMs() {
		entry := vmSnapshotsJSON{Snapshots: []snapshotJSON{}}
		var trees []types.VirtualMachineSnapshotTree
		var current *types.ManagedObjectReference
		simulator.Map.WithLock(vm, func() {
			entry.VM, entry.Moref = vm.Name, vm.Self.Value
			if vm.Snapshot != nil {
				trees = deepCopy(vm.Snapshot.RootSnapshotList).([]types.VirtualMachineSnapshotTree)
				current = vm.Snapshot.CurrentSnapshot
			}
		})
		var walk func(list []types.VirtualMachineSnapshotTree, parent *types.VirtualMachineSnapshotTree)
		walk = func(list []types.VirtualMachineSnapshotTree, parent *types.VirtualMachineSnapshotTree) {
			for i := range list {
				s := &list[i]
				sj := snapshotJSON{
					Name: s.Name, Moref: s.Snapshot.Value, ID: s.Id, Description: s.Description,
					CreateTime: s.CreateTime.UTC().Format(time.RFC3339Nano), Quiesced: s.Quiesced,
					Current: current != nil && *current == s.Snapshot, ChangeIDs: map[string]string{},
				}
				if parent != nil {
					sj.Parent, sj.ParentMoref = parent.Name, parent.Snapshot.Value
				}
				if so, ok := simulator.Map.Get(s.Snapshot).(*simulator.VirtualMachineSnapshot); ok {
					simulator.Map.WithLock(so, func() {
						for _, dev := range vmDisks(so.Config.Hardware.Device) {
							if _, _, flat := diskBacking(dev); flat != nil && flat.ChangeId != "" {
								sj.ChangeIDs[strconv.Itoa(int(dev.Key))] = flat.ChangeId
							}
						}
					})
				}
				entry.Snapshots = append(entry.Snapshots, sj)
				walk(s.ChildSnapshotList, s)
			}
		}
		walk(trees, nil)
		out = append(out, entry)
	}
	return out
}

func (tb *Testbed) statsJSON() map[string]interface{} {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	copyMap := func(m map[string]int64) map[string]int64 {
		c := make(map[string]int64, len(m))
		for k, v := range m {
			c[k] = v
		}
		return c
	}
	var soapTotal int64
	for _, n := range tb.stats.SOAPCalls {
		soapTotal += n
	}
	return map[string]interface{}{
		"folder_get_bytes":    map[string]interface{}{"total": tb.stats.FolderGetBytes, "per_path": copyMap(tb.stats.FolderGetPerPath)},
		"folder_put_bytes":    map[string]interface{}{"total": tb.stats.FolderPutBytes, "per_path": copyMap(tb.stats.FolderPutPerPath)},
		"folder_requests":     copyMap(tb.stats.FolderRequests),
		"folder_unauthorized": tb.stats.FolderUnauthorized,
		"soap_calls":          copyMap(tb.stats.SOAPCalls),
		"soap_calls_total":    soapTotal,
		"not_authenticated":   tb.stats.NotAuthenticated,
		"active_sessions":     len(tb.sessions),
		"logins":              tb.stats.Logins,
		"logouts":             tb.stats.Logouts,
	}
}

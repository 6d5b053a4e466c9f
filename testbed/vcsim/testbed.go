package main

// Testbed is the state the front handler keeps next to vcsim's own: sessions it has seen, CBT
// state per VM disk, fault rules and counters, and the local directories of the datastores.
//
// Lock order (outer to inner): a vcsim object lock (simulator.Map.WithLock) -> tb.mu -> diskState.mu.
// Never take a vcsim object lock while holding tb.mu or a disk lock, and never call the in-process
// vim25 client while holding any of them (vcsim locks the target object for every call).

import (
	"fmt"
	"net/http"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type dcInfo struct {
	Name       string
	Path       string // inventory path below the root folder, e.g. "Europe/DC0"
	Ref        types.ManagedObjectReference
	VMFolder   types.ManagedObjectReference
	Datastores []*dsInfo
	Hosts      []hostInfo
	Clusters   []string
}

type hostInfo struct {
	Name    string
	Ref     types.ManagedObjectReference
	Cluster string
	Pool    types.ManagedObjectReference
}

type dsInfo struct {
	Name string
	Dir  string
	Ref  types.ManagedObjectReference
	DC   *dcInfo
}

type Testbed struct {
	spec     *Spec
	dataDir  string
	user     string
	password string
	next     http.Handler // vcsim's own handler

	client     *vim25.Client // in-process client (no HTTP, internal session)
	internalMu sync.Mutex    // serialises in-process client calls (they share one vcsim Context)

	startup *startupInfo // the startup JSON line

	mu       sync.Mutex
	dcs      []*dcInfo
	sessions map[string]bool // vmware_soap_session cookie values that vcsim issued and that are live
	vms      map[types.ManagedObjectReference]*vmState
	pending  map[string]*pendingResult // RetrievePropertiesEx pages not yet continued, by token
	rules    []*FaultRule
	nextRule int
	stats    stats
}

// stats are the counters of GET /_testbed/stats (rendered by statsJSON).
type stats struct {
	FolderGetBytes     int64
	FolderGetPerPath   map[string]int64
	FolderPutBytes     int64
	FolderPutPerPath   map[string]int64
	FolderRequests     map[string]int64
	SOAPCalls          map[string]int64
	Logins             int64
	Logouts            int64
	NotAuthenticated   int64
	FolderUnauthorized int64
}

func (s *stats) reset() {
	*s = stats{
		FolderGetPerPath: map[string]int64{},
		FolderPutPerPath: map[string]int64{},
		FolderRequests:   map[string]int64{},
		SOAPCalls:        map[string]int64{},
	}
}

func newTestbed(spec *Spec, dataDir, user, password string) *Testbed {
	tb := &Testbed{
		spec:     spec,
		dataDir:  dataDir,
		user:     user,
		password: password,
		sessions: map[string]bool{},
		vms:      map[types.ManagedObjectReference]*vmState{},
		pending:  map[string]*pendingResult{},
	}
	tb.stats.reset()
	return tb
}

// --- inventory lookups -------------------------------------------------------------------------

func (tb *Testbed) dsByRef(ref types.ManagedObjectReference) *dsInfo {
	for _, dc := range tb.dcs {
		for _, ds := range dc.Datastores {
			if ds.Ref == ref {
				return ds
			}
		}
	}
	return nil
}

func (tb *Testbed) dcByRef(ref types.ManagedObjectReference) *dcInfo {
	for _, dc := range tb.dcs {
		if dc.Ref == ref {
			return dc
		}
	}
	return nil
}

// dcByPath resolves a /folder dcPath (leading slash optional). An empty path means "the only
// datacenter", as vcsim does.
func (tb *Testbed) dcByPath(p string) *dcInfo {
	p = strings.Trim(p, "/")
	if p == "" {
		if len(tb.dcs) == 1 {
			return tb.dcs[0]
		}
		return nil
	}
	for _, dc := range tb.dcs {
		if dc.Path == p {
			return dc
		}
	}
	return nil
}

func (dc *dcInfo) datastore(name string) *dsInfo {
	if name == "" && len(dc.Datastores) == 1 {
		return dc.Datastores[0]
	}
	for _, ds := range dc.Datastores {
		if ds.Name == name {
			return ds
		}
	}
	return nil
}

// datacenterOf walks up the parent chain of a managed entity to its Datacenter.
func datacenterOf(ref types.ManagedObjectReference) (types.ManagedObjectReference, bool) {
	for i := 0; i < 64; i++ {
		if ref.Type == "Datacenter" {
			return ref, true
		}
		obj := simulator.Map.Get(ref)
		e, ok := obj.(mo.Entity)
		if !ok || e.Entity().Parent == nil {
			return types.ManagedObjectReference{}, false
		}
		ref = *e.Entity().Parent
	}
	return types.ManagedObjectReference{}, false
}

// splitDatastorePath splits "[ds] dir/file" into ("ds", "dir/file").
func splitDatastorePath(p string) (string, string, bool) {
	if !strings.HasPrefix(p, "[") {
		return "", "", false
	}
	i := strings.Index(p, "]")
	if i < 0 {
		return "", "", false
	}
	return p[1:i], strings.TrimSpace(p[i+1:]), true
}

// localPath maps a datastore path to a local file, using the datastore moref when known (it is
// unambiguous) and the datacenter + datastore name otherwise.
func (tb *Testbed) localPath(dsPath string, dsRef *types.ManagedObjectReference, dcRef types.ManagedObjectReference) (string, *dsInfo, error) {
	name, rel, ok := splitDatastorePath(dsPath)
	if !ok {
		return "", nil, fmt.Errorf("not a datastore path: %q", dsPath)
	}
	var ds *dsInfo
	if dsRef != nil {
		ds = tb.dsByRef(*dsRef)
	}
	if ds == nil {
		if dc := tb.dcByRef(dcRef); dc != nil {
			ds = dc.datastore(name)
		}
	}
	if ds == nil {
		return "", nil, fmt.Errorf("unknown datastore %q", name)
	}
	clean := path.Clean("/" + rel)
	return filepath.Join(ds.Dir, filepath.FromSlash(clean)), ds, nil
}

// --- VM lookups for control endpoints -----------------------------------------------------------

func allVMs() []*simulator.VirtualMachine {
	var out []*simulator.VirtualMachine
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			out = append(out, vm)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// findVM accepts a VM name, moref value or instance UUID.
func findVM(id string) *simulator.VirtualMachine {
	var found *simulator.VirtualMachine
	for _, vm := range allVMs() {
		var name, moid, iuuid string
		simulator.Map.WithLock(vm, func() {
			name, moid = vm.Name, vm.Self.Value
			if vm.Config != nil {
				iuuid = vm.Config.InstanceUuid
			}
		})
		if moid == id || strings.EqualFold(iuuid, id) {
			return vm
		}
		if name == id && found == nil {
			found = vm
		}
	}
	return found
}

func vmName(ref types.ManagedObjectReference) string {
	switch ref.Type {
	case "VirtualMachine":
		if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
			var n string
			simulator.Map.WithLock(vm, func() { n = vm.Name })
			return n
		}
	case "VirtualMachineSnapshot":
		if s, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot); ok {
			return vmName(s.Vm)
		}
	}
	return ""
}

func isTrue(b *bool) bool { return b != nil && *b }

func diskBacking(d *types.VirtualDisk) (fileName string, dsRef *types.ManagedObjectReference, flat *types.VirtualDiskFlatVer2BackingInfo) {
	if f, ok := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
		return f.FileName, f.Datastore, f
	}
	if b, ok := d.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
		info := b.GetVirtualDeviceFileBackingInfo()
		return info.FileName, info.Datastore, nil
	}
	return "", nil, nil
}

func diskCapacity(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes > 0 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB * 1024
}

func vmDisks(devices []types.BaseVirtualDevice) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok {
			out = append(out, disk)
		}
	}
	return out
}

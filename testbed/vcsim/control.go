package main

// The control endpoint under /_testbed/: JSON in and out, no authentication (it is a test tool
// on a loopback port). Errors are {"error": "..."} with a 4xx status.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, format string, args ...interface{}) *httpError {
	return &httpError{status, fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func (tb *Testbed) serveControl(w http.ResponseWriter, r *http.Request) {
	v, err := tb.control(r)
	if err != nil {
		status := http.StatusBadRequest
		if he, ok := err.(*httpError); ok {
			status = he.status
		}
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// decodeJSON decodes a request body strictly (unknown fields are errors).
func decodeJSON(r *http.Request, v interface{}) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 256<<20))
	if err != nil {
		return errorf(http.StatusBadRequest, "reading body: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "bad JSON body: %v", err)
	}
	return nil
}

func (tb *Testbed) control(r *http.Request) (interface{}, error) {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), "/_testbed")
	rest = strings.Trim(rest, "/")
	var parts []string
	if rest != "" {
		for _, p := range strings.Split(rest, "/") {
			u, err := url.PathUnescape(p)
			if err != nil {
				return nil, errorf(http.StatusBadRequest, "bad path segment %q", p)
			}
			parts = append(parts, u)
		}
	}
	route := func(method string, pattern ...string) bool {
		if len(parts) != len(pattern) {
			return false
		}
		for i, p := range pattern {
			if p != "*" && p != parts[i] {
				return false
			}
		}
		if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
			return false
		}
		return true
	}
	switch {
	case route(http.MethodGet, "info"):
		return tb.info(), nil
	case route(http.MethodGet, "vms"):
		return tb.vmInfos(), nil
	case route(http.MethodGet, "vms", "*"):
		vm, err := vmArg(parts[1])
		if err != nil {
			return nil, err
		}
		return tb.vmInfo(vm), nil
	case route(http.MethodPost, "vms", "*", "disks", "*", "write"):
		return tb.controlWrite(r, parts[1], parts[3])
	case route(http.MethodGet, "vms", "*", "disks", "*", "sha256"):
		_, d, err := tb.diskArg(parts[1], parts[3])
		if err != nil {
			return nil, err
		}
		sum, n, err := d.sha256()
		if err != nil {
			return nil, errorf(http.StatusInternalServerError, "%v", err)
		}
		return map[string]interface{}{"sha256": sum, "size": n, "flat_path": d.flatPath}, nil
	case route(http.MethodPost, "vms", "*", "disks", "*", "resize"):
		return tb.controlResize(r, parts[1], parts[3])
	case route(http.MethodPost, "vms", "*", "cbt", "reset"):
		return tb.controlCBTReset(parts[1])
	case route(http.MethodGet, "snapshots"):
		return tb.snapshots(), nil
	case route(http.MethodGet, "faults"):
		tb.mu.Lock()
		defer tb.mu.Unlock()
		out := make([]FaultRule, 0, len(tb.rules))
		for _, rule := range tb.rules {
			out = append(out, *rule)
		}
		return out, nil
	case route(http.MethodPost, "faults"):
		return tb.addFault(r)
	case route(http.MethodDelete, "faults"):
		tb.mu.Lock()
		n := len(tb.rules)
		tb.rules = nil
		tb.mu.Unlock()
		return map[string]int{"cleared": n}, nil
	case route(http.MethodGet, "stats"):
		return tb.statsJSON(), nil
	case route(http.MethodPost, "stats", "reset"):
		tb.mu.Lock()
		tb.stats.reset()
		tb.mu.Unlock()
		return map[string]bool{"reset": true}, nil
	}
	return nil, errorf(http.StatusNotFound, "no such control endpoint: %s %s", r.Method, r.URL.Path)
}

func vmArg(id string) (*simulator.VirtualMachine, error) {
	vm := findVM(id)
	if vm == nil {
		return nil, errorf(http.StatusNotFound, "no VM with name, moref or instance uuid %q", id)
	}
	return vm, nil
}

func (tb *Testbed) diskArg(vmID, keyText string) (*simulator.VirtualMachine, *diskState, error) {
	vm, err := vmArg(vmID)
	if err != nil {
		return nil, nil, err
	}
	key, err := strconv.ParseInt(keyText, 10, 32)
	if err != nil {
		return nil, nil, errorf(http.StatusBadRequest, "bad disk key %q", keyText)
	}
	d, ok := tb.diskFor(vm, int32(key))
	if !ok {
		return nil, nil, errorf(http.StatusNotFound, "VM %q has no disk with key %d", vmID, key)
	}
	return vm, d, nil
}

func (tb *Testbed) addFault(r *http.Request) (interface{}, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "reading body: %v", err)
	}
	var probe struct {
		Kind string `json:"kind"`
	}
	_ = json.Unmarshal(body, &probe)
	if probe.Kind == "session_expire" {
		var empty struct {
			Kind string `json:"kind"`
		}
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&empty); err != nil {
			return nil, errorf(http.StatusBadRequest, "session_expire takes no options: %v", err)
		}
		n := tb.expireSessions()
		return map[string]interface{}{"kind": "session_expire", "expired_sessions": n}, nil
	}
	rule, err := parseFaultRule(body)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "%v", err)
	}
	tb.mu.Lock()
	tb.nextRule++
	rule.ID = tb.nextRule
	tb.rules = append(tb.rules, rule)
	tb.mu.Unlock()
	log.Printf("fault rule %d added: %s", rule.ID, body)
	return rule, nil
}

// expireSessions ends every session: vcsim forgets them (TerminateSession) and the front handler
// stops accepting their cookies, so SOAP answers NotAuthenticated and /folder 401 until a new Login.
func (tb *Testbed) expireSessions() int {
	tb.mu.Lock()
	ids := make([]string, 0, len(tb.sessions))
	for id := range tb.sessions {
		ids = append(ids, id)
	}
	tb.sessions = map[string]bool{}
	tb.pending = map[string]*pendingResult{}
	tb.mu.Unlock()
	sm := simulator.Map.SessionManager()
	ctx := &simulator.Context{
		Session: &simulator.Session{UserSession: types.UserSession{Key: "vbm-testbed-control"}},
		Map:     simulator.Map,
	}
	for _, id := range ids {
		sm.TerminateSession(ctx, &types.TerminateSession{SessionId: []string{id}})
	}
	log.Printf("fault: expired %d sessions", len(ids))
	return len(ids)
}

type writeRequest struct {
	Offset     *int64  `json:"offset"`
	Length     *int64  `json:"length"`
	Seed       *int64  `json:"seed"`
	DataBase64 *string `json:"data_base64"`
	Zero       bool    `json:"zero"`
}

func (tb *Testbed) controlWrite(r *http.Request, vmID, keyText string) (interface{}, error) {
	vm, d, err := tb.diskArg(vmID, keyText)
	if err != nil {
		return nil, err
	}
	var req writeRequest
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Offset == nil || *req.Offset < 0 {
		return nil, errorf(http.StatusBadRequest, "offset (>= 0) is required")
	}
	sources := 0
	if req.Seed != nil {
		sources++
	}
	if req.DataBase64 != nil {
		sources++
	}
	if req.Zero {
		sources++
	}
	if sources != 1 {
		return nil, errorf(http.StatusBadRequest, "give exactly one of seed (with length), data_base64, or zero: true (with length)")
	}
	var data []byte
	if req.DataBase64 != nil {
		data, err = base64.StdEncoding.DecodeString(*req.DataBase64)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "data_base64: %v", err)
		}
		if req.Length != nil && *req.Length != int64(len(data)) {
			return nil, errorf(http.StatusBadRequest, "length %d does not match the %d decoded bytes", *req.Length, len(data))
		}
	} else {
		if req.Length == nil || *req.Length <= 0 || *req.Length > 1<<30 {
			return nil, errorf(http.StatusBadRequest, "length (1 .. 1 GiB) is required with seed or zero")
		}
		data = make([]byte, *req.Length)
		if req.Seed != nil {
			newPRNG(uint64(*req.Seed)).Fill(data)
		}
	}
	if err := d.write(*req.Offset, data); err != nil {
		return nil, errorf(http.StatusBadRequest, "%v", err)
	}
	sum, size, err := d.sha256()
	if err != nil {
		return nil, errorf(http.StatusInternalServerError, "%v", err)
	}
	d.mu.Lock()
	tracked := d.epoch != nil
	bs := d.blockSize
	d.mu.Unlock()
	off, n := *req.Offset, int64(len(data))
	out := map[string]interface{}{
		"vm":             vm.Name,
		"key":            d.key,
		"offset":         off,
		"length":         n,
		"end":            off + n,
		"sha256":         sum,
		"size":           size,
		"change_tracked": tracked,
	}
	if n > 0 {
		out["blocks"] = map[string]int64{"first": off / bs, "last": (off + n - 1) / bs, "block_size": bs}
	}
	return out, nil
}

type resizeRequest struct {
	Capacity int64 `json:"capacity"`
}

func (tb *Testbed) controlResize(r *http.Request, vmID, keyText string) (interface{}, error) {
	vm, d, err := tb.diskArg(vmID, keyText)
	if err != nil {
		return nil, err
	}
	var req resizeRequest
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Capacity <= 0 || req.Capacity%1024 != 0 {
		return nil, errorf(http.StatusBadRequest, "capacity must be a positive multiple of 1024")
	}
	var rerr error
	simulator.Map.WithLock(vm, func() {
		for _, dev := range vmDisks(vm.Config.Hardware.Device) {
			if dev.Key != d.key {
				continue
			}
			if err := d.grow(req.Capacity); err != nil {
				rerr = err
				return
			}
			dev.CapacityInKB = req.Capacity / 1024
			dev.CapacityInBytes = req.Capacity
			if info := dev.DeviceInfo.GetDescription(); info != nil {
				info.Summary = fmt.Sprintf("%d KB", dev.CapacityInKB)
			}
		}
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: vm.Config.Hardware.Device}})
		tb.syncVMLocked(vm)
	})
	if rerr != nil {
		return nil, errorf(http.StatusBadRequest, "%v", rerr)
	}
	return map[string]interface{}{"vm": vm.Name, "key": d.key, "capacity_bytes": req.Capacity, "cbt_epoch_reset": d.epoch != nil}, nil
}

func (tb *Testbed) controlCBTReset(vmID string) (interface{}, error) {
	vm, err := vmArg(vmID)
	if err != nil {
		return nil, err
	}
	var cbt bool
	var ids = map[string]string{}
	simulator.Map.WithLock(vm, func() {
		tb.syncVMLocked(vm)
		tb.mu.Lock()
		vs := tb.vms[vm.Self]
		cbt = vs.cbt
		for _, d := range vs.disks {
			d.resetEpoch()
		}
		tb.mu.Unlock()
		tb.syncVMLocked(vm)
		for _, dev := range vmDisks(vm.Config.Hardware.Device) {
			if _, _, flat := diskBacking(dev); flat != nil {
				ids[strconv.Itoa(int(dev.Key))] = flat.ChangeId
			}
		}
	})
	return map[string]interface{}{"vm": vm.Name, "cbt": cbt, "change_ids": ids}, nil
}

// --- info ---------------------------------------------------------------------------------------

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

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

	"github.com/vmware/govmomi/simulator"
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
		"vm":             vmName(vm.Self),
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
		if rerr = d.grow(req.Capacity); rerr != nil {
			return
		}
		editDisksLocked(vm, func(disk *types.VirtualDisk) bool {
			if disk.Key != d.key {
				return false
			}
			disk.CapacityInKB = req.Capacity / 1024
			disk.CapacityInBytes = req.Capacity
			if disk.DeviceInfo != nil {
				disk.DeviceInfo.GetDescription().Summary = fmt.Sprintf("%s KB", groupThousands(disk.CapacityInKB))
			}
			return true
		})
		tb.syncVMLocked(vm)
	})
	if rerr != nil {
		return nil, errorf(http.StatusBadRequest, "%v", rerr)
	}
	d.mu.Lock()
	reset := d.epoch != nil
	d.mu.Unlock()
	return map[string]interface{}{"vm": vmName(vm.Self), "key": d.key, "capacity_bytes": req.Capacity, "cbt_epoch_reset": reset}, nil
}

// groupThousands formats 16384 as "16,384", as vCenter's disk summaries do.
func groupThousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
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
	return map[string]interface{}{"vm": vmName(vm.Self), "cbt": cbt, "change_ids": ids}, nil
}

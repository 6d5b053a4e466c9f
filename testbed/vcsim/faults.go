package main

// Fault injection rules, added through POST /_testbed/faults. A rule fires on up to `count`
// matching requests (0 = forever); GET /_testbed/faults shows how often each one fired.

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/vim25/types"
)

// FaultRule is one injected fault. The JSON form is both the request and the listing.
type FaultRule struct {
	ID           int     `json:"id"`
	Kind         string  `json:"kind"`
	PathContains string  `json:"path_contains,omitempty"`
	Method       string  `json:"method,omitempty"`
	VM           string  `json:"vm,omitempty"`
	Status       int     `json:"status,omitempty"`
	Count        int     `json:"count"`
	AfterBytes   int64   `json:"after_bytes,omitempty"`
	BytesPerSec  int64   `json:"bytes_per_sec,omitempty"`
	Seconds      float64 `json:"seconds,omitempty"`
	Fault        string  `json:"fault,omitempty"`
	Message      string  `json:"message,omitempty"`
	DelayMS      int64   `json:"delay_ms,omitempty"`
	RetryAfter   int     `json:"retry_after,omitempty"`
	Fired        int     `json:"fired"`
}

// faultRequest mirrors FaultRule with pointers so that defaults can tell "absent" from zero.
type faultRequest struct {
	Kind         string   `json:"kind"`
	PathContains string   `json:"path_contains"`
	Method       string   `json:"method"`
	VM           string   `json:"vm"`
	Status       *int     `json:"status"`
	Count        *int     `json:"count"`
	AfterBytes   *int64   `json:"after_bytes"`
	BytesPerSec  *int64   `json:"bytes_per_sec"`
	Seconds      *float64 `json:"seconds"`
	Fault        *string  `json:"fault"`
	Message      string   `json:"message"`
	DelayMS      *int64   `json:"delay_ms"`
	RetryAfter   *int     `json:"retry_after"`
}

var transferKinds = map[string]bool{"transfer_fail": true, "transfer_truncate": true, "transfer_slow": true, "transfer_stall": true}
var soapKinds = map[string]bool{"task_fail": true, "soap_fault": true, "slow_soap": true}

// Fault types that fit a failing task of each method when the rule names none.
var defaultTaskFault = map[string]string{
	"CreateSnapshot_Task":      "SnapshotFault",
	"CreateSnapshotEx_Task":    "SnapshotFault",
	"RemoveSnapshot_Task":      "SnapshotFault",
	"RemoveAllSnapshots_Task":  "SnapshotFault",
	"RevertToSnapshot_Task":    "SnapshotFault",
	"ConsolidateVMDisks_Task":  "SnapshotFault",
	"ReconfigVM_Task":          "VmConfigFault",
	"RegisterVM_Task":          "FileFault",
	"CreateVM_Task":            "FileFault",
	"PowerOnVM_Task":           "InvalidState",
	"PowerOffVM_Task":          "InvalidState",
	"Destroy_Task":             "InvalidState",
	"DeleteDatastoreFile_Task": "FileFault",
}

func parseFaultRule(data []byte) (*FaultRule, error) {
	var req faultRequest
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad fault rule: %v", err)
	}
	r := &FaultRule{Kind: req.Kind, PathContains: req.PathContains, Method: req.Method, VM: req.VM, Message: req.Message, Count: 1}
	if req.Count != nil {
		if *req.Count < 0 {
			return nil, fmt.Errorf("count must be >= 0 (0 = forever)")
		}
		r.Count = *req.Count
	}
	intOr := func(p *int64, def int64) int64 {
		if p == nil {
			return def
		}
		return *p
	}
	switch {
	case transferKinds[r.Kind]:
		if r.VM != "" || req.Fault != nil || req.DelayMS != nil {
			return nil, fmt.Errorf("%s takes path_contains, method, status, count, after_bytes, bytes_per_sec, seconds", r.Kind)
		}
		r.Method = strings.ToUpper(r.Method)
		switch r.Method {
		case "", "GET", "PUT", "HEAD", "DELETE", "POST":
		default:
			return nil, fmt.Errorf("method %q must be GET, PUT, HEAD, DELETE or POST", r.Method)
		}
		r.AfterBytes = intOr(req.AfterBytes, 0)
		if r.AfterBytes < 0 {
			return nil, fmt.Errorf("after_bytes must be >= 0")
		}
		switch r.Kind {
		case "transfer_fail":
			r.Status = 500
			if req.Status != nil {
				r.Status = *req.Status
			}
			if r.Status < 400 || r.Status > 599 {
				return nil, fmt.Errorf("status %d must be a 4xx or 5xx code", r.Status)
			}
			if req.RetryAfter != nil {
				r.RetryAfter = *req.RetryAfter
			}
		case "transfer_truncate":
			if r.Method != "" && r.Method != "GET" {
				return nil, fmt.Errorf("transfer_truncate applies to GET only")
			}
		case "transfer_slow":
			r.BytesPerSec = intOr(req.BytesPerSec, 0)
			if r.BytesPerSec <= 0 {
				return nil, fmt.Errorf("transfer_slow needs bytes_per_sec > 0")
			}
		case "transfer_stall":
			r.Seconds = 5
			if req.Seconds != nil {
				r.Seconds = *req.Seconds
			}
			if r.Seconds <= 0 || r.Seconds > 3600 {
				return nil, fmt.Errorf("seconds must be within (0, 3600]")
			}
		}
	case soapKinds[r.Kind]:
		if r.PathContains != "" || req.AfterBytes != nil || req.BytesPerSec != nil || req.Seconds != nil {
			return nil, fmt.Errorf("%s takes method, vm, fault, message, status, delay_ms, count", r.Kind)
		}
		switch r.Kind {
		case "task_fail":
			if r.Method == "" || !strings.HasSuffix(r.Method, "_Task") {
				return nil, fmt.Errorf("task_fail needs method, a *_Task method name such as CreateSnapshot_Task")
			}
			r.Fault = defaultTaskFault[r.Method]
			if r.Fault == "" {
				r.Fault = "SystemError"
			}
			if req.Fault != nil && *req.Fault != "" {
				r.Fault = *req.Fault
			}
			if r.Message == "" {
				r.Message = fmt.Sprintf("Injected failure of %s (%s)", r.Method, r.Fault)
			}
		case "soap_fault":
			r.Status = 500
			if req.Status != nil {
				r.Status = *req.Status
			}
			if r.Status < 400 || r.Status > 599 {
				return nil, fmt.Errorf("status %d must be a 4xx or 5xx code", r.Status)
			}
			r.Fault = "SystemError"
			if req.Fault != nil {
				r.Fault = *req.Fault // "" = bare HTTP status without a SOAP body
			}
			if r.Fault == "" && req.RetryAfter != nil {
				r.RetryAfter = *req.RetryAfter
			} else if r.Fault == "" && (r.Status == 503 || r.Status == 429) {
				r.RetryAfter = 1
			}
			if r.Message == "" && r.Fault != "" {
				r.Message = fmt.Sprintf("Injected fault %s", r.Fault)
			}
		case "slow_soap":
			r.DelayMS = intOr(req.DelayMS, 0)
			if r.DelayMS <= 0 || r.DelayMS > 600000 {
				return nil, fmt.Errorf("slow_soap needs delay_ms within (0, 600000]")
			}
		}
		if r.Fault != "" {
			if _, err := newFault(r.Fault, r.Message); err != nil {
				return nil, err
			}
		}
	case r.Kind == "":
		return nil, fmt.Errorf("missing kind")
	default:
		return nil, fmt.Errorf("unknown fault kind %q (transfer_fail, transfer_truncate, transfer_slow, transfer_stall, task_fail, soap_fault, slow_soap, session_expire)", r.Kind)
	}
	return r, nil
}

// newFault instantiates a vim25 fault type by name ("SnapshotFault", "FileFault", ...).
func newFault(name, message string) (types.BaseMethodFault, error) {
	t, ok := typeFunc(name)
	if !ok {
		return nil, fmt.Errorf("unknown fault type %q", name)
	}
	v := reflect.New(t).Interface()
	f, ok := v.(types.BaseMethodFault)
	if !ok {
		return nil, fmt.Errorf("%q is not a fault type", name)
	}
	if message != "" {
		f.GetMethodFault().FaultMessage = []types.LocalizableMessage{{Key: "vbm.testbed.injected", Message: message}}
	}
	return f, nil
}

// matchTransfer consumes one firing of the first live transfer rule of the given kind.
func (tb *Testbed) matchTransfer(kind, method, p string) *FaultRule {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, r := range tb.rules {
		if r.Kind != kind || (r.Count > 0 && r.Fired >= r.Count) {
			continue
		}
		if r.Method != "" && r.Method != method {
			continue
		}
		if r.PathContains != "" && !strings.Contains(p, r.PathContains) {
			continue
		}
		r.Fired++
		c := *r
		return &c
	}
	return nil
}

// matchSOAP consumes one firing of the first live SOAP rule of the given kind.
// vm is the name of the VM the call targets ("" when it targets no VM).
func (tb *Testbed) matchSOAP(kind, method, vm string) *FaultRule {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, r := range tb.rules {
		if r.Kind != kind || (r.Count > 0 && r.Fired >= r.Count) {
			continue
		}
		if r.Method != "" && r.Method != method {
			continue
		}
		if r.VM != "" && r.VM != vm {
			continue
		}
		r.Fired++
		c := *r
		return &c
	}
	return nil
}

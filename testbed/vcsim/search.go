package main

// SearchIndex.FindByUuid / FindAllByUuid for VMs. vcsim 0.24 compares UUIDs case-sensitively and
// has no FindAllByUuid; vCenter treats UUIDs case-insensitively (they are hex), so a client that
// upper-cases an instance UUID must still find the VM.

import (
	"net/http"
	"sort"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

func findVMsByUUID(uuid string, instance bool, dc *types.ManagedObjectReference) []types.ManagedObjectReference {
	var out []types.ManagedObjectReference
	for _, vm := range allVMs() {
		var id string
		simulator.Map.WithLock(vm, func() {
			if vm.Config == nil {
				return
			}
			id = vm.Config.Uuid
			if instance {
				id = vm.Config.InstanceUuid
			}
		})
		if id == "" || !strings.EqualFold(id, uuid) {
			continue
		}
		if dc != nil {
			if d, ok := datacenterOf(vm.Self); !ok || d != *dc {
				continue
			}
		}
		out = append(out, vm.Self)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Value < out[j].Value })
	return out
}

// serveFindByUUID answers VM searches; it reports false for host searches, which vcsim keeps.
func serveFindByUUID(w http.ResponseWriter, body interface{}) bool {
	switch req := body.(type) {
	case *types.FindByUuid:
		if !req.VmSearch {
			return false
		}
		res := &types.FindByUuidResponse{}
		if refs := findVMsByUUID(req.Uuid, isTrue(req.InstanceUuid), req.Datacenter); len(refs) > 0 {
			res.Returnval = &refs[0]
		}
		writeBody(w, &methods.FindByUuidBody{Res: res})
		return true
	case *types.FindAllByUuid:
		if !req.VmSearch {
			return false
		}
		refs := findVMsByUUID(req.Uuid, isTrue(req.InstanceUuid), req.Datacenter)
		writeBody(w, &methods.FindAllByUuidBody{Res: &types.FindAllByUuidResponse{Returnval: refs}})
		return true
	}
	return false
}

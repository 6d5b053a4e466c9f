package main

// The inventory spec: a JSON file describing datacenters, hosts, datastores, folders and VMs.
// Parsing is strict (unknown fields are errors) because a typo in a test fixture should fail
// loudly at startup, not produce a silently different inventory.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/simulator"
)

const (
	defaultCBTBlockSize = 64 << 10
	defaultQCDAWindow   = 16 << 20
	maxDisksPerVM       = 15 // scsi0:0..15 without unit 7 (the controller's own unit)

	// What a standalone ESXi host calls its only datacenter, and vcsim's name for the host.
	esxDatacenter  = "ha-datacenter"
	esxDefaultHost = "localhost.localdomain"
)

// Spec is the root of an inventory spec file.
type Spec struct {
	Seed         int64            `json:"seed"`
	CBTBlockSize int64            `json:"cbt_block_size"`
	QCDAWindow   int64            `json:"qcda_window"`
	ESX          bool             `json:"esx"` // a standalone ESXi host (HostAgent) instead of vCenter
	Datacenters  []DatacenterSpec `json:"datacenters"`
}

// DatacenterSpec describes one datacenter and everything inside it.
type DatacenterSpec struct {
	Name       string          `json:"name"`
	Folder     string          `json:"folder"` // host-level folder path ("A/B") that holds the datacenter
	Datastores []DatastoreSpec `json:"datastores"`
	Clusters   []ClusterSpec   `json:"clusters"`
	Hosts      []string        `json:"hosts"` // standalone hosts
	VMFolders  []string        `json:"vm_folders"`
	VMs        []VMSpec        `json:"vms"`
}

// DatastoreSpec names a datastore; every host of the datacenter mounts it.
type DatastoreSpec struct {
	Name string `json:"name"`
	// Type is what summary.type reports: VMFS (default), NFS, NFS41, vsan or VVOL. The files are
	// plain files whatever the type; vbm must refuse object-backed (vsan, VVOL) disks.
	Type string `json:"type"`
}

// ClusterSpec is a cluster with its hosts.
type ClusterSpec struct {
	Name  string   `json:"name"`
	Hosts []string `json:"hosts"`
}

// VMSpec describes one virtual machine.
type VMSpec struct {
	Name      string     `json:"name"`
	Folder    string     `json:"folder"`
	Host      string     `json:"host"`
	Datastore string     `json:"datastore"` // where the .vmx lives; default: the first disk's datastore
	Power     string     `json:"power"`
	CBT       bool       `json:"cbt"`
	GuestID   string     `json:"guest_id"`
	MemoryMB  int32      `json:"memory_mb"`
	CPUs      int32      `json:"cpus"`
	Snapshots []string   `json:"snapshots"`
	Disks     []DiskSpec `json:"disks"`
}

// DiskSpec describes one virtual disk and its initial contents.
type DiskSpec struct {
	Capacity  int64     `json:"capacity"`
	Datastore string    `json:"datastore"`
	Thin      *bool     `json:"thin"`
	Mode      string    `json:"mode"`
	Fill      *FillSpec `json:"fill"`
}

// FillSpec says what the disk initially contains.
type FillSpec struct {
	Kind      string   `json:"kind"`
	Allocated *float64 `json:"allocated"`
	Path      string   `json:"path"`
	Link      bool     `json:"link"`
}

type specError struct{ msg string }

func (e *specError) Error() string { return e.msg }

func specErrorf(format string, args ...interface{}) error {
	return &specError{fmt.Sprintf(format, args...)}
}

// LoadSpec reads, decodes and validates a spec file, filling in defaults.
func LoadSpec(file string) (*Spec, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, specErrorf("cannot read spec: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return nil, specErrorf("spec %s: %v", file, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, specErrorf("spec %s: trailing data after the JSON object", file)
	}
	if err := s.validate(); err != nil {
		return nil, specErrorf("spec %s: %v", file, err)
	}
	return &s, nil
}

// validName rejects names that cannot be an inventory name. A literal "/" is not allowed:
// vCenter shows it escaped as "%2f", and so must the spec.
func validName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s name is empty", kind)
	case strings.Contains(name, "/"):
		return fmt.Errorf("%s name %q contains '/': write it escaped as %%2f, as vCenter shows it", kind, name)
	case name == "." || name == "..":
		return fmt.Errorf("%s name %q is not allowed", kind, name)
	case strings.ContainsAny(name, "\x00\n\r\t\\\""):
		return fmt.Errorf("%s name %q contains a control character, backslash or double quote", kind, name)
	}
	return nil
}

func validFolderPath(kind, p string) error {
	if p == "" {
		return nil
	}
	for _, part := range strings.Split(p, "/") {
		if err := validName(kind+" path component", part); err != nil {
			return fmt.Errorf("%s path %q: %v", kind, p, err)
		}
	}
	return nil
}

func validGuestID(id string) bool {
	for _, g := range simulator.GuestID {
		if string(g) == id {
			return true
		}
	}
	return false
}

func (s *Spec) validate() error {
	if s.CBTBlockSize == 0 {
		s.CBTBlockSize = defaultCBTBlockSize
	}
	if s.CBTBlockSize < 512 || s.CBTBlockSize&(s.CBTBlockSize-1) != 0 {
		return fmt.Errorf("cbt_block_size %d must be a power of two >= 512", s.CBTBlockSize)
	}
	if s.QCDAWindow == 0 {
		s.QCDAWindow = defaultQCDAWindow
	}
	if s.QCDAWindow <= 0 || s.QCDAWindow%s.CBTBlockSize != 0 {
		return fmt.Errorf("qcda_window %d must be a positive multiple of cbt_block_size %d", s.QCDAWindow, s.CBTBlockSize)
	}
	if s.ESX {
		if err := s.validateESX(); err != nil {
			return fmt.Errorf("esx: %v", err)
		}
	}
	if len(s.Datacenters) == 0 {
		return fmt.Errorf("no datacenters")
	}
	dcPaths := map[string]bool{}
	vmNames := map[string]bool{}
	for i := range s.Datacenters {
		dc := &s.Datacenters[i]
		if err := validName("datacenter", dc.Name); err != nil {
			return err
		}
		if err := validFolderPath("datacenter folder", dc.Folder); err != nil {
			return err
		}
		if dcPaths[dc.Path()] {
			return fmt.Errorf("datacenter %q defined twice", dc.Path())
		}
		dcPaths[dc.Path()] = true
		if err := dc.validate(s, vmNames); err != nil {
			return fmt.Errorf("datacenter %q: %v", dc.Name, err)
		}
	}
	return nil
}

// validateESX checks what a standalone ESXi host can hold: its one datacenter "ha-datacenter"
// (the name may be omitted), one host, no clusters and no folders (the host's VM folder takes only
// VMs). It fills in the datacenter and host names.
func (s *Spec) validateESX() error {
	if len(s.Datacenters) != 1 {
		return fmt.Errorf("a standalone ESXi host has exactly one datacenter (%q); the spec lists %d", esxDatacenter, len(s.Datacenters))
	}
	dc := &s.Datacenters[0]
	switch dc.Name {
	case "":
		dc.Name = esxDatacenter
	case esxDatacenter:
	default:
		return fmt.Errorf("datacenter %q: the datacenter of a standalone ESXi host is always %q (omit the name)", dc.Name, esxDatacenter)
	}
	if dc.Folder != "" {
		return fmt.Errorf("datacenter folder %q: ESXi has no folders above its datacenter", dc.Folder)
	}
	if len(dc.Clusters) > 0 {
		return fmt.Errorf("cluster %q: a standalone ESXi host has no clusters", dc.Clusters[0].Name)
	}
	switch len(dc.Hosts) {
	case 0:
		dc.Hosts = []string{esxDefaultHost}
	case 1:
	default:
		return fmt.Errorf("hosts %q: a standalone ESXi host is a single host", dc.Hosts)
	}
	if len(dc.VMFolders) > 0 {
		return fmt.Errorf("vm_folders %q: ESXi has no VM folders", dc.VMFolders)
	}
	for _, vm := range dc.VMs {
		if vm.Folder != "" {
			return fmt.Errorf("vm %q: folder %q: ESXi has no VM folders", vm.Name, vm.Folder)
		}
	}
	return nil
}

// Path is the datacenter's inventory path below the root folder ("Europe/DC0"): the dcPath of /folder URLs.
func (dc *DatacenterSpec) Path() string {
	if dc.Folder == "" {
		return dc.Name
	}
	return dc.Folder + "/" + dc.Name
}

func (dc *DatacenterSpec) validate(s *Spec, vmNames map[string]bool) error {
	if len(dc.Datastores) == 0 {
		return fmt.Errorf("no datastores")
	}
	dsNames := map[string]bool{}
	for _, ds := range dc.Datastores {
		if err := validName("datastore", ds.Name); err != nil {
			return err
		}
		if strings.ContainsAny(ds.Name, "[]") {
			return fmt.Errorf("datastore name %q contains a bracket", ds.Name)
		}
		if dsNames[ds.Name] {
			return fmt.Errorf("datastore %q defined twice", ds.Name)
		}
		switch ds.Type {
		case "", "VMFS", "NFS", "NFS41", "vsan", "VVOL":
		default:
			return fmt.Errorf("datastore %q: type %q is not one of VMFS, NFS, NFS41, vsan, VVOL", ds.Name, ds.Type)
		}
		dsNames[ds.Name] = true
	}
	hostNames := map[string]bool{}
	addHost := func(h string) error {
		if err := validName("host", h); err != nil {
			return err
		}
		if hostNames[h] {
			return fmt.Errorf("host %q defined twice", h)
		}
		hostNames[h] = true
		return nil
	}
	clusterNames := map[string]bool{}
	for _, c := range dc.Clusters {
		if err := validName("cluster", c.Name); err != nil {
			return err
		}
		if clusterNames[c.Name] {
			return fmt.Errorf("cluster %q defined twice", c.Name)
		}
		clusterNames[c.Name] = true
		if len(c.Hosts) == 0 {
			return fmt.Errorf("cluster %q has no hosts", c.Name)
		}
		for _, h := range c.Hosts {
			if err := addHost(h); err != nil {
				return err
			}
		}
	}
	for _, h := range dc.Hosts {
		if err := addHost(h); err != nil {
			return err
		}
	}
	if len(hostNames) == 0 {
		// A datacenter without hosts cannot run VMs; give it one standalone host.
		dc.Hosts = []string{"esx-" + strings.ToLower(strings.ReplaceAll(dc.Name, " ", "-"))}
		hostNames[dc.Hosts[0]] = true
	}
	for _, f := range dc.VMFolders {
		if f == "" {
			return fmt.Errorf("empty vm_folders entry")
		}
		if err := validFolderPath("vm folder", f); err != nil {
			return err
		}
	}
	for i := range dc.VMs {
		vm := &dc.VMs[i]
		if err := validName("vm", vm.Name); err != nil {
			return err
		}
		if vmNames[vm.Name] {
			// Control endpoints address VMs by name, so names are unique across the whole spec.
			return fmt.Errorf("vm %q defined twice (vm names must be unique across the spec)", vm.Name)
		}
		vmNames[vm.Name] = true
		if err := vm.validate(s, dc, dsNames, hostNames); err != nil {
			return fmt.Errorf("vm %q: %v", vm.Name, err)
		}
	}
	return nil
}

func (vm *VMSpec) validate(s *Spec, dc *DatacenterSpec, dsNames, hostNames map[string]bool) error {
	if err := validFolderPath("vm folder", vm.Folder); err != nil {
		return err
	}
	if vm.Host == "" {
		vm.Host = dc.firstHost()
	} else if !hostNames[vm.Host] {
		return fmt.Errorf("unknown host %q", vm.Host)
	}
	switch vm.Power {
	case "":
		vm.Power = "on"
	case "on", "off":
	default:
		return fmt.Errorf("power %q must be \"on\" or \"off\"", vm.Power)
	}
	if vm.GuestID == "" {
		vm.GuestID = "otherLinux64Guest"
	} else if !validGuestID(vm.GuestID) {
		return fmt.Errorf("guest_id %q is not a vSphere guest id", vm.GuestID)
	}
	if vm.MemoryMB == 0 {
		vm.MemoryMB = 512
	}
	if vm.MemoryMB < 4 {
		return fmt.Errorf("memory_mb %d is too small", vm.MemoryMB)
	}
	if vm.CPUs == 0 {
		vm.CPUs = 1
	}
	if vm.CPUs < 1 || vm.CPUs > 128 {
		return fmt.Errorf("cpus %d out of range 1..128", vm.CPUs)
	}
	seen := map[string]bool{}
	for _, sn := range vm.Snapshots {
		if sn == "" {
			return fmt.Errorf("empty snapshot name")
		}
		if seen[sn] {
			return fmt.Errorf("snapshot %q listed twice", sn)
		}
		seen[sn] = true
	}
	if len(vm.Disks) > maxDisksPerVM {
		return fmt.Errorf("%d disks; at most %d are supported", len(vm.Disks), maxDisksPerVM)
	}
	for j := range vm.Disks {
		if err := vm.Disks[j].validate(dc, dsNames); err != nil {
			return fmt.Errorf("disk %d: %v", j, err)
		}
	}
	if vm.Datastore == "" {
		if len(vm.Disks) > 0 {
			vm.Datastore = vm.Disks[0].Datastore
		} else {
			vm.Datastore = dc.Datastores[0].Name
		}
	} else if !dsNames[vm.Datastore] {
		return fmt.Errorf("unknown datastore %q", vm.Datastore)
	}
	return nil
}

func (dc *DatacenterSpec) firstHost() string {
	if len(dc.Clusters) > 0 {
		return dc.Clusters[0].Hosts[0]
	}
	return dc.Hosts[0]
}

func (d *DiskSpec) validate(dc *DatacenterSpec, dsNames map[string]bool) error {
	if d.Datastore == "" {
		d.Datastore = dc.Datastores[0].Name
	} else if !dsNames[d.Datastore] {
		return fmt.Errorf("unknown datastore %q", d.Datastore)
	}
	if d.Thin == nil {
		t := true
		d.Thin = &t
	}
	switch d.Mode {
	case "":
		d.Mode = "persistent"
	case "persistent", "independent_persistent", "independent_nonpersistent":
	default:
		return fmt.Errorf("mode %q must be persistent, independent_persistent or independent_nonpersistent", d.Mode)
	}
	if d.Fill == nil {
		d.Fill = &FillSpec{}
	}
	f := d.Fill
	switch f.Kind {
	case "":
		f.Kind = "mixed"
	case "mixed", "zero", "random", "image":
	default:
		return fmt.Errorf("fill.kind %q must be mixed, zero, random or image", f.Kind)
	}
	if f.Allocated == nil {
		a := 0.5
		f.Allocated = &a
	} else if f.Kind != "mixed" {
		return fmt.Errorf("fill.allocated only applies to kind mixed")
	}
	if *f.Allocated < 0 || *f.Allocated > 1 {
		return fmt.Errorf("fill.allocated %v must be within 0..1", *f.Allocated)
	}
	if f.Kind == "image" {
		if f.Path == "" || !filepath.IsAbs(f.Path) {
			return fmt.Errorf("fill.path must be an absolute path for kind image")
		}
		fi, err := os.Stat(f.Path)
		if err != nil {
			return fmt.Errorf("fill.path: %v", err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("fill.path %s is not a regular file", f.Path)
		}
		if d.Capacity == 0 {
			d.Capacity = fi.Size()
			if d.Capacity%1024 != 0 {
				return fmt.Errorf("image %s is %d bytes, not a multiple of 1024: set capacity explicitly (>= image size)", f.Path, fi.Size())
			}
		}
		if d.Capacity < fi.Size() {
			return fmt.Errorf("capacity %d is smaller than image %s (%d bytes)", d.Capacity, f.Path, fi.Size())
		}
		if f.Link && d.Capacity != fi.Size() {
			return fmt.Errorf("fill.link needs capacity == image size (%d)", fi.Size())
		}
	} else {
		if f.Path != "" || f.Link {
			return fmt.Errorf("fill.path and fill.link only apply to kind image")
		}
	}
	if d.Capacity <= 0 {
		return fmt.Errorf("capacity must be > 0")
	}
	if d.Capacity%1024 != 0 {
		// vcsim stores capacityInKB; a capacity that is not whole KiB cannot be represented.
		return fmt.Errorf("capacity %d is not a multiple of 1024", d.Capacity)
	}
	return nil
}

package main

// The small files behind a VM: VMDK descriptors, the .vmx, .nvram and vmware.log, plus parsers for
// descriptors and VMX files (used when a VM is registered from files that a client uploaded).

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
)

// diskDescriptor holds what goes into (or was read from) a VMDK descriptor.
type diskDescriptor struct {
	CID        uint32
	UUID       [16]byte
	Capacity   int64 // bytes, sum of the extents
	Thin       bool
	Extents    []descriptorExtent
	Adapter    string
	HWVersion  string
	CreateType string
}

type descriptorExtent struct {
	Access  string
	Sectors int64
	Type    string
	File    string
}

// newDescriptor makes a base-disk descriptor for a flat extent, with ids derived from seed.
func newDescriptor(flatName string, capacity int64, thin bool, seed uint64) *diskDescriptor {
	r := newPRNG(seed)
	d := &diskDescriptor{
		CID:        uint32(r.Uint64()),
		Capacity:   capacity,
		Thin:       thin,
		Adapter:    "lsilogic",
		HWVersion:  "14",
		CreateType: "vmfs",
		Extents:    []descriptorExtent{{Access: "RW", Sectors: capacity / 512, Type: "VMFS", File: flatName}},
	}
	r.Fill(d.UUID[:])
	// ESXi disk uuids start with 60 00 C2 9x.
	d.UUID[0], d.UUID[1], d.UUID[2] = 0x60, 0x00, 0xC2
	d.UUID[3] = 0x90 | d.UUID[3]&0x0f
	return d
}

// ddbUUID formats the uuid the way descriptors do: "60 00 C2 9a 11 22 33 44-55 66 77 88 99 aa bb cc".
func (d *diskDescriptor) ddbUUID() string {
	var parts []string
	for i, b := range d.UUID {
		sep := " "
		if i == 0 {
			sep = ""
		} else if i == 8 {
			sep = "-"
		}
		parts = append(parts, fmt.Sprintf("%s%02x", sep, b))
	}
	s := strings.Join(parts, "")
	return "60 00 C2" + s[8:]
}

// backingUUID formats the uuid the way VirtualDiskFlatVer2BackingInfo.uuid does: "6000C29a-1122-3344-5566-778899aabbcc".
func (d *diskDescriptor) backingUUID() string {
	u := d.UUID
	return fmt.Sprintf("6000C29%x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		u[3]&0x0f, u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15])
}

func (d *diskDescriptor) geometry() (cyl, heads, sectors int64) {
	heads, sectors = 255, 63
	cyl = d.Capacity / (heads * sectors * 512)
	if cyl < 1 {
		cyl = 1
	}
	if cyl > 65535 {
		cyl = 65535
	}
	return
}

// Text renders the descriptor as ESXi writes it (see vsphere-api-reference.md 6.1).
func (d *diskDescriptor) Text() string {
	var b strings.Builder
	b.WriteString("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\n")
	fmt.Fprintf(&b, "CID=%08x\nparentCID=ffffffff\ncreateType=\"%s\"\n\n", d.CID, d.CreateType)
	b.WriteString("# Extent description\n")
	for _, e := range d.Extents {
		fmt.Fprintf(&b, "%s %d %s \"%s\"\n", e.Access, e.Sectors, e.Type, e.File)
	}
	b.WriteString("\n# The Disk Data Base\n#DDB\n\n")
	cyl, heads, sectors := d.geometry()
	fmt.Fprintf(&b, "ddb.adapterType = \"%s\"\n", d.Adapter)
	fmt.Fprintf(&b, "ddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"%d\"\nddb.geometry.sectors = \"%d\"\n", cyl, heads, sectors)
	lc := newPRNG(uint64(d.CID) ^ uint64(d.UUID[15])<<32)
	fmt.Fprintf(&b, "ddb.longContentID = \"%016x%08x%08x\"\n", lc.Uint64(), uint32(lc.Uint64()), d.CID)
	if d.Thin {
		b.WriteString("ddb.thinProvisioned = \"1\"\n")
	}
	fmt.Fprintf(&b, "ddb.uuid = \"%s\"\n", d.ddbUUID())
	fmt.Fprintf(&b, "ddb.virtualHWVersion = \"%s\"\n", d.HWVersion)
	return b.String()
}

// parseDescriptor reads the fields of a descriptor that the testbed needs. It accepts the
// common variants (extra header keys, comments, any extent type).
func parseDescriptor(text string) (*diskDescriptor, error) {
	d := &diskDescriptor{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		switch fields[0] {
		case "RW", "RDONLY", "NOACCESS":
			if len(fields) < 4 {
				return nil, fmt.Errorf("bad extent line %q", line)
			}
			n, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("bad extent size in %q", line)
			}
			q := strings.Index(line, "\"")
			r := strings.LastIndex(line, "\"")
			if q < 0 || r <= q {
				return nil, fmt.Errorf("bad extent file name in %q", line)
			}
			d.Extents = append(d.Extents, descriptorExtent{Access: fields[0], Sectors: n, Type: fields[2], File: line[q+1 : r]})
			d.Capacity += n * 512
			continue
		}
		k, v, ok := splitKV(line)
		if !ok {
			continue
		}
		switch k {
		case "CID":
			c, _ := strconv.ParseUint(v, 16, 32)
			d.CID = uint32(c)
		case "createType":
			d.CreateType = v
		case "ddb.thinProvisioned":
			d.Thin = v == "1"
		case "ddb.adapterType":
			d.Adapter = v
		case "ddb.virtualHWVersion":
			d.HWVersion = v
		case "ddb.uuid":
			hexText := strings.NewReplacer(" ", "", "-", "").Replace(v)
			if b, err := hex.DecodeString(hexText); err == nil && len(b) == 16 {
				copy(d.UUID[:], b)
			}
		}
	}
	if len(d.Extents) == 0 {
		return nil, fmt.Errorf("no extent line")
	}
	return d, nil
}

// splitKV splits `key = "value"` (quotes optional).
func splitKV(line string) (string, string, bool) {
	i := strings.Index(line, "=")
	if i < 0 {
		return "", "", false
	}
	k := strings.TrimSpace(line[:i])
	v := strings.TrimSpace(line[i+1:])
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return k, v, true
}

// vmxEscape escapes a VMX value the way VMware does: '|' followed by two hex digits for
// characters that would break the syntax.
func vmxEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '|' || c == '"' || c == '#' || c < 0x20 {
			fmt.Fprintf(&b, "|%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func vmxUnescape(s string) string {
	if !strings.Contains(s, "|") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '|' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// vmxFile is an ordered key/value list.
type vmxFile struct {
	keys []string
	vals map[string]string
}

func newVMX() *vmxFile { return &vmxFile{vals: map[string]string{}} }

func (v *vmxFile) Set(k, val string) {
	if _, ok := v.vals[k]; !ok {
		v.keys = append(v.keys, k)
	}
	v.vals[k] = val
}

func (v *vmxFile) Get(k string) (string, bool) {
	val, ok := v.vals[strings.ToLower(k)]
	return val, ok
}

func (v *vmxFile) Bytes() []byte {
	var b bytes.Buffer
	for _, k := range v.keys {
		fmt.Fprintf(&b, "%s = \"%s\"\n", k, vmxEscape(v.vals[k]))
	}
	return b.Bytes()
}

// parseVMX reads a VMX file; keys are lower-cased (VMX keys are case-insensitive).
func parseVMX(data []byte) *vmxFile {
	v := newVMX()
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, val, ok := splitKV(line); ok {
			v.Set(strings.ToLower(k), vmxUnescape(val))
		}
	}
	return v
}

// Guest ids as the API names them vs. the guestOS keys VMX files use. Unknown ids fall back to
// a derived name; the reverse direction only maps known values.
var guestOSKeys = map[string]string{
	"otherGuest":            "other",
	"otherGuest64":          "other-64",
	"otherLinuxGuest":       "otherlinux",
	"otherLinux64Guest":     "otherlinux-64",
	"otherLinux5xGuest":     "other5xlinux",
	"ubuntu64Guest":         "ubuntu-64",
	"debian10_64Guest":      "debian10-64",
	"debian11_64Guest":      "debian11-64",
	"centos7_64Guest":       "centos7-64",
	"rhel8_64Guest":         "rhel8-64",
	"windows9_64Guest":      "windows9-64",
	"windows9Server64Guest": "windows2019srv-64",
}

func vmxGuestOS(guestID string) string {
	if k, ok := guestOSKeys[guestID]; ok {
		return k
	}
	s := strings.TrimSuffix(guestID, "Guest")
	s = strings.ReplaceAll(s, "_64", "-64")
	return strings.ToLower(s)
}

func guestIDFromVMX(key string) string {
	for id, k := range guestOSKeys {
		if k == key {
			return id
		}
	}
	return ""
}

// vmxDisk is one disk entry of a VMX file.
type vmxDisk struct {
	Bus, Unit int
	FileName  string
	Mode      string // API diskMode (persistent, independent_persistent, ...)
}

// vmxDisks returns the present SCSI disks of a VMX file, sorted by bus and unit, and the
// virtualDev of each SCSI controller that has disks.
func vmxDisks(v *vmxFile) ([]vmxDisk, map[int]string) {
	var disks []vmxDisk
	ctrl := map[int]string{}
	for _, k := range v.keys {
		if !strings.HasPrefix(k, "scsi") || !strings.HasSuffix(k, ".filename") {
			continue
		}
		var bus, unit int
		if _, err := fmt.Sscanf(k, "scsi%d:%d.filename", &bus, &unit); err != nil {
			continue
		}
		prefix := fmt.Sprintf("scsi%d:%d.", bus, unit)
		if p, ok := v.Get(prefix + "present"); ok && !strings.EqualFold(p, "true") {
			continue
		}
		if t, ok := v.Get(prefix + "deviceType"); ok && !strings.Contains(strings.ToLower(t), "disk") {
			continue // cdrom-image and friends
		}
		name := v.vals[k]
		if !strings.HasSuffix(strings.ToLower(name), ".vmdk") {
			continue
		}
		mode := "persistent"
		if m, ok := v.Get(prefix + "mode"); ok {
			mode = strings.ReplaceAll(strings.ToLower(m), "-", "_")
		}
		disks = append(disks, vmxDisk{Bus: bus, Unit: unit, FileName: name, Mode: mode})
		dev, ok := v.Get(fmt.Sprintf("scsi%d.virtualDev", bus))
		if !ok {
			dev = "lsilogic"
		}
		ctrl[bus] = dev
	}
	sort.Slice(disks, func(i, j int) bool {
		if disks[i].Bus != disks[j].Bus {
			return disks[i].Bus < disks[j].Bus
		}
		return disks[i].Unit < disks[j].Unit
	})
	return disks, ctrl
}

// vmxDiskDatastorePath turns a VMX fileName into a datastore path. Relative names live next to
// the .vmx; absolute names must look like /vmfs/volumes/<datastore>/<path>.
func vmxDiskDatastorePath(vmxDS, vmxDir, fileName string) (string, error) {
	if !strings.HasPrefix(fileName, "/") {
		return fmt.Sprintf("[%s] %s", vmxDS, path.Join(vmxDir, fileName)), nil
	}
	const prefix = "/vmfs/volumes/"
	if !strings.HasPrefix(fileName, prefix) {
		return "", fmt.Errorf("absolute disk path %q is not under %s", fileName, prefix)
	}
	rest := strings.TrimPrefix(fileName, prefix)
	i := strings.Index(rest, "/")
	if i <= 0 {
		return "", fmt.Errorf("bad disk path %q", fileName)
	}
	return fmt.Sprintf("[%s] %s", rest[:i], rest[i+1:]), nil
}

// nvramBytes is a deterministic 8 KiB stand-in for a VM's NVRAM.
func nvramBytes(seed uint64) []byte {
	b := make([]byte, 8192)
	copy(b, "MRVN\x01\x00\x00\x00vbm-testbed-nvram")
	newPRNG(seed).Fill(b[64:1024])
	return b
}

func vmwareLog(name string) []byte {
	return []byte(fmt.Sprintf(`2026-01-01T00:00:00.000Z In(05) vmx - Log for VMware ESX pid=1000 version=7.0.3 build=build-20036589 option=Release
2026-01-01T00:00:00.001Z In(05) vmx - The host is x86_64.
2026-01-01T00:00:00.002Z In(05) vmx - DICT --- CONFIGURATION
2026-01-01T00:00:00.003Z In(05) vmx - DICT   displayName = "%s"
2026-01-01T00:00:00.010Z In(05) vmx - Transitioned vmx/execState/val to poweredOff
`, vmxEscape(name)))
}

func writeFileAtomic(p string, data []byte) error {
	tmp := p + ".tmp-vbm"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

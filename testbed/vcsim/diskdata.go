package main

// Disk contents: deterministic generation of flat extents (mixed / zero / random / image),
// sparse file handling and allocation scanning.
//
// Flat files are always created sparse: zero runs are never written, so a 64 GiB thin disk costs
// only what is allocated. The allocation bitmap (at cbt_block_size granularity) is what
// QueryChangedDiskAreas(changeId="*") reports for thin disks.

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// bitmap is a growable set of block numbers.
type bitmap []uint64

func newBitmap(n int64) bitmap { return make(bitmap, (n+63)/64) }

func (b bitmap) set(i int64) { b[i/64] |= 1 << uint(i%64) }

func (b bitmap) get(i int64) bool {
	if i/64 >= int64(len(b)) {
		return false
	}
	return b[i/64]&(1<<uint(i%64)) != 0
}

func (b bitmap) setRange(from, to int64) {
	for i := from; i < to; i++ {
		b.set(i)
	}
}

func (b bitmap) grow(n int64) bitmap {
	need := (n + 63) / 64
	if int64(len(b)) >= need {
		return b
	}
	nb := make(bitmap, need)
	copy(nb, b)
	return nb
}

var zeroBuf = make([]byte, 1<<20)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := len(b)
		if n > len(zeroBuf) {
			n = len(zeroBuf)
		}
		if !bytes.Equal(b[:n], zeroBuf[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// markBlocks sets the bits of every block that overlaps [off, off+n).
func markBlocks(b bitmap, off, n, blockSize int64) {
	if n <= 0 {
		return
	}
	b.setRange(off/blockSize, (off+n-1)/blockSize+1)
}

// Words for the compressible, log-like text regions of "mixed" disks.
var words = []string{
	"kernel:", "systemd[1]:", "sshd[812]:", "CRON[2231]:", "nginx:", "postgres[977]:", "info", "warn",
	"error", "debug", "Started", "Stopped", "session", "opened", "closed", "for", "user", "root",
	"backup", "connection", "from", "port", "accepted", "publickey", "checkpoint", "complete", "wrote",
	"buffers", "request", "GET", "POST", "/api/v1/items", "/index.html", "200", "404", "500", "ms",
	"bytes", "transaction", "commit", "rollback", "vacuum", "table", "index", "disk", "sda1", "ext4",
	"mounted", "filesystem", "with", "ordered", "data", "mode", "network", "eth0", "link", "up",
	"down", "DHCPACK", "lease", "renewed", "timer", "unit", "entered", "failed", "state", "the",
	"a", "of", "to", "and", "in", "is", "was", "not", "cache", "miss", "hit", "worker", "queue",
}

// textPool builds a block of log-like text; text regions are assembled from slices of it, which
// keeps them highly compressible (and deduplicable within a disk) without costing much CPU.
func textPool(r *prng, size int) []byte {
	var b bytes.Buffer
	b.Grow(size + 256)
	ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for b.Len() < size {
		ts = ts.Add(time.Duration(r.Intn(5000)) * time.Millisecond)
		fmt.Fprintf(&b, "%s vm-guest-%02d ", ts.Format("2006-01-02T15:04:05.000Z"), r.Intn(16))
		n := 4 + r.Intn(12)
		for i := int64(0); i < n; i++ {
			b.WriteString(words[r.Intn(int64(len(words)))])
			if r.Intn(6) == 0 {
				fmt.Fprintf(&b, " %d", r.Intn(100000))
			}
			b.WriteByte(' ')
		}
		b.WriteByte('\n')
	}
	return b.Bytes()[:size]
}

// fillText writes n text-like bytes into dst.
func fillText(r *prng, pool []byte, dst []byte) {
	for len(dst) > 0 {
		piece := 512 + r.Intn(8192)
		start := r.Intn(int64(len(pool)) - piece)
		n := copy(dst, pool[start:start+piece])
		dst = dst[n:]
	}
}

const mib = 1 << 20

// generateFlat creates the flat extent at path with exactly capacity bytes and returns the
// bitmap of blocks holding non-zero data (nil when unknown; it is then scanned on demand).
func generateFlat(path string, d *DiskSpec, seed uint64, blockSize int64) (bitmap, error) {
	switch d.Fill.Kind {
	case "image":
		if d.Fill.Link {
			// The flat file IS the image: writes through the control endpoint change the original.
			if err := os.Symlink(d.Fill.Path, path); err != nil {
				return nil, err
			}
			return nil, nil
		}
		if err := copyImage(d.Fill.Path, path, d.Capacity); err != nil {
			return nil, fmt.Errorf("copy image %s: %v", d.Fill.Path, err)
		}
		return nil, nil
	}

	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.Truncate(d.Capacity); err != nil {
		return nil, err
	}
	alloc := newBitmap((d.Capacity + blockSize - 1) / blockSize)
	r := newPRNG(seed)
	buf := make([]byte, mib)

	switch d.Fill.Kind {
	case "zero":
		// Nothing to write: the sparse file reads as zeros.
	case "random":
		for off := int64(0); off < d.Capacity; off += mib {
			n := min64(mib, d.Capacity-off)
			r.Fill(buf[:n])
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return nil, err
			}
		}
		markBlocks(alloc, 0, d.Capacity, blockSize)
	case "mixed":
		if err := generateMixed(f, r, d.Capacity, *d.Fill.Allocated, alloc, blockSize, buf); err != nil {
			return nil, err
		}
	}
	return alloc, f.Close()
}

// generateMixed lays out regions of text, random data and zeros. About a third of the regions
// end on a 4 MiB boundary (so the next one starts aligned); the others have sector-granular
// lengths (512 B .. 1.5 MiB), so data starts and ends at offsets that are not chunk-aligned.
func generateMixed(f *os.File, r *prng, capacity int64, allocated float64, alloc bitmap, blockSize int64, buf []byte) error {
	pool := textPool(r, 256<<10)
	const align = 4 * mib
	var data int64
	for off := int64(0); off < capacity; {
		var n int64
		if r.Intn(3) == 0 {
			n = (off/align+1)*align - off
		} else {
			n = (1 + r.Intn(3072)) * 512 // 512 B .. 1.5 MiB
		}
		n = min64(n, capacity-off)
		// Error diffusion keeps the non-zero fraction close to `allocated` even on small disks,
		// where a few 4 MiB regions would otherwise swing it wildly.
		if float64(data)+float64(n)/2 <= allocated*float64(off+n) {
			data += n
			text := r.Intn(2) == 0
			for done := int64(0); done < n; {
				m := min64(int64(len(buf)), n-done)
				if text {
					fillText(r, pool, buf[:m])
				} else {
					r.Fill(buf[:m])
				}
				if _, err := f.WriteAt(buf[:m], off+done); err != nil {
					return err
				}
				done += m
			}
			markBlocks(alloc, off, n, blockSize)
		}
		off += n
	}
	return nil
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
	ficlone  = 0x40049409
)

// dataSegments calls fn for each [start, end) range of f that may hold data, using
// SEEK_DATA/SEEK_HOLE; where those are unsupported it reports the whole file.
func dataSegments(f *os.File, size int64, fn func(start, end int64) error) error {
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		start, err := syscall.Seek(fd, off, seekData)
		if err != nil {
			if err == syscall.ENXIO { // no data after off
				return nil
			}
			return fn(off, size) // SEEK_DATA unsupported: treat everything as data
		}
		end, err := syscall.Seek(fd, start, seekHole)
		if err != nil || end > size {
			end = size
		}
		if err := fn(start, end); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// copyImage copies src into a new file dst of capacity bytes: a reflink where the filesystem
// supports it, otherwise a sparse copy that skips holes and all-zero 64 KiB pieces.
func copyImage(src, dst string, capacity int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, out.Fd(), ficlone, in.Fd()); errno == 0 {
		return out.Truncate(capacity)
	}
	if err := out.Truncate(capacity); err != nil {
		return err
	}
	buf := make([]byte, mib)
	const piece = 64 << 10
	err = dataSegments(in, fi.Size(), func(start, end int64) error {
		for off := start; off < end; {
			n := min64(int64(len(buf)), end-off)
			if _, err := in.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				return err
			}
			for p := int64(0); p < n; p += piece {
				q := min64(p+piece, n)
				if !isZero(buf[p:q]) {
					if _, err := out.WriteAt(buf[p:q], off+p); err != nil {
						return err
					}
				}
			}
			off += n
		}
		return nil
	})
	if err != nil {
		return err
	}
	return out.Close()
}

// scanAllocation returns the bitmap of blocks of the file that hold non-zero bytes.
func scanAllocation(path string, capacity, blockSize int64) (bitmap, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	alloc := newBitmap((capacity + blockSize - 1) / blockSize)
	buf := make([]byte, blockSize)
	err = dataSegments(f, capacity, func(start, end int64) error {
		for b := start / blockSize; b*blockSize < end; b++ {
			off := b * blockSize
			n := min64(blockSize, capacity-off)
			m, err := f.ReadAt(buf[:n], off)
			if err != nil && err != io.EOF {
				return err
			}
			if !isZero(buf[:m]) {
				alloc.set(b)
			}
		}
		return nil
	})
	return alloc, err
}

package main

// A small, fast, deterministic PRNG (xoshiro256** seeded by splitmix64). Disk contents must be
// reproducible from the spec seed, and generating hundreds of MiB must not dominate startup, so
// math/rand (slow Read, global state) is not used for bulk data.

import (
	"encoding/binary"
	"hash/fnv"
	"math/bits"
)

type prng struct{ s [4]uint64 }

func newPRNG(seed uint64) *prng {
	p := &prng{}
	sm := seed
	for i := range p.s {
		sm += 0x9e3779b97f4a7c15
		z := sm
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		p.s[i] = z ^ (z >> 31)
	}
	return p
}

func (p *prng) Uint64() uint64 {
	s := &p.s
	result := bits.RotateLeft64(s[1]*5, 7) * 9
	t := s[1] << 17
	s[2] ^= s[0]
	s[3] ^= s[1]
	s[1] ^= s[2]
	s[0] ^= s[3]
	s[2] ^= t
	s[3] = bits.RotateLeft64(s[3], 45)
	return result
}

// Intn returns a value in [0, n).
func (p *prng) Intn(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return int64(p.Uint64() % uint64(n))
}

// Float64 returns a value in [0, 1).
func (p *prng) Float64() float64 {
	return float64(p.Uint64()>>11) / (1 << 53)
}

// Fill writes pseudo-random bytes (little-endian uint64 stream) into b.
func (p *prng) Fill(b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, p.Uint64())
		b = b[8:]
	}
	if len(b) > 0 {
		v := p.Uint64()
		for i := range b {
			b[i] = byte(v)
			v >>= 8
		}
	}
}

// seedFor derives a stable 64-bit seed from the spec seed and some labels (VM name, disk index...).
func seedFor(seed int64, labels ...string) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(seed))
	h.Write(b[:])
	for _, l := range labels {
		h.Write([]byte(l))
		h.Write([]byte{0})
	}
	return h.Sum64()
}

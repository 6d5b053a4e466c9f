//! The chunk codec: digest, compress, seal, and the reverse with every check.
//!
//! A stored chunk (and a blob, which uses the same encoding) is a 32-byte header followed by the
//! payload (see `format.rs` and `docs/file-formats.md`):
//!
//! ```text
//! magic[8] flags[1] reserved[3] crc32(payload)[4 LE] plain_len[8 LE] payload_len[8 LE] payload
//! payload = zstd(plain) or plain                       (unencrypted)
//!         = nonce[12] ‖ AES-256-GCM(zstd(plain) or plain) ‖ tag[16]   (encrypted)
//! ```
//!
//! With encryption the AAD is `magic ‖ flags ‖ plain_len ‖ digest`, so a chunk file copied under
//! another chunk's name fails authentication. Decoding checks, in order: length, magic, flags,
//! CRC32 (catches storage bit rot without the key), authentication, decompressed length, and
//! finally the digest of the plain data. Every error names the digest.

use std::cell::RefCell;
use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Digest as _;

use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::format::{
    CHUNK_FLAG_AES_GCM, CHUNK_FLAG_ZSTD, CHUNK_FLAGS_KNOWN, CHUNK_HEADER_LEN, CHUNK_MAGIC,
    GCM_NONCE_LEN, GCM_TAG_LEN, MAX_CHUNK_SIZE,
};
use crate::key::RepoKey;

/// The parsed fixed header of a stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `CHUNK_FLAG_*` bits.
    pub flags: u8,
    /// CRC32 of the payload as recorded.
    pub crc32: u32,
    /// Length of the plain data.
    pub plain_len: u64,
    /// Length of the payload after the header.
    pub payload_len: u64,
}

impl ChunkHeader {
    fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        h[0..8].copy_from_slice(&CHUNK_MAGIC);
        h[8] = self.flags;
        h[12..16].copy_from_slice(&self.crc32.to_le_bytes());
        h[16..24].copy_from_slice(&self.plain_len.to_le_bytes());
        h[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        h
    }

    /// Parses and checks the header of `stored` (magic, flags, lengths). The error reason is
    /// meant to be wrapped with the digest by the caller.
    fn parse(stored: &[u8]) -> std::result::Result<ChunkHeader, String> {
        let Some(h) = stored.get(..CHUNK_HEADER_LEN) else {
            return Err(format!(
                "truncated: {} bytes, shorter than the {CHUNK_HEADER_LEN}-byte header",
                stored.len()
            ));
        };
        if h[0..8] != CHUNK_MAGIC {
            return Err("bad magic (not a vbm chunk)".into());
        }
        let flags = h[8];
        if flags & !CHUNK_FLAGS_KNOWN != 0 || h[9..12] != [0, 0, 0] {
            return Err(format!("unknown flags {flags:#04x}"));
        }
        let le64 = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[r]);
            u64::from_le_bytes(b)
        };
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&h[12..16]);
        let header = ChunkHeader {
            flags,
            crc32: u32::from_le_bytes(crc),
            plain_len: le64(16..24),
            payload_len: le64(24..32),
        };
        let actual = (stored.len() - CHUNK_HEADER_LEN) as u64;
        if header.payload_len != actual {
            return Err(format!(
                "truncated or extended: payload is {actual} bytes, header says {}",
                header.payload_len
            ));
        }
        if header.plain_len > u64::from(MAX_CHUNK_SIZE) {
            return Err(format!("implausible plain length {}", header.plain_len));
        }
        Ok(header)
    }
}

/// Reads just the header of a stored chunk and checks its CRC: what can be verified without the
/// key (and without decompressing).
///
/// # Errors
/// [`Error::ChunkCorrupt`] naming `digest`.
pub fn check_stored(digest: &ChunkDigest, stored: &[u8]) -> Result<ChunkHeader> {
    let corrupt = |reason: String| Error::ChunkCorrupt {
        digest: *digest,
        reason,
    };
    let header = ChunkHeader::parse(stored).map_err(corrupt)?;
    let crc = crc32fast::hash(&stored[CHUNK_HEADER_LEN..]);
    if crc != header.crc32 {
        return Err(corrupt(format!(
            "CRC32 mismatch (header {:08x}, payload {crc:08x})",
            header.crc32
        )));
    }
    Ok(header)
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Computes chunk digests and encodes/decodes stored chunks for one repository (its compression
/// level and, if encrypted, its keys). Cheap to share between threads.
#[derive(Clone)]
pub struct ChunkCodec {
    level: i32,
    id_key: Option<Hmac<sha2::Sha256>>,
    cipher: Option<Aes256Gcm>,
}

impl fmt::Debug for ChunkCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkCodec")
            .field("level", &self.level)
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

impl ChunkCodec {
    /// A codec compressing at zstd `level`, encrypting and keying digests when `key` is given.
    #[must_use]
    pub fn new(level: i32, key: Option<&RepoKey>) -> ChunkCodec {
        let (id_key, cipher) = match key {
            Some(key) => {
                let id = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key.chunk_id_key()).ok();
                let enc = Aes256Gcm::new_from_slice(&key.chunk_enc_key()).ok();
                (id, enc)
            }
            None => (None, None),
        };
        ChunkCodec {
            level,
            id_key,
            cipher,
        }
    }

    /// Whether chunks are sealed with AES-256-GCM.
    #[must_use]
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// The id of `plain`: SHA-256, or HMAC-SHA256 under the chunk-id key. Callers handle all-zero
    /// data first (its id is [`ChunkDigest::ZERO`] and it is never hashed).
    #[must_use]
    pub fn digest(&self, plain: &[u8]) -> ChunkDigest {
        match &self.id_key {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(plain);
                ChunkDigest::from_bytes(mac.finalize().into_bytes().into())
            }
            None => ChunkDigest::from_bytes(sha2::Sha256::digest(plain).into()),
        }
    }

    /// Encodes `plain` (whose id is `digest`) into the stored form.
    ///
    /// # Errors
    /// When compression or encryption fails (not expected for valid input).
    pub fn encode(&self, digest: &ChunkDigest, plain: &[u8]) -> Result<Vec<u8>> {
        let plain_len = plain.len() as u64;
        if plain_len > u64::from(MAX_CHUNK_SIZE) {
            return Err(Error::InvalidArgument(format!(
                "chunk of {plain_len} bytes exceeds the maximum {MAX_CHUNK_SIZE}"
            )));
        }
        let prefix = CHUNK_HEADER_LEN
            + if self.is_encrypted() {
                GCM_NONCE_LEN
            } else {
                0
            };
        let mut out = Vec::with_capacity(prefix + plain.len() + GCM_TAG_LEN);
        out.resize(prefix, 0);
        let mut flags = 0u8;
        if self.compress_into(plain, &mut out, prefix)? {
            flags |= CHUNK_FLAG_ZSTD;
        } else {
            out.extend_from_slice(plain);
        }
        if let Some(cipher) = &self.cipher {
            flags |= CHUNK_FLAG_AES_GCM;
            let mut nonce = [0u8; GCM_NONCE_LEN];
            rand::rng().fill_bytes(&mut nonce);
            out[CHUNK_HEADER_LEN..prefix].copy_from_slice(&nonce);
            let aad = aad(flags, plain_len, digest);
            let tag = cipher
                .encrypt_inout_detached(&nonce.into(), &aad, out[prefix..].as_mut().into())
                .map_err(|_| Error::InvalidArgument("AES-GCM refused the chunk".into()))?;
            out.extend_from_slice(&tag);
        }
        let payload = &out[CHUNK_HEADER_LEN..];
        let header = ChunkHeader {
            flags,
            crc32: crc32fast::hash(payload),
            plain_len,
            payload_len: payload.len() as u64,
        };
        out[..CHUNK_HEADER_LEN].copy_from_slice(&header.encode());
        Ok(out)
    }

    /// Compresses `plain` after `out[..start]` (`out.len() == start`); returns false, with
    /// `out` truncated to `start`, when the result would not be smaller than the input.
    fn compress_into(&self, plain: &[u8], out: &mut Vec<u8>, start: usize) -> Result<bool> {
        if self.level == 0 || plain.len() < 64 {
            return Ok(false);
        }
        // zstd writes into the spare capacity (no zero-filling 4 MiB per chunk); a result that
        // does not fit or does not shrink is stored raw.
        out.truncate(start);
        out.reserve(plain.len());
        let mut cursor = std::io::Cursor::new(std::mem::take(out));
        cursor.set_position(start as u64);
        let level = self.level;
        let result = COMPRESSOR.with(|cell| -> std::io::Result<usize> {
            let mut slot = cell.borrow_mut();
            if !matches!(&*slot, Some((l, _)) if *l == level) {
                *slot = Some((level, zstd::bulk::Compressor::new(level)?));
            }
            match slot.as_mut() {
                Some((_, c)) => c.compress_to_buffer(plain, &mut cursor),
                None => Err(std::io::Error::other("no compressor")),
            }
        });
        *out = cursor.into_inner();
        match result {
            Ok(n) if n < plain.len() => {
                out.truncate(start + n);
                Ok(true)
            }
            Ok(_) | Err(_) => {
                out.truncate(start);
                Ok(false)
            }
        }
    }

    /// Decodes a stored chunk and checks that it is the chunk `digest` names. When `expected_len`
    /// is given, the plain length must match it as well.
    ///
    /// # Errors
    /// [`Error::ChunkCorrupt`] naming `digest` and the failed check.
    pub fn decode(
        &self,
        digest: &ChunkDigest,
        stored: Vec<u8>,
        expected_len: Option<usize>,
    ) -> Result<Vec<u8>> {
        self.decode_checked(digest, stored, expected_len, true)
    }

    /// Like [`ChunkCodec::decode`] — header, CRC32, authentication tag, decompression and length
    /// are checked — but without recomputing the content digest. Only for callers that check a
    /// digest over everything they read anyway (a restore compares each file's SHA-256 with the
    /// manifest): it saves one SHA-256 pass over the data.
    ///
    /// # Errors
    /// [`Error::ChunkCorrupt`] naming `digest` and the failed check.
    pub fn decode_unhashed(
        &self,
        digest: &ChunkDigest,
        stored: Vec<u8>,
        expected_len: Option<usize>,
    ) -> Result<Vec<u8>> {
        self.decode_checked(digest, stored, expected_len, false)
    }

    fn decode_checked(
        &self,
        digest: &ChunkDigest,
        mut stored: Vec<u8>,
        expected_len: Option<usize>,
        check_digest: bool,
    ) -> Result<Vec<u8>> {
        let corrupt = |reason: String| Error::ChunkCorrupt {
            digest: *digest,
            reason,
        };
        let header = check_stored(digest, &stored)?;
        let plain_len = usize::try_from(header.plain_len)
            .map_err(|_| corrupt("plain length does not fit in memory".into()))?;
        if let Some(expected) = expected_len
            && expected != plain_len
        {
            return Err(corrupt(format!(
                "plain length {plain_len}, the index expects {expected}"
            )));
        }
        let mut payload_start = CHUNK_HEADER_LEN;
        let mut payload_end = stored.len();
        if header.flags & CHUNK_FLAG_AES_GCM != 0 {
            let Some(cipher) = &self.cipher else {
                return Err(corrupt(
                    "chunk is encrypted but the repository is opened without a key".into(),
                ));
            };
            if stored.len() < CHUNK_HEADER_LEN + GCM_NONCE_LEN + GCM_TAG_LEN {
                return Err(corrupt("encrypted payload too short".into()));
            }
            let mut nonce = [0u8; GCM_NONCE_LEN];
            nonce.copy_from_slice(&stored[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + GCM_NONCE_LEN]);
            let mut tag = [0u8; GCM_TAG_LEN];
            tag.copy_from_slice(&stored[stored.len() - GCM_TAG_LEN..]);
            payload_start += GCM_NONCE_LEN;
            payload_end -= GCM_TAG_LEN;
            let aad = aad(header.flags, header.plain_len, digest);
            cipher
                .decrypt_inout_detached(
                    &nonce.into(),
                    &aad,
                    stored[payload_start..payload_end].as_mut().into(),
                    &tag.into(),
                )
                .map_err(|_| {
                    corrupt("authentication failed (damaged, or not this chunk's data)".into())
                })?;
        } else if self.is_encrypted() {
            return Err(corrupt(
                "chunk is not encrypted in an encrypted repository".into(),
            ));
        }
        let plain = if header.flags & CHUNK_FLAG_ZSTD != 0 {
            let mut plain = Vec::with_capacity(plain_len);
            let src = &stored[payload_start..payload_end];
            DECOMPRESSOR
                .with(|cell| -> std::io::Result<usize> {
                    let mut slot = cell.borrow_mut();
                    if slot.is_none() {
                        *slot = Some(zstd::bulk::Decompressor::new()?);
                    }
                    match slot.as_mut() {
                        Some(d) => d.decompress_to_buffer(src, &mut plain),
                        None => Err(std::io::Error::other("no decompressor")),
                    }
                })
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            plain
        } else {
            stored.truncate(payload_end);
            stored.drain(..payload_start);
            stored
        };
        if plain.len() != plain_len {
            return Err(corrupt(format!(
                "decoded {} bytes, header says {plain_len}",
                plain.len()
            )));
        }
        if check_digest {
            let actual = self.digest(&plain);
            if actual != *digest {
                return Err(corrupt(format!("content digest is {actual}")));
            }
        }
        Ok(plain)
    }
}

fn aad(flags: u8, plain_len: u64, digest: &ChunkDigest) -> [u8; 8 + 1 + 8 + 32] {
    let mut a = [0u8; 49];
    a[0..8].copy_from_slice(&CHUNK_MAGIC);
    a[8] = flags;
    a[9..17].copy_from_slice(&plain_len.to_le_bytes());
    a[17..49].copy_from_slice(digest.as_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn codecs() -> Vec<ChunkCodec> {
        vec![
            ChunkCodec::new(3, None),
            ChunkCodec::new(3, Some(&RepoKey::from_bytes([9; 32]))),
        ]
    }

    #[test]
    fn round_trips_compressible_and_incompressible() {
        for codec in codecs() {
            for data in [
                b"hello world ".repeat(10_000),
                pseudo_random(100_000, 7),
                vec![1u8; 10],
                Vec::new(),
            ] {
                let d = codec.digest(&data);
                let stored = codec.encode(&d, &data).unwrap();
                let header = check_stored(&d, &stored).unwrap();
                assert_eq!(header.plain_len, data.len() as u64);
                assert_eq!(codec.decode(&d, stored, Some(data.len())).unwrap(), data);
            }
        }
    }

    #[test]
    fn incompressible_data_is_stored_raw_and_text_compressed() {
        let codec = ChunkCodec::new(3, None);
        let noise = pseudo_random(65_536, 3);
        let stored = codec.encode(&codec.digest(&noise), &noise).unwrap();
        assert_eq!(stored[8] & CHUNK_FLAG_ZSTD, 0);
        assert_eq!(stored.len(), CHUNK_HEADER_LEN + noise.len());
        let text = b"abc".repeat(30_000);
        let stored = codec.encode(&codec.digest(&text), &text).unwrap();
        assert_eq!(stored[8] & CHUNK_FLAG_ZSTD, CHUNK_FLAG_ZSTD);
        assert!(stored.len() < 1000);
    }

    #[test]
    fn keyed_digest_differs_from_sha256() {
        let data = b"same content".to_vec();
        let plain = ChunkCodec::new(3, None).digest(&data);
        let keyed = ChunkCodec::new(3, Some(&RepoKey::from_bytes([1; 32]))).digest(&data);
        let other = ChunkCodec::new(3, Some(&RepoKey::from_bytes([2; 32]))).digest(&data);
        assert_ne!(plain, keyed);
        assert_ne!(keyed, other);
    }

    #[test]
    fn every_single_byte_flip_is_detected_and_names_the_digest() {
        for codec in codecs() {
            let data = b"0123456789abcdef".repeat(64);
            let d = codec.digest(&data);
            let stored = codec.encode(&d, &data).unwrap();
            for i in 0..stored.len() {
                let mut bad = stored.clone();
                bad[i] ^= 0x40;
                let err = codec.decode(&d, bad, None).unwrap_err();
                assert!(err.to_string().contains(&d.to_hex()), "byte {i}: {err}");
            }
            let mut short = stored.clone();
            short.pop();
            assert!(codec.decode(&d, short, None).is_err());
        }
    }

    #[test]
    fn unhashed_decoding_still_catches_every_byte_flip_but_not_a_swap() {
        for codec in codecs() {
            let data = b"0123456789abcdef".repeat(64);
            let d = codec.digest(&data);
            let stored = codec.encode(&d, &data).unwrap();
            assert_eq!(
                codec
                    .decode_unhashed(&d, stored.clone(), Some(data.len()))
                    .unwrap(),
                data
            );
            for i in 0..stored.len() {
                let mut bad = stored.clone();
                bad[i] ^= 0x40;
                assert!(codec.decode_unhashed(&d, bad, None).is_err(), "byte {i}");
            }
        }
        // Without the content digest, another chunk's intact file decodes (unencrypted): callers
        // of decode_unhashed must check a digest over what they read.
        let codec = ChunkCodec::new(3, None);
        let (a, b) = (b"aaaa".repeat(100), b"bbbb".repeat(100));
        let stored_b = codec.encode(&codec.digest(&b), &b).unwrap();
        assert_eq!(
            codec
                .decode_unhashed(&codec.digest(&a), stored_b, None)
                .unwrap(),
            b
        );
    }

    #[test]
    fn swapped_chunk_is_detected() {
        for codec in codecs() {
            let a = b"aaaa".repeat(100);
            let b = b"bbbb".repeat(100);
            let (da, db) = (codec.digest(&a), codec.digest(&b));
            let stored_b = codec.encode(&db, &b).unwrap();
            let err = codec.decode(&da, stored_b, None).unwrap_err();
            assert!(matches!(err, Error::ChunkCorrupt { digest, .. } if digest == da));
        }
    }

    #[test]
    fn wrong_key_fails_authentication() {
        let data = b"secret".repeat(100);
        let k1 = ChunkCodec::new(3, Some(&RepoKey::from_bytes([1; 32])));
        let k2 = ChunkCodec::new(3, Some(&RepoKey::from_bytes([2; 32])));
        let d = k1.digest(&data);
        let stored = k1.encode(&d, &data).unwrap();
        let err = k2.decode(&d, stored.clone(), None).unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
        let err = ChunkCodec::new(3, None)
            .decode(&d, stored, None)
            .unwrap_err();
        assert!(err.to_string().contains("without a key"), "{err}");
    }
}

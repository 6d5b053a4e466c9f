//! Digest newtypes: [`ChunkDigest`] (a chunk's id) and [`Sha256`] (a whole file's or an index
//! file's plain SHA-256). Both print and serialise as 64 lower-case hex digits.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::error::Error;

macro_rules! digest_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw digest bytes.
            #[must_use]
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw digest bytes.
            #[must_use]
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// 64 lower-case hex digits.
            #[must_use]
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                let invalid = |reason| Error::InvalidName {
                    what: $what,
                    value: s.chars().take(80).collect(),
                    reason,
                };
                if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(invalid("expected 64 lower-case hex digits"));
                }
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| invalid("not hex"))?;
                Ok(Self(out))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_newtype!(
    /// The id of a chunk: SHA-256 of its plain data, or in an encrypted repository HMAC-SHA256 of
    /// the plain data under a key derived from the repository key (so that ids reveal nothing
    /// about content to someone without the key).
    ///
    /// [`ChunkDigest::ZERO`] is the well-known id of an all-zero chunk of any length: such chunks
    /// are never hashed nor stored, readers synthesise them.
    ChunkDigest,
    "chunk digest"
);

digest_newtype!(
    /// A plain SHA-256 digest of a whole file (as restore writes it) or of an index file.
    Sha256,
    "SHA-256 digest"
);

impl ChunkDigest {
    /// The id of an all-zero chunk: 32 zero bytes. No real SHA-256 or HMAC output is expected to
    /// be all zeros, so the value cannot collide with a stored chunk.
    pub const ZERO: ChunkDigest = ChunkDigest([0; 32]);

    /// Whether this is [`ChunkDigest::ZERO`].
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl Sha256 {
    /// SHA-256 of `data`.
    #[must_use]
    pub fn of(data: &[u8]) -> Sha256 {
        Sha256(sha2::Sha256::digest(data).into())
    }
}

/// An incremental SHA-256, for whole files fed in order.
#[derive(Clone, Default)]
pub struct Sha256Hasher(sha2::Sha256);

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hasher")
    }
}

impl Sha256Hasher {
    /// A fresh hasher.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// Feeds `len` zero bytes without allocating them all at once.
    pub fn update_zeros(&mut self, mut len: u64) {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while len > 0 {
            let n = usize::try_from(len.min(ZEROS.len() as u64)).unwrap_or(ZEROS.len());
            self.0.update(&ZEROS[..n]);
            len -= n as u64;
        }
    }

    /// The digest of everything fed.
    #[must_use]
    pub fn finish(self) -> Sha256 {
        Sha256(self.0.finalize().into())
    }
}

/// Whether `data` is all zero bytes. Scans 64 bytes at a time so the compiler vectorises it; this
/// is what lets the writer skip hashing, compressing and storing sparse regions.
#[must_use]
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        let mut acc = 0u8;
        for b in block {
            acc |= b;
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_strict_parsing() {
        let d = ChunkDigest::from_bytes([0x5a; 32]);
        let s = d.to_string();
        assert_eq!(s.parse::<ChunkDigest>().unwrap(), d);
        assert!("ABCD".parse::<ChunkDigest>().is_err());
        assert!(s.to_uppercase().parse::<ChunkDigest>().is_err());
        assert!(format!("{s}0").parse::<ChunkDigest>().is_err());
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<ChunkDigest>(&json).unwrap(), d);
    }

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[]));
        assert!(is_all_zero(&[0; 1000]));
        for pos in [0, 63, 64, 999] {
            let mut v = vec![0u8; 1000];
            v[pos] = 1;
            assert!(!is_all_zero(&v), "pos {pos}");
        }
        assert!(ChunkDigest::ZERO.is_zero());
    }

    #[test]
    fn hasher_zeros_equal_plain_zeros() {
        let mut h = Sha256Hasher::new();
        h.update_zeros(200_000);
        assert_eq!(h.finish(), Sha256::of(&vec![0u8; 200_000]));
    }
}

//! Identifier newtypes, validated strictly because they become storage paths (FAULT-MATRIX I3):
//! [`VmKey`], [`BackupId`] (`<vm-key>/<timestamp>`), and [`FileName`] (index and blob names).

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use crate::error::{Error, Result};

fn check_name(what: &'static str, s: &str, max: usize) -> Result<()> {
    let bad = |reason| Error::InvalidName {
        what,
        value: s.chars().take(200).collect(),
        reason,
    };
    if s.is_empty() || s.len() > max {
        return Err(bad("empty or too long"));
    }
    if s.starts_with('.') || s.starts_with('-') {
        return Err(bad("must not start with '.' or '-'"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

macro_rules! name_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s`.
            ///
            /// # Errors
            /// [`Error::InvalidName`] unless `s` is 1..=
            #[doc = stringify!($max)]
            /// characters of `[A-Za-z0-9._-]` not starting with `.` or `-`.
            pub fn new(s: impl Into<String>) -> Result<Self> {
                let s = s.into();
                check_name($what, &s, $max)?;
                Ok(Self(s))
            }

            /// The name.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_newtype!(
    /// A stable key of a VM inside the repository (the engine derives it from the VM's instance
    /// UUID, never from its display name, which can change and can contain anything).
    VmKey,
    "VM key",
    128
);

name_newtype!(
    /// The name of an index or blob inside a backup (without `.fidx`/`.blob`), e.g. `disk-2000`
    /// or `vmx`. Chosen by the engine from internal ids, not from VM-provided names.
    FileName,
    "file name",
    100
);

/// Format of the timestamp part of a backup id: `2026-11-27T033114Z` (UTC, seconds). Sorts in
/// time order as a string.
pub(crate) const BACKUP_TIME_FORMAT: &str = "%Y-%m-%dT%H%M%SZ";

/// A backup: `<vm-key>/<timestamp>`, e.g. `vm-4213/2026-11-27T033114Z`. Sorts by VM, then time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId {
    vm: VmKey,
    time: Timestamp,
}

impl BackupId {
    /// The id of `vm`'s backup at `time` (truncated to whole seconds).
    ///
    /// # Errors
    /// When `time` is outside years 1000–9999 (the id would not sort as text).
    pub fn new(vm: VmKey, time: Timestamp) -> Result<BackupId> {
        let time = Timestamp::from_second(time.as_second())
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let year = time.to_zoned(TimeZone::UTC).year();
        if !(1000..=9999).contains(&year) {
            return Err(Error::InvalidArgument(format!(
                "backup time {time} is outside years 1000-9999"
            )));
        }
        Ok(BackupId { vm, time })
    }

    /// The VM.
    #[must_use]
    pub fn vm(&self) -> &VmKey {
        &self.vm
    }

    /// The backup's time (its start, whole seconds, UTC).
    #[must_use]
    pub fn time(&self) -> Timestamp {
        self.time
    }

    /// The timestamp part as in the id.
    #[must_use]
    pub fn time_str(&self) -> String {
        self.time.strftime(BACKUP_TIME_FORMAT).to_string()
    }

    /// The same VM one second later (to make ids unique when the clock repeats itself).
    pub(crate) fn next_second(&self) -> Result<BackupId> {
        let t = self
            .time
            .checked_add(jiff::SignedDuration::from_secs(1))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        BackupId::new(self.vm.clone(), t)
    }

    /// Parses the timestamp part strictly (exact format, valid date).
    ///
    /// # Errors
    /// [`Error::InvalidName`].
    pub fn parse_time(s: &str) -> Result<Timestamp> {
        let bad = |reason| Error::InvalidName {
            what: "backup time",
            value: s.chars().take(40).collect(),
            reason,
        };
        let b = s.as_bytes();
        if b.len() != 18
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[17] != b'Z'
            || ![0..4, 5..7, 8..10, 11..17]
                .iter()
                .all(|r| b[r.clone()].iter().all(u8::is_ascii_digit))
        {
            return Err(bad("expected YYYY-MM-DDTHHMMSSZ"));
        }
        let num = |r: std::ops::Range<usize>| -> i16 { s[r].parse::<i16>().unwrap_or(-1) };
        let dt = DateTime::new(
            num(0..4),
            num(5..7) as i8,
            num(8..10) as i8,
            num(11..13) as i8,
            num(13..15) as i8,
            num(15..17) as i8,
            0,
        )
        .map_err(|_| bad("not a valid date and time"))?;
        let ts = dt
            .to_zoned(TimeZone::UTC)
            .map_err(|_| bad("not a valid date and time"))?
            .timestamp();
        Ok(ts)
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vm, self.time_str())
    }
}

impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupId({self})")
    }
}

impl FromStr for BackupId {
    type Err = Error;

    fn from_str(s: &str) -> Result<BackupId> {
        let Some((vm, time)) = s.split_once('/') else {
            return Err(Error::InvalidName {
                what: "backup id",
                value: s.chars().take(200).collect(),
                reason: "expected <vm-key>/<YYYY-MM-DDTHHMMSSZ>",
            });
        };
        BackupId::new(VmKey::new(vm)?, BackupId::parse_time(time)?)
    }
}

impl serde::Serialize for BackupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for BackupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_round_trip_and_sort_by_time() {
        let id: BackupId = "vm-4213/2026-11-27T033114Z".parse().unwrap();
        assert_eq!(id.to_string(), "vm-4213/2026-11-27T033114Z");
        assert_eq!(id.vm().as_str(), "vm-4213");
        let later: BackupId = "vm-4213/2026-11-27T033115Z".parse().unwrap();
        assert!(id < later);
        assert_eq!(id.next_second().unwrap(), later);
    }

    // covers I3: names that would escape the repository or confuse paths are refused.
    #[test]
    fn hostile_ids_are_rejected() {
        for bad in [
            "../../etc/passwd",
            "vm/../2026-11-27T033114Z",
            "../2026-11-27T033114Z",
            "vm/2026-11-27T033114Z/x",
            "/vm/2026-11-27T033114Z",
            "vm\\..\\x/2026-11-27T033114Z",
            "%2e%2e/2026-11-27T033114Z",
            "．．/2026-11-27T033114Z",
            "vm\0/2026-11-27T033114Z",
            "./2026-11-27T033114Z",
            "vm/2026-13-27T033114Z",
            "vm/2026-02-30T033114Z",
            "vm/2026-11-27T033114",
            "vm/2026-11-27 03:31:14Z",
            "",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad:?}");
        }
        assert!(VmKey::new("x".repeat(300)).is_err());
        assert!(VmKey::new("..").is_err());
        assert!(FileName::new("disk-2000").is_ok());
        assert!(FileName::new("a/b").is_err());
    }
}

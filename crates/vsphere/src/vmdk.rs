//! VMDK text descriptors: parse, inspect, edit and write them back unchanged except for what was
//! edited (comments, order, quoting and unknown lines are preserved).
//!
//! A disk is a descriptor (`disk.vmdk`, text) plus extents (`disk-flat.vmdk`, raw bytes). The
//! engine finds the flat extent from the extent line — never by string replacement — and restore
//! writes a descriptor: either the original with the extent renamed, or a fresh one from
//! [`Descriptor::new_flat`].

use std::fmt;

use crate::error::{Error, Result};

/// Largest descriptor we accept (real ones are well under 2 KiB).
const MAX_DESCRIPTOR: usize = 1 << 20;

/// One extent line: `RW 33554432 VMFS "web01-flat.vmdk" 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// `RW`, `RDONLY` or `NOACCESS`.
    pub access: String,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// `FLAT`, `VMFS`, `SPARSE`, `VMFSSPARSE`, `SESPARSE`, `ZERO`, `VMFSRDM`, `VMFSRAW`, …
    pub kind: String,
    /// The extent file (absent for `ZERO`).
    pub file: Option<String>,
    /// Offset in sectors into the file (FLAT extents may have one).
    pub offset: Option<u64>,
}

impl Extent {
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.sectors.saturating_mul(512)
    }

    /// Whether the file holds raw bytes (a flat extent that can be read as the disk image).
    pub fn is_flat(&self) -> bool {
        matches!(self.kind.as_str(), "FLAT" | "VMFS")
    }

    fn parse(line: &str) -> Option<Self> {
        let mut parts = line.trim().splitn(3, char::is_whitespace);
        let access = parts.next()?;
        if !matches!(access, "RW" | "RDONLY" | "NOACCESS") {
            return None;
        }
        let rest = parts.next().map(str::trim)?;
        let sectors: u64 = rest.parse().ok()?;
        let tail = parts.next().unwrap_or_default().trim_start();
        let (kind, after) = tail.split_once(char::is_whitespace).unwrap_or((tail, ""));
        if kind.is_empty() {
            return None;
        }
        let after = after.trim();
        let (file, offset) = if let Some(quoted) = after.strip_prefix('"') {
            let (name, rest) = quoted.split_once('"')?;
            let rest = rest.trim();
            let offset = if rest.is_empty() {
                None
            } else {
                Some(rest.parse().ok()?)
            };
            (Some(name.to_owned()), offset)
        } else if after.is_empty() {
            (None, None)
        } else {
            return None;
        };
        Some(Self {
            access: access.to_owned(),
            sectors,
            kind: kind.to_owned(),
            file,
            offset,
        })
    }
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.access, self.sectors, self.kind)?;
        if let Some(file) = &self.file {
            write!(f, " \"{file}\"")?;
            if let Some(offset) = self.offset {
                write!(f, " {offset}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// Comments, blank lines and anything not understood: written back verbatim.
    Verbatim(String),
    /// `key=value` or `ddb.key = "value"`; `raw` is the original text until edited.
    Entry {
        key: String,
        value: String,
        quoted: bool,
        raw: Option<String>,
    },
    /// An extent; `raw` is the original text until edited.
    Extent { extent: Extent, raw: Option<String> },
}

/// A parsed VMDK descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    lines: Vec<Line>,
    crlf: bool,
    trailing_newline: bool,
}

/// Options for [`Descriptor::new_flat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDescriptor {
    /// Capacity in bytes (a multiple of 512).
    pub capacity_bytes: u64,
    /// Extent file name, e.g. `web01-flat.vmdk` (relative to the descriptor).
    pub extent_file: String,
    /// `ddb.adapterType`: `lsilogic`, `buslogic`, `ide`, `pvscsi`, `lsisas1068`.
    pub adapter_type: String,
    /// `ddb.virtualHWVersion`, e.g. `"14"`.
    pub hardware_version: String,
    /// Sets `ddb.thinProvisioned = "1"`.
    pub thin: bool,
    /// `ddb.uuid` to keep guest disk serials stable across restore (`60 00 C2 9…`).
    pub uuid: Option<String>,
}

fn unquote(value: &str) -> (String, bool) {
    let v = value.trim();
    match v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => (inner.to_owned(), true),
        None => (v.to_owned(), false),
    }
}

impl Descriptor {
    /// Parses descriptor text.
    ///
    /// # Errors
    /// [`Error::Descriptor`] when the text is too large, has no extent, or has a malformed
    /// extent line.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_DESCRIPTOR {
            return Err(Error::Descriptor(format!(
                "{} bytes is too large for a descriptor",
                text.len()
            )));
        }
        let crlf = text.contains("\r\n");
        let trailing_newline = text.ends_with('\n');
        let mut lines = Vec::new();
        for raw in text.lines() {
            let raw_line = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = raw_line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                lines.push(Line::Verbatim(raw_line.to_owned()));
            } else if matches!(
                trimmed.split_whitespace().next(),
                Some("RW" | "RDONLY" | "NOACCESS")
            ) {
                let extent = Extent::parse(trimmed).ok_or_else(|| {
                    Error::Descriptor(format!("malformed extent line {trimmed:?}"))
                })?;
                lines.push(Line::Extent {
                    extent,
                    raw: Some(raw_line.to_owned()),
                });
            } else if let Some((key, value)) = trimmed.split_once('=') {
                let (value, quoted) = unquote(value);
                lines.push(Line::Entry {
                    key: key.trim().to_owned(),
                    value,
                    quoted,
                    raw: Some(raw_line.to_owned()),
                });
            } else {
                lines.push(Line::Verbatim(raw_line.to_owned()));
            }
        }
        let descriptor = Self {
            lines,
            crlf,
            trailing_newline,
        };
        if descriptor.extents().is_empty() {
            return Err(Error::Descriptor("no extent line".into()));
        }
        Ok(descriptor)
    }

    /// Parses descriptor bytes (must be UTF-8; descriptors declare `encoding="UTF-8"`).
    ///
    /// # Errors
    /// [`Error::Descriptor`] for non-UTF-8 or binary input (e.g. a sparse extent header), and
    /// as [`Descriptor::parse`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.contains(&0) {
            return Err(Error::Descriptor(
                "binary data (a sparse extent, not a text descriptor?)".into(),
            ));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Error::Descriptor(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
        Self::parse(text)
    }

    /// A fresh descriptor for one flat extent of `capacity_bytes` (restore of a disk whose
    /// original descriptor is unavailable).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the capacity is 0 or not a multiple of 512, or the extent file
    /// name contains a quote or newline.
    pub fn new_flat(options: &NewDescriptor) -> Result<Self> {
        let capacity = options.capacity_bytes;
        if capacity == 0 || !capacity.is_multiple_of(512) {
            return Err(Error::InvalidInput(format!(
                "disk capacity {capacity} is not a positive multiple of 512"
            )));
        }
        if options.extent_file.contains(['"', '\n', '\r']) || options.extent_file.is_empty() {
            return Err(Error::InvalidInput(format!(
                "bad extent file name {:?}",
                options.extent_file
            )));
        }
        let sectors = capacity / 512;
        let (heads, per_track, max_cyl) = if options.adapter_type == "ide" {
            (16u64, 63u64, 16383u64)
        } else {
            (255, 63, 65535)
        };
        let cylinders = (sectors / (heads * per_track)).clamp(1, max_cyl);
        let mut cid: u32 = rand::random();
        if cid == u32::MAX {
            cid = 1;
        }
        let mut text = format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n\
# Extent description\nRW {sectors} VMFS \"{}\"\n\n# The Disk Data Base\n#DDB\n\n\
ddb.adapterType = \"{}\"\nddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"{heads}\"\n\
ddb.geometry.sectors = \"{per_track}\"\nddb.virtualHWVersion = \"{}\"\n",
            options.extent_file, options.adapter_type, options.hardware_version
        );
        if options.thin {
            text.push_str("ddb.thinProvisioned = \"1\"\n");
        }
        if let Some(uuid) = &options.uuid {
            text.push_str(&format!("ddb.uuid = \"{uuid}\"\n"));
        }
        Self::parse(&text)
    }

    /// A header or DDB value by key (`CID`, `createType`, `ddb.adapterType`), unquoted.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Entry { key: k, value, .. } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// Sets a value, keeping the line's position and quoting when it exists; new header keys
    /// go before the extent section, new `ddb.*` keys at the end. DDB values are quoted.
    pub fn set(&mut self, key: &str, value: &str) {
        for line in &mut self.lines {
            if let Line::Entry {
                key: k,
                value: v,
                raw,
                ..
            } = line
                && k == key
            {
                *v = value.to_owned();
                *raw = None;
                return;
            }
        }
        let is_ddb = key.starts_with("ddb.");
        let quoted = is_ddb
            || matches!(
                key,
                "createType" | "encoding" | "parentFileNameHint" | "changeTrackPath"
            );
        let entry = Line::Entry {
            key: key.to_owned(),
            value: value.to_owned(),
            quoted,
            raw: None,
        };
        if is_ddb {
            self.lines.push(entry);
        } else {
            // After the last header line, before the comments and blanks of the extent section.
            let mut at = self
                .lines
                .iter()
                .position(|l| matches!(l, Line::Extent { .. }))
                .unwrap_or(self.lines.len());
            while at > 0 && matches!(self.lines[at - 1], Line::Verbatim(_)) {
                at -= 1;
            }
            self.lines.insert(at, entry);
        }
    }

    /// `CID` as a number.
    pub fn cid(&self) -> Option<u32> {
        self.get("CID")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
    }

    /// `parentCID` as a number (`0xffffffff` = no parent).
    pub fn parent_cid(&self) -> Option<u32> {
        self.get("parentCID")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
    }

    /// Whether the descriptor describes a delta disk (has a parent).
    pub fn has_parent(&self) -> bool {
        self.parent_cid().is_some_and(|p| p != u32::MAX) || self.get("parentFileNameHint").is_some()
    }

    /// `createType` (`vmfs`, `monolithicFlat`, `vmfsSparse`, `seSparse`, …).
    pub fn create_type(&self) -> Option<&str> {
        self.get("createType")
    }

    /// The extents in order.
    pub fn extents(&self) -> Vec<&Extent> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Extent { extent, .. } => Some(extent),
                _ => None,
            })
            .collect()
    }

    /// Total size of all extents in bytes (the disk's capacity).
    pub fn capacity_bytes(&self) -> u64 {
        self.extents()
            .iter()
            .map(|e| e.size_bytes())
            .fold(0, u64::saturating_add)
    }

    /// The single flat extent's file, for disks that are one raw file.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for sparse, multi-extent or extent-less disks.
    pub fn flat_extent_file(&self) -> Result<&str> {
        match self.extents().as_slice() {
            [one] if one.is_flat() && one.offset.unwrap_or(0) == 0 => one
                .file
                .as_deref()
                .ok_or_else(|| Error::Unsupported("flat extent without a file".into())),
            [one] => Err(Error::Unsupported(format!(
                "extent type {} is not a flat file",
                one.kind
            ))),
            many => Err(Error::Unsupported(format!(
                "{} extents; only single-extent flat disks are supported",
                many.len()
            ))),
        }
    }

    /// All `ddb.*` entries in order.
    pub fn ddb(&self) -> Vec<(&str, &str)> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Entry { key, value, .. } if key.starts_with("ddb.") => {
                    Some((key.as_str(), value.as_str()))
                }
                _ => None,
            })
            .collect()
    }

    /// Renames the extent file `old` to `new` (restore under another name). Returns whether an
    /// extent had that file.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `new` contains a quote or a newline.
    pub fn rename_extent(&mut self, old: &str, new: &str) -> Result<bool> {
        if new.contains(['"', '\n', '\r']) || new.is_empty() {
            return Err(Error::InvalidInput(format!("bad extent file name {new:?}")));
        }
        let mut found = false;
        for line in &mut self.lines {
            if let Line::Extent { extent, raw } = line
                && extent.file.as_deref() == Some(old)
            {
                extent.file = Some(new.to_owned());
                *raw = None;
                found = true;
            }
        }
        Ok(found)
    }
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let newline = if self.crlf { "\r\n" } else { "\n" };
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                f.write_str(newline)?;
            }
            match line {
                Line::Verbatim(text) => f.write_str(text)?,
                Line::Entry { raw: Some(raw), .. } | Line::Extent { raw: Some(raw), .. } => {
                    f.write_str(raw)?
                }
                Line::Entry {
                    key,
                    value,
                    quoted,
                    raw: None,
                } => {
                    let sep = if key.starts_with("ddb.") { " = " } else { "=" };
                    if *quoted {
                        write!(f, "{key}{sep}\"{value}\"")?;
                    } else {
                        write!(f, "{key}{sep}{value}")?;
                    }
                }
                Line::Extent { extent, raw: None } => write!(f, "{extent}")?,
            }
        }
        if self.trailing_newline || self.lines.is_empty() {
            f.write_str(newline)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESXI: &str = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\n\
createType=\"vmfs\"\n\n# Extent description\nRW 33554432 VMFS \"web 01-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
ddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"2088\"\nddb.geometry.heads = \"255\"\n\
ddb.geometry.sectors = \"63\"\nddb.longContentID = \"a1b2\"\nddb.thinProvisioned = \"1\"\nddb.uuid = \"60 00 C2 9a\"\n\
ddb.virtualHWVersion = \"14\"\n";

    const DELTA: &str = "# Disk DescriptorFile\r\nversion=1\r\nCID=5e6f7a8b\r\nparentCID=1a2b3c4d\r\nisNativeSnapshot=\"no\"\r\n\
createType=\"vmfsSparse\"\r\nparentFileNameHint=\"web01.vmdk\"\r\n# Extent description\r\nRW 33554432 VMFSSPARSE \"web01-000001-delta.vmdk\"\r\n";

    #[test]
    fn esxi_descriptor_round_trips_and_reads() {
        let d = Descriptor::parse(ESXI).unwrap();
        assert_eq!(d.to_string(), ESXI);
        assert_eq!(d.cid(), Some(0xffff_fffe));
        assert_eq!(d.parent_cid(), Some(u32::MAX));
        assert!(!d.has_parent());
        assert_eq!(d.create_type(), Some("vmfs"));
        assert_eq!(d.capacity_bytes(), 33_554_432 * 512);
        assert_eq!(d.flat_extent_file().unwrap(), "web 01-flat.vmdk");
        assert_eq!(d.get("ddb.uuid"), Some("60 00 C2 9a"));
        assert_eq!(d.ddb().len(), 8);
    }

    #[test]
    fn delta_descriptor_round_trips_with_crlf_and_is_not_flat() {
        let d = Descriptor::parse(DELTA).unwrap();
        assert_eq!(d.to_string(), DELTA);
        assert!(d.has_parent());
        assert!(d.flat_extent_file().is_err());
        assert_eq!(d.extents()[0].kind, "VMFSSPARSE");
    }

    #[test]
    fn renaming_the_extent_changes_only_that_line() {
        let mut d = Descriptor::parse(ESXI).unwrap();
        assert!(
            d.rename_extent("web 01-flat.vmdk", "restored-flat.vmdk")
                .unwrap()
        );
        assert!(!d.rename_extent("nope", "x").unwrap());
        assert!(d.rename_extent("restored-flat.vmdk", "bad\"name").is_err());
        let text = d.to_string();
        assert_eq!(text, ESXI.replace("web 01-flat.vmdk", "restored-flat.vmdk"));
        d.set("ddb.uuid", "60 00 C2 ff");
        d.set("ddb.new", "x");
        d.set("CID", "0000abcd");
        d.set("changeTrackPath", "web-ctk.vmdk");
        let again = Descriptor::parse(&d.to_string()).unwrap();
        assert_eq!(again.get("ddb.uuid"), Some("60 00 C2 ff"));
        assert_eq!(again.get("ddb.new"), Some("x"));
        assert_eq!(again.cid(), Some(0xabcd));
        assert!(
            again
                .to_string()
                .contains("changeTrackPath=\"web-ctk.vmdk\"\n\n# Extent description")
        );
    }

    #[test]
    fn fresh_descriptor_for_a_capacity() {
        let d = Descriptor::new_flat(&NewDescriptor {
            capacity_bytes: 16 << 30,
            extent_file: "disk-flat.vmdk".into(),
            adapter_type: "lsilogic".into(),
            hardware_version: "14".into(),
            thin: true,
            uuid: Some("60 00".into()),
        })
        .unwrap();
        assert_eq!(d.capacity_bytes(), 16 << 30);
        assert_eq!(d.flat_extent_file().unwrap(), "disk-flat.vmdk");
        assert_eq!(d.get("ddb.geometry.cylinders"), Some("2088"));
        assert_eq!(d.get("ddb.thinProvisioned"), Some("1"));
        assert_ne!(d.cid(), Some(u32::MAX));
        assert_eq!(Descriptor::parse(&d.to_string()).unwrap(), d);
        let bad = |capacity_bytes, extent_file: &str| NewDescriptor {
            capacity_bytes,
            extent_file: extent_file.into(),
            adapter_type: "ide".into(),
            hardware_version: "7".into(),
            thin: false,
            uuid: None,
        };
        assert!(Descriptor::new_flat(&bad(1000, "a")).is_err());
        assert!(Descriptor::new_flat(&bad(0, "a")).is_err());
        assert!(Descriptor::new_flat(&bad(512, "a\"b")).is_err());
        let ide = Descriptor::new_flat(&bad(1 << 40, "big-flat.vmdk")).unwrap();
        assert_eq!(ide.get("ddb.geometry.cylinders"), Some("16383"));
    }

    #[test]
    fn extent_lines_of_every_shape() {
        assert_eq!(
            Extent::parse("RW 2048 FLAT \"a b.img\" 128"),
            Some(Extent {
                access: "RW".into(),
                sectors: 2048,
                kind: "FLAT".into(),
                file: Some("a b.img".into()),
                offset: Some(128)
            })
        );
        assert_eq!(Extent::parse("RDONLY 10 ZERO").map(|e| e.file), Some(None));
        for bad in [
            "RW x VMFS \"a\"",
            "RW 10",
            "RW 10 VMFS \"unterminated",
            "RW 10 VMFS a.vmdk",
            "XX 1 VMFS \"a\"",
        ] {
            assert_eq!(Extent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_descriptors_are_errors() {
        assert!(Descriptor::parse("version=1\n").is_err());
        assert!(Descriptor::parse("RW many VMFS \"x\"\n").is_err());
        assert!(Descriptor::from_bytes(b"KDMV\0\0\0").is_err());
        assert!(Descriptor::from_bytes(&[0xff, 0xfe, b'a']).is_err());
        let huge = "#".repeat(MAX_DESCRIPTOR + 1);
        assert!(Descriptor::parse(&huge).is_err());
    }
}

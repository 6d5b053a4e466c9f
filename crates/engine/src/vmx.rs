//! The `.vmx` configuration file: parse it keeping every line, read and change keys, and rewrite a
//! backup's VMX for a restored copy (new name, new disk file names, new identity).
//!
//! Format: one `key = "value"` per line, `#` comments; keys are case-insensitive; values escape
//! special bytes as `|XX` (two hex digits), e.g. `|22` for a double quote.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A parsed VMX file. Lines that are not `key = "value"` (comments, blanks) are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmx {
    lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Entry { key: String, value: String },
    Other(String),
}

impl Vmx {
    /// Parses VMX text. Never fails: a line it does not understand is kept as it is.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let lines = text
            .lines()
            .map(|line| match parse_entry(line) {
                Some((key, value)) => Line::Entry { key, value },
                None => Line::Other(line.to_owned()),
            })
            .collect();
        Self { lines }
    }

    /// The (unescaped) value of `key`, compared case-insensitively.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|line| match line {
            Line::Entry { key: k, value } if k.eq_ignore_ascii_case(key) => Some(value.as_str()),
            _ => None,
        })
    }

    /// Sets `key` to `value`, replacing an existing entry in place or appending a new one.
    pub fn set(&mut self, key: &str, value: &str) {
        for line in &mut self.lines {
            if let Line::Entry { key: k, value: v } = line
                && k.eq_ignore_ascii_case(key)
            {
                value.clone_into(v);
                return;
            }
        }
        self.lines.push(Line::Entry {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }

    /// Removes every entry whose key satisfies `predicate` (given the lower-cased key).
    pub fn remove_where(&mut self, predicate: impl Fn(&str) -> bool) {
        self.lines.retain(|line| match line {
            Line::Entry { key, .. } => !predicate(&key.to_ascii_lowercase()),
            Line::Other(_) => true,
        });
    }

    /// The disk file names of present virtual disks: `(device, fileName)` such as
    /// `("scsi0:1", "web01_1.vmdk")`, for every `<dev>.fileName` whose device is a disk (not a CD-ROM
    /// image) and is present.
    #[must_use]
    pub fn disk_files(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for line in &self.lines {
            let Line::Entry { key, value } = line else {
                continue;
            };
            let lower = key.to_ascii_lowercase();
            let Some(device) = lower.strip_suffix(".filename") else {
                continue;
            };
            if !is_disk_device(device) || !value.to_ascii_lowercase().ends_with(".vmdk") {
                continue;
            }
            let present = self
                .get(&format!("{device}.present"))
                .is_none_or(|p| p.eq_ignore_ascii_case("true"));
            let device_type = self
                .get(&format!("{device}.deviceType"))
                .unwrap_or("scsi-hardDisk");
            if present && !device_type.to_ascii_lowercase().contains("cdrom") {
                out.insert(device.to_owned(), value.clone());
            }
        }
        out
    }

    /// Rewrites the configuration of a backup for a restored copy named `name`:
    /// - `displayName` and the nvram file follow the new name;
    /// - each disk `fileName` is replaced through `rename_disk` (old → new file name);
    /// - the copy gets a new identity: `uuid.action = "create"` (ESXi generates a new BIOS UUID
    ///   instead of asking "moved or copied?"), no `uuid.bios`/`uuid.location`/`vc.uuid`, and
    ///   generated MAC addresses are dropped so the copy cannot clash with the original on the net;
    /// - Changed Block Tracking state (`ctkEnabled`, `*.ctkEnabled`) is dropped: the restored disks
    ///   have no `-ctk.vmdk` files; vbm enables CBT again on the next backup.
    /// - host-specific paths (swap, logs) are dropped.
    pub fn rewrite_for_restore(&mut self, name: &str, mut rename_disk: impl FnMut(&str) -> String) {
        self.set("displayName", name);
        self.set("nvram", &format!("{name}.nvram"));
        let disks = self.disk_files();
        for line in &mut self.lines {
            let Line::Entry { key, value } = line else {
                continue;
            };
            let lower = key.to_ascii_lowercase();
            if let Some(device) = lower.strip_suffix(".filename")
                && disks.contains_key(device)
            {
                *value = rename_disk(value);
            }
        }
        self.remove_where(|k| {
            matches!(
                k,
                "uuid.bios"
                    | "uuid.location"
                    | "vc.uuid"
                    | "ctkenabled"
                    | "sched.swap.derivedname"
                    | "migrate.hostlog"
            ) || k.ends_with(".ctkenabled")
                || (k.starts_with("ethernet")
                    && (k.ends_with(".generatedaddress") || k.ends_with(".generatedaddressoffset")))
        });
        self.set("uuid.action", "create");
    }

    /// Serialises back to VMX text (each entry as `key = "value"` with `|XX` escapes).
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Entry { key, value } => {
                    let _ = writeln!(out, "{key} = \"{}\"", escape(value));
                }
                Line::Other(text) => {
                    out.push_str(text);
                    out.push('\n');
                }
            }
        }
        out
    }
}

fn is_disk_device(device: &str) -> bool {
    ["scsi", "sata", "ide", "nvme"].iter().any(|bus| {
        device
            .strip_prefix(bus)
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            })
    })
}

fn parse_entry(line: &str) -> Option<(String, String)> {
    let trimmed = line.trim();
    if trimmed.starts_with('#') {
        return None;
    }
    let (key, value) = trimmed.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Some((key.to_owned(), unescape(value)))
}

fn unescape(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'|'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '"' || c == '|' || c.is_ascii_control() {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "|{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "14"
displayName = "web |22prod|22"
nvram = "web01.nvram"
# a comment
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "web01.vmdk"
scsi0:0.ctkEnabled = "TRUE"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "/vmfs/volumes/ds 2/web01/web01_1.vmdk"
ide1:0.present = "TRUE"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "/iso/install.vmdk"
scsi0:2.present = "FALSE"
scsi0:2.fileName = "old.vmdk"
ctkEnabled = "TRUE"
uuid.bios = "42 1c 00"
vc.uuid = "50 1c 00"
ethernet0.generatedAddress = "00:50:56:aa:bb:cc"
ethernet0.addressType = "vpx"
"#;

    #[test]
    fn reads_escaped_values_case_insensitively() {
        let vmx = Vmx::parse(SAMPLE);
        assert_eq!(vmx.get("DISPLAYNAME"), Some("web \"prod\""));
        assert_eq!(vmx.get("missing"), None);
    }

    #[test]
    fn finds_present_disks_only() {
        let disks = Vmx::parse(SAMPLE).disk_files();
        let expected: BTreeMap<String, String> = [
            ("scsi0:0".to_owned(), "web01.vmdk".to_owned()),
            (
                "scsi0:1".to_owned(),
                "/vmfs/volumes/ds 2/web01/web01_1.vmdk".to_owned(),
            ),
        ]
        .into();
        assert_eq!(disks, expected);
    }

    #[test]
    fn restore_rewrite_gives_a_new_identity_and_new_disk_names() {
        let mut vmx = Vmx::parse(SAMPLE);
        vmx.rewrite_for_restore("web01 \"copy\"", |old| {
            let file = old.rsplit('/').next().unwrap_or(old);
            format!("restored-{file}")
        });
        let text = vmx.to_text();
        let again = Vmx::parse(&text);
        assert_eq!(again.get("displayName"), Some("web01 \"copy\""));
        assert!(
            text.contains("displayName = \"web01 |22copy|22\""),
            "{text}"
        );
        assert_eq!(again.get("nvram"), Some("web01 \"copy\".nvram"));
        assert_eq!(again.get("scsi0:0.fileName"), Some("restored-web01.vmdk"));
        assert_eq!(again.get("scsi0:1.fileName"), Some("restored-web01_1.vmdk"));
        assert_eq!(
            again.get("ide1:0.fileName"),
            Some("/iso/install.vmdk"),
            "CD-ROM images are not disks"
        );
        assert_eq!(again.get("uuid.action"), Some("create"));
        for gone in [
            "uuid.bios",
            "vc.uuid",
            "ctkEnabled",
            "scsi0:0.ctkEnabled",
            "ethernet0.generatedAddress",
        ] {
            assert_eq!(again.get(gone), None, "{gone} must be removed");
        }
        assert_eq!(again.get("ethernet0.addressType"), Some("vpx"));
        assert!(text.contains("# a comment"), "comments survive");
    }
}

//! Small value types shared by every layer: managed object references, changeIds, datastore
//! paths and inventory-name decoding.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::xml::Node;

/// A ManagedObjectReference: the managed object type (`VirtualMachine`) and its opaque id.
///
/// The id is never parsed: vcsim's datastore ids look like `/tmp/x@folder-5`, vCenter's like
/// `datastore-17`, ESXi's like `ha-host`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MoRef {
    /// Managed object type, e.g. `VirtualMachine`, `Datastore`, `Task`.
    pub kind: String,
    /// The opaque managed object id (moid).
    pub value: String,
}

impl MoRef {
    /// A reference from its type and id.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// Decodes `<x type="Kind">id</x>`.
    ///
    /// # Errors
    /// [`Error::Xml`] when the `type` attribute or the id is missing.
    pub(crate) fn from_node(node: &Node) -> Result<Self> {
        let kind = node.attribute("type").ok_or_else(|| {
            Error::Xml(format!("<{}> is not a managed object reference", node.name))
        })?;
        let value = node.text.trim();
        if value.is_empty() {
            return Err(Error::Xml(format!(
                "<{}> is an empty managed object reference",
                node.name
            )));
        }
        Ok(Self::new(kind, value))
    }

    /// Whether this references an object of the given type.
    pub fn is(&self, kind: &str) -> bool {
        self.kind == kind
    }
}

impl fmt::Display for MoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// A CBT change id as the server hands it out (`52 de c0 … 7a/1234`), stored verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeId(String);

impl ChangeId {
    /// `"*"`: ask QueryChangedDiskAreas for every allocated area (a full read of a thin disk).
    pub fn all() -> Self {
        Self("*".to_owned())
    }

    /// Wraps a change id string exactly as received.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tracking epoch: the part before the last `/`. Two ids from different epochs cannot be
    /// compared (CBT was reset in between) and an incremental must become a full.
    pub fn epoch(&self) -> &str {
        self.0
            .rsplit_once('/')
            .map_or(self.0.as_str(), |(epoch, _)| epoch)
    }

    /// The sequence number after the `/`, when it parses.
    pub fn sequence(&self) -> Option<u64> {
        self.0
            .rsplit_once('/')
            .and_then(|(_, seq)| seq.trim().parse().ok())
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A datastore path: `[datastore name] dir/file.vmdk`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatastorePath {
    /// The datastore name (raw, as in the inventory).
    pub datastore: String,
    /// The path inside the datastore, `/`-separated, no leading slash (may be empty: the root).
    pub path: String,
}

impl DatastorePath {
    /// A path from its parts. A leading `/` on `path` is dropped.
    pub fn new(datastore: impl Into<String>, path: impl Into<String>) -> Self {
        let path = path.into();
        Self {
            datastore: datastore.into(),
            path: path.trim_start_matches('/').to_owned(),
        }
    }

    /// Parses `[ds] dir/file`. The datastore name may contain spaces and `]` is not allowed in
    /// it (vSphere forbids it); the space after `]` is optional.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the text does not start with `[name]`.
    pub fn parse(text: &str) -> Result<Self> {
        let rest = text.strip_prefix('[').ok_or_else(|| {
            Error::InvalidInput(format!("not a datastore path (no '['): {text:?}"))
        })?;
        let (datastore, path) = rest.split_once(']').ok_or_else(|| {
            Error::InvalidInput(format!("not a datastore path (no ']'): {text:?}"))
        })?;
        if datastore.is_empty() {
            return Err(Error::InvalidInput(format!(
                "datastore path without datastore name: {text:?}"
            )));
        }
        let path = path.strip_prefix(' ').unwrap_or(path);
        Ok(Self::new(datastore, path))
    }

    /// The directory part (`dir` of `[ds] dir/file`), empty at the root.
    pub fn parent(&self) -> Self {
        let dir = self.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        Self::new(self.datastore.clone(), dir)
    }

    /// The last path element (`file` of `[ds] dir/file`).
    pub fn file_name(&self) -> &str {
        self.path
            .rsplit_once('/')
            .map_or(self.path.as_str(), |(_, name)| name)
    }

    /// A sibling or child: `dir/` + `name`.
    pub fn join(&self, name: &str) -> Self {
        if self.path.is_empty() {
            Self::new(self.datastore.clone(), name)
        } else {
            Self::new(
                self.datastore.clone(),
                format!("{}/{}", self.path.trim_end_matches('/'), name),
            )
        }
    }
}

impl fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "[{}]", self.datastore)
        } else {
            write!(f, "[{}] {}", self.datastore, self.path)
        }
    }
}

impl std::str::FromStr for DatastorePath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Decodes an inventory name for display: vSphere stores `%`, `/` and `\` in entity names as
/// `%25`, `%2f` and `%5c` (either case). Other `%` sequences are left alone. Keep the raw name for
/// lookups and `dcPath`/`dsName`; show this one to people.
pub fn decode_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let code = tail.get(1..3).map(str::to_ascii_lowercase);
        let decoded = match code.as_deref() {
            Some("25") => Some('%'),
            Some("2f") => Some('/'),
            Some("5c") => Some('\\'),
            _ => None,
        };
        if let Some(ch) = decoded {
            out.push(ch);
            rest = &tail[3..];
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The inverse of [`decode_name`]: what vSphere stores for a name typed by a person.
pub fn encode_name(display: &str) -> String {
    let mut out = String::with_capacity(display.len());
    for ch in display.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2f"),
            '\\' => out.push_str("%5c"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datastore_paths_parse_and_format() {
        let p = DatastorePath::parse("[my ds #1] dir a/vm é.vmx").unwrap();
        assert_eq!(p.datastore, "my ds #1");
        assert_eq!(p.path, "dir a/vm é.vmx");
        assert_eq!(p.to_string(), "[my ds #1] dir a/vm é.vmx");
        assert_eq!(p.file_name(), "vm é.vmx");
        assert_eq!(p.parent().to_string(), "[my ds #1] dir a");
        assert_eq!(
            p.parent().join("x-flat.vmdk").to_string(),
            "[my ds #1] dir a/x-flat.vmdk"
        );
        let root = DatastorePath::parse("[ds]").unwrap();
        assert_eq!(root.path, "");
        assert_eq!(root.to_string(), "[ds]");
        assert_eq!(root.join("a").to_string(), "[ds] a");
        assert_eq!(DatastorePath::parse("[ds]x/y").unwrap().path, "x/y");
        for bad in ["ds] x", "[ds x", "[] x", ""] {
            assert!(DatastorePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_decode_for_display_and_encode_back() {
        assert_eq!(decode_name("a%2fb%5Cc%25d%zz%"), "a/b\\c%d%zz%");
        assert_eq!(decode_name("Ünïcødé 名前"), "Ünïcødé 名前");
        assert_eq!(decode_name("%%2f"), "%/");
        assert_eq!(encode_name("a/b\\c%d"), "a%2fb%5cc%25d");
        assert_eq!(decode_name(&encode_name("x%2f/y")), "x%2f/y");
    }

    #[test]
    fn change_id_epoch_and_sequence() {
        let id = ChangeId::new("52 de c0 7a/1234");
        assert_eq!(id.epoch(), "52 de c0 7a");
        assert_eq!(id.sequence(), Some(1234));
        assert_eq!(ChangeId::all().as_str(), "*");
        assert_eq!(ChangeId::all().sequence(), None);
    }

    #[test]
    fn morefs_decode_without_parsing_the_id() {
        let n = Node::parse(r#"<obj type="Datastore">/tmp/govcsim-DC0-LocalDS_0@folder-5</obj>"#)
            .unwrap();
        let m = MoRef::from_node(&n).unwrap();
        assert_eq!(
            m,
            MoRef::new("Datastore", "/tmp/govcsim-DC0-LocalDS_0@folder-5")
        );
        assert!(MoRef::from_node(&Node::parse("<obj>x</obj>").unwrap()).is_err());
        assert!(MoRef::from_node(&Node::parse(r#"<obj type="A"> </obj>"#).unwrap()).is_err());
    }
}

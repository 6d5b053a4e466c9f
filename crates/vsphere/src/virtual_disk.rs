//! `VirtualDisk` devices as decoded from `config.hardware.device` (of a VM or of a snapshot).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::types::{ChangeId, DatastorePath, MoRef};
use crate::xml::Node;

/// `backing.diskMode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskMode {
    /// Normal: included in snapshots.
    Persistent,
    /// Changes discarded at power off.
    Nonpersistent,
    /// Legacy undoable.
    Undoable,
    /// Not affected by snapshots; changes are permanent. Snapshots and CBT do not cover it.
    IndependentPersistent,
    /// Not affected by snapshots; changes discarded at power off.
    IndependentNonpersistent,
    /// Legacy append.
    Append,
    /// Anything else, as the server wrote it.
    Other(String),
}

impl DiskMode {
    fn parse(text: &str) -> Self {
        match text.trim() {
            "persistent" => Self::Persistent,
            "nonpersistent" => Self::Nonpersistent,
            "undoable" => Self::Undoable,
            "independent_persistent" => Self::IndependentPersistent,
            "independent_nonpersistent" => Self::IndependentNonpersistent,
            "append" => Self::Append,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Whether snapshots skip this disk (a backup cannot capture it consistently).
    pub fn is_independent(&self) -> bool {
        matches!(
            self,
            Self::IndependentPersistent | Self::IndependentNonpersistent
        )
    }

    /// The API string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Persistent => "persistent",
            Self::Nonpersistent => "nonpersistent",
            Self::Undoable => "undoable",
            Self::IndependentPersistent => "independent_persistent",
            Self::IndependentNonpersistent => "independent_nonpersistent",
            Self::Append => "append",
            Self::Other(s) => s,
        }
    }
}

/// One file of a disk's backing chain (the disk itself or a parent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackingFile {
    /// `[ds] dir/disk.vmdk` (the descriptor).
    pub file_name: String,
    /// The datastore holding it.
    pub datastore: Option<MoRef>,
    /// The backing's xsi:type (`VirtualDiskFlatVer2BackingInfo`, `…SeSparseBackingInfo`, …).
    pub backing_type: String,
    /// CBT change id of this point, when CBT is active.
    pub change_id: Option<ChangeId>,
    /// `redoLogFormat` / `seSparseFormat` / `nativeFormat` for delta disks.
    pub delta_disk_format: Option<String>,
    /// Thin provisioned.
    pub thin: Option<bool>,
    /// The disk's UUID.
    pub uuid: Option<String>,
}

impl BackingFile {
    fn from_node(node: &Node) -> Result<Self> {
        Ok(Self {
            file_name: node.child_text("fileName").unwrap_or_default().to_owned(),
            datastore: node
                .child("datastore")
                .and_then(|d| MoRef::from_node(d).ok()),
            backing_type: node.type_name().to_owned(),
            change_id: node
                .child_text("changeId")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(ChangeId::new),
            delta_disk_format: node.child_text("deltaDiskFormat").map(str::to_owned),
            thin: node.child_bool("thinProvisioned")?,
            uuid: node.child_text("uuid").map(str::to_owned),
        })
    }
}

/// A virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualDisk {
    /// Device key (QueryChangedDiskAreas' `deviceKey`).
    pub key: i32,
    /// `deviceInfo.label`, e.g. "Hard disk 1".
    pub label: String,
    /// `[ds] dir/disk.vmdk` — the head of the chain (the descriptor, not the flat extent).
    pub file_name: String,
    /// Capacity in bytes (`capacityInBytes`, or `capacityInKB` × 1024 on servers without it).
    pub capacity_bytes: u64,
    /// Thin provisioned.
    pub thin: bool,
    /// Disk mode.
    pub disk_mode: DiskMode,
    /// The controller's device key.
    pub controller_key: Option<i32>,
    /// Unit number on the controller.
    pub unit_number: Option<i32>,
    /// The backing's xsi:type.
    pub backing_type: String,
    /// CBT change id of the head (from a snapshot's config: the id to keep for the next backup).
    pub change_id: Option<ChangeId>,
    /// The datastore holding the head file.
    pub datastore: Option<MoRef>,
    /// The datastore name (from `file_name`).
    pub datastore_name: String,
    /// Delta format when the head is a delta disk.
    pub delta_disk_format: Option<String>,
    /// The disk's UUID.
    pub uuid: Option<String>,
    /// RDM compatibility mode (`physicalMode` cannot be snapshotted).
    pub compatibility_mode: Option<String>,
    /// Parent backings, nearest first (non-empty when the disk has delta files).
    pub parents: Vec<BackingFile>,
}

impl VirtualDisk {
    /// Decodes a `VirtualDevice` element if it is a `VirtualDisk`.
    ///
    /// # Errors
    /// [`Error::Xml`] when a disk lacks its key or has malformed numbers.
    pub(crate) fn from_device(device: &Node) -> Result<Option<Self>> {
        if device.type_name() != "VirtualDisk" {
            return Ok(None);
        }
        let key = device
            .child_num::<i32>("key")?
            .ok_or_else(|| Error::Xml("VirtualDisk without key".into()))?;
        let bytes = device
            .child_num::<i64>("capacityInBytes")?
            .filter(|b| *b > 0);
        let kb = device.child_num::<i64>("capacityInKB")?.unwrap_or(0);
        let capacity_bytes = bytes.unwrap_or_else(|| kb.saturating_mul(1024)).max(0) as u64;
        let backing = device.child("backing");
        let head = backing.map(BackingFile::from_node).transpose()?;
        let mut parents = Vec::new();
        let mut next = backing.and_then(|b| b.child("parent"));
        while let Some(parent) = next {
            if parents.len() > 255 {
                return Err(Error::Xml(format!(
                    "disk {key}: backing chain deeper than 255"
                )));
            }
            parents.push(BackingFile::from_node(parent)?);
            next = parent.child("parent");
        }
        let file_name = head
            .as_ref()
            .map(|h| h.file_name.clone())
            .unwrap_or_default();
        let datastore_name = DatastorePath::parse(&file_name)
            .map(|p| p.datastore)
            .unwrap_or_default();
        Ok(Some(Self {
            key,
            label: device
                .child("deviceInfo")
                .and_then(|d| d.child_text("label"))
                .unwrap_or_default()
                .to_owned(),
            capacity_bytes,
            thin: head.as_ref().and_then(|h| h.thin).unwrap_or(false),
            disk_mode: DiskMode::parse(
                backing
                    .and_then(|b| b.child_text("diskMode"))
                    .unwrap_or("persistent"),
            ),
            controller_key: device.child_num("controllerKey")?,
            unit_number: device.child_num("unitNumber")?,
            backing_type: head
                .as_ref()
                .map(|h| h.backing_type.clone())
                .unwrap_or_default(),
            change_id: head.as_ref().and_then(|h| h.change_id.clone()),
            datastore: head.as_ref().and_then(|h| h.datastore.clone()),
            datastore_name,
            delta_disk_format: head.as_ref().and_then(|h| h.delta_disk_format.clone()),
            uuid: head.as_ref().and_then(|h| h.uuid.clone()),
            compatibility_mode: backing
                .and_then(|b| b.child_text("compatibilityMode"))
                .map(str::to_owned),
            file_name,
            parents,
        }))
    }

    /// Decodes the disks of an `ArrayOfVirtualDevice` value.
    ///
    /// # Errors
    /// As [`VirtualDisk::from_device`].
    pub(crate) fn from_device_array(array: &Node) -> Result<Vec<Self>> {
        let mut disks = Vec::new();
        for device in &array.children {
            if let Some(disk) = Self::from_device(device)? {
                disks.push(disk);
            }
        }
        Ok(disks)
    }

    /// The head file as a datastore path.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the file name is not `[ds] path`.
    pub fn datastore_path(&self) -> Result<DatastorePath> {
        DatastorePath::parse(&self.file_name)
    }

    /// Whether the disk has delta files (snapshots, linked clones) below the head.
    pub fn has_deltas(&self) -> bool {
        !self.parents.is_empty() || self.delta_disk_format.is_some()
    }

    /// Whether this is a raw device mapping.
    pub fn is_rdm(&self) -> bool {
        self.backing_type.starts_with("VirtualDiskRawDisk")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICES: &str = r#"<val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="ArrayOfVirtualDevice">
      <VirtualDevice XMLSchema-instance:type="VirtualLsiLogicController"><key>1000</key><busNumber>0</busNumber></VirtualDevice>
      <VirtualDevice XMLSchema-instance:type="VirtualDisk">
        <key>2000</key><deviceInfo><label>Hard disk 1</label><summary>x</summary></deviceInfo>
        <backing XMLSchema-instance:type="VirtualDiskFlatVer2BackingInfo">
          <fileName>[ds 1] web/web-000001.vmdk</fileName><datastore type="Datastore">datastore-1</datastore>
          <diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned>
          <uuid>6000C29</uuid><changeId>52 aa/7</changeId><someNewField>ignored</someNewField>
          <parent XMLSchema-instance:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds 1] web/web.vmdk</fileName><changeId>52 aa/3</changeId></parent>
          <deltaDiskFormat>redoLogFormat</deltaDiskFormat>
        </backing>
        <controllerKey>1000</controllerKey><unitNumber>0</unitNumber>
        <capacityInKB>1024</capacityInKB>
      </VirtualDevice>
      <VirtualDevice XMLSchema-instance:type="VirtualDisk">
        <key>2001</key>
        <backing XMLSchema-instance:type="VirtualDiskFlatVer2BackingInfo"><fileName>[other] web/data.vmdk</fileName><diskMode>independent_persistent</diskMode></backing>
        <capacityInKB>1</capacityInKB><capacityInBytes>5368709120</capacityInBytes>
      </VirtualDevice>
    </val>"#;

    #[test]
    fn disks_decode_with_chains_modes_and_capacities() {
        let disks = VirtualDisk::from_device_array(&Node::parse(DEVICES).unwrap()).unwrap();
        assert_eq!(disks.len(), 2);
        let a = &disks[0];
        assert_eq!(a.key, 2000);
        assert_eq!(a.label, "Hard disk 1");
        assert_eq!(a.capacity_bytes, 1024 * 1024);
        assert!(a.thin);
        assert_eq!(a.change_id, Some(ChangeId::new("52 aa/7")));
        assert_eq!(a.datastore_name, "ds 1");
        assert_eq!(a.parents.len(), 1);
        assert_eq!(a.parents[0].change_id, Some(ChangeId::new("52 aa/3")));
        assert!(a.has_deltas());
        assert_eq!(a.controller_key, Some(1000));
        let b = &disks[1];
        assert_eq!(b.capacity_bytes, 5_368_709_120);
        assert!(b.disk_mode.is_independent());
        assert!(!b.thin);
        assert_eq!(b.datastore_path().unwrap().path, "web/data.vmdk");
    }

    #[test]
    fn disk_without_key_is_an_error() {
        let bad = r#"<VirtualDevice xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VirtualDisk"><capacityInKB>1</capacityInKB></VirtualDevice>"#;
        assert!(VirtualDisk::from_device(&Node::parse(bad).unwrap()).is_err());
    }
}

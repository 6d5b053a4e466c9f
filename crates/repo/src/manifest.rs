//! `manifest.json`: the commit point of a backup and everything restore and verify need.
//!
//! It keeps the fields of the original specification (`job_id`, `vm_name`, `started`,
//! `finished`, `vcenter`, `snapshot`, `files[{path, size_bytes, sha256}]`) and adds, per file,
//! where its bytes are stored (a fixed index or a blob) and its kind; per disk, what an
//! incremental backup and a restore into vCenter need. Fields are plain data: the repository
//! knows nothing of vSphere.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::digest::{ChunkDigest, Sha256};
use crate::error::{Error, Result};
use crate::format::MANIFEST_FORMAT_VERSION;
use crate::id::{BackupId, FileName, VmKey};

/// What a file of a backup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A disk's data (`-flat.vmdk`), stored as a fixed index.
    Disk,
    /// A disk descriptor (`.vmdk`).
    Descriptor,
    /// The VM configuration (`.vmx`).
    Config,
    /// NVRAM.
    Nvram,
    /// Anything else.
    Other,
}

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStorage {
    /// A fixed index `<name>.fidx` in the backup directory.
    Index {
        /// Index name (without `.fidx`).
        name: FileName,
        /// SHA-256 of the whole `.fidx` file.
        sha256: Sha256,
    },
    /// A blob `<name>.blob` in the backup directory.
    Blob {
        /// Blob name (without `.blob`).
        name: FileName,
        /// The blob's chunk digest (keyed when the repository is encrypted).
        digest: ChunkDigest,
    },
}

/// One file of the backup, as restore writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative path as restore writes it (e.g. `Nakivo/Nakivo-flat.vmdk`). Data, not a storage
    /// path: restore must still confine it to its target directory.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the whole file: `sha256sum` of the restored file prints this.
    pub sha256: Sha256,
    /// What the file is.
    pub kind: FileKind,
    /// Where its bytes are stored.
    pub storage: FileStorage,
}

/// Full or incremental (every backup is logically full either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// Every allocated block was read.
    Full,
    /// Only changed blocks were read; the rest was taken from `parent`.
    Incremental,
}

/// A virtual disk of the backed-up VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDisk {
    /// The device key in the VM's configuration.
    pub device_key: i32,
    /// Display label ("Hard disk 1").
    pub label: String,
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// The changeId the data corresponds to (for the next incremental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// The datastore the disk lived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
    /// `path` of this disk's data file in `files`.
    pub file: String,
    /// The fixed index holding the data.
    pub index: FileName,
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`]; filled in by the writer.
    #[serde(default)]
    pub format_version: u32,
    /// The job run this backup belongs to.
    pub job_id: String,
    /// VM display name at backup time.
    pub vm_name: String,
    /// The repository's key of the VM (also the first part of the backup id); filled in by the
    /// writer.
    pub vm_key: VmKey,
    /// The VM's instance UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_instance_uuid: Option<String>,
    /// The VM's folder in the inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_folder: Option<String>,
    /// When the backup started.
    pub started: Timestamp,
    /// When it finished.
    pub finished: Timestamp,
    /// The vCenter it came from.
    pub vcenter: String,
    /// That vCenter's instance UUID (`ServiceContent.about.instanceUuid`; absent for ESXi): an
    /// incremental never builds on a backup taken through another vCenter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcenter_uuid: Option<String>,
    /// The snapshot it was read from.
    pub snapshot: String,
    /// Full or incremental.
    pub mode: BackupMode,
    /// The backup an incremental was based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<BackupId>,
    /// Every file, as restore writes it.
    pub files: Vec<ManifestFile>,
    /// Every disk.
    #[serde(default)]
    pub disks: Vec<ManifestDisk>,
    /// Bytes read from the source.
    #[serde(default)]
    pub bytes_read: u64,
    /// Bytes newly stored (new chunks, indexes, blobs); filled in by the writer.
    #[serde(default)]
    pub bytes_written: u64,
    /// Chunks newly stored; filled in by the writer.
    #[serde(default)]
    pub chunks_new: u64,
    /// Chunks already present and reused; filled in by the writer.
    #[serde(default)]
    pub chunks_reused: u64,
    /// Non-fatal problems during the backup.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The vbm version that wrote it.
    pub vbm_version: String,
}

impl Manifest {
    /// Parses a manifest, checking the format version first.
    ///
    /// # Errors
    /// [`Error::UnsupportedFormat`] for an unknown version, [`Error::ManifestCorrupt`] for
    /// anything unparsable or inconsistent.
    pub fn parse(backup: &BackupId, bytes: &[u8]) -> Result<Manifest> {
        let corrupt = |reason: String| Error::ManifestCorrupt {
            backup: backup.to_string(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let version = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt("missing format_version".into()))?;
        if version != u64::from(MANIFEST_FORMAT_VERSION) {
            return Err(Error::UnsupportedFormat {
                what: "manifest",
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: MANIFEST_FORMAT_VERSION.to_string(),
            });
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        if manifest.vm_key != *backup.vm() {
            return Err(corrupt(format!(
                "vm_key {} does not match the backup's directory",
                manifest.vm_key
            )));
        }
        manifest.check().map_err(corrupt)?;
        Ok(manifest)
    }

    /// Internal consistency: safe relative paths, unique paths and storage names, disks pointing
    /// at disk files.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let mut paths = std::collections::HashSet::new();
        let mut stores = std::collections::HashSet::new();
        for f in &self.files {
            check_relative_path(&f.path)?;
            if !paths.insert(f.path.as_str()) {
                return Err(format!("file {:?} listed twice", f.path));
            }
            let key = match &f.storage {
                FileStorage::Index { name, .. } => format!("{name}.fidx"),
                FileStorage::Blob { name, .. } => format!("{name}.blob"),
            };
            if !stores.insert(key.clone()) {
                return Err(format!("{key} used by two files"));
            }
        }
        for d in &self.disks {
            let Some(f) = self.files.iter().find(|f| f.path == d.file) else {
                return Err(format!(
                    "disk {} names file {:?} not in files",
                    d.device_key, d.file
                ));
            };
            match &f.storage {
                FileStorage::Index { name, .. } if *name == d.index => {}
                _ => {
                    return Err(format!(
                        "disk {} names index {} but its file is stored elsewhere",
                        d.device_key, d.index
                    ));
                }
            }
        }
        Ok(())
    }

    /// Total size of all files (the logical size of the backup).
    #[must_use]
    pub fn logical_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size_bytes).sum()
    }

    /// The file stored in index `name`, if any.
    #[must_use]
    pub fn file_by_path(&self, path: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Pretty JSON with a trailing newline.
    ///
    /// # Errors
    /// Serialisation errors (not expected).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v =
            serde_json::to_vec_pretty(self).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        v.push(b'\n');
        Ok(v)
    }
}

/// A restore target path must be relative, without `.`/`..` components, empty components,
/// backslashes or control characters (FAULT-MATRIX I3: restore must not be steerable outside its
/// target by a VM name).
fn check_relative_path(p: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("unsafe file path {p:?}: {why}"));
    if p.is_empty() || p.len() > 4096 {
        return bad("empty or too long");
    }
    if p.starts_with('/') {
        return bad("absolute");
    }
    if p.chars().any(|c| c.is_control() || c == '\\') {
        return bad("control character or backslash");
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("empty, '.' or '..' component");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(id: &BackupId) -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            job_id: "job-1".into(),
            vm_name: "Nakivo".into(),
            vm_key: id.vm().clone(),
            vm_instance_uuid: Some("5003".into()),
            vm_folder: None,
            started: id.time(),
            finished: id.time(),
            vcenter: "vcsa.example.org".into(),
            vcenter_uuid: None,
            snapshot: "vbm-1".into(),
            mode: BackupMode::Full,
            parent: None,
            files: vec![ManifestFile {
                path: "Nakivo/Nakivo-flat.vmdk".into(),
                size_bytes: 10,
                sha256: Sha256::of(b"0123456789"),
                kind: FileKind::Disk,
                storage: FileStorage::Index {
                    name: FileName::new("disk-2000").unwrap(),
                    sha256: Sha256::of(b""),
                },
            }],
            disks: vec![ManifestDisk {
                device_key: 2000,
                label: "Hard disk 1".into(),
                capacity_bytes: 10,
                change_id: Some("52 1/2".into()),
                datastore: Some("ds1".into()),
                file: "Nakivo/Nakivo-flat.vmdk".into(),
                index: FileName::new("disk-2000").unwrap(),
            }],
            bytes_read: 10,
            bytes_written: 10,
            chunks_new: 1,
            chunks_reused: 0,
            warnings: vec![],
            vbm_version: "0.1.0".into(),
        }
    }

    #[test]
    fn round_trip_and_spec_field_names() {
        let id: BackupId = "vm-1/2026-06-22T015200Z".parse().unwrap();
        let m = sample(&id);
        let bytes = m.to_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        for field in [
            "\"job_id\"",
            "\"vm_name\"",
            "\"started\"",
            "\"finished\"",
            "\"vcenter\"",
            "\"snapshot\"",
            "\"files\"",
            "\"path\"",
            "\"size_bytes\"",
            "\"sha256\"",
        ] {
            assert!(text.contains(field), "{field}");
        }
        assert_eq!(Manifest::parse(&id, &bytes).unwrap(), m);
    }

    #[test]
    fn unknown_version_and_unsafe_paths_are_refused() {
        let id: BackupId = "vm-1/2026-06-22T015200Z".parse().unwrap();
        let mut m = sample(&id);
        m.format_version = 99;
        let err = Manifest::parse(&id, &m.to_bytes().unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported manifest format version 99"),
            "{err}"
        );
        for bad in [
            "../../etc/passwd",
            "/etc/shadow",
            "a/../b",
            "a\\..\\b",
            "a//b",
            "x\n",
        ] {
            let mut m = sample(&id);
            m.files[0].path = bad.into();
            m.disks.clear();
            assert!(
                Manifest::parse(&id, &m.to_bytes().unwrap()).is_err(),
                "{bad:?}"
            );
        }
        let other: BackupId = "vm-2/2026-06-22T015200Z".parse().unwrap();
        assert!(Manifest::parse(&other, &sample(&id).to_bytes().unwrap()).is_err());
    }
}

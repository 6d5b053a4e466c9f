//! VM snapshots: create, remove, list (flattened tree with parents), the disks a snapshot
//! captured (with their changeIds), and disk consolidation.

use serde::Serialize;

use crate::client::{CallKind, Client};
use crate::error::{Error, Result};
use crate::property_collector::PropertySpec;
use crate::task::WaitOptions;
use crate::types::{MoRef, decode_name};
use crate::virtual_disk::VirtualDisk;
use crate::virtual_machine::PowerState;
use crate::xml::{Node, Writer};

/// One snapshot (without its children).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// The `VirtualMachineSnapshot` moref.
    pub moref: MoRef,
    /// Raw name.
    pub name: String,
    /// Decoded name.
    pub display_name: String,
    /// Description.
    pub description: String,
    /// Server-side numeric id.
    pub id: Option<i64>,
    /// Creation time.
    pub create_time: Option<jiff::Timestamp>,
    /// Power state of the VM when taken.
    pub state: Option<PowerState>,
    /// Whether the guest was quiesced.
    pub quiesced: bool,
    /// The parent snapshot, `None` for a root.
    pub parent: Option<MoRef>,
    /// Depth in the tree (0 for roots).
    pub depth: usize,
}

/// A snapshot with its children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotTree {
    /// This snapshot.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Its children.
    pub children: Vec<SnapshotTree>,
}

/// What to snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSpec {
    /// Name (vbm uses `vbm-<run id>` so that leftovers can be found).
    pub name: String,
    /// Description.
    pub description: String,
    /// Include the VM's memory (slow; a backup wants `false`).
    pub memory: bool,
    /// Quiesce the guest file systems through VMware Tools.
    pub quiesce: bool,
}

impl SnapshotTree {
    fn from_node(node: &Node, parent: Option<&MoRef>, depth: usize) -> Result<Self> {
        if depth > 512 {
            return Err(Error::Xml("snapshot tree deeper than 512".into()));
        }
        let moref = node
            .child("snapshot")
            .ok_or_else(|| Error::Xml("snapshot tree node without snapshot".into()))
            .and_then(MoRef::from_node)?;
        let name = node.child_text("name").unwrap_or_default().to_owned();
        let snapshot = Snapshot {
            display_name: decode_name(&name),
            name,
            description: node
                .child_text("description")
                .unwrap_or_default()
                .to_owned(),
            id: node.child_num("id")?,
            create_time: node
                .child_text("createTime")
                .and_then(|t| t.trim().parse().ok()),
            state: node.child_text("state").map(PowerState::parse),
            quiesced: node.child_bool("quiesced")?.unwrap_or(false),
            parent: parent.cloned(),
            depth,
            moref,
        };
        let children = node
            .children_named("childSnapshotList")
            .map(|c| Self::from_node(c, Some(&snapshot.moref), depth + 1))
            .collect::<Result<_>>()?;
        Ok(Self { snapshot, children })
    }

    /// Decodes `VirtualMachineSnapshotInfo` (the VM's `snapshot` property).
    ///
    /// # Errors
    /// [`Error::Xml`] for malformed trees.
    pub(crate) fn from_info(info: &Node) -> Result<(Vec<Self>, Option<MoRef>)> {
        let roots = info
            .children_named("rootSnapshotList")
            .map(|r| Self::from_node(r, None, 0))
            .collect::<Result<_>>()?;
        let current = info
            .child("currentSnapshot")
            .and_then(|c| MoRef::from_node(c).ok());
        Ok((roots, current))
    }

    /// All snapshots depth-first, parents before children.
    pub fn flatten(trees: &[Self]) -> Vec<Snapshot> {
        let mut out = Vec::new();
        let mut stack: Vec<&Self> = trees.iter().rev().collect();
        while let Some(t) = stack.pop() {
            out.push(t.snapshot.clone());
            stack.extend(t.children.iter().rev());
        }
        out
    }
}

const VM_SNAPSHOT: &[PropertySpec] = &[PropertySpec {
    kind: "VirtualMachine",
    paths: &["snapshot"],
}];

impl Client {
    /// Creates a snapshot and waits for it; returns the snapshot's moref.
    ///
    /// # Errors
    /// [`Error::Fault`] with the task's message (quiesce failure, TaskInProgress, InvalidPowerState,
    /// SnapshotFault, FileFault…); [`Error::TaskOutcomeUnknown`] when the default task timeout
    /// passes; transport errors.
    pub async fn create_snapshot(
        &self,
        vm: &MoRef,
        name: &str,
        description: &str,
        memory: bool,
        quiesce: bool,
    ) -> Result<MoRef> {
        let spec = SnapshotSpec {
            name: name.into(),
            description: description.into(),
            memory,
            quiesce,
        };
        self.create_snapshot_with(vm, &spec, &self.default_wait())
            .await
    }

    /// [`Client::create_snapshot`] with explicit wait options (progress, timeout).
    ///
    /// # Errors
    /// As [`Client::create_snapshot`].
    pub async fn create_snapshot_with(
        &self,
        vm: &MoRef,
        spec: &SnapshotSpec,
        wait: &WaitOptions,
    ) -> Result<MoRef> {
        let mut w = Writer::new();
        // CreateSnapshot_Task: _this, name, description?, memory, quiesce.
        w.moref("_this", vm)
            .text("name", &spec.name)
            .text("description", &spec.description)
            .bool("memory", spec.memory)
            .bool("quiesce", spec.quiesce);
        let method = "CreateSnapshot_Task";
        let response = self
            .invoke_guarded(method, &w.finish(), CallKind::NotIdempotent, || async {
                Ok(self.find_snapshot(vm, &spec.name).await?.is_some())
            })
            .await?;
        let Some(response) = response else {
            // The first attempt got through after all: use its snapshot.
            return self
                .find_snapshot(vm, &spec.name)
                .await?
                .ok_or_else(|| Error::NotFound(format!("snapshot {:?} of {vm}", spec.name)));
        };
        let task = Self::task_moref(method, &response)?;
        let info = self.wait_for_task(&task, method, wait).await?;
        match info.result_moref {
            Some(snapshot) => Ok(snapshot),
            None => self
                .find_snapshot(vm, &spec.name)
                .await?
                .ok_or_else(|| Error::Xml(format!("{method} succeeded without a snapshot result"))),
        }
    }

    /// Removes a snapshot (optionally with its children) and waits. With `consolidate` the
    /// server merges the delta files right away (the default in vSphere).
    ///
    /// # Errors
    /// [`Error::Fault`] (e.g. ManagedObjectNotFound for an already removed snapshot, or the task's
    /// error), [`Error::TaskOutcomeUnknown`], transport errors.
    pub async fn remove_snapshot(
        &self,
        snapshot: &MoRef,
        remove_children: bool,
        consolidate: bool,
    ) -> Result<()> {
        let mut w = Writer::new();
        // RemoveSnapshot_Task: _this, removeChildren, consolidate?.
        w.moref("_this", snapshot)
            .bool("removeChildren", remove_children)
            .bool("consolidate", consolidate);
        let method = "RemoveSnapshot_Task";
        let response = self
            .invoke_guarded(method, &w.finish(), CallKind::NotIdempotent, || async {
                Ok(!self.snapshot_exists(snapshot).await?)
            })
            .await?;
        let Some(response) = response else {
            return Ok(());
        };
        let task = Self::task_moref(method, &response)?;
        self.wait_for_task(&task, method, &self.default_wait())
            .await
            .map(|_| ())
    }

    /// The VM's snapshots, flattened depth-first with parents and depth.
    ///
    /// # Errors
    /// Faults (ManagedObjectNotFound for a stale VM) and transport errors.
    pub async fn list_snapshots(&self, vm: &MoRef) -> Result<Vec<Snapshot>> {
        let objects = self
            .retrieve_objects(VM_SNAPSHOT, std::slice::from_ref(vm))
            .await?;
        let Some(info) = objects
            .iter()
            .find(|o| &o.obj == vm)
            .and_then(|o| o.get("snapshot"))
        else {
            return Ok(Vec::new());
        };
        let (trees, _) = SnapshotTree::from_info(info)?;
        Ok(SnapshotTree::flatten(&trees))
    }

    /// The VM's snapshots whose raw name starts with `prefix` (e.g. `vbm-` for the crash sweep).
    ///
    /// # Errors
    /// As [`Client::list_snapshots`].
    pub async fn snapshots_with_prefix(&self, vm: &MoRef, prefix: &str) -> Result<Vec<Snapshot>> {
        Ok(self
            .list_snapshots(vm)
            .await?
            .into_iter()
            .filter(|s| s.name.starts_with(prefix))
            .collect())
    }

    /// The snapshot of the VM with exactly this raw name (the newest if several).
    ///
    /// # Errors
    /// As [`Client::list_snapshots`].
    pub async fn find_snapshot(&self, vm: &MoRef, name: &str) -> Result<Option<MoRef>> {
        Ok(self
            .list_snapshots(vm)
            .await?
            .into_iter()
            .rev()
            .find(|s| s.name == name)
            .map(|s| s.moref))
    }

    async fn snapshot_exists(&self, snapshot: &MoRef) -> Result<bool> {
        let specs = [PropertySpec {
            kind: "VirtualMachineSnapshot",
            paths: &["vm"],
        }];
        match self
            .retrieve_objects(&specs, std::slice::from_ref(snapshot))
            .await
        {
            Ok(objects) => Ok(objects
                .iter()
                .any(|o| &o.obj == snapshot && o.missing.is_empty())),
            Err(err) if err.is_managed_object_not_found() => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The disks as the snapshot captured them (`config.hardware.device`), with the changeIds to
    /// keep for the next incremental.
    ///
    /// # Errors
    /// Faults (ManagedObjectNotFound for a removed snapshot) and transport errors.
    pub async fn snapshot_disks(&self, snapshot: &MoRef) -> Result<Vec<VirtualDisk>> {
        let specs = [PropertySpec {
            kind: "VirtualMachineSnapshot",
            paths: &["config.hardware.device"],
        }];
        let objects = self
            .retrieve_objects(&specs, std::slice::from_ref(snapshot))
            .await?;
        let object = objects
            .iter()
            .find(|o| &o.obj == snapshot)
            .ok_or_else(|| Error::NotFound(format!("snapshot {snapshot}")))?;
        if let Some((path, fault)) = object.missing.first() {
            return Err(Error::Fault {
                method: format!("reading {path} of {snapshot}"),
                fault: Box::new(fault.clone()),
            });
        }
        object
            .get("config.hardware.device")
            .map_or_else(|| Ok(Vec::new()), VirtualDisk::from_device_array)
    }

    /// Merges leftover delta files (`runtime.consolidationNeeded`) and waits.
    ///
    /// # Errors
    /// [`Error::Fault`] with the task's error, [`Error::TaskOutcomeUnknown`], transport errors.
    pub async fn consolidate_disks(&self, vm: &MoRef) -> Result<()> {
        let mut w = Writer::new();
        w.moref("_this", vm);
        let method = "ConsolidateVMDisks_Task";
        let response = self
            .invoke(method, &w.finish(), CallKind::Idempotent)
            .await?;
        let task = Self::task_moref(method, &response)?;
        self.wait_for_task(&task, method, &self.default_wait())
            .await
            .map(|_| ())
    }

    pub(crate) fn default_wait(&self) -> WaitOptions {
        WaitOptions {
            timeout: self.config().task_timeout,
            progress: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_trees_decode_and_flatten_with_parents() {
        let xml = r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VirtualMachineSnapshotInfo">
          <currentSnapshot type="VirtualMachineSnapshot">s3</currentSnapshot>
          <rootSnapshotList><snapshot type="VirtualMachineSnapshot">s1</snapshot><vm type="VirtualMachine">vm-1</vm>
            <name>before%2fupgrade</name><description>d</description><id>1</id><createTime>2026-11-27T01:56:57.123Z</createTime>
            <state>poweredOn</state><quiesced>false</quiesced>
            <childSnapshotList><snapshot type="VirtualMachineSnapshot">s2</snapshot><name>vbm-1</name><quiesced>true</quiesced>
              <childSnapshotList><snapshot type="VirtualMachineSnapshot">s3</snapshot><name>vbm-2</name></childSnapshotList>
            </childSnapshotList>
          </rootSnapshotList>
          <rootSnapshotList><snapshot type="VirtualMachineSnapshot">s4</snapshot><name>other</name></rootSnapshotList>
        </val>"#;
        let (trees, current) = SnapshotTree::from_info(&Node::parse(xml).unwrap()).unwrap();
        assert_eq!(current, Some(MoRef::new("VirtualMachineSnapshot", "s3")));
        let flat = SnapshotTree::flatten(&trees);
        let names: Vec<_> = flat.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["before%2fupgrade", "vbm-1", "vbm-2", "other"]);
        assert_eq!(flat[0].display_name, "before/upgrade");
        assert!(flat[0].create_time.is_some());
        assert_eq!(flat[0].state, Some(PowerState::PoweredOn));
        assert_eq!(
            flat[1].parent.as_ref().map(|p| p.value.as_str()),
            Some("s1")
        );
        assert_eq!(flat[2].depth, 2);
        assert!(flat[1].quiesced);
        assert_eq!(flat[3].parent, None);
    }
}

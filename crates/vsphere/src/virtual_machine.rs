//! Virtual machines: listing, lookup by instance UUID or name, a full read, power operations,
//! registration, CBT switch and pending questions.

use std::collections::HashMap;

use serde::Serialize;

use crate::client::{CallKind, Client};
use crate::error::{Error, Result};
use crate::inventory::{ANCESTOR_KINDS, DATASTORE_PATHS, NAME_PARENT, Tree};
use crate::property_collector::{ObjectContent, PropertySpec};
use crate::snapshot::{Snapshot, SnapshotTree};
use crate::types::{DatastorePath, MoRef, decode_name};
use crate::virtual_disk::VirtualDisk;
use crate::xml::Writer;

/// `runtime.powerState`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PowerState {
    /// Running.
    PoweredOn,
    /// Off.
    PoweredOff,
    /// Suspended.
    Suspended,
    /// Anything else.
    #[serde(untagged)]
    Other(String),
}

impl PowerState {
    pub(crate) fn parse(text: &str) -> Self {
        match text.trim() {
            "poweredOn" => Self::PoweredOn,
            "poweredOff" => Self::PoweredOff,
            "suspended" => Self::Suspended,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The API string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::PoweredOn => "poweredOn",
            Self::PoweredOff => "poweredOff",
            Self::Suspended => "suspended",
            Self::Other(s) => s,
        }
    }
}

/// One file of a VM (`layoutEx.file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmFile {
    /// `[ds] dir/file`.
    pub name: String,
    /// `config`, `nvram`, `diskDescriptor`, `diskExtent`, `snapshotData`, `log`, …
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
}

/// A virtual machine with everything vbm needs to back it up or show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vm {
    /// Its moref.
    pub moref: MoRef,
    /// Raw name (escaped as the API returns it).
    pub name: String,
    /// Decoded name for display.
    pub display_name: String,
    /// `config.instanceUuid`: the stable identity vbm keys backups on.
    pub instance_uuid: Option<String>,
    /// `config.uuid` (the BIOS UUID the guest sees).
    pub bios_uuid: Option<String>,
    /// `config.files.vmPathName`.
    pub vmx_path: Option<DatastorePath>,
    /// Power state.
    pub power_state: PowerState,
    /// `config.guestFullName`.
    pub guest_os: String,
    /// `config.guestId`.
    pub guest_id: String,
    /// `config.version`, e.g. `vmx-19`.
    pub hardware_version: String,
    /// Whether this is a template.
    pub template: bool,
    /// The host it runs on.
    pub host: Option<MoRef>,
    /// That host's name.
    pub host_name: Option<String>,
    /// Its resource pool.
    pub resource_pool: Option<MoRef>,
    /// Datastores it uses.
    pub datastores: Vec<MoRef>,
    /// Their raw names, in the same order.
    pub datastore_names: Vec<String>,
    /// `config.changeTrackingEnabled`.
    pub cbt_enabled: bool,
    /// `runtime.consolidationNeeded`: orphaned delta files exist.
    pub consolidation_needed: bool,
    /// The current snapshot.
    pub current_snapshot: Option<MoRef>,
    /// The snapshot tree.
    pub snapshots: Vec<SnapshotTree>,
    /// Virtual disks.
    pub disks: Vec<VirtualDisk>,
    /// The parent folder.
    pub folder: Option<MoRef>,
    /// Folder path below the datacenter's VM folder (`""` at its root), raw names.
    pub folder_path: String,
    /// Full inventory path of the VM, raw names.
    pub inventory_path: String,
    /// Its datacenter.
    pub datacenter: Option<MoRef>,
    /// The datacenter's `dcPath` (for `/folder` URLs).
    pub datacenter_path: Option<String>,
    /// `layoutEx.file` (filled by [`Client::read_vm`]; empty in listings).
    pub files: Vec<VmFile>,
}

impl Vm {
    /// Snapshots flattened depth-first, with parents.
    pub fn flat_snapshots(&self) -> Vec<Snapshot> {
        SnapshotTree::flatten(&self.snapshots)
    }

    /// Raw names of all snapshots.
    pub fn snapshot_names(&self) -> Vec<String> {
        self.flat_snapshots().into_iter().map(|s| s.name).collect()
    }

    /// A file of this VM's datacenter as a `/folder` address (e.g. a disk's descriptor).
    ///
    /// # Errors
    /// [`Error::NotFound`] when the VM's datacenter is unknown.
    pub fn datastore_file(&self, path: DatastorePath) -> Result<crate::datastore::DatastoreFile> {
        let dc = self
            .datacenter_path
            .clone()
            .ok_or_else(|| Error::NotFound(format!("datacenter of VM {}", self.name)))?;
        Ok(crate::datastore::DatastoreFile::new(dc, path))
    }

    /// The disk with this device key.
    pub fn disk(&self, key: i32) -> Option<&VirtualDisk> {
        self.disks.iter().find(|d| d.key == key)
    }

    /// Decodes a VM from its properties. `tree` resolves folder, datacenter and host names;
    /// `datastore_name` resolves datastore morefs.
    ///
    /// # Errors
    /// [`Error::Xml`] for malformed properties.
    pub(crate) fn from_object(
        obj: &ObjectContent,
        tree: &Tree,
        datastore_name: &dyn Fn(&MoRef) -> Option<String>,
    ) -> Result<Self> {
        let name = obj.text("name").unwrap_or_default().to_owned();
        let text = |p: &str| {
            obj.text(p)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let (snapshots, current_snapshot) = match obj.get("snapshot") {
            Some(info) => SnapshotTree::from_info(info)?,
            None => (Vec::new(), None),
        };
        let disks = match obj.get("config.hardware.device") {
            Some(devices) => VirtualDisk::from_device_array(devices)?,
            None => Vec::new(),
        };
        let files = obj
            .get("layoutEx")
            .map(|l| {
                l.children_named("file")
                    .map(|f| VmFile {
                        name: f.child_text("name").unwrap_or_default().to_owned(),
                        kind: f.child_text("type").unwrap_or_default().to_owned(),
                        size: f
                            .child_num::<i64>("size")
                            .ok()
                            .flatten()
                            .unwrap_or(0)
                            .max(0) as u64,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let datastores = obj.morefs("datastore");
        let datastore_names = datastores
            .iter()
            .map(|d| datastore_name(d).unwrap_or_default())
            .collect();
        let folder = obj.moref("parent");
        let host = obj.moref("runtime.host");
        let datacenter = tree.datacenter_of(&obj.obj);
        Ok(Self {
            moref: obj.obj.clone(),
            display_name: decode_name(&name),
            instance_uuid: text("config.instanceUuid"),
            bios_uuid: text("config.uuid"),
            vmx_path: obj
                .text("config.files.vmPathName")
                .and_then(|p| DatastorePath::parse(p).ok()),
            power_state: PowerState::parse(obj.text("runtime.powerState").unwrap_or("poweredOff")),
            guest_os: text("config.guestFullName").unwrap_or_default(),
            guest_id: text("config.guestId").unwrap_or_default(),
            hardware_version: text("config.version").unwrap_or_default(),
            template: obj.bool("config.template")?.unwrap_or(false),
            host_name: host.as_ref().and_then(|h| tree.name(h)).map(str::to_owned),
            host,
            resource_pool: obj.moref("resourcePool"),
            datastores,
            datastore_names,
            cbt_enabled: obj.bool("config.changeTrackingEnabled")?.unwrap_or(false),
            consolidation_needed: obj.bool("runtime.consolidationNeeded")?.unwrap_or(false),
            current_snapshot,
            snapshots,
            disks,
            folder_path: folder
                .as_ref()
                .map(|f| tree.path_below_datacenter(f))
                .unwrap_or_default(),
            inventory_path: tree.inventory_path(&obj.obj),
            folder,
            datacenter_path: datacenter.as_ref().map(|d| tree.dc_path(d)),
            datacenter,
            files,
            name,
        })
    }
}

/// The VM properties a listing reads.
pub(crate) const VM_LIST_PATHS: &[&str] = &[
    "name",
    "parent",
    "config.uuid",
    "config.instanceUuid",
    "config.files.vmPathName",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "config.guestFullName",
    "config.guestId",
    "config.template",
    "config.version",
    "runtime.powerState",
    "runtime.host",
    "runtime.consolidationNeeded",
    "snapshot",
    "datastore",
    "resourcePool",
];

/// A listing's properties plus the file layout.
const VM_READ_PATHS: &[&str] = &[
    "name",
    "parent",
    "config.uuid",
    "config.instanceUuid",
    "config.files.vmPathName",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "config.guestFullName",
    "config.guestId",
    "config.template",
    "config.version",
    "runtime.powerState",
    "runtime.host",
    "runtime.consolidationNeeded",
    "snapshot",
    "datastore",
    "resourcePool",
    "layoutEx",
];

const DATACENTER_NAME_PARENT: &[&str] = &["name", "parent", "vmFolder"];

/// A VM's identity, from a light listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmRef {
    /// Its moref.
    pub moref: MoRef,
    /// Raw name.
    pub name: String,
    /// `config.instanceUuid`.
    pub instance_uuid: Option<String>,
}

/// A question the VM waits on (e.g. "moved or copied?" after registering a copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmQuestion {
    /// The question id to answer.
    pub id: String,
    /// The question text.
    pub text: String,
    /// `(key, label)` of each choice.
    pub choices: Vec<(String, String)>,
}

impl Client {
    /// Every VM with its disks, snapshots, folder and datacenter (one paged retrieval).
    ///
    /// # Errors
    /// As [`Client::inventory`]: complete or an error.
    pub async fn list_vms(&self) -> Result<Vec<Vm>> {
        Ok(self.inventory().await?.vms)
    }

    /// Name and instance UUID of every VM (cheap).
    ///
    /// # Errors
    /// As [`Client::inventory`].
    pub async fn list_vm_refs(&self) -> Result<Vec<VmRef>> {
        let root = self.service_content()?.root_folder;
        let specs = [PropertySpec {
            kind: "VirtualMachine",
            paths: &["name", "config.instanceUuid"],
        }];
        let objects = self
            .retrieve_view(&root, &["VirtualMachine"], &specs)
            .await?;
        Ok(objects
            .iter()
            .map(|o| VmRef {
                moref: o.obj.clone(),
                name: o.text("name").unwrap_or_default().to_owned(),
                instance_uuid: o.text("config.instanceUuid").map(str::to_owned),
            })
            .collect())
    }

    /// Finds a VM by `config.instanceUuid` (case-insensitive) and reads it fully.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Ambiguous`] if two VMs claim the UUID; transport errors.
    pub async fn find_vm_by_instance_uuid(&self, uuid: &str) -> Result<Vm> {
        let wanted = uuid.trim().to_ascii_lowercase();
        let matches: Vec<VmRef> = self
            .list_vm_refs()
            .await?
            .into_iter()
            .filter(|v| {
                v.instance_uuid
                    .as_deref()
                    .is_some_and(|u| u.to_ascii_lowercase() == wanted)
            })
            .collect();
        match matches.as_slice() {
            [one] => self.read_vm(&one.moref).await,
            [] => Err(Error::NotFound(format!("VM with instance UUID {uuid}"))),
            many => Err(Error::Ambiguous {
                what: format!("instance UUID {uuid}"),
                candidates: many
                    .iter()
                    .map(|v| format!("{} ({})", decode_name(&v.name), v.moref.value))
                    .collect(),
            }),
        }
    }

    /// Finds a VM by name — raw (`a%2fb`) or as displayed (`a/b`) — and reads it fully.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Ambiguous`] listing every candidate with its folder and
    /// instance UUID; transport errors.
    pub async fn find_vm_by_name(&self, name: &str) -> Result<Vm> {
        let matches: Vec<VmRef> = self
            .list_vm_refs()
            .await?
            .into_iter()
            .filter(|v| v.name == name || decode_name(&v.name) == name)
            .collect();
        match matches.as_slice() {
            [one] => self.read_vm(&one.moref).await,
            [] => Err(Error::NotFound(format!("VM named {name:?}"))),
            many => {
                let mut candidates = Vec::new();
                for v in many {
                    let where_ = match self.read_vm(&v.moref).await {
                        Ok(vm) => vm.inventory_path,
                        Err(_) => v.moref.value.clone(),
                    };
                    let uuid = v.instance_uuid.as_deref().unwrap_or("no instance UUID");
                    candidates.push(format!("{where_} ({}, {uuid})", v.moref.value));
                }
                Err(Error::Ambiguous {
                    what: format!("VM name {name:?}"),
                    candidates,
                })
            }
        }
    }

    /// Reads one VM fully: disks, snapshot tree, CBT, consolidation flag, file layout, folder
    /// path and datacenter (with `dcPath`), host and datastore names.
    ///
    /// # Errors
    /// ManagedObjectNotFound ([`Error::Fault`]) for a stale moref; transport errors.
    pub async fn read_vm(&self, vm: &MoRef) -> Result<Vm> {
        let mut specs = vec![
            PropertySpec {
                kind: "VirtualMachine",
                paths: VM_READ_PATHS,
            },
            PropertySpec {
                kind: "Datacenter",
                paths: DATACENTER_NAME_PARENT,
            },
        ];
        specs.extend(ANCESTOR_KINDS.iter().map(|k| PropertySpec {
            kind: k,
            paths: NAME_PARENT,
        }));
        let objects = self.retrieve_with_ancestors(&specs, vm).await?;
        let object = objects
            .iter()
            .find(|o| &o.obj == vm)
            .ok_or_else(|| Error::NotFound(format!("VM {vm}")))?;
        let mut tree = Tree::default();
        for o in &objects {
            tree.insert(o);
        }
        // Host and datastore names in a second call: only now do we know the morefs.
        let mut others: Vec<MoRef> = object.morefs("datastore");
        if let Some(host) = object.moref("runtime.host") {
            others.push(host);
        }
        let named = self
            .retrieve_objects(
                &[
                    PropertySpec {
                        kind: "HostSystem",
                        paths: &["name"],
                    },
                    PropertySpec {
                        kind: "Datastore",
                        paths: &["name"],
                    },
                ],
                &others,
            )
            .await?;
        let names: HashMap<MoRef, String> = named
            .iter()
            .filter_map(|o| o.text("name").map(|n| (o.obj.clone(), n.to_owned())))
            .collect();
        for o in &named {
            if o.obj.is("HostSystem") {
                tree.insert(o);
            }
        }
        Vm::from_object(object, &tree, &|m| names.get(m).cloned())
    }

    /// Datastores with full details (type, URL, capacity), by moref.
    ///
    /// # Errors
    /// Transport errors and faults.
    pub async fn datastore_details(
        &self,
        datastores: &[MoRef],
    ) -> Result<Vec<crate::inventory::Datastore>> {
        let specs = [PropertySpec {
            kind: "Datastore",
            paths: DATASTORE_PATHS,
        }];
        let objects = self.retrieve_objects(&specs, datastores).await?;
        let tree = Tree::default();
        Ok(objects
            .iter()
            .map(|o| crate::inventory::Datastore::from_object(o, &tree))
            .collect())
    }

    async fn power_state(&self, vm: &MoRef) -> Result<PowerState> {
        let specs = [PropertySpec {
            kind: "VirtualMachine",
            paths: &["runtime.powerState"],
        }];
        let objects = self
            .retrieve_objects(&specs, std::slice::from_ref(vm))
            .await?;
        Ok(PowerState::parse(
            objects
                .iter()
                .find(|o| &o.obj == vm)
                .and_then(|o| o.text("runtime.powerState"))
                .unwrap_or_default(),
        ))
    }

    async fn power_task(
        &self,
        method: &str,
        vm: &MoRef,
        host: Option<&MoRef>,
        target: PowerState,
    ) -> Result<()> {
        let mut w = Writer::new();
        w.moref("_this", vm).opt_moref("host", host);
        let response = self
            .invoke_guarded(method, &w.finish(), CallKind::NotIdempotent, || async {
                Ok(self.power_state(vm).await? == target)
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

    /// Powers a VM on (optionally on a given host) and waits.
    ///
    /// # Errors
    /// [`Error::Fault`] (InvalidPowerState when already on, the task's error), transport errors.
    pub async fn power_on(&self, vm: &MoRef, host: Option<&MoRef>) -> Result<()> {
        self.power_task("PowerOnVM_Task", vm, host, PowerState::PoweredOn)
            .await
    }

    /// Powers a VM off (hard) and waits.
    ///
    /// # Errors
    /// [`Error::Fault`] (InvalidPowerState when already off, the task's error), transport errors.
    pub async fn power_off(&self, vm: &MoRef) -> Result<()> {
        self.power_task("PowerOffVM_Task", vm, None, PowerState::PoweredOff)
            .await
    }

    /// Registers an existing `.vmx` as a VM in `folder` (a datacenter's VM folder or below),
    /// placed in `pool` (always send it) and optionally on `host`; returns the new VM.
    ///
    /// # Errors
    /// [`Error::Fault`] (AlreadyExists, NotFound/FileFault for a missing file, InvalidArgument…),
    /// [`Error::TaskOutcomeUnknown`], transport errors.
    pub async fn register_vm(
        &self,
        folder: &MoRef,
        vmx: &DatastorePath,
        name: Option<&str>,
        pool: &MoRef,
        host: Option<&MoRef>,
    ) -> Result<MoRef> {
        let mut w = Writer::new();
        // RegisterVM_Task: _this, path, name?, asTemplate, pool?, host?.
        w.moref("_this", folder)
            .text("path", &vmx.to_string())
            .opt_text("name", name)
            .bool("asTemplate", false)
            .moref("pool", pool)
            .opt_moref("host", host);
        let method = "RegisterVM_Task";
        let response = self
            .invoke(method, &w.finish(), CallKind::NotIdempotent)
            .await?;
        let task = Self::task_moref(method, &response)?;
        let info = self
            .wait_for_task(&task, method, &self.default_wait())
            .await?;
        info.result_moref
            .ok_or_else(|| Error::Xml(format!("{method} succeeded without a VM result")))
    }

    /// Removes a VM from the inventory, keeping its files.
    ///
    /// # Errors
    /// [`Error::Fault`] (InvalidPowerState when it is on), transport errors.
    pub async fn unregister_vm(&self, vm: &MoRef) -> Result<()> {
        let mut w = Writer::new();
        w.moref("_this", vm);
        let result = self
            .invoke_guarded(
                "UnregisterVM",
                &w.finish(),
                CallKind::NotIdempotent,
                || async {
                    match self.power_state(vm).await {
                        Err(err) if err.is_managed_object_not_found() => Ok(true),
                        Err(err) => Err(err),
                        Ok(_) => Ok(false),
                    }
                },
            )
            .await;
        result.map(|_| ())
    }

    /// Switches Changed Block Tracking on or off (ReconfigVM) and waits. Enabling takes effect
    /// after the next stun/unstun (power on, snapshot create/remove).
    ///
    /// # Errors
    /// [`Error::Fault`] with the task's error (e.g. snapshots present, hardware too old),
    /// transport errors.
    pub async fn set_change_tracking(&self, vm: &MoRef, enabled: bool) -> Result<()> {
        let mut w = Writer::new();
        w.moref("_this", vm)
            .start("spec")
            .bool("changeTrackingEnabled", enabled)
            .end("spec");
        let method = "ReconfigVM_Task";
        // Setting a flag to a value is idempotent.
        let response = self
            .invoke(method, &w.finish(), CallKind::Idempotent)
            .await?;
        let task = Self::task_moref(method, &response)?;
        self.wait_for_task(&task, method, &self.default_wait())
            .await
            .map(|_| ())
    }

    /// The question the VM waits on, if any (`runtime.question`).
    ///
    /// # Errors
    /// Transport errors and faults.
    pub async fn pending_question(&self, vm: &MoRef) -> Result<Option<VmQuestion>> {
        let specs = [PropertySpec {
            kind: "VirtualMachine",
            paths: &["runtime.question"],
        }];
        let objects = self
            .retrieve_objects(&specs, std::slice::from_ref(vm))
            .await?;
        let Some(q) = objects
            .iter()
            .find(|o| &o.obj == vm)
            .and_then(|o| o.get("runtime.question"))
        else {
            return Ok(None);
        };
        let choices = q
            .child("choice")
            .map(|c| {
                c.children_named("choiceInfo")
                    .map(|i| {
                        (
                            i.child_text("key").unwrap_or_default().to_owned(),
                            i.child_text("label")
                                .or_else(|| i.child_text("summary"))
                                .unwrap_or_default()
                                .to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(VmQuestion {
            id: q.child_text("id").unwrap_or_default().to_owned(),
            text: q.child_text("text").unwrap_or_default().to_owned(),
            choices,
        }))
    }

    /// Answers a pending question (e.g. "I copied it" after registering a restored copy).
    ///
    /// # Errors
    /// [`Error::Fault`] (e.g. ConcurrentAccess, InvalidArgument for a stale question), transport
    /// errors.
    pub async fn answer_vm(&self, vm: &MoRef, question_id: &str, choice: &str) -> Result<()> {
        let mut w = Writer::new();
        w.moref("_this", vm)
            .text("questionId", question_id)
            .text("answerChoice", choice);
        self.invoke("AnswerVM", &w.finish(), CallKind::NotIdempotent)
            .await
            .map(|_| ())
    }
}

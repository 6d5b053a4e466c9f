//! The inventory as vbm sees it: datacenters, compute resources (clusters and standalone hosts),
//! hosts, datastores, VM folders, resource pools and VMs, decoded from property-collector
//! results, with names resolved and paths built.
//!
//! [`Client::inventory`] loads everything in one paged retrieval over a container view; the
//! listing is complete or an error (N12). Names are kept **raw** (as the API returns them, with
//! `%2f`/`%5c`/`%25` escapes) for lookups, `dcPath` and `dsName`; `display_name` fields are decoded
//! for people.

use std::collections::HashMap;

use serde::Serialize;

use crate::client::Client;
use crate::error::Result;
use crate::property_collector::{ObjectContent, PropertySpec};
use crate::types::{MoRef, decode_name};
use crate::virtual_machine::{VM_LIST_PATHS, Vm};

/// A datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Datacenter {
    /// Its moref.
    pub moref: MoRef,
    /// Raw name.
    pub name: String,
    /// Decoded name.
    pub display_name: String,
    /// The `dcPath` for `/folder` URLs: folders from the root and the name, joined by `/`
    /// (`Folder1/DC0`), raw names.
    pub path: String,
    /// Root of its VM folders.
    pub vm_folder: Option<MoRef>,
    /// Root of its host folders.
    pub host_folder: Option<MoRef>,
    /// Root of its datastore folders.
    pub datastore_folder: Option<MoRef>,
}

/// A cluster or a standalone host's compute resource: where VMs run and what pool they use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComputeResource {
    /// Its moref (`ClusterComputeResource` or `ComputeResource`).
    pub moref: MoRef,
    /// Raw name.
    pub name: String,
    /// Decoded name.
    pub display_name: String,
    /// Whether this is a cluster.
    pub is_cluster: bool,
    /// The root resource pool (pass it to RegisterVM).
    pub resource_pool: Option<MoRef>,
    /// Its hosts.
    pub hosts: Vec<MoRef>,
    /// The datacenter it belongs to.
    pub datacenter: Option<MoRef>,
}

/// An ESXi host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// Its moref.
    pub moref: MoRef,
    /// Raw name (usually the FQDN or IP).
    pub name: String,
    /// The compute resource (cluster or standalone) it belongs to.
    pub compute_resource: Option<MoRef>,
    /// The datacenter it belongs to.
    pub datacenter: Option<MoRef>,
}

/// A datastore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Datastore {
    /// Its moref.
    pub moref: MoRef,
    /// Raw name (the `dsName` of `/folder` URLs).
    pub name: String,
    /// Decoded name.
    pub display_name: String,
    /// `summary.type`: `VMFS`, `NFS`, `NFS41`, `vsan`, `VVOL`, …
    pub kind: String,
    /// `summary.url` (e.g. `ds:///vmfs/volumes/…/`).
    pub url: String,
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Free space in bytes.
    pub free_bytes: u64,
    /// Whether it is accessible.
    pub accessible: bool,
    /// Its HostDatastoreBrowser (for directory listings).
    pub browser: Option<MoRef>,
    /// The datacenter it belongs to.
    pub datacenter: Option<MoRef>,
}

impl Datastore {
    /// Object-backed datastores have no `-flat.vmdk` files to transfer over `/folder`.
    pub fn is_object_backed(&self) -> bool {
        matches!(self.kind.to_ascii_lowercase().as_str(), "vsan" | "vvol")
    }
}

/// A VM folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmFolder {
    /// Its moref.
    pub moref: MoRef,
    /// Raw name.
    pub name: String,
    /// Path below the datacenter's VM folder (`""` for that folder itself, `A/B` for nested), raw names.
    pub path: String,
    /// Full inventory path (`/Folder1/DC0/vm/A/B`), raw names.
    pub inventory_path: String,
    /// The datacenter it belongs to.
    pub datacenter: Option<MoRef>,
}

/// A resource pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourcePool {
    /// Its moref.
    pub moref: MoRef,
    /// Raw name (`Resources` for a root pool).
    pub name: String,
    /// Full inventory path, raw names.
    pub inventory_path: String,
    /// The compute resource that owns it.
    pub owner: Option<MoRef>,
    /// The datacenter it belongs to.
    pub datacenter: Option<MoRef>,
}

/// Everything vbm needs from the inventory, loaded at once.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    /// Datacenters.
    pub datacenters: Vec<Datacenter>,
    /// Clusters and standalone compute resources.
    pub compute_resources: Vec<ComputeResource>,
    /// Hosts.
    pub hosts: Vec<Host>,
    /// Datastores.
    pub datastores: Vec<Datastore>,
    /// VM folders.
    pub vm_folders: Vec<VmFolder>,
    /// Resource pools.
    pub resource_pools: Vec<ResourcePool>,
    /// Virtual machines (templates included; see [`Vm::template`]).
    pub vms: Vec<Vm>,
}

/// Name and parent of every managed entity, for building paths.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tree {
    entries: HashMap<MoRef, (String, Option<MoRef>)>,
}

impl Tree {
    pub(crate) fn insert(&mut self, obj: &ObjectContent) {
        if let Some(name) = obj.text("name") {
            let parent = obj.moref("parent").or_else(|| obj.moref("parentVApp"));
            self.entries
                .insert(obj.obj.clone(), (name.to_owned(), parent));
        }
    }

    pub(crate) fn name(&self, moref: &MoRef) -> Option<&str> {
        self.entries.get(moref).map(|(n, _)| n.as_str())
    }

    /// The chain from the root (exclusive) down to `moref` (inclusive).
    fn chain(&self, moref: &MoRef) -> Vec<MoRef> {
        let mut chain: Vec<MoRef> = Vec::new();
        let mut current = moref.clone();
        loop {
            if chain.contains(&current) || chain.len() > 256 {
                break; // a cycle would be a server bug; don't loop forever
            }
            // The root folder has no parent and is not part of paths.
            let Some((_, Some(parent))) = self.entries.get(&current) else {
                break;
            };
            let parent = parent.clone();
            chain.push(current);
            current = parent;
        }
        chain.reverse();
        chain
    }

    /// `/A/DC/vm/x` — the inventory path, raw names.
    pub(crate) fn inventory_path(&self, moref: &MoRef) -> String {
        let chain = self.chain(moref);
        let names: Vec<&str> = chain.iter().filter_map(|m| self.name(m)).collect();
        format!("/{}", names.join("/"))
    }

    /// The nearest Datacenter at or above `moref`.
    pub(crate) fn datacenter_of(&self, moref: &MoRef) -> Option<MoRef> {
        self.chain(moref)
            .into_iter()
            .rev()
            .find(|m| m.is("Datacenter"))
    }

    /// `Folder1/DC0`: the dcPath of a datacenter.
    pub(crate) fn dc_path(&self, datacenter: &MoRef) -> String {
        let chain = self.chain(datacenter);
        let names: Vec<&str> = chain.iter().filter_map(|m| self.name(m)).collect();
        names.join("/")
    }

    /// Path of a folder below its datacenter's VM folder: skips everything up to and including
    /// the datacenter and its `vm` root folder.
    pub(crate) fn path_below_datacenter(&self, moref: &MoRef) -> String {
        let chain = self.chain(moref);
        let Some(dc_index) = chain.iter().rposition(|m| m.is("Datacenter")) else {
            return String::new();
        };
        // chain[dc_index + 1] is the datacenter's vmFolder/hostFolder/datastoreFolder.
        chain
            .iter()
            .skip(dc_index + 2)
            .filter_map(|m| self.name(m))
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn u64_of(node: Option<&crate::xml::Node>, name: &str) -> u64 {
    node.and_then(|n| n.child_num::<i64>(name).ok().flatten())
        .map_or(0, |v| v.max(0) as u64)
}

impl Datastore {
    pub(crate) fn from_object(obj: &ObjectContent, tree: &Tree) -> Self {
        let summary = obj.get("summary");
        let name = obj
            .text("name")
            .or_else(|| summary.and_then(|s| s.child_text("name")))
            .unwrap_or_default()
            .to_owned();
        Self {
            moref: obj.obj.clone(),
            display_name: decode_name(&name),
            name,
            kind: summary
                .and_then(|s| s.child_text("type"))
                .unwrap_or_default()
                .to_owned(),
            url: summary
                .and_then(|s| s.child_text("url"))
                .unwrap_or_default()
                .to_owned(),
            capacity_bytes: u64_of(summary, "capacity"),
            free_bytes: u64_of(summary, "freeSpace"),
            accessible: summary
                .and_then(|s| s.child_bool("accessible").ok().flatten())
                .unwrap_or(true),
            browser: obj.moref("browser"),
            datacenter: tree.datacenter_of(&obj.obj),
        }
    }
}

/// Types that can be above an entity (besides Datacenter), whose name and parent build paths.
/// Supertypes only: a spec for `ComputeResource` covers clusters, `ResourcePool` covers vApps.
pub(crate) const ANCESTOR_KINDS: &[&str] = &["Folder", "ResourcePool", "ComputeResource"];
/// Leaf entity types whose datacenter callers ask for.
const ENTITY_KINDS: &[&str] = &["VirtualMachine", "Datastore", "HostSystem", "Network"];
/// Name and parent: enough to place an entity in the tree.
pub(crate) const NAME_PARENT: &[&str] = &["name", "parent"];

const FOLDER_PATHS: &[&str] = &["name", "parent", "childType"];
const DATACENTER_PATHS: &[&str] = &[
    "name",
    "parent",
    "vmFolder",
    "hostFolder",
    "datastoreFolder",
];
pub(crate) const DATASTORE_PATHS: &[&str] = &["name", "parent", "summary", "browser"];
const COMPUTE_PATHS: &[&str] = &["name", "parent", "resourcePool", "host"];
const HOST_PATHS: &[&str] = &["name", "parent"];
const POOL_PATHS: &[&str] = &["name", "parent", "owner"];

impl Client {
    /// Loads the whole inventory in one paged retrieval.
    ///
    /// # Errors
    /// Transport errors and faults; [`crate::Error::IncompleteListing`] when paging fails midway
    /// (never a partial inventory).
    pub async fn inventory(&self) -> Result<Inventory> {
        self.load_inventory(true).await
    }

    /// The inventory without VMs (cheaper: placement and datastore questions).
    ///
    /// # Errors
    /// As [`Client::inventory`].
    pub async fn infrastructure(&self) -> Result<Inventory> {
        self.load_inventory(false).await
    }

    async fn load_inventory(&self, with_vms: bool) -> Result<Inventory> {
        let root = self.service_content()?.root_folder;
        // View types match exactly in vcsim (vCenter includes subtypes), so subtypes are listed;
        // property specs name only the supertype, which both apply to subtypes — overlapping
        // specs for a type and its subtype are avoided.
        let mut types = vec![
            "Folder",
            "Datacenter",
            "Datastore",
            "ComputeResource",
            "ClusterComputeResource",
            "HostSystem",
            "ResourcePool",
            "VirtualApp",
        ];
        let mut specs = vec![
            PropertySpec {
                kind: "Folder",
                paths: FOLDER_PATHS,
            },
            PropertySpec {
                kind: "Datacenter",
                paths: DATACENTER_PATHS,
            },
            PropertySpec {
                kind: "Datastore",
                paths: DATASTORE_PATHS,
            },
            PropertySpec {
                kind: "ComputeResource",
                paths: COMPUTE_PATHS,
            },
            PropertySpec {
                kind: "HostSystem",
                paths: HOST_PATHS,
            },
            PropertySpec {
                kind: "ResourcePool",
                paths: POOL_PATHS,
            },
        ];
        if with_vms {
            types.push("VirtualMachine");
            specs.push(PropertySpec {
                kind: "VirtualMachine",
                paths: VM_LIST_PATHS,
            });
        }
        let objects = self.retrieve_view(&root, &types, &specs).await?;
        let mut tree = Tree::default();
        // The root folder is not inside the view; it has no parent and no place in paths.
        for obj in &objects {
            tree.insert(obj);
        }
        Ok(build_inventory(&objects, &tree))
    }

    /// Every datacenter.
    ///
    /// # Errors
    /// As [`Client::inventory`].
    pub async fn datacenters(&self) -> Result<Vec<Datacenter>> {
        Ok(self.infrastructure().await?.datacenters)
    }

    /// The datastores of a datacenter (name, type, URL, capacity, free space).
    ///
    /// # Errors
    /// As [`Client::inventory`].
    pub async fn datastores(&self, datacenter: &MoRef) -> Result<Vec<Datastore>> {
        let inv = self.infrastructure().await?;
        Ok(inv
            .datastores
            .into_iter()
            .filter(|d| d.datacenter.as_ref() == Some(datacenter))
            .collect())
    }

    /// The datacenter an entity (VM, datastore, folder, host) belongs to, with its `dcPath`.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] when the entity has no datacenter above it; faults (a stale
    /// moref is ManagedObjectNotFound) and transport errors.
    pub async fn datacenter_of(&self, entity: &MoRef) -> Result<Datacenter> {
        let mut specs = vec![PropertySpec {
            kind: "Datacenter",
            paths: DATACENTER_PATHS,
        }];
        specs.extend(
            ENTITY_KINDS
                .iter()
                .chain(ANCESTOR_KINDS)
                .map(|k| PropertySpec {
                    kind: k,
                    paths: NAME_PARENT,
                }),
        );
        let objects = self.retrieve_with_ancestors(&specs, entity).await?;
        let mut tree = Tree::default();
        for obj in &objects {
            tree.insert(obj);
        }
        let dc = tree
            .datacenter_of(entity)
            .or_else(|| {
                objects
                    .iter()
                    .find(|o| o.obj.is("Datacenter"))
                    .map(|o| o.obj.clone())
            })
            .ok_or_else(|| crate::Error::NotFound(format!("datacenter of {entity}")))?;
        objects
            .iter()
            .find(|o| o.obj == dc)
            .map(|o| datacenter_from(o, &tree))
            .ok_or_else(|| crate::Error::NotFound(format!("datacenter of {entity}")))
    }
}

fn datacenter_from(obj: &ObjectContent, tree: &Tree) -> Datacenter {
    let name = obj.text("name").unwrap_or_default().to_owned();
    Datacenter {
        moref: obj.obj.clone(),
        display_name: decode_name(&name),
        name,
        path: tree.dc_path(&obj.obj),
        vm_folder: obj.moref("vmFolder"),
        host_folder: obj.moref("hostFolder"),
        datastore_folder: obj.moref("datastoreFolder"),
    }
}

fn build_inventory(objects: &[ObjectContent], tree: &Tree) -> Inventory {
    let mut inv = Inventory::default();
    let datastore_names: HashMap<&MoRef, &str> = objects
        .iter()
        .filter(|o| o.obj.is("Datastore"))
        .filter_map(|o| o.text("name").map(|n| (&o.obj, n)))
        .collect();
    // Which folders are VM folders: those whose childType lists VirtualMachine.
    for obj in objects {
        let kind = obj.obj.kind.as_str();
        let name = || obj.text("name").unwrap_or_default().to_owned();
        match kind {
            "Datacenter" => inv.datacenters.push(datacenter_from(obj, tree)),
            "Folder" => {
                let is_vm_folder = obj
                    .get("childType")
                    .is_some_and(|c| c.children.iter().any(|t| t.text == "VirtualMachine"));
                if is_vm_folder {
                    inv.vm_folders.push(VmFolder {
                        moref: obj.obj.clone(),
                        name: name(),
                        path: tree.path_below_datacenter(&obj.obj),
                        inventory_path: tree.inventory_path(&obj.obj),
                        datacenter: tree.datacenter_of(&obj.obj),
                    });
                }
            }
            "Datastore" => inv.datastores.push(Datastore::from_object(obj, tree)),
            "ComputeResource" | "ClusterComputeResource" => {
                let name = name();
                inv.compute_resources.push(ComputeResource {
                    moref: obj.obj.clone(),
                    display_name: decode_name(&name),
                    name,
                    is_cluster: kind == "ClusterComputeResource",
                    resource_pool: obj.moref("resourcePool"),
                    hosts: obj.morefs("host"),
                    datacenter: tree.datacenter_of(&obj.obj),
                });
            }
            "HostSystem" => inv.hosts.push(Host {
                moref: obj.obj.clone(),
                name: name(),
                compute_resource: obj.moref("parent"),
                datacenter: tree.datacenter_of(&obj.obj),
            }),
            "ResourcePool" | "VirtualApp" => inv.resource_pools.push(ResourcePool {
                moref: obj.obj.clone(),
                name: name(),
                inventory_path: tree.inventory_path(&obj.obj),
                owner: obj.moref("owner"),
                datacenter: tree.datacenter_of(&obj.obj),
            }),
            "VirtualMachine" => match Vm::from_object(obj, tree, &|m| {
                datastore_names.get(m).map(|s| (*s).to_owned())
            }) {
                Ok(vm) => inv.vms.push(vm),
                Err(err) => {
                    tracing::warn!(vm = %obj.obj, error = %err, "skipping a VM whose properties do not decode")
                }
            },
            _ => {}
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::Node;

    fn obj(kind: &str, id: &str, name: &str, parent: Option<(&str, &str)>) -> ObjectContent {
        let mut props = vec![(
            "name".to_owned(),
            Node {
                name: "val".into(),
                text: name.into(),
                ..Default::default()
            },
        )];
        if let Some((pk, pv)) = parent {
            props.push((
                "parent".to_owned(),
                Node {
                    name: "val".into(),
                    text: pv.into(),
                    attributes: vec![("type".into(), pk.into())],
                    ..Default::default()
                },
            ));
        }
        ObjectContent {
            obj: MoRef::new(kind, id),
            props,
            missing: vec![],
        }
    }

    #[test]
    fn paths_of_a_datacenter_inside_folders() {
        let objects = vec![
            obj("Folder", "group-d1", "Datacenters", None),
            obj(
                "Folder",
                "f1",
                "Europe %2f West",
                Some(("Folder", "group-d1")),
            ),
            obj("Datacenter", "dc1", "DC 1", Some(("Folder", "f1"))),
            obj("Folder", "vmroot", "vm", Some(("Datacenter", "dc1"))),
            obj("Folder", "sub", "Prod", Some(("Folder", "vmroot"))),
            obj("Folder", "deep", "Déjà vu", Some(("Folder", "sub"))),
            obj("VirtualMachine", "vm-1", "web", Some(("Folder", "deep"))),
        ];
        let mut tree = Tree::default();
        for o in &objects {
            tree.insert(o);
        }
        let dc = MoRef::new("Datacenter", "dc1");
        assert_eq!(tree.dc_path(&dc), "Europe %2f West/DC 1");
        let vm = MoRef::new("VirtualMachine", "vm-1");
        assert_eq!(tree.datacenter_of(&vm), Some(dc));
        assert_eq!(
            tree.inventory_path(&vm),
            "/Europe %2f West/DC 1/vm/Prod/Déjà vu/web"
        );
        assert_eq!(
            tree.path_below_datacenter(&MoRef::new("Folder", "deep")),
            "Prod/Déjà vu"
        );
        assert_eq!(
            tree.path_below_datacenter(&MoRef::new("Folder", "vmroot")),
            ""
        );
    }

    #[test]
    fn cycles_do_not_hang() {
        let objects = vec![
            obj("Folder", "a", "A", Some(("Folder", "b"))),
            obj("Folder", "b", "B", Some(("Folder", "a"))),
        ];
        let mut tree = Tree::default();
        for o in &objects {
            tree.insert(o);
        }
        assert!(tree.inventory_path(&MoRef::new("Folder", "a")).len() < 100);
    }
}

//! Typed vSphere faults.
//!
//! A fault reaches us two ways: as a SOAP fault (HTTP 500, `soapenv:Fault` with a `detail` child
//! whose `xsi:type` names the fault) or as a failed task's `info.error` (a LocalizedMethodFault:
//! `fault xsi:type=…` plus `localizedMessage`). Both decode into [`Fault`]: a [`FaultKind`] callers
//! can match on, the server's type name, and the server's message. Unknown fault types keep their
//! type name and message.

use std::fmt;

use crate::types::MoRef;
use crate::xml::Node;

/// A decoded vSphere fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What kind of fault this is, with the fields vbm uses.
    pub kind: FaultKind,
    /// The server's type name (`FileNotFound`, `CannotCreateFile`, …) — more precise than `kind`.
    pub type_name: String,
    /// The server's human-readable message (`faultstring` or `localizedMessage`). Never parse it.
    pub message: String,
}

/// The fault types vbm distinguishes. Subtypes map to their parent where vbm treats them alike
/// (`CannotAccessFile` → [`FaultKind::FileFault`], `InvalidHostState` → [`FaultKind::InvalidState`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// The user name or password was rejected.
    InvalidLogin,
    /// The session is gone (expired, logged out) or there never was one.
    NotAuthenticated,
    /// The caller lacks a privilege.
    NoPermission {
        /// The object the privilege was checked on.
        object: Option<MoRef>,
        /// The missing privilege, e.g. `VirtualMachine.State.CreateSnapshot`.
        privilege_id: Option<String>,
    },
    /// A stale or unknown moref.
    ManagedObjectNotFound {
        /// The reference the server could not find.
        obj: Option<MoRef>,
    },
    /// The object is busy with another task.
    TaskInProgress {
        /// The task holding the object.
        task: Option<MoRef>,
    },
    /// A file operation failed (`FileFault` and subtypes other than `FileNotFound`).
    FileFault {
        /// The file the fault names.
        file: Option<String>,
    },
    /// The file does not exist.
    FileNotFound {
        /// The file the fault names.
        file: Option<String>,
    },
    /// An argument was invalid.
    InvalidArgument {
        /// The offending property, when the server says.
        invalid_property: Option<String>,
    },
    /// The operation is not allowed in the object's current power state.
    InvalidPowerState {
        /// The state the operation needs.
        requested_state: Option<String>,
        /// The object's current state.
        existing_state: Option<String>,
    },
    /// The object is in a state that does not allow the operation (and subtypes).
    InvalidState,
    /// A snapshot operation failed (`SnapshotFault` and subtypes, including quiesce failures).
    SnapshotFault,
    /// The licence does not allow the operation (free ESXi: read-only API).
    RestrictedVersion,
    /// The server does not implement the method (vcsim for anything it lacks).
    MethodNotFound {
        /// The method name.
        method: Option<String>,
    },
    /// The request was malformed (schema violation, unknown element for the API version).
    InvalidRequest,
    /// The operation is not supported on this object or server.
    NotSupported,
    /// The server has not implemented this operation.
    NotImplemented,
    /// The object or file already exists.
    AlreadyExists,
    /// Something named in the request was not found (not a file).
    NotFound,
    /// The operation was cancelled (`RequestCanceled`).
    RequestCanceled,
    /// Any other fault: see [`Fault::type_name`].
    Other,
}

/// `FileFault` subtypes vbm treats as a generic file fault.
const FILE_FAULT_TYPES: &[&str] = &[
    "FileFault",
    "CannotAccessFile",
    "CannotCreateFile",
    "CannotDeleteFile",
    "FileAlreadyExists",
    "FileLocked",
    "FileBackedPortNotSupported",
    "FileNameTooLong",
    "FileTooLarge",
    "IncorrectFileType",
    "NetworkCopyFault",
    "NoDiskSpace",
    "NotADirectory",
    "NotAFile",
    "TooManyConcurrentNativeClones",
    "TooManyNativeClones",
    "TooManyNativeCloneLevels",
];

/// `SnapshotFault` subtypes.
const SNAPSHOT_FAULT_TYPES: &[&str] = &[
    "SnapshotFault",
    "ApplicationQuiesceFault",
    "FilesystemQuiesceFault",
    "MemorySnapshotOnIndependentDisk",
    "MultipleSnapshotsNotSupported",
    "SnapshotDisabled",
    "SnapshotIncompatibleDeviceInVm",
    "SnapshotLocked",
    "SnapshotNoChange",
    "TooManySnapshotLevels",
];

/// `InvalidState` subtypes other than `InvalidPowerState`.
const INVALID_STATE_TYPES: &[&str] = &[
    "InvalidState",
    "InvalidHostState",
    "InvalidDatastoreState",
    "InvalidVmState",
    "CannotPowerOffVmInCluster",
    "MksConnectionLimitReached",
    "NoActiveHostInCluster",
    "QuestionPending",
    "VmPowerOnDisabled",
];

impl Fault {
    /// A fault from its parts; `kind` is derived from the type name.
    pub fn new(type_name: impl Into<String>, message: impl Into<String>) -> Self {
        let type_name = type_name.into();
        Self {
            kind: kind_from_type(&type_name, None),
            type_name,
            message: message.into(),
        }
    }

    /// Decodes a fault data object (the `detail` child of a SOAP fault, or
    /// `LocalizedMethodFault.fault`). The type comes from `xsi:type`, else from the element name
    /// minus its `Fault` suffix (the detail element is named `<Type>Fault`).
    pub(crate) fn from_node(node: &Node, message: &str) -> Self {
        let type_name = match node.xsi_type.as_deref() {
            Some(ty) if !ty.is_empty() => ty.to_owned(),
            _ => node
                .name
                .strip_suffix("Fault")
                .filter(|s| !s.is_empty())
                .unwrap_or(&node.name)
                .to_owned(),
        };
        let kind = kind_from_type(&type_name, Some(node));
        let message = if message.trim().is_empty() {
            // vcsim leaves localizedMessage at the Go type name or empty; the fault's own
            // faultMessage list is the next best thing.
            node.child("faultMessage")
                .and_then(|m| m.child_text("message"))
                .map_or_else(|| type_name.clone(), str::to_owned)
        } else {
            message.trim().to_owned()
        };
        Self {
            kind,
            type_name,
            message,
        }
    }

    /// Whether this is any file fault (including `FileNotFound`).
    pub fn is_file_fault(&self) -> bool {
        matches!(
            self.kind,
            FaultKind::FileFault { .. } | FaultKind::FileNotFound { .. }
        )
    }
}

fn moref_child(node: Option<&Node>, name: &str) -> Option<MoRef> {
    node.and_then(|n| n.child(name))
        .and_then(|c| MoRef::from_node(c).ok())
}

fn text_child(node: Option<&Node>, name: &str) -> Option<String> {
    node.and_then(|n| n.child_text(name)).map(str::to_owned)
}

fn kind_from_type(type_name: &str, node: Option<&Node>) -> FaultKind {
    match type_name {
        "InvalidLogin" => FaultKind::InvalidLogin,
        "NotAuthenticated" | "InvalidSession" => FaultKind::NotAuthenticated,
        "NoPermission" => FaultKind::NoPermission {
            object: moref_child(node, "object"),
            privilege_id: text_child(node, "privilegeId"),
        },
        "ManagedObjectNotFound" => FaultKind::ManagedObjectNotFound {
            obj: moref_child(node, "obj"),
        },
        "TaskInProgress" => FaultKind::TaskInProgress {
            task: moref_child(node, "task"),
        },
        "FileNotFound" => FaultKind::FileNotFound {
            file: text_child(node, "file"),
        },
        t if FILE_FAULT_TYPES.contains(&t) => FaultKind::FileFault {
            file: text_child(node, "file"),
        },
        "InvalidArgument" => FaultKind::InvalidArgument {
            invalid_property: text_child(node, "invalidProperty"),
        },
        "InvalidPowerState" => FaultKind::InvalidPowerState {
            requested_state: text_child(node, "requestedState"),
            existing_state: text_child(node, "existingState"),
        },
        t if INVALID_STATE_TYPES.contains(&t) => FaultKind::InvalidState,
        t if SNAPSHOT_FAULT_TYPES.contains(&t) => FaultKind::SnapshotFault,
        "RestrictedVersion" => FaultKind::RestrictedVersion,
        "MethodNotFound" => FaultKind::MethodNotFound {
            method: text_child(node, "method"),
        },
        "InvalidRequest" => FaultKind::InvalidRequest,
        "NotSupported" => FaultKind::NotSupported,
        "NotImplemented" => FaultKind::NotImplemented,
        "AlreadyExists" | "DuplicateName" => FaultKind::AlreadyExists,
        "NotFound" => FaultKind::NotFound,
        "RequestCanceled" => FaultKind::RequestCanceled,
        _ => FaultKind::Other,
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message == self.type_name || self.message.is_empty() {
            write!(f, "{}", self.type_name)
        } else {
            write!(f, "{}: {}", self.type_name, self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Node {
        Node::parse(xml).unwrap()
    }

    #[test]
    fn detail_decodes_by_xsi_type_with_fields() {
        let n = parse(
            r#"<ManagedObjectNotFoundFault xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ManagedObjectNotFound"><obj type="VirtualMachine">vm-9999</obj></ManagedObjectNotFoundFault>"#,
        );
        let f = Fault::from_node(&n, "managed object not found: VirtualMachine:vm-9999");
        assert_eq!(
            f.kind,
            FaultKind::ManagedObjectNotFound {
                obj: Some(MoRef::new("VirtualMachine", "vm-9999"))
            }
        );
        assert_eq!(
            f.to_string(),
            "ManagedObjectNotFound: managed object not found: VirtualMachine:vm-9999"
        );
    }

    #[test]
    fn element_name_is_the_fallback_and_subtypes_map_to_parents() {
        let f = Fault::from_node(
            &parse("<CannotCreateFileFault><file>[ds] a</file></CannotCreateFileFault>"),
            "",
        );
        assert_eq!(f.type_name, "CannotCreateFile");
        assert_eq!(
            f.kind,
            FaultKind::FileFault {
                file: Some("[ds] a".into())
            }
        );
        assert!(f.is_file_fault());
        assert_eq!(f.message, "CannotCreateFile");
        assert_eq!(
            Fault::new("ApplicationQuiesceFault", "x").kind,
            FaultKind::SnapshotFault
        );
        assert_eq!(
            Fault::new("InvalidHostState", "x").kind,
            FaultKind::InvalidState
        );
        assert_eq!(
            Fault::new("InvalidLogin", "x").kind,
            FaultKind::InvalidLogin
        );
    }

    #[test]
    fn unknown_faults_keep_name_and_message() {
        let f = Fault::from_node(
            &parse(
                r#"<x xmlns:q="http://www.w3.org/2001/XMLSchema-instance" q:type="LicenseUsageFault"/>"#,
            ),
            "over limit",
        );
        assert_eq!(f.kind, FaultKind::Other);
        assert_eq!(f.type_name, "LicenseUsageFault");
        assert_eq!(f.to_string(), "LicenseUsageFault: over limit");
    }

    #[test]
    fn power_state_and_permission_fields() {
        let f = Fault::from_node(
            &parse(
                "<f><requestedState>poweredOff</requestedState><existingState>poweredOn</existingState></f>",
            ),
            "",
        );
        assert_eq!(f.kind, FaultKind::Other);
        let n = parse(
            r#"<InvalidPowerStateFault><requestedState>poweredOff</requestedState><existingState>poweredOn</existingState></InvalidPowerStateFault>"#,
        );
        assert_eq!(
            Fault::from_node(&n, "").kind,
            FaultKind::InvalidPowerState {
                requested_state: Some("poweredOff".into()),
                existing_state: Some("poweredOn".into())
            }
        );
        let n = parse(
            r#"<NoPermissionFault><object type="Folder">group-d1</object><privilegeId>System.View</privilegeId></NoPermissionFault>"#,
        );
        assert_eq!(
            Fault::from_node(&n, "denied").kind,
            FaultKind::NoPermission {
                object: Some(MoRef::new("Folder", "group-d1")),
                privilege_id: Some("System.View".into())
            }
        );
    }
}

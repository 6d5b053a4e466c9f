//! Session management: RetrieveServiceContent, Login, Logout and liveness checks.
//!
//! The session is the `vmware_soap_session` cookie the HTTP transport keeps. Sessions that are
//! never logged out count against a server-wide cap, so [`Client::logout`] belongs at the end of
//! every job; a long job calls [`Client::keep_alive`] now and then (datastore downloads do not
//! renew the SOAP session).

use serde::Serialize;

use crate::client::{CallKind, Client};
use crate::error::{Error, Result};
use crate::fault::FaultKind;
use crate::types::MoRef;
use crate::xml::{Node, Writer};

/// `ServiceContent.about`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AboutInfo {
    /// Product name, e.g. "VMware vCenter Server".
    pub name: String,
    /// Full name with version and build.
    pub full_name: String,
    /// Product version, e.g. "8.0.3".
    pub version: String,
    /// Build number.
    pub build: String,
    /// `VirtualCenter` or `HostAgent` (ESXi).
    pub api_type: String,
    /// vim25 API version, e.g. "8.0.3.0".
    pub api_version: String,
    /// The vCenter instance UUID (empty on ESXi).
    pub instance_uuid: String,
}

/// The morefs of the managers vbm uses, from RetrieveServiceContent. Always use these; never
/// hard-code manager ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceContent {
    /// Root folder of the inventory.
    pub root_folder: MoRef,
    /// The property collector.
    pub property_collector: MoRef,
    /// The view manager (container views).
    pub view_manager: MoRef,
    /// The session manager.
    pub session_manager: MoRef,
    /// The file manager (MakeDirectory, DeleteDatastoreFile).
    pub file_manager: Option<MoRef>,
    /// The virtual disk manager.
    pub virtual_disk_manager: Option<MoRef>,
    /// The search index.
    pub search_index: Option<MoRef>,
    /// Server identity and version.
    pub about: AboutInfo,
}

impl ServiceContent {
    fn from_node(node: &Node) -> Result<Self> {
        let required = |name: &str| {
            node.child(name)
                .ok_or_else(|| Error::Xml(format!("ServiceContent lacks {name}")))
                .and_then(MoRef::from_node)
        };
        let optional = |name: &str| node.child(name).and_then(|n| MoRef::from_node(n).ok());
        let about = node.child("about").map_or_else(AboutInfo::default, |a| {
            let t = |n: &str| a.child_text(n).unwrap_or_default().to_owned();
            AboutInfo {
                name: t("name"),
                full_name: t("fullName"),
                version: t("version"),
                build: t("build"),
                api_type: t("apiType"),
                api_version: t("apiVersion"),
                instance_uuid: t("instanceUuid"),
            }
        });
        Ok(Self {
            root_folder: required("rootFolder")?,
            property_collector: required("propertyCollector")?,
            view_manager: required("viewManager")?,
            session_manager: required("sessionManager")?,
            file_manager: optional("fileManager"),
            virtual_disk_manager: optional("virtualDiskManager"),
            search_index: optional("searchIndex"),
            about,
        })
    }
}

/// The session returned by Login.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserSession {
    /// Session key (for SessionIsActive; **not** the cookie).
    pub key: String,
    /// The logged-in user.
    pub user_name: String,
    /// Login time as the server wrote it.
    pub login_time: String,
}

impl UserSession {
    fn from_node(node: &Node) -> Self {
        let t = |n: &str| node.child_text(n).unwrap_or_default().to_owned();
        Self {
            key: t("key"),
            user_name: t("userName"),
            login_time: t("loginTime"),
        }
    }
}

impl Client {
    pub(crate) async fn retrieve_service_content(&self) -> Result<ServiceContent> {
        let mut w = Writer::new();
        w.moref("_this", &MoRef::new("ServiceInstance", "ServiceInstance"));
        let response = self
            .invoke_raw("RetrieveServiceContent", &w.finish(), CallKind::Idempotent)
            .await?;
        let returnval = response
            .child("returnval")
            .ok_or_else(|| Error::Xml("RetrieveServiceContent without returnval".into()))?;
        ServiceContent::from_node(returnval)
    }

    /// Logs in with the client's credentials (used at connect and for re-login).
    pub(crate) async fn login(&self) -> Result<()> {
        let content = self.service_content()?;
        let (user, password) = self.credentials();
        let mut w = Writer::new();
        w.moref("_this", &content.session_manager)
            .text("userName", user)
            .text("password", password.expose());
        // Not idempotent: a repeated Login after a lost answer would leave an orphan session.
        match self
            .invoke_raw("Login", &w.finish(), CallKind::NotIdempotent)
            .await
        {
            Ok(response) => {
                let session = response.child("returnval").map(UserSession::from_node);
                tracing::debug!(user, "logged in to vCenter");
                self.set_user_session(session);
                Ok(())
            }
            Err(Error::Fault { fault, .. }) if fault.kind == FaultKind::InvalidLogin => {
                Err(Error::InvalidLogin {
                    user: user.to_owned(),
                    message: fault.message,
                })
            }
            Err(err) => Err(err),
        }
    }

    /// Logs out and frees the server-side session. Later calls on this client (and its clones)
    /// fail instead of logging in again. An already expired session counts as logged out.
    ///
    /// # Errors
    /// Transport errors; a `NotAuthenticated` fault is not an error here.
    pub async fn logout(&self) -> Result<()> {
        let content = self.service_content()?;
        let mut w = Writer::new();
        w.moref("_this", &content.session_manager);
        let result = self
            .invoke_raw("Logout", &w.finish(), CallKind::NotIdempotent)
            .await;
        self.mark_logged_out();
        self.set_user_session(None);
        match result {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_authenticated() => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Whether the server still knows our session: reads `SessionManager.currentSession`
    /// (works on vCenter and ESXi, unlike SessionIsActive). Never logs in.
    ///
    /// # Errors
    /// Transport errors; an expired session is `Ok(false)`.
    pub async fn session_is_active(&self) -> Result<bool> {
        let content = self.service_content()?;
        let mut w = Writer::new();
        w.moref("_this", &content.property_collector);
        w.start("specSet")
            .start("propSet")
            .text("type", "SessionManager")
            .text("pathSet", "currentSession")
            .end("propSet")
            .start("objectSet")
            .moref("obj", &content.session_manager)
            .end("objectSet")
            .end("specSet")
            .start("options")
            .end("options");
        match self
            .invoke_raw("RetrievePropertiesEx", &w.finish(), CallKind::Idempotent)
            .await
        {
            Ok(response) => Ok(response
                .child("returnval")
                .and_then(|r| r.child("objects"))
                .is_some_and(|o| {
                    o.children_named("propSet")
                        .any(|p| p.child("val").is_some())
                })),
            Err(err) if err.is_not_authenticated() => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Keeps a long job's session alive: checks it and logs in again if it expired.
    ///
    /// # Errors
    /// [`Error::InvalidLogin`] if the password no longer works; transport errors.
    pub async fn keep_alive(&self) -> Result<()> {
        let generation = self.login_count();
        if self.session_is_active().await? {
            return Ok(());
        }
        self.relogin(generation).await
    }
}

//! Property retrieval: RetrievePropertiesEx with the ContinueRetrievePropertiesEx paging loop,
//! container views, and parent traversal.
//!
//! A listing is complete or an error, never silently partial (N12): a failed continuation turns
//! the whole retrieval into [`Error::IncompleteListing`]. Container views and paging tokens live
//! in the session, so a retrieval that loses its session is restarted from scratch after a
//! re-login (see [`Client::with_session`]).

use crate::client::{CallKind, Client};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::types::MoRef;
use crate::xml::{Node, Writer};

/// Which properties to read from objects of one type.
#[derive(Debug, Clone)]
pub(crate) struct PropertySpec {
    pub(crate) kind: &'static str,
    pub(crate) paths: &'static [&'static str],
}

/// Which objects to read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ObjectSource<'a> {
    /// Exactly these objects.
    Objects(&'a [MoRef]),
    /// Everything a container view holds (the view itself is skipped).
    View(&'a MoRef),
    /// The object itself and every ancestor up to the root folder (through `parent`, and
    /// `parentVApp` for VMs in a vApp).
    WithAncestors(&'a MoRef),
}

/// One object's properties as returned.
#[derive(Debug, Clone)]
pub(crate) struct ObjectContent {
    pub(crate) obj: MoRef,
    pub(crate) props: Vec<(String, Node)>,
    /// Properties the server could not read, with the fault.
    pub(crate) missing: Vec<(String, Fault)>,
}

impl ObjectContent {
    /// A property's `val` element.
    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        self.props.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }

    /// A string property.
    pub(crate) fn text(&self, path: &str) -> Option<&str> {
        self.get(path).map(|v| v.text.as_str())
    }

    /// A moref property.
    pub(crate) fn moref(&self, path: &str) -> Option<MoRef> {
        self.get(path).and_then(|v| MoRef::from_node(v).ok())
    }

    /// An `ArrayOfManagedObjectReference` property.
    pub(crate) fn morefs(&self, path: &str) -> Vec<MoRef> {
        self.get(path)
            .map(|v| {
                v.children
                    .iter()
                    .filter_map(|c| MoRef::from_node(c).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A boolean property.
    ///
    /// # Errors
    /// [`Error::Xml`] when present but not a boolean.
    pub(crate) fn bool(&self, path: &str) -> Result<Option<bool>> {
        self.get(path).map(Node::as_bool).transpose()
    }

    fn from_node(node: &Node) -> Result<Self> {
        let obj = node
            .child("obj")
            .ok_or_else(|| Error::Xml("ObjectContent without obj".into()))
            .and_then(MoRef::from_node)?;
        let mut props = Vec::new();
        for prop in node.children_named("propSet") {
            let name = prop.required_text("name")?.to_owned();
            // An absent <val> means "unset" (seen in update sets); skip it.
            if let Some(val) = prop.child("val") {
                props.push((name, val.clone()));
            }
        }
        let mut missing = Vec::new();
        for m in node.children_named("missingSet") {
            let path = m.child_text("path").unwrap_or_default().to_owned();
            let fault = m.child("fault").map_or_else(
                || Fault::new("Unknown", "property could not be read"),
                |f| {
                    let message = f.child_text("localizedMessage").unwrap_or_default();
                    f.child("fault").map_or_else(
                        || Fault::new("Unknown", message),
                        |inner| Fault::from_node(inner, message),
                    )
                },
            );
            missing.push((path, fault));
        }
        Ok(Self {
            obj,
            props,
            missing,
        })
    }
}

fn write_specs(w: &mut Writer, specs: &[PropertySpec], source: &ObjectSource<'_>) {
    // PropertyFilterSpec: propSet*, objectSet* (WSDL order).
    w.start("specSet");
    for spec in specs {
        // PropertySpec: type, all?, pathSet*.
        w.start("propSet")
            .text("type", spec.kind)
            .bool("all", false);
        for path in spec.paths {
            w.text("pathSet", path);
        }
        w.end("propSet");
    }
    match source {
        ObjectSource::Objects(objs) => {
            for obj in *objs {
                w.start("objectSet")
                    .moref("obj", obj)
                    .bool("skip", false)
                    .end("objectSet");
            }
        }
        ObjectSource::View(view) => {
            // ObjectSpec: obj, skip?, selectSet*; TraversalSpec: name?, type, path, skip?, selectSet*.
            w.start("objectSet").moref("obj", view).bool("skip", true);
            w.start_typed("selectSet", "TraversalSpec")
                .text("name", "viewToObjects")
                .text("type", "ContainerView")
                .text("path", "view")
                .bool("skip", false)
                .end("selectSet");
            w.end("objectSet");
        }
        ObjectSource::WithAncestors(obj) => {
            w.start("objectSet").moref("obj", obj).bool("skip", false);
            w.start_typed("selectSet", "TraversalSpec")
                .text("name", "up")
                .text("type", "ManagedEntity")
                .text("path", "parent")
                .bool("skip", false);
            w.start_typed("selectSet", "SelectionSpec")
                .text("name", "up")
                .end("selectSet");
            w.end("selectSet");
            if obj.is("VirtualMachine") {
                w.start_typed("selectSet", "TraversalSpec")
                    .text("name", "vapp")
                    .text("type", "VirtualMachine")
                    .text("path", "parentVApp")
                    .bool("skip", false);
                w.start_typed("selectSet", "SelectionSpec")
                    .text("name", "up")
                    .end("selectSet");
                w.end("selectSet");
            }
            w.end("objectSet");
        }
    }
    w.end("specSet");
}

/// One page: the objects and the continuation token.
fn parse_result(response: &Node) -> Result<(Vec<ObjectContent>, Option<String>)> {
    // An absent returnval means "nothing matched".
    let Some(result) = response.child("returnval") else {
        return Ok((Vec::new(), None));
    };
    let token = result
        .child_text("token")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let objects = result
        .children_named("objects")
        .map(ObjectContent::from_node)
        .collect::<Result<_>>()?;
    Ok((objects, token))
}

impl Client {
    /// RetrievePropertiesEx, following continuation tokens to the end.
    ///
    /// # Errors
    /// The first call's error as is; a failure after the first page as
    /// [`Error::IncompleteListing`] (the partial result is dropped).
    pub(crate) async fn retrieve(
        &self,
        specs: &[PropertySpec],
        source: ObjectSource<'_>,
    ) -> Result<Vec<ObjectContent>> {
        let collector = self.service_content()?.property_collector;
        let mut w = Writer::new();
        w.moref("_this", &collector);
        write_specs(&mut w, specs, &source);
        w.start("options")
            .num("maxObjects", self.config().page_size)
            .end("options");
        let first = self
            .invoke_raw("RetrievePropertiesEx", &w.finish(), CallKind::Idempotent)
            .await?;
        let (mut objects, mut token) = parse_result(&first)?;
        let mut pages = 1;
        while let Some(current) = token.take() {
            let mut w = Writer::new();
            w.moref("_this", &collector).text("token", &current);
            // A continuation consumes its token: not repeatable after an unknown outcome.
            let page = match self
                .invoke_raw(
                    "ContinueRetrievePropertiesEx",
                    &w.finish(),
                    CallKind::NotIdempotent,
                )
                .await
                .and_then(|r| parse_result(&r))
            {
                Ok(page) => page,
                Err(err) => {
                    self.cancel_retrieve(&collector, &current).await;
                    return Err(Error::IncompleteListing {
                        pages,
                        source: Box::new(err),
                    });
                }
            };
            pages += 1;
            if page.1.as_deref() == Some(current.as_str()) && page.0.is_empty() {
                let err = Error::Xml(format!(
                    "ContinueRetrievePropertiesEx returned the same token {current:?} and no objects"
                ));
                self.cancel_retrieve(&collector, &current).await;
                return Err(Error::IncompleteListing {
                    pages,
                    source: Box::new(err),
                });
            }
            objects.extend(page.0);
            token = page.1;
        }
        tracing::debug!(objects = objects.len(), pages, "retrieved properties");
        Ok(objects)
    }

    /// Best effort: frees the server-side result set of an abandoned paged retrieval.
    async fn cancel_retrieve(&self, collector: &MoRef, token: &str) {
        let mut w = Writer::new();
        w.moref("_this", collector).text("token", token);
        if let Err(err) = self
            .invoke_raw(
                "CancelRetrievePropertiesEx",
                &w.finish(),
                CallKind::Idempotent,
            )
            .await
        {
            tracing::debug!(error = %err, "CancelRetrievePropertiesEx failed");
        }
    }

    /// Reads properties of the given objects, re-logging in once if the session expired.
    ///
    /// # Errors
    /// As [`Client::retrieve`].
    pub(crate) async fn retrieve_objects(
        &self,
        specs: &[PropertySpec],
        objects: &[MoRef],
    ) -> Result<Vec<ObjectContent>> {
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        self.with_session(|| self.retrieve(specs, ObjectSource::Objects(objects)))
            .await
    }

    /// Reads an object and all its ancestors.
    ///
    /// # Errors
    /// As [`Client::retrieve`].
    pub(crate) async fn retrieve_with_ancestors(
        &self,
        specs: &[PropertySpec],
        object: &MoRef,
    ) -> Result<Vec<ObjectContent>> {
        self.with_session(|| self.retrieve(specs, ObjectSource::WithAncestors(object)))
            .await
    }

    /// Creates a container view of `types` under `container`.
    ///
    /// # Errors
    /// Faults and transport errors.
    pub(crate) async fn create_container_view(
        &self,
        container: &MoRef,
        types: &[&str],
        recursive: bool,
    ) -> Result<MoRef> {
        let view_manager = self.service_content()?.view_manager;
        let mut w = Writer::new();
        w.moref("_this", &view_manager)
            .moref("container", container);
        for ty in types {
            w.text("type", ty);
        }
        w.bool("recursive", recursive);
        let response = self
            .invoke_raw("CreateContainerView", &w.finish(), CallKind::Idempotent)
            .await?;
        response
            .child("returnval")
            .ok_or_else(|| Error::Xml("CreateContainerView without returnval".into()))
            .and_then(MoRef::from_node)
    }

    /// Destroys a view (views otherwise live until the session ends).
    ///
    /// # Errors
    /// Faults and transport errors.
    pub(crate) async fn destroy_view(&self, view: &MoRef) -> Result<()> {
        let mut w = Writer::new();
        w.moref("_this", view);
        self.invoke_raw("DestroyView", &w.finish(), CallKind::Idempotent)
            .await
            .map(|_| ())
    }

    /// Everything of `types` below `container` (recursively), through a container view that is
    /// always destroyed afterwards. Re-logs in and starts over once if the session expired.
    ///
    /// # Errors
    /// As [`Client::retrieve`]; the listing is complete or an error.
    pub(crate) async fn retrieve_view(
        &self,
        container: &MoRef,
        types: &[&str],
        specs: &[PropertySpec],
    ) -> Result<Vec<ObjectContent>> {
        self.with_session(|| async {
            let view = self.create_container_view(container, types, true).await?;
            let result = self.retrieve(specs, ObjectSource::View(&view)).await;
            if let Err(err) = self.destroy_view(&view).await {
                tracing::debug!(error = %err, view = %view, "DestroyView failed");
            }
            result
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_serialises_in_wsdl_order() {
        let mut w = Writer::new();
        let view = MoRef::new("ContainerView", "session[x]y");
        write_specs(
            &mut w,
            &[PropertySpec {
                kind: "VirtualMachine",
                paths: &["name", "config.uuid"],
            }],
            &ObjectSource::View(&view),
        );
        assert_eq!(
            w.finish(),
            "<specSet><propSet><type>VirtualMachine</type><all>false</all><pathSet>name</pathSet>\
<pathSet>config.uuid</pathSet></propSet><objectSet><obj type=\"ContainerView\">session[x]y</obj>\
<skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><name>viewToObjects</name>\
<type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet>"
        );
    }

    #[test]
    fn ancestor_traversal_recurses_by_name() {
        let mut w = Writer::new();
        let vm = MoRef::new("VirtualMachine", "vm-1");
        write_specs(&mut w, &[], &ObjectSource::WithAncestors(&vm));
        let xml = w.finish();
        assert!(xml.contains("<path>parent</path><skip>false</skip><selectSet xsi:type=\"SelectionSpec\"><name>up</name></selectSet>"));
        assert!(xml.contains("<path>parentVApp</path>"));
    }

    #[test]
    fn result_pages_decode_with_unknown_elements_and_missing_sets() {
        let xml = r#"<RetrievePropertiesExResponse xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
          <returnval><token>t1</token><futureField>x</futureField>
            <objects><obj type="VirtualMachine">vm-1</obj>
              <propSet><name>name</name><val xsi:type="xsd:string">a</val></propSet>
              <propSet><name>snapshot</name></propSet>
              <missingSet><path>config</path><fault><fault xsi:type="NoPermission"/><localizedMessage>denied</localizedMessage></fault></missingSet>
            </objects></returnval></RetrievePropertiesExResponse>"#;
        let node = Node::parse(xml).unwrap();
        let (objects, token) = parse_result(&node).unwrap();
        assert_eq!(token.as_deref(), Some("t1"));
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].text("name"), Some("a"));
        assert!(objects[0].get("snapshot").is_none());
        assert_eq!(objects[0].missing[0].0, "config");
        assert_eq!(objects[0].missing[0].1.message, "denied");
        let empty = Node::parse(r#"<RetrievePropertiesExResponse xmlns="urn:vim25"/>"#).unwrap();
        assert!(parse_result(&empty).unwrap().0.is_empty());
    }
}

#[cfg(test)]
mod paging_tests {
    use crate::error::Error;
    use crate::fake::{self, Fake, fault, ok};

    fn page(token: Option<&str>, vms: &[&str]) -> String {
        let mut s = String::from("<returnval>");
        if let Some(t) = token {
            s.push_str(&format!("<token>{t}</token>"));
        }
        for vm in vms {
            s.push_str(&format!(
                "<objects><obj type=\"VirtualMachine\">{vm}</obj><propSet><name>name</name><val xsi:type=\"xsd:string\">{vm} name</val></propSet>\
<propSet><name>config.instanceUuid</name><val xsi:type=\"xsd:string\">uuid-{vm}</val></propSet></objects>"
            ));
        }
        s.push_str("</returnval>");
        s
    }

    #[tokio::test]
    async fn paging_follows_tokens_to_the_end() {
        let f = Fake::new(|m, body, n| match (m, n) {
            ("RetrievePropertiesEx", _) => {
                assert!(body.contains("<options><maxObjects>2</maxObjects></options>"));
                Some(ok(m, &page(Some("t1"), &["vm-1", "vm-2"])))
            }
            ("ContinueRetrievePropertiesEx", 1) => {
                assert!(body.contains("<token>t1</token>"));
                Some(ok(m, &page(Some("t2"), &["vm-3", "vm-4"])))
            }
            ("ContinueRetrievePropertiesEx", _) => {
                assert!(body.contains("<token>t2</token>"));
                Some(ok(m, &page(None, &["vm-5"])))
            }
            _ => None,
        });
        let c = fake::client(&f).await.unwrap();
        let refs = c.list_vm_refs().await.unwrap();
        let names: Vec<_> = refs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "vm-1 name",
                "vm-2 name",
                "vm-3 name",
                "vm-4 name",
                "vm-5 name"
            ]
        );
        assert_eq!(refs[4].instance_uuid.as_deref(), Some("uuid-vm-5"));
        assert_eq!(f.count("CreateContainerView"), 1);
        assert_eq!(f.count("DestroyView"), 1);
        let view = &f.bodies("CreateContainerView")[0];
        assert!(view.contains("<container type=\"Folder\">group-d1</container><type>VirtualMachine</type><recursive>true</recursive>"));
    }

    // covers N12: a failing continuation makes the whole listing an error, never a partial one.
    #[tokio::test]
    async fn a_failed_continuation_fails_the_whole_listing() {
        let f = Fake::new(|m, _, _| match m {
            "RetrievePropertiesEx" => Some(ok(m, &page(Some("t1"), &["vm-1", "vm-2"]))),
            "ContinueRetrievePropertiesEx" => Some(fault(500, "InvalidArgument", "token expired")),
            _ => None,
        });
        let c = fake::client(&f).await.unwrap();
        let err = c.list_vm_refs().await.unwrap_err();
        assert!(
            matches!(err, Error::IncompleteListing { pages: 1, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("inventory listing incomplete"),
            "{err}"
        );
        assert_eq!(
            f.count("ContinueRetrievePropertiesEx"),
            1,
            "a continuation is not repeated"
        );
        assert_eq!(f.count("CancelRetrievePropertiesEx"), 1);
        assert_eq!(f.count("DestroyView"), 1);
        assert!(c.list_vms().await.is_err());
        assert!(c.inventory().await.is_err());
    }

    #[tokio::test]
    async fn a_network_error_mid_listing_is_incomplete_and_retryable() {
        let f = Fake::new(|m, _, _| match m {
            "RetrievePropertiesEx" => Some(ok(m, &page(Some("t1"), &["vm-1"]))),
            "ContinueRetrievePropertiesEx" => Some(Err(Error::Network {
                context: m.into(),
                message: "connection reset".into(),
            })),
            _ => None,
        });
        let c = fake::client(&f).await.unwrap();
        let err = c.list_vm_refs().await.unwrap_err();
        assert!(matches!(err, Error::IncompleteListing { .. }));
        assert!(err.is_retryable());
        assert_eq!(f.count("ContinueRetrievePropertiesEx"), 1);
    }

    #[tokio::test]
    async fn a_token_that_never_advances_is_an_error_not_a_loop() {
        let f = Fake::new(|m, _, _| match m {
            "RetrievePropertiesEx" => Some(ok(m, &page(Some("t1"), &["vm-1"]))),
            "ContinueRetrievePropertiesEx" => Some(ok(m, &page(Some("t1"), &[]))),
            _ => None,
        });
        let c = fake::client(&f).await.unwrap();
        assert!(matches!(
            c.list_vm_refs().await,
            Err(Error::IncompleteListing { .. })
        ));
    }

    #[tokio::test]
    async fn an_expired_session_restarts_the_listing_from_scratch() {
        let f = Fake::new(|m, _, n| match (m, n) {
            ("RetrievePropertiesEx", _) => Some(ok(m, &page(Some("t1"), &["vm-1"]))),
            ("ContinueRetrievePropertiesEx", 1) => Some(fault(500, "NotAuthenticated", "expired")),
            ("ContinueRetrievePropertiesEx", _) => Some(ok(m, &page(None, &["vm-2"]))),
            _ => None,
        });
        let c = fake::client(&f).await.unwrap();
        let refs = c.list_vm_refs().await.unwrap();
        assert_eq!(refs.len(), 2, "no duplicates from the abandoned first pass");
        assert_eq!(f.count("CreateContainerView"), 2);
        assert_eq!(f.count("Login"), 2);
    }

    #[tokio::test]
    async fn an_empty_returnval_is_an_empty_listing() {
        let f = Fake::new(|m, _, _| (m == "RetrievePropertiesEx").then(|| ok(m, "")));
        let c = fake::client(&f).await.unwrap();
        assert!(c.list_vm_refs().await.unwrap().is_empty());
    }
}

//! XML in and out: an owned element tree decoded from SOAP responses, and a small writer for
//! requests.
//!
//! Responses are parsed with `roxmltree` (ADR 0010) and copied into [`Node`], an owned tree that
//! keeps only what vim25 decoding needs: the element's local name and namespace, its `xsi:type`
//! resolved **by namespace URI** (vcsim writes `XMLSchema-instance:type`, vCenter `xsi:type`), its
//! unqualified attributes (the moref `type`) and its text. Decoders look children up by local name
//! and ignore everything they do not know, so newer servers with extra elements decode fine.
//!
//! Requests are written with [`Writer`], which escapes every text and attribute value; the caller
//! is responsible for emitting children in WSDL order (a real vCenter parses strictly).

use crate::error::{Error, Result};

/// The XML Schema instance namespace: `xsi:type` lives here, whatever the prefix.
pub(crate) const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// The SOAP 1.1 envelope namespace.
pub(crate) const SOAPENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The vim25 namespace of every method and data object.
pub(crate) const VIM25_NS: &str = "urn:vim25";

/// Deepest element nesting accepted (snapshot trees nest; nothing legitimate nests this deep).
const MAX_DEPTH: usize = 512;

/// One element of a parsed response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Node {
    /// Local name (no prefix).
    pub(crate) name: String,
    /// Namespace URI of the element, empty when none.
    pub(crate) namespace: String,
    /// The `xsi:type` value with any QName prefix stripped (`xsd:string` → `string`).
    pub(crate) xsi_type: Option<String>,
    /// Attributes without a namespace (e.g. the moref `type`).
    pub(crate) attributes: Vec<(String, String)>,
    /// Concatenated direct text content (entities decoded).
    pub(crate) text: String,
    /// Child elements in document order.
    pub(crate) children: Vec<Node>,
}

impl Node {
    /// Parses a whole document and returns its root element.
    ///
    /// # Errors
    /// [`Error::Xml`] for malformed or truncated XML (never panics).
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let options = roxmltree::ParsingOptions {
            allow_dtd: false,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(text, options)
            .map_err(|e| Error::Xml(format!("malformed XML: {e}")))?;
        Self::from_roxml(doc.root_element(), 0)
    }

    fn from_roxml(node: roxmltree::Node<'_, '_>, depth: usize) -> Result<Self> {
        if depth > MAX_DEPTH {
            return Err(Error::Xml(format!(
                "XML nested deeper than {MAX_DEPTH} elements"
            )));
        }
        let tag = node.tag_name();
        let xsi_type = node
            .attribute((XSI_NS, "type"))
            .map(|v| strip_prefix(v).to_owned());
        let attributes = node
            .attributes()
            .filter(|a| a.namespace().is_none())
            .map(|a| (a.name().to_owned(), a.value().to_owned()))
            .collect();
        let mut text = String::new();
        let mut children = Vec::new();
        for child in node.children() {
            if child.is_element() {
                children.push(Self::from_roxml(child, depth + 1)?);
            } else if child.is_text() {
                text.push_str(child.text().unwrap_or_default());
            }
        }
        Ok(Self {
            name: tag.name().to_owned(),
            namespace: tag.namespace().unwrap_or_default().to_owned(),
            xsi_type,
            attributes,
            text,
            children,
        })
    }

    /// The first child with this local name.
    pub(crate) fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this local name, in order.
    pub(crate) fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child with this name, if present.
    pub(crate) fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// The text of a required child.
    ///
    /// # Errors
    /// [`Error::Xml`] naming the missing element.
    pub(crate) fn required_text(&self, name: &str) -> Result<&str> {
        self.child_text(name).ok_or_else(|| {
            Error::Xml(format!(
                "<{}> lacks the required element <{name}>",
                self.name
            ))
        })
    }

    /// A boolean child (`true`/`1`), absent → `None`.
    ///
    /// # Errors
    /// [`Error::Xml`] when the text is not a boolean.
    pub(crate) fn child_bool(&self, name: &str) -> Result<Option<bool>> {
        self.child(name).map(Node::as_bool).transpose()
    }

    /// An integer child, absent → `None`.
    ///
    /// # Errors
    /// [`Error::Xml`] when the text is not an integer of that type.
    pub(crate) fn child_num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.child(name).map(Node::as_num).transpose()
    }

    /// This element's text as a boolean.
    ///
    /// # Errors
    /// [`Error::Xml`] when the text is not `true`/`false`/`1`/`0`.
    pub(crate) fn as_bool(&self) -> Result<bool> {
        match self.text.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(Error::Xml(format!(
                "<{}> is not a boolean: {other:?}",
                self.name
            ))),
        }
    }

    /// This element's text as a number.
    ///
    /// # Errors
    /// [`Error::Xml`] when the text does not parse as `T`.
    pub(crate) fn as_num<T: std::str::FromStr>(&self) -> Result<T> {
        self.text.trim().parse().map_err(|_| {
            Error::Xml(format!(
                "<{}> is not a valid number: {:?}",
                self.name, self.text
            ))
        })
    }

    /// An unqualified attribute.
    pub(crate) fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The xsi:type, or `""` when absent.
    pub(crate) fn type_name(&self) -> &str {
        self.xsi_type.as_deref().unwrap_or_default()
    }
}

/// `xsd:string` → `string`; `VirtualDisk` stays as it is.
fn strip_prefix(qname: &str) -> &str {
    qname.rsplit_once(':').map_or(qname, |(_, local)| local)
}

/// Builds a request body. Every text and attribute value goes through [`escape`].
#[derive(Debug, Default)]
pub(crate) struct Writer {
    out: String,
}

impl Writer {
    /// An empty writer.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Opens `<name>`.
    pub(crate) fn start(&mut self, name: &str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    /// Opens `<name xsi:type="ty">` for polymorphic fields.
    pub(crate) fn start_typed(&mut self, name: &str, ty: &str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push_str(" xsi:type=\"");
        escape_into(&mut self.out, ty);
        self.out.push_str("\">");
        self
    }

    /// Closes `</name>`.
    pub(crate) fn end(&mut self, name: &str) -> &mut Self {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    /// `<name>text</name>`, escaped.
    pub(crate) fn text(&mut self, name: &str, text: &str) -> &mut Self {
        self.start(name);
        escape_into(&mut self.out, text);
        self.end(name)
    }

    /// `<name>text</name>` when `Some`.
    pub(crate) fn opt_text(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(text) = text {
            self.text(name, text);
        }
        self
    }

    /// `<name>true|false</name>`.
    pub(crate) fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.text(name, if value { "true" } else { "false" })
    }

    /// `<name>123</name>`.
    pub(crate) fn num(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        self.text(name, &value.to_string())
    }

    /// A ManagedObjectReference: `<name type="Kind">value</name>`.
    pub(crate) fn moref(&mut self, name: &str, moref: &crate::types::MoRef) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push_str(" type=\"");
        escape_into(&mut self.out, &moref.kind);
        self.out.push_str("\">");
        escape_into(&mut self.out, &moref.value);
        self.end(name)
    }

    /// An optional ManagedObjectReference.
    pub(crate) fn opt_moref(
        &mut self,
        name: &str,
        moref: Option<&crate::types::MoRef>,
    ) -> &mut Self {
        if let Some(moref) = moref {
            self.moref(name, moref);
        }
        self
    }

    /// The XML written so far.
    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// Appends `text` escaped for element content and attribute values.
///
/// Characters XML 1.0 cannot carry at all (NUL and most C0 controls) become U+FFFD; the client
/// refuses credentials containing them before they get here.
pub(crate) fn escape_into(out: &mut String, text: &str) {
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Kept literally a CR would be normalised away by the server's parser.
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(ch),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

/// Whether XML 1.0 can carry this character.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes a whole string (for tests and small uses).
#[cfg(test)]
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::new();
    escape_into(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsi_type_resolves_by_namespace_uri_for_both_prefixes() {
        let vcenter = r#"<a xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><val xsi:type="xsd:string">x</val></a>"#;
        let vcsim = r#"<a xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"><val XMLSchema-instance:type="ArrayOfVirtualDevice"/></a>"#;
        let a = Node::parse(vcenter).unwrap();
        assert_eq!(a.child("val").unwrap().xsi_type.as_deref(), Some("string"));
        let b = Node::parse(vcsim).unwrap();
        assert_eq!(b.child("val").unwrap().type_name(), "ArrayOfVirtualDevice");
    }

    #[test]
    fn a_type_attribute_in_another_namespace_is_not_xsi_type() {
        let doc =
            r#"<a xmlns:evil="urn:other"><val evil:type="VirtualDisk" type="Folder">g</val></a>"#;
        let a = Node::parse(doc).unwrap();
        let val = a.child("val").unwrap();
        assert_eq!(val.xsi_type, None);
        assert_eq!(val.attribute("type"), Some("Folder"));
    }

    #[test]
    fn truncated_and_malformed_xml_are_errors() {
        for bad in [
            "",
            "<a><b>",
            "<a></b>",
            "not xml",
            "<a>&bogus;</a>",
            "<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
        ] {
            assert!(
                matches!(Node::parse(bad), Err(Error::Xml(_))),
                "{bad:?} should fail"
            );
        }
    }

    #[test]
    fn absurd_nesting_is_an_error_not_a_stack_overflow() {
        let doc = format!("{}{}", "<a>".repeat(600), "</a>".repeat(600));
        assert!(Node::parse(&doc).is_err());
    }

    #[test]
    fn entities_and_non_ascii_text_decode() {
        let a = Node::parse("<a><n>caf\u{e9} &amp; &lt;x&gt; &#x1F600;</n></a>").unwrap();
        assert_eq!(a.child_text("n"), Some("caf\u{e9} & <x> \u{1F600}"));
    }

    #[test]
    fn writer_escapes_text_and_attributes() {
        let mut w = Writer::new();
        w.text("name", "a<b>&\"c'\r\u{0}");
        w.moref("_this", &crate::types::MoRef::new("Folder", "x\"&y"));
        assert_eq!(
            w.finish(),
            "<name>a&lt;b&gt;&amp;&quot;c&apos;&#13;\u{FFFD}</name><_this type=\"Folder\">x&quot;&amp;y</_this>"
        );
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn numbers_and_booleans_are_checked() {
        let a = Node::parse("<a><n> 42 </n><b>true</b><c>maybe</c></a>").unwrap();
        assert_eq!(a.child_num::<i64>("n").unwrap(), Some(42));
        assert_eq!(a.child_bool("b").unwrap(), Some(true));
        assert!(a.child_bool("c").is_err());
        assert!(a.child_num::<u8>("b").is_err());
        assert_eq!(a.child_num::<u8>("missing").unwrap(), None);
    }
}

//! SOAP 1.1 over HTTP: the envelope, one round trip through a [`Transport`], and turning the answer
//! into either the method's response element or a typed fault.
//!
//! [`Transport`] is the seam between the protocol and the network: one request in, one HTTP status
//! and body out. Production uses `HttpTransport` (reqwest + rustls, the session cookie); unit
//! tests plug in a scripted fake and exercise everything above it without a server.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::tls::{Refusal, TlsFailure};
use crate::xml::{Node, SOAPENV_NS, VIM25_NS, XSI_NS};

/// A boxed future, as returned by [`Transport::round_trip`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One SOAP request, ready to send.
#[derive(Debug, Clone)]
pub struct SoapRequest {
    /// The vim25 method name (for logs, errors and test fakes).
    pub method: String,
    /// The `SOAPAction` header value (`urn:vim25/<version>`).
    pub action: String,
    /// The complete envelope.
    pub envelope: String,
    /// How long the whole round trip may take.
    pub timeout: Duration,
}

/// What came back: status and body.
#[derive(Debug, Clone)]
pub struct SoapResponse {
    /// HTTP status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
    /// `Retry-After`, when present and in seconds.
    pub retry_after: Option<Duration>,
}

/// One SOAP round trip. Implementations must be cheap to share (`Arc<dyn Transport>`).
///
/// Contract: return `Ok` for any HTTP response (whatever the status); return `Err` only when no
/// complete response arrived ([`Error::Connect`], [`Error::Timeout`], [`Error::Network`],
/// [`Error::ThumbprintMismatch`], [`Error::Tls`]). An `Err` of kind [`Error::Connect`] promises that
/// the request was not sent.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Sends the request and returns the response.
    fn round_trip<'a>(&'a self, request: &'a SoapRequest) -> BoxFuture<'a, Result<SoapResponse>>;
}

/// Wraps a method's parameters (already XML) in the envelope: `<method xmlns="urn:vim25">…`.
pub(crate) fn envelope(method: &str, params: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soapenv:Envelope xmlns:soapenv=\"{SOAPENV_NS}\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"{XSI_NS}\">\
<soapenv:Body><{method} xmlns=\"{VIM25_NS}\">{params}</{method}></soapenv:Body></soapenv:Envelope>"
    )
}

/// Turns a response into the method's response element (`<MethodResponse>`), or an error.
///
/// HTTP 500 with a SOAP fault is a vSphere fault ([`Error::Fault`], permanent); 4xx with a fault
/// is the same. Other 5xx (502/503/504 — proxies, throttling) are [`Error::Http`], retryable even
/// when they carry a fault. Anything unparsable is [`Error::Xml`] or [`Error::Http`].
///
/// # Errors
/// As above.
pub(crate) fn parse_response(method: &str, response: &SoapResponse) -> Result<Node> {
    let status = response.status;
    let parsed = if response.body.trim().is_empty() {
        Err(Error::Xml(format!(
            "empty response body to {method} (HTTP {status})"
        )))
    } else {
        Node::parse(&response.body)
    };
    let body_element = parsed.and_then(|root| {
        if root.name != "Envelope" || root.namespace != SOAPENV_NS {
            return Err(Error::Xml(format!(
                "{method}: response is not a SOAP envelope (<{}>)",
                root.name
            )));
        }
        let body = root
            .children
            .into_iter()
            .find(|c| c.name == "Body" && c.namespace == SOAPENV_NS)
            .ok_or_else(|| Error::Xml(format!("{method}: SOAP envelope without a Body")))?;
        body.children
            .into_iter()
            .next()
            .ok_or_else(|| Error::Xml(format!("{method}: empty SOAP Body")))
    });
    match body_element {
        Ok(element) if element.name == "Fault" && element.namespace == SOAPENV_NS => {
            let fault = decode_fault(&element);
            if status == 200 || status == 500 || (400..500).contains(&status) {
                Err(Error::Fault {
                    method: method.to_owned(),
                    fault: Box::new(fault),
                })
            } else {
                Err(Error::Http {
                    context: method.to_owned(),
                    status,
                    message: fault.to_string(),
                    retry_after: response.retry_after,
                })
            }
        }
        Ok(element) if status == 200 => {
            let expected = format!("{method}Response");
            if element.name == expected {
                Ok(element)
            } else {
                Err(Error::Xml(format!(
                    "{method}: expected <{expected}>, got <{}>",
                    element.name
                )))
            }
        }
        Ok(_) | Err(Error::Xml(_)) if status != 200 => Err(Error::Http {
            context: method.to_owned(),
            status,
            message: snippet(&response.body),
            retry_after: response.retry_after,
        }),
        Ok(element) => Err(Error::Xml(format!(
            "{method}: unexpected <{}>",
            element.name
        ))),
        Err(err) => Err(err),
    }
}

fn decode_fault(fault: &Node) -> Fault {
    let message = fault.child_text("faultstring").unwrap_or_default();
    match fault.child("detail").and_then(|d| d.children.first()) {
        Some(detail) => Fault::from_node(detail, message),
        None => {
            let code = fault.child_text("faultcode").unwrap_or("ServerFaultCode");
            let code = code.rsplit_once(':').map_or(code, |(_, c)| c);
            Fault::new(code, message)
        }
    }
}

/// The first line-ish of a body, for error messages.
fn snippet(body: &str) -> String {
    let text: String = body.chars().take(200).collect();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    }
}

/// The `vmware_soap_session` cookie, shared by SOAP and `/folder` requests.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionCookie(Arc<RwLock<Option<String>>>);

impl SessionCookie {
    /// The `name=value` pair to send, raw (quotes kept: real vCenters quote the value).
    pub(crate) fn header(&self) -> Option<String> {
        self.0.read().ok().and_then(|c| c.clone())
    }

    /// Remembers the cookie from a `Set-Cookie` header value, if it is the session cookie.
    pub(crate) fn absorb(&self, set_cookie: &str) {
        let pair = set_cookie.split(';').next().unwrap_or_default().trim();
        if let Some(value) = pair.strip_prefix("vmware_soap_session=")
            && let Ok(mut slot) = self.0.write()
        {
            *slot = if value.is_empty() || value == "\"\"" {
                None
            } else {
                Some(pair.to_owned())
            };
        }
    }

    /// Forgets the cookie (after logout).
    pub(crate) fn clear(&self) {
        if let Ok(mut slot) = self.0.write() {
            *slot = None;
        }
    }
}

/// The HTTP side shared by SOAP calls and datastore transfers: one connection pool, one cookie.
#[derive(Debug)]
pub(crate) struct Http {
    /// The pooled reqwest client (TLS per [`crate::tls::Trust`]).
    pub(crate) client: reqwest::Client,
    /// `https://host:port` — the origin of `/sdk` and `/folder`.
    pub(crate) origin: url::Url,
    /// The session cookie.
    pub(crate) cookie: SessionCookie,
    /// What our certificate verifiers refused, if anything.
    pub(crate) tls_failure: TlsFailure,
}

impl Http {
    /// `host:port` for messages.
    pub(crate) fn host_label(&self) -> String {
        let host = self.origin.host_str().unwrap_or("?");
        match self.origin.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// Maps a reqwest error to ours, using what the TLS verifier recorded.
    pub(crate) fn map_error(
        &self,
        err: &reqwest::Error,
        context: &str,
        timeout: Duration,
    ) -> Error {
        if err.is_connect() || is_tls_error(err) {
            match self.tls_failure.get() {
                Some(Refusal::Mismatch { expected, got }) => {
                    return Error::ThumbprintMismatch { expected, got };
                }
                Some(Refusal::Untrusted(reason)) => {
                    return Error::Tls {
                        host: self.host_label(),
                        reason,
                    };
                }
                None => {}
            }
        }
        if err.is_timeout() {
            return Error::Timeout {
                context: context.to_owned(),
                after: timeout,
            };
        }
        if err.is_connect() {
            return Error::Connect {
                host: self.host_label(),
                reason: connect_reason(err),
            };
        }
        Error::Network {
            context: context.to_owned(),
            message: error_chain(err),
        }
    }
}

fn is_tls_error(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// "connection refused", "connection timed out", … from the deepest I/O error.
fn connect_reason(err: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            return match io.kind() {
                ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                ErrorKind::TimedOut => "connection timed out".to_owned(),
                ErrorKind::ConnectionReset => "connection reset".to_owned(),
                ErrorKind::HostUnreachable => "host unreachable".to_owned(),
                ErrorKind::NetworkUnreachable => "network unreachable".to_owned(),
                _ => io.to_string(),
            };
        }
        source = e.source();
    }
    error_chain(err)
}

/// The error and its causes joined with ": ".
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// `Retry-After: <seconds>` (the HTTP-date form is rare from vSphere and ignored).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The largest SOAP response vbm reads (a page of RetrievePropertiesEx is a few MiB): a broken
/// or hostile endpoint cannot make vbm buffer without bound.
pub(crate) const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Why [`read_capped`] gave up.
#[derive(Debug)]
pub(crate) enum Capped {
    /// The body is larger than the cap (the cap).
    TooLarge(usize),
    /// Reading failed.
    Http(reqwest::Error),
}

/// Reads a response body as text (invalid UTF-8 replaced), refusing bodies over `limit` bytes
/// before buffering them.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> std::result::Result<String, Capped> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Capped::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Capped::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(Capped::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8(body)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// The production transport: HTTPS POST to `/sdk` with the session cookie.
#[derive(Debug, Clone)]
pub(crate) struct HttpTransport {
    pub(crate) http: Arc<Http>,
    pub(crate) sdk_url: url::Url,
}

impl Transport for HttpTransport {
    fn round_trip<'a>(&'a self, request: &'a SoapRequest) -> BoxFuture<'a, Result<SoapResponse>> {
        Box::pin(async move {
            let http = &self.http;
            let mut builder = http
                .client
                .post(self.sdk_url.clone())
                .timeout(request.timeout)
                .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
                .header("SOAPAction", request.action.as_str())
                .body(request.envelope.clone());
            if let Some(cookie) = http.cookie.header() {
                builder = builder.header(reqwest::header::COOKIE, cookie);
            }
            let response = builder
                .send()
                .await
                .map_err(|e| http.map_error(&e, &request.method, request.timeout))?;
            for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
                if let Ok(text) = value.to_str() {
                    http.cookie.absorb(text);
                }
            }
            let status = response.status().as_u16();
            let retry_after = retry_after(response.headers());
            let body = read_capped(response, MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| match e {
                    Capped::TooLarge(n) => Error::Xml(format!(
                        "the response to {} is larger than {n} bytes; vbm refuses it",
                        request.method
                    )),
                    Capped::Http(e) => http.map_error(&e, &request.method, request.timeout),
                })?;
            Ok(SoapResponse {
                status,
                body,
                retry_after,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one HTTP response with `body_len` bytes of `x` (with or without Content-Length).
    async fn serve_once(body_len: usize, content_length: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sdk", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let head = if content_length {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
            };
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&vec![b'x'; body_len]).await;
        });
        url
    }

    #[tokio::test]
    async fn oversized_responses_are_refused_before_they_are_buffered() {
        for content_length in [true, false] {
            let tls = crate::tls::client_config(
                &crate::tls::Trust::Insecure,
                &crate::tls::TlsFailure::default(),
            )
            .unwrap();
            let client = reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .build()
                .unwrap();
            let url = serve_once(3000, content_length).await;
            let response = client.get(&url).send().await.unwrap();
            let err = read_capped(response, 2048).await.unwrap_err();
            assert!(matches!(err, Capped::TooLarge(2048)), "{err:?}");
            let url = serve_once(2000, content_length).await;
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(read_capped(response, 2048).await.unwrap().len(), 2000);
        }
    }
    use crate::fault::FaultKind;

    fn resp(status: u16, body: &str) -> SoapResponse {
        SoapResponse {
            status,
            body: body.to_owned(),
            retry_after: None,
        }
    }

    const FAULT: &str = r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" XMLSchema-instance:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;

    #[test]
    fn envelope_wraps_params_in_the_vim25_namespace() {
        let e = envelope(
            "Logout",
            "<_this type=\"SessionManager\">SessionManager</_this>",
        );
        assert!(e.contains("<soapenv:Body><Logout xmlns=\"urn:vim25\"><_this"));
        assert!(e.ends_with("</Logout></soapenv:Body></soapenv:Envelope>"));
        let parsed = Node::parse(&e).unwrap();
        assert_eq!(parsed.name, "Envelope");
    }

    #[test]
    fn faults_decode_by_status() {
        let err = parse_response("Login", &resp(500, FAULT)).unwrap_err();
        match err {
            Error::Fault { method, fault } => {
                assert_eq!(method, "Login");
                assert_eq!(fault.kind, FaultKind::InvalidLogin);
                assert_eq!(fault.message, "Login failure");
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = parse_response("Login", &resp(503, FAULT)).unwrap_err();
        assert!(matches!(err, Error::Http { status: 503, .. }));
        assert!(err.is_retryable());
        let err = parse_response("Login", &resp(400, FAULT)).unwrap_err();
        assert!(matches!(err, Error::Fault { .. }));
        assert!(!err.is_retryable());
    }

    #[test]
    fn non_soap_errors_and_truncation() {
        let err = parse_response("X", &resp(502, "<html>Bad gateway</html>")).unwrap_err();
        assert!(matches!(err, Error::Http { status: 502, .. }), "{err:?}");
        let err = parse_response("X", &resp(503, "")).unwrap_err();
        assert!(matches!(err, Error::Http { status: 503, .. }), "{err:?}");
        let truncated = &FAULT[..FAULT.len() / 2];
        assert!(matches!(
            parse_response("X", &resp(200, truncated)),
            Err(Error::Xml(_))
        ));
        assert!(matches!(
            parse_response("X", &resp(200, "")),
            Err(Error::Xml(_))
        ));
        let wrong = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><YResponse/></soapenv:Body></soapenv:Envelope>"#;
        assert!(matches!(
            parse_response("X", &resp(200, wrong)),
            Err(Error::Xml(_))
        ));
        let ok = wrong.replace("YResponse", "XResponse");
        assert_eq!(
            parse_response("X", &resp(200, &ok)).unwrap().name,
            "XResponse"
        );
    }

    #[test]
    fn fault_without_detail_keeps_code_and_message() {
        let body = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>bad</faultstring></s:Fault></s:Body></s:Envelope>"#;
        let err = parse_response("X", &resp(500, body)).unwrap_err();
        let fault = err.fault().unwrap();
        assert_eq!(fault.type_name, "Client");
        assert_eq!(fault.message, "bad");
    }

    #[test]
    fn session_cookie_is_kept_raw() {
        let c = SessionCookie::default();
        c.absorb("other=1; Path=/");
        assert_eq!(c.header(), None);
        c.absorb("vmware_soap_session=\"52c1abc\"; Path=/; HttpOnly; Secure");
        assert_eq!(
            c.header().as_deref(),
            Some("vmware_soap_session=\"52c1abc\"")
        );
        c.absorb("vmware_soap_session=uuid-1; HttpOnly");
        assert_eq!(c.header().as_deref(), Some("vmware_soap_session=uuid-1"));
        c.clear();
        assert_eq!(c.header(), None);
    }
}

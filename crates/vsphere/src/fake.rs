//! A scripted [`Transport`] for unit tests: answers the session calls itself and hands every
//! other call to the test's handler, recording everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::{Client, ClientConfig, RetryPolicy};
use crate::error::Result;
use crate::soap::{BoxFuture, SoapRequest, SoapResponse, Transport};

type Handler = dyn Fn(&str, &str, usize) -> Option<Result<SoapResponse>> + Send + Sync;

/// Records calls; answers RetrieveServiceContent, Login, Logout, CreateContainerView and
/// DestroyView unless the handler does.
pub(crate) struct Fake {
    handler: Box<Handler>,
    pub(crate) calls: Mutex<Vec<(String, String)>>,
    counts: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fake")
    }
}

pub(crate) fn ok(method: &str, inner: &str) -> Result<SoapResponse> {
    Ok(SoapResponse {
        status: 200,
        body: format!(
            "<?xml version=\"1.0\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><{method}Response xmlns=\"urn:vim25\">{inner}\
</{method}Response></soapenv:Body></soapenv:Envelope>"
        ),
        retry_after: None,
    })
}

pub(crate) fn fault(status: u16, ty: &str, message: &str) -> Result<SoapResponse> {
    Ok(SoapResponse {
        status,
        body: format!(
            "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode>\
<faultstring>{message}</faultstring><detail><{ty}Fault xmlns=\"urn:vim25\" xsi:type=\"{ty}\"/></detail></soapenv:Fault>\
</soapenv:Body></soapenv:Envelope>"
        ),
        retry_after: None,
    })
}

pub(crate) const SERVICE_CONTENT: &str = "<returnval><rootFolder type=\"Folder\">group-d1</rootFolder>\
<propertyCollector type=\"PropertyCollector\">propertyCollector</propertyCollector>\
<viewManager type=\"ViewManager\">ViewManager</viewManager>\
<about><name>VMware vCenter Server</name><apiType>VirtualCenter</apiType><apiVersion>8.0.2.0</apiVersion></about>\
<sessionManager type=\"SessionManager\">SessionManager</sessionManager>\
<fileManager type=\"FileManager\">FileManager</fileManager><newThing>x</newThing></returnval>";

impl Fake {
    pub(crate) fn new(
        handler: impl Fn(&str, &str, usize) -> Option<Result<SoapResponse>> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            handler: Box::new(handler),
            calls: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// How often `method` was called.
    pub(crate) fn count(&self, method: &str) -> usize {
        self.counts
            .lock()
            .map(|c| c.get(method).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Envelopes sent for `method`.
    pub(crate) fn bodies(&self, method: &str) -> Vec<String> {
        self.calls
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(m, _)| m == method)
                    .map(|(_, b)| b.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn answer(&self, request: &SoapRequest) -> Result<SoapResponse> {
        let n = {
            let mut counts = self
                .counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = counts.entry(request.method.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((request.method.clone(), request.envelope.clone()));
        }
        if let Some(answer) = (self.handler)(&request.method, &request.envelope, n) {
            return answer;
        }
        match request.method.as_str() {
            "RetrieveServiceContent" => ok("RetrieveServiceContent", SERVICE_CONTENT),
            "Login" => ok(
                "Login",
                "<returnval><key>k1</key><userName>u</userName></returnval>",
            ),
            "Logout" | "DestroyView" | "CancelRetrievePropertiesEx" => ok(&request.method, ""),
            "CreateContainerView" => ok(
                "CreateContainerView",
                "<returnval type=\"ContainerView\">session[1]view</returnval>",
            ),
            other => fault(500, "MethodNotFound", &format!("fake has no {other}")),
        }
    }
}

impl Transport for Fake {
    fn round_trip<'a>(&'a self, request: &'a SoapRequest) -> BoxFuture<'a, Result<SoapResponse>> {
        Box::pin(async move {
            // Let other tasks run between request and response, like a real network would.
            tokio::task::yield_now().await;
            self.answer(request)
        })
    }
}

/// A config with tiny delays so retry tests are fast.
pub(crate) fn fast_config() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_retry_after: Duration::from_millis(50),
        },
        soap_timeout: Duration::from_secs(5),
        task_poll_max: Duration::from_millis(5),
        page_size: 2,
        ..ClientConfig::default()
    }
}

/// Connects a client through the fake.
pub(crate) async fn client(fake: &Arc<Fake>) -> Result<Client> {
    Client::with_transport(fake.clone(), "u", "p", fast_config()).await
}

//! The [`Client`]: one logged-in connection to a vCenter or ESXi, cheap to clone and safe to share
//! across tasks.
//!
//! Every SOAP call goes through `Client::invoke`, which adds what a long-running backup needs:
//! a timeout per call, a transparent re-login (once) when the session has expired, and retries
//! with jittered exponential backoff (honouring `Retry-After`) for transient failures — for every
//! call when the request provably was not sent (connection refused, 503), otherwise only for
//! idempotent calls.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::session::{ServiceContent, UserSession};
use crate::soap::{self, Http, HttpTransport, SessionCookie, SoapRequest, Transport};
use crate::tls::{self, TlsFailure, Trust};
use crate::xml::{self, Node};

/// The newest vim25 version whose schema we write requests for. Servers that are newer are
/// addressed with this version (SOAPAction), older ones with their own.
const NEWEST_KNOWN_API: &str = "8.0.3.0";
/// Used for RetrieveServiceContent, before the server's version is known.
const BOOTSTRAP_API: &str = "6.5";

/// A password (or other secret) whose `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself (only to send it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Retry policy for transient failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per retry, with jitter.
    pub base_delay: Duration,
    /// Upper bound of a computed delay.
    pub max_delay: Duration,
    /// Upper bound of a server's `Retry-After` we honour.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0-based), jittered into [d/2, d], and at least the
    /// server's `Retry-After` (capped).
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        let jitter = half.mul_f64(rand::random::<f64>());
        let computed = half + jitter;
        match retry_after {
            Some(server) => computed.max(server.min(self.max_retry_after)),
            None => computed,
        }
    }
}

/// Timeouts and limits. The defaults suit a real vCenter; tests shorten them.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time for one SOAP round trip.
    pub soap_timeout: Duration,
    /// Time to establish a TCP+TLS connection.
    pub connect_timeout: Duration,
    /// A datastore transfer that receives (or sends) nothing for this long is abandoned (N4).
    pub transfer_idle_timeout: Duration,
    /// How often a broken download resumes from its last offset before failing (N2).
    pub transfer_resume_attempts: u32,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// `maxObjects` per RetrievePropertiesEx page.
    pub page_size: u32,
    /// Longest pause between two polls of a task.
    pub task_poll_max: Duration,
    /// How long the convenience methods (create/remove snapshot, power, register…) wait for
    /// their task before reporting an unknown outcome; `None` waits forever.
    pub task_timeout: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            soap_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(15),
            transfer_idle_timeout: Duration::from_secs(120),
            transfer_resume_attempts: 5,
            retry: RetryPolicy::default(),
            page_size: 500,
            task_poll_max: Duration::from_secs(2),
            task_timeout: Some(Duration::from_secs(3600)),
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `https://host[:port][/sdk]`, or just `host[:port]` (HTTPS assumed).
    pub url: String,
    /// User name, e.g. `backup@vsphere.local`.
    pub user: String,
    /// Password.
    pub password: Secret,
    /// How the server certificate is trusted.
    pub trust: Trust,
    /// Timeouts and limits.
    pub config: ClientConfig,
}

impl ConnectOptions {
    /// Options with the default trust (system roots) and configuration.
    pub fn new(
        url: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        Self {
            url: url.into(),
            user: user.into(),
            password: password.into(),
            trust: Trust::default(),
            config: ClientConfig::default(),
        }
    }

    /// Sets the trust mode.
    #[must_use]
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Sets the configuration.
    #[must_use]
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }
}

/// Whether a call may be repeated when its outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// Reads and calls whose repetition does no harm.
    Idempotent,
    /// Calls that change state (task-creating calls, paging continuations).
    NotIdempotent,
}

/// A logged-in vSphere client. Clone it freely: clones share the connection pool and session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    http: Option<Arc<Http>>,
    config: ClientConfig,
    user: String,
    password: Secret,
    content: RwLock<Option<ServiceContent>>,
    action: RwLock<String>,
    /// Serialises logins so that concurrent callers who all saw NotAuthenticated log in once.
    login_lock: tokio::sync::Mutex<()>,
    /// Bumped by every successful login.
    generation: AtomicU64,
    user_session: RwLock<Option<UserSession>>,
    logged_out: AtomicBool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.inner.transport)
            .field("user", &self.inner.user)
            .field("generation", &self.inner.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Normalises a user-supplied URL to the `/sdk` endpoint.
///
/// # Errors
/// [`Error::InvalidInput`] for unusable URLs.
pub(crate) fn sdk_url(text: &str) -> Result<url::Url> {
    let trimmed = text.trim();
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("https://{trimmed}")
    };
    let mut url = url::Url::parse(&with_scheme)
        .map_err(|e| Error::InvalidInput(format!("vCenter URL {trimmed:?}: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(Error::InvalidInput(format!(
            "vCenter URL {trimmed:?} must be https://host[/sdk]"
        )));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    if path.is_empty() {
        url.set_path("/sdk");
    } else if !path.ends_with("/sdk") {
        return Err(Error::InvalidInput(format!(
            "vCenter URL {trimmed:?}: expected the /sdk endpoint or just the host"
        )));
    }
    url.set_query(None);
    url.set_fragment(None);
    if url.scheme() == "http" {
        tracing::warn!(%url, "plain HTTP: credentials and data travel unencrypted");
    }
    Ok(url)
}

fn check_credential(what: &str, value: &str) -> Result<()> {
    if value.chars().all(xml::is_xml_char) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "the {what} contains control characters that XML cannot carry"
        )))
    }
}

/// Compares dotted versions numerically (`6.7.3` < `7.0.0.0` < `8.0.3.0`).
fn version_key(v: &str) -> Vec<u64> {
    v.split('.')
        .map(|p| p.trim().parse().unwrap_or(0))
        .collect()
}

impl Client {
    /// Connects over HTTPS: RetrieveServiceContent, then Login.
    ///
    /// # Errors
    /// [`Error::Connect`] (nothing listening, unreachable), [`Error::ThumbprintMismatch`] (pinned
    /// thumbprint differs — no request was sent), [`Error::Tls`], [`Error::InvalidLogin`],
    /// [`Error::Timeout`], [`Error::InvalidInput`] for a bad URL.
    pub async fn connect(options: ConnectOptions) -> Result<Self> {
        let sdk = sdk_url(&options.url)?;
        let tls_failure = TlsFailure::default();
        let tls = tls::client_config(&options.trust, &tls_failure)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(options.config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("vbm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::TlsConfig(format!("HTTP client: {}", soap::error_chain(&e))))?;
        let mut origin = sdk.clone();
        origin.set_path("/");
        let http = Arc::new(Http {
            client,
            origin,
            cookie: SessionCookie::default(),
            tls_failure,
        });
        let transport = HttpTransport {
            http: http.clone(),
            sdk_url: sdk,
        };
        let client = Self::build(
            Arc::new(transport),
            Some(http),
            options.user,
            options.password,
            options.config,
        )?;
        client.bootstrap().await?;
        Ok(client)
    }

    /// Connects through a custom [`Transport`] (tests, proxies). Datastore transfers need the
    /// HTTP transport and are unavailable on such a client.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn with_transport(
        transport: Arc<dyn Transport>,
        user: impl Into<String>,
        password: impl Into<Secret>,
        config: ClientConfig,
    ) -> Result<Self> {
        let client = Self::build(transport, None, user.into(), password.into(), config)?;
        client.bootstrap().await?;
        Ok(client)
    }

    fn build(
        transport: Arc<dyn Transport>,
        http: Option<Arc<Http>>,
        user: String,
        password: Secret,
        config: ClientConfig,
    ) -> Result<Self> {
        check_credential("user name", &user)?;
        check_credential("password", password.expose())?;
        Ok(Self {
            inner: Arc::new(Inner {
                transport,
                http,
                config,
                user,
                password,
                content: RwLock::new(None),
                action: RwLock::new(format!("urn:vim25/{BOOTSTRAP_API}")),
                login_lock: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                user_session: RwLock::new(None),
                logged_out: AtomicBool::new(false),
            }),
        })
    }

    async fn bootstrap(&self) -> Result<()> {
        let content = self.retrieve_service_content().await?;
        let api = &content.about.api_version;
        let version = if api.is_empty() {
            BOOTSTRAP_API.to_owned()
        } else if version_key(api) > version_key(NEWEST_KNOWN_API) {
            NEWEST_KNOWN_API.to_owned()
        } else {
            api.clone()
        };
        if let Ok(mut action) = self.inner.action.write() {
            *action = format!("urn:vim25/{version}");
        }
        if let Ok(mut slot) = self.inner.content.write() {
            *slot = Some(content);
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        self.relogin(generation).await
    }

    /// The server's service content (morefs of the managers, `about`).
    ///
    /// # Errors
    /// Never after a successful connect; [`Error::Xml`] if called before one.
    pub fn service_content(&self) -> Result<ServiceContent> {
        self.inner
            .content
            .read()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| Error::Xml("service content not retrieved yet".into()))
    }

    /// The user name this client logs in with.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The current session as returned by the last Login.
    pub fn user_session(&self) -> Option<UserSession> {
        self.inner.user_session.read().ok().and_then(|s| s.clone())
    }

    /// Whether the server is an ESXi host (`HostAgent`) rather than vCenter.
    pub fn is_esxi(&self) -> bool {
        self.service_content()
            .is_ok_and(|c| c.about.api_type == "HostAgent")
    }

    /// How many logins this client has done (1 after connect; +1 per transparent re-login).
    pub fn login_count(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    pub(crate) fn http(&self) -> Result<&Arc<Http>> {
        self.inner
            .http
            .as_ref()
            .ok_or_else(|| Error::Unsupported("datastore transfers need the HTTP transport".into()))
    }

    pub(crate) fn set_user_session(&self, session: Option<UserSession>) {
        if let Ok(mut slot) = self.inner.user_session.write() {
            *slot = session;
        }
    }

    pub(crate) fn credentials(&self) -> (&str, &Secret) {
        (&self.inner.user, &self.inner.password)
    }

    pub(crate) fn mark_logged_out(&self) {
        self.inner.logged_out.store(true, Ordering::Release);
        if let Some(http) = &self.inner.http {
            http.cookie.clear();
        }
    }

    pub(crate) fn is_logged_out(&self) -> bool {
        self.inner.logged_out.load(Ordering::Acquire)
    }

    /// Logs in again unless another task already did since `seen_generation`.
    ///
    /// # Errors
    /// [`Error::InvalidLogin`] and transport errors from Login.
    pub(crate) async fn relogin(&self, seen_generation: u64) -> Result<()> {
        let _guard = self.inner.login_lock.lock().await;
        if self.inner.generation.load(Ordering::Acquire) != seen_generation {
            return Ok(());
        }
        if self.is_logged_out() {
            return Err(Error::Fault {
                method: "Login".into(),
                fault: Box::new(crate::fault::Fault::new(
                    "NotAuthenticated",
                    "the client has logged out",
                )),
            });
        }
        self.login().await?;
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// One SOAP round trip with the per-call timeout, without retries or re-login.
    async fn round_trip(&self, method: &str, params: &str) -> Result<Node> {
        let action = self
            .inner
            .action
            .read()
            .map(|a| a.clone())
            .unwrap_or_default();
        let timeout = self.inner.config.soap_timeout;
        let request = SoapRequest {
            method: method.to_owned(),
            action,
            envelope: soap::envelope(method, params),
            timeout,
        };
        tracing::trace!(method, "SOAP call");
        // The transport applies the timeout too; this bounds custom transports as well.
        let response = tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.inner.transport.round_trip(&request),
        )
        .await
        .map_err(|_| Error::Timeout {
            context: method.to_owned(),
            after: timeout,
        })??;
        soap::parse_response(method, &response)
    }

    /// Whether an error may be retried for a call of this kind.
    fn retry_allowed(err: &Error, kind: CallKind) -> bool {
        match err {
            // Nothing was sent, or the server said it did not process the request.
            Error::Connect { .. } => true,
            Error::Http { status: 503, .. } => true,
            _ => kind == CallKind::Idempotent && err.is_retryable(),
        }
    }

    fn retry_after(err: &Error) -> Option<Duration> {
        match err {
            Error::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Calls a method without re-login (used by Login itself and RetrieveServiceContent),
    /// retrying transient failures per `kind`.
    pub(crate) async fn invoke_raw(
        &self,
        method: &str,
        params: &str,
        kind: CallKind,
    ) -> Result<Node> {
        let policy = &self.inner.config.retry;
        let mut retry = 0;
        loop {
            match self.round_trip(method, params).await {
                Err(err) if retry + 1 < policy.max_attempts && Self::retry_allowed(&err, kind) => {
                    let delay = policy.delay(retry, Self::retry_after(&err));
                    tracing::debug!(method, error = %err, ?delay, "transient failure; retrying");
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                other => return other,
            }
        }
    }

    /// Calls a method: per-call timeout, transparent re-login once on NotAuthenticated, retries.
    ///
    /// NotAuthenticated is raised by the server's session check before the method runs, so the
    /// repeated call cannot double an effect; task-creating callers that want to be sure use
    /// [`Client::invoke_guarded`].
    pub(crate) async fn invoke(&self, method: &str, params: &str, kind: CallKind) -> Result<Node> {
        self.invoke_guarded(method, params, kind, || async { Ok(false) })
            .await?
            .ok_or_else(|| Error::Xml(format!("{method}: no response")))
    }

    /// Like [`Client::invoke`], but after a re-login asks `already_done` before repeating the
    /// call; when it answers `true` the call is not repeated and `Ok(None)` is returned.
    pub(crate) async fn invoke_guarded<F, Fut>(
        &self,
        method: &str,
        params: &str,
        kind: CallKind,
        already_done: F,
    ) -> Result<Option<Node>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        let generation = self.inner.generation.load(Ordering::Acquire);
        match self.invoke_raw(method, params, kind).await {
            Err(err) if err.is_not_authenticated() && !self.is_logged_out() => {
                tracing::info!(method, "vCenter session expired; logging in again");
                self.relogin(generation).await?;
                if kind == CallKind::NotIdempotent && already_done().await? {
                    return Ok(None);
                }
                self.invoke_raw(method, params, kind).await.map(Some)
            }
            other => other.map(Some),
        }
    }

    /// Runs a multi-call sequence that lives in the session (container views, paged results):
    /// if it fails with NotAuthenticated, log in again and run it once more from the start.
    pub(crate) async fn with_session<T, F, Fut>(&self, sequence: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let generation = self.inner.generation.load(Ordering::Acquire);
        match sequence().await {
            Err(err) if err.is_not_authenticated() && !self.is_logged_out() => {
                self.relogin(generation).await?;
                sequence().await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_urls_normalise() {
        assert_eq!(
            sdk_url("vc.example.org").unwrap().as_str(),
            "https://vc.example.org/sdk"
        );
        assert_eq!(
            sdk_url("https://vc:8443/").unwrap().as_str(),
            "https://vc:8443/sdk"
        );
        assert_eq!(
            sdk_url("https://127.0.0.1:1234/sdk?x=1").unwrap().as_str(),
            "https://127.0.0.1:1234/sdk"
        );
        assert!(sdk_url("ftp://vc/sdk").is_err());
        assert!(sdk_url("https://vc/ui").is_err());
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("6.7.3") < version_key("7.0.0.0"));
        assert!(version_key("8.0.3.0") < version_key("9.0.0.0"));
        assert!(version_key("6.5") < version_key("6.7"));
    }

    #[test]
    fn backoff_grows_is_jittered_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            max_retry_after: Duration::from_secs(2),
        };
        for _ in 0..50 {
            let d0 = p.delay(0, None);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d5 = p.delay(5, None);
            assert!(d5 >= Duration::from_millis(200) && d5 <= Duration::from_millis(400));
            assert!(p.delay(0, Some(Duration::from_secs(1))) >= Duration::from_secs(1));
            assert_eq!(
                p.delay(0, Some(Duration::from_secs(100))),
                Duration::from_secs(2)
            );
        }
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let o = ConnectOptions::new("vc", "u", "hunter2");
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}

#[cfg(test)]
mod fake_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::fake::{self, Fake, fault, ok};
    use crate::soap::SoapResponse;
    use crate::types::MoRef;

    const EMPTY: &str = "";

    fn vm() -> MoRef {
        MoRef::new("VirtualMachine", "vm-1")
    }

    #[tokio::test]
    async fn connect_reads_service_content_and_logs_in() {
        let f = Fake::new(|_, _, _| None);
        let c = fake::client(&f).await.unwrap();
        assert_eq!(f.count("RetrieveServiceContent"), 1);
        assert_eq!(f.count("Login"), 1);
        assert_eq!(c.service_content().unwrap().about.api_version, "8.0.2.0");
        assert_eq!(c.user_session().unwrap().key, "k1");
        let login = &f.bodies("Login")[0];
        assert!(login.contains("<_this type=\"SessionManager\">SessionManager</_this><userName>u</userName><password>p</password>"));
        c.logout().await.unwrap();
        assert_eq!(f.count("Logout"), 1);
        // A logged-out client does not log in again behind the caller's back.
        let err = c.list_snapshots(&vm()).await.unwrap_err();
        assert!(err.fault().is_some(), "{err}");
        assert_eq!(f.count("Login"), 1);
    }

    #[tokio::test]
    async fn wrong_password_is_a_typed_invalid_login() {
        let f = Fake::new(|m, _, _| {
            (m == "Login").then(|| {
                fault(
                    500,
                    "InvalidLogin",
                    "Cannot complete login due to an incorrect user name or password.",
                )
            })
        });
        let err = fake::client(&f).await.unwrap_err();
        assert!(matches!(err, Error::InvalidLogin { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("user name or password was rejected"),
            "{err}"
        );
        assert_eq!(f.count("Login"), 1);
    }

    #[tokio::test]
    async fn control_characters_in_credentials_are_refused_before_sending() {
        let f = Fake::new(|_, _, _| None);
        let err = Client::with_transport(f.clone(), "u", "p\u{0}", fake::fast_config())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
        assert_eq!(f.count("RetrieveServiceContent"), 0);
    }

    // covers N8: one transparent re-login, shared by concurrent callers.
    #[tokio::test]
    async fn expired_session_relogs_in_once_for_all_concurrent_callers() {
        let valid = Arc::new(AtomicBool::new(true));
        let v = valid.clone();
        let f = Fake::new(move |m, _, _| match m {
            "Login" => {
                v.store(true, Ordering::SeqCst);
                None
            }
            _ if !v.load(Ordering::SeqCst) => Some(fault(500, "NotAuthenticated", "session gone")),
            "RetrievePropertiesEx" => Some(ok(m, EMPTY)),
            _ => None,
        });
        let c = fake::client(&f).await.unwrap();
        valid.store(false, Ordering::SeqCst);
        let calls = (0..8).map(|_| {
            let c = c.clone();
            async move { c.list_snapshots(&vm()).await }
        });
        for result in futures_util::future::join_all(calls).await {
            assert!(result.unwrap().is_empty());
        }
        assert_eq!(
            f.count("Login"),
            2,
            "one initial login plus exactly one re-login"
        );
        assert_eq!(c.login_count(), 2);
    }

    #[tokio::test]
    async fn relogin_happens_only_once_per_call() {
        let f = Fake::new(|m, _, _| {
            (m == "RetrievePropertiesEx").then(|| fault(500, "NotAuthenticated", "no"))
        });
        let c = fake::client(&f).await.unwrap();
        let err = c.list_snapshots(&vm()).await.unwrap_err();
        assert!(err.is_not_authenticated());
        assert_eq!(f.count("Login"), 2);
        assert_eq!(f.count("RetrievePropertiesEx"), 2);
    }

    // covers N6: 503 retried (honouring Retry-After), 5xx exhausted, faults and 4xx not retried.
    #[tokio::test]
    async fn transient_statuses_are_retried_and_faults_are_not() {
        let f = Fake::new(|m, _, n| match (m, n) {
            ("RetrievePropertiesEx", 1 | 2) => Some(Ok(SoapResponse {
                status: 503,
                body: String::new(),
                retry_after: Some(Duration::from_millis(1)),
            })),
            ("RetrievePropertiesEx", _) => Some(ok(m, EMPTY)),
            _ => None,
        });
        let c = fake::client(&f).await.unwrap();
        c.list_snapshots(&vm()).await.unwrap();
        assert_eq!(f.count("RetrievePropertiesEx"), 3);

        let f = Fake::new(|m, _, _| {
            (m == "RetrievePropertiesEx").then(|| fault(503, "SystemError", "busy"))
        });
        let c = fake::client(&f).await.unwrap();
        let err = c.list_snapshots(&vm()).await.unwrap_err();
        assert!(matches!(err, Error::Http { status: 503, .. }), "{err:?}");
        assert!(err.to_string().contains("busy"));
        assert_eq!(f.count("RetrievePropertiesEx"), 3, "max_attempts");

        let f = Fake::new(|m, _, _| {
            (m == "RetrievePropertiesEx").then(|| fault(500, "InvalidArgument", "bad spec"))
        });
        let c = fake::client(&f).await.unwrap();
        let err = c.list_snapshots(&vm()).await.unwrap_err();
        assert!(matches!(
            err.fault().map(|f| &f.kind),
            Some(crate::fault::FaultKind::InvalidArgument { .. })
        ));
        assert_eq!(f.count("RetrievePropertiesEx"), 1);

        let f = Fake::new(|m, _, _| {
            (m == "RetrievePropertiesEx").then(|| fault(400, "InvalidRequest", "nope"))
        });
        let c = fake::client(&f).await.unwrap();
        assert!(c.list_snapshots(&vm()).await.is_err());
        assert_eq!(f.count("RetrievePropertiesEx"), 1);
    }

    #[tokio::test]
    async fn task_creating_calls_are_not_repeated_after_an_unknown_outcome() {
        let f = Fake::new(|m, _, _| {
            (m == "CreateSnapshot_Task").then(|| {
                Err(Error::Network {
                    context: m.into(),
                    message: "connection reset".into(),
                })
            })
        });
        let c = fake::client(&f).await.unwrap();
        assert!(
            c.create_snapshot(&vm(), "s", "", false, false)
                .await
                .is_err()
        );
        assert_eq!(f.count("CreateSnapshot_Task"), 1);
        // ...but are retried when the request provably never left.
        let f = Fake::new(|m, _, n| match (m, n) {
            ("CreateSnapshot_Task", 1) => Some(Err(Error::Connect {
                host: "h".into(),
                reason: "connection refused".into(),
            })),
            ("CreateSnapshot_Task", _) => {
                Some(ok(m, "<returnval type=\"Task\">task-1</returnval>"))
            }
            ("RetrievePropertiesEx", _) => Some(ok(m, TASK_DONE)),
            _ => None,
        });
        let c = fake::client(&f).await.unwrap();
        let snap = c
            .create_snapshot(&vm(), "s", "", false, false)
            .await
            .unwrap();
        assert_eq!(snap, MoRef::new("VirtualMachineSnapshot", "snapshot-9"));
        assert_eq!(f.count("CreateSnapshot_Task"), 2);
        let body = &f.bodies("CreateSnapshot_Task")[1];
        assert!(body.contains("<_this type=\"VirtualMachine\">vm-1</_this><name>s</name><description></description><memory>false</memory><quiesce>false</quiesce>"), "{body}");
    }

    const TASK_DONE: &str = "<returnval><objects><obj type=\"Task\">task-1</obj><propSet><name>info</name>\
<val xsi:type=\"TaskInfo\"><key>task-1</key><state>success</state>\
<result xsi:type=\"ManagedObjectReference\" type=\"VirtualMachineSnapshot\">snapshot-9</result></val></propSet></objects></returnval>";

    #[tokio::test]
    async fn a_snapshot_created_before_the_session_expired_is_not_created_twice() {
        let tree = "<returnval><objects><obj type=\"VirtualMachine\">vm-1</obj><propSet><name>snapshot</name>\
<val xsi:type=\"VirtualMachineSnapshotInfo\"><rootSnapshotList><snapshot type=\"VirtualMachineSnapshot\">snapshot-5</snapshot>\
<name>vbm-1</name></rootSnapshotList></val></propSet></objects></returnval>";
        let f = Fake::new(move |m, _, _| match m {
            "CreateSnapshot_Task" => Some(fault(500, "NotAuthenticated", "expired")),
            "RetrievePropertiesEx" => Some(ok(m, tree)),
            _ => None,
        });
        let c = fake::client(&f).await.unwrap();
        let snap = c
            .create_snapshot(&vm(), "vbm-1", "", false, false)
            .await
            .unwrap();
        assert_eq!(snap, MoRef::new("VirtualMachineSnapshot", "snapshot-5"));
        assert_eq!(f.count("CreateSnapshot_Task"), 1);
        assert_eq!(f.count("Login"), 2);
    }

    #[tokio::test]
    async fn a_hanging_transport_is_bounded_by_the_call_timeout() {
        #[derive(Debug)]
        struct Hang;
        impl Transport for Hang {
            fn round_trip<'a>(
                &'a self,
                r: &'a SoapRequest,
            ) -> soap::BoxFuture<'a, Result<SoapResponse>> {
                Box::pin(async move {
                    if r.method == "RetrieveServiceContent" {
                        return crate::fake::ok(
                            "RetrieveServiceContent",
                            crate::fake::SERVICE_CONTENT,
                        );
                    }
                    if r.method == "Login" {
                        return crate::fake::ok("Login", "");
                    }
                    std::future::pending().await
                })
            }
        }
        let mut config = fake::fast_config();
        config.soap_timeout = Duration::from_millis(10);
        config.retry.max_attempts = 2;
        let c = Client::with_transport(Arc::new(Hang), "u", "p", config)
            .await
            .unwrap();
        tokio::time::pause();
        let err = c.list_snapshots(&vm()).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    }
}

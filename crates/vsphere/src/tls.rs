//! TLS trust for vCenter/ESXi connections: system roots, a CA bundle, a pinned certificate
//! thumbprint (SHA-256 or SHA-1, as vSphere shows it), or an explicit insecure mode.
//!
//! rustls with the `ring` provider only (no OpenSSL, no aws-lc). System roots come from the OS
//! trust store through `rustls-native-certs` (ADR 0011): vCenter certificates are issued by the
//! VMCA or an enterprise CA that administrators install in the OS store, never by a CA in the
//! Mozilla bundle that `webpki-roots` would compile in.
//!
//! Every verifier still checks the handshake signature with the presented certificate's key, so
//! a pinned or insecure connection is at least bound to the certificate it accepted. Verifiers
//! record why they refused in a `TlsFailure` slot: reqwest flattens handshake errors into text,
//! and the client turns the recorded reason into a typed error.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha1::Digest as _;

use crate::error::{Error, Result};

/// How the server's certificate is trusted.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Trust {
    /// The operating system's trust store (the default).
    #[default]
    SystemRoots,
    /// The CA certificates in this PEM file (e.g. the VMCA root from vCenter's download page).
    CaFile(PathBuf),
    /// The CA certificates in this PEM text.
    CaPem(String),
    /// Exactly the certificate with this thumbprint (as vCenter/ESXi shows it); no chain check.
    Pinned(Thumbprint),
    /// Any certificate. Logs a warning on every connect: for labs only.
    Insecure,
}

/// Hash algorithm of a [`Thumbprint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThumbprintAlgorithm {
    /// SHA-1 (20 bytes): what older vSphere UIs and `esxcli` show.
    Sha1,
    /// SHA-256 (32 bytes).
    Sha256,
}

/// A certificate thumbprint: the hash of the DER-encoded leaf certificate.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Thumbprint {
    algorithm: ThumbprintAlgorithm,
    bytes: Vec<u8>,
}

impl Thumbprint {
    /// Parses `AA:BB:…`, `aa:bb:…`, `aabb…` or with spaces/dashes; the length picks the algorithm
    /// (20 bytes SHA-1, 32 bytes SHA-256). An optional `sha256:`/`sha1:` prefix is accepted.
    ///
    /// # Errors
    /// [`Error::TlsConfig`] for anything that is not 20 or 32 hex bytes.
    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        let body = lower
            .strip_prefix("sha256:")
            .or_else(|| lower.strip_prefix("sha1:"))
            .unwrap_or(&lower);
        let hex_digits: String = body
            .chars()
            .filter(|c| !matches!(c, ':' | ' ' | '-'))
            .collect();
        let bytes = hex::decode(&hex_digits)
            .map_err(|_| Error::TlsConfig(format!("thumbprint is not hexadecimal: {trimmed:?}")))?;
        let algorithm = match bytes.len() {
            20 => ThumbprintAlgorithm::Sha1,
            32 => ThumbprintAlgorithm::Sha256,
            n => {
                return Err(Error::TlsConfig(format!(
                    "thumbprint has {n} bytes; expected 20 (SHA-1) or 32 (SHA-256): {trimmed:?}"
                )));
            }
        };
        Ok(Self { algorithm, bytes })
    }

    /// The thumbprint of a DER certificate in the given algorithm.
    pub fn of_certificate(der: &[u8], algorithm: ThumbprintAlgorithm) -> Self {
        let bytes = match algorithm {
            ThumbprintAlgorithm::Sha1 => sha1::Sha1::digest(der).to_vec(),
            ThumbprintAlgorithm::Sha256 => sha2::Sha256::digest(der).to_vec(),
        };
        Self { algorithm, bytes }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> ThumbprintAlgorithm {
        self.algorithm
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Display for Thumbprint {
    /// Uppercase colon-separated hex, the way vSphere shows thumbprints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.bytes.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({:?} {self})", self.algorithm)
    }
}

impl std::str::FromStr for Thumbprint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Why the last handshake was refused, recorded by our verifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Pinned thumbprint did not match.
    Mismatch {
        /// Pinned.
        expected: String,
        /// Presented.
        got: String,
    },
    /// Chain verification failed.
    Untrusted(String),
}

/// Shared slot our verifiers write their refusal into.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsFailure(Arc<Mutex<Option<Refusal>>>);

impl TlsFailure {
    fn record(&self, refusal: Refusal) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(refusal);
        }
    }

    /// The recorded refusal, if any.
    pub(crate) fn get(&self) -> Option<Refusal> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration for a trust mode.
///
/// # Errors
/// [`Error::TlsConfig`] when the CA bundle cannot be read or holds no certificate, or when the
/// system store has no usable root.
pub(crate) fn client_config(trust: &Trust, failure: &TlsFailure) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::SystemRoots => {
            let loaded = rustls_native_certs::load_native_certs();
            for err in &loaded.errors {
                tracing::debug!(error = %err, "skipping an unreadable system certificate");
            }
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(Error::TlsConfig(
                    "no usable root certificate in the system trust store; use --ca-file or --thumbprint"
                        .into(),
                ));
            }
            webpki_verifier(roots, &provider, failure)?
        }
        Trust::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::TlsConfig(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            webpki_verifier(
                roots_from_pem(&pem, &path.display().to_string())?,
                &provider,
                failure,
            )?
        }
        Trust::CaPem(pem) => webpki_verifier(
            roots_from_pem(pem.as_bytes(), "CA PEM")?,
            &provider,
            failure,
        )?,
        Trust::Pinned(pin) => Arc::new(PinnedVerifier {
            pin: pin.clone(),
            algorithms,
            failure: failure.clone(),
        }),
        Trust::Insecure => {
            tracing::warn!(
                "TLS certificate verification is DISABLED (insecure mode): any server can impersonate vCenter"
            );
            Arc::new(InsecureVerifier { algorithms })
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(format!("protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| Error::TlsConfig(format!("{what}: bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::TlsConfig(format!("{what}: unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::TlsConfig(format!("{what}: no certificate found")));
    }
    Ok(roots)
}

fn webpki_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
    failure: &TlsFailure,
) -> Result<Arc<dyn ServerCertVerifier>> {
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::TlsConfig(format!("certificate verifier: {e}")))?;
    Ok(Arc::new(RecordingVerifier {
        inner,
        failure: failure.clone(),
    }))
}

/// Chain verification that records why it refused.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    failure: TlsFailure,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| self.failure.record(Refusal::Untrusted(e.to_string())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts exactly the leaf certificate with the pinned thumbprint (vSphere's usual trust model
/// for self-signed/VMCA certificates). The handshake signature is still verified.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Thumbprint,
    algorithms: WebPkiSupportedAlgorithms,
    failure: TlsFailure,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Thumbprint::of_certificate(end_entity.as_ref(), self.pin.algorithm);
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            self.failure.record(Refusal::Mismatch {
                expected: self.pin.to_string(),
                got: got.to_string(),
            });
            Err(rustls::Error::General(format!(
                "certificate thumbprint mismatch (expected {}, got {got})",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts any certificate; only the handshake signature is checked.
#[derive(Debug)]
struct InsecureVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1: &str = "5B:6E:2A:0F:3C:8D:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE";

    #[test]
    fn thumbprints_parse_in_every_common_form() {
        let a = Thumbprint::parse(SHA1).unwrap();
        assert_eq!(a.algorithm(), ThumbprintAlgorithm::Sha1);
        assert_eq!(a.to_string(), SHA1);
        let b = Thumbprint::parse(&SHA1.replace(':', "").to_lowercase()).unwrap();
        assert_eq!(a, b);
        let c = Thumbprint::parse(&format!("sha1:{}", SHA1.replace(':', " "))).unwrap();
        assert_eq!(a, c);
        let long = "ab".repeat(32);
        let d = Thumbprint::parse(&long).unwrap();
        assert_eq!(d.algorithm(), ThumbprintAlgorithm::Sha256);
        assert_eq!(d.as_bytes().len(), 32);
        for bad in ["", "zz", "AA:BB", &"ab".repeat(31)] {
            assert!(Thumbprint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thumbprint_of_certificate_matches_known_digests() {
        let t = Thumbprint::of_certificate(b"abc", ThumbprintAlgorithm::Sha256);
        assert!(t.to_string().starts_with("BA:78:16:BF"));
        let t = Thumbprint::of_certificate(b"abc", ThumbprintAlgorithm::Sha1);
        assert!(t.to_string().starts_with("A9:99:3E:36"));
    }

    #[test]
    fn configs_build_for_each_mode() {
        let failure = TlsFailure::default();
        let pin = Thumbprint::parse(SHA1).unwrap();
        assert!(client_config(&Trust::Pinned(pin), &failure).is_ok());
        assert!(client_config(&Trust::Insecure, &failure).is_ok());
        assert!(matches!(
            client_config(&Trust::CaPem("nothing".into()), &failure),
            Err(Error::TlsConfig(_))
        ));
        assert!(matches!(
            client_config(&Trust::CaFile("/nonexistent/ca.pem".into()), &failure),
            Err(Error::TlsConfig(_))
        ));
    }
}

//! Saved vCenter connections: what is stored, what the API shows, and the SSRF guard on URLs
//! (FAULT-MATRIX I14).

use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::crypto::Secret;
use crate::ids::VcenterId;

/// How the vCenter's TLS certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trust {
    /// The operating system's root certificates.
    System,
    /// A CA bundle in PEM form.
    CaPem {
        /// PEM text (one or more certificates).
        pem: String,
    },
    /// Pin the certificate by its SHA-256 thumbprint (as "test connection" shows it).
    Thumbprint {
        /// 64 hex digits, colons allowed.
        sha256: String,
    },
    /// No verification at all (labs only; logged as a warning on every connect).
    Insecure,
}

/// A saved connection as the API shows it: never the password.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Vcenter {
    /// Id.
    pub id: VcenterId,
    /// Unique display name (also the `<NAME>` of `VCENTER_PASSWORD_<NAME>`).
    pub name: String,
    /// `https://host[:port]/sdk`.
    pub url: String,
    /// User name.
    pub username: String,
    /// TLS trust.
    pub trust: Trust,
    /// `http://` allowed (lab only).
    pub allow_http: bool,
    /// Whether a password is stored (the password itself is write-only).
    pub password_set: bool,
    /// Where the password used for connections comes from: `env`, `stored` or `none`.
    pub password_source: String,
    /// Created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// Body of `POST /vcenters`, `PUT /vcenters/{id}` and `POST /vcenters/test`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VcenterInput {
    /// 1–64 characters: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// `https://host[:port][/sdk]`.
    pub url: String,
    /// User name (1–256 characters).
    pub username: String,
    /// Write-only. On update, omit to keep the stored password; `""` clears it.
    #[serde(default)]
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<Secret>,
    /// TLS trust; default `system`.
    #[serde(default = "default_trust")]
    pub trust: Trust,
    /// Allow `http://` (labs and simulators only).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_trust() -> Trust {
    Trust::System
}

/// Everything needed to connect: built from the stored row, the decrypted password and the
/// environment. Its `Debug` redacts the password.
#[derive(Debug, Clone)]
pub struct VcenterTarget {
    /// Id (for per-vCenter limits and labels).
    pub id: VcenterId,
    /// Name.
    pub name: String,
    /// URL.
    pub url: String,
    /// User.
    pub username: String,
    /// Password, if any.
    pub password: Option<Secret>,
    /// Trust.
    pub trust: Trust,
}

/// A validation problem in one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    #[must_use]
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks a name used as an identifier and in env var names.
pub(crate) fn check_name(field: &str, name: &str, errors: &mut Vec<FieldError>) {
    let ok = (1..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        errors.push(FieldError::new(
            field,
            "must be 1-64 characters of letters, digits, '.', '_' or '-'",
        ));
    }
}

impl VcenterInput {
    /// Validates every field; returns all problems at once.
    ///
    /// # Errors
    /// The list of problems.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_name("name", &self.name, &mut errors);
        if let Err(message) = check_url(&self.url, self.allow_http) {
            errors.push(FieldError::new("url", message));
        }
        if self.username.is_empty()
            || self.username.chars().count() > 256
            || self.username.chars().any(char::is_control)
        {
            errors.push(FieldError::new(
                "username",
                "must be 1-256 characters without control characters",
            ));
        }
        if let Some(p) = &self.password
            && p.expose().len() > 1024
        {
            errors.push(FieldError::new("password", "must be at most 1024 bytes"));
        }
        match &self.trust {
            Trust::Thumbprint { sha256 } => {
                let hex: String = sha256.chars().filter(|c| *c != ':').collect();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    errors.push(FieldError::new(
                        "trust.sha256",
                        "must be a SHA-256 thumbprint: 64 hex digits, colons allowed",
                    ));
                }
            }
            Trust::CaPem { pem } => {
                if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.len() > 256 * 1024 {
                    errors.push(FieldError::new(
                        "trust.pem",
                        "must hold at least one PEM certificate (at most 256 KiB)",
                    ));
                }
            }
            Trust::System | Trust::Insecure => {}
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The SSRF guard (I14): `https` only unless the connection is explicitly a lab (`allow_http`);
/// no credentials, query or fragment in the URL; never link-local (cloud metadata), multicast or
/// unspecified addresses. Loopback and private ranges stay allowed: vCenters live there.
///
/// # Errors
/// What is wrong with the URL, in words.
pub fn check_url(text: &str, allow_http: bool) -> Result<url::Url, String> {
    if text.len() > 2048 {
        return Err("is longer than 2048 characters".into());
    }
    let url = url::Url::parse(text).map_err(|e| format!("is not a valid URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(
                "must use https (http is accepted only with \"allow_http\": true, for labs)".into(),
            );
        }
        other => return Err(format!("scheme {other:?} is not allowed; use https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials; use username and password".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not contain a query or fragment".into());
    }
    let forbidden = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    match url.host() {
        None => return Err("has no host".into()),
        Some(url::Host::Ipv4(ip)) if forbidden(IpAddr::V4(ip)) => {
            return Err(format!(
                "address {ip} is not allowed (link-local, multicast or unspecified)"
            ));
        }
        Some(url::Host::Ipv6(ip)) if forbidden(IpAddr::V6(ip)) => {
            return Err(format!(
                "address {ip} is not allowed (link-local, multicast or unspecified)"
            ));
        }
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("metadata.google.internal") => {
            return Err("cloud metadata hosts are not allowed".into());
        }
        Some(_) => {}
    }
    Ok(url)
}

/// The environment variable that may hold this vCenter's password.
#[must_use]
pub fn password_env_name(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("VCENTER_PASSWORD_{upper}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers I14
    #[test]
    fn ssrf_guard() {
        assert!(check_url("https://vc.example.org/sdk", false).is_ok());
        assert!(check_url("https://127.0.0.1:8443/sdk", false).is_ok());
        for (bad, why) in [
            ("http://vc/sdk", "must use https"),
            ("file:///etc/passwd", "scheme \"file\""),
            ("https://169.254.169.254/", "not allowed"),
            ("https://[fe80::1]/", "not allowed"),
            ("https://0.0.0.0/", "not allowed"),
            ("https://u:p@vc/", "credentials"),
            ("https://vc/sdk?x=1", "query"),
            ("gopher://vc/", "scheme"),
            ("not a url", "not a valid URL"),
        ] {
            let err = check_url(bad, false).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(check_url("http://127.0.0.1:1/sdk", true).is_ok());
        assert!(check_url("http://169.254.169.254/", true).is_err());
    }

    #[test]
    fn env_names() {
        assert_eq!(password_env_name("lab-1.x"), "VCENTER_PASSWORD_LAB_1_X");
    }
}

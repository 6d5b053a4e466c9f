//! `ApiError`: the one place where errors become HTTP statuses and `application/problem+json`
//! bodies (RFC 9457). 5xx bodies carry a request id and never internals; the details go to the
//! log under the same id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::backend::BackendError;
use crate::db;
use crate::error::Error;
use crate::vcenter::FieldError;

/// A problem+json body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and title say it all.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Short summary of the status.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What exactly is wrong.
    pub detail: String,
    /// Field-level problems of a request body.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
    /// For 5xx: quote this id when reporting; it marks the log entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One invalid field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProblemField {
    /// JSON path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
    errors: Vec<FieldError>,
}

impl ApiError {
    /// An error with a status and a precise message.
    #[must_use]
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// 400.
    #[must_use]
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404.
    #[must_use]
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 422 with field errors.
    #[must_use]
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: format!("invalid request: {detail}"),
            errors,
        }
    }

    /// The status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Db(e) => e.into(),
            Error::Backend(e) => e.into(),
            Error::Validation(errors) => Self::invalid(errors),
            Error::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            Error::Crypto(e) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl From<db::Error> for ApiError {
    fn from(e: db::Error) -> Self {
        match e {
            // "Not found" becomes 404 here and nowhere else.
            db::Error::NotFound { .. } => Self::not_found(e.to_string()),
            db::Error::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            db::Error::Full => Self::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
            db::Error::Maintenance(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let status = match &e {
            BackendError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            BackendError::NotFound(_) => StatusCode::NOT_FOUND,
            BackendError::Cancelled(_) => StatusCode::CONFLICT,
            BackendError::Connection(_) | BackendError::Failed { .. } => StatusCode::BAD_GATEWAY,
        };
        Self::new(status, e.to_string())
    }
}

impl From<crate::runner::CancelError> for ApiError {
    fn from(e: crate::runner::CancelError) -> Self {
        match e {
            crate::runner::CancelError::AlreadyEnded(..) => {
                Self::new(StatusCode::CONFLICT, e.to_string())
            }
            crate::runner::CancelError::Db(e) => e.into(),
        }
    }
}

fn request_id() -> String {
    let mut bytes = [0_u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    hex::encode(bytes)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (detail, request_id) = if self.status.is_server_error()
            && self.status != StatusCode::SERVICE_UNAVAILABLE
            && self.status != StatusCode::INSUFFICIENT_STORAGE
            && self.status != StatusCode::BAD_GATEWAY
        {
            let id = request_id();
            tracing::error!(request_id = %id, status = self.status.as_u16(), error = %self.detail, "request failed");
            (
                format!("internal error; quote request id {id} when reporting it"),
                Some(id),
            )
        } else {
            (self.detail, None)
        };
        let body = Problem {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail,
            errors: self
                .errors
                .into_iter()
                .map(|e| ProblemField {
                    field: e.field,
                    message: e.message,
                })
                .collect(),
            request_id,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, json).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

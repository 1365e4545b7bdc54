//! Registry errors, rendered as the distribution-spec's JSON error body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_storage::{DigestError, StorageError};
use serde_json::json;

/// Error codes from the distribution-spec ("Error Codes" table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unsupported,
    Unauthorized,
    Denied,
    TooManyRequests,
    /// Not in the spec's table; what every registry answers when its storage fails.
    Unknown,
    /// Not in the spec's table either; distribution's code for a 503.
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unsupported => "UNSUPPORTED",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unknown => "UNKNOWN",
            Code::Unavailable => "UNAVAILABLE",
        }
    }
}

#[derive(Debug)]
pub struct RegistryError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    /// Extra headers, e.g. `Range` on a 416 so the client can resume.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

pub type ApiResult<T> = Result<T, RegistryError>;

impl RegistryError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        RegistryError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn bad_request(code: Code, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: Code, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn digest(e: DigestError) -> Self {
        Self::bad_request(Code::DigestInvalid, e.to_string())
    }
}

impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::BlobUnknown => Self::not_found(Code::BlobUnknown, e.to_string()),
            StorageError::UploadUnknown => Self::not_found(
                Code::BlobUploadUnknown,
                "upload unknown: it was finished, cancelled or never started; start a new one with POST",
            ),
            StorageError::RangeMismatch { offset } => Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Code::BlobUploadInvalid,
                format!("chunk out of order: the next chunk must start at byte {offset}"),
            )
            .with_header(header::RANGE, crate::http::upload_range(offset)),
            StorageError::RangeNotSatisfiable { size } => Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Code::BlobUnknown,
                e.to_string(),
            )
            .with_header(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).unwrap_or(HeaderValue::from_static("*")),
            ),
            StorageError::DigestMismatch { .. } => {
                Self::bad_request(Code::DigestInvalid, e.to_string())
            }
            StorageError::BodyInterrupted(_) => Self::bad_request(
                Code::BlobUploadInvalid,
                format!("{e}; the bytes received are kept: GET the upload URL for the offset and resume"),
            ),
            StorageError::Unavailable(_) => {
                tracing::warn!(error = %e, "storage unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Code::Unavailable,
                    format!("{e}; retry the request"),
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
            StorageError::ReferenceUnknown(d) => Self::bad_request(
                Code::ManifestBlobUnknown,
                format!("{d} referenced by the manifest is not in this repository: push it first"),
            ),
            _ if e.is_storage_full() => {
                tracing::error!(error = %e, "storage full: free space or raise the quota");
                Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    Code::Unknown,
                    format!("the registry's storage is full ({e}); retry once an operator has freed space (an upload that hit this was dropped: start it again)"),
                )
            }
            StorageError::Io(_) | StorageError::Corrupt(_) => {
                tracing::error!(error = %e, "storage failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Unknown, e.to_string())
            }
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

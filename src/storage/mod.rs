//! Everything that touches Azure Storage, behind a small surface.
//!
//! - [`checkpoint`]: the checkpoint store: small JSON records written with compare-and-swap.
//! - [`queue`]: the step queue: send with a delay; receive, delete and extend for local drivers.
//! - [`sas`]: short-lived user-delegation SAS for a staging folder, write-only or read-only.
//! - [`staging`]: staging folders behind a trait (Azure, or the fault explorer's memory).
//! - [`clients`]: the one place that builds Storage clients from a URL and a credential.
//!
//! Every failure comes back as a [`StorageError`] that says whether waiting can help. HTTP
//! statuses become error kinds in [`classify`] only.

pub mod checkpoint;
pub mod clients;
pub mod queue;
pub mod sas;
pub mod staging;

use azure_core::error::ErrorKind;
use azure_core::http::StatusCode;

/// A Storage failure, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Throttling, a server error, a timeout or a dropped connection: the same call may work
    /// later.
    #[error("{what}: {detail} (transient: retrying later can help)")]
    Transient { what: String, detail: String },
    /// The request itself is wrong, or access is denied: retrying will not help.
    #[error("{what}: {detail}")]
    Permanent { what: String, detail: String },
}

impl StorageError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Transient { .. })
    }
}

/// What a failed Storage call means, before the caller decides whether it is an error at all
/// (a conflict on a conditional write is a normal outcome; a 404 on a read is "absent").
#[derive(Debug)]
pub(crate) enum Failure {
    /// 409 (create-only on an existing blob, as Azurite answers) or 412 (stale ETag, or
    /// create-only on an existing blob as Azure answers): another writer got there first.
    Conflict,
    NotFound,
    Error(StorageError),
}

/// The one place where a Storage status becomes a meaning. `what` names the operation and
/// object for the message (never a URL with a SAS in it).
pub(crate) fn classify(what: impl Into<String>, err: azure_core::Error) -> Failure {
    let what = what.into();
    match err.kind() {
        ErrorKind::HttpResponse { status, error_code, .. } => {
            let code = error_code.clone().unwrap_or_default();
            let detail = format!("HTTP {} {}", u16::from(*status), code).trim_end().to_owned();
            match *status {
                StatusCode::Conflict | StatusCode::PreconditionFailed => Failure::Conflict,
                StatusCode::NotFound => Failure::NotFound,
                StatusCode::RequestTimeout
                | StatusCode::TooManyRequests
                | StatusCode::InternalServerError
                | StatusCode::BadGateway
                | StatusCode::ServiceUnavailable
                | StatusCode::GatewayTimeout => Failure::Error(StorageError::Transient { what, detail }),
                _ => Failure::Error(StorageError::Permanent { what, detail }),
            }
        }
        ErrorKind::Connection | ErrorKind::Io => {
            Failure::Error(StorageError::Transient { what, detail: err.to_string() })
        }
        // A credential that cannot get a token now may well get one later (IMDS warming up,
        // a CLI login refresh); say so rather than failing the job for good.
        ErrorKind::Credential => Failure::Error(StorageError::Transient {
            what,
            detail: format!("could not get a token: {err}"),
        }),
        _ => Failure::Error(StorageError::Permanent { what, detail: err.to_string() }),
    }
}

impl Failure {
    /// For calls where a conflict or absence is itself an error.
    pub(crate) fn into_error(self, what: &str) -> StorageError {
        match self {
            Failure::Error(e) => e,
            Failure::Conflict => StorageError::Permanent { what: what.into(), detail: "conflict".into() },
            Failure::NotFound => StorageError::Permanent { what: what.into(), detail: "not found".into() },
        }
    }
}

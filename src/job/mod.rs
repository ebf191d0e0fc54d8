//! Copy requests and the job records we keep for them.
//!
//! - [`uri`]: Kusto table/database URIs and staging directories.
//! - [`request`]: the request schema and its validation into a [`request::JobSpec`].
//! - [`record`]: the job record stored in the checkpoint store, and how a request becomes one
//!   exactly once.

pub mod record;
pub mod request;
pub mod uri;

pub use record::{record_request, JobRecord, JobState, RecordOutcome};
pub use request::{Activity, CopyMode, CopyRequest, JobSpec, Rejection};

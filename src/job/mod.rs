//! Copy requests and the job records we keep for them.
//!
//! - [`uri`]: Kusto table/database URIs and staging directories.
//! - [`hosts`]: which cluster and storage hosts a request may name; [`policy`]: the settings
//!   that narrow them.
//! - [`query`]: the user query's allow-lists (a row filter and a projection, nothing else).
//! - [`redact`]: secrets out of every reason, record and log that quotes user text.
//! - [`request`]: the request schema and its validation into a [`request::JobSpec`].
//! - [`record`]: the job record stored in the checkpoint store, and how a request becomes one
//!   exactly once.

pub mod hosts;
pub mod policy;
pub mod query;
pub mod record;
pub mod redact;
pub mod replication;
pub mod request;
pub mod uri;

pub use record::{record_request, JobRecord, JobState, RecordOutcome};
pub use policy::RequestPolicy;
pub use request::{check_request, Activity, CopyMode, CopyRequest, JobSpec, Rejection, Verify};

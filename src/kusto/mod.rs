//! The Kusto REST client (Azure Data Explorer and Fabric Eventhouse); there is no Rust SDK.
//!
//! Layout:
//! - `api`: [`KustoApi`], the calls the engine makes, as a trait (`Arc<dyn KustoApi>`).
//! - `client`: [`KustoClient`], the HTTP calls to `/v1/rest/mgmt` and `/v2/rest/query`,
//!   headers, `servertimeout`, retries; [`ClientRequestId`].
//! - `ingest`: the ingest-v2 REST API (queue blobs, read per-blob status).
//! - `commands`: typed builders for every command and query the copy sends ([`Command`]).
//! - `digest`: the content digest of a block (row count, per-column and per-row hashes).
//! - `results`: typed rows of the answers the copy reads (operations, extents, capacity...).
//! - `quote`: identifiers, string literals, `h'...'` secrets, the user's query.
//! - `secret`: [`SecretUrl`], a SAS URL that redacts itself in logs.
//! - `response`: v1 and v2 answers into typed [`Table`]s, errors inside a 200.
//! - `value`: Kusto scalar types and values.
//! - `error`: [`KustoError`], the one error type, and the status-to-kind mapping.
//! - `retry`: [`RetryPolicy`], backoff and `Retry-After`.
//! - `endpoint`, `token`: engine/ingest URLs and scopes; cached bearer tokens.

mod api;
mod client;
pub mod commands;
pub mod digest;
mod endpoint;
mod error;
mod ingest;
pub mod quote;
mod response;
pub mod results;
pub mod transport;
mod retry;
mod secret;
mod token;
mod value;

pub use api::KustoApi;
pub use client::{ClientOptions, ClientRequestId, KustoClient};
pub use commands::{Command, CommandKind, CursorWindow, ExportRequest, IngestProperties, IngestionRange};
pub use endpoint::ClusterEndpoint;
pub use error::{ErrorKind, KustoError, RetryClass};
pub use ingest::{
    parse_ingestion_status, BlobState, BlobStatus, IngestionStatus, QueuedBlob, MAX_BLOBS_PER_CALL,
};
pub use quote::{Ident, UserQuery};
pub use response::{parse_error_body, parse_v1, parse_v2, Column, DataSet, Row, Table};
pub use retry::{parse_retry_after, RetryPolicy};
pub use secret::SecretUrl;
pub use transport::{HttpTransport, Transport, WireRequest, WireResponse};
pub use value::{format_datetime, parse_datetime, parse_timespan, KustoType, KustoValue};

/// The error code of an ingestion refused because its `creationTime` is older than the
/// target table's soft-delete period (shared/reference/kusto.md; the retention policy docs:
/// data "outside" the policy is eligible for removal). Matched as a substring: the direct
/// route reports it inside an operation's status text.
pub fn is_too_old_code(text: &str) -> bool {
    text.contains("CreationTimeEarlierThanSoftDeletePeriod")
}

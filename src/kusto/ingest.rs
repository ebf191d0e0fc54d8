//! Queued ingestion through the ingest-v2 REST API on the cluster's ingest endpoint:
//! `POST /v1/rest/ingestion/queued/{db}/{table}` and
//! `GET /v1/rest/ingestion/queued/{db}/{table}/{operationId}?details=true`.
//!
//! The status answer is read in both casings seen: the official client's OpenAPI spec
//! (`ingest-v2/src/main/resources/openapi.yaml` in Azure/azure-kusto-java) names the counts
//! `succeeded`, `failed`, `inProgress`, `canceled` and the blob times `startedAt`,
//! `lastUpdateTime`; the docs' example (management/data-ingestion/queued-ingest-status) uses
//! `Succeeded`, ... and `startTime`, `lastUpdated`. Completion and failure are decided from the
//! per-blob details, as the official client does (a non-empty list, every blob final), never
//! from counts or from an empty list.

use std::fmt;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::client::{ClientRequestId, KustoClient, Request};
use super::commands::IngestProperties;
use super::error::KustoError;
use super::quote::Ident;
use super::secret::SecretUrl;
use super::value::{format_datetime, parse_datetime};

/// The documented batch size of one queued-ingestion call.
pub const MAX_BLOBS_PER_CALL: usize = 20;

/// One blob to ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedBlob {
    pub url: SecretUrl,
    /// Names the blob in the status answer.
    pub source_id: Uuid,
    /// Uncompressed size, when known; helps Kusto plan.
    pub raw_size: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueBody<'a> {
    timestamp: String,
    blobs: Vec<BlobBody<'a>>,
    properties: PropertiesBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlobBody<'a> {
    url: &'a str,
    source_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_size: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PropertiesBody<'a> {
    format: &'a str,
    enable_tracking: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ingest_if_not_exists: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    creation_time: Option<String>,
    /// A string holding the mapping's JSON (the spec types it `string`).
    #[serde(skip_serializing_if = "Option::is_none")]
    ingestion_mapping: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueueAnswer {
    ingestion_operation_id: Option<String>,
}

/// State of one blob of a queued ingestion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobState {
    InProgress,
    Succeeded,
    Failed,
    Canceled,
    /// A state this client does not know; treat as not finished.
    Other(String),
}

impl BlobState {
    fn from_text(s: &str) -> BlobState {
        match s {
            "InProgress" | "Pending" | "Queued" => BlobState::InProgress,
            "Succeeded" => BlobState::Succeeded,
            "Failed" => BlobState::Failed,
            "Canceled" | "Cancelled" => BlobState::Canceled,
            other => BlobState::Other(other.to_string()),
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self, BlobState::Succeeded | BlobState::Failed | BlobState::Canceled)
    }
}

/// Per-blob detail of a queued ingestion.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobStatus {
    pub source_id: Option<String>,
    /// The service echoes the URL, SAS included: kept as a secret.
    pub url: Option<SecretUrl>,
    pub state: BlobState,
    pub start_time: Option<OffsetDateTime>,
    pub last_updated: Option<OffsetDateTime>,
    pub error_code: Option<String>,
    /// `Unknown`, `Permanent`, `Transient` or `Exhausted`, for failed blobs.
    pub failure_status: Option<String>,
    pub details: Option<String>,
}

impl fmt::Debug for BlobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStatus")
            .field("source_id", &self.source_id)
            .field("url", &self.url)
            .field("state", &self.state)
            .field("error_code", &self.error_code)
            .field("failure_status", &self.failure_status)
            .field("details", &self.details)
            .finish()
    }
}

/// Counts by state and, with details, one entry per blob.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngestionStatus {
    pub start_time: Option<OffsetDateTime>,
    pub last_updated: Option<OffsetDateTime>,
    pub succeeded: u64,
    pub failed: u64,
    pub in_progress: u64,
    pub canceled: u64,
    pub blobs: Vec<BlobStatus>,
}

impl IngestionStatus {
    /// Every blob reached a final state. An empty list is not an answer: the service may not
    /// have registered the blobs yet (the official client waits for a non-empty list too).
    pub fn is_finished(&self) -> bool {
        !self.blobs.is_empty() && self.blobs.iter().all(|b| b.state.is_final())
    }

    /// Some blob failed or was canceled (from the details: counts alone are not trusted).
    pub fn has_failures(&self) -> bool {
        self.blobs.iter().any(|b| matches!(b.state, BlobState::Failed | BlobState::Canceled))
    }

    /// A blob the service refused because its creation time is older than the table's
    /// soft-delete period: the service's words, if any. No attempt can change that answer.
    pub fn refused_as_too_old(&self) -> Option<String> {
        self.blobs.iter().find(|b| b.state == BlobState::Failed && b.error_code.as_deref().is_some_and(super::is_too_old_code)).map(|b| {
            format!("{}: {}", b.error_code.as_deref().unwrap_or_default(), b.details.as_deref().unwrap_or("creation time earlier than the soft-delete period"))
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusAnswer {
    start_time: Option<String>,
    last_updated: Option<String>,
    #[serde(default)]
    status: StatusCounts,
    #[serde(default)]
    details: Vec<BlobAnswer>,
}

/// Counts in the spec's camelCase, or the docs' PascalCase.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StatusCounts {
    #[serde(default, alias = "Succeeded")]
    succeeded: u64,
    #[serde(default, alias = "Failed")]
    failed: u64,
    #[serde(default, alias = "InProgress")]
    in_progress: u64,
    #[serde(default, alias = "Canceled")]
    canceled: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlobAnswer {
    source_id: Option<String>,
    url: Option<String>,
    status: Option<String>,
    #[serde(alias = "startedAt")]
    start_time: Option<String>,
    #[serde(alias = "lastUpdateTime")]
    last_updated: Option<String>,
    error_code: Option<String>,
    failure_status: Option<String>,
    details: Option<String>,
}

impl KustoClient {
    fn ingest_url(&self, segments: &[&str]) -> Result<reqwest::Url, KustoError> {
        let mut url = self.endpoint().ingest().clone();
        url.path_segments_mut()
            .map_err(|_| KustoError::invalid_input("ingest URL cannot take a path"))?
            .clear()
            .extend(["v1", "rest", "ingestion", "queued"])
            .extend(segments);
        Ok(url)
    }

    /// Queues up to [`MAX_BLOBS_PER_CALL`] blobs for ingestion with tracking on, and returns
    /// the ingestion operation id. Not retried once it may have reached the service: a second
    /// call would queue the blobs twice (the tag check downstream catches that, but it costs).
    pub async fn queue_ingestion(
        &self,
        database: &Ident,
        table: &Ident,
        blobs: &[QueuedBlob],
        props: &IngestProperties,
        request_id: &ClientRequestId,
    ) -> Result<String, KustoError> {
        if blobs.is_empty() || blobs.len() > MAX_BLOBS_PER_CALL {
            return Err(KustoError::invalid_input(format!(
                "queue 1 to {MAX_BLOBS_PER_CALL} blobs per call, not {}",
                blobs.len()
            )));
        }
        let body = QueueBody {
            timestamp: format_datetime(OffsetDateTime::now_utc()),
            blobs: blobs
                .iter()
                .map(|b| BlobBody {
                    url: b.url.expose(),
                    source_id: b.source_id.to_string(),
                    raw_size: b.raw_size,
                })
                .collect(),
            properties: PropertiesBody {
                format: &props.format,
                enable_tracking: true,
                tags: &props.tags,
                ingest_if_not_exists: &props.ingest_if_not_exists,
                creation_time: props.creation_time.map(format_datetime),
                ingestion_mapping: props.ingestion_mapping.as_deref(),
            },
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| KustoError::invalid_input(format!("request body: {e}")))?;
        let what = format!(
            "queue {} blob(s) into {}.{}",
            blobs.len(),
            database.as_str(),
            table.as_str()
        );
        let request = Request {
            method: Method::POST,
            url: self.ingest_url(&[database.as_str(), table.as_str()])?,
            scope: self.ingest_scope(),
            body: Some(body),
            timeout: std::time::Duration::from_secs(120),
            repeatable: false,
            request_id,
            what: &what,
        };
        self.send(&request, |answer| {
            let parsed: QueueAnswer = serde_json::from_slice(&answer.body).map_err(|e| {
                KustoError::protocol(format!("queued ingestion answer: {e}"))
                    .with_activity_id(answer.activity_id.clone())
            })?;
            match parsed.ingestion_operation_id {
                Some(id) if !id.is_empty() => Ok(id),
                _ => Err(KustoError::protocol("queued ingestion answered no ingestionOperationId")
                    .with_activity_id(answer.activity_id)),
            }
        })
        .await
    }

    /// The status of a queued ingestion, with one entry per blob.
    pub async fn ingestion_status(
        &self,
        database: &Ident,
        table: &Ident,
        operation_id: &str,
        request_id: &ClientRequestId,
    ) -> Result<IngestionStatus, KustoError> {
        let mut url = self.ingest_url(&[database.as_str(), table.as_str(), operation_id])?;
        url.query_pairs_mut().append_pair("details", "true");
        let what = format!("ingestion status {operation_id}");
        let request = Request {
            method: Method::GET,
            url,
            scope: self.ingest_scope(),
            body: None,
            timeout: std::time::Duration::from_secs(60),
            repeatable: true,
            request_id,
            what: &what,
        };
        self.send(&request, |answer| parse_ingestion_status(&answer.body)).await
    }
}

/// Parses the status answer of the ingest-v2 API.
pub fn parse_ingestion_status(body: &[u8]) -> Result<IngestionStatus, KustoError> {
    let a: StatusAnswer = serde_json::from_slice(body)
        .map_err(|e| KustoError::protocol(format!("ingestion status answer: {e}")))?;
    let time = |t: &Option<String>| t.as_deref().and_then(parse_datetime);
    Ok(IngestionStatus {
        start_time: time(&a.start_time),
        last_updated: time(&a.last_updated),
        succeeded: a.status.succeeded,
        failed: a.status.failed,
        in_progress: a.status.in_progress,
        canceled: a.status.canceled,
        blobs: a
            .details
            .into_iter()
            .map(|b| BlobStatus {
                start_time: time(&b.start_time),
                last_updated: time(&b.last_updated),
                source_id: b.source_id,
                url: b.url.as_deref().and_then(|u| SecretUrl::parse(u).ok()),
                state: BlobState::from_text(b.status.as_deref().unwrap_or("")),
                error_code: b.error_code,
                failure_status: b.failure_status,
                details: b.details,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kusto::client::ClientOptions;

    #[derive(Debug)]
    struct NoToken;

    #[async_trait::async_trait]
    impl azure_core::credentials::TokenCredential for NoToken {
        async fn get_token(
            &self,
            _scopes: &[&str],
            _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            unreachable!("no request is sent")
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        let client = KustoClient::new(
            "https://mycluster.westeurope.kusto.windows.net",
            std::sync::Arc::new(NoToken),
            ClientOptions::default(),
        )
        .unwrap();
        let url = client.ingest_url(&["My Db", "T", "op/1?x#y"]).unwrap();
        assert_eq!(
            url.as_str(),
            "https://ingest-mycluster.westeurope.kusto.windows.net/v1/rest/ingestion/queued/My%20Db/T/op%2F1%3Fx%23y"
        );
    }
}

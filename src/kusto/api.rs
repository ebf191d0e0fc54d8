//! The Kusto calls the engine makes, as a trait, so the engine can hold an
//! `Arc<dyn KustoApi>` per cluster and tests can stand in a simulator or a fake.

use async_trait::async_trait;

use super::client::{ClientRequestId, KustoClient};
use super::commands::{Command, IngestProperties};
use super::error::KustoError;
use super::ingest::{IngestionStatus, QueuedBlob};
use super::quote::Ident;
use super::response::DataSet;

#[async_trait]
pub trait KustoApi: Send + Sync {
    /// A query or management command in a database.
    async fn execute(
        &self,
        database: &str,
        command: &Command,
        request_id: &ClientRequestId,
    ) -> Result<DataSet, KustoError>;

    /// Queues blobs on the ingest-v2 API; answers the ingestion operation id.
    async fn queue_ingestion(
        &self,
        database: &Ident,
        table: &Ident,
        blobs: &[QueuedBlob],
        props: &IngestProperties,
        request_id: &ClientRequestId,
    ) -> Result<String, KustoError>;

    /// Per-blob status of a queued ingestion.
    async fn ingestion_status(
        &self,
        database: &Ident,
        table: &Ident,
        operation_id: &str,
        request_id: &ClientRequestId,
    ) -> Result<IngestionStatus, KustoError>;
}

#[async_trait]
impl KustoApi for KustoClient {
    async fn execute(
        &self,
        database: &str,
        command: &Command,
        request_id: &ClientRequestId,
    ) -> Result<DataSet, KustoError> {
        KustoClient::execute(self, database, command, request_id).await
    }

    async fn queue_ingestion(
        &self,
        database: &Ident,
        table: &Ident,
        blobs: &[QueuedBlob],
        props: &IngestProperties,
        request_id: &ClientRequestId,
    ) -> Result<String, KustoError> {
        KustoClient::queue_ingestion(self, database, table, blobs, props, request_id).await
    }

    async fn ingestion_status(
        &self,
        database: &Ident,
        table: &Ident,
        operation_id: &str,
        request_id: &ClientRequestId,
    ) -> Result<IngestionStatus, KustoError> {
        KustoClient::ingestion_status(self, database, table, operation_id, request_id).await
    }
}

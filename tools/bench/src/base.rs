//! T_base: an ideal scheduler written for the benchmark, driving the same simulated clusters
//! and the same Azurite as the engine, so what the simulator and the emulator cost anyway is
//! measured, not blamed on the engine.
//!
//! It knows the blocks (no planning), keeps nothing (no checkpoints, no queue), holds exactly
//! C exports in flight (a FIFO semaphore: a finished export hands its slot on at once) and
//! looks at every running operation every [`POLL`]. Per block: `.export`, polls, `.show
//! operation details`, a queued ingestion into one staging table under the block's tag,
//! polls, `.move extents` by tag, polls.

use crate::stack::RunStack;
use kusto_copy::kusto::{commands, results, ClientRequestId, CursorWindow, ExportRequest, Ident, IngestProperties, IngestionRange, KustoApi, KustoClient, QueuedBlob};
use kusto_copy::storage::sas::{Access, StagingSas};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// Copies every block of `stack` (into its destination table) and answers how long it took.
pub async fn run(stack: &RunStack, capacity: usize) -> Result<Duration, String> {
    let credential: Arc<dyn azure_core::credentials::TokenCredential> = Arc::new(kusto_copy::auth::EmulatorCredential::default());
    let options = kusto_copy::engine::copy::step_client_options();
    let source: Arc<dyn KustoApi> = Arc::new(KustoClient::new(stack.source.url(), credential.clone(), options.clone()).map_err(|e| e.to_string())?);
    let destination: Arc<dyn KustoApi> = Arc::new(KustoClient::new(stack.destination.url(), credential.clone(), options).map_err(|e| e.to_string())?);
    let clients = stack.storage_clients();
    let container = "kc-base";
    clients.container(container).map_err(|e| e.to_string())?.create(None).await.map_err(|e| e.to_string())?;
    let sas = Arc::new(StagingSas::new(clients.blob_service().map_err(|e| e.to_string())?));
    let write = sas.folder_url(container, Access::ExportWrite, time::Duration::hours(1)).await.map_err(|e| e.to_string())?;
    let read = Arc::new(sas.folder_url(container, Access::IngestRead, time::Duration::hours(1)).await.map_err(|e| e.to_string())?);
    stack.destination.command(crate::stack::DB, &format!(".create table BaseStaging ({})", crate::stack::SCHEMA)).map_err(|e| e.detail)?;
    let rid = ClientRequestId::for_step("bench-base");
    let cursor = results::cursor(&source.execute(crate::stack::DB, &commands::cursor_current(), &rid).await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let window = Arc::new(CursorWindow { from: None, to: cursor });

    let slots = Arc::new(tokio::sync::Semaphore::new(capacity));
    let started = Instant::now();
    let mut blocks = tokio::task::JoinSet::new();
    for k in 0..stack.blocks {
        let range = stack.ingestion_range(k);
        let (source, destination, write, read, window, slots) = (source.clone(), destination.clone(), write.clone(), read.clone(), window.clone(), slots.clone());
        // Spawned in block order; the semaphore is FIFO, so exports start in that order.
        let permit = slots.acquire_owned();
        blocks.spawn(async move {
            let permit = permit.await.map_err(|e| e.to_string())?;
            let block = Block { k, range, window: &window };
            let blobs = block.export(source.as_ref(), &write).await?;
            drop(permit);
            block.ingest(destination.as_ref(), &read, &blobs).await?;
            block.commit(destination.as_ref()).await
        });
    }
    while let Some(done) = blocks.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(started.elapsed())
}

struct Block<'a> {
    k: u64,
    range: IngestionRange,
    window: &'a CursorWindow,
}

impl Block<'_> {
    fn tag(&self) -> String {
        format!("base-{}", self.k)
    }

    async fn export(&self, source: &dyn KustoApi, write: &kusto_copy::kusto::SecretUrl) -> Result<Vec<String>, String> {
        let table = Ident::new("Events").map_err(|e| e.to_string())?;
        let prefix = format!("b{}", self.k);
        let request = ExportRequest { table: &table, window: self.window, range: Some(&self.range), user_query: None, destinations: std::slice::from_ref(write), name_prefix: &prefix };
        let rid = ClientRequestId::for_step("bench-base-export");
        let answer = source.execute(crate::stack::DB, &commands::export_parquet(&request).map_err(|e| e.to_string())?, &rid).await.map_err(|e| e.to_string())?;
        let op = results::operation_id(&answer).map_err(|e| e.to_string())?;
        wait_for(source, op).await?;
        let details = source.execute(crate::stack::DB, &commands::show_operation_details(op), &rid).await.map_err(|e| e.to_string())?;
        let folder = write.expose_url().path().to_owned();
        Ok(results::exported_blobs(&details)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|b| b.path.split_once(folder.as_str()).map(|(_, name)| name.trim_start_matches('/').to_owned()).unwrap_or(b.path))
            .collect())
    }

    async fn ingest(&self, destination: &dyn KustoApi, read: &kusto_copy::kusto::SecretUrl, blobs: &[String]) -> Result<(), String> {
        let (db, table) = (Ident::new(crate::stack::DB).map_err(|e| e.to_string())?, Ident::new("BaseStaging").map_err(|e| e.to_string())?);
        let queued: Vec<QueuedBlob> = blobs.iter().map(|b| QueuedBlob { url: read.file(b), source_id: uuid::Uuid::new_v4(), raw_size: None }).collect();
        let props = IngestProperties { tags: vec![self.tag()], ..IngestProperties::parquet() };
        let rid = ClientRequestId::for_step("bench-base-ingest");
        let op = destination.queue_ingestion(&db, &table, &queued, &props, &rid).await.map_err(|e| e.to_string())?;
        loop {
            let status = destination.ingestion_status(&db, &table, &op, &rid).await.map_err(|e| e.to_string())?;
            if status.is_finished() {
                return if status.has_failures() { Err(format!("block {}: ingestion failed", self.k)) } else { Ok(()) };
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn commit(&self, destination: &dyn KustoApi) -> Result<(), String> {
        let (from, to) = (Ident::new("BaseStaging").map_err(|e| e.to_string())?, Ident::new("Events").map_err(|e| e.to_string())?);
        let rid = ClientRequestId::for_step("bench-base-move");
        let command = commands::move_extents_with_tag(&from, &to, &self.tag(), true).map_err(|e| e.to_string())?;
        let answer = destination.execute(crate::stack::DB, &command, &rid).await.map_err(|e| e.to_string())?;
        wait_for(destination, results::operation_id(&answer).map_err(|e| e.to_string())?).await
    }
}

/// Polls `.show operations (op)` until the operation is over; an error unless it completed.
async fn wait_for(cluster: &dyn KustoApi, op: uuid::Uuid) -> Result<(), String> {
    let rid = ClientRequestId::for_step("bench-base-poll");
    let command = commands::show_operations(&[op]).map_err(|e| e.to_string())?;
    loop {
        let answer = cluster.execute(crate::stack::DB, &command, &rid).await.map_err(|e| e.to_string())?;
        match results::operations(&answer).map_err(|e| e.to_string())?.first() {
            Some(o) if !o.state.is_pending() => {
                return if o.state == results::OperationState::Completed { Ok(()) } else { Err(format!("operation {op}: {:?} {:?}", o.state, o.status)) };
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

//! The copy engine: each step loads its checkpoint, checks the step is still due, does its
//! side effect fenced so a repeat is harmless, writes the new state with compare-and-swap,
//! and names the next messages. Drivers (the Functions host through `kc serve`, or `kc copy`
//! in-process) only move those messages.
//!
//! Exactly once rests on three fences:
//! - an export attempt is recorded before `.export` is sent, and each attempt writes to its
//!   own staging folder: a lost or failed export is abandoned, never half-used;
//! - ingestion goes into a staging table with a tag unique to (block, export attempt,
//!   ingestion attempt); only the tag's rows are counted, and only a tag holding exactly the
//!   exported rows is moved; anything else is dropped and ingested again;
//! - the move is checked before it is repeated: rows already at the destination under the
//!   tag, or a tag gone from both tables, mean it was done.

use super::plan::PlanLimits;
use super::records::{ingest_verdict, BlockRecord, BlockState, IngestRoute, IngestVerdict, IterationRecord, IterationState, MessageAction, Step};
use super::{Delivery, Engine, EngineError, Outgoing, StepMessage, Tick};
use crate::job::record::{list_jobs, read_job};
use crate::job::{Activity, CopyMode, JobRecord, JobSpec, JobState};
use crate::kusto::{commands, results, ClientRequestId, CursorWindow, ExportRequest, Ident, IngestionRange, KustoApi, KustoError, SecretUrl, UserQuery};
use crate::storage::checkpoint::{self, CheckpointStore, ETag, Written};
use crate::storage::clients::StorageClients;
use crate::storage::sas::{Access, StagingSas};
use crate::storage::StorageError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// Export attempts of one block before the activity is stopped.
const MAX_EXPORT_ATTEMPTS: u32 = 5;
const MAX_INGEST_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub limits: PlanLimits,
    /// Shortest wait between two looks at a running operation (a queue's visibility is in
    /// whole seconds; the in-process driver can go lower).
    pub min_poll: Duration,
    pub max_poll: Duration,
    pub sas_lifetime: time::Duration,
    pub ingest_route: IngestRoute,
    /// A block untouched for this long is swept: its due step is sent again.
    pub stall_after: time::Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            ingest_route: IngestRoute::Queued,
            stall_after: time::Duration::minutes(10),
            limits: PlanLimits::default(),
            min_poll: Duration::from_secs(2),
            max_poll: Duration::from_secs(60),
            sas_lifetime: time::Duration::hours(6),
        }
    }
}

/// Kusto client options for steps: a few quick retries inside a step; past those, the step
/// fails as transient and comes back through its queue (after the host's visibility timeout,
/// or the local driver's backoff) instead of holding an invocation for minutes.
pub fn step_client_options() -> crate::kusto::ClientOptions {
    crate::kusto::ClientOptions {
        retry: crate::kusto::RetryPolicy {
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            max_attempts: 3,
            max_retry_after: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(30),
        },
        ..crate::kusto::ClientOptions::default()
    }
}

/// Staging storage for one account: clients and the SAS minter.
pub struct Staging {
    pub clients: StorageClients,
    pub sas: StagingSas,
}

/// How the engine reaches clusters and staging accounts.
pub trait Connections: Send + Sync {
    fn kusto(&self, cluster: &str) -> Result<Arc<dyn KustoApi>, EngineError>;
    fn staging(&self, account_url: &str) -> Result<Arc<Staging>, EngineError>;
}

/// Connections made with one credential, cached per cluster and per account.
pub struct LiveConnections {
    credential: Arc<dyn azure_core::credentials::TokenCredential>,
    ca_cert: Option<std::path::PathBuf>,
    kusto: Mutex<HashMap<String, Arc<dyn KustoApi>>>,
    staging: Mutex<HashMap<String, Arc<Staging>>>,
    kusto_options: crate::kusto::ClientOptions,
}

impl LiveConnections {
    pub fn new(
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
        ca_cert: Option<std::path::PathBuf>,
        kusto_options: crate::kusto::ClientOptions,
    ) -> Self {
        LiveConnections { credential, ca_cert, kusto: Default::default(), staging: Default::default(), kusto_options }
    }
}

impl Connections for LiveConnections {
    fn kusto(&self, cluster: &str) -> Result<Arc<dyn KustoApi>, EngineError> {
        let mut cache = self.kusto.lock().unwrap();
        if let Some(c) = cache.get(cluster) {
            return Ok(c.clone());
        }
        let client = crate::kusto::KustoClient::new(cluster, self.credential.clone(), self.kusto_options.clone())
            .map_err(|e| EngineError::Permanent(format!("cluster {cluster}: {e}")))?;
        let client: Arc<dyn KustoApi> = Arc::new(client);
        cache.insert(cluster.to_owned(), client.clone());
        Ok(client)
    }

    fn staging(&self, account_url: &str) -> Result<Arc<Staging>, EngineError> {
        let mut cache = self.staging.lock().unwrap();
        if let Some(s) = cache.get(account_url) {
            return Ok(s.clone());
        }
        let url: url::Url = account_url.parse().map_err(|e| EngineError::Permanent(format!("staging account {account_url}: {e}")))?;
        let budget = if crate::config::is_loopback(&url) {
            crate::storage::clients::RetryBudget::LOCAL
        } else {
            crate::storage::clients::RetryBudget::PRODUCTION
        };
        // Only the blob service is used for staging; the queue URL is never called.
        let clients = StorageClients::new(url.clone(), url, Some(self.credential.clone()), self.ca_cert.as_deref(), budget)
            .map_err(|e| EngineError::Permanent(e.to_string()))?;
        let sas = StagingSas::new(clients.blob_service().map_err(|e| EngineError::Permanent(e.to_string()))?);
        let staging = Arc::new(Staging { clients, sas });
        cache.insert(account_url.to_owned(), staging.clone());
        Ok(staging)
    }
}

/// Per activity: which iteration is current and whether the activity is over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityRecord {
    pub iteration: u64,
    #[serde(flatten)]
    pub state: ActivityState,
    /// Rows the last plans could not copy because they have no ingestion time.
    pub rows_without_ingestion_time: u64,
    pub copied_rows: u64,
    /// The last iteration whose rows are counted above (finishing is idempotent by it).
    #[serde(default)]
    pub last_finished_iteration: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_finished_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ActivityState {
    Running,
    /// Waiting for the next iteration of a continuous copy.
    Idle,
    Completed,
    Failed { reason: String },
}

pub mod keys {
    pub fn activity(job: &str, activity: &str) -> String {
        format!("jobs/{job}/{activity}/activity.json")
    }
    pub fn iteration(job: &str, activity: &str, n: u64) -> String {
        format!("jobs/{job}/{activity}/{n:06}/iteration.json")
    }
    pub fn blocks(job: &str, activity: &str, n: u64) -> String {
        format!("jobs/{job}/{activity}/{n:06}/blocks/")
    }
    pub fn block(job: &str, activity: &str, n: u64, block: u64) -> String {
        format!("jobs/{job}/{activity}/{n:06}/blocks/{block:06}.json")
    }
}

/// A short stable name for (job, activity, iteration): staging table, folders and tags
/// derive from it, so a repeated step finds what an earlier try made.
fn iteration_id(job: &str, activity: &str, n: u64) -> String {
    let ns = uuid::Uuid::from_u128(0x6b63_7374_6167_4e47_8a1b_2c3d_4e5f_6071);
    uuid::Uuid::new_v5(&ns, format!("{job}\n{activity}\n{n}").as_bytes()).simple().to_string()[..12].to_owned()
}

fn folder_name(iteration_id: &str, block: u64, attempt: u32) -> String {
    format!("kcs-{iteration_id}-{block}-{attempt}")
}

fn tag_for(iteration_id: &str, block: &BlockRecord) -> String {
    format!("drop-by:kc-{iteration_id}-{}-{}-{}", block.number, block.export_attempt, block.ingest_attempt)
}

fn kusto_err(what: &str, e: KustoError) -> EngineError {
    if e.is_transient() {
        EngineError::Transient(format!("{what}: {e}"))
    } else {
        EngineError::Permanent(format!("{what}: {e}"))
    }
}

fn storage_err(e: StorageError) -> EngineError {
    if e.is_transient() {
        EngineError::Transient(e.to_string())
    } else {
        EngineError::Permanent(e.to_string())
    }
}

fn record_err(e: checkpoint::RecordError) -> EngineError {
    if e.is_transient() {
        EngineError::Transient(e.to_string())
    } else {
        EngineError::Permanent(e.to_string())
    }
}

fn ident(name: &str) -> Result<Ident, EngineError> {
    Ident::new(name).map_err(|e| EngineError::Permanent(e.to_string()))
}

/// Everything a block step needs to know about where it is.
struct Place {
    job: JobRecord,
    spec: JobSpec,
    activity: Activity,
    iteration: u64,
}

impl Place {
    fn id(&self) -> String {
        iteration_id(&self.job.id, &self.activity.name, self.iteration)
    }
    fn message(&self, step: Step, block: Option<u64>) -> StepMessage {
        StepMessage {
            job: self.job.id.clone(),
            activity: Some(self.activity.name.clone()),
            iteration: Some(self.iteration),
            block,
            step: step.name().into(),
        }
    }
    fn now(&self, step: Step, block: Option<u64>) -> Outgoing {
        Outgoing { message: self.message(step, block), delay: Duration::ZERO }
    }
    fn later(&self, step: Step, block: Option<u64>, delay: Duration) -> Outgoing {
        Outgoing { message: self.message(step, block), delay }
    }
    fn staging_table(&self) -> String {
        format!("kc_staging_{}", self.id())
    }
}

pub struct CopyEngine {
    store: Arc<dyn CheckpointStore>,
    connections: Arc<dyn Connections>,
    options: EngineOptions,
}

impl CopyEngine {
    pub fn new(store: Arc<dyn CheckpointStore>, connections: Arc<dyn Connections>, options: EngineOptions) -> Self {
        CopyEngine { store, connections, options }
    }

    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        &self.store
    }

    async fn place(&self, message: &StepMessage) -> Result<Place, EngineError> {
        let job = read_job(self.store.as_ref(), &message.job)
            .await
            .map_err(record_err)?
            .ok_or_else(|| EngineError::Permanent(format!("no job '{}'", message.job)))?;
        let spec = job.spec.clone().ok_or_else(|| EngineError::Permanent(format!("job '{}' was rejected", job.id)))?;
        let name = message.activity.as_deref().ok_or_else(|| EngineError::Permanent("step message names no activity".into()))?;
        let activity = spec
            .activities
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or_else(|| EngineError::Permanent(format!("job '{}' has no activity '{name}'", job.id)))?;
        let iteration = message.iteration.unwrap_or(1);
        Ok(Place { job, spec, activity, iteration })
    }

    fn poll_delay(&self, started_at: OffsetDateTime) -> Duration {
        // Look again after about a quarter of the time it has run so far: short operations
        // are seen soon after they end, long ones are not polled needlessly.
        let elapsed = (OffsetDateTime::now_utc() - started_at).unsigned_abs();
        (elapsed / 4).clamp(self.options.min_poll, self.options.max_poll)
    }

    async fn read<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<(T, ETag)>, EngineError> {
        checkpoint::read_json(self.store.as_ref(), key).await.map_err(record_err)
    }

    /// Writes `next` if the record is still at `etag`; `false` when another delivery won.
    async fn swap<T: Serialize>(&self, key: &str, next: &T, etag: &ETag) -> Result<bool, EngineError> {
        Ok(matches!(checkpoint::replace_json(self.store.as_ref(), key, next, etag).await.map_err(storage_err)?, Written::Done(_)))
    }

    /// Writes a block record with its `touched_at` set now, so the sweeper can tell a block in
    /// progress from one whose message was lost.
    async fn swap_block(&self, key: &str, block: &mut BlockRecord, etag: &ETag) -> Result<bool, EngineError> {
        block.touched_at = OffsetDateTime::now_utc();
        self.swap(key, block, etag).await
    }

    async fn fail_activity(&self, place: &Place, reason: String) -> Result<Vec<Outgoing>, EngineError> {
        let key = keys::activity(&place.job.id, &place.activity.name);
        loop {
            let Some((mut record, etag)) = self.read::<ActivityRecord>(&key).await? else { break };
            record.state = ActivityState::Failed { reason: reason.clone() };
            if self.swap(&key, &record, &etag).await? {
                break;
            }
        }
        tracing::error!(job = %place.job.id, activity = %place.activity.name, %reason, "activity stopped");
        Err(EngineError::Permanent(reason))
    }

    // ---- plan ------------------------------------------------------------------------

    async fn plan(&self, place: &Place) -> Result<Vec<Outgoing>, EngineError> {
        let (job, activity, n) = (&place.job.id, &place.activity.name, place.iteration);
        let source = self.connections.kusto(&place.activity.source.cluster)?;
        let dest = self.connections.kusto(&place.activity.destination.cluster)?;
        let key = keys::iteration(job, activity, n);
        let request_id = |what: &str| ClientRequestId::new(what, job, &format!("{activity}/{n}"), 1);

        let (iteration, etag) = match self.read::<IterationRecord>(&key).await? {
            Some((it, _)) if it.state != IterationState::Planning => return Ok(vec![]), // planned already
            Some(found) => found,
            None => {
                let cursor_from = if n > 1 {
                    match self.read::<IterationRecord>(&keys::iteration(job, activity, n - 1)).await? {
                        Some((prev, _)) => Some(prev.cursor_to),
                        None => return Err(EngineError::Permanent(format!("iteration {n} has no predecessor"))),
                    }
                } else {
                    None
                };
                let answer = source
                    .execute(&place.activity.source.database, &commands::cursor_current(), &request_id("cursor"))
                    .await
                    .map_err(|e| kusto_err("read the source cursor", e))?;
                let cursor_to = results::cursor(&answer).map_err(|e| kusto_err("read the source cursor", e))?;
                let record = IterationRecord {
                    number: n,
                    // NewOnly starts after what is there now: the first window is empty.
                    cursor_from: if n == 1 && place.spec.copy_mode == CopyMode::NewOnly { Some(cursor_to.clone()) } else { cursor_from },
                    cursor_to,
                    state: IterationState::Planning,
                    blocks: 0,
                    planned_rows: 0,
                    rows_without_ingestion_time: 0,
                    staging_table: place.staging_table(),
                    summarized: false,
                    plan_next: None,
                    plan_end: None,
                    pending: Vec::new(),
                    started_at: OffsetDateTime::now_utc(),
                    finished_at: None,
                };
                if let Written::Conflict = checkpoint::create_json(self.store.as_ref(), &key, &record).await.map_err(storage_err)? {
                    // Another delivery started this plan: continue with its cursor.
                }
                self.read::<IterationRecord>(&key).await?.ok_or_else(|| EngineError::Transient("iteration record vanished".into()))?
            }
        };
        let activity_key = keys::activity(job, activity);
        if self.read::<ActivityRecord>(&activity_key).await?.is_none() {
            let record = ActivityRecord {
                iteration: n,
                state: ActivityState::Running,
                rows_without_ingestion_time: 0,
                copied_rows: 0,
                last_finished_iteration: 0,
                last_finished_at: None,
            };
            checkpoint::create_json(self.store.as_ref(), &activity_key, &record).await.map_err(storage_err)?;
        }

        let table = ident(&place.activity.source.table)?;
        let dest_table = ident(&place.activity.destination.table)?;
        let user_query = place.activity.query.as_deref().map(UserQuery::new).transpose().map_err(|e| EngineError::Permanent(e.to_string()))?;
        let window = CursorWindow { from: iteration.cursor_from.clone(), to: iteration.cursor_to.clone() };
        let bin = self.options.limits.bin;

        if !iteration.summarized {
            // First planning step of the iteration: the destination must be able to take the
            // rows before anything is exported, and the window's extent bounds the chunks.
            self.check_destination(place, &source, &dest, &table, &dest_table, user_query.as_ref()).await?;
            let summary = source
                .execute(&place.activity.source.database, &commands::window_summary(&table, &window, user_query.as_ref()).map_err(|e| kusto_err("plan", e))?, &request_id("plan-window"))
                .await
                .and_then(|a| results::window_summary(&a))
                .map_err(|e| kusto_err("measure the copy window", e))?;
            // Outside every cursor window, so counted over the whole table.
            let no_time = source
                .execute(&place.activity.source.database, &commands::rows_without_ingestion_time(&table, user_query.as_ref()), &request_id("plan-no-time"))
                .await
                .and_then(|a| results::count(&a))
                .map_err(|e| kusto_err("count rows without ingestion time", e))?
                .max(summary.rows_without_ingestion_time)
                .max(0) as u64;
            if no_time > 0 {
                tracing::warn!(job, activity, rows = no_time, "rows without ingestion time cannot be copied by cursor");
            }
            let mut next = iteration.clone();
            next.summarized = true;
            next.rows_without_ingestion_time = no_time;
            next.plan_next = summary.first.map(|t| align_down(t, bin));
            // Half-open: one microsecond past the last ingestion time keeps it in range.
            next.plan_end = summary.last.map(|t| t + time::Duration::microseconds(1));
            if !self.swap(&key, &next, &etag).await? {
                return Ok(vec![]); // another delivery is planning this iteration
            }
            return Ok(vec![place.now(Step::Plan, None)]);
        }

        // Blocks decided by an earlier step are written from the record that decided them:
        // whoever writes them writes the same blocks, and a crash in between loses nothing.
        if !iteration.pending.is_empty() {
            for block in &iteration.pending {
                checkpoint::create_json(self.store.as_ref(), &keys::block(job, activity, n, block.number), block).await.map_err(storage_err)?;
            }
            let mut next = iteration.clone();
            next.pending.clear();
            if !self.swap(&key, &next, &etag).await? {
                return Ok(vec![]);
            }
            return Ok(vec![place.now(Step::Plan, None)]);
        }

        // One bounded chunk of bins per step, so no step outlives a function's time limit
        // however large the window. The chunk's blocks are decided here and recorded with the
        // same compare-and-swap that moves planning on: two deliveries of this step cannot
        // both decide (merges between their looks at the extents could make them disagree).
        if let (Some(from), Some(end)) = (iteration.plan_next, iteration.plan_end) {
            if from < end {
                let to = (from + bin * self.options.limits.bins_per_step as i32).min(end);
                let range = IngestionRange { from, to };
                let counts_cmd = commands::row_counts_in_range(&table, &window, Some(&range), user_query.as_ref(), bin.unsigned_abs()).map_err(|e| kusto_err("plan", e))?;
                let counts = source
                    .execute(&place.activity.source.database, &counts_cmd, &request_id("plan-counts"))
                    .await
                    .and_then(|a| results::row_count_bins(&a))
                    .map_err(|e| kusto_err("count source rows", e))?;
                // A bin with more rows than a block holds is counted again by minute, and a
                // minute still too large by second: rows that share one ingestion second
                // cannot be split by ingestion time and stay one block.
                let mut sized: Vec<(results::RowCountBin, time::Duration)> = counts.into_iter().map(|c| (c, bin)).collect();
                for (coarse, fine) in [(bin, time::Duration::minutes(1)), (time::Duration::minutes(1), time::Duration::seconds(1))] {
                    if fine >= coarse {
                        continue;
                    }
                    let at_size: Vec<results::RowCountBin> = sized.iter().filter(|(_, s)| *s == coarse).map(|(c, _)| c.clone()).collect();
                    for start in super::plan::oversized_bins(&at_size, self.options.limits.max_rows) {
                        let range = IngestionRange { from: start, to: start + coarse };
                        let cmd = commands::row_counts_in_range(&table, &window, Some(&range), user_query.as_ref(), fine.unsigned_abs()).map_err(|e| kusto_err("plan", e))?;
                        let finer = source
                            .execute(&place.activity.source.database, &cmd, &request_id("plan-refine"))
                            .await
                            .and_then(|a| results::row_count_bins(&a))
                            .map_err(|e| kusto_err("count source rows", e))?;
                        sized.retain(|(c, s)| !(*s == coarse && c.bin == Some(start)));
                        sized.extend(finer.into_iter().map(|c| (c, fine)));
                    }
                }
                let extents = source
                    .execute(&place.activity.source.database, &commands::show_extents(&table, None).map_err(|e| kusto_err("plan", e))?, &request_id("plan-extents"))
                    .await
                    .and_then(|a| results::extents(&a))
                    .map_err(|e| kusto_err("list source extents", e))?;
                let planned = super::plan::plan_sized(&sized, &extents, &self.options.limits);
                let mut next = iteration.clone();
                next.pending = planned
                    .blocks
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BlockRecord::planned(iteration.blocks + i as u64, b.from, b.to, b.rows, b.creation_time))
                    .collect();
                next.blocks += planned.blocks.len() as u64;
                next.planned_rows += planned.blocks.iter().map(|b| b.rows).sum::<u64>();
                next.plan_next = Some(to);
                if !self.swap(&key, &next, &etag).await? {
                    return Ok(vec![]);
                }
                return Ok(vec![place.now(Step::Plan, None)]);
            }
        }

        // Planned: stage, hand out export slots, start copying.
        if iteration.blocks > 0 {
            self.prepare_staging_table(place, &dest, &dest_table).await?;
        }
        // Exports in flight: the job's export count, never more than the cluster can run.
        let capacity = source
            .execute(&place.activity.source.database, &commands::show_capacity(), &request_id("capacity"))
            .await
            .and_then(|a| results::capacities(&a))
            .map(|caps| caps.into_iter().find(|c| c.resource == "DataExport").map(|c| c.total.max(1) as u64))
            .map_err(|e| kusto_err("read the source's export capacity", e))?;
        let slots = export_slots(place.spec.export_count, capacity);
        let first = iteration.blocks.min(slots);
        self.set_slots_handed(place, first, capacity).await?;
        let mut next = iteration.clone();
        next.state = IterationState::Copying;
        if !self.swap(&key, &next, &etag).await? {
            return Ok(vec![]);
        }
        if next.blocks == 0 {
            // An empty window completes cleanly.
            self.finish_iteration(place, &next).await?;
            return Ok(vec![]);
        }
        Ok((0..first).map(|b| place.now(Step::Export, Some(b))).collect())
    }

    /// Can the destination take what the copy produces? Creates a missing table when the job
    /// asks; otherwise stops the activity with a message naming what is wrong.
    async fn check_destination(
        &self,
        place: &Place,
        source: &Arc<dyn KustoApi>,
        dest: &Arc<dyn KustoApi>,
        table: &Ident,
        dest_table: &Ident,
        user_query: Option<&UserQuery>,
    ) -> Result<(), EngineError> {
        let request_id = |what: &str| ClientRequestId::new(what, &place.job.id, &format!("{}/{}", place.activity.name, place.iteration), 1);
        let schema = |answer: Result<crate::kusto::DataSet, KustoError>, what: &str| {
            answer.and_then(|a| a.primary().map(|t| t.columns.clone())).map_err(|e| kusto_err(what, e))
        };
        let produced = schema(source.execute(&place.activity.source.database, &commands::result_schema(table, user_query), &request_id("schema")).await, "read the copy's schema")?;
        let tables = dest
            .execute(&place.activity.destination.database, &commands::show_tables(), &request_id("show-tables"))
            .await
            .and_then(|a| results::table_names(&a))
            .map_err(|e| kusto_err("list destination tables", e))?;
        if !tables.iter().any(|t| t == dest_table.as_str()) {
            if !place.spec.create_destination_table {
                self.fail_activity(
                    place,
                    format!(
                        "destination table {} does not exist in database {} of {}: create it with the schema the copy produces, or submit the job with createDestinationTable",
                        dest_table.as_str(),
                        place.activity.destination.database,
                        place.activity.destination.cluster
                    ),
                )
                .await?;
            }
            let cmd = commands::create_table(dest_table, &produced).map_err(|e| kusto_err("create the destination table", e))?;
            dest.execute(&place.activity.destination.database, &cmd, &request_id("create-table")).await.map_err(|e| kusto_err("create the destination table", e))?;
        }
        let accepted = schema(dest.execute(&place.activity.destination.database, &commands::result_schema(dest_table, None), &request_id("schema")).await, "read the destination schema")?;
        if let Some(problem) = super::plan::schema_mismatch(&produced, &accepted) {
            self.fail_activity(place, format!("destination table {} cannot take this copy: {problem}", dest_table.as_str())).await?;
        }
        Ok(())
    }

    async fn prepare_staging_table(&self, place: &Place, dest: &Arc<dyn KustoApi>, dest_table: &Ident) -> Result<(), EngineError> {
        let db = &place.activity.destination.database;
        let staging = ident(&place.staging_table())?;
        let rid = ClientRequestId::new("staging-table", &place.job.id, &place.activity.name, 1);
        for cmd in [
            commands::create_table_based_on(&staging, dest_table, Some("kusto-copy")).map_err(|e| kusto_err("staging table", e))?,
            commands::disable_merges(&staging).map_err(|e| kusto_err("staging table", e))?,
        ] {
            dest.execute(db, &cmd, &rid).await.map_err(|e| kusto_err("prepare the staging table", e))?;
        }
        Ok(())
    }

    /// Export slots: blocks `[0, handed)` have been given one. Each finished export hands
    /// its slot to the next block at once.
    async fn set_slots_handed(&self, place: &Place, handed: u64, cluster_capacity: Option<u64>) -> Result<(), EngineError> {
        let key = slots_key(place);
        match checkpoint::create_json(self.store.as_ref(), &key, &Slots { handed, cluster_capacity }).await.map_err(storage_err)? {
            Written::Done(_) | Written::Conflict => Ok(()),
        }
    }

    async fn hand_over_slot(&self, place: &Place, blocks: u64) -> Result<Vec<Outgoing>, EngineError> {
        let key = slots_key(place);
        loop {
            let Some((slots, etag)) = self.read::<Slots>(&key).await? else { return Ok(vec![]) };
            if slots.handed >= blocks {
                return Ok(vec![]);
            }
            if self.swap(&key, &Slots { handed: slots.handed + 1, cluster_capacity: slots.cluster_capacity }, &etag).await? {
                return Ok(vec![place.now(Step::Export, Some(slots.handed))]);
            }
        }
    }

    // ---- blocks ------------------------------------------------------------------------

    async fn block_step(&self, place: &Place, block_no: u64, step: Step, delivery: &Delivery) -> Result<Vec<Outgoing>, EngineError> {
        let key = keys::block(&place.job.id, &place.activity.name, place.iteration, block_no);
        let Some((block, etag)) = self.read::<BlockRecord>(&key).await? else {
            return Err(EngineError::Permanent(format!("no block {block_no} in iteration {}", place.iteration)));
        };
        match block.on_message(step, delivery.dequeue_count) {
            MessageAction::Ignore => Ok(vec![]),
            MessageAction::Reemit(due) => Ok(vec![place.now(due, Some(block_no))]),
            MessageAction::Run => match step {
                Step::Export => self.export(place, &key, block, etag).await,
                Step::AwaitExport => self.await_export(place, &key, block, etag).await,
                Step::Ingest => self.ingest(place, &key, block, etag).await,
                Step::AwaitIngest => self.await_ingest(place, &key, block, etag).await,
                Step::Commit => self.commit(place, &key, block, etag).await,
                Step::Cleanup => self.cleanup(place, &key, block, etag).await,
                Step::Plan => Ok(vec![]),
            },
        }
    }

    async fn export(&self, place: &Place, key: &str, mut block: BlockRecord, etag: ETag) -> Result<Vec<Outgoing>, EngineError> {
        if block.export_attempt >= MAX_EXPORT_ATTEMPTS {
            let reason = format!("block {} failed to export {MAX_EXPORT_ATTEMPTS} times; last error: {}", block.number, block.last_error.clone().unwrap_or_default());
            return self.fail_activity(place, reason).await;
        }
        // A slot of the source cluster, shared with every other job exporting from it.
        if !self.cluster_slot(place, &block, SlotAction::Acquire).await? {
            return Ok(vec![place.later(Step::Export, Some(block.number), self.options.min_poll)]);
        }
        // Record the attempt before sending the export: a crash after sending costs one
        // export into a folder nobody will read.
        block.export_attempt += 1;
        let folder = folder_name(&place.id(), block.number, block.export_attempt);
        block.folders.push(folder.clone());
        block.state = BlockState::Exporting { operation_id: None, started_at: OffsetDateTime::now_utc() };
        if !self.swap_block(key, &mut block, &etag).await? {
            return Ok(vec![]);
        }
        let etag = self.read::<BlockRecord>(key).await?.map(|(_, e)| e).ok_or_else(|| EngineError::Transient("block vanished".into()))?;

        let staging = self.connections.staging(&place.spec.staging[0].account_url)?;
        let container = staging.clients.container(&folder).map_err(|e| EngineError::Permanent(e.to_string()))?;
        if let Err(e) = container.create(None).await {
            if e.http_status() != Some(azure_core::http::StatusCode::Conflict) {
                return Err(EngineError::Transient(format!("create staging folder {folder}: {}", e.http_status().map(|s| u16::from(s).to_string()).unwrap_or_else(|| e.to_string()))));
            }
        }
        let sas = staging.sas.folder_url(&folder, Access::ExportWrite, self.options.sas_lifetime).await.map_err(storage_err)?;
        let destination = sas;
        let table = ident(&place.activity.source.table)?;
        let (window, range) = self.block_window(place, &block).await?;
        let user_query = place.activity.query.as_deref().map(UserQuery::new).transpose().map_err(|e| EngineError::Permanent(e.to_string()))?;
        let cmd = commands::export_parquet(&ExportRequest {
            table: &table,
            window: &window,
            range: Some(&range),
            user_query: user_query.as_ref(),
            destinations: std::slice::from_ref(&destination),
            name_prefix: &format!("b{}", block.number),
        })
        .map_err(|e| kusto_err("build the export", e))?;
        let source = self.connections.kusto(&place.activity.source.cluster)?;
        let rid = ClientRequestId::new("export", &place.job.id, &block.number.to_string(), block.export_attempt);
        let answer = source.execute(&place.activity.source.database, &cmd, &rid).await;
        let operation_id = match answer.and_then(|a| results::operation_id(&a)) {
            Ok(id) => id,
            Err(e) if e.is_transient() => {
                // The next try is a new attempt with a new folder: this one may or may not
                // have started, and nobody will read it either way.
                return Err(kusto_err("start the export", e));
            }
            Err(e) => {
                block.last_error = Some(e.to_string());
                block.state = BlockState::Planned;
                self.swap_block(key, &mut block, &etag).await?;
                return Err(kusto_err("start the export", e));
            }
        };
        let started_at = OffsetDateTime::now_utc();
        block.state = BlockState::Exporting { operation_id: Some(operation_id), started_at };
        if !self.swap_block(key, &mut block, &etag).await? {
            return Ok(vec![]);
        }
        Ok(vec![place.later(Step::AwaitExport, Some(block.number), self.options.min_poll)])
    }

    /// Takes, renews or gives up this block's slot of its source cluster. Always `true` when
    /// the cluster's capacity is unknown.
    async fn cluster_slot(&self, place: &Place, block: &BlockRecord, action: SlotAction) -> Result<bool, EngineError> {
        let Some((slots, _)) = self.read::<Slots>(&slots_key(place)).await? else { return Ok(true) };
        let Some(capacity) = slots.cluster_capacity else { return Ok(true) };
        let owner = format!("{}/{}/{}/{}", place.job.id, place.activity.name, place.iteration, block.number);
        let (store, cluster, now) = (self.store.as_ref(), place.activity.source.cluster.as_str(), OffsetDateTime::now_utc());
        match action {
            SlotAction::Acquire => super::slots::acquire(store, cluster, capacity, &owner, now).await.map_err(storage_err),
            SlotAction::Renew => super::slots::renew(store, cluster, capacity, &owner, now).await.map(|_| true).map_err(storage_err),
            SlotAction::Release => super::slots::release(store, cluster, capacity, &owner, now).await.map(|_| true).map_err(storage_err),
        }
    }

    async fn block_window(&self, place: &Place, block: &BlockRecord) -> Result<(CursorWindow, IngestionRange), EngineError> {
        let (iteration, _) = self
            .read::<IterationRecord>(&keys::iteration(&place.job.id, &place.activity.name, place.iteration))
            .await?
            .ok_or_else(|| EngineError::Permanent("iteration record missing".into()))?;
        Ok((CursorWindow { from: iteration.cursor_from, to: iteration.cursor_to }, IngestionRange { from: block.from, to: block.to }))
    }

    async fn operation(&self, kusto: &Arc<dyn KustoApi>, db: &str, id: uuid::Uuid, rid: &ClientRequestId) -> Result<Option<results::Operation>, EngineError> {
        let cmd = commands::show_operations(&[id]).map_err(|e| kusto_err("show operations", e))?;
        let answer = kusto.execute(db, &cmd, rid).await.map_err(|e| kusto_err("show operations", e))?;
        Ok(results::operations(&answer).map_err(|e| kusto_err("show operations", e))?.into_iter().find(|o| o.id == id))
    }

    async fn await_export(&self, place: &Place, key: &str, mut block: BlockRecord, etag: ETag) -> Result<Vec<Outgoing>, EngineError> {
        let BlockState::Exporting { operation_id: Some(op), started_at } = block.state.clone() else { return Ok(vec![]) };
        let source = self.connections.kusto(&place.activity.source.cluster)?;
        let db = &place.activity.source.database;
        let rid = ClientRequestId::new("await-export", &place.job.id, &block.number.to_string(), block.export_attempt);
        let operation = self.operation(&source, db, op, &rid).await?;
        let state = operation.as_ref().map(|o| o.state.clone());
        match state {
            Some(s) if s.is_pending() => {
                // Seen alive: the sweeper leaves it alone, the cluster slot stays held. Losing
                // this race changes nothing.
                self.cluster_slot(place, &block, SlotAction::Renew).await?;
                self.swap_block(key, &mut block, &etag).await?;
                Ok(vec![place.later(Step::AwaitExport, Some(block.number), self.poll_delay(started_at))])
            }
            Some(results::OperationState::Completed) => {
                let details = source.execute(db, &commands::show_operation_details(op), &rid).await.map_err(|e| kusto_err("read export details", e))?;
                let exported = results::exported_blobs(&details).map_err(|e| kusto_err("read export details", e))?;
                let folder = block.folders.last().cloned().unwrap_or_default();
                let blobs: Vec<String> = exported.iter().map(|b| blob_name_in(&b.path, &folder)).collect::<Result<_, _>>()?;
                let rows: u64 = exported.iter().map(|b| b.records.max(0) as u64).sum();
                block.state = if rows == 0 { BlockState::Committed { rows: 0 } } else { BlockState::Exported { blobs, rows } };
                block.last_error = None;
                if !self.swap_block(key, &mut block, &etag).await? {
                    return Ok(vec![]);
                }
                self.cluster_slot(place, &block, SlotAction::Release).await?;
                let (_, blocks) = self.iteration_blocks(place).await?;
                let mut next = self.hand_over_slot(place, blocks).await?;
                next.push(place.now(if rows == 0 { Step::Cleanup } else { Step::Ingest }, Some(block.number)));
                Ok(next)
            }
            // Failed, abandoned, or its record expired: a new attempt in a new folder.
            other => {
                block.last_error = Some(match (&other, &operation) {
                    (None, _) => format!("export operation {op} is no longer listed"),
                    (Some(s), Some(o)) => format!("export {s:?}: {}", o.status.clone().unwrap_or_default()),
                    (Some(s), None) => format!("export {s:?}"),
                });
                block.state = BlockState::Planned;
                if !self.swap_block(key, &mut block, &etag).await? {
                    return Ok(vec![]);
                }
                self.cluster_slot(place, &block, SlotAction::Release).await?;
                Ok(vec![place.now(Step::Export, Some(block.number))])
            }
        }
    }

    async fn iteration_blocks(&self, place: &Place) -> Result<(IterationRecord, u64), EngineError> {
        let (it, _) = self
            .read::<IterationRecord>(&keys::iteration(&place.job.id, &place.activity.name, place.iteration))
            .await?
            .ok_or_else(|| EngineError::Permanent("iteration record missing".into()))?;
        let blocks = it.blocks;
        Ok((it, blocks))
    }

    async fn ingest(&self, place: &Place, key: &str, mut block: BlockRecord, etag: ETag) -> Result<Vec<Outgoing>, EngineError> {
        let (blobs, rows) = match &block.state {
            BlockState::Exported { blobs, rows } | BlockState::Ingesting { blobs, rows, .. } => (blobs.clone(), *rows),
            _ => return Ok(vec![]),
        };
        if block.ingest_attempt >= MAX_INGEST_ATTEMPTS {
            let reason = format!("block {} failed to ingest {MAX_INGEST_ATTEMPTS} times; last error: {}", block.number, block.last_error.clone().unwrap_or_default());
            return self.fail_activity(place, reason).await;
        }
        block.ingest_attempt += 1;
        let tag = tag_for(&place.id(), &block);
        block.state = BlockState::Ingesting {
            blobs: blobs.clone(),
            rows,
            tag: tag.clone(),
            route: self.options.ingest_route,
            operations: vec![],
            started_at: OffsetDateTime::now_utc(),
        };
        if !self.swap_block(key, &mut block, &etag).await? {
            return Ok(vec![]);
        }
        let etag = self.read::<BlockRecord>(key).await?.map(|(_, e)| e).ok_or_else(|| EngineError::Transient("block vanished".into()))?;

        let staging = self.connections.staging(&place.spec.staging[0].account_url)?;
        let folder = block.folders.last().cloned().unwrap_or_default();
        let sas = staging.sas.folder_url(&folder, Access::IngestRead, self.options.sas_lifetime).await.map_err(storage_err)?;
        let mut props = commands::IngestProperties::parquet();
        props.creation_time = block.creation_time;
        props.tags = vec![tag.clone()];
        let table = ident(&place.staging_table())?;
        let database = ident(&place.activity.destination.database)?;
        let dest = self.connections.kusto(&place.activity.destination.cluster)?;
        let rid = ClientRequestId::new("ingest", &place.job.id, &block.number.to_string(), block.ingest_attempt);
        let route = self.options.ingest_route;
        let mut operations = Vec::new();
        match route {
            IngestRoute::Queued => {
                // Blobs sent by an earlier call of this attempt are strays under this tag if a
                // later call fails: the retry is a new attempt with a new tag.
                for chunk in blobs.chunks(crate::kusto::MAX_BLOBS_PER_CALL) {
                    let queued: Vec<crate::kusto::QueuedBlob> = chunk
                        .iter()
                        .map(|b| crate::kusto::QueuedBlob {
                            url: sas.file(b),
                            source_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("{folder}/{b}").as_bytes()),
                            raw_size: None,
                        })
                        .collect();
                    let op = dest.queue_ingestion(&database, &table, &queued, &props, &rid).await.map_err(|e| kusto_err("queue the ingestion", e))?;
                    operations.push(op);
                }
            }
            IngestRoute::Direct => {
                let urls: Vec<SecretUrl> = blobs.iter().map(|b| sas.file(b)).collect();
                let cmd = commands::ingest_async(&table, &urls, &props).map_err(|e| kusto_err("build the ingestion", e))?;
                let answer = dest.execute(&place.activity.destination.database, &cmd, &rid).await;
                let op = answer.and_then(|a| results::operation_id(&a)).map_err(|e| kusto_err("start the ingestion", e))?;
                operations.push(op.to_string());
            }
        }
        let started_at = OffsetDateTime::now_utc();
        block.state = BlockState::Ingesting { blobs, rows, tag, route, operations, started_at };
        if !self.swap_block(key, &mut block, &etag).await? {
            return Ok(vec![]);
        }
        Ok(vec![place.later(Step::AwaitIngest, Some(block.number), self.options.min_poll)])
    }

    /// Whether the ingestion's operations have finished, and whether any failed.
    async fn ingestion_outcome(&self, place: &Place, route: IngestRoute, operations: &[String], rid: &ClientRequestId) -> Result<(bool, bool), EngineError> {
        let dest = self.connections.kusto(&place.activity.destination.cluster)?;
        let db = &place.activity.destination.database;
        match route {
            IngestRoute::Direct => {
                let id = operations.first().and_then(|o| o.parse::<uuid::Uuid>().ok()).ok_or_else(|| EngineError::Permanent("bad ingestion operation id".into()))?;
                // A record aged out of `.show operations` has long finished: the count decides.
                Ok(match self.operation(&dest, db, id, rid).await?.map(|o| o.state) {
                    None => (true, false),
                    Some(s) if s.is_pending() => (false, false),
                    Some(results::OperationState::Completed) => (true, false),
                    Some(_) => (true, true),
                })
            }
            IngestRoute::Queued => {
                let (database, table) = (ident(db)?, ident(&place.staging_table())?);
                let (mut finished, mut failed) = (true, false);
                for op in operations {
                    let status = dest.ingestion_status(&database, &table, op, rid).await.map_err(|e| kusto_err("read ingestion status", e))?;
                    finished &= status.is_finished();
                    failed |= status.failed > 0 || status.canceled > 0;
                }
                Ok((finished, failed))
            }
        }
    }

    /// Rows in `table` under exactly `tag` (`has` in `.show extents` is a term match).
    async fn tagged_rows(&self, kusto: &Arc<dyn KustoApi>, db: &str, table: &Ident, tag: &str, rid: &ClientRequestId) -> Result<u64, EngineError> {
        let cmd = commands::show_extents(table, Some(tag)).map_err(|e| kusto_err("show extents", e))?;
        let answer = kusto.execute(db, &cmd, rid).await.map_err(|e| kusto_err("count tagged rows", e))?;
        let extents = results::extents(&answer).map_err(|e| kusto_err("count tagged rows", e))?;
        Ok(extents.iter().filter(|e| e.has_tag(tag)).map(|e| e.row_count.max(0) as u64).sum())
    }

    async fn await_ingest(&self, place: &Place, key: &str, mut block: BlockRecord, etag: ETag) -> Result<Vec<Outgoing>, EngineError> {
        let BlockState::Ingesting { blobs, rows, tag, route, operations, started_at } = block.state.clone() else { return Ok(vec![]) };
        if operations.is_empty() {
            return Ok(vec![]);
        }
        let dest = self.connections.kusto(&place.activity.destination.cluster)?;
        let db = &place.activity.destination.database;
        let rid = ClientRequestId::new("await-ingest", &place.job.id, &block.number.to_string(), block.ingest_attempt);
        let (finished, failed) = self.ingestion_outcome(place, route, &operations, &rid).await?;
        let staging = ident(&place.staging_table())?;
        let tagged = self.tagged_rows(&dest, db, &staging, &tag, &rid).await?;
        match ingest_verdict(finished, failed, tagged, rows) {
            IngestVerdict::Wait => {
                self.swap_block(key, &mut block, &etag).await?;
                Ok(vec![place.later(Step::AwaitIngest, Some(block.number), self.poll_delay(started_at))])
            }
            IngestVerdict::Complete => {
                block.state = BlockState::Ingested { rows, tag };
                block.last_error = None;
                if !self.swap_block(key, &mut block, &etag).await? {
                    return Ok(vec![]);
                }
                Ok(vec![place.now(Step::Commit, Some(block.number))])
            }
            IngestVerdict::Redo => {
                // Strays under this tag never reach the destination: drop them, ingest again
                // under a new tag.
                if tagged > 0 {
                    let cmd = commands::drop_extents_with_tag(&staging, &tag).map_err(|e| kusto_err("drop stray extents", e))?;
                    dest.execute(db, &cmd, &rid).await.map_err(|e| kusto_err("drop stray extents", e))?;
                }
                block.last_error = Some(format!("ingestion under {tag} gave {tagged} rows of {rows}{}", if failed { " and failed" } else { "" }));
                block.state = BlockState::Exported { blobs, rows };
                if !self.swap_block(key, &mut block, &etag).await? {
                    return Ok(vec![]);
                }
                Ok(vec![place.now(Step::Ingest, Some(block.number))])
            }
        }
    }

    async fn commit(&self, place: &Place, key: &str, mut block: BlockRecord, etag: ETag) -> Result<Vec<Outgoing>, EngineError> {
        let BlockState::Ingested { rows, tag } = block.state.clone() else { return Ok(vec![]) };
        let dest = self.connections.kusto(&place.activity.destination.cluster)?;
        let db = &place.activity.destination.database;
        let rid = ClientRequestId::new("commit", &place.job.id, &block.number.to_string(), block.ingest_attempt);
        let staging = ident(&place.staging_table())?;
        let dest_table = ident(&place.activity.destination.table)?;
        // A repeat looks before it moves: a move that happened must not be retried.
        let at_dest = self.tagged_rows(&dest, db, &dest_table, &tag, &rid).await?;
        if at_dest != rows {
            let in_staging = self.tagged_rows(&dest, db, &staging, &tag, &rid).await?;
            if in_staging == rows && at_dest == 0 {
                let cmd = commands::move_extents_with_tag(&staging, &dest_table, &tag, false).map_err(|e| kusto_err("move extents", e))?;
                if let Err(e) = dest.execute(db, &cmd, &rid).await {
                    // Another delivery of this step may have moved them first (the move is all
                    // or nothing), or the answer was lost after the move ran: look again. At the
                    // destination, or gone from both tables (moved and untagged): done.
                    let now_at_dest = self.tagged_rows(&dest, db, &dest_table, &tag, &rid).await?;
                    let now_in_staging = self.tagged_rows(&dest, db, &staging, &tag, &rid).await?;
                    if !(now_at_dest == rows || (now_at_dest == 0 && now_in_staging == 0)) {
                        return Err(kusto_err("move the block's extents", e));
                    }
                }
            } else if !(in_staging == 0 && at_dest == 0) {
                // Neither "not moved" nor "moved and untagged": something else changed the
                // tables. Stop rather than guess.
                return self
                    .fail_activity(place, format!("block {}: tag {tag} has {in_staging} rows in staging and {at_dest} at the destination, {rows} expected", block.number))
                    .await;
            }
        }
        // Left on the destination, tags keep extents from merging with others.
        let cmd = commands::drop_extent_tags(&dest_table, &[tag.as_str()], None).map_err(|e| kusto_err("drop tag", e))?;
        dest.execute(db, &cmd, &rid).await.map_err(|e| kusto_err("drop the block's tag", e))?;
        block.state = BlockState::Committed { rows };
        if !self.swap_block(key, &mut block, &etag).await? {
            return Ok(vec![]);
        }
        Ok(vec![place.now(Step::Cleanup, Some(block.number))])
    }

    async fn cleanup(&self, place: &Place, key: &str, mut block: BlockRecord, etag: ETag) -> Result<Vec<Outgoing>, EngineError> {
        let BlockState::Committed { rows } = block.state.clone() else { return Ok(vec![]) };
        let staging = self.connections.staging(&place.spec.staging[0].account_url)?;
        for folder in &block.folders {
            let container = staging.clients.container(folder).map_err(|e| EngineError::Permanent(e.to_string()))?;
            if let Err(e) = container.delete(None).await {
                if e.http_status() != Some(azure_core::http::StatusCode::NotFound) {
                    return Err(EngineError::Transient(format!("delete staging folder {folder}: {}", e.http_status().map(|s| u16::from(s).to_string()).unwrap_or_default())));
                }
            }
        }
        // Counted before the block is marked done, by block number: a repeat after a crash in
        // between counts it once, and the block is never done without being counted.
        let finished = self.count_done(place, block.number, rows).await?;
        block.state = BlockState::Done { rows };
        if !self.swap_block(key, &mut block, &etag).await? {
            return Ok(vec![]);
        }
        if finished {
            let (iteration, _) = self.iteration_blocks(place).await?;
            self.finish_iteration(place, &iteration).await?;
        }
        Ok(vec![])
    }

    /// Adds a block to the iteration's done set; `true` when that completes the iteration.
    async fn count_done(&self, place: &Place, block: u64, rows: u64) -> Result<bool, EngineError> {
        let key = done_key(place);
        let (_, blocks) = self.iteration_blocks(place).await?;
        loop {
            let (mut progress, etag) = match self.read::<Progress>(&key).await? {
                Some((p, etag)) => (p, Some(etag)),
                None => (Progress::default(), None),
            };
            if !progress.blocks.insert(block) {
                return Ok(progress.blocks.len() as u64 >= blocks);
            }
            progress.rows += rows;
            let written = match etag {
                None => checkpoint::create_json(self.store.as_ref(), &key, &progress).await.map_err(storage_err)?,
                Some(etag) => checkpoint::replace_json(self.store.as_ref(), &key, &progress, &etag).await.map_err(storage_err)?,
            };
            if let Written::Done(_) = written {
                return Ok(progress.blocks.len() as u64 >= blocks);
            }
        }
    }

    /// Ends an iteration: drops its staging table, records the activity's progress, then marks
    /// the iteration done. Safe to repeat: the activity counts an iteration once (by number),
    /// and the iteration is marked last, so a crash in between leaves it for the sweeper.
    async fn finish_iteration(&self, place: &Place, iteration: &IterationRecord) -> Result<(), EngineError> {
        let key = keys::iteration(&place.job.id, &place.activity.name, place.iteration);
        if iteration.blocks > 0 {
            let dest = self.connections.kusto(&place.activity.destination.cluster)?;
            let rid = ClientRequestId::new("drop-staging", &place.job.id, &place.activity.name, 1);
            let table = ident(&place.staging_table())?;
            dest.execute(&place.activity.destination.database, &commands::drop_table(&table), &rid)
                .await
                .map_err(|e| kusto_err("drop the staging table", e))?;
        }
        // Counted from the blocks themselves: the running count in done.json drives progress
        // and can fall one block short when a step stops between its two writes.
        let mut rows = 0;
        for key in self.store.list(&keys::blocks(&place.job.id, &place.activity.name, place.iteration)).await.map_err(storage_err)? {
            if let Some((BlockRecord { state: BlockState::Done { rows: r }, .. }, _)) = self.read::<BlockRecord>(&key).await? {
                rows += r;
            }
        }
        let activity_key = keys::activity(&place.job.id, &place.activity.name);
        loop {
            let Some((mut record, etag)) = self.read::<ActivityRecord>(&activity_key).await? else { break };
            if record.last_finished_iteration >= place.iteration || matches!(record.state, ActivityState::Failed { .. }) {
                break;
            }
            record.last_finished_iteration = place.iteration;
            record.copied_rows += rows;
            record.rows_without_ingestion_time = iteration.rows_without_ingestion_time;
            record.last_finished_at = Some(OffsetDateTime::now_utc());
            record.state = if place.spec.copy_mode.is_continuous() { ActivityState::Idle } else { ActivityState::Completed };
            if self.swap(&activity_key, &record, &etag).await? {
                break;
            }
        }
        loop {
            let Some((mut it, etag)) = self.read::<IterationRecord>(&key).await? else { break };
            if it.state == IterationState::Done {
                break;
            }
            it.state = IterationState::Done;
            it.finished_at = Some(OffsetDateTime::now_utc());
            if self.swap(&key, &it, &etag).await? {
                break;
            }
        }
        tracing::info!(job = %place.job.id, activity = %place.activity.name, iteration = place.iteration, rows, "iteration done");
        Ok(())
    }

    /// The messages that move a job on from its checkpoints: what a restarted `kc copy`
    /// sends first.
    pub async fn resume(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        self.due_messages(job, None).await
    }

    /// The sweeper: the due steps of blocks nobody has touched since `stalled_before` (their
    /// message was lost, or poisoned after repeated failures), of plans stuck as long, and
    /// the end of iterations whose blocks are all done but which were never closed.
    pub async fn sweep(&self, job: &JobRecord, stalled_before: OffsetDateTime) -> Result<Vec<Outgoing>, EngineError> {
        self.due_messages(job, Some(stalled_before)).await
    }

    async fn due_messages(&self, job: &JobRecord, stalled_before: Option<OffsetDateTime>) -> Result<Vec<Outgoing>, EngineError> {
        let Some(spec) = job.spec.clone() else { return Ok(vec![]) };
        let stalled = |t: OffsetDateTime| stalled_before.is_none_or(|limit| t < limit);
        let mut out = Vec::new();
        for activity in &spec.activities {
            let place = |n| Place { job: job.clone(), spec: spec.clone(), activity: activity.clone(), iteration: n };
            let Some((record, _)) = self.read::<ActivityRecord>(&keys::activity(&job.id, &activity.name)).await? else {
                out.push(place(1).now(Step::Plan, None));
                continue;
            };
            if matches!(record.state, ActivityState::Completed | ActivityState::Failed { .. } | ActivityState::Idle) {
                continue;
            }
            let p = place(record.iteration);
            let Some((iteration, _)) = self.read::<IterationRecord>(&keys::iteration(&job.id, &activity.name, record.iteration)).await? else {
                out.push(p.now(Step::Plan, None));
                continue;
            };
            match iteration.state {
                IterationState::Planning if stalled(iteration.started_at) => out.push(p.now(Step::Plan, None)),
                IterationState::Planning | IterationState::Done => {}
                IterationState::Copying => {
                    let handed = self.read::<Slots>(&slots_key(&p)).await?.map(|(s, _)| s.handed).unwrap_or(0);
                    let mut all_done = true;
                    for key in self.store.list(&keys::blocks(&job.id, &activity.name, record.iteration)).await.map_err(storage_err)? {
                        let Some((block, _)) = self.read::<BlockRecord>(&key).await? else { continue };
                        all_done &= block.due().is_none();
                        match block.due() {
                            // Not yet given an export slot: the slot hand-over will reach it.
                            Some(Step::Export) if block.number >= handed && block.export_attempt == 0 => {}
                            Some(step) if stalled(block.touched_at) => out.push(p.now(step, Some(block.number))),
                            _ => {}
                        }
                    }
                    // All blocks done, iteration still open: the step that finished the last block
                    // stopped before closing it (its progress count may be short by that block).
                    if all_done {
                        self.finish_iteration(&p, &iteration).await?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether every activity of the job has completed or failed (for drivers that stop).
    pub async fn job_finished(&self, job: &JobRecord) -> Result<bool, EngineError> {
        let Some(spec) = &job.spec else { return Ok(true) };
        for activity in &spec.activities {
            match self.read::<ActivityRecord>(&keys::activity(&job.id, &activity.name)).await? {
                Some((r, _)) if matches!(r.state, ActivityState::Completed | ActivityState::Failed { .. }) => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Blocks and rows of the current iterations of a job's activities, for progress views.
    pub async fn progress(&self, job: &JobRecord) -> Result<JobProgress, EngineError> {
        let mut p = JobProgress::default();
        let Some(spec) = &job.spec else { return Ok(p) };
        for activity in &spec.activities {
            let Some((record, _)) = self.read::<ActivityRecord>(&keys::activity(&job.id, &activity.name)).await? else { continue };
            let place = Place { job: job.clone(), spec: spec.clone(), activity: activity.clone(), iteration: record.iteration };
            if let Some((it, _)) = self.read::<IterationRecord>(&keys::iteration(&job.id, &activity.name, record.iteration)).await? {
                p.blocks += it.blocks;
                p.planned_rows += it.planned_rows;
            }
            if let Some((done, _)) = self.read::<Progress>(&done_key(&place)).await? {
                p.blocks_done += done.blocks.len() as u64;
                p.copied_rows += done.rows;
            }
        }
        Ok(p)
    }

    pub async fn activity(&self, job: &str, activity: &str) -> Result<Option<ActivityRecord>, EngineError> {
        Ok(self.read::<ActivityRecord>(&keys::activity(job, activity)).await?.map(|(r, _)| r))
    }
}

#[derive(Debug, Clone, Copy)]
enum SlotAction {
    Acquire,
    Renew,
    Release,
}

/// `t` rounded down to a multiple of `bin` since the Unix epoch, as Kusto's `bin()` rounds
/// (for bins that divide a day, the epoch and Kusto's year-1 origin agree).
fn align_down(t: OffsetDateTime, bin: time::Duration) -> OffsetDateTime {
    let step = bin.whole_nanoseconds().max(1);
    let nanos = t.unix_timestamp_nanos();
    OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(step)).unwrap_or(t)
}

/// Exports one iteration runs at once: the job's `exportCount`, capped by the cluster's
/// `DataExport` capacity when it reports one (exports beyond it are throttled anyway).
fn export_slots(export_count: u32, cluster_capacity: Option<u64>) -> u64 {
    let wanted = export_count.max(1) as u64;
    cluster_capacity.map_or(wanted, |c| wanted.min(c.max(1)))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slots {
    handed: u64,
    /// The source's `DataExport` capacity, read at planning; exports across all jobs on
    /// that cluster hold claims below it (see [`super::slots`]).
    #[serde(default)]
    cluster_capacity: Option<u64>,
}

/// See [`CopyEngine::progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub blocks: u64,
    pub blocks_done: u64,
    pub planned_rows: u64,
    pub copied_rows: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    /// Numbers of the blocks done (a set, so counting is idempotent).
    blocks: std::collections::BTreeSet<u64>,
    rows: u64,
}

fn slots_key(place: &Place) -> String {
    format!("jobs/{}/{}/{:06}/slots.json", place.job.id, place.activity.name, place.iteration)
}

fn done_key(place: &Place) -> String {
    format!("jobs/{}/{}/{:06}/done.json", place.job.id, place.activity.name, place.iteration)
}

/// The blob name inside `folder` of a path `.show operation details` lists (a full URL, or a
/// path relative to the export destination).
fn blob_name_in(path: &str, folder: &str) -> Result<String, EngineError> {
    let without_query = path.split(['?', ';']).next().unwrap_or(path);
    let marker = format!("/{folder}/");
    match without_query.find(&marker) {
        Some(i) => Ok(without_query[i + marker.len()..].to_owned()),
        None if !without_query.contains("://") => Ok(without_query.trim_start_matches('/').to_owned()),
        None => Err(EngineError::Permanent(format!("export listed a blob outside its folder {folder}: {}", crate::kusto::SecretUrl::parse(without_query).map(|u| u.redacted()).unwrap_or_default()))),
    }
}

#[async_trait]
impl Engine for CopyEngine {
    async fn start_job(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        if job.state != JobState::Accepted {
            return Ok(vec![]);
        }
        self.resume(job).await
    }

    async fn step(&self, message: &StepMessage, delivery: &Delivery) -> Result<Vec<Outgoing>, EngineError> {
        let step = Step::parse(&message.step).ok_or_else(|| EngineError::Permanent(format!("unknown step '{}'", message.step)))?;
        let place = self.place(message).await?;
        if let Some((record, _)) = self.read::<ActivityRecord>(&keys::activity(&place.job.id, &place.activity.name)).await? {
            if let ActivityState::Failed { .. } = record.state {
                return Ok(vec![]);
            }
        }
        match (step, message.block) {
            (Step::Plan, _) => self.plan(&place).await,
            (_, Some(block)) => self.block_step(&place, block, step, delivery).await,
            (_, None) => Err(EngineError::Permanent(format!("step '{}' names no block", message.step))),
        }
    }

    async fn tick(&self, tick: &Tick) -> Result<Vec<Outgoing>, EngineError> {
        let mut out = Vec::new();
        for job in list_jobs(self.store.as_ref()).await.map_err(record_err)? {
            let Some(spec) = &job.spec else { continue };
            if !self.job_finished(&job).await? {
                out.extend(self.sweep(&job, tick.now - self.options.stall_after).await?);
            }
            let Some(period) = spec.iteration_period_secs.filter(|_| spec.copy_mode.is_continuous()) else { continue };
            for activity in &spec.activities {
                let key = keys::activity(&job.id, &activity.name);
                let Some((mut record, etag)) = self.read::<ActivityRecord>(&key).await? else { continue };
                let due = record.state == ActivityState::Idle
                    && record.last_finished_at.is_none_or(|t| tick.now - t >= time::Duration::seconds(period as i64));
                if !due {
                    continue;
                }
                record.iteration += 1;
                record.state = ActivityState::Running;
                if self.swap(&key, &record, &etag).await? {
                    let place = Place { job: job.clone(), spec: spec.clone(), activity: activity.clone(), iteration: record.iteration };
                    out.push(place.now(Step::Plan, None));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_from_export_paths() {
        assert_eq!(blob_name_in("https://a.blob.core.windows.net/kcs-x-1-1/b1_0.parquet", "kcs-x-1-1").unwrap(), "b1_0.parquet");
        assert_eq!(blob_name_in("https://127.0.0.1:1/devstoreaccount1/kcs-x-1-1/d/b.parquet?sv=1", "kcs-x-1-1").unwrap(), "d/b.parquet");
        assert_eq!(blob_name_in("b1_0.parquet", "kcs-x-1-1").unwrap(), "b1_0.parquet");
        assert!(blob_name_in("https://a.blob.core.windows.net/other/b.parquet", "kcs-x-1-1").is_err());
    }

    #[test]
    fn export_slots_respect_the_cluster_capacity() {
        assert_eq!(export_slots(20, Some(4)), 4);
        assert_eq!(export_slots(2, Some(4)), 2);
        assert_eq!(export_slots(8, None), 8);
        assert_eq!(export_slots(0, Some(0)), 1, "never zero: the copy must move");
    }

    #[test]
    fn names_are_stable_and_valid() {
        let id = iteration_id("job", "default", 1);
        assert_eq!(id, iteration_id("job", "default", 1));
        assert_ne!(id, iteration_id("job", "default", 2));
        let folder = folder_name(&id, 123456, 5);
        crate::config::validate_container_name(&folder).unwrap();
        assert!(folder.len() <= 63);
    }
}

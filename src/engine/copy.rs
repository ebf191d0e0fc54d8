//! The copy engine: planning, iterations, the sweeper and the scheduler tick. Block steps are
//! decided in [`super::steps`] and executed by [`super::execute`].
//!
//! Exactly once rests on these fences (the README's "How a copy works" gives the invariants):
//! - an export attempt is recorded (with a lease) before `.export` is sent, and each attempt
//!   writes to its own staging folder: a lost or failed export is abandoned, never half-used;
//! - ingestion goes into a staging table that keeps its tags, under a tag unique to (block,
//!   export attempt, ingestion attempt); the extents holding exactly the exported rows are
//!   recorded, and only they are moved;
//! - `.move` is judged by its result rows, verified at the destination, and a move whose
//!   answer was lost is judged by looking where the counted extents are, never by absence;
//! - every compare-and-swap uses the ETag of the delivery's own previous write.

use super::plan::PlanLimits;
use super::clock::{Clock, Ids, RandomIds, SystemClock};
use super::records::{BlockRecord, BlockState, IngestRoute, IterationRecord, IterationState, Step};
use super::{Delivery, Engine, EngineError, Outgoing, StepMessage, Tick};
use crate::job::record::{list_jobs, read_job};
use crate::job::{Activity, CopyMode, JobRecord, JobSpec, JobState};
use crate::kusto::{commands, results, ClientRequestId, Command, CursorWindow, Ident, IngestionRange, KustoApi, KustoError, UserQuery};
use crate::storage::checkpoint::{self, CheckpointStore, ETag, Written};
use crate::storage::clients::StorageClients;
use crate::storage::sas::StagingSas;
use crate::storage::staging::{AzureStaging, StagingStore};
use crate::storage::StorageError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;


#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub limits: PlanLimits,
    /// Shortest wait between two looks at a running operation (a queue's visibility is in
    /// whole seconds; the in-process driver can go lower).
    pub min_poll: Duration,
    pub max_poll: Duration,
    /// The shortest wait before a look at an operation expected to end soon.
    pub poll_floor: Duration,
    /// Batch this process's looks at running exports on ticks of this grid (see
    /// `steps::Rules::poll_grid`). `None` (the default): no batching.
    pub poll_grid: Option<Duration>,
    pub sas_lifetime: time::Duration,
    pub ingest_route: IngestRoute,
    /// A block untouched for this long is swept: its due step is sent again.
    pub stall_after: time::Duration,
    /// How long an attempt in flight is protected from duplicate deliveries.
    pub lease: time::Duration,
    /// A short hash of the deployment ([`deployment_hash`]) that every staging table,
    /// container and tag name starts with: the janitor removes only its own.
    pub deployment: String,
    /// How often the janitor runs on scheduler ticks (per instance); `None`: never.
    pub janitor_every: Option<time::Duration>,
    /// How long after an export start whose answer was lost the source's operation list is
    /// trusted to show that export if it started (the docs: records "might take a while").
    pub orphan_settle: time::Duration,
}

/// Six hex digits naming a deployment: of `KC_DEPLOYMENT_ID` when set, else of where its
/// checkpoints live (two deployments never share a checkpoint store).
pub fn deployment_hash(id: &str) -> String {
    let ns = uuid::Uuid::from_u128(0x6b63_6465_706c_4f79_8a1b_2c3d_4e5f_6073);
    uuid::Uuid::new_v5(&ns, id.as_bytes()).simple().to_string()[..6].to_owned()
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            ingest_route: IngestRoute::Queued,
            stall_after: time::Duration::minutes(10),
            lease: time::Duration::minutes(2),
            limits: PlanLimits::default(),
            min_poll: Duration::from_secs(2),
            max_poll: Duration::from_secs(60),
            // Below a second, `kc serve` waits in the invocation (handler/steps.rs).
            poll_floor: Duration::from_millis(250),
            poll_grid: None,
            sas_lifetime: time::Duration::hours(6),
            deployment: deployment_hash(""),
            janitor_every: Some(time::Duration::minutes(10)),
            orphan_settle: time::Duration::minutes(1),
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
            jitter_seed: None,
        },
        ..crate::kusto::ClientOptions::default()
    }
}


/// How the engine reaches clusters and staging accounts.
pub trait Connections: Send + Sync {
    fn kusto(&self, cluster: &str) -> Result<Arc<dyn KustoApi>, EngineError>;
    fn staging(&self, account_url: &str) -> Result<Arc<dyn StagingStore>, EngineError>;
}

/// Connections made with one credential, cached per cluster and per account.
pub struct LiveConnections {
    credential: Arc<dyn azure_core::credentials::TokenCredential>,
    ca_cert: Option<std::path::PathBuf>,
    kusto: Mutex<HashMap<String, Arc<dyn KustoApi>>>,
    staging: Mutex<HashMap<String, Arc<dyn StagingStore>>>,
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

    fn staging(&self, account_url: &str) -> Result<Arc<dyn StagingStore>, EngineError> {
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
        let staging: Arc<dyn StagingStore> = Arc::new(AzureStaging { clients, sas });
        cache.insert(account_url.to_owned(), staging.clone());
        Ok(staging)
    }
}

/// Extent ids one `.show table T extents (ids)` names: about 40 KB of command text.
const EXTENT_IDS_PER_LISTING: usize = 1_000;

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
    /// Rows not copied because their blocks are older than the destination's soft-delete
    /// period (the destination would refuse them, or remove them at once).
    #[serde(default)]
    pub rows_beyond_retention: u64,
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
    /// Stopped by `kc cancel` (or a replication replaced or removed): for good, unlike a
    /// failure, which a resubmitted job resumes.
    Cancelled,
}

impl ActivityState {
    /// Whether no step of the activity may run any more (only its cleanup).
    pub fn stopped(&self) -> bool {
        matches!(self, ActivityState::Failed { .. } | ActivityState::Cancelled)
    }
}

impl ActivityRecord {
    pub fn new(iteration: u64, state: ActivityState) -> Self {
        ActivityRecord { iteration, state, rows_without_ingestion_time: 0, copied_rows: 0, rows_beyond_retention: 0, last_finished_iteration: 0, last_finished_at: None }
    }
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
    /// The running count of an iteration's finished blocks and their rows.
    pub fn done(job: &str, activity: &str, n: u64) -> String {
        format!("jobs/{job}/{activity}/{n:06}/done.json")
    }
}

/// A short stable name for (job, activity, iteration): staging table, folders and tags
/// derive from it, so a repeated step finds what an earlier try made.
fn iteration_id(job: &str, activity: &str, n: u64) -> String {
    let ns = uuid::Uuid::from_u128(0x6b63_7374_6167_4e47_8a1b_2c3d_4e5f_6071);
    uuid::Uuid::new_v5(&ns, format!("{job}\n{activity}\n{n}").as_bytes()).simple().to_string()[..12].to_owned()
}

pub(super) fn kusto_err(what: &str, e: KustoError) -> EngineError {
    if e.is_transient() {
        EngineError::Transient(format!("{what}: {e}"))
    } else {
        EngineError::Permanent(format!("{what}: {e}"))
    }
}

pub(super) fn storage_err(e: StorageError) -> EngineError {
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

pub(super) fn ident(name: &str) -> Result<Ident, EngineError> {
    Ident::new(name).map_err(|e| EngineError::Permanent(e.to_string()))
}

/// Everything a block step needs to know about where it is.
pub(super) struct Place {
    pub(super) job: JobRecord,
    pub(super) spec: JobSpec,
    pub(super) activity: Activity,
    pub(super) iteration: u64,
    /// [`EngineOptions::deployment`]: in every name the copy makes.
    pub(super) deployment: String,
}

impl Place {
    /// `<deployment>-<iteration>`: the staging table, folders and tags are named by it, so a
    /// repeated step finds what an earlier try made and two deployments never share one.
    pub(crate) fn id(&self) -> String {
        format!("{}-{}", self.deployment, iteration_id(&self.job.id, &self.activity.name, self.iteration))
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
    pub(super) fn later(&self, step: Step, block: Option<u64>, delay: Duration) -> Outgoing {
        Outgoing { message: self.message(step, block), delay }
    }
    pub(super) fn staging_table(&self) -> String {
        format!("kc_staging_{}", self.id())
    }
}

pub struct CopyEngine {
    pub(super) store: Arc<dyn CheckpointStore>,
    pub(super) connections: Arc<dyn Connections>,
    pub(super) options: EngineOptions,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) ids: Arc<dyn Ids>,
    /// When this instance's janitor last ran.
    pub(super) janitor_ran: Mutex<Option<OffsetDateTime>>,
    /// What this instance learned of the clusters' pace: see [`Learned`].
    pub(super) learned: Learned,
    /// Records that never change once read in the state cached ([`Cached`]).
    pub(super) cached: Cached,
    /// This process's looks at running exports, batched ([`super::looks`]).
    pub(super) looks: super::looks::Looks,
}

/// How long operations of a kind take on a cluster, as this instance saw them end: what
/// polls are timed by. In memory only: an instance that starts again learns again (its
/// first polls follow the plain schedule), and nothing decides on it but when to look.
#[derive(Default)]
pub struct Learned(Mutex<HashMap<(String, &'static str), (Duration, Duration)>>);

impl Learned {
    /// Folds in one operation that ran `took`: averages that follow the recent ones, of the
    /// duration and of its deviation from that average (as TCP estimates a round trip).
    pub fn record(&self, cluster: &str, kind: &'static str, took: Duration) {
        let mut map = self.0.lock().unwrap();
        let (mean, deviation) = map.entry((cluster.to_owned(), kind)).or_insert((took, took / 4));
        let off = if took > *mean { took - *mean } else { *mean - took };
        *deviation = deviation.mul_f64(0.75) + off.mul_f64(0.25);
        *mean = mean.mul_f64(0.875) + took.mul_f64(0.125);
    }

    /// What a look at an operation of `kind` on `cluster` can expect, if any ended before.
    pub fn expected(&self, cluster: &str, kind: &'static str, eager: bool) -> Option<super::steps::Expected> {
        self.0.lock().unwrap().get(&(cluster.to_owned(), kind)).map(|&(mean, deviation)| super::steps::Expected { mean, deviation, eager })
    }
}

/// Job records once accepted (a job's definition never changes: an id holds one definition),
/// and iteration records once copying (what block steps read of them, the slots, the block
/// count, the route, the soft-delete period, is fixed when planning ends). Saves each step
/// two Storage reads.
#[derive(Default)]
pub struct Cached {
    pub(super) jobs: Mutex<HashMap<String, JobRecord>>,
    pub(super) iterations: Mutex<HashMap<String, IterationRecord>>,
    /// Which export slot each block of this process holds, with the ETag of this process's
    /// last write of its claim (a hint, see [`super::slots::Hints`]).
    pub(super) slots: Mutex<HashMap<String, (u64, ETag)>>,
    /// Per source cluster, the slots this process gave up and no block of it took since, with
    /// the ETag of each release (exports that end at one look release several at once: one
    /// remembered slot left the other successors to scan, and race, for theirs).
    pub(super) free_slots: Mutex<HashMap<String, Vec<(u64, ETag)>>>,
    /// Each unfinished block record this process wrote last, with the ETag that write
    /// returned: the block's next step here decides on it instead of reading it again.
    /// A hint, never the truth: the step's first write is swapped at that ETag, so a record
    /// moved on elsewhere (another instance, a sweep, an abort) loses that write, and the
    /// step reads the stored record and decides again (see `block_step_on`).
    pub(super) blocks: Mutex<HashMap<String, (BlockRecord, ETag)>>,
    /// Per iteration's done record, this process's last write of it and its ETag, behind
    /// the lock its blocks count under (see `count_done`).
    pub(super) done: Mutex<HashMap<String, DoneCounter>>,
    /// Per copying iteration, the blocks near its end this process saw start or sent an
    /// export to (see [`Cached::hand_over_to`]).
    pub(super) tails: Mutex<HashMap<String, Tail>>,
}

/// An iteration's last blocks as this process knows them.
#[derive(Debug, Default)]
pub(super) struct Tail {
    /// Started, or sent an export.
    started: std::collections::BTreeSet<u64>,
    /// Which block each block's finished export was handed to: a repeat of that step hands
    /// to the same one (its first send may have failed; the block it chose stays chosen).
    handed: HashMap<u64, u64>,
}

type DoneCounter = Arc<tokio::sync::Mutex<Option<(Progress, ETag)>>>;

/// Iterations [`Cached::done`] and [`Cached::tails`] each hold at most (iterations copying at
/// once in a process); past it they start again empty.
const ITERATIONS_CACHED: usize = 64;

/// The first of an iteration's last blocks, where a slot whose chain ran out looks for one
/// to take: three rounds of the slots (chains end at most a few blocks apart).
fn tail_start(blocks: u64, slots: u64) -> u64 {
    blocks.saturating_sub(3 * slots.max(1))
}

/// Block records [`Cached::blocks`] holds at most: blocks in flight are far fewer (a few per
/// export slot); past it the cache starts again empty, which costs one read per block.
const BLOCKS_CACHED: usize = 4096;

impl Cached {
    pub(super) fn block(&self, key: &str) -> Option<(BlockRecord, ETag)> {
        self.blocks.lock().unwrap().get(key).cloned()
    }

    /// Remembers this process's write of a block; a done block is forgotten (no step of it
    /// writes again).
    pub(super) fn keep_block(&self, key: &str, record: &BlockRecord, etag: &ETag) {
        let mut blocks = self.blocks.lock().unwrap();
        if matches!(record.state, BlockState::Done { .. }) {
            blocks.remove(key);
            return;
        }
        if blocks.len() >= BLOCKS_CACHED && !blocks.contains_key(key) {
            blocks.clear();
        }
        blocks.insert(key.to_owned(), (record.clone(), etag.clone()));
    }

    /// [`Cached::keep_block`] for a block planning wrote, while the cache has room: the
    /// blocks of a large plan never push out those in flight.
    pub(super) fn keep_planned(&self, key: &str, record: &BlockRecord, etag: &ETag) {
        let mut blocks = self.blocks.lock().unwrap();
        if blocks.len() < BLOCKS_CACHED / 2 {
            blocks.insert(key.to_owned(), (record.clone(), etag.clone()));
        }
    }

    pub(super) fn forget_block(&self, key: &str) {
        self.blocks.lock().unwrap().remove(key);
    }

    /// Which block a block's finished export hands its slot to. Along its chain
    /// (`number + slots`) while that one is not known to have started; at the chain's end
    /// (or past a block taken already), the last block of the iteration not known to have
    /// started, so a slot whose chain ran out takes the last block of a chain still behind
    /// (fixed chains left the slots whose draws ran short idle at the end while others still
    /// had blocks: kc-bench's slots were busy 0.91 of the export window). Blocks known here
    /// are this process's; a block another process started ignores the export sent to it,
    /// and the slot idles as it did at a chain's end before.
    pub(super) fn hand_over_to(&self, iteration: &str, block: u64, blocks: u64, slots: u64) -> Option<u64> {
        let chained = Some(block + slots.max(1)).filter(|n| *n < blocks);
        let from = tail_start(blocks, slots);
        let tails = self.tails.lock().unwrap();
        let Some(tail) = tails.get(iteration) else { return chained };
        if let Some(to) = tail.handed.get(&block) {
            return Some(*to);
        }
        let taken = |n: u64| n == block || (n >= from && tail.started.contains(&n));
        match chained {
            Some(n) if !taken(n) => Some(n),
            _ => (from..blocks).rev().find(|n| !taken(*n)),
        }
    }

    /// Notes that `block` started, or that an export was sent to it by the finished export of
    /// `by` (only the iteration's last blocks are kept: hand-overs look at no others).
    pub(super) fn note_started(&self, iteration: &str, block: u64, by: Option<u64>, blocks: u64, slots: u64) {
        if block < tail_start(blocks, slots) {
            return;
        }
        let mut tails = self.tails.lock().unwrap();
        if tails.len() >= ITERATIONS_CACHED && !tails.contains_key(iteration) {
            tails.clear();
        }
        let tail = tails.entry(iteration.to_owned()).or_default();
        tail.started.insert(block);
        if let Some(by) = by.filter(|by| *by != block) {
            tail.handed.insert(by, block);
        }
    }

    fn done_counter(&self, key: &str) -> DoneCounter {
        let mut done = self.done.lock().unwrap();
        if done.len() >= ITERATIONS_CACHED && !done.contains_key(key) {
            done.clear();
        }
        done.entry(key.to_owned()).or_default().clone()
    }
}

impl CopyEngine {
    pub fn new(store: Arc<dyn CheckpointStore>, connections: Arc<dyn Connections>, options: EngineOptions) -> Self {
        CopyEngine {
            store,
            connections,
            options,
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            janitor_ran: Mutex::new(None),
            learned: Learned::default(),
            cached: Cached::default(),
            looks: super::looks::Looks::default(),
        }
    }

    /// The same engine on another clock and id source (virtual time in tests).
    pub fn with_time(mut self, clock: Arc<dyn Clock>, ids: Arc<dyn Ids>) -> Self {
        self.clock = clock;
        self.ids = ids;
        self
    }

    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        &self.store
    }

    async fn place(&self, message: &StepMessage) -> Result<Place, EngineError> {
        let cached = self.cached.jobs.lock().unwrap().get(&message.job).cloned();
        let job = match cached {
            Some(job) => job,
            None => {
                let job = read_job(self.store.as_ref(), &message.job)
                    .await
                    .map_err(record_err)?
                    .ok_or_else(|| EngineError::Permanent(format!("no job '{}'", message.job)))?;
                if job.state == JobState::Accepted {
                    self.cached.jobs.lock().unwrap().insert(job.id.clone(), job.clone());
                }
                job
            }
        };
        let spec = job.spec.clone().ok_or_else(|| EngineError::Permanent(format!("job '{}' was rejected", job.id)))?;
        let name = message.activity.as_deref().ok_or_else(|| EngineError::Permanent("step message names no activity".into()))?;
        let activity = spec
            .activities
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or_else(|| EngineError::Permanent(format!("job '{}' has no activity '{name}'", job.id)))?;
        let iteration = message.iteration.unwrap_or(1);
        Ok(Place { job, spec, activity, iteration, deployment: self.options.deployment.clone() })
    }

    pub(super) async fn read<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<(T, ETag)>, EngineError> {
        checkpoint::read_json(self.store.as_ref(), key).await.map_err(record_err)
    }

    /// Writes `next` if the record is still at `etag`; `false` when another delivery won.
    async fn swap<T: Serialize>(&self, key: &str, next: &T, etag: &ETag) -> Result<bool, EngineError> {
        Ok(matches!(checkpoint::replace_json(self.store.as_ref(), key, next, etag).await.map_err(storage_err)?, Written::Done(_)))
    }

    /// Whether the activity stopped (failed or cancelled): then nothing more starts.
    pub(super) async fn activity_stopped(&self, place: &Place) -> Result<bool, EngineError> {
        Ok(self.read::<ActivityRecord>(&keys::activity(&place.job.id, &place.activity.name)).await?.is_some_and(|(r, _)| r.state.stopped()))
    }

    /// Records the activity as failed with `reason` (once: the first reason stays).
    async fn fail_activity(&self, place: &Place, reason: &str) -> Result<(), EngineError> {
        let key = keys::activity(&place.job.id, &place.activity.name);
        loop {
            let Some((mut record, etag)) = self.read::<ActivityRecord>(&key).await? else {
                let record = ActivityRecord::new(place.iteration, ActivityState::Failed { reason: reason.to_owned() });
                match checkpoint::create_json(self.store.as_ref(), &key, &record).await.map_err(storage_err)? {
                    Written::Done(_) => break,
                    Written::Conflict => continue,
                }
            };
            if record.state.stopped() {
                return Ok(());
            }
            record.state = ActivityState::Failed { reason: reason.to_owned() };
            if self.swap(&key, &record, &etag).await? {
                break;
            }
        }
        tracing::error!(job = %place.job.id, activity = %place.activity.name, %reason, "activity stopped");
        Ok(())
    }

    // ---- plan ------------------------------------------------------------------------

    /// `redelivered`: this message was delivered before, and that delivery may have written
    /// the plan's last step and stopped before sending the first exports.
    async fn plan(&self, place: &Place, redelivered: bool) -> Result<Vec<Outgoing>, EngineError> {
        let (job, activity, n) = (&place.job.id, &place.activity.name, place.iteration);
        let source = self.connections.kusto(&place.activity.source.cluster)?;
        let dest = self.connections.kusto(&place.activity.destination.cluster)?;
        let key = keys::iteration(job, activity, n);
        let request_id = |what: &str| ClientRequestId::new(what, job, &format!("{activity}/{n}"), 1);

        let (iteration, etag) = match self.read::<IterationRecord>(&key).await? {
            // Planned already. A redelivery sends the first exports again, to those of the
            // first blocks that never started (its first delivery may have stopped before it
            // sent them).
            Some((it, _)) if it.state == IterationState::Copying && redelivered => {
                if it.blocks == 0 {
                    self.finish_iteration(place, &it).await?;
                    return Ok(vec![]);
                }
                // Only blocks that never started: one that did got its turn.
                let mut out = Vec::new();
                for b in 0..it.blocks.min(it.export_slots.max(1)) {
                    let fresh = self
                        .read::<BlockRecord>(&keys::block(job, activity, n, b))
                        .await?
                        .is_some_and(|(r, _)| r.never_started());
                    if fresh {
                        out.push(place.now(Step::Export, Some(b)));
                    }
                }
                return Ok(out);
            }
            Some((it, _)) if it.state != IterationState::Planning => return Ok(vec![]),
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
                    export_slots: 0,
                    cluster_capacity: None,
                    chunk_bins: None,
                    route: None,
                    aborted: false,
                    first_ingestion: None,
                    last_ingestion: None,
                    copied_rows: None,
                    destination_soft_delete_secs: None,
                    rows_beyond_retention: 0,
                    blocks_beyond_retention: 0,
                    pending: Vec::new(),
                    started_at: self.clock.now(),
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
                rows_beyond_retention: 0,
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
            // First planning step of the iteration: the query may read only the source's
            // columns (a bare name that is no column could be a stored function or another
            // table, which the request's checks cannot know), the destination must be able to
            // take the rows before anything is exported, and the window's extent bounds the
            // chunks.
            if let Some(query) = place.activity.query.as_deref() {
                let columns = source
                    .execute(&place.activity.source.database, &commands::result_schema(&table, None), &request_id("source-columns"))
                    .await
                    .and_then(|a| a.primary().map(|t| t.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>()))
                    .map_err(|e| kusto_err("read the source table's columns", e))?;
                crate::job::query::check(query)
                    .and_then(|checked| checked.check_columns(&columns))
                    .map_err(|e| EngineError::Permanent(format!("query: {e}")))?;
            }
            let produced = self.check_destination(place, &source, &dest, &table, &dest_table, user_query.as_ref()).await?;
            let soft_delete = self.destination_soft_delete(place, &dest, &dest_table).await?;
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
            // Fixed here, before any block exists: every block of the iteration travels so.
            let route = super::records::DataRoute::for_columns(&produced);
            tracing::info!(job, activity, route = ?route, "staging format chosen from the copy's column types");
            next.route = Some(route);
            next.rows_without_ingestion_time = no_time;
            next.destination_soft_delete_secs = soft_delete.map(|d| d.whole_seconds());
            next.first_ingestion = summary.first;
            next.last_ingestion = summary.last;
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
            // Sixteen at a time: one after the other, a chunk's creates were most of the time
            // before the first export (issue 12). Each is create-if-absent, so a block already
            // written by another delivery stays as it is.
            for chunk in iteration.pending.chunks(16) {
                let names: Vec<String> = chunk.iter().map(|block| keys::block(job, activity, n, block.number)).collect();
                let creates = chunk.iter().zip(&names).map(|(block, key)| checkpoint::create_json(self.store.as_ref(), key, block));
                let written = futures::future::try_join_all(creates).await.map_err(storage_err)?;
                // The first exports often run here next: they decide on these writes.
                for ((block, key), written) in chunk.iter().zip(&names).zip(written) {
                    if let Written::Done(etag) = written {
                        self.cached.keep_planned(key, block, &etag);
                    }
                }
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
                let chunk = iteration.chunk_bins.unwrap_or(self.options.limits.bins_per_step).max(1);
                let to = (from + bin * chunk as i32).min(end);
                let range = IngestionRange { from, to };
                let counts_cmd = commands::row_counts_in_range(&table, &window, Some(&range), user_query.as_ref(), bin.unsigned_abs()).map_err(|e| kusto_err("plan", e))?;
                let counts = match source.execute(&place.activity.source.database, &counts_cmd, &request_id("plan-counts")).await.and_then(|a| results::row_count_bins(&a)) {
                    Ok(counts) => counts,
                    // Too much for one query: the same chunk again would fail the same way.
                    Err(e) if chunk_too_large(&e) && chunk > 1 => {
                        let mut next = iteration.clone();
                        next.chunk_bins = Some(chunk / 2);
                        tracing::warn!(job, activity, bins = chunk / 2, error = %e, "planning chunk too large: split");
                        if !self.swap(&key, &next, &etag).await? {
                            return Ok(vec![]);
                        }
                        return Ok(vec![place.now(Step::Plan, None)]);
                    }
                    Err(e) => return Err(kusto_err("count source rows", e)),
                };
                // The source's extents, for the creation times of the counted rows. Listed
                // after the counts: an extent merged away in between is missed, and the chunk
                // is counted again rather than planned without an age.
                // Only the extents the counts name, by id (`.show table T extents (id, ...)`:
                // "the returned data set is limited to those extents"), not every extent of
                // the table per chunk: a big table has hundreds of thousands.
                let mut ids: Vec<uuid::Uuid> = counts.iter().filter_map(|c| c.extent_id.as_deref()).filter_map(|id| id.parse().ok()).collect();
                ids.sort();
                ids.dedup();
                let mut extents = Vec::with_capacity(ids.len());
                for batch in ids.chunks(EXTENT_IDS_PER_LISTING) {
                    let listed = source
                        .execute(&place.activity.source.database, &commands::show_extents_by_id(&table, batch).map_err(|e| kusto_err("plan", e))?, &request_id("plan-extents"))
                        .await
                        .and_then(|a| results::extents(&a))
                        .map_err(|e| kusto_err("list source extents", e))?;
                    extents.extend(listed);
                }
                // A bin with more rows than a block holds, or whose rows come from extents
                // created further apart than a block may be, is counted again by minute, and a
                // minute still so by second: rows that share one ingestion second cannot be
                // split by ingestion time and stay one block.
                let mut sized: Vec<(results::RowCountBin, time::Duration)> = counts.into_iter().map(|c| (c, bin)).collect();
                for (coarse, fine) in [(bin, time::Duration::minutes(1)), (time::Duration::minutes(1), time::Duration::seconds(1))] {
                    if fine >= coarse {
                        continue;
                    }
                    let at_size: Vec<results::RowCountBin> = sized.iter().filter(|(_, s)| *s == coarse).map(|(c, _)| c.clone()).collect();
                    let mut refine = super::plan::oversized_bins(&at_size, self.options.limits.max_rows);
                    refine.extend(super::plan::spread_bins(&at_size, &extents, self.options.limits.max_creation_spread));
                    refine.sort();
                    refine.dedup();
                    for start in refine {
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
                let counted: Vec<results::RowCountBin> = sized.iter().map(|(c, _)| c.clone()).collect();
                let unknown = super::plan::unknown_extents(&counted, &extents);
                if !unknown.is_empty() {
                    return Err(EngineError::Transient(format!("{} source extents were merged while this chunk was planned: counting it again", unknown.len())));
                }
                let planned = super::plan::plan_sized(&sized, &extents, &self.options.limits);
                let mut next = iteration.clone();
                next.pending = planned
                    .blocks
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BlockRecord::planned(iteration.blocks + i as u64, b.from, b.to, b.rows, b.creation_time, self.clock.now()))
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
            if let Err(e) = self.prepare_staging_table(place, &dest, &dest_table).await {
                // Another delivery may have started the copy meanwhile and finished it (blocks
                // too old for the destination end at once), dropping the staging table between
                // this delivery's create and its alters (kc-chaos seed 5789179029485579218:
                // TableNotFound failed the activity).
                // Stale then: nothing to do here but drop again what its create may have
                // made after that end (as below when the swap is lost).
                match self.read::<IterationRecord>(&key).await? {
                    Some((it, _)) if it.state == IterationState::Done => {
                        let rid = ClientRequestId::new("drop-staging", job, activity, 1);
                        dest.execute(&place.activity.destination.database, &commands::drop_table(&ident(&place.staging_table())?), &rid)
                            .await
                            .map_err(|e| kusto_err("drop the staging table", e))?;
                        return Ok(vec![]);
                    }
                    Some((it, _)) if it.state == IterationState::Copying => return Ok(vec![]),
                    _ => return Err(e),
                }
            }
        }
        // Exports in flight: the job's export count, never more than the cluster can run.
        // Unknown when it cannot be read: `.show capacity` needs AllDatabasesMonitor, and is
        // documented for Azure Data Explorer only. The job's export count alone then bounds
        // the exports, and a throttled start is retried as any refused start is.
        let capacity = match source
            .execute(&place.activity.source.database, &commands::show_capacity(), &request_id("capacity"))
            .await
            .and_then(|a| results::capacities(&a))
        {
            Ok(caps) => caps.into_iter().find(|c| c.resource == "DataExport").map(|c| c.total.max(1) as u64),
            Err(e) if e.is_transient() => return Err(kusto_err("read the source's export capacity", e)),
            Err(e) => {
                tracing::warn!(job = %place.job.id, activity = %place.activity.name, error = %e, "the source's export capacity is unknown: exports are bounded by the job's exportCount only");
                None
            }
        };
        let slots = export_slots(place.spec.export_count, capacity);
        let first = iteration.blocks.min(slots);
        let mut next = iteration.clone();
        next.state = IterationState::Copying;
        next.export_slots = slots;
        next.cluster_capacity = capacity;
        if !self.swap(&key, &next, &etag).await? {
            // Another delivery started the copy, and its blocks may all be done by now (blocks
            // too old for the destination end at once): then the staging table this delivery
            // just made sure of was made after that iteration dropped it, and is dropped again.
            if iteration.blocks > 0 && self.read::<IterationRecord>(&key).await?.is_some_and(|(it, _)| it.state == IterationState::Done) {
                let rid = ClientRequestId::new("drop-staging", job, activity, 1);
                dest.execute(&place.activity.destination.database, &commands::drop_table(&ident(&place.staging_table())?), &rid)
                    .await
                    .map_err(|e| kusto_err("drop the staging table", e))?;
            }
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
    ) -> Result<Vec<crate::kusto::Column>, EngineError> {
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
                return Err(EngineError::Permanent(format!(
                        "destination table {} does not exist in database {} of {}: create it with the schema the copy produces, or submit the job with createDestinationTable",
                        dest_table.as_str(),
                        place.activity.destination.database,
                        place.activity.destination.cluster
                )));
            }
            let cmd = commands::create_table(dest_table, &produced).map_err(|e| kusto_err("create the destination table", e))?;
            dest.execute(&place.activity.destination.database, &cmd, &request_id("create-table")).await.map_err(|e| kusto_err("create the destination table", e))?;
        }
        let accepted = schema(dest.execute(&place.activity.destination.database, &commands::result_schema(dest_table, None), &request_id("schema")).await, "read the destination schema")?;
        if let Some(problem) = super::plan::schema_mismatch(&produced, &accepted) {
            return Err(EngineError::Permanent(format!("destination table {} cannot take this copy: {problem}", dest_table.as_str())));
        }
        Ok(produced)
    }

    /// The destination table's soft-delete period: its own retention policy's, else its
    /// database's (a table's policy takes precedence, management/retention-policy). A block
    /// created before `now - period` would be refused by the destination, so it is not
    /// exported. A policy that cannot be read is no reason to stop: such a block is then
    /// found by the refusal of its ingestion, which ends it the same way.
    async fn destination_soft_delete(&self, place: &Place, dest: &Arc<dyn KustoApi>, dest_table: &Ident) -> Result<Option<time::Duration>, EngineError> {
        let db = &place.activity.destination.database;
        let rid = &ClientRequestId::new("retention", &place.job.id, &format!("{}/{}", place.activity.name, place.iteration), 1);
        let read = |cmd: Command| async move { dest.execute(db, &cmd, &rid).await.and_then(|a| results::soft_delete_period(&a)) };
        let found = match read(commands::show_table_retention(dest_table)).await {
            Ok(Some(period)) => Ok(Some(period)),
            Ok(None) => read(commands::show_database_retention(&ident(db)?)).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(period) => Ok(period),
            Err(e) if e.is_transient() => Err(kusto_err("read the destination's retention policy", e)),
            Err(e) => {
                tracing::warn!(job = %place.job.id, activity = %place.activity.name, error = %e, "the destination's retention policy is not readable: blocks too old for it are found when it refuses them");
                Ok(None)
            }
        }
    }

    async fn prepare_staging_table(&self, place: &Place, dest: &Arc<dyn KustoApi>, dest_table: &Ident) -> Result<(), EngineError> {
        let db = &place.activity.destination.database;
        let staging = ident(&place.staging_table())?;
        let rid = ClientRequestId::new("staging-table", &place.job.id, &place.activity.name, 1);
        // Made safe before first use: `based-on` copies the destination's policies, and each
        // of these would let a count by tag lie (kusto.md, "Staging tables inherit policies").
        let prepare = |e| kusto_err("staging table", e);
        for cmd in [
            commands::create_table_based_on(&staging, dest_table, Some("kusto-copy")).map_err(prepare)?,
            commands::disable_merges(&staging).map_err(prepare)?,
            commands::keep_extent_tags(&staging).map_err(prepare)?,
            commands::delete_partitioning_policy(&staging),
            commands::short_ingestion_batching(&staging).map_err(prepare)?,
            commands::restrict_view(&staging),
        ] {
            dest.execute(db, &cmd, &rid).await.map_err(|e| kusto_err("prepare the staging table", e))?;
        }
        Ok(())
    }

    /// Takes, renews or gives up this block's slot of its source cluster. Always `true` when
    /// the cluster's capacity is unknown.
    pub(super) async fn cluster_slot(&self, place: &Place, iteration: &IterationRecord, block: &BlockRecord, action: SlotAction) -> Result<bool, EngineError> {
        let Some(capacity) = iteration.cluster_capacity else { return Ok(true) };
        let owner = format!("{}/{}/{}/{}", place.job.id, place.activity.name, place.iteration, block.number);
        let (store, cluster, now) = (self.store.as_ref(), place.activity.source.cluster.as_str(), self.clock.now());
        // Where this process last saw the block's claim, and the ETag of its write there:
        // a renewal or a release swaps that claim without reading any.
        let hint = self.cached.slots.lock().unwrap().get(&owner).map(|(n, etag)| (*n, Some(etag.clone())));
        match action {
            SlotAction::Acquire => {
                // A block's first export may take the slot this process gave up last (a
                // hand-over's: swapped at the ETag of that release, unread), or else its own
                // by number (the first exports of an iteration, started together, each look
                // at another slot instead of all racing for the first free one), without
                // looking at every slot.
                let first = block.export_attempt == 0 && block.unconfirmed_export.is_none();
                let free = if first {
                    let given_up = self.cached.free_slots.lock().unwrap().get_mut(cluster).and_then(|free| free.pop()).map(|(n, etag)| (n, Some(etag)));
                    [given_up, Some((block.number % capacity.max(1), None))]
                } else {
                    [None, None]
                };
                let held = super::slots::acquire_hinted(store, cluster, capacity, &owner, now, super::slots::Hints { held: hint, free }).await.map_err(storage_err)?;
                let granted = held.is_some();
                if let Some(seen) = held {
                    self.cached.slots.lock().unwrap().insert(owner, seen);
                }
                Ok(granted)
            }
            SlotAction::Renew => {
                if let Some(seen) = super::slots::renew_hinted(store, cluster, capacity, &owner, now, hint).await.map_err(storage_err)? {
                    self.cached.slots.lock().unwrap().insert(owner, seen);
                }
                Ok(true)
            }
            SlotAction::Release => {
                let released = super::slots::release_hinted(store, cluster, capacity, &owner, now, hint).await.map_err(storage_err)?;
                self.cached.slots.lock().unwrap().remove(&owner);
                if let Some((n, etag)) = released {
                    let mut free_slots = self.cached.free_slots.lock().unwrap();
                    let free = free_slots.entry(cluster.to_owned()).or_default();
                    // One entry per slot (its latest release), at most the capacity.
                    free.retain(|(m, _)| *m != n);
                    free.push((n, etag));
                    if free.len() as u64 > capacity {
                        free.remove(0);
                    }
                }
                Ok(true)
            }
        }
    }

    pub(super) async fn operation(&self, kusto: &Arc<dyn KustoApi>, db: &str, id: uuid::Uuid, rid: &ClientRequestId) -> Result<Option<results::Operation>, EngineError> {
        let cmd = commands::show_operations(&[id]).map_err(|e| kusto_err("show operations", e))?;
        let answer = kusto.execute(db, &cmd, rid).await.map_err(|e| kusto_err("show operations", e))?;
        Ok(results::operations(&answer).map_err(|e| kusto_err("show operations", e))?.into_iter().find(|o| o.id == id))
    }

    /// A block is done: count it, and finish the iteration when it was the last.
    pub(super) async fn block_finished(&self, place: &Place, block: &BlockRecord) -> Result<(), EngineError> {
        if self.count_done(place, block).await? {
            let key = keys::iteration(&place.job.id, &place.activity.name, place.iteration);
            if let Some((iteration, _)) = self.read::<IterationRecord>(&key).await? {
                self.finish_iteration(place, &iteration).await?;
            }
        }
        Ok(())
    }

    async fn count_done(&self, place: &Place, block: &BlockRecord) -> Result<bool, EngineError> {
        let key = done_key(place);
        // The block count is fixed once copying: the cached record tells it.
        let blocks = self.iteration_for_blocks(place).await?.blocks;
        let last = self.cached.done_counter(&key);
        let mut last = last.lock().await;
        count_block(self.store.as_ref(), &mut last, &key, block, blocks).await
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
        // Every block is done: no claim of this iteration is needed any more (a stale
        // delivery may have taken one for a block already past its export).
        if let Some(capacity) = iteration.cluster_capacity {
            let owners = format!("{}/{}/{}/", place.job.id, place.activity.name, place.iteration);
            super::slots::release_all(self.store.as_ref(), &place.activity.source.cluster, capacity, &owners, self.clock.now()).await.map_err(storage_err)?;
        }
        // From done.json when it counts every block (each once, with its final rows: the
        // usual end, by the step that counted the last block); else from the blocks
        // themselves: the running count falls one block short when a step stops between a
        // block's two writes (the sweeper ends such an iteration), and a record begun by an
        // earlier version has no count of the blocks too old.
        let counted = self.read::<Progress>(&done_key(place)).await?.and_then(|(p, _)| {
            let too_old = p.too_old.filter(|_| p.blocks.len() as u64 >= iteration.blocks)?;
            Some((p.rows, too_old.rows, too_old.blocks))
        });
        let (rows, too_old_rows, too_old_blocks) = match counted {
            Some(counted) => counted,
            None => {
                let (mut rows, mut too_old_rows, mut too_old_blocks) = (0, 0, 0);
                for key in self.store.list(&keys::blocks(&place.job.id, &place.activity.name, place.iteration)).await.map_err(storage_err)? {
                    if let Some((block @ BlockRecord { state: BlockState::Done { .. }, .. }, _)) = self.read::<BlockRecord>(&key).await? {
                        rows += block.rows().unwrap_or(0);
                        if block.beyond_retention {
                            too_old_rows += block.planned_rows;
                            too_old_blocks += 1;
                        }
                    }
                }
                (rows, too_old_rows, too_old_blocks)
            }
        };
        if too_old_blocks > 0 {
            tracing::warn!(
                job = %place.job.id, activity = %place.activity.name, iteration = place.iteration, rows = too_old_rows, blocks = too_old_blocks,
                "rows older than the destination's soft-delete period were not copied"
            );
        }
        self.cached.done.lock().unwrap().remove(&done_key(place));
        self.cached.tails.lock().unwrap().remove(&place.id());
        let activity_key = keys::activity(&place.job.id, &place.activity.name);
        loop {
            let Some((mut record, etag)) = self.read::<ActivityRecord>(&activity_key).await? else { break };
            if record.last_finished_iteration >= place.iteration || record.state.stopped() {
                break;
            }
            record.last_finished_iteration = place.iteration;
            record.copied_rows += rows;
            record.rows_beyond_retention += too_old_rows;
            record.rows_without_ingestion_time = iteration.rows_without_ingestion_time;
            record.last_finished_at = Some(self.clock.now());
            // Waiting for the scheduler only when it has a period to start the next one by;
            // without one, the activity completes, and running the job again continues it.
            record.state = if place.spec.copy_mode.is_continuous() && place.spec.iteration_period_secs.is_some() {
                ActivityState::Idle
            } else {
                ActivityState::Completed
            };
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
            it.finished_at = Some(self.clock.now());
            it.copied_rows = Some(rows);
            it.rows_beyond_retention = too_old_rows;
            it.blocks_beyond_retention = too_old_blocks;
            if self.swap(&key, &it, &etag).await? {
                break;
            }
        }
        tracing::info!(job = %place.job.id, activity = %place.activity.name, iteration = place.iteration, rows, "iteration done");
        Ok(())
    }

    /// Drives a job in-process until none of its messages is left, then looks at the
    /// checkpoints again: a chain that ended early (a follow-up lost to a storage failure,
    /// which the scheduler's sweeper would find under `kc serve`) is picked up from there.
    /// Returns the permanent failures the driver saw.
    pub async fn run_locally(self: &Arc<Self>, job: &JobRecord, workers: usize, mut on_event: impl FnMut(&super::local::Event) + Send) -> Result<Vec<String>, EngineError> {
        // Reading the checkpoints can fail for a moment like any step: try again for about a
        // minute (a look reads every unfinished block, so one attempt makes many calls).
        async fn retried<T, F: std::future::Future<Output = Result<T, EngineError>>>(mut f: impl FnMut() -> F) -> Result<T, EngineError> {
            let mut delay = Duration::from_millis(100);
            for _ in 0..16 {
                match f().await {
                    Err(EngineError::Transient(_)) => tokio::time::sleep(delay).await,
                    other => return other,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            f().await
        }
        // Attempts leased by a run that died are taken over once their lease expires: keep
        // looking for a while past that.
        let give_up = tokio::time::Instant::now() + self.options.lease.unsigned_abs() * 3 + Duration::from_secs(5);
        let pause = (self.options.lease.unsigned_abs() / 8).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let first = retried(|| self.resume(job)).await?;
            let failures = super::local::run(self.clone(), first, workers, &mut on_event).await;
            if !failures.is_empty() || retried(|| self.job_finished(job)).await? || tokio::time::Instant::now() > give_up {
                return Ok(failures);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// "Copy since last copy": a continuous job (`BackfillAndNew`, `NewOnly`) run again once
    /// every activity is over starts the next iteration of each, whose window begins at the
    /// last iteration's end cursor. Nothing while any activity is still running or failed
    /// (running the job resumes it instead), and nothing for `BackfillOnly`. Each activity
    /// moves on with a compare-and-swap, so concurrent runs start one iteration, not two.
    pub async fn next_iteration(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        let Some(spec) = &job.spec else { return Ok(vec![]) };
        if !spec.copy_mode.is_continuous() {
            return Ok(vec![]);
        }
        let mut records = Vec::new();
        for activity in &spec.activities {
            match self.read::<ActivityRecord>(&keys::activity(&job.id, &activity.name)).await? {
                Some((r, etag)) if matches!(r.state, ActivityState::Completed | ActivityState::Idle) => records.push((activity, r, etag)),
                _ => return Ok(vec![]),
            }
        }
        let mut out = Vec::new();
        for (activity, mut record, etag) in records {
            record.iteration += 1;
            record.state = ActivityState::Running;
            if self.swap(&keys::activity(&job.id, &activity.name), &record, &etag).await? {
                tracing::info!(job = %job.id, activity = %activity.name, iteration = record.iteration, "next iteration: copying what arrived since the last one");
                let place = Place { job: job.clone(), spec: spec.clone(), activity: activity.clone(), iteration: record.iteration, deployment: self.options.deployment.clone() };
                out.push(place.now(Step::Plan, None));
            }
        }
        Ok(out)
    }

    /// Rows copied so far by each activity of a job, summed (progress across runs).
    pub async fn copied_rows(&self, job: &JobRecord) -> Result<u64, EngineError> {
        let mut total = 0;
        for activity in job.spec.iter().flat_map(|s| s.activities.iter()) {
            total += self.read::<ActivityRecord>(&keys::activity(&job.id, &activity.name)).await?.map_or(0, |(r, _)| r.copied_rows);
        }
        Ok(total)
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
            let place = |n| Place { job: job.clone(), spec: spec.clone(), activity: activity.clone(), iteration: n, deployment: self.options.deployment.clone() };
            let activity_key = keys::activity(&job.id, &activity.name);
            let Some((mut record, etag)) = self.read::<ActivityRecord>(&activity_key).await? else {
                out.push(place(1).now(Step::Plan, None));
                continue;
            };
            if matches!(record.state, ActivityState::Completed | ActivityState::Idle) {
                // Counted on the activity, but a step stopped before it marked the iteration
                // itself done: finish that (idempotent), as the janitor's horizon, a day.
                let recent = record.last_finished_at.is_some_and(|t| self.clock.now() - t < time::Duration::days(1));
                // Best effort: a storage hiccup here must not hold up the other activities'
                // messages; the next sweep tries again.
                if recent && record.last_finished_iteration == record.iteration {
                    let it_key = keys::iteration(&job.id, &activity.name, record.iteration);
                    if let Ok(Some((it, _))) = self.read::<IterationRecord>(&it_key).await {
                        if it.state != IterationState::Done {
                            if let Err(e) = self.finish_iteration(&place(record.iteration), &it).await {
                                tracing::warn!(job = %job.id, activity = %activity.name, error = %e, "a counted iteration not marked done yet: tried again at the next sweep");
                            }
                        }
                    }
                }
                continue;
            }
            if record.state == ActivityState::Cancelled {
                let it_key = keys::iteration(&job.id, &activity.name, record.iteration);
                if self.read::<IterationRecord>(&it_key).await?.is_some_and(|(it, _)| !it.aborted) {
                    out.push(place(record.iteration).now(Step::Abort, None));
                }
                continue;
            }
            if let ActivityState::Failed { reason } = &record.state {
                let it_key = keys::iteration(&job.id, &activity.name, record.iteration);
                let aborted = self.read::<IterationRecord>(&it_key).await?.is_none_or(|(it, _)| it.aborted);
                if !aborted {
                    // Its cleanup has not finished (the abort message was lost or failed).
                    out.push(place(record.iteration).now(Step::Abort, None));
                    continue;
                }
                if stalled_before.is_some() {
                    continue;
                }
                // The job was submitted again (or `kc copy` run again): the cause is taken to
                // be fixed, and the activity continues where it stopped.
                tracing::info!(job = %job.id, activity = %activity.name, previous = %reason, "resuming a failed activity");
                record.state = ActivityState::Running;
                if !self.swap(&activity_key, &record, &etag).await? {
                    continue;
                }
                if let Some((mut it, it_etag)) = self.read::<IterationRecord>(&it_key).await? {
                    if it.state == IterationState::Copying && it.blocks > 0 {
                        // The abort dropped the staging table: the blocks still to copy need it.
                        let p = place(record.iteration);
                        let dest = self.connections.kusto(&activity.destination.cluster)?;
                        self.prepare_staging_table(&p, &dest, &ident(&activity.destination.table)?).await?;
                    }
                    it.aborted = false;
                    self.swap(&it_key, &it, &it_etag).await?;
                }
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
                    let mut blocks = std::collections::BTreeMap::new();
                    for key in self.store.list(&keys::blocks(&job.id, &activity.name, record.iteration)).await.map_err(storage_err)? {
                        if let Some(found) = self.read::<BlockRecord>(&key).await? {
                            blocks.insert(found.0.number, (key, found));
                        }
                    }
                    let all_done = blocks.values().all(|(_, (b, _))| b.due().is_none());
                    let slots = iteration.export_slots.max(1);
                    for (number, (key, (block, etag))) in &blocks {
                        let Some(step) = block.due() else { continue };
                        // A block never started is started by the block `slots` before it
                        // finishing its export: due only once that one has.
                        let fresh = step == Step::Export && block.never_started();
                        let handed = *number < slots || blocks.get(&(number - slots)).is_none_or(|(_, (b, _))| b.exported());
                        // A waiting block is due when its waiting chain is overdue.
                        let overdue = block.waiting_until.is_none_or(|at| stalled(at)) && stalled(block.touched_at);
                        if (fresh && !handed) || !overdue {
                            continue;
                        }
                        match stalled_before {
                            None => out.push(p.now(step, Some(*number))),
                            // Sent once per stall: the touch that sends it makes it fresh again.
                            Some(_) => {
                                let mut touched = block.clone();
                                touched.touched_at = self.clock.now();
                                if self.swap(key, &touched, etag).await? {
                                    out.push(p.now(step, Some(*number)));
                                }
                            }
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
                Some((r, _)) if matches!(r.state, ActivityState::Completed) || r.state.stopped() => {}
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
            let place = Place { job: job.clone(), spec: spec.clone(), activity: activity.clone(), iteration: record.iteration, deployment: self.options.deployment.clone() };
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotAction {
    Acquire,
    Renew,
    Release,
}

/// A query that timed out, or whose result set Kusto cut at its limits (500,000 records or
/// 64 MB: `E_QUERY_RESULT_SET_TOO_LARGE`, docs concepts/querylimits).
fn chunk_too_large(e: &KustoError) -> bool {
    let text = format!("{} {}", e.code.as_deref().unwrap_or_default(), e.message);
    e.kind == crate::kusto::ErrorKind::Timeout || text.contains("E_QUERY_RESULT_SET_TOO_LARGE") || text.contains("80DA0003") || text.contains("truncat")
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

/// See [`CopyEngine::progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub blocks: u64,
    pub blocks_done: u64,
    pub planned_rows: u64,
    pub copied_rows: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Progress {
    /// Numbers of the blocks done (a set, so counting is idempotent), written as ranges
    /// (`"0-57,59-60"`): blocks end nearly in order, so the record stays a few bytes however
    /// many blocks an iteration has, where a list of 100,000 numbers would be rewritten whole
    /// by every block's end. A list of numbers (the earlier form) is read too.
    #[serde(with = "block_ranges")]
    pub(super) blocks: std::collections::BTreeSet<u64>,
    pub(super) rows: u64,
    /// Of those, the blocks not copied for their age and their planned rows: with `rows`, all
    /// an iteration's end reports, so a complete record spares it reading every block. `None`
    /// in a record begun before these were counted (its end reads the blocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) too_old: Option<TooOld>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct TooOld {
    pub(super) blocks: u64,
    pub(super) rows: u64,
}

mod block_ranges {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeSet;

    pub fn serialize<S: Serializer>(blocks: &BTreeSet<u64>, s: S) -> Result<S::Ok, S::Error> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &b in blocks {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == b => *end = b,
                _ => ranges.push((b, b)),
            }
        }
        let text: Vec<String> = ranges.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
        s.serialize_str(&text.join(","))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Ranges(String),
        List(Vec<u64>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<u64>, D::Error> {
        match Form::deserialize(d)? {
            Form::List(list) => Ok(list.into_iter().collect()),
            Form::Ranges(text) => {
                let mut out = BTreeSet::new();
                for part in text.split(',').filter(|p| !p.is_empty()) {
                    let (a, b) = part.split_once('-').unwrap_or((part, part));
                    let (a, b): (u64, u64) = (a.parse().map_err(serde::de::Error::custom)?, b.parse().map_err(serde::de::Error::custom)?);
                    if b < a || b - a > 100_000_000 {
                        return Err(serde::de::Error::custom(format!("bad block range {part}")));
                    }
                    out.extend(a..=b);
                }
                Ok(out)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn ranges_round_trip_and_the_old_list_reads() {
            let p = super::super::Progress { blocks: [0, 1, 2, 3, 5, 7, 8].into_iter().collect(), rows: 9, too_old: Some(super::super::TooOld { blocks: 1, rows: 4 }) };
            let text = serde_json::to_string(&p).unwrap();
            assert!(text.contains(r#""0-3,5,7-8""#), "{text}");
            assert_eq!(serde_json::from_str::<super::super::Progress>(&text).unwrap(), p);
            let old: super::super::Progress = serde_json::from_str(r#"{"blocks":[4,2],"rows":1}"#).unwrap();
            assert_eq!(old.too_old, None, "begun before blocks too old were counted: the iteration's end reads the blocks");
            assert_eq!(old.blocks.into_iter().collect::<Vec<_>>(), vec![2, 4]);
            assert!(serde_json::from_str::<super::super::Progress>(r#"{"blocks":"5-2","rows":1}"#).is_err());
        }
    }
}

/// Counts `block` on the done record at `key`; whether all `blocks` are counted now. `last`
/// is this process's last write of the record and its ETag, held under a lock by the caller:
/// this process's blocks that end together count one after the other, each on the record the
/// one before wrote, swapped at that write's ETag, with no read and no race lost between
/// them (eight blocks ending at once made two reads and two swaps each). A write from
/// elsewhere fails the swap, and the stored record is read.
async fn count_block(store: &dyn CheckpointStore, last: &mut Option<(Progress, ETag)>, key: &str, block: &BlockRecord, blocks: u64) -> Result<bool, EngineError> {
    loop {
        let remembered = last.take();
        let from_cache = remembered.is_some();
        let (mut progress, etag) = match remembered {
            Some((p, etag)) => (p, Some(etag)),
            None => match checkpoint::read_json::<Progress>(store, key).await.map_err(record_err)? {
                Some((p, etag)) => (p, Some(etag)),
                None => (Progress { too_old: Some(TooOld::default()), ..Progress::default() }, None),
            },
        };
        if !progress.blocks.insert(block.number) {
            // Counted before (a repeated step): whether the iteration is complete is the
            // stored record's to say, which may hold other processes' blocks too.
            if from_cache {
                continue;
            }
            let complete = progress.blocks.len() as u64 >= blocks;
            *last = etag.map(|etag| (progress, etag));
            return Ok(complete);
        }
        progress.rows += block.rows().unwrap_or(0);
        if let Some(too_old) = progress.too_old.as_mut().filter(|_| block.beyond_retention) {
            too_old.blocks += 1;
            too_old.rows += block.planned_rows;
        }
        let written = match etag {
            None => checkpoint::create_json(store, key, &progress).await.map_err(storage_err)?,
            Some(etag) => checkpoint::replace_json(store, key, &progress, &etag).await.map_err(storage_err)?,
        };
        if let Written::Done(etag) = written {
            let complete = progress.blocks.len() as u64 >= blocks;
            *last = Some((progress, etag));
            return Ok(complete);
        }
    }
}

fn done_key(place: &Place) -> String {
    keys::done(&place.job.id, &place.activity.name, place.iteration)
}

/// The blob name inside `folder` of a path `.show operation details` lists (a full URL, or a
/// path relative to the export destination).
pub(super) fn blob_name_in(path: &str, folder: &str) -> Result<String, EngineError> {
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
        let mut out = self.next_iteration(job).await?;
        out.extend(self.resume(job).await?);
        Ok(out)
    }

    async fn step(&self, message: &StepMessage, delivery: &Delivery) -> Result<Vec<Outgoing>, EngineError> {
        let step = Step::parse(&message.step).ok_or_else(|| EngineError::Permanent(format!("unknown step '{}'", message.step)))?;
        let place = self.place(message).await?;
        if step == Step::Abort {
            return self.abort(&place).await;
        }
        // A block step looks whether the activity stopped only before it starts something
        // (`block_step_on`); planning looks first.
        if step == Step::Plan && self.activity_stopped(&place).await? {
            return Ok(vec![]);
        }
        let result = match (step, message.block) {
            (Step::Plan, _) => self.plan(&place, delivery.dequeue_count > 1).await,
            (_, Some(block)) => self.block_step(&place, block, step, delivery).await,
            (_, None) => Err(EngineError::Permanent(format!("step '{}' names no block", message.step))),
        };
        match result {
            // Classified once, here: retrying cannot help, so the activity stops with the
            // reason recorded, and what it left is cleaned up.
            Err(EngineError::Permanent(reason)) => {
                self.fail_activity(&place, &reason).await?;
                Ok(vec![place.now(Step::Abort, None)])
            }
            other => other,
        }
    }

    async fn cancel(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        self.cancel_job(job).await
    }

    async fn tick(&self, tick: &Tick) -> Result<Vec<Outgoing>, EngineError> {
        let mut out = Vec::new();
        let jobs = list_jobs(self.store.as_ref()).await.map_err(record_err)?;
        for job in &jobs {
            // One job's trouble (an unreachable cluster, a storage hiccup) never keeps the
            // scheduler from the others.
            match self.tick_job(job, tick).await {
                Ok(next) => out.extend(next),
                Err(e) => tracing::warn!(job = %job.id, error = %e, "scheduler skipped this job this tick"),
            }
        }
        if self.janitor_due() {
            if let Err(e) = self.janitor(&jobs).await {
                // Due again at the next tick, not in `janitor_every`: a storage hiccup must
                // not leave an orphan for another period.
                *self.janitor_ran.lock().unwrap() = None;
                tracing::warn!(error = %e, "janitor failed this tick: it runs again at the next");
            }
        }
        Ok(out)
    }
}

impl CopyEngine {
    async fn tick_job(&self, job: &JobRecord, tick: &Tick) -> Result<Vec<Outgoing>, EngineError> {
        let mut out = Vec::new();
        {
            let Some(spec) = &job.spec else { return Ok(out) };
            out.extend(self.sweep(job, tick.now - self.options.stall_after).await?);
            let Some(period) = spec.iteration_period_secs.filter(|_| spec.copy_mode.is_continuous()) else { return Ok(out) };
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
                    let place = Place { job: job.clone(), spec: spec.clone(), activity: activity.clone(), iteration: record.iteration, deployment: self.options.deployment.clone() };
                    out.push(place.now(Step::Plan, None));
                }
            }
        }
        Ok(out)
    }

    /// Removes what a failed or cancelled activity's current iteration left: slot claims,
    /// staging folders, the block tags at the destination and the staging table. Blocks that
    /// reached the destination stay there whole; the others go back to `Planned`, so a
    /// resubmitted job continues without redoing a committed block. Safe to repeat.
    ///
    /// An attempt still in flight (a fresh lease) may yet write into a folder or the staging
    /// table after they are removed: the cleanup then runs again once every such lease has
    /// expired, and only that run marks the iteration clean.
    async fn abort(&self, place: &Place) -> Result<Vec<Outgoing>, EngineError> {
        let it_key = keys::iteration(&place.job.id, &place.activity.name, place.iteration);
        let Some((iteration, _)) = self.read::<IterationRecord>(&it_key).await? else { return Ok(vec![]) };
        let now = self.clock.now();
        let mut in_flight_until: Option<OffsetDateTime> = None;
        let dest = self.connections.kusto(&place.activity.destination.cluster)?;
        let db = &place.activity.destination.database;
        let dest_table = ident(&place.activity.destination.table)?;
        let staging = ident(&place.staging_table())?;
        let rid = ClientRequestId::new("abort", &place.job.id, &place.activity.name, 1);
        for key in self.store.list(&keys::blocks(&place.job.id, &place.activity.name, place.iteration)).await.map_err(storage_err)? {
            let Some((block, etag)) = self.read::<BlockRecord>(&key).await? else { continue };
            if let Some(lease) = block.lease.as_ref().filter(|l| l.is_fresh(now)) {
                in_flight_until = Some(in_flight_until.map_or(lease.expires_at, |t| t.max(lease.expires_at)));
            }
            self.cluster_slot(place, &iteration, &block, SlotAction::Release).await?;
            self.delete_folders(place, &block.folders).await?;
            let (tag, rows) = match &block.state {
                BlockState::Ingesting { tag, rows, .. } | BlockState::Ingested { tag, rows, .. } | BlockState::Moving { tag, rows, .. } | BlockState::Moved { tag, rows, .. } => (Some(tag.clone()), *rows),
                _ => (None, 0),
            };
            let mut next = block.clone();
            next.lease = None;
            next.waiting_until = None;
            next.transient_errors = 0;
            // A block whose rows are at the destination is done once its folders are gone
            // (just above): it is counted, so progress says what the destination holds.
            next.state = match &block.state {
                BlockState::Done { .. } => block.state.clone(),
                BlockState::Committed { rows } => BlockState::Done { rows: *rows },
                BlockState::Moved { .. } => BlockState::Done { rows },
                BlockState::Moving { tag, extents, .. } => {
                    // Where did the move get? Looked at before the staging table goes.
                    let in_staging = self.extents_in(&dest, db, &staging, extents, &rid).await?;
                    // The marker survives a destination `drop-by:` retention that removes the tag.
                    let at_dest = self
                        .tag_rows(&dest, db, &dest_table, tag, &rid)
                        .await?
                        .max(self.tag_rows(&dest, db, &dest_table, &super::steps::marker_of(tag), &rid).await?);
                    if in_staging.is_empty() && at_dest == rows {
                        BlockState::Done { rows }
                    } else if in_staging.len() == extents.len() {
                        BlockState::Planned
                    } else {
                        tracing::error!(job = %place.job.id, block = block.number, in_staging = in_staging.len(), at_dest, rows, "an interrupted move left the block undecided");
                        block.state.clone()
                    }
                }
                _ => BlockState::Planned,
            };
            if let Some(tag) = tag {
                let marker = super::steps::marker_of(&tag);
                let cmd = commands::drop_extent_tags(&dest_table, &[tag.as_str(), marker.as_str()], None).map_err(|e| kusto_err("drop tag", e))?;
                dest.execute(db, &cmd, &rid).await.map_err(|e| kusto_err("drop a block's tag at the destination", e))?;
            }
            if next != block && self.swap(&key, &next, &etag).await? {
                if matches!(next.state, BlockState::Done { .. }) && !matches!(block.state, BlockState::Done { .. }) {
                    self.count_done(place, &next).await?;
                }
            }
        }
        dest.execute(db, &commands::drop_table(&staging), &rid).await.map_err(|e| kusto_err("drop the staging table", e))?;
        if let Some(until) = in_flight_until {
            let wait = (until - now).max(time::Duration::ZERO).unsigned_abs() + Duration::from_secs(1);
            tracing::info!(job = %place.job.id, activity = %place.activity.name, seconds = wait.as_secs(), "an attempt was in flight: cleaning up again once its lease has expired");
            return Ok(vec![place.later(Step::Abort, None, wait)]);
        }
        loop {
            let Some((mut it, etag)) = self.read::<IterationRecord>(&it_key).await? else { break };
            if it.aborted {
                break;
            }
            it.aborted = true;
            if self.swap(&it_key, &it, &etag).await? {
                break;
            }
        }
        tracing::info!(job = %place.job.id, activity = %place.activity.name, iteration = place.iteration, "cleaned up after the activity stopped");
        Ok(vec![])
    }

    /// Cancels a job: every activity stops for good (`Cancelled`), and the messages returned
    /// clean up each current iteration (an `abort` step, as after a failure). Blocks already
    /// moved to the destination stay there whole; nothing else is left. Steps of the job
    /// still queued find the activity stopped and end. Safe to repeat; the sweeper sends the
    /// cleanup again if its message is lost.
    pub async fn cancel_job(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        let Some(spec) = &job.spec else { return Ok(vec![]) };
        let mut out = Vec::new();
        for activity in &spec.activities {
            let key = keys::activity(&job.id, &activity.name);
            let iteration = loop {
                let Some((mut record, etag)) = self.read::<ActivityRecord>(&key).await? else {
                    // Not started: a plan delivered later finds it cancelled.
                    let record = ActivityRecord::new(1, ActivityState::Cancelled);
                    match checkpoint::create_json(self.store.as_ref(), &key, &record).await.map_err(storage_err)? {
                        Written::Done(_) => break 1,
                        Written::Conflict => continue,
                    }
                };
                if record.state == ActivityState::Cancelled {
                    break record.iteration;
                }
                record.state = ActivityState::Cancelled;
                if self.swap(&key, &record, &etag).await? {
                    break record.iteration;
                }
            };
            tracing::info!(job = %job.id, activity = %activity.name, iteration, "cancelled");
            let aborted = self.read::<IterationRecord>(&keys::iteration(&job.id, &activity.name, iteration)).await?.is_none_or(|(it, _)| it.aborted);
            if !aborted {
                let place = Place { job: job.clone(), spec: spec.clone(), activity: activity.clone(), iteration, deployment: self.options.deployment.clone() };
                out.push(place.now(Step::Abort, None));
            }
        }
        Ok(out)
    }

    async fn extents_in(&self, kusto: &Arc<dyn KustoApi>, db: &str, table: &Ident, ids: &[uuid::Uuid], rid: &ClientRequestId) -> Result<Vec<uuid::Uuid>, EngineError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let cmd = commands::show_extents_by_id(table, ids).map_err(|e| kusto_err("show extents", e))?;
        let answer = kusto.execute(db, &cmd, rid).await.map_err(|e| kusto_err("show extents", e))?;
        Ok(results::extents(&answer).map_err(|e| kusto_err("show extents", e))?.into_iter().map(|e| e.id).filter(|id| ids.contains(id)).collect())
    }

    async fn tag_rows(&self, kusto: &Arc<dyn KustoApi>, db: &str, table: &Ident, tag: &str, rid: &ClientRequestId) -> Result<u64, EngineError> {
        let cmd = commands::show_extents(table, Some(tag)).map_err(|e| kusto_err("show extents", e))?;
        let answer = kusto.execute(db, &cmd, rid).await.map_err(|e| kusto_err("count tagged rows", e))?;
        let extents = results::extents(&answer).map_err(|e| kusto_err("count tagged rows", e))?;
        Ok(extents.iter().filter(|e| e.has_tag(tag)).map(|e| e.row_count.max(0) as u64).sum())
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
        let folder = super::super::steps::folder_name(&id, 123456, 5);
        crate::config::validate_container_name(&folder).unwrap();
        assert!(folder.len() <= 63);
    }

    /// Two processes count blocks of one iteration, each remembering its last write: the
    /// second's write makes the first's remembered ETag stale, so the first's next count
    /// reads the record again and keeps both processes' blocks; a repeated count of a block
    /// is counted once, and the record says complete only when every block is in it.
    #[tokio::test]
    async fn blocks_count_once_across_processes_that_remember_their_writes() {
        let store = checkpoint::MemoryCheckpointStore::default();
        let t0 = time::macros::datetime!(2026-01-01 0:00 UTC);
        let done = |n: u64| {
            let mut b = BlockRecord::planned(n, t0, t0, 10, Some(t0), t0);
            b.state = BlockState::Done { rows: 10 };
            b
        };
        let key = "jobs/j/default/000001/done.json";
        let (mut a, mut b) = (None, None);
        assert!(!count_block(&store, &mut a, key, &done(0), 4).await.unwrap());
        assert!(!count_block(&store, &mut b, key, &done(1), 4).await.unwrap(), "b read a's write");
        assert!(!count_block(&store, &mut a, key, &done(2), 4).await.unwrap(), "a's swap fails on b's write; it reads and counts again");
        assert!(!count_block(&store, &mut a, key, &done(2), 4).await.unwrap(), "counted once");
        assert!(!count_block(&store, &mut b, key, &done(0), 4).await.unwrap(), "a repeat from a stale memory reads the record");
        assert!(count_block(&store, &mut b, key, &done(3), 4).await.unwrap(), "the last block completes it");
        let (stored, _) = checkpoint::read_json::<Progress>(&store, key).await.unwrap().unwrap();
        assert_eq!((stored.blocks.into_iter().collect::<Vec<_>>(), stored.rows), (vec![0, 1, 2, 3], 40));
        assert!(count_block(&store, &mut a, key, &done(1), 4).await.unwrap(), "a repeat after the end reads it complete");
    }

    /// Fixed chains `n, n + 4, ...` until one runs out; then its slot takes the last block not
    /// known to have started, and the chain that block was on passes it by.
    #[test]
    fn a_slot_whose_chain_ran_out_takes_the_last_block_of_another() {
        let cached = Cached::default();
        let (it, blocks, slots) = ("i", 20, 4);
        assert_eq!(cached.hand_over_to(it, 3, blocks, slots), Some(7), "along the chain");
        for started in 8..=17 {
            cached.note_started(it, started, None, blocks, slots);
        }
        assert_eq!(cached.hand_over_to(it, 17, blocks, slots), Some(19), "17's chain ran out: the last block not started");
        cached.note_started(it, 19, Some(17), blocks, slots);
        assert_eq!(cached.hand_over_to(it, 17, blocks, slots), Some(19), "a repeat of 17's hand-over hands to the same block");
        assert_eq!(cached.hand_over_to(it, 16, blocks, slots), Some(18), "along the chain, 18 not started yet");
        assert_eq!(cached.hand_over_to(it, 15, blocks, slots), Some(18), "19 is taken: the last one not started instead");
        cached.note_started(it, 18, Some(15), blocks, slots);
        assert_eq!(cached.hand_over_to(it, 14, blocks, slots), None, "every block started: the slot is free");
        assert_eq!(cached.hand_over_to("other", 14, blocks, slots), Some(18), "per iteration");
        cached.note_started(it, 2, None, blocks, slots);
        assert!(cached.tails.lock().unwrap()[it].started.iter().all(|n| *n >= 8), "only the last blocks are kept");
    }
}

//! One schedule: the stage drawn from its seed, the host that runs the engine's steps as the
//! Functions host would (at-least-once queue, visibility timeout, poison after five
//! dequeues, a timer every minute), the events that happen around the copy, and the check.
//!
//! Everything runs on one current-thread runtime. In virtual time (`start_paused`) the
//! runtime jumps to the next timer whenever every task waits, so 48 hours of a copy with
//! ten-minute exports take a second or two; the random draws happen in the order the single
//! thread reaches them, so a seed replays the same schedule.

use crate::check::{self, Findings, SourceRow};
use crate::faults::{Chaos, Class, Profile, StepCtl, STEP};
use crate::rng::Rng;
use crate::staging::{ChaosStaging, ACCOUNT_URL};
use crate::store::ChaosStore;
use crate::transport::SimTransport;
use futures::stream::{FuturesUnordered, StreamExt};
use kusto_copy::auth::EmulatorCredential;
use kusto_copy::engine::clock::{Clock, SequentialIds};
use kusto_copy::engine::copy::{deployment_hash, keys, step_client_options, Connections, CopyEngine, EngineOptions};
use kusto_copy::engine::records::BlockRecord;
use kusto_copy::engine::plan::PlanLimits;
use kusto_copy::engine::{Delivery, Engine, EngineError, Outgoing, StepMessage, Tick};
use kusto_copy::job::{record_request, JobRecord, RecordOutcome, RequestPolicy};
use kusto_copy::kusto::{KustoApi, KustoClient};
use kusto_copy::storage::checkpoint::{CheckpointStore, MemoryCheckpointStore};
use kusto_copy::storage::staging::StagingStore;
use kusto_sim::{Cluster, ClusterConfig, Column, CommandKind, Fault, ScalarType, SeedPlan, SimClock};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::Instant;

pub const SOURCE_URL: &str = "http://127.0.0.1:7001";
pub const DESTINATION_URL: &str = "http://127.0.0.1:7002";
pub const DB: &str = "db";
const HOUR: i64 = 3600 * 10_000_000;
const DAY: i64 = 24 * HOUR;
const JAN_2024: i64 = 1_704_067_200 * 10_000_000;

/// How a schedule runs.
#[derive(Clone, Default)]
pub struct ScheduleOptions {
    /// Keep every fault and delivery as a line of the trace.
    pub trace: bool,
    /// Checkpoints here (Azurite) instead of in memory; the schedule then runs in real time
    /// at [`Pace::quick`], since a real store cannot follow a virtual clock's jumps.
    pub store: Option<Arc<dyn CheckpointStore>>,
    /// Spoils the end state before the check, to show the check sees it (tests only).
    pub sabotage: Option<Sabotage>,
}

/// A defect planted at the end of a schedule: each must make its count non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// One source row ingested into the destination a second time.
    DuplicateRow,
    /// The destination's first extent dropped.
    DropExtent,
    /// A copied extent re-ingested with a creation time a year later.
    ShiftCreationTime,
    /// A staging container left behind.
    LeaveContainer,
    /// An export slot claimed by the first job for another hour.
    LeaveSlotClaim,
}

/// Every duration of a schedule: operation lengths, the host's timers, the engine's
/// patience, when to give up.
#[derive(Debug, Clone)]
pub struct Pace {
    export: (u64, u64),
    ingest: (u64, u64),
    moves: (u64, u64),
    unit: Duration,
    tick: Duration,
    visibility: Duration,
    crash_return: Duration,
    late: (u64, u64),
    drain: Duration,
    limit: Duration,
    min_poll: Duration,
    max_poll: Duration,
    lease: time::Duration,
    stall_after: time::Duration,
    janitor_every: time::Duration,
    orphan_settle: time::Duration,
    merge_every: (u64, u64),
}

impl Pace {
    /// Virtual time, durations as on real clusters: exports of 20 s to 10 min, the host's
    /// one-minute timer and 30 s visibility timeout (host.json), a crashed invocation's
    /// message back after the 10 minutes the queue listener takes a message for.
    pub fn virtual_time() -> Pace {
        Pace {
            export: (20, 600),
            ingest: (10, 300),
            moves: (1, 30),
            unit: Duration::from_secs(1),
            tick: Duration::from_secs(60),
            visibility: Duration::from_secs(30),
            crash_return: Duration::from_secs(600),
            late: (30, 1200),
            drain: Duration::from_secs(2 * 3600),
            limit: Duration::from_secs(48 * 3600),
            min_poll: Duration::from_secs(2),
            max_poll: Duration::from_secs(60),
            lease: time::Duration::minutes(2),
            stall_after: time::Duration::minutes(10),
            janitor_every: time::Duration::minutes(10),
            orphan_settle: time::Duration::minutes(1),
            merge_every: (600, 3600),
        }
    }

    /// Real time, everything a hundred times shorter (milliseconds for seconds).
    pub fn quick() -> Pace {
        Pace {
            export: (40, 300),
            ingest: (20, 200),
            moves: (2, 30),
            unit: Duration::from_millis(1),
            tick: Duration::from_millis(600),
            visibility: Duration::from_millis(300),
            crash_return: Duration::from_secs(3),
            late: (30, 2000),
            drain: Duration::from_secs(8),
            limit: Duration::from_secs(150),
            min_poll: Duration::from_millis(40),
            max_poll: Duration::from_millis(400),
            lease: time::Duration::seconds(3),
            stall_after: time::Duration::seconds(6),
            janitor_every: time::Duration::seconds(5),
            orphan_settle: time::Duration::seconds(1),
            merge_every: (2000, 8000),
        }
    }

    fn draw(&self, rng: &mut Rng, range: (u64, u64)) -> Duration {
        self.unit * rng.range(range.0, range.1) as u32
    }
}

/// The virtual clock the engine and both clusters read: a fixed epoch plus the runtime's
/// elapsed time (virtual when paused).
#[derive(Clone)]
pub struct VirtualClock {
    epoch: OffsetDateTime,
    start: Instant,
}

impl VirtualClock {
    fn new() -> VirtualClock {
        VirtualClock { epoch: time::macros::datetime!(2026-06-01 00:00 UTC), start: Instant::now() }
    }
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> OffsetDateTime {
        self.epoch + self.start.elapsed()
    }
}

/// The engine reaches the two in-process clusters through the real client over the chaos
/// transport, and the one staging account in memory.
struct ChaosConnections {
    clients: BTreeMap<String, Arc<dyn KustoApi>>,
    staging: Arc<ChaosStaging>,
}

impl Connections for ChaosConnections {
    fn kusto(&self, cluster: &str) -> Result<Arc<dyn KustoApi>, EngineError> {
        self.clients.get(cluster.trim_end_matches('/')).cloned().ok_or_else(|| EngineError::Permanent(format!("cluster {cluster}: not in this schedule")))
    }
    fn staging(&self, account_url: &str) -> Result<Arc<dyn StagingStore>, EngineError> {
        if account_url.trim_end_matches('/') == ACCOUNT_URL {
            Ok(self.staging.clone())
        } else {
            Err(EngineError::Permanent(format!("staging account {account_url}: not in this schedule")))
        }
    }
}

/// What breaks on purpose and ends the copy: the activity must fail with its reason, leave
/// nothing behind, and the destination must hold whole blocks only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fatal {
    /// The destination table recreated with another column type after the first commit.
    DestinationSchemaChange,
    /// The job's query names a column the table does not have.
    MisspeltQuery,
    /// The source table dropped after the first commit.
    SourceTableDropped,
}

/// How often a simulator fault strikes.
#[derive(Debug, Clone, Copy)]
pub enum Dice {
    /// Each request (or blob) of its kind, with this probability.
    Rate(f64),
    /// The next requests (or blobs) of its kind, this many times.
    Times(u32),
    /// Each request of its kind with this probability, at most this many times.
    RateAtMost(f64, u32),
}

/// The stage of one schedule, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Stage {
    pub jobs: usize,
    pub rows: Vec<usize>,
    pub extents: Vec<usize>,
    pub export_capacity: usize,
    pub export_count: u64,
    pub concurrency: usize,
    pub destination_drop_by: bool,
    /// The destination database's soft-delete period cuts the sources' creation times in
    /// half: the older blocks must be reported, not copied, and never loop.
    pub destination_soft_delete: bool,
    pub short_operation_retention: bool,
    pub source_merges: bool,
    pub staging_merges: bool,
    pub fatal: Option<Fatal>,
    pub sim_faults: Vec<(&'static str, Option<CommandKind>, Fault, Dice)>,
}

impl Stage {
    /// `unit`: the pace's second (a real one, or a millisecond in real time).
    fn draw(rng: &mut Rng, unit: Duration) -> Stage {
        let jobs = if rng.chance(0.3) { 2 } else { 1 };
        let rows = (0..jobs).map(|_| rng.range(50, 600) as usize).collect();
        let extents = (0..jobs).map(|_| rng.range(2, 8) as usize).collect();
        // Fatal faults aim at the first job; the mid-copy ones apply only if it has
        // committed a block and not yet finished, so they are drawn more often.
        let fatal = if rng.chance(0.5) {
            Some(match rng.range(0, 9) {
                0..=2 => Fatal::DestinationSchemaChange,
                3..=5 => Fatal::SourceTableDropped,
                _ => Fatal::MisspeltQuery, // 6..=8
            })
        } else {
            None
        };
        let mut sim_faults = Vec::new();
        let candidates: Vec<(&'static str, Option<CommandKind>, Fault, f64)> = vec![
            // Faults that spoil an ingestion's rows (the simulator draws them per blob) strike
            // a few times per schedule (see below); the rest at a rate.
            ("source", Some(CommandKind::Export), Fault::Throttle, 0.1),
            ("source", None, Fault::ServerError(503), 0.05),
            ("source", None, Fault::ConnectionDrop, 0.04),
            ("source", None, Fault::DropAfterExecution, 0.04),
            ("source", Some(CommandKind::Query), Fault::PartialQueryFailure, 0.08),
            ("source", Some(CommandKind::Query), Fault::Slow(unit * 900), 0.03),
            ("source", Some(CommandKind::Export), Fault::ExportPartialFailure, 0.08),
            ("source", Some(CommandKind::Export), Fault::ExpireOperation, 0.08),
            ("destination", None, Fault::ServerError(503), 0.05),
            ("destination", None, Fault::ConnectionDrop, 0.04),
            ("destination", None, Fault::DropAfterExecution, 0.04),
            ("destination", Some(CommandKind::QueuedIngest), Fault::ForgetIngestionStatus, 0.1),
            ("destination", Some(CommandKind::Move), Fault::ExpireOperation, 0.15),
            // Few queries go to the destination (counts are commands): a higher rate.
            ("destination", Some(CommandKind::Query), Fault::Slow(unit * 900), 0.3),
        ];
        for (cluster, kind, fault, p) in candidates {
            if rng.chance(0.35) {
                // A spoiled export costs its block one of its five attempts (a person should
                // look at a cluster that fails most exports), and with an export capacity of
                // one a block retries at once: two of each at most, so never five in a row.
                // At a rate, seed 99's 1000 schedules met five in a row once.
                let spoils_export = kind == Some(CommandKind::Export) && matches!(fault, Fault::ExportPartialFailure | Fault::ExpireOperation);
                let rate = p * (0.5 + rng.unit());
                sim_faults.push((cluster, kind, fault, if spoils_export { Dice::RateAtMost(rate, 2) } else { Dice::Rate(rate) }));
            }
        }
        // Each spoiled ingestion costs its block an attempt, and a block fails after five by
        // design (a person should look at a cluster that spoils most ingestions): these come
        // one to three times per schedule, never five in a row.
        for fault in [Fault::IngestionFailure, Fault::DuplicateIngestion, Fault::LateDuplicate(unit * 120)] {
            if rng.chance(0.5) {
                sim_faults.push(("destination", Some(CommandKind::QueuedIngest), fault, Dice::Times(rng.range(1, 3) as u32)));
            }
        }
        Stage {
            jobs,
            rows,
            extents,
            export_capacity: rng.range(1, 3) as usize,
            export_count: rng.range(1, 3),
            concurrency: rng.range(2, 8) as usize,
            destination_drop_by: rng.chance(0.3),
            short_operation_retention: rng.chance(0.2),
            source_merges: rng.chance(0.4),
            staging_merges: rng.chance(0.3),
            fatal,
            sim_faults,
            destination_soft_delete: rng.chance(0.2),
        }
    }
}

/// What one schedule did and found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub stage: String,
    pub findings: Findings,
    pub injected: BTreeMap<(Class, String), u64>,
    pub trace: Vec<String>,
    /// How each job ended, as the observer read it.
    pub ends: Vec<String>,
    pub simulated: Duration,
}

/// Runs the schedule of `seed` on a runtime of its own.
pub fn run_schedule(seed: u64, options: &ScheduleOptions) -> Outcome {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time();
    if options.store.is_none() {
        builder.start_paused(true);
    } else {
        builder.enable_io();
    }
    let runtime = builder.build().expect("a runtime");
    // The clusters' extent and operation ids from the seed too: a replay is the same run.
    kusto_sim::ids::seed_thread(Some(seed));
    let outcome = runtime.block_on(schedule(seed, options.clone()));
    kusto_sim::ids::seed_thread(None);
    outcome
}

fn columns() -> Vec<Column> {
    vec![Column::new("Id", ScalarType::Long), Column::new("Name", ScalarType::String), Column::new("When", ScalarType::DateTime)]
}

fn table(job: usize) -> String {
    format!("T{}", job + 1)
}

fn job_id(seed: u64, job: usize) -> String {
    format!("chaos-{:x}-{}", seed & 0xffff_ffff, job + 1)
}

/// A message on the steps queue.
struct Queued {
    id: String,
    message: StepMessage,
    dequeue_count: u32,
    visible_at: Instant,
    seq: u64,
}

/// The at-least-once queue and the host's handling of an invocation's outcome.
struct Host {
    queue: Vec<Queued>,
    seq: u64,
    chaos: Arc<Chaos>,
    pace: Pace,
    poisoned: u64,
    /// Jobs a fault took a message from (dropped, or poisoned): only there may the sweeper
    /// have to find a block with no message.
    lost_messages_in: std::collections::HashSet<String>,
}

impl Host {
    fn new_id(&mut self) -> String {
        self.seq += 1;
        format!("m{}", self.seq)
    }

    fn push(&mut self, id: String, message: StepMessage, dequeue_count: u32, visible_at: Instant) {
        self.seq += 1;
        self.queue.push(Queued { id, message, dequeue_count, visible_at, seq: self.seq });
    }

    /// Sends what an invocation returned; a send may fail part-way (the output binding),
    /// which fails the invocation: `false`.
    fn send_all(&mut self, out: Vec<Outgoing>, rng: &mut Rng) -> bool {
        for o in out {
            if self.chaos.roll(self.chaos.profile.queue_send_fails) {
                self.chaos.note(Class::Recoverable, "queue_send_failed", || format!("{:?}", o.message));
                return false;
            }
            let mut at = Instant::now() + o.delay;
            if self.chaos.roll(self.chaos.profile.deliver_late) {
                let late = self.pace.draw(rng, self.pace.late);
                self.chaos.note(Class::Recoverable, "delivered_late", || format!("{:?} by {late:?}", o.message));
                at += late;
            }
            let id = self.new_id();
            self.push(id, o.message, 0, at);
        }
        true
    }

    /// The next visible message, oldest first.
    fn receive(&mut self) -> Option<Queued> {
        let now = Instant::now();
        let i = self.queue.iter().enumerate().filter(|(_, q)| q.visible_at <= now).min_by_key(|(_, q)| (q.visible_at, q.seq)).map(|(i, _)| i)?;
        Some(self.queue.swap_remove(i))
    }

    fn next_visible(&self) -> Option<Instant> {
        self.queue.iter().map(|q| q.visible_at).min()
    }

    /// A failed invocation: the message comes back after `after`, unless it was dequeued the
    /// host's maximum number of times, when it goes to the poison queue (the sweeper must
    /// recover the work).
    fn retry(&mut self, q: Queued, after: Duration) {
        if q.dequeue_count >= 5 {
            self.poisoned += 1;
            self.lost_messages_in.insert(q.message.job.clone());
            self.chaos.log(|| format!("poisoned {} {:?}", q.id, q.message));
            return;
        }
        self.push(q.id, q.message, q.dequeue_count, Instant::now() + after);
    }
}

enum Done {
    Step { q: Queued, result: Option<Result<Vec<Outgoing>, EngineError>> },
    Tick { result: Option<Result<Vec<Outgoing>, EngineError>> },
}

type Running = Pin<Box<dyn Future<Output = Done>>>;

fn step_future(engine: Arc<CopyEngine>, q: Queued) -> Running {
    let ctl = StepCtl::new(format!("{} {:?}", q.id, q.message));
    Box::pin(async move {
        let delivery = Delivery { message_id: Some(q.id.clone()), dequeue_count: q.dequeue_count };
        let message = q.message.clone();
        let run = STEP.scope(ctl.clone(), async move { engine.step(&message, &delivery).await });
        let result = tokio::select! {
            biased;
            r = run => Some(r),
            _ = ctl.stopped.notified() => None,
        };
        Done::Step { q, result }
    })
}

/// Which block a message is about: (job, iteration, block).
fn block_of(m: &StepMessage) -> (String, Option<u64>, Option<u64>) {
    (m.job.clone(), m.iteration, m.block)
}

/// The block whose finished export starts this one (`number - export_slots`).
async fn handed_by(store: &dyn CheckpointStore, m: &StepMessage) -> Option<u64> {
    let (Some(iteration), Some(block)) = (m.iteration, m.block) else { return None };
    let key = keys::iteration(&m.job, m.activity.as_deref().unwrap_or("default"), iteration);
    let v = store.read(&key).await.ok().flatten()?;
    let it = serde_json::from_slice::<kusto_copy::engine::records::IterationRecord>(&v.value).ok()?;
    block.checked_sub(it.export_slots.max(1))
}

/// Whether the block a sweeper message names still waits for a step (not done meanwhile).
async fn block_due(store: &dyn CheckpointStore, m: &StepMessage) -> bool {
    let (Some(iteration), Some(block)) = (m.iteration, m.block) else { return false };
    let key = keys::block(&m.job, m.activity.as_deref().unwrap_or("default"), iteration, block);
    match store.read(&key).await {
        Ok(Some(v)) => serde_json::from_slice::<BlockRecord>(&v.value).is_ok_and(|b| b.due().is_some()),
        _ => false,
    }
}

fn tick_future(engine: Arc<CopyEngine>, now: OffsetDateTime) -> Running {
    let ctl = StepCtl::new(format!("tick {now}"));
    Box::pin(async move {
        let run = STEP.scope(ctl.clone(), async move { engine.tick(&Tick { now, past_due: false }).await });
        let result = tokio::select! {
            biased;
            r = run => Some(r),
            _ = ctl.stopped.notified() => None,
        };
        Done::Tick { result }
    })
}

async fn sabotage(s: Sabotage, destination: &Cluster, staging: &ChaosStaging, store: &dyn CheckpointStore, jobs: &[JobRecord], now: OffsetDateTime) {
    use kusto_sim::{SeedExtent, Value};
    let t = table(0);
    let rows = destination.query(DB, &format!("{t} | take 1")).map(|f| f.rows).unwrap_or_default();
    let extents = destination.extents(DB, &t).unwrap_or_default();
    match s {
        Sabotage::DuplicateRow => {
            let row = rows.first().expect("a copied row").values.clone();
            let created = extents.first().map(|e| e.max_created_on).unwrap_or(JAN_2024);
            destination.seed_extent(DB, &t, SeedExtent { rows: vec![row], creation_time: created, ingestion_time: Some(created), tags: vec![] }).expect("duplicated");
        }
        Sabotage::DropExtent => {
            let id = extents.first().expect("a copied extent").id;
            destination.command(DB, &format!(".drop extents ({id}) from {t}")).expect("dropped");
        }
        Sabotage::ShiftCreationTime => {
            let e = extents.first().expect("a copied extent");
            let moved: Vec<Vec<Value>> = destination
                .query(DB, &t)
                .expect("rows")
                .rows
                .into_iter()
                .filter(|r| r.meta.as_ref().is_some_and(|m| m.extent_id == e.id))
                .map(|r| r.values)
                .collect();
            destination.command(DB, &format!(".drop extents ({}) from {t}", e.id)).expect("dropped");
            let later = e.max_created_on + 365 * DAY;
            destination.seed_extent(DB, &t, SeedExtent { rows: moved, creation_time: later, ingestion_time: Some(later), tags: vec![] }).expect("re-ingested");
        }
        Sabotage::LeaveContainer => {
            staging.create_folder("kcs-left-behind").await.expect("a container");
        }
        Sabotage::LeaveSlotClaim => {
            let claim = serde_json::json!({"owner": format!("{}/default/1/0", jobs[0].id), "expiresAt": (now + time::Duration::hours(1)).format(&time::format_description::well_known::Rfc3339).unwrap()});
            let key = format!("clusters/{}/export-slots/099.json", SOURCE_URL.trim_start_matches("http://").replace(':', "_"));
            store.create(&key, claim.to_string().as_bytes()).await.expect("a claim");
        }
    }
}

async fn schedule(seed: u64, options: ScheduleOptions) -> Outcome {
    let pace = if options.store.is_some() { Pace::quick() } else { Pace::virtual_time() };
    let mut rng = Rng::new(seed);
    let profile = Profile::draw(&mut rng);
    let stage = Stage::draw(&mut rng, pace.unit);
    let chaos = Arc::new(Chaos::new(rng.next_u64(), profile.clone(), options.trace));
    let clock = VirtualClock::new();
    chaos.log(|| format!("seed {seed}: {stage:?}; {profile:?}"));

    // The clusters, in-process, on the virtual clock; both read and write the one staging account.
    let staging = Arc::new(ChaosStaging::new(chaos.clone()));
    let sim_clock = {
        let c = clock.clone();
        SimClock::new(move || c.now())
    };
    let mut durations = BTreeMap::new();
    durations.insert(CommandKind::Export, pace.draw(&mut rng, pace.export));
    durations.insert(CommandKind::Ingest, pace.draw(&mut rng, pace.ingest));
    durations.insert(CommandKind::QueuedIngest, pace.draw(&mut rng, pace.ingest));
    durations.insert(CommandKind::Move, pace.draw(&mut rng, pace.moves));
    let retention = if stage.short_operation_retention { pace.drain / 6 } else { Duration::from_secs(6 * 3600) };
    let config = ClusterConfig {
        async_duration: pace.draw(&mut rng, pace.moves),
        durations,
        clock: sim_clock,
        export_capacity: stage.export_capacity,
        operation_retention: retention,
        tag_retention_lag: pace.unit * rng.range(0, 120) as u32,
        ..ClusterConfig::default()
    };
    let source = Cluster::in_process("source", SOURCE_URL, config.clone()).expect("source cluster");
    let destination = Cluster::in_process("destination", DESTINATION_URL, config).expect("destination cluster");
    source.set_blob_store(staging.clone());
    destination.set_blob_store(staging.clone());

    // The tables: rows spread over extents whose creation and ingestion times the seed draws
    // (years apart in one ingestion second, a day apart an hour apart, ...).
    let mut sources: Vec<BTreeMap<i64, SourceRow>> = Vec::new();
    for j in 0..stage.jobs {
        let creation_step = [0, HOUR / 2, DAY / 3, 2 * DAY, 30 * DAY][rng.range(0, 4) as usize];
        let ingestion_step = [2 * 10_000_000, 5 * 60 * 10_000_000, HOUR, 3 * HOUR][rng.range(0, 3) as usize];
        let plan = SeedPlan {
            rows: stage.rows[j],
            extents: stage.extents[j],
            first_creation: JAN_2024,
            creation_step,
            first_ingestion: Some(JAN_2024 + 400 * DAY),
            ingestion_step,
        };
        source.seed_table(DB, &table(j), &columns(), &plan).expect("seeded");
        destination.command(DB, &format!(".create table {} (Id:long, Name:string, When:datetime)", table(j))).expect("destination table");
        sources.push(check::source_rows(&source, DB, &table(j)));
    }
    // A soft-delete period whose cutoff falls halfway through the newest creation range.
    let soft_delete = stage.destination_soft_delete.then(|| {
        let newest = sources.iter().flat_map(|rows| rows.values().map(|r| r.created)).max().unwrap_or(JAN_2024);
        let cutoff = JAN_2024 + (newest - JAN_2024) / 2 + 1;
        let now = (clock.now().unix_timestamp_nanos() / 100) as i64;
        let seconds = (now - cutoff) / 10_000_000;
        let text = format!("{}.{:02}:{:02}:{:02}", seconds / 86_400, seconds % 86_400 / 3600, seconds % 3600 / 60, seconds % 60);
        destination
            .command(DB, &format!(r#".alter database db policy retention '{{"SoftDeletePeriod": "{text}"}}'"#))
            .expect("retention");
        chaos.note(Class::Recoverable, "destination_soft_delete", || format!("{text}"));
        time::Duration::seconds(seconds)
    });
    if stage.destination_drop_by {
        chaos.note(Class::Recoverable, "destination_drop_by", || "3 days".to_string());
        destination
            .command(DB, r#".alter database db policy extent_tags_retention '[{"TagPrefix": "drop-by:", "RetentionPeriod": "3.00:00:00"}]'"#)
            .expect("tag retention");
    }
    for (i, (cluster, kind, fault, dice)) in stage.sim_faults.iter().enumerate() {
        let c = if *cluster == "source" { &source } else { &destination };
        match dice {
            Dice::Rate(p) => c.random_faults(rng.next_u64() ^ i as u64, *kind, fault.clone(), *p),
            Dice::Times(n) => c.script_fault(*kind, fault.clone(), *n),
            Dice::RateAtMost(p, n) => c.random_faults_at_most(rng.next_u64() ^ i as u64, *kind, fault.clone(), *p, *n),
        }
    }

    // The engine, over the chaos store, transport and staging; an observer on the raw store.
    let raw: Arc<dyn CheckpointStore> = options.store.clone().unwrap_or_else(|| Arc::new(MemoryCheckpointStore::default()));
    let store: Arc<dyn CheckpointStore> = Arc::new(ChaosStore { inner: raw.clone(), chaos: chaos.clone() });
    let mut clients: BTreeMap<String, Arc<dyn KustoApi>> = BTreeMap::new();
    for (url, cluster) in [(SOURCE_URL, &source), (DESTINATION_URL, &destination)] {
        let transport = Arc::new(SimTransport { router: cluster.router(), chaos: chaos.clone(), cluster: cluster.name().to_owned() });
        let mut client_options = step_client_options();
        client_options.retry.jitter_seed = Some(seed);
        let client = KustoClient::with_transport(url, Arc::new(EmulatorCredential::default()), client_options, transport).expect("client");
        clients.insert(url.to_owned(), Arc::new(client));
    }
    let connections = Arc::new(ChaosConnections { clients, staging: staging.clone() });
    let engine_options = EngineOptions {
        limits: PlanLimits { max_rows: 100, max_creation_spread: time::Duration::days(1), bin: time::Duration::hours(1), bins_per_step: 3 },
        min_poll: pace.min_poll,
        max_poll: pace.max_poll,
        // Half the schedules batch their looks at exports on a grid, as `kc copy` does (from
        // the seed's parity: no draw from its random stream).
        poll_grid: (seed % 2 == 0).then_some(Duration::from_millis(100)),
        lease: pace.lease,
        stall_after: pace.stall_after,
        janitor_every: Some(pace.janitor_every),
        orphan_settle: pace.orphan_settle,
        deployment: deployment_hash("chaos"),
        ..EngineOptions::default()
    };
    // Two instances of the engine over the same checkpoints, as two `kc serve` of one
    // deployment: each remembers what it wrote last (its caches), so a message delivered to
    // the other instance finds that instance's view stale. Which instance runs a delivery
    // follows from the message's id and dequeue count (no draw from the schedule's random
    // stream, so a seed's faults are the same as with one instance).
    let instances: Vec<Arc<CopyEngine>> = (0..2)
        .map(|_| Arc::new(CopyEngine::new(store.clone(), connections.clone(), engine_options.clone()).with_time(Arc::new(clock.clone()), Arc::new(SequentialIds::default()))))
        .collect();
    let engine = instances[0].clone();
    let instance_for = |id: &str, dequeue_count: u32| {
        let h = id.bytes().fold(u64::from(dequeue_count).wrapping_mul(0x9e37_79b9_7f4a_7c15), |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        instances[(h >> 32) as usize % instances.len()].clone()
    };
    let mut ticks = 0u64;
    let observer = CopyEngine::new(raw.clone(), connections, engine_options).with_time(Arc::new(clock.clone()), Arc::new(SequentialIds::default()));

    let mut host = Host { queue: Vec::new(), seq: 0, chaos: chaos.clone(), pace: pace.clone(), poisoned: 0, lost_messages_in: Default::default() };
    let mut jobs: Vec<JobRecord> = Vec::new();
    for j in 0..stage.jobs {
        let id = job_id(seed, j);
        let mut request = serde_json::json!({
            "jobId": id,
            "source": format!("{SOURCE_URL}/{DB}/{}", table(j)),
            "destination": format!("{DESTINATION_URL}/{DB}"),
            "stagingDirectory": format!("{ACCOUNT_URL}/staging/{id}"),
            "exportCount": stage.export_count,
        });
        if j == 0 && stage.fatal == Some(Fatal::MisspeltQuery) {
            request["query"] = serde_json::Value::String("| where Nmae == 'x'".into());
        }
        let job = match record_request(raw.as_ref(), &request.to_string(), clock.now(), &RequestPolicy::emulator()).await {
            Ok(RecordOutcome::Accepted(job)) | Ok(RecordOutcome::AlreadyRecorded(job)) => job,
            other => panic!("seed {seed}: the request was not accepted: {other:?}"),
        };
        let first = engine.start_job(&job).await.unwrap_or_else(|e| panic!("seed {seed}: start_job: {e}"));
        host.send_all(first, &mut rng);
        jobs.push(job);
    }
    if stage.fatal == Some(Fatal::MisspeltQuery) {
        chaos.note(Class::Fatal, "misspelt_query", || format!("on {}", jobs[0].id));
    }

    // The host loop.
    chaos.arm(true);
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    let mut in_flight_steps = 0usize;
    // Steps running per block, and blocks the sweeper had to find without a fault to explain
    // it (a hand-over or follow-up the engine failed to send: a liveness defect).
    let mut running_blocks: BTreeMap<(String, Option<u64>, Option<u64>), usize> = BTreeMap::new();
    let mut stalls: Vec<String> = Vec::new();
    let mut tick_running = false;
    let mut next_tick = Instant::now() + pace.tick;
    let mut next_source_merge = stage.source_merges.then(|| Instant::now() + pace.draw(&mut rng, pace.merge_every));
    let mut next_staging_merge = stage.staging_merges.then(|| Instant::now() + pace.draw(&mut rng, pace.merge_every));
    let mut fatal_done = !matches!(stage.fatal, Some(Fatal::DestinationSchemaChange | Fatal::SourceTableDropped));
    let mut removed_by_user: Vec<i64> = Vec::new();
    let mut finished_at: Option<Instant> = None;
    let deadline = Instant::now() + pace.limit;
    let mut spun = false;
    let (mut last_now, mut same_now) = (Instant::now(), 0u32);
    loop {
        let now = Instant::now();
        // A host that loops without time moving is a driver bug: stop and say so.
        same_now = if now == last_now { same_now + 1 } else { 0 };
        last_now = now;
        if same_now > 100_000 {
            chaos.log(|| "the host loop spun without time moving".into());
            spun = true;
            break;
        }
        if now >= deadline || finished_at.is_some_and(|f| now >= f + pace.drain) {
            break;
        }
        // Deliveries, up to the host's concurrency.
        while in_flight_steps < stage.concurrency {
            let Some(mut q) = host.receive() else { break };
            q.dequeue_count += 1;
            if chaos.roll(profile.drop_message) {
                host.lost_messages_in.insert(q.message.job.clone());
                chaos.note(Class::Recoverable, "message_dropped", || format!("{} {:?}", q.id, q.message));
                continue;
            }
            if chaos.roll(profile.deliver_twice) {
                chaos.note(Class::Recoverable, "delivered_twice", || format!("{} {:?}", q.id, q.message));
                let id = host.new_id();
                let at = Instant::now() + pace.unit * rng.range(0, 90) as u32;
                host.push(id, q.message.clone(), 0, at);
            }
            if chaos.roll(profile.redeliver_while_running) {
                // The host lost the message's invisibility while it runs: the same message,
                // same id, is received again.
                chaos.note(Class::Recoverable, "redelivered_while_running", || format!("{} {:?}", q.id, q.message));
                let at = Instant::now() + pace.unit * rng.range(0, 60) as u32;
                host.push(q.id.clone(), q.message.clone(), q.dequeue_count, at);
            }
            chaos.log(|| format!("{:?} run {} #{} {:?}", clock.elapsed(), q.id, q.dequeue_count, q.message));
            *running_blocks.entry(block_of(&q.message)).or_default() += 1;
            running.push(step_future(instance_for(&q.id, q.dequeue_count), q));
            in_flight_steps += 1;
        }
        if !tick_running && now >= next_tick {
            ticks += 1;
            running.push(tick_future(instances[ticks as usize % instances.len()].clone(), clock.now()));
            tick_running = true;
            next_tick = now + pace.tick;
        }
        // The world around the copy.
        if let Some(at) = next_source_merge.filter(|at| now >= *at) {
            for j in 0..stage.jobs {
                let _ = source.with_state(|s| s.merge_extents_within(DB, &table(j), HOUR));
            }
            chaos.note(Class::Recoverable, "source_merge", String::new);
            next_source_merge = Some(at + pace.draw(&mut rng, pace.merge_every));
        }
        if let Some(at) = next_staging_merge.filter(|at| now >= *at) {
            // Merges in staging tables happen only if the engine failed to turn them off.
            let staged = check::tables_with_prefix(&destination, DB, "kc_staging");
            for t in &staged {
                let _ = destination.with_state(|s| s.merge_extents(DB, t));
            }
            chaos.note(Class::Recoverable, "staging_merge", || format!("{staged:?}"));
            next_staging_merge = Some(at + pace.draw(&mut rng, pace.merge_every));
        }
        if !fatal_done {
            let copied = observer.activity(&jobs[0].id, "default").await.ok().flatten().map(|a| a.copied_rows).unwrap_or(0);
            if copied > 0 {
                fatal_done = true;
                let t = table(0);
                let name = if stage.fatal == Some(Fatal::DestinationSchemaChange) { "destination_schema_change" } else { "source_table_dropped" };
                chaos.note(Class::Fatal, name, || format!("on {} after {copied} rows", jobs[0].id));
                match stage.fatal {
                    Some(Fatal::DestinationSchemaChange) => {
                        removed_by_user = check::row_ids(&destination, DB, &t);
                        destination.command(DB, &format!(".drop table {t}")).expect("dropped");
                        destination.command(DB, &format!(".create table {t} (Id:long, Name:long, When:datetime)")).expect("recreated");
                    }
                    Some(Fatal::SourceTableDropped) => {
                        source.command(DB, &format!(".drop table {t}")).expect("dropped");
                    }
                    _ => {}
                }
                chaos.log(|| format!("{:?} fatal {:?} applied after {copied} rows", clock.elapsed(), stage.fatal));
            }
        }

        // Wait for an invocation to end or the next thing due.
        let mut wake = if tick_running { deadline } else { next_tick.min(deadline) };
        // A visible message wakes the host only when it has room to run it: at full
        // concurrency an invocation must end first (waking at once would spin, and in virtual
        // time the clock never moves while something is runnable).
        if let Some(v) = host.next_visible().filter(|_| in_flight_steps < stage.concurrency) {
            wake = wake.min(v.max(now));
        }
        for at in [next_source_merge, next_staging_merge].into_iter().flatten() {
            wake = wake.min(at);
        }
        if let Some(f) = finished_at {
            wake = wake.min(f + pace.drain);
        }
        let done = if in_flight_steps >= stage.concurrency || wake > now {
            // Biased: the first ready branch wins, not a random one, so a seed replays.
            tokio::select! {
                biased;
                d = running.next(), if !running.is_empty() => d,
                _ = tokio::time::sleep_until(wake) => None,
            }
        } else {
            None
        };
        let Some(done) = done else { continue };
        match done {
            Done::Tick { result } => {
                tick_running = false;
                match result {
                    Some(Ok(out)) => {
                        for o in &out {
                            let key = block_of(&o.message);
                            if key.2.is_none() || host.lost_messages_in.contains(&o.message.job) {
                                continue;
                            }
                            // A message for the block, or for the block whose finished export
                            // hands it its turn (that message's follow-ups start it).
                            let handed_by = handed_by(raw.as_ref(), &o.message).await;
                            // (The first blocks are started by the plan's last step: a plan
                            // message of the iteration, whose block is none, carries them.)
                            let carries = |k: &(String, Option<u64>, Option<u64>)| *k == key || (k.0 == key.0 && k.1 == key.1 && k.2 == handed_by);
                            let alive = running_blocks.iter().any(|(k, n)| *n > 0 && carries(k)) || host.queue.iter().any(|q| carries(&block_of(&q.message)));
                            if !alive && block_due(raw.as_ref(), &o.message).await {
                                stalls.push(format!(
                                    "{:?}: {} block {:?} ({}) had no message, and no fault took one: the sweeper found it (handed by {handed_by:?}; queued: {:?})",
                                    clock.elapsed(),
                                    o.message.job,
                                    key.2,
                                    o.message.step,
                                    host.queue.iter().map(|q| (q.id.clone(), q.message.block, q.message.step.clone())).collect::<Vec<_>>()
                                ));
                            }
                        }
                        // A send that fails fails the timer invocation, which the host does
                        // not retry: what it was to send is lost until the next sweep, as a
                        // dropped message is (so a stall found then is explained).
                        let jobs: Vec<String> = out.iter().map(|o| o.message.job.clone()).collect();
                        if !host.send_all(out, &mut rng) {
                            host.lost_messages_in.extend(jobs);
                        }
                    }
                    Some(Err(e)) => chaos.log(|| format!("tick failed: {e}")),
                    None => {}
                }
            }
            Done::Step { q, result } => {
                in_flight_steps -= 1;
                if let Some(n) = running_blocks.get_mut(&block_of(&q.message)) {
                    *n -= 1;
                }
                match result {
                    Some(Ok(out)) => {
                        if !host.send_all(out, &mut rng) {
                            let v = pace.visibility;
                            host.retry(q, v);
                        }
                    }
                    Some(Err(EngineError::Transient(e))) => {
                        chaos.log(|| format!("{:?} transient {}: {e}", clock.elapsed(), q.id));
                        let v = pace.visibility;
                        host.retry(q, v);
                    }
                    Some(Err(EngineError::Permanent(e))) => {
                        // The handler answers 2xx: the failure is recorded, the message deleted.
                        chaos.log(|| format!("{:?} permanent {}: {e}", clock.elapsed(), q.id));
                    }
                    None => {
                        chaos.log(|| format!("{:?} crashed {}", clock.elapsed(), q.id));
                        let back = pace.crash_return;
                        host.retry(q, back);
                    }
                }
            }
        }
        if finished_at.is_none() {
            let mut all = true;
            for job in &jobs {
                all &= observer.job_finished(job).await.unwrap_or(false);
            }
            if all {
                finished_at = Some(Instant::now());
                chaos.log(|| format!("{:?} every job finished", clock.elapsed()));
            }
        }
    }
    // What was still running when the run ended did not finish: the process stopped.
    drop(running);
    chaos.arm(false);

    if let Some(s) = options.sabotage {
        sabotage(s, &destination, &staging, raw.as_ref(), &jobs, clock.now()).await;
    }
    let mut injected = chaos.injected();
    for (name, cluster) in [("source", &source), ("destination", &destination)] {
        for (kind, n) in cluster.with_state(|s| s.faults.fired()) {
            *injected.entry((Class::Recoverable, format!("sim_{name}_{kind}"))).or_default() += n;
        }
    }
    let findings = check::check(&check::Inputs {
        seed,
        jobs: &jobs,
        tables: (0..stage.jobs).map(table).collect(),
        sources: &sources,
        fatal_job: stage.fatal.map(|_| 0),
        removed_by_user: &removed_by_user,
        source: &source,
        destination: &destination,
        staging: &staging,
        store: raw.as_ref(),
        observer: &observer,
        now: clock.now(),
        soft_delete,
    })
    .await;
    let mut findings = findings;
    if !stalls.is_empty() {
        findings.incomplete += stalls.len() as u64;
        findings.problems.extend(stalls);
    }
    if spun {
        findings.incomplete += 1;
        findings.problems.push("the driver's host loop spun without time moving".into());
    }
    let mut ends = Vec::new();
    for job in &jobs {
        let a = observer.activity(&job.id, "default").await.ok().flatten();
        ends.push(match a {
            Some(a) => format!("{}: {:?}, {} rows", job.id, a.state, a.copied_rows),
            None => format!("{}: no activity", job.id),
        });
    }
    chaos.log(|| format!("poisoned messages: {}", host.poisoned));
    Outcome { seed, stage: format!("{stage:?}"), findings, injected, trace: chaos.trace(), ends, simulated: clock.elapsed() }
}

//! The exactly-once scenarios (issue 8): each a deterministic test of one path where the
//! first engine lost rows, stalled, looped or leaked. Copies run through Azurite and the
//! strict simulator with the in-process driver, and are checked row by row.

mod common;

use async_trait::async_trait;
use common::copy::*;
use common::{query_rows, rows_by_creation};
use kusto_copy::auth::EmulatorCredential;
use kusto_copy::engine::clock::{ManualClock, SequentialIds};
use kusto_copy::engine::copy::{keys, ActivityRecord, ActivityState, CopyEngine, EngineOptions, LiveConnections};
use kusto_copy::engine::records::{BlockRecord, BlockState, IterationRecord, IterationState};
use kusto_copy::engine::{local, Engine, Tick};
use kusto_copy::job::{record_request, JobRecord, RecordOutcome, RequestPolicy};
use kusto_copy::kusto::ClientOptions;
use kusto_copy::storage::checkpoint::{CheckpointStore, ETag, MemoryCheckpointStore, Versioned, Written};
use kusto_copy::storage::StorageError;
use kusto_sim::{ClusterConfig, CommandKind, Fault, SeedPlan};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Scenario 2: the destination database removes `drop-by:` tags older than three days, and
/// copied extents are years old. The staging table keeps its own tags, so every block is
/// counted and moved; at the destination the tag may vanish at once after the move, and the
/// move's own result rows still prove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_02_destination_tag_retention_loses_no_row() {
    let stack = stack_with(ClusterConfig { async_duration: Duration::from_millis(100), tag_retention_lag: Duration::ZERO, ..ClusterConfig::default() }).await;
    seed(&stack);
    stack
        .destination
        .command(DB, r#".alter database db policy extent_tags_retention '[{"TagPrefix": "drop-by:", "RetentionPeriod": "3.00:00:00"}]'"#)
        .unwrap();
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "s02", None)).await;
    run(&engine, &job, |_| {}).await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_eq!(activity.copied_rows, 600);
    assert_exact(&stack);
    assert_nothing_left(&stack).await;
}

/// Scenario 7: twenty extents created over twenty months and ingested within one minute (a
/// backfill, or a table filled by an earlier copy): the planner splits the hour by minute and
/// second until each block's extents are within the creation-time bound, so every row keeps
/// its extent's creation time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_07_extents_years_apart_in_one_ingestion_hour_keep_their_ages() {
    let stack = stack().await;
    seed_with(&stack, SeedPlan {
        rows: 200,
        extents: 20,
        first_creation: JAN_2024,
        creation_step: 30 * DAY,
        first_ingestion: Some(JAN_2024 + 800 * DAY),
        ingestion_step: 2 * 10_000_000,
    });
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "s07", None)).await;
    run(&engine, &job, |_| {}).await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    let ages = rows_by_creation(&stack.destination, DB, "Events");
    assert_eq!(ages.len(), 20, "twenty creation times, one per source extent: {ages:?}");
    assert_exact_rows(&stack, 200);
    assert_nothing_left(&stack).await;
}

/// Scenario 5: the queued ingestion's status is gone (404) by the time the block looks: the
/// tag's count decides. Exactly the exported rows: the block completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_05_a_forgotten_ingestion_status_leaves_the_count_to_decide() {
    let stack = stack().await;
    seed(&stack);
    stack.destination.script_fault(Some(CommandKind::QueuedIngest), Fault::ForgetIngestionStatus, 1_000);
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "s05", None)).await;
    run(&engine, &job, |_| {}).await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_exact(&stack);
    assert_nothing_left(&stack).await;
}

/// Scenario 9: a duplicate of a block's ingestion lands in staging right after the count that
/// completes it: only the counted extents are moved, so the destination has exactly the
/// source's rows (the first engine moved by tag and took the duplicate along).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_09_a_late_duplicate_in_staging_never_reaches_the_destination() {
    let stack = stack().await;
    seed(&stack);
    stack.destination.script_fault(None, Fault::DuplicateAfterCount { table_prefix: "kc_staging".into() }, 3);
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "s09", None)).await;
    run(&engine, &job, |_| {}).await;
    assert_eq!(stack.destination.with_state(|s| s.faults.pending()), 0, "the duplicates landed");
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_exact(&stack);
    assert_nothing_left(&stack).await;
}

/// Scenario 4: a query naming a column that does not exist fails the activity with Kusto's
/// message in a few steps; nothing loops, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_04_a_misspelt_column_fails_the_activity_with_its_reason() {
    let stack = stack().await;
    seed(&stack);
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "s04", Some("| where Nmae == 'x'"))).await;
    let steps = run(&engine, &job, |_| {}).await;
    assert!(steps <= 5, "failed within a few steps, not a loop: {steps}");
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    let ActivityState::Failed { reason } = &activity.state else { panic!("{activity:?}") };
    assert!(reason.contains("Nmae"), "Kusto's message names the column: {reason}");
    assert!(engine.job_finished(&job).await.unwrap());
    // The scheduler does not send it again either.
    let again = engine.tick(&Tick { now: time::OffsetDateTime::now_utc() + time::Duration::hours(1), past_due: false }).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(stack.destination.extents(DB, "Events").unwrap().len(), 0);
    assert_nothing_left(&stack).await;
}

/// Scenario 4, second half: the destination table's schema changes after the first block
/// committed (here it is recreated with `Name` as a long): the next move is refused, the
/// activity fails with Kusto's message within a few steps, nothing loops, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_04b_a_destination_schema_change_mid_copy_fails_the_activity() {
    let stack = stack().await;
    seed(&stack);
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "s04b", None)).await;
    let destination = &stack.destination;
    let mut changed = false;
    let mut after_change = 0;
    run(&engine, &job, |_| {
        if changed {
            after_change += 1;
        } else if !destination.extents(DB, "Events").unwrap().is_empty() {
            changed = true;
            destination.command(DB, ".drop table Events").unwrap();
            destination.command(DB, ".create table Events (Id:long, Name:long, When:datetime)").unwrap();
        }
    })
    .await;
    assert!(changed);
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    let ActivityState::Failed { reason } = &activity.state else { panic!("{activity:?}") };
    assert!(reason.contains("schema"), "Kusto's message says why: {reason}");
    assert!(after_change <= 20, "failed within a few steps, not a loop: {after_change}");
    let again = engine.tick(&Tick { now: time::OffsetDateTime::now_utc() + time::Duration::hours(1), past_due: false }).await.unwrap();
    assert!(again.is_empty(), "the scheduler does not send it again: {again:?}");
    assert_nothing_left(&stack).await;
}

/// A bare name in the query that is no source column (here another table of the source
/// database, which `in (Other)` would read) is refused at planning, before any export.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bare_name_that_is_no_column_is_refused_at_planning() {
    let stack = stack().await;
    seed(&stack);
    stack.source.command(DB, ".create table Other (Id:long)").unwrap();
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "bare-name", Some("| where Id in (Other)"))).await;
    run(&engine, &job, |m| assert_ne!(m.step, "export", "nothing is exported")).await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    let ActivityState::Failed { reason } = &activity.state else { panic!("{activity:?}") };
    assert!(reason.contains("'Other' is not a column of the source table"), "{reason}");
    assert_eq!(stack.destination.extents(DB, "Events").unwrap().len(), 0);
    assert_nothing_left(&stack).await;
}

/// Scenario 11: a planning chunk whose counting query Kusto cuts short (a partial query
/// failure, `80DA0003`, as when a result set passes the query limits) is split, not retried
/// at the same size; the copy is still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_11_a_chunk_too_large_for_one_query_is_split() {
    let stack = stack().await;
    seed(&stack);
    let mut opts = options();
    opts.limits.bins_per_step = 8;
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), opts));
    let job = submit(&engine, &request(&stack, "s11", None)).await;
    let source = &stack.source;
    let mut armed = false;
    // After the first planning step (the window measured), the next counting queries fail.
    run(&engine, &job, |m| {
        if m.step == "plan" && !armed {
            armed = true;
            source.script_fault(Some(CommandKind::Query), Fault::PartialQueryFailure, 3);
        }
    })
    .await;
    assert_eq!(source.with_state(|s| s.faults.pending()), 0, "every fault was met");
    let (iteration, _) = kusto_copy::storage::checkpoint::read_json::<IterationRecord>(engine.store().as_ref(), &keys::iteration("s11", "default", 1))
        .await
        .unwrap()
        .unwrap();
    assert!(iteration.chunk_bins.is_some_and(|n| n < 8), "the chunk was split: {:?}", iteration.chunk_bins);
    assert_exact(&stack);
    assert_nothing_left(&stack).await;
}

/// The janitor, ticking all through a copy: it removes this deployment's staging table and
/// container that no iteration owns (left by a crash), never a live iteration's, and never
/// another deployment's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_janitor_removes_only_this_deployments_orphans() {
    let stack = stack().await;
    seed(&stack);
    let dep = kusto_copy::engine::copy::deployment_hash("");
    let (ours, theirs) = (format!("{dep}-deadbeef0000"), "ffffff-deadbeef0000".to_owned());
    for id in [&ours, &theirs] {
        stack.destination.command(DB, &format!(".create table ['kc_staging_{id}'] (Id:long)")).unwrap();
        common::clients(&stack.azurite).container(&format!("kcs-{id}-0-1")).unwrap().create(None).await.unwrap();
    }
    // The janitor on every tick, not every ten minutes, so it meets every live moment.
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), EngineOptions { janitor_every: Some(time::Duration::ZERO), ..options() }));
    let job = submit(&engine, &request(&stack, "janitor", None)).await;
    let ticking = {
        let engine = engine.clone();
        tokio::spawn(async move {
            loop {
                engine.tick(&Tick { now: time::OffsetDateTime::now_utc(), past_due: false }).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    run(&engine, &job, |_| {}).await;
    ticking.abort();
    engine.tick(&Tick { now: time::OffsetDateTime::now_utc(), past_due: false }).await.unwrap();
    assert_exact(&stack);
    let tables = format!("{:?}", stack.destination.command(DB, ".show tables").unwrap().rows);
    assert!(!tables.contains(&format!("kc_staging_{ours}")), "our orphan table was dropped: {tables}");
    assert!(tables.contains(&format!("kc_staging_{theirs}")), "another deployment's table stays: {tables}");
    let containers = common::containers(&stack.azurite, "kcs-").await;
    assert!(!containers.contains(&format!("kcs-{ours}-0-1")), "our orphan container was deleted: {containers:?}");
    assert!(containers.contains(&format!("kcs-{theirs}-0-1")), "another deployment's container stays: {containers:?}");
    // Clean up the foreign ones so the usual check holds.
    stack.destination.command(DB, &format!(".drop table ['kc_staging_{theirs}']")).unwrap();
    common::clients(&stack.azurite).container(&format!("kcs-{theirs}-0-1")).unwrap().delete(None).await.unwrap();
    assert_nothing_left(&stack).await;
}

/// Scenario 13: an activity that fails mid-copy (a permanent export error after the first
/// blocks were committed) leaves no staging table, folder, tag or claim; the destination holds
/// whole blocks only; the same job submitted again completes the copy exactly, without
/// redoing a committed block.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_13_a_failed_activity_is_cleaned_and_resubmitting_completes_it() {
    // Exports slower than a block's ingestion and move, so the first cleanup comes while the
    // later blocks still wait to export (else, on a loaded machine, every export may have
    // started before the fault is armed).
    let mut durations = std::collections::BTreeMap::new();
    durations.insert(CommandKind::Export, Duration::from_millis(1500));
    let source = ClusterConfig { async_duration: Duration::from_millis(100), durations, ..ClusterConfig::default() };
    let stack = stack_with_both(source, ClusterConfig { async_duration: Duration::from_millis(100), ..ClusterConfig::default() }).await;
    seed(&stack);
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let text = request(&stack, "s13", None);
    let job = submit(&engine, &text).await;
    let source = &stack.source;
    let mut armed = false;
    run(&engine, &job, |_| {
        // Once a block's rows are at the destination.
        if !armed && !stack.destination.extents(DB, "Events").unwrap().is_empty() {
            armed = true;
            source.script_fault(Some(CommandKind::Export), Fault::ServerError(400), 1);
        }
    })
    .await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert!(matches!(activity.state, ActivityState::Failed { .. }), "{activity:?}");
    assert_nothing_left(&stack).await;
    // Whole blocks only: the destination holds exactly the rows of the committed blocks.
    let mut committed = 0;
    for key in engine.store().list(&keys::blocks(&job.id, "default", 1)).await.unwrap() {
        let v = engine.store().read(&key).await.unwrap().unwrap();
        let block: BlockRecord = serde_json::from_slice(&v.value).unwrap();
        if let BlockState::Done { rows } | BlockState::Committed { rows } = block.state {
            committed += rows;
        }
    }
    let at_destination: u64 = stack.destination.extents(DB, "Events").unwrap().iter().map(|e| e.row_count as u64).sum();
    assert!(committed > 0 && committed < 600, "the failure came mid-copy: {committed}");
    assert_eq!(at_destination, committed);

    let job = submit(&engine, &text).await;
    let mut exported_again = Vec::new();
    run(&engine, &job, |m| {
        if m.step == "export" {
            exported_again.push(m.block);
        }
    })
    .await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_exact(&stack);
    assert_nothing_left(&stack).await;
}

/// A store whose every `nth` call fails as transient, before or after it takes effect (the
/// answer lost), in turn.
struct FlakyStore {
    inner: Arc<dyn CheckpointStore>,
    nth: u64,
    calls: AtomicU64,
    failed: AtomicU64,
}

impl FlakyStore {
    /// About one call in `nth` fails, at call indices a hash picks: not strictly every
    /// `nth`th, which could line up with a retry loop of exactly that many calls and starve it
    /// in a way no real store does.
    fn fault(&self) -> Option<bool> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let mut h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 31;
        (h % self.nth == 0).then(|| self.failed.fetch_add(1, Ordering::Relaxed) % 2 == 0)
    }
}

fn flaky(what: &str) -> StorageError {
    StorageError::Transient { what: what.into(), detail: "injected 503".into() }
}

#[async_trait]
impl CheckpointStore for FlakyStore {
    async fn read(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        match self.fault() {
            Some(_) => Err(flaky("read")),
            None => self.inner.read(key).await,
        }
    }
    async fn create(&self, key: &str, value: &[u8]) -> Result<Written, StorageError> {
        match self.fault() {
            Some(true) => Err(flaky("create")),
            Some(false) => self.inner.create(key, value).await.and(Err(flaky("create (written, answer lost)"))),
            None => self.inner.create(key, value).await,
        }
    }
    async fn replace(&self, key: &str, value: &[u8], etag: &ETag) -> Result<Written, StorageError> {
        match self.fault() {
            Some(true) => Err(flaky("replace")),
            Some(false) => self.inner.replace(key, value, etag).await.and(Err(flaky("replace (written, answer lost)"))),
            None => self.inner.replace(key, value, etag).await,
        }
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        match self.fault() {
            Some(_) => Err(flaky("list")),
            None => self.inner.list(prefix).await,
        }
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
}

/// Scenario 1 and more: one storage call in thirteen fails (half of them after the write took
/// effect), the slot hand-over's included: the copy still completes exactly (the first
/// engine's remaining blocks never started after one failed hand-over read).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_01_storage_failures_at_any_call_still_copy_exactly() {
    let stack = stack().await;
    seed(&stack);
    let store = Arc::new(FlakyStore { inner: blob_store(&stack), nth: 13, calls: AtomicU64::new(0), failed: AtomicU64::new(0) });
    let engine = Arc::new(CopyEngine::new(store.clone(), connections(&stack), options()));
    let text = request(&stack, "s01", None);
    let job = loop {
        // Recording the request may itself hit a fault: the requests function is retried too.
        match record_request(engine.store().as_ref(), &text, time::OffsetDateTime::now_utc(), &RequestPolicy::emulator()).await {
            Ok(RecordOutcome::Accepted(job) | RecordOutcome::AlreadyRecorded(job)) => break job,
            Ok(other) => panic!("{other:?}"),
            Err(_) => continue,
        }
    };
    run(&engine, &job, |_| {}).await;
    assert!(store.failed.load(Ordering::Relaxed) > 10, "faults were met: {}", store.failed.load(Ordering::Relaxed));
    let activity = loop {
        if let Ok(a) = engine.activity(&job.id, "default").await {
            break a.unwrap();
        }
    };
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_exact(&stack);
    assert_nothing_left(&stack).await;
}

// ---- the scheduler, on an in-memory store in virtual time -----------------------------------

const T0: time::OffsetDateTime = time::macros::datetime!(2026-06-01 0:00 UTC);

/// A job recorded in `store` with one activity, iteration 1 copying one block in `state`
/// touched at `T0`.
async fn stalled_job(store: &dyn CheckpointStore, id: &str, state: BlockState) -> JobRecord {
    let text = serde_json::json!({
        "jobId": id,
        "source": "https://127.0.0.1:1/db/Events",
        "destination": "https://127.0.0.1:2/db",
        "stagingDirectory": "https://127.0.0.1:3/devstoreaccount1/staging",
    })
    .to_string();
    let RecordOutcome::Accepted(job) = record_request(store, &text, T0, &RequestPolicy::emulator()).await.unwrap() else { panic!() };
    let put = |key: String, value: serde_json::Value| async move {
        store.create(&key, value.to_string().as_bytes()).await.unwrap();
    };
    put(keys::activity(id, "default"), serde_json::to_value(ActivityRecord::new(1, ActivityState::Running)).unwrap()).await;
    let iteration = IterationRecord {
        number: 1,
        cursor_from: None,
        cursor_to: "c1".into(),
        state: IterationState::Copying,
        blocks: 1,
        planned_rows: 10,
        rows_without_ingestion_time: 0,
        staging_table: "kc_staging_x".into(),
        summarized: true,
        plan_next: None,
        plan_end: None,
        export_slots: 1,
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
        pending: vec![],
        started_at: T0,
        finished_at: None,
    };
    put(keys::iteration(id, "default", 1), serde_json::to_value(&iteration).unwrap()).await;
    let mut block = BlockRecord::planned(0, T0, T0 + time::Duration::hours(1), 10, Some(T0), T0);
    block.state = state;
    put(keys::block(id, "default", 1, 0), serde_json::to_value(&block).unwrap()).await;
    job
}

/// A program that asks often whether a job has finished reads its summaries only: the
/// same states as the full status, without the running iteration's phases (a read per block).
#[tokio::test]
async fn a_job_summary_says_what_the_status_says_without_reading_blocks() {
    use kusto_copy::engine::status::{job_status, job_summary};
    let store = MemoryCheckpointStore::default();
    let job = stalled_job(&store, "j-summary", BlockState::Planned).await;
    let full = job_status(&store, &job, T0).await.unwrap();
    let summary = job_summary(&store, &job, T0).await.unwrap();
    let phases = full.activities[0].iterations[0].phases.as_ref().expect("a small running iteration shows its phases");
    assert_eq!(phases.planned, 1);
    assert_eq!(summary.activities[0].iterations[0].phases, None, "no block read");
    let mut without = full.clone();
    without.activities[0].iterations[0].phases = None;
    without.activities[0].iterations[0].last_error = None;
    assert_eq!(summary, without, "the rest is the same");
    assert!(!summary.finished());
}

/// An engine on records alone: its clusters and accounts (127.0.0.1:2, :3) are unreachable,
/// so the janitor, which would only find them so on every tick, is off (it has its own test).
fn memory_engine(store: Arc<MemoryCheckpointStore>, clock: Arc<ManualClock>) -> CopyEngine {
    let connections = Arc::new(LiveConnections::new(Arc::new(EmulatorCredential::default()), None, ClientOptions::default()));
    let options = EngineOptions { janitor_every: None, ..EngineOptions::default() };
    CopyEngine::new(store, connections, options).with_time(clock, Arc::new(SequentialIds::default()))
}

/// Scenario 12: a block whose message was lost is sent again once per stall, not once per tick.
#[tokio::test]
async fn scenario_12_a_stalled_block_is_resent_once_per_stall() {
    let store = Arc::new(MemoryCheckpointStore::default());
    stalled_job(store.as_ref(), "s12", BlockState::Exported { blobs: vec!["a.parquet".into()], rows: 10 }).await;
    let clock = Arc::new(ManualClock::new(T0));
    let engine = memory_engine(store, clock.clone());
    let stall = EngineOptions::default().stall_after;
    let tick = |minutes: i64| Tick { now: T0 + time::Duration::minutes(minutes), past_due: false };

    clock.set(T0 + time::Duration::minutes(5));
    assert!(engine.tick(&tick(5)).await.unwrap().is_empty(), "not stalled yet");
    let at = stall.whole_minutes() + 1;
    clock.set(T0 + time::Duration::minutes(at));
    let sent = engine.tick(&tick(at)).await.unwrap();
    assert_eq!(sent.iter().map(|o| (o.message.step.as_str(), o.message.block)).collect::<Vec<_>>(), vec![("ingest", Some(0))]);
    for later in 1..stall.whole_minutes() {
        clock.set(T0 + time::Duration::minutes(at + later));
        assert!(engine.tick(&tick(at + later)).await.unwrap().is_empty(), "sent again {later} min later");
    }
    let again = at + stall.whole_minutes() + 1;
    clock.set(T0 + time::Duration::minutes(again));
    assert_eq!(engine.tick(&tick(again)).await.unwrap().len(), 1, "a second stall, a second send");
}

/// Scenario 8: one job whose records cannot be read (here a corrupt activity record; an
/// unreachable cluster fails the same way) never keeps the scheduler from the others.
#[tokio::test]
async fn scenario_08_one_broken_job_does_not_stop_the_scheduler() {
    let store = Arc::new(MemoryCheckpointStore::default());
    stalled_job(store.as_ref(), "a-broken", BlockState::Exported { blobs: vec![], rows: 10 }).await;
    stalled_job(store.as_ref(), "b-fine", BlockState::Exported { blobs: vec![], rows: 10 }).await;
    let key = keys::activity("a-broken", "default");
    let Versioned { etag, .. } = store.read(&key).await.unwrap().unwrap();
    store.replace(&key, b"{ not json", &etag).await.unwrap();
    let later = T0 + time::Duration::hours(1);
    let engine = memory_engine(store, Arc::new(ManualClock::new(later)));
    let sent = engine.tick(&Tick { now: later, past_due: false }).await.unwrap();
    assert_eq!(sent.iter().map(|o| o.message.job.as_str()).collect::<Vec<_>>(), vec!["b-fine"]);
}

/// A store that holds one write back: the first `replace` whose new value (as JSON) `pause`
/// accepts waits until the test releases it (a delivery paused mid-step).
struct PausingStore {
    inner: Arc<dyn CheckpointStore>,
    pause: fn(&serde_json::Value) -> bool,
    armed: std::sync::atomic::AtomicBool,
    paused: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait]
impl CheckpointStore for PausingStore {
    async fn read(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        self.inner.read(key).await
    }
    async fn create(&self, key: &str, value: &[u8]) -> Result<Written, StorageError> {
        self.inner.create(key, value).await
    }
    async fn replace(&self, key: &str, value: &[u8], etag: &ETag) -> Result<Written, StorageError> {
        let json: serde_json::Value = serde_json::from_slice(value).unwrap_or_default();
        if (self.pause)(&json) && self.armed.swap(false, Ordering::SeqCst) {
            self.paused.notify_one();
            self.release.notified().await;
        }
        self.inner.replace(key, value, etag).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
}

/// Scenario 6: a delivery of `export` pauses after its first write (the attempt recorded,
/// the export sent, its operation id not yet recorded), a duplicate message meets its lease
/// and ends, and once the lease has expired a third delivery takes the block over as a new
/// attempt and moves it on. The paused delivery's next write then loses (it uses the ETag of
/// its own first write, not a re-read one), so no attempt number or folder is reused and the
/// block never goes back; the copy completes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_06_a_paused_delivery_never_overwrites_newer_state() {
    use kusto_copy::engine::{Delivery, StepMessage};
    let stack = stack().await;
    seed(&stack);
    let store = Arc::new(PausingStore {
        inner: blob_store(&stack),
        // Block 0's first attempt recording its operation id.
        pause: |v| v["number"] == 0 && v["exportAttempt"] == 1 && v["operationId"].is_string(),
        armed: std::sync::atomic::AtomicBool::new(true),
        paused: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let opts = EngineOptions { lease: time::Duration::seconds(1), ..options() };
    let engine = Arc::new(CopyEngine::new(store.clone(), connections(&stack), opts));
    let job = submit(&engine, &request(&stack, "s06", None)).await;
    let exports = plan_holding_exports(&engine, &job).await;
    let export0: StepMessage = exports.iter().find(|m| m.block == Some(0)).cloned().expect("block 0 is started");
    let block_key = keys::block(&job.id, "default", 1, 0);
    let read_block = || async {
        let v = engine.store().read(&block_key).await.unwrap().unwrap();
        serde_json::from_slice::<BlockRecord>(&v.value).unwrap()
    };

    // Delivery A: records attempt 1, sends the export, then pauses on its next write.
    let a = {
        let (engine, m) = (engine.clone(), export0.clone());
        tokio::spawn(async move { engine.step(&m, &Delivery { message_id: Some("A".into()), dequeue_count: 1 }).await })
    };
    if tokio::time::timeout(Duration::from_secs(20), store.paused.notified()).await.is_err() {
        panic!("delivery A never reached its second write: {:?}", read_block().await);
    }
    let after_a = read_block().await;
    assert_eq!(after_a.export_attempt, 1);
    assert_eq!(after_a.lease.as_ref().map(|l| l.owner.as_str()), Some("A"));

    // Delivery B, a duplicate message: the lease is fresh, it ends without a write.
    let b = engine.step(&export0, &Delivery { message_id: Some("B".into()), dequeue_count: 1 }).await.unwrap();
    assert!(b.is_empty(), "{b:?}");
    assert_eq!(read_block().await, after_a, "a duplicate never takes over a fresh lease");

    // Delivery C after the lease expired: a new attempt with a new folder, and the block moves on.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let c = engine.step(&export0, &Delivery { message_id: Some("C".into()), dequeue_count: 1 }).await.unwrap();
    let after_c = read_block().await;
    assert_eq!(after_c.export_attempt, 2, "taken over as a new attempt");
    assert_eq!(after_c.folders.len(), 2);
    assert_ne!(after_c.folders[0], after_c.folders[1], "no folder reused");
    assert!(matches!(after_c.state, BlockState::Exporting { operation_id: Some(_), .. }), "{:?}", after_c.state);

    // A resumes: its write is on a stale ETag and loses; the block stays where C left it.
    store.release.notify_one();
    let a = a.await.unwrap().unwrap();
    assert!(a.is_empty(), "the paused delivery sends nothing: {a:?}");
    assert_eq!(read_block().await.export_attempt, 2);
    assert_eq!(read_block().await.folders, after_c.folders);

    finish_exactly(&stack, &engine, &job, exports, c).await;
}

/// Plans `job` in-process until its iteration copies, and returns the exports it starts
/// (held back: the test decides who runs them).
async fn plan_holding_exports(engine: &CopyEngine, job: &JobRecord) -> Vec<kusto_copy::engine::StepMessage> {
    let mut pending = engine.start_job(job).await.unwrap();
    let mut exports = Vec::new();
    let planning = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(o) = pending.pop() {
        assert!(tokio::time::Instant::now() < planning, "planning does not end: {:?}", o.message);
        if o.message.step == "export" {
            exports.push(o.message);
            continue;
        }
        let delivery = kusto_copy::engine::Delivery { message_id: Some("plan".into()), dequeue_count: 1 };
        pending.extend(engine.step(&o.message, &delivery).await.unwrap());
    }
    exports
}

/// The rest of a copy whose first exports a test held back (all but block 0's, whose next
/// messages are `block0`) runs as usual and is exact, leaving nothing behind.
async fn finish_exactly(stack: &Stack, engine: &Arc<CopyEngine>, job: &JobRecord, exports: Vec<kusto_copy::engine::StepMessage>, block0: Vec<kusto_copy::engine::Outgoing>) {
    let mut rest = block0;
    rest.extend(exports.into_iter().filter(|m| m.block != Some(0)).map(|message| kusto_copy::engine::Outgoing { message, delay: Duration::ZERO }));
    let failures = local::run(engine.clone(), rest, 4, |_| {}).await;
    assert!(failures.is_empty(), "{failures:?}");
    run(engine, job, |_| {}).await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_exact(stack);
    assert_nothing_left(stack).await;
}

/// Two instances share the checkpoints and each remembers the block records it wrote last
/// (issue 12: a step decides on its own last write instead of reading it again). Forced
/// here, on block 0:
/// 1. A starts the export (it remembers the block exporting); B polls it to its end. B's
///    ingestion step delivered to A: A's memory is stale, the stored record decides, and
///    A starts the ingestion (the block's chain goes on).
/// 2. B polls A's ingestion until the block is past it. A's own poll message delivered
///    again to A (a duplicate): its memory (ingesting) runs the step, its write on the old
///    ETag loses, and the stored record shows nothing to do: nothing changes, nothing more
///    is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_moved_on_by_another_instance_is_decided_on_the_stored_record() {
    use kusto_copy::engine::{Delivery, Outgoing, StepMessage};
    let stack = stack().await;
    seed(&stack);
    let store = blob_store(&stack);
    let a = Arc::new(CopyEngine::new(store.clone(), connections(&stack), options()));
    let b = Arc::new(CopyEngine::new(store.clone(), connections(&stack), options()));
    let job = submit(&a, &request(&stack, "two-instances", None)).await;
    let delivery = |id: &str| Delivery { message_id: Some(id.into()), dequeue_count: 1 };
    let exports = plan_holding_exports(&a, &job).await;
    let export0: StepMessage = exports.iter().find(|m| m.block == Some(0)).cloned().expect("block 0 is started");
    let block_key = keys::block(&job.id, "default", 1, 0);
    let read_block = || async { serde_json::from_slice::<BlockRecord>(&store.read(&block_key).await.unwrap().unwrap().value).unwrap() };
    let of_block0 = |out: Vec<Outgoing>| out.into_iter().map(|o| o.message).find(|m| m.block == Some(0));
    // Runs block 0's chain on `engine` until `until` holds of the stored record.
    let chain = |engine: Arc<CopyEngine>, mut next: StepMessage, until: fn(&BlockState) -> bool| {
        let read_block = read_block.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !until(&read_block().await.state) {
                assert!(tokio::time::Instant::now() < deadline, "block 0 is stuck: {:?}", read_block().await);
                tokio::time::sleep(Duration::from_millis(50)).await;
                next = of_block0(engine.step(&next, &delivery("b")).await.unwrap()).expect("block 0's chain goes on");
            }
            next
        }
    };

    // 1. A starts the export; B sees it end.
    let poll = of_block0(a.step(&export0, &delivery("a-export")).await.unwrap()).expect("a poll follows");
    assert!(matches!(read_block().await.state, BlockState::Exporting { operation_id: Some(_), .. }));
    let ingest = chain(b.clone(), poll, |s| !matches!(s, BlockState::Exporting { .. })).await;
    assert_eq!(ingest.step, "ingest", "{ingest:?}");
    let exported = read_block().await;
    assert!(matches!(exported.state, BlockState::Exported { .. }), "{:?}", exported.state);
    let await_ingest = of_block0(a.step(&ingest, &delivery("a-ingest")).await.unwrap()).expect("A starts the ingestion and polls it");
    let ingesting = read_block().await;
    assert!(matches!(ingesting.state, BlockState::Ingesting { .. }), "{:?}", ingesting.state);
    assert_eq!(ingesting.ingest_attempt, 1);

    // 2. B polls A's ingestion past it; then A's own poll again on A.
    let after_b = chain(b.clone(), await_ingest.clone(), |s| !matches!(s, BlockState::Ingesting { .. })).await;
    let moved_on = read_block().await;
    assert!(of_block0(a.step(&await_ingest, &delivery("a-duplicate")).await.unwrap()).is_none(), "a duplicate sends nothing for block 0");
    assert_eq!(read_block().await, moved_on, "A's stale view changed nothing");
    assert_eq!(moved_on.ingest_attempt, 1, "one ingestion");

    finish_exactly(&stack, &a, &job, exports, vec![Outgoing { message: after_b, delay: Duration::ZERO }]).await;
}

/// Scenario 3: two jobs share a source whose export capacity is 1 while the scheduler ticks
/// (and sweeps) every 100 ms: a waiting block is one waiter whatever the deliveries and
/// sweeps, so both copies complete with one export per recorded attempt and none throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_03_jobs_sharing_one_export_slot_wait_without_multiplying() {
    let stack = stack().await;
    stack.source.with_state(|s| s.config.export_capacity = 1);
    seed(&stack);
    stack.destination.command(DB, ".create table Other (Id:long, Name:string, When:datetime)").unwrap();
    let opts = EngineOptions { stall_after: time::Duration::milliseconds(300), ..options() };
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), opts));
    let first = submit(&engine, &request(&stack, "s03-a", None)).await;
    let mut other: serde_json::Value = serde_json::from_str(&request(&stack, "s03-b", None)).unwrap();
    other["destination"] = serde_json::Value::String(format!("{}/{DB}/Other", stack.destination.url()));
    let second = submit(&engine, &other.to_string()).await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (engine, done) = (engine.clone(), done.clone());
        tokio::spawn(async move {
            let mut sent = 0usize;
            while !done.load(Ordering::Relaxed) {
                let out = engine.tick(&Tick { now: time::OffsetDateTime::now_utc(), past_due: false }).await.unwrap_or_default();
                sent += out.len();
                // What the sweeper sends goes where the host would put it: run it.
                let _ = local::run(engine.clone(), out, 2, |_| {}).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        })
    };
    let (a, b) = tokio::join!(run(&engine, &first, |_| {}), run(&engine, &second, |_| {}));
    done.store(true, Ordering::Relaxed);
    let swept = ticker.await.unwrap();
    assert!(a > 0 && b > 0);
    for job in [&first, &second] {
        let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
        assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
        assert_eq!(activity.copied_rows, 600);
    }
    let mut attempts = 0;
    for job in [&first, &second] {
        for key in engine.store().list(&keys::blocks(&job.id, "default", 1)).await.unwrap() {
            let block: BlockRecord = serde_json::from_slice(&engine.store().read(&key).await.unwrap().unwrap().value).unwrap();
            attempts += block.export_attempt as usize;
        }
    }
    let (exports, throttled) = stack.source.with_state(|s| (s.operations.records.iter().filter(|o| o.operation == "DataExportToFile").count(), s.throttled_exports));
    assert_eq!(throttled, 0, "never more exports than the cluster's capacity");
    assert_eq!(exports, attempts, "one export per recorded attempt (the sweeper sent {swept} messages)");
    let (src, _) = query_rows(&stack.source, DB, "Events | order by Id asc");
    assert_eq!(query_rows(&stack.destination, DB, "Other | order by Id asc").0, src);
    assert_eq!(query_rows(&stack.destination, DB, "Events | order by Id asc").0, src);
}

/// Scenario 10: two blocks finish at the same moment: one block's count is held back while
/// the others finish, then let go. The activity's copied rows equal the rows at the
/// destination (a block is marked done before it is counted, so the count that completes the
/// iteration sums blocks that are all done).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_10_blocks_finishing_together_are_all_counted() {
    let stack = stack().await;
    seed(&stack);
    let store = Arc::new(PausingStore {
        inner: blob_store(&stack),
        // A count of done blocks (done.json, its blocks as ranges: "0-1", "0,2"), the second
        // one written.
        pause: |v| v["blocks"].as_str().is_some_and(|b| done_blocks(b) == 2),
        armed: std::sync::atomic::AtomicBool::new(true),
        paused: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let engine = Arc::new(CopyEngine::new(store.clone(), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "s10", None)).await;
    let releaser = {
        let store = store.clone();
        tokio::spawn(async move {
            store.paused.notified().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            store.release.notify_one();
        })
    };
    run(&engine, &job, |_| {}).await;
    releaser.await.unwrap();
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    let at_destination: u64 = stack.destination.extents(DB, "Events").unwrap().iter().map(|e| e.row_count as u64).sum();
    assert_eq!((activity.copied_rows, at_destination), (600, 600));
    assert_exact(&stack);
}

/// How many blocks a done record's ranges (`"0-3,5"`) name.
fn done_blocks(ranges: &str) -> u64 {
    ranges
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1
        })
        .sum()
}

/// The source's rows in extents created at or after `cutoff` (ticks), keyed by `Id`, as
/// [`query_rows`] shows them.
fn rows_created_since(cluster: &kusto_sim::Cluster, cutoff: i64) -> std::collections::BTreeMap<i64, String> {
    let created: std::collections::HashMap<uuid::Uuid, i64> = cluster.extents(DB, "Events").unwrap().into_iter().map(|e| (e.id, e.max_created_on)).collect();
    let frame = cluster.query(DB, "Events | order by Id asc").unwrap();
    let mut out = std::collections::BTreeMap::new();
    for r in &frame.rows {
        let kusto_sim::Value::Long(id) = r.values[0] else { panic!("Id first") };
        if created[&r.meta.as_ref().expect("rows carry their extent").extent_id] >= cutoff {
            out.insert(id, format!("{:?}", r.values));
        }
    }
    out
}

/// A soft-delete period, in the policy's timespan text, that puts the cutoff 75 days after
/// the seed's first creation time: extents created on days 0, 30 and 60 are older than it,
/// those of days 90, 120 and 150 are not.
fn period_cutting_at_day_75() -> (String, i64) {
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 100) as i64;
    let cutoff = JAN_2024 + 75 * DAY;
    (format!("{}.00:00:00", (now - cutoff) / DAY), cutoff)
}

/// Blocks older than the destination keeps (its database's soft-delete period, read when
/// planning): not exported, reported on the activity with their rows, the rest copied
/// exactly, nothing left behind; never a failed attempt or a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_older_than_the_destination_keeps_are_reported_not_copied() {
    let stack = stack().await;
    seed(&stack);
    let (period, cutoff) = period_cutting_at_day_75();
    stack.destination.command(DB, &format!(r#".alter database db policy retention '{{"SoftDeletePeriod": "{period}", "Recoverability": "Enabled"}}'"#)).unwrap();
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "too-old", None)).await;
    run(&engine, &job, |_| {}).await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_eq!((activity.copied_rows, activity.rows_beyond_retention), (300, 300), "{activity:?}");
    let (copied, _) = query_rows(&stack.destination, DB, "Events | order by Id asc");
    assert_eq!(copied, rows_created_since(&stack.source, cutoff), "exactly the rows the destination keeps");
    let exports = stack.source.with_state(|s| s.operations.records.iter().filter(|o| o.operation == "DataExportToFile").count());
    assert_eq!(exports, 3, "the blocks too old are never exported");
    // Planning reads and exports asked the source for its latest state.
    let asked = stack.source.with_state(|s| s.consistency_log.clone());
    for first in [".export", "print"] {
        assert!(asked.iter().any(|(w, c)| w == first && c == "strongconsistency"), "{first}: {asked:?}");
    }
    assert_nothing_left(&stack).await;
    let status = kusto_copy::engine::status::job_status(engine.store().as_ref(), &job, time::OffsetDateTime::now_utc()).await.unwrap();
    let status = kusto_copy::engine::status::render(&status);
    assert!(status.contains("300 rows older than the destination's retention not copied"), "{status}");
}

/// The same cut found only by the destination's refusal: the table's own policy is set after
/// planning read none, so every block is exported, and the ingestions of the old ones are
/// refused (`BadRequest_CreationTimeEarlierThanSoftDeletePeriod`). Those blocks end without
/// their rows at once: no new attempt, no failed activity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_for_age_ends_the_block_without_a_loop() {
    let stack = stack().await;
    seed(&stack);
    let (period, cutoff) = period_cutting_at_day_75();
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "refused-old", None)).await;
    let destination = &stack.destination;
    let mut set = false;
    run(&engine, &job, move |m| {
        // After the first planning step, which read the policies, before the staging table
        // (which copies the table's policies) exists.
        if m.step == "plan" && !set {
            set = true;
            destination.command(DB, &format!(r#".alter table Events policy retention '{{"SoftDeletePeriod": "{period}"}}'"#)).unwrap();
        }
    })
    .await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_eq!((activity.copied_rows, activity.rows_beyond_retention), (300, 300), "{activity:?}");
    let (copied, _) = query_rows(&stack.destination, DB, "Events | order by Id asc");
    assert_eq!(copied, rows_created_since(&stack.source, cutoff));
    let exports = stack.source.with_state(|s| s.operations.records.iter().filter(|o| o.operation == "DataExportToFile").count());
    assert_eq!(exports, 6, "every block exported once: a refusal is not a new attempt");
    assert_nothing_left(&stack).await;
}

/// `.show capacity` refused (no AllDatabasesMonitor, or a service that does not document it):
/// the capacity is unknown, not a failed plan. The job's export count bounds the exports, no
/// cluster slot is claimed, and the copy is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_export_capacity_is_unknown_not_a_failure() {
    let hidden = ClusterConfig { async_duration: Duration::from_millis(100), capacity_hidden: true, export_capacity: 2, ..ClusterConfig::default() };
    let stack = stack_with_both(hidden, ClusterConfig { async_duration: Duration::from_millis(100), ..ClusterConfig::default() }).await;
    seed(&stack);
    let store = blob_store(&stack);
    let engine = Arc::new(CopyEngine::new(store.clone(), connections(&stack), options()));
    let job = submit(&engine, &request(&stack, "no-capacity", None)).await;
    run(&engine, &job, |_| {}).await;
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_exact(&stack);
    assert_nothing_left(&stack).await;
    let iteration: IterationRecord = serde_json::from_slice(&store.read(&keys::iteration(&job.id, "default", 1)).await.unwrap().unwrap().value).unwrap();
    assert_eq!((iteration.cluster_capacity, iteration.export_slots), (None, 2), "the job's exportCount");
    assert!(store.list("clusters/").await.unwrap().is_empty(), "no cluster slot claimed without a known capacity");
    assert_eq!(stack.source.with_state(|s| s.throttled_exports), 0);
}

/// Three staging directories, two in one Azurite account and one in another: blocks take
/// turns over the directories, so both accounts get exports (each folder in the account its
/// name says), the copy is exact, and neither account keeps a folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_staging_directories_in_two_accounts_each_take_exports() {
    use kusto_copy::engine::steps::staging_index_of;
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicBool;
    let stack = stack().await;
    seed(&stack);
    let second = kc_test_stack::Azurite::start_sharing_certificate(&stack.azurite);
    let engine = Arc::new(CopyEngine::new(blob_store(&stack), connections(&stack), options()));
    let mut r: serde_json::Value = serde_json::from_str(&request(&stack, "three-dirs", None)).unwrap();
    r.as_object_mut().unwrap().remove("stagingDirectory");
    r["stagingStorageDirectories"] = serde_json::json!([
        format!("{}/staging/a", stack.azurite.blob_endpoint()),
        format!("{}/staging2/b", stack.azurite.blob_endpoint()),
        format!("{}/staging/c", second.blob_endpoint()),
    ]);
    let job = submit(&engine, &r.to_string()).await;
    assert_eq!(job.spec.as_ref().unwrap().staging.len(), 3);
    // Folders live only while their block is copied: watched while the copy runs.
    let done = AtomicBool::new(false);
    let mut seen: [BTreeSet<String>; 2] = Default::default();
    let copy = async {
        run(&engine, &job, |_| {}).await;
        done.store(true, Ordering::SeqCst);
    };
    let watch = async {
        while !done.load(Ordering::SeqCst) {
            seen[0].extend(common::containers(&stack.azurite, "kcs-").await);
            seen[1].extend(common::containers(&second, "kcs-").await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::join!(copy, watch);
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed, "{activity:?}");
    assert_exact(&stack);
    assert_nothing_left(&stack).await;
    assert!(common::containers(&second, "kcs-").await.is_empty(), "no folder left in the second account");
    assert!(!seen[0].is_empty() && !seen[1].is_empty(), "both accounts took exports: {seen:?}");
    for name in &seen[0] {
        assert!(matches!(staging_index_of(name, 3), Some(0 | 1)), "{name} belongs to the first account's directories");
    }
    for name in &seen[1] {
        assert_eq!(staging_index_of(name, 3), Some(2), "{name} belongs to the second account's directory");
    }
}

/// Issue 12: the looks of one process at running exports of one database that come due
/// together are one `.show operations` (`kc copy` times them to one grid), each answered
/// with its own operation; a look after the batch went out is the next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn looks_at_running_exports_due_together_are_one_request() {
    use kusto_copy::engine::copy::Connections;
    use kusto_copy::engine::looks::Looks;
    use kusto_copy::kusto::ClientRequestId;
    let stack = stack().await;
    let url = stack.source.url().to_owned();
    let ids: Vec<uuid::Uuid> = stack.source.with_state(|s| {
        let now = s.now();
        (0..3).map(|_| s.operations.start("DataExport", DB, now)).collect()
    });
    let kusto = connections(&stack).kusto(&url).unwrap();
    let asked = || stack.source.with_state(|s| s.requests.get(".show operations").copied().unwrap_or(0));
    let looks = Looks::default();
    let rid = ClientRequestId::new("await-export", "job", "0", 1);
    let before = asked();
    let seen = futures::future::join_all(ids.iter().map(|id| looks.operation(kusto.clone(), &url, DB, *id, &rid))).await;
    for (id, seen) in ids.iter().zip(&seen) {
        let seen = seen.as_ref().unwrap().as_ref().expect("listed");
        assert_eq!((seen.id, &seen.state), (*id, &kusto_copy::kusto::results::OperationState::InProgress));
    }
    assert_eq!(asked() - before, 1, "three looks due together: one request");
    let unknown = looks.operation(kusto.clone(), &url, DB, uuid::Uuid::new_v4(), &rid).await.unwrap();
    assert!(unknown.is_none(), "an operation not listed is none");
    assert_eq!(asked() - before, 2, "a look after the batch went out: the next batch");
}

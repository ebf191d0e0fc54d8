//! End to end: a table copied between two simulated clusters through staging blobs in
//! Azurite (HTTPS, OAuth, SAS minted by our code), by the copy engine and the in-process
//! driver. Checked row by row, extent creation times included, and nothing left behind.

mod common;

use kc_test_stack::Azurite;
use kusto_copy::auth::EmulatorCredential;
use kusto_copy::engine::copy::{ActivityState, CopyEngine, EngineOptions, LiveConnections};
use kusto_copy::engine::plan::PlanLimits;
use kusto_copy::engine::records::IngestRoute;
use kusto_copy::engine::{local, Engine};
use kusto_copy::job::{record_request, RecordOutcome};
use kusto_copy::kusto::{ClientOptions, RetryPolicy};
use kusto_copy::storage::checkpoint::BlobCheckpointStore;
use kusto_copy::engine::{Delivery, EngineError, Outgoing, StepMessage, Tick};
use kusto_copy::job::JobRecord;
use kusto_sim::{Cluster, ClusterConfig, Column, CommandKind, Fault, ScalarType, SeedPlan, Value};
use common::{query_rows, rows_by_creation};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const DB: &str = "db";
const HOUR: i64 = 3600 * 10_000_000;
const DAY: i64 = 24 * HOUR;
/// 2024-01-01T00:00:00Z in 100 ns ticks since the Unix epoch (the simulator's unit).
const JAN_2024: i64 = 1_704_067_200 * 10_000_000;

struct Stack {
    azurite: Azurite,
    source: Cluster,
    destination: Cluster,
}

async fn stack() -> Stack {
    let azurite = Azurite::start();
    let config = ClusterConfig {
        async_duration: Duration::from_millis(100),
        ca_cert_pem: Some(std::fs::read(&azurite.ca_pem_path).unwrap()),
        ..ClusterConfig::default()
    };
    let source = Cluster::start("source", config.clone()).await.unwrap();
    let destination = Cluster::start("destination", config).await.unwrap();
    Stack { azurite, source, destination }
}

fn columns() -> Vec<Column> {
    vec![
        Column::new("Id", ScalarType::Long),
        Column::new("Name", ScalarType::String),
        Column::new("When", ScalarType::DateTime),
        Column::new("Amount", ScalarType::Real),
        Column::new("Props", ScalarType::Dynamic),
    ]
}

fn engine(stack: &Stack) -> Arc<CopyEngine> {
    engine_with(stack, IngestRoute::Queued)
}

fn engine_with(stack: &Stack, ingest_route: IngestRoute) -> Arc<CopyEngine> {
    let clients = common::clients(&stack.azurite);
    let store = Arc::new(BlobCheckpointStore::new(clients.container_without_retries(&common::unique_name("ckpt")).unwrap()));
    let kusto_options = ClientOptions {
        retry: RetryPolicy { base_delay: Duration::from_millis(20), max_delay: Duration::from_millis(200), max_attempts: 4, ..RetryPolicy::default() },
        ..ClientOptions::default()
    };
    let connections = Arc::new(LiveConnections::new(Arc::new(EmulatorCredential::default()), Some(stack.azurite.ca_pem_path.clone()), kusto_options));
    let options = EngineOptions {
        // Three bins a planning step: every copy here plans in several chunks.
        limits: PlanLimits { max_rows: 250, max_creation_spread: time::Duration::days(1), bin: time::Duration::hours(1), bins_per_step: 3 },
        min_poll: Duration::from_millis(50),
        max_poll: Duration::from_millis(500),
        ingest_route,
        orphan_settle: time::Duration::seconds(1),
        ..EngineOptions::default()
    };
    Arc::new(CopyEngine::new(store, connections, options))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_table_is_copied_exactly_with_its_creation_times() {
    let stack = stack().await;
    stack
        .source
        .seed_table(DB, "Events", &columns(), &SeedPlan {
            rows: 1_000,
            extents: 10,
            first_creation: JAN_2024,
            creation_step: 30 * DAY,
            first_ingestion: Some(JAN_2024 + 400 * DAY),
            ingestion_step: HOUR,
        })
        .unwrap();
    stack.destination.command(DB, ".create table Events (Id:long, Name:string, When:datetime, Amount:real, Props:dynamic)").unwrap();

    let engine = engine(&stack);
    let request = serde_json::json!({
        "jobId": "e2e-one-table",
        "source": format!("{}/{DB}/Events", stack.source.url()),
        "destination": format!("{}/{DB}", stack.destination.url()),
        "stagingDirectory": format!("{}/staging", stack.azurite.blob_endpoint()),
        "exportCount": 3,
    })
    .to_string();
    let RecordOutcome::Accepted(job) = record_request(engine.store().as_ref(), &request, time::OffsetDateTime::now_utc(), &kusto_copy::job::RequestPolicy::emulator()).await.unwrap() else {
        panic!("request not accepted")
    };
    let first = engine.start_job(&job).await.unwrap();
    let failures = local::run(engine.clone(), first, 4, |_| {}).await;
    assert!(failures.is_empty(), "{failures:?}");

    assert!(engine.job_finished(&job).await.unwrap());
    let activity = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!(activity.state, ActivityState::Completed);
    assert_eq!(activity.copied_rows, 1_000);

    // Row by row, every column, nulls and dynamic values included.
    let (src, _) = query_rows(&stack.source, DB, "Events | order by Id asc");
    let (dst, _) = query_rows(&stack.destination, DB, "Events | order by Id asc");
    assert_eq!(src.len(), 1_000);
    assert_eq!(src, dst);
    // Ages preserved: the same rows under the same creation times.
    assert_eq!(rows_by_creation(&stack.source, DB, "Events"), rows_by_creation(&stack.destination, DB, "Events"));
    // No tag left on the destination, no staging table, no staging folder.
    assert!(stack.destination.extents(DB, "Events").unwrap().iter().all(|e| e.tags.is_empty()));
    let tables = stack.destination.query(DB, ".show tables");
    let tables = match tables {
        Ok(f) => format!("{:?}", f.rows),
        Err(_) => format!("{:?}", stack.destination.command(DB, ".show tables").unwrap().rows),
    };
    assert!(!tables.contains("kc_staging"), "staging table left: {tables}");
    let service = common::clients(&stack.azurite).blob_service().unwrap();
    let mut pages = service.list_containers(None).unwrap().into_pages();
    let mut left = Vec::new();
    while let Some(page) = futures::TryStreamExt::try_next(&mut pages).await.unwrap() {
        for c in page.into_model().unwrap().container_items {
            if let Some(name) = c.name.filter(|n| n.starts_with("kcs-")) {
                left.push(name);
            }
        }
    }
    assert!(left.is_empty(), "staging folders left: {left:?}");
}

fn seed(cluster: &Cluster, db: &str, table: &str, rows: usize, extents: usize, first_creation: i64) {
    cluster.create_database(db);
    cluster
        .seed_table(db, table, &columns(), &SeedPlan {
            rows,
            extents,
            first_creation,
            creation_step: 30 * DAY,
            first_ingestion: Some(JAN_2024 + 400 * DAY),
            ingestion_step: HOUR,
        })
        .unwrap();
}

fn create_destination(cluster: &Cluster, db: &str, table: &str) {
    cluster.create_database(db);
    cluster.command(db, &format!(".create table {table} (Id:long, Name:string, When:datetime, Amount:real, Props:dynamic)")).unwrap();
}

/// The request most tests send: `db.Events` from the source to the destination database,
/// staged under `staging/<folder>`.
fn events_request(stack: &Stack, folder: &str) -> serde_json::Value {
    serde_json::json!({
        "source": format!("{}/{DB}/Events", stack.source.url()),
        "destination": format!("{}/{DB}", stack.destination.url()),
        "stagingDirectory": format!("{}/staging/{folder}", stack.azurite.blob_endpoint()),
    })
}

async fn submit(engine: &CopyEngine, request: serde_json::Value) -> JobRecord {
    match record_request(engine.store().as_ref(), &request.to_string(), time::OffsetDateTime::now_utc(), &kusto_copy::job::RequestPolicy::emulator()).await.unwrap() {
        RecordOutcome::Accepted(job) => job,
        other => panic!("request not accepted: {other:?}"),
    }
}

/// Runs a job to completion with the in-process driver; returns every message it ran.
async fn run_job(engine: Arc<dyn Engine>, first: Vec<Outgoing>) -> Vec<StepMessage> {
    let mut ran = Vec::new();
    let failures = local::run(engine, first, 4, |e| {
        if let local::Event::Ran { message } = e {
            ran.push(message.clone());
        }
    })
    .await;
    assert!(failures.is_empty(), "{failures:?}");
    ran
}

/// Source and destination `db.table` hold the same rows (every column) under the same
/// creation times, and the copy left nothing behind.
async fn assert_exact_copy(stack: &Stack, table: &str) {
    let query = format!("{table} | order by Id asc");
    let (expected, ages) = query_rows(&stack.source, DB, &query);
    let (copied, _) = query_rows(&stack.destination, DB, &query);
    assert_eq!(copied.len(), expected.len(), "row count");
    assert_eq!(copied, expected, "no row lost, none duplicated, every value equal");
    assert_eq!(rows_by_creation(&stack.destination, DB, table), ages, "creation times kept");
    assert_no_leftovers(stack, DB, &[table]).await;
}

async fn assert_no_leftovers(stack: &Stack, db: &str, tables: &[&str]) {
    for t in tables {
        assert!(stack.destination.extents(db, t).unwrap().iter().all(|e| e.tags.is_empty()), "tags left on {t}");
    }
    let listed = format!("{:?}", stack.destination.command(db, ".show tables").unwrap().rows);
    assert!(!listed.contains("kc_staging"), "staging table left: {listed}");
    let service = common::clients(&stack.azurite).blob_service().unwrap();
    let mut pages = service.list_containers(None).unwrap().into_pages();
    while let Some(page) = futures::TryStreamExt::try_next(&mut pages).await.unwrap() {
        for c in page.into_model().unwrap().container_items {
            let name = c.name.unwrap_or_default();
            assert!(!name.starts_with("kcs-"), "staging folder left: {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_that_filters_and_projects_is_copied_exactly() {
    let stack = stack().await;
    seed(&stack.source, DB, "Events", 600, 6, JAN_2024);
    stack.destination.command(DB, ".create table Thirds (Id:long, Name:string, Amount:real)").unwrap();
    let engine = engine(&stack);
    let job = submit(&engine, serde_json::json!({
        "source": format!("{}/{DB}/Events", stack.source.url()),
        "destination": format!("{}/{DB}/Thirds", stack.destination.url()),
        "stagingDirectory": format!("{}/staging/filtered", stack.azurite.blob_endpoint()),
        "query": "| where Id % 3 == 0 | project Id, Name, Amount",
    }))
    .await;
    let first = engine.start_job(&job).await.unwrap();
    run_job(engine.clone(), first).await;

    let (expected, expected_ages) = query_rows(&stack.source, DB, "Events | where Id % 3 == 0 | project Id, Name, Amount");
    assert_eq!(expected.len(), 200);
    let (copied, _) = query_rows(&stack.destination, DB, "Thirds | order by Id asc");
    assert_eq!(copied, expected);
    assert_eq!(rows_by_creation(&stack.destination, DB, "Thirds"), expected_ages);
    assert_no_leftovers(&stack, DB, &["Thirds"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_tables_from_two_databases_in_one_job() {
    let stack = stack().await;
    seed(&stack.source, "sales", "Orders", 300, 3, JAN_2024);
    seed(&stack.source, "sales", "Returns", 120, 2, JAN_2024 + 5 * DAY);
    seed(&stack.source, "ops", "Audit", 200, 4, JAN_2024 + 9 * DAY);
    for t in ["Orders", "Returns", "AuditCopy"] {
        create_destination(&stack.destination, "archive", t);
    }
    let engine = engine(&stack);
    let table = |db: &str, t: &str| serde_json::json!({"clusterUri": stack.source.url(), "databaseName": db, "tableName": t});
    let dest = |t: Option<&str>| match t {
        Some(t) => serde_json::json!({"clusterUri": stack.destination.url(), "databaseName": "archive", "tableName": t}),
        None => serde_json::json!({"clusterUri": stack.destination.url(), "databaseName": "archive"}),
    };
    let job = submit(&engine, serde_json::json!({
        "activities": [
            {"activityName": "orders", "source": table("sales", "Orders"), "destination": dest(None)},
            {"activityName": "returns", "source": table("sales", "Returns"), "destination": dest(None)},
            {"activityName": "audit", "source": table("ops", "Audit"), "destination": dest(Some("AuditCopy"))}
        ],
        "stagingStorageDirectories": [format!("{}/staging/multi", stack.azurite.blob_endpoint())],
        "exportCount": 2
    }))
    .await;
    let first = engine.start_job(&job).await.unwrap();
    assert_eq!(first.len(), 3, "one plan per activity");
    run_job(engine.clone(), first).await;

    for (db, src, dst) in [("sales", "Orders", "Orders"), ("sales", "Returns", "Returns"), ("ops", "Audit", "AuditCopy")] {
        let (expected, ages) = query_rows(&stack.source, db, &format!("{src} | order by Id asc"));
        let (copied, _) = query_rows(&stack.destination, "archive", &format!("{dst} | order by Id asc"));
        assert_eq!(copied, expected, "{db}.{src}");
        let mut dest_ages = BTreeMap::new();
        for e in stack.destination.extents("archive", dst).unwrap() {
            *dest_ages.entry(e.max_created_on).or_insert(0usize) += e.row_count;
        }
        assert_eq!(dest_ages, ages, "{db}.{src} creation times");
    }
    assert!(engine.job_finished(&job).await.unwrap());
    assert_no_leftovers(&stack, "archive", &["Orders", "Returns", "AuditCopy"]).await;
}

/// Every message the engine sends is delivered twice, concurrently: at-least-once delivery
/// at its worst. Afterwards every message of the run is delivered again, first and redelivered.
struct Duplicating(Arc<CopyEngine>);

#[async_trait::async_trait]
impl Engine for Duplicating {
    async fn start_job(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        let out = self.0.start_job(job).await?;
        Ok(out.iter().cloned().chain(out.iter().cloned()).collect())
    }
    async fn step(&self, m: &StepMessage, d: &Delivery) -> Result<Vec<Outgoing>, EngineError> {
        let out = self.0.step(m, d).await?;
        Ok(out.iter().cloned().chain(out.iter().cloned()).collect())
    }
    async fn tick(&self, t: &Tick) -> Result<Vec<Outgoing>, EngineError> {
        self.0.tick(t).await
    }
    async fn cancel(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        self.0.cancel(job).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicated_and_stale_messages_change_nothing() {
    let stack = stack().await;
    seed(&stack.source, DB, "Events", 500, 5, JAN_2024);
    create_destination(&stack.destination, DB, "Events");
    let engine = engine(&stack);
    let job = submit(&engine, events_request(&stack, "dups")).await;
    let duplicating: Arc<dyn Engine> = Arc::new(Duplicating(engine.clone()));
    let first = duplicating.start_job(&job).await.unwrap();
    let ran = run_job(duplicating, first).await;
    let (expected, ages) = query_rows(&stack.source, DB, "Events | order by Id asc");
    let (copied, _) = query_rows(&stack.destination, DB, "Events | order by Id asc");
    assert_eq!(copied, expected);
    assert_eq!(rows_by_creation(&stack.destination, DB, "Events"), ages);

    // Every message of the run again, as a late duplicate and as a redelivery: all stale.
    for message in &ran {
        for dequeue_count in [1, 2] {
            let out = engine.step(message, &Delivery { message_id: None, dequeue_count }).await.unwrap();
            assert!(out.is_empty(), "{message:?} (delivery {dequeue_count}) asked for {out:?}");
        }
    }
    let (after, _) = query_rows(&stack.destination, DB, "Events | order by Id asc");
    assert_eq!(after, expected);
    assert_no_leftovers(&stack, DB, &["Events"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_exports_and_ingestions_are_redone_and_their_strays_never_arrive() {
    let stack = stack().await;
    seed(&stack.source, DB, "Events", 400, 4, JAN_2024);
    create_destination(&stack.destination, DB, "Events");
    // The first export fails after writing part of its files; one ingestion fails; one
    // ingestion adds its data twice.
    stack.source.script_fault(Some(CommandKind::Export), Fault::ExportPartialFailure, 1);
    // (Queued ingestion, the default route; faults meet each blob's ingestion.) Scripted faults
    // of one kind all meet the next request of that kind: the first blob fails (its
    // duplication is moot), the second adds its data twice.
    stack.destination.script_fault(Some(CommandKind::QueuedIngest), Fault::IngestionFailure, 1);
    stack.destination.script_fault(Some(CommandKind::QueuedIngest), Fault::DuplicateIngestion, 2);
    let engine = engine(&stack);
    let job = submit(&engine, events_request(&stack, "faults")).await;
    let first = engine.start_job(&job).await.unwrap();
    let ran = run_job(engine.clone(), first).await;
    // The faults really happened: every scripted one was met, a second export and at least
    // one more ingestion ran (both ingestion faults may meet blobs of the same block).
    assert_eq!(stack.source.with_state(|s| s.faults.pending()) + stack.destination.with_state(|s| s.faults.pending()), 0);
    let exports = ran.iter().filter(|m| m.step == "export").count();
    let ingests = ran.iter().filter(|m| m.step == "ingest").count();
    assert!(exports >= 5 && ingests >= 5, "exports {exports}, ingests {ingests}");

    let (expected, ages) = query_rows(&stack.source, DB, "Events | order by Id asc");
    let (copied, _) = query_rows(&stack.destination, DB, "Events | order by Id asc");
    assert_eq!(copied.len(), 400);
    assert_eq!(copied, expected, "no row lost, none duplicated");
    assert_eq!(rows_by_creation(&stack.destination, DB, "Events"), ages);
    assert_no_leftovers(&stack, DB, &["Events"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_and_new_copies_rows_that_arrive_between_iterations_once() {
    let stack = stack().await;
    seed(&stack.source, DB, "Events", 300, 3, JAN_2024);
    create_destination(&stack.destination, DB, "Events");
    let engine = engine(&stack);
    let job = submit(&engine, serde_json::json!({
        "source": format!("{}/{DB}/Events", stack.source.url()),
        "destination": format!("{}/{DB}", stack.destination.url()),
        "stagingDirectory": format!("{}/staging/continuous", stack.azurite.blob_endpoint()),
        "copyMode": "BackfillAndNew",
        "iterationPeriod": "1s",
    }))
    .await;
    let first = engine.start_job(&job).await.unwrap();
    run_job(engine.clone(), first).await;
    let record = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!((record.iteration, record.state.clone(), record.copied_rows), (1, ActivityState::Idle, 300));

    // New rows land on the source (a new extent, ingested after the first iteration's cursor).
    let fresh: Vec<Vec<Value>> = (0..50)
        .map(|i| {
            vec![
                Value::Long(10_000 + i),
                Value::String(format!("new-{i}")),
                Value::DateTime(JAN_2024 + 600 * DAY),
                Value::Real(i as f64),
                Value::Dynamic(serde_json::json!({"fresh": i})),
            ]
        })
        .collect();
    stack
        .source
        .seed_extent(DB, "Events", kusto_sim::SeedExtent { rows: fresh, creation_time: JAN_2024 + 700 * DAY, ingestion_time: Some(JAN_2024 + 800 * DAY), tags: vec![] })
        .unwrap();

    // The scheduler's tick starts iteration 2 once the period has passed.
    let not_yet = engine.tick(&Tick { now: time::OffsetDateTime::now_utc() - time::Duration::seconds(10), past_due: false }).await.unwrap();
    assert!(not_yet.is_empty(), "not due before the period: {not_yet:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let due = engine.tick(&Tick { now: time::OffsetDateTime::now_utc(), past_due: false }).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].message.step.as_str(), due[0].message.iteration), ("plan", Some(2)));
    run_job(engine.clone(), due).await;
    // And an iteration with nothing new completes cleanly.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let due = engine.tick(&Tick { now: time::OffsetDateTime::now_utc(), past_due: false }).await.unwrap();
    run_job(engine.clone(), due).await;
    let record = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!((record.iteration, record.copied_rows), (3, 350));

    let (expected, ages) = query_rows(&stack.source, DB, "Events | order by Id asc");
    let (copied, _) = query_rows(&stack.destination, DB, "Events | order by Id asc");
    assert_eq!(expected.len(), 350);
    assert_eq!(copied, expected, "each row once");
    assert_eq!(rows_by_creation(&stack.destination, DB, "Events"), ages);
    assert_no_leftovers(&stack, DB, &["Events"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kc_copy_killed_midway_resumes_from_its_checkpoints() {
    let azurite = Azurite::start();
    // Slow operations, so the kill lands in the middle of the copy.
    let config = ClusterConfig {
        async_duration: Duration::from_millis(1500),
        ca_cert_pem: Some(std::fs::read(&azurite.ca_pem_path).unwrap()),
        ..ClusterConfig::default()
    };
    let stack = Stack {
        source: Cluster::start("source", config.clone()).await.unwrap(),
        destination: Cluster::start("destination", config).await.unwrap(),
        azurite,
    };
    seed(&stack.source, DB, "Events", 800, 8, JAN_2024);
    create_destination(&stack.destination, DB, "Events");
    let args = [
        "copy".to_string(),
        "-s".into(),
        format!("{}/{DB}/Events", stack.source.url()),
        "-d".into(),
        format!("{}/{DB}", stack.destination.url()),
        "-t".into(),
        format!("{}/staging/cli", stack.azurite.blob_endpoint()),
        "--export".into(),
        "2".into(),
    ];
    let kc = || {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_kc"));
        c.args(&args)
            .env("KC_CREDENTIAL", "emulator")
            .env("KC_CA_CERT", &stack.azurite.ca_pem_path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        c
    };
    let mut first = kc().spawn().unwrap();
    // Kill it once some blocks have reached the destination, but not all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let arrived: usize = stack.destination.extents(DB, "Events").unwrap().iter().map(|e| e.row_count).sum();
        if arrived > 0 {
            assert!(arrived < 800, "the copy finished before it could be interrupted");
            break;
        }
        assert!(first.try_wait().unwrap().is_none(), "kc copy exited early");
        assert!(tokio::time::Instant::now() < deadline, "no block arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().await.unwrap();

    let out = kc().output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    if !String::from_utf8_lossy(&out.stdout).contains("800 rows copied") {
        let store = BlobCheckpointStore::new(common::clients(&stack.azurite).container_without_retries("staging").unwrap());
        let mut dump = String::new();
        for key in kusto_copy::storage::checkpoint::CheckpointStore::list(&store, "cli/tracking/").await.unwrap() {
            if !key.contains("/blocks/") {
                let v = kusto_copy::storage::checkpoint::CheckpointStore::read(&store, &key).await.unwrap().unwrap();
                dump.push_str(&format!("{key}: {}\n", String::from_utf8_lossy(&v.value)));
            }
        }
        let arrived: usize = stack.destination.extents(DB, "Events").unwrap().iter().map(|e| e.row_count).sum();
        panic!("stdout {}\narrived {arrived}\n{dump}", String::from_utf8_lossy(&out.stdout));
    }
    assert_exact_copy(&stack, "Events").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_scalar_type_and_nulls_survive_the_copy() {
    let azurite = Azurite::start();
    // Timespan and guid do not survive Parquet by the documented conversion tables, and the
    // simulator is strict: this table has them, so it travels as gzip CSV (DataRoute).
    let config = ClusterConfig {
        async_duration: Duration::from_millis(100),
        ca_cert_pem: Some(std::fs::read(&azurite.ca_pem_path).unwrap()),
        ..ClusterConfig::default()
    };
    let stack = Stack {
        source: Cluster::start("source", config.clone()).await.unwrap(),
        destination: Cluster::start("destination", config).await.unwrap(),
        azurite,
    };
    let all = [
        ("Id", ScalarType::Long, "long"),
        ("B", ScalarType::Bool, "bool"),
        ("I", ScalarType::Int, "int"),
        ("R", ScalarType::Real, "real"),
        ("D", ScalarType::Decimal, "decimal"),
        ("S", ScalarType::String, "string"),
        ("T", ScalarType::DateTime, "datetime"),
        ("Span", ScalarType::Timespan, "timespan"),
        ("G", ScalarType::Guid, "guid"),
        ("Dyn", ScalarType::Dynamic, "dynamic"),
    ];
    let columns: Vec<Column> = all.iter().map(|(n, t, _)| Column::new(*n, *t)).collect();
    stack
        .source
        .seed_table(DB, "AllTypes", &columns, &SeedPlan {
            rows: 210,
            extents: 3,
            first_creation: JAN_2024,
            creation_step: 20 * DAY,
            first_ingestion: Some(JAN_2024 + 100 * DAY),
            ingestion_step: HOUR,
        })
        .unwrap();
    let schema = all.iter().map(|(n, _, k)| format!("{n}:{k}")).collect::<Vec<_>>().join(", ");
    stack.destination.command(DB, &format!(".create table AllTypes ({schema})")).unwrap();
    let engine = engine(&stack);
    let job = submit(&engine, serde_json::json!({
        "source": format!("{}/{DB}/AllTypes", stack.source.url()),
        "destination": format!("{}/{DB}", stack.destination.url()),
        "stagingDirectory": format!("{}/staging/types", stack.azurite.blob_endpoint()),
    }))
    .await;
    let first = engine.start_job(&job).await.unwrap();
    run_job(engine.clone(), first).await;
    let (expected, ages) = query_rows(&stack.source, DB, "AllTypes | order by Id asc");
    let nulls = expected.values().filter(|r| r.contains("Null")).count();
    assert!(nulls > 20, "the seed has nulls in every type: {nulls}");
    let (copied, _) = query_rows(&stack.destination, DB, "AllTypes | order by Id asc");
    assert_eq!(copied.len(), expected.len());
    if let Some((id, want)) = expected.iter().find(|(id, row)| copied.get(id) != Some(row)) {
        panic!("row {id} differs:\n  source      {want}\n  destination {}", copied.get(id).map(String::as_str).unwrap_or("(missing)"));
    }
    assert_eq!(rows_by_creation(&stack.destination, DB, "AllTypes"), ages);
    assert_no_leftovers(&stack, DB, &["AllTypes"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_that_cannot_take_the_rows_stops_the_activity_before_any_export() {
    let stack = stack().await;
    seed(&stack.source, DB, "Events", 100, 2, JAN_2024);
    // Amount is real at the source; here it is a string, and Props is missing.
    stack.destination.command(DB, ".create table Events (Id:long, Name:string, When:datetime, Amount:string)").unwrap();
    let engine = engine(&stack);
    let job = submit(&engine, events_request(&stack, "schema")).await;
    let first = engine.start_job(&job).await.unwrap();
    // The step records the failure on the activity (it answers 2xx under the host): the
    // driver sees no failed step, and the reason is on the record.
    let failures = local::run(engine.clone(), first, 2, |_| {}).await;
    assert!(failures.is_empty(), "{failures:?}");
    let record = engine.activity(&job.id, "default").await.unwrap().unwrap();
    let ActivityState::Failed { reason } = &record.state else { panic!("{record:?}") };
    assert!(reason.contains("column Amount is Real in the copy but String"), "{reason}");
    assert!(reason.contains("column Props (Dynamic) has no column"), "{reason}");
    assert!(engine.job_finished(&job).await.unwrap(), "a failed activity ends the job");
    // Nothing was exported or staged.
    assert!(stack.destination.extents(DB, "Events").unwrap().is_empty());
    assert_no_leftovers(&stack, DB, &["Events"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_direct_ingestion_route_copies_exactly_too() {
    let stack = stack().await;
    seed(&stack.source, DB, "Events", 400, 4, JAN_2024);
    create_destination(&stack.destination, DB, "Events");
    // One direct ingestion fails: the redo goes through the same route.
    stack.destination.script_fault(Some(CommandKind::Ingest), Fault::IngestionFailure, 1);
    let engine = engine_with(&stack, IngestRoute::Direct);
    let job = submit(&engine, events_request(&stack, "direct")).await;
    let first = engine.start_job(&job).await.unwrap();
    let ran = run_job(engine.clone(), first).await;
    assert!(ran.iter().filter(|m| m.step == "ingest").count() >= 5, "the failed ingestion was redone");
    assert_exact_copy(&stack, "Events").await;
}

/// Loses every message for one step, as a crashed host or a poisoned message would.
struct Losing {
    inner: Arc<CopyEngine>,
    step: &'static str,
}

#[async_trait::async_trait]
impl Engine for Losing {
    async fn start_job(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        self.inner.start_job(job).await
    }
    async fn step(&self, m: &StepMessage, d: &Delivery) -> Result<Vec<Outgoing>, EngineError> {
        let out = self.inner.step(m, d).await?;
        Ok(out.into_iter().filter(|o| o.message.step != self.step).collect())
    }
    async fn tick(&self, t: &Tick) -> Result<Vec<Outgoing>, EngineError> {
        self.inner.tick(t).await
    }
    async fn cancel(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        self.inner.cancel(job).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweeper_finds_blocks_whose_messages_were_lost() {
    let stack = stack().await;
    seed(&stack.source, DB, "Events", 300, 3, JAN_2024);
    create_destination(&stack.destination, DB, "Events");
    let engine = engine(&stack);
    let job = submit(&engine, events_request(&stack, "sweep")).await;
    let losing: Arc<dyn Engine> = Arc::new(Losing { inner: engine.clone(), step: "ingest" });
    let first = losing.start_job(&job).await.unwrap();
    run_job(losing, first).await;
    // Every block is exported, none ingested: the copy stalled.
    assert!(!engine.job_finished(&job).await.unwrap());
    assert!(stack.destination.extents(DB, "Events").unwrap().is_empty());

    // A tick now finds nothing stalled yet; one past the stall time re-sends each block's step.
    let now = time::OffsetDateTime::now_utc();
    assert!(engine.tick(&Tick { now, past_due: false }).await.unwrap().is_empty(), "blocks touched just now are not stalled");
    let swept = engine.tick(&Tick { now: now + time::Duration::hours(1), past_due: false }).await.unwrap();
    assert_eq!(swept.len(), 3, "{swept:?}");
    assert!(swept.iter().all(|o| o.message.step == "ingest"));
    run_job(engine.clone(), swept).await;

    assert!(engine.job_finished(&job).await.unwrap());
    assert_exact_copy(&stack, "Events").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_destination_table_is_created_only_when_the_job_asks() {
    let stack = stack().await;
    seed(&stack.source, DB, "Events", 200, 2, JAN_2024);
    stack.destination.create_database("fresh");
    let engine = engine(&stack);
    let request = |create: bool, folder: &str| {
        serde_json::json!({
            "source": format!("{}/{DB}/Events", stack.source.url()),
            "destination": format!("{}/fresh/Slim", stack.destination.url()),
            "stagingDirectory": format!("{}/staging/{folder}", stack.azurite.blob_endpoint()),
            "query": "| project Id, Amount, Props",
            "createDestinationTable": create,
        })
    };
    // Not asked: the activity stops and says what to do.
    let job = submit(&engine, request(false, "nocreate")).await;
    let first = engine.start_job(&job).await.unwrap();
    let failures = local::run(engine.clone(), first, 2, |_| {}).await;
    assert!(failures.is_empty(), "{failures:?}");
    let record = engine.activity(&job.id, "default").await.unwrap().unwrap();
    let ActivityState::Failed { reason } = &record.state else { panic!("{record:?}") };
    assert!(reason.contains("does not exist") && reason.contains("createDestinationTable"), "{reason}");

    // Asked: created with the columns the query produces, then copied.
    let job = submit(&engine, request(true, "create")).await;
    let first = engine.start_job(&job).await.unwrap();
    run_job(engine.clone(), first).await;
    let schema = format!("{:?}", stack.destination.command("fresh", ".show table Slim cslschema").unwrap().rows);
    assert!(schema.contains("Id:long") && schema.contains("Amount:real") && schema.contains("Props:dynamic") && !schema.contains("Name"), "{schema}");
    let (expected, _) = query_rows(&stack.source, DB, "Events | project Id, Amount, Props | order by Id asc");
    let (copied, _) = query_rows(&stack.destination, "fresh", "Slim | order by Id asc");
    assert_eq!(copied, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_jobs_on_one_source_share_its_export_capacity() {
    let azurite = Azurite::start();
    // A source that runs one export at a time and refuses (429) any beyond.
    let config = |capacity| ClusterConfig {
        async_duration: Duration::from_millis(200),
        export_capacity: capacity,
        ca_cert_pem: Some(std::fs::read(&azurite.ca_pem_path).unwrap()),
        ..ClusterConfig::default()
    };
    let stack = Stack {
        source: Cluster::start("source", config(1)).await.unwrap(),
        destination: Cluster::start("destination", config(8)).await.unwrap(),
        azurite,
    };
    seed(&stack.source, DB, "Events", 300, 3, JAN_2024);
    seed(&stack.source, DB, "Audit", 300, 3, JAN_2024 + 3 * DAY);
    create_destination(&stack.destination, DB, "Events");
    create_destination(&stack.destination, DB, "Audit");
    let engine = engine(&stack);
    let mut first = Vec::new();
    let mut jobs = Vec::new();
    for table in ["Events", "Audit"] {
        let job = submit(&engine, serde_json::json!({
            "source": format!("{}/{DB}/{table}", stack.source.url()),
            "destination": format!("{}/{DB}", stack.destination.url()),
            "stagingDirectory": format!("{}/staging/shared-{}", stack.azurite.blob_endpoint(), table.to_lowercase()),
            "exportCount": 3,
        }))
        .await;
        first.extend(engine.start_job(&job).await.unwrap());
        jobs.push(job);
    }
    // Both jobs run at once, each allowed 3 exports: together they still hold one at a time.
    run_job(engine.clone(), first).await;
    assert_eq!(stack.source.with_state(|s| s.throttled_exports), 0, "no export was refused for capacity");
    for (job, table) in jobs.iter().zip(["Events", "Audit"]) {
        assert!(engine.job_finished(job).await.unwrap());
        let (expected, _) = query_rows(&stack.source, DB, &format!("{table} | order by Id asc"));
        let (copied, _) = query_rows(&stack.destination, DB, &format!("{table} | order by Id asc"));
        assert_eq!(copied, expected, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_without_ingestion_time_are_reported_not_silently_skipped() {
    let stack = stack().await;
    seed(&stack.source, DB, "Events", 200, 2, JAN_2024);
    // An extent ingested while the IngestionTime policy was off: its rows have no ingestion time.
    let timeless: Vec<Vec<Value>> = (0..7)
        .map(|i| vec![Value::Long(90_000 + i), Value::String("no-time".into()), Value::DateTime(JAN_2024), Value::Real(1.0), Value::Null])
        .collect();
    stack
        .source
        .seed_extent(DB, "Events", kusto_sim::SeedExtent { rows: timeless, creation_time: JAN_2024, ingestion_time: None, tags: vec![] })
        .unwrap();
    create_destination(&stack.destination, DB, "Events");
    let engine = engine(&stack);
    let job = submit(&engine, events_request(&stack, "timeless")).await;
    let first = engine.start_job(&job).await.unwrap();
    run_job(engine.clone(), first).await;
    let record = engine.activity(&job.id, "default").await.unwrap().unwrap();
    assert_eq!((record.copied_rows, record.rows_without_ingestion_time), (200, 7), "{record:?}");
    let (copied, _) = query_rows(&stack.destination, DB, "Events | order by Id asc");
    assert_eq!(copied.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kc_copy_runs_a_yaml_job_of_several_tables() {
    let stack = stack().await;
    seed(&stack.source, "sales", "Orders", 200, 2, JAN_2024);
    seed(&stack.source, "ops", "Audit", 150, 3, JAN_2024 + 4 * DAY);
    create_destination(&stack.destination, "archive", "Orders");
    let yaml = format!(
        r#"# The original kusto-copy job file schema.
activities:
  - activityName: orders
    source:
      clusterUri: "{src}"
      databaseName: sales
      tableName: Orders
    destination:
      clusterUri: "{dst}"
      databaseName: archive
  - activityName: audit
    source:
      clusterUri: "{src}"
      databaseName: ops
      tableName: Audit
    destination:
      clusterUri: "{dst}"
      databaseName: archive
      tableName: AuditCopy
    kqlQuery: "| where Amount > 10"
stagingStorageDirectories:
  - "{staging}"
exportCount: 2
createDestinationTable: true
"#,
        src = stack.source.url(),
        dst = stack.destination.url(),
        staging = format!("{}/staging/yaml", stack.azurite.blob_endpoint()),
    );
    let file = std::env::temp_dir().join(format!("kc-job-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&file, yaml).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kc"))
        .args(["copy", "-y"])
        .arg(&file)
        .env("KC_CREDENTIAL", "emulator")
        .env("KC_CA_CERT", &stack.azurite.ca_pem_path)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("orders: 200 rows copied") && stdout.contains("audit: "), "{stdout}");
    for (src_db, query, dst) in [("sales", "Orders | order by Id asc", "Orders"), ("ops", "Audit | where Amount > 10 | order by Id asc", "AuditCopy")] {
        let (expected, ages) = query_rows(&stack.source, src_db, query);
        let (copied, _) = query_rows(&stack.destination, "archive", &format!("{dst} | order by Id asc"));
        assert_eq!(copied, expected, "{dst}");
        assert_eq!(rows_by_creation(&stack.destination, "archive", dst), ages, "{dst}");
    }
    assert_no_leftovers(&stack, "archive", &["Orders", "AuditCopy"]).await;
}

//! What the end-to-end copy tests share: the local stack (Azurite and two simulated
//! clusters), a seeded source table, an engine on it, requests, and the checks that a copy
//! was exact and left nothing behind.

use super::{query_rows, rows_by_creation};
use kc_test_stack::Azurite;
use kusto_copy::auth::EmulatorCredential;
use kusto_copy::engine::copy::{CopyEngine, EngineOptions, LiveConnections};
use kusto_copy::engine::local;
use kusto_copy::engine::plan::PlanLimits;
use kusto_copy::job::{record_request, JobRecord, RecordOutcome, RequestPolicy};
use kusto_copy::kusto::{ClientOptions, RetryPolicy};
use kusto_copy::storage::checkpoint::{BlobCheckpointStore, CheckpointStore};
use kusto_sim::{Cluster, ClusterConfig, Column, ScalarType, SeedPlan};
use std::sync::Arc;
use std::time::Duration;

pub const DB: &str = "db";
pub const HOUR: i64 = 3600 * 10_000_000;
pub const DAY: i64 = 24 * HOUR;
pub const JAN_2024: i64 = 1_704_067_200 * 10_000_000;

pub struct Stack {
    pub azurite: Azurite,
    pub source: Cluster,
    pub destination: Cluster,
}

pub async fn stack_with(destination: ClusterConfig) -> Stack {
    stack_with_both(ClusterConfig { async_duration: Duration::from_millis(100), ..ClusterConfig::default() }, destination).await
}

pub async fn stack_with_both(source: ClusterConfig, destination: ClusterConfig) -> Stack {
    let azurite = Azurite::start();
    let ca = Some(std::fs::read(&azurite.ca_pem_path).unwrap());
    let source = Cluster::start("source", ClusterConfig { ca_cert_pem: ca.clone(), ..source }).await.unwrap();
    let destination = Cluster::start("destination", ClusterConfig { ca_cert_pem: ca, ..destination }).await.unwrap();
    Stack { azurite, source, destination }
}

pub async fn stack() -> Stack {
    stack_with(ClusterConfig { async_duration: Duration::from_millis(100), ..ClusterConfig::default() }).await
}

pub fn columns() -> Vec<Column> {
    vec![Column::new("Id", ScalarType::Long), Column::new("Name", ScalarType::String), Column::new("When", ScalarType::DateTime)]
}

/// 600 rows in 6 extents created 30 days apart, one hour of ingestion each: 6+ blocks.
pub fn seed(stack: &Stack) {
    seed_with(stack, SeedPlan {
        rows: 600,
        extents: 6,
        first_creation: JAN_2024,
        creation_step: 30 * DAY,
        first_ingestion: Some(JAN_2024 + 400 * DAY),
        ingestion_step: HOUR,
    });
}

pub fn seed_with(stack: &Stack, plan: SeedPlan) {
    stack.source.seed_table(DB, "Events", &columns(), &plan).unwrap();
    stack.destination.command(DB, ".create table Events (Id:long, Name:string, When:datetime)").unwrap();
}

pub fn options() -> EngineOptions {
    EngineOptions {
        limits: PlanLimits { max_rows: 100, max_creation_spread: time::Duration::days(1), bin: time::Duration::hours(1), bins_per_step: 3 },
        min_poll: Duration::from_millis(50),
        max_poll: Duration::from_millis(400),
        lease: time::Duration::seconds(3),
        orphan_settle: time::Duration::seconds(1),
        ..EngineOptions::default()
    }
}

pub fn connections(stack: &Stack) -> Arc<LiveConnections> {
    let kusto_options = ClientOptions {
        retry: RetryPolicy { base_delay: Duration::from_millis(20), max_delay: Duration::from_millis(200), max_attempts: 2, ..RetryPolicy::default() },
        ..ClientOptions::default()
    };
    Arc::new(LiveConnections::new(Arc::new(EmulatorCredential::default()), Some(stack.azurite.ca_pem_path.clone()), kusto_options))
}

pub fn blob_store(stack: &Stack) -> Arc<dyn CheckpointStore> {
    let clients = super::clients(&stack.azurite);
    Arc::new(BlobCheckpointStore::new(clients.container_without_retries(&super::unique_name("ckpt")).unwrap()))
}

pub fn request(stack: &Stack, job: &str, query: Option<&str>) -> String {
    let mut r = serde_json::json!({
        "jobId": job,
        "source": format!("{}/{DB}/Events", stack.source.url()),
        "destination": format!("{}/{DB}", stack.destination.url()),
        "stagingDirectory": format!("{}/staging/{job}", stack.azurite.blob_endpoint()),
        "exportCount": 2,
    });
    if let Some(q) = query {
        r["query"] = serde_json::Value::String(q.into());
    }
    r.to_string()
}

pub async fn submit(engine: &CopyEngine, text: &str) -> JobRecord {
    match record_request(engine.store().as_ref(), text, time::OffsetDateTime::now_utc(), &RequestPolicy::emulator()).await.unwrap() {
        RecordOutcome::Accepted(job) | RecordOutcome::AlreadyRecorded(job) => job,
        other => panic!("request not accepted: {other:?}"),
    }
}

/// Runs as `kc copy` does until the job is finished; returns how many steps ran.
pub async fn run(engine: &Arc<CopyEngine>, job: &JobRecord, mut on_ran: impl FnMut(&kusto_copy::engine::StepMessage) + Send) -> usize {
    let mut ran = 0;
    let failures = engine
        .run_locally(job, 4, |e| {
            if let local::Event::Ran { message } = e {
                ran += 1;
                on_ran(message);
            }
        })
        .await
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    ran
}

pub fn assert_exact(stack: &Stack) {
    assert_exact_rows(stack, 600);
}

pub fn assert_exact_rows(stack: &Stack, rows: usize) {
    let (expected, _) = query_rows(&stack.source, DB, "Events | order by Id asc");
    let (copied, _) = query_rows(&stack.destination, DB, "Events | order by Id asc");
    assert_eq!(expected.len(), rows);
    assert_eq!(copied, expected, "every row once, every value");
    assert_eq!(rows_by_creation(&stack.source, DB, "Events"), rows_by_creation(&stack.destination, DB, "Events"), "ages kept");
}

pub async fn assert_nothing_left(stack: &Stack) {
    assert!(stack.destination.extents(DB, "Events").unwrap().iter().all(|e| e.tags.is_empty()), "no tag left at the destination");
    let tables = format!("{:?}", stack.destination.command(DB, ".show tables").unwrap().rows);
    assert!(!tables.contains("kc_staging"), "staging table left: {tables}");
    let left = super::containers(&stack.azurite, "kcs-").await;
    assert!(left.is_empty(), "staging folders left: {left:?}");
}


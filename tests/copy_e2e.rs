//! End to end: a table copied between two simulated clusters through staging blobs in
//! Azurite (HTTPS, OAuth, SAS minted by our code), by the copy engine and the in-process
//! driver. Checked row by row, extent creation times included, and nothing left behind.

mod common;

use kc_test_stack::Azurite;
use kusto_copy::auth::EmulatorCredential;
use kusto_copy::engine::copy::{ActivityState, CopyEngine, EngineOptions, LiveConnections};
use kusto_copy::engine::plan::PlanLimits;
use kusto_copy::engine::{local, Engine};
use kusto_copy::job::{record_request, RecordOutcome};
use kusto_copy::kusto::{ClientOptions, RetryPolicy};
use kusto_copy::storage::checkpoint::BlobCheckpointStore;
use kusto_sim::{Cluster, ClusterConfig, Column, ScalarType, SeedPlan, Value};
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
    let clients = common::clients(&stack.azurite);
    let store = Arc::new(BlobCheckpointStore::new(clients.container_without_retries(&common::unique_name("ckpt")).unwrap()));
    let kusto_options = ClientOptions {
        retry: RetryPolicy { base_delay: Duration::from_millis(20), max_delay: Duration::from_millis(200), max_attempts: 4, ..RetryPolicy::default() },
        ..ClientOptions::default()
    };
    let connections = Arc::new(LiveConnections::new(Arc::new(EmulatorCredential::default()), Some(stack.azurite.ca_pem_path.clone()), kusto_options));
    let options = EngineOptions {
        limits: PlanLimits { max_rows: 250, max_creation_spread: time::Duration::days(1), bin: time::Duration::hours(1) },
        min_poll: Duration::from_millis(50),
        max_poll: Duration::from_millis(500),
        ..EngineOptions::default()
    };
    Arc::new(CopyEngine::new(store, connections, options))
}

/// Rows by Id, as debug text of their values (exact, nulls included).
fn rows(cluster: &Cluster, table: &str) -> BTreeMap<i64, String> {
    let frame = cluster.query(DB, &format!("{table} | order by Id asc")).unwrap();
    frame
        .rows
        .iter()
        .map(|r| match &r.values[0] {
            Value::Long(id) => (*id, format!("{:?}", r.values)),
            other => panic!("Id is {other:?}"),
        })
        .collect()
}

/// Rows by extent creation time.
fn rows_by_creation(cluster: &Cluster, table: &str) -> BTreeMap<i64, usize> {
    let mut out = BTreeMap::new();
    for e in cluster.extents(DB, table).unwrap() {
        *out.entry(e.max_created_on).or_default() += e.row_count;
        assert_eq!(e.min_created_on, e.max_created_on);
    }
    out
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
    let RecordOutcome::Accepted(job) = record_request(engine.store().as_ref(), &request, time::OffsetDateTime::now_utc()).await.unwrap() else {
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
    let (src, dst) = (rows(&stack.source, "Events"), rows(&stack.destination, "Events"));
    assert_eq!(src.len(), 1_000);
    assert_eq!(src, dst);
    // Ages preserved: the same rows under the same creation times.
    assert_eq!(rows_by_creation(&stack.source, "Events"), rows_by_creation(&stack.destination, "Events"));
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

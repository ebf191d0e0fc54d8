//! End to end under the host harness: `kc serve` processes driven like the Functions host
//! drives them. Two instances sharing queues and checkpoints, one killed and started again
//! mid-copy; three tables from two databases with a filtering and projecting query and a
//! created destination table; a continuous copy whose second iteration the scheduler's timer
//! starts, with an export and two ingestions failing along the way. Every copy must be exact,
//! row by row, with creation times kept and nothing left behind.

mod common;

use common::host::*;
use kc_host_harness::{Host, Outcome};
use kc_test_stack::Azurite;

use kusto_sim::{Cluster, ClusterConfig, Column, ScalarType, SeedPlan};
use std::sync::Arc;
use std::time::Duration;

const DB: &str = "db";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_and_a_restart_still_copy_exactly() {
    let azurite = Azurite::start();
    let config = ClusterConfig {
        async_duration: Duration::from_millis(300),
        ca_cert_pem: Some(std::fs::read(&azurite.ca_pem_path).unwrap()),
        ..ClusterConfig::default()
    };
    let source = Cluster::start("source", config.clone()).await.unwrap();
    let destination = Cluster::start("destination", config).await.unwrap();
    let columns = vec![Column::new("Id", ScalarType::Long), Column::new("Name", ScalarType::String), Column::new("At", ScalarType::DateTime)];
    source
        .seed_table(DB, "Logs", &columns, &SeedPlan {
            rows: 600,
            extents: 6,
            first_creation: JAN_2023,
            creation_step: 45 * DAY,
            first_ingestion: Some(JAN_2023 + 500 * DAY),
            ingestion_step: 2 * HOUR,
        })
        .unwrap();
    destination.command(DB, ".create table Logs (Id:long, Name:string, At:datetime)").unwrap();

    let (port_a, port_b) = (common::free_port(), common::free_port());
    let mut a = common::spawn_kc_serve(&azurite, port_a);
    let _b = common::spawn_kc_serve(&azurite, port_b);
    common::wait_ready(port_a).await;
    common::wait_ready(port_b).await;
    let urls = [format!("http://127.0.0.1:{port_a}"), format!("http://127.0.0.1:{port_b}")];
    let mut host = Host::load_many(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), &[&urls[0], &urls[1]], common::host_queues(&azurite));
    host.settings.visibility_timeout = Duration::from_secs(1);
    let host = Arc::new(host);

    let request = serde_json::json!({
        "jobId": "harness-copy",
        "source": format!("{}/{DB}/Logs", source.url()),
        "destination": format!("{}/{DB}", destination.url()),
        "stagingDirectory": format!("{}/staging", azurite.blob_endpoint()),
        "exportCount": 2,
    });
    host.queue("kc-requests").await.send(&request.to_string(), Duration::ZERO).await.unwrap();

    // Run until some blocks are under way, then kill instance A and start it again.
    host.run_until(Duration::from_secs(60), |o| o.iter().filter(|x| matches!(x, Outcome::Succeeded { function, .. } if function == "steps")).count() >= 6).await;
    a.kill().await.unwrap();
    let failed_while_down = host.poll_once().await;
    a = common::spawn_kc_serve(&azurite, port_a);
    common::wait_ready(port_a).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let (code, status) = host.http_get("status", &[("job", "harness-copy")]).await;
        assert_eq!(code, 200);
        let state = status["activities"][0]["state"].as_str().unwrap_or_default().to_owned();
        if state == "completed" {
            assert_eq!(status["activities"][0]["copiedRows"], 600, "{status}");
            break;
        }
        assert_ne!(state, "failed", "{status}");
        assert!(tokio::time::Instant::now() < deadline, "copy did not finish: {status}");
        let outcomes = host.poll_once().await;
        assert!(!outcomes.iter().any(|o| matches!(o, Outcome::Poisoned { .. })), "{outcomes:?}");
        if outcomes.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = failed_while_down;
    drop(a);

    let query = "Logs | order by Id asc";
    assert_eq!(common::query_rows(&source, DB, query).0, common::query_rows(&destination, DB, query).0);
    assert_eq!(common::rows_by_creation(&source, DB, "Logs"), common::rows_by_creation(&destination, DB, "Logs"));
    assert!(destination.extents(DB, "Logs").unwrap().iter().all(|e| e.tags.is_empty()));
    let tables = format!("{:?}", destination.command(DB, ".show tables").unwrap().rows);
    assert!(!tables.contains("kc_staging"), "{tables}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_host_three_tables_from_two_databases_one_through_a_query() {
    let h = host_stack().await;
    seed(&h.source, "sales", "Orders", 240, 3, JAN_2023);
    seed(&h.source, "sales", "Returns", 120, 2, JAN_2023 + 5 * DAY);
    seed(&h.source, "ops", "Audit", 200, 2, JAN_2023 + 9 * DAY);
    h.destination.create_database("archive");
    h.destination.command("archive", ".create table Orders (Id:long, Name:string, Amount:real, Props:dynamic)").unwrap();
    h.destination.command("archive", ".create table BigReturns (Id:long, Amount:real)").unwrap();
    let table = |db: &str, t: &str| serde_json::json!({"clusterUri": h.source.url(), "databaseName": db, "tableName": t});
    let dest = |t: &str| serde_json::json!({"clusterUri": h.destination.url(), "databaseName": "archive", "tableName": t});
    let request = serde_json::json!({
        "jobId": "three-tables",
        "activities": [
            {"activityName": "orders", "source": table("sales", "Orders"), "destination": dest("Orders")},
            {"activityName": "returns", "source": table("sales", "Returns"), "destination": dest("BigReturns"),
             "kqlQuery": "| where Amount >= 20 | project Id, Amount"},
            {"activityName": "audit", "source": table("ops", "Audit"), "destination": dest("AuditCopy")}
        ],
        "stagingStorageDirectories": [format!("{}/staging/three", h.azurite.blob_endpoint())],
        "exportCount": 2,
        "createDestinationTable": true
    });
    h.host.queue("kc-requests").await.send(&request.to_string(), Duration::ZERO).await.unwrap();
    run_until_activities(&h, "three-tables", "completed").await;

    assert_same(&h, ("sales", "Orders | order by Id asc"), ("archive", "Orders"));
    assert_same(&h, ("sales", "Returns | where Amount >= 20 | project Id, Amount | order by Id asc"), ("archive", "BigReturns"));
    assert_same(&h, ("ops", "Audit | order by Id asc"), ("archive", "AuditCopy"));
    let tables = format!("{:?}", h.destination.command("archive", ".show tables").unwrap().rows);
    assert!(!tables.contains("kc_staging"), "{tables}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_host_backfill_and_new_and_injected_failures() {
    let h = host_stack().await;
    seed(&h.source, DB, "Events", 300, 3, JAN_2023);
    h.destination.command(DB, ".create table Events (Id:long, Name:string, Amount:real, Props:dynamic)").unwrap();
    // An export fails after writing part of its files; a queued ingestion fails; another adds
    // its data twice.
    h.source.script_fault(Some(kusto_sim::CommandKind::Export), kusto_sim::Fault::ExportPartialFailure, 1);
    h.destination.script_fault(Some(kusto_sim::CommandKind::QueuedIngest), kusto_sim::Fault::IngestionFailure, 1);
    h.destination.script_fault(Some(kusto_sim::CommandKind::QueuedIngest), kusto_sim::Fault::DuplicateIngestion, 2);
    let request = serde_json::json!({
        "jobId": "continuous",
        "source": format!("{}/{DB}/Events", h.source.url()),
        "destination": format!("{}/{DB}", h.destination.url()),
        "stagingDirectory": format!("{}/staging/continuous", h.azurite.blob_endpoint()),
        "copyMode": "BackfillAndNew",
        "iterationPeriod": "1s",
    });
    h.host.queue("kc-requests").await.send(&request.to_string(), Duration::ZERO).await.unwrap();
    let status = run_until_activities(&h, "continuous", "idle").await;
    assert_eq!(status["activities"][0]["copiedRows"], 300, "{status}");
    assert_eq!(h.source.with_state(|s| s.faults.pending()) + h.destination.with_state(|s| s.faults.pending()), 0, "every fault was met");

    // New rows arrive; the scheduler's timer starts the next iteration once the period passed.
    ingest_late(&h.source, DB, 50_000, "late", JAN_2023 + 700 * DAY);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(h.host.fire_timer("scheduler", false).await, Outcome::Succeeded { function: "scheduler".into(), outputs: 1 });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = run_until_activities(&h, "continuous", "idle").await;
        if status["activities"][0]["iteration"] == 2 {
            assert_eq!(status["activities"][0]["copiedRows"], 340, "{status}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        h.host.poll_once().await;
    }
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "Events"));
}

/// "Copy since last copy" through the queue: the same request sent again after a continuous
/// job without a period completed starts the next iteration from the last end cursor; sent
/// with nothing new, it copies an empty window. The status lists every iteration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_host_a_request_sent_again_copies_the_delta() {
    let h = host_stack().await;
    seed(&h.source, DB, "Events", 300, 3, JAN_2023);
    h.destination.command(DB, ".create table Events (Id:long, Name:string, Amount:real, Props:dynamic)").unwrap();
    let request = serde_json::json!({
        "jobId": "delta-by-queue",
        "source": format!("{}/{DB}/Events", h.source.url()),
        "destination": format!("{}/{DB}", h.destination.url()),
        "stagingDirectory": format!("{}/staging/delta", h.azurite.blob_endpoint()),
        "copyMode": "BackfillAndNew",
    })
    .to_string();
    let send_and_wait = |iteration: u64| {
        let (h, request) = (&h, request.clone());
        async move {
            h.host.queue("kc-requests").await.send(&request, Duration::ZERO).await.unwrap();
            run_until_status(h, "delta-by-queue", |a| a[0]["iteration"] == iteration && a[0]["state"] == "completed").await
        }
    };
    let status = send_and_wait(1).await;
    assert_eq!(status["activities"][0]["copiedRows"], 300, "{status}");
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "Events"));

    ingest_late(&h.source, DB, 70_000, "delta", JAN_2023 + 800 * DAY);
    let status = send_and_wait(2).await;
    assert_eq!(status["activities"][0]["copiedRows"], 340, "{status}");
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "Events"));

    // Nothing new: an empty third window, and still every row once.
    let status = send_and_wait(3).await;
    assert_eq!(status["activities"][0]["copiedRows"], 340, "{status}");
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "Events"));

    let iterations = status["activities"][0]["iterations"].as_array().unwrap();
    let rows: Vec<u64> = iterations.iter().map(|i| i["copiedRows"].as_u64().unwrap()).collect();
    assert_eq!(rows, [300, 40, 0], "{status}");
    assert!(iterations[0]["cursorFrom"].is_null(), "the first window starts at the beginning");
    for pair in iterations.windows(2) {
        assert_eq!(pair[1]["cursorFrom"], pair[0]["cursorTo"], "each window starts where the last ended: {status}");
    }
    assert!(iterations.iter().all(|i| i["state"] == "done" && i["finishedAt"].is_string()), "{status}");
    assert_eq!(iterations[1]["firstIngestion"], iterations[1]["lastIngestion"], "the delta's 40 rows share one ingestion time");
    assert!(iterations[2]["firstIngestion"].is_null(), "an empty window has no ingestion times");
}

/// A request dropped on `kc-requests` base64-encoded by the official Python client
/// (`azure-storage-queue` with `TextBase64EncodePolicy`) is copied like a plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_host_a_base64_request_from_the_python_client_is_copied() {
    let h = host_stack().await;
    seed(&h.source, DB, "Events", 200, 2, JAN_2023);
    h.destination.command(DB, ".create table Events (Id:long, Name:string, Amount:real, Props:dynamic)").unwrap();
    h.host.poll_once().await; // the queues exist once the host listens
    let request = serde_json::json!({
        "jobId": "from-python",
        "source": format!("{}/{DB}/Events", h.source.url()),
        "destination": format!("{}/{DB}", h.destination.url()),
        "stagingDirectory": format!("{}/staging/python", h.azurite.blob_endpoint()),
    });
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let token = kusto_copy::auth::EmulatorCredential::default().token_for("https://storage.azure.com", time::OffsetDateTime::now_utc());
    let out = tokio::process::Command::new(repo.join(".venv/bin/python"))
        .arg(repo.join("tests/python/send_request.py"))
        .arg(h.azurite.queue_endpoint())
        .arg("kc-requests")
        .arg(&h.azurite.ca_pem_path)
        .arg(request.to_string())
        .env("KC_TEST_TOKEN", token.token.secret())
        .output()
        .await
        .expect("the test command installs .venv");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = run_until_activities(&h, "from-python", "completed").await;
    assert_eq!(status["activities"][0]["copiedRows"], 200, "{status}");
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "Events"));
}

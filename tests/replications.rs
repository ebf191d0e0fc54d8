//! Replications declared in `KC_REPLICATIONS`, kept by the scheduler of `kc serve` under the
//! host harness: one job per name, across restarts; a changed definition replaces its job;
//! a removed name stops it; an instance still on older settings changes nothing.

mod common;

use common::host::*;
use std::time::Duration;

const DB: &str = "db";

fn settings(replications: serde_json::Value, version: u64) -> Vec<(&'static str, String)> {
    vec![("KC_REPLICATIONS", replications.to_string()), ("KC_REPLICATIONS_VERSION", version.to_string())]
}

/// Job ids and their records, as the status function lists them.
async fn jobs(h: &HostStack) -> Vec<serde_json::Value> {
    let (code, all) = h.host.http_get("status", &[]).await;
    assert_eq!(code, 200, "{all}");
    all["jobs"].as_array().cloned().unwrap_or_default()
}

async fn status(h: &HostStack, job: &str) -> serde_json::Value {
    h.host.http_get("status", &[("job", job)]).await.1
}

/// Fires the timer, then delivers until nothing is left to deliver for a moment.
async fn tick_and_settle(h: &HostStack) {
    assert!(matches!(h.host.fire_timer("scheduler", false).await, kc_host_harness::Outcome::Succeeded { .. }));
    let mut quiet = 0;
    while quiet < 5 {
        if h.host.poll_once().await.is_empty() {
            quiet += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            quiet = 0;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declared_replication_is_one_job_across_restarts_and_changes() {
    let mut h = host_stack().await;
    seed(&h.source, DB, "Events", 300, 3, JAN_2023);
    h.destination.command(DB, ".create table Events (Id:long, Name:string, Amount:real, Props:dynamic)").unwrap();
    let (source, destination, staging) = (h.source.url().to_string(), h.destination.url().to_string(), format!("{}/staging/replication", h.azurite.blob_endpoint()));
    let replication = |table: &str| {
        serde_json::json!({
            "name": "events",
            "source": format!("{source}/{DB}/Events"),
            "destination": format!("{destination}/{DB}/{table}"),
            "stagingDirectory": staging,
            "copyMode": "BackfillAndNew",
            "iterationPeriod": "1h",
            "createDestinationTable": true,
        })
    };
    let v1 = settings(serde_json::json!([replication("Events")]), 1);
    h.restart(&v1).await;

    // The first tick records the job and starts it; it runs to the end of its first iteration.
    tick_and_settle(&h).await;
    let listed = jobs(&h).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let first = listed[0]["id"].as_str().unwrap().to_owned();
    assert!(first.starts_with("events-"), "{first}");
    let s = run_until_activities(&h, &first, "idle").await;
    assert_eq!((s["activities"][0]["iteration"].as_u64(), s["activities"][0]["copiedRows"].as_u64()), (Some(1), Some(300)), "{s}");

    // Restarted with the same settings, ticking again: still one job, no new iteration.
    h.restart(&v1).await;
    tick_and_settle(&h).await;
    tick_and_settle(&h).await;
    assert_eq!(jobs(&h).await.len(), 1);
    let s = status(&h, &first).await;
    assert_eq!((s["activities"][0]["iteration"].as_u64(), s["activities"][0]["state"].as_str()), (Some(1), Some("idle")), "{s}");
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "Events"));

    // A changed definition (another destination table): the old job is cancelled, a new one
    // copies into the new table; the old table keeps its rows once.
    let v2 = settings(serde_json::json!([replication("EventsV2")]), 2);
    h.restart(&v2).await;
    tick_and_settle(&h).await;
    let listed = jobs(&h).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let second = listed.iter().map(|j| j["id"].as_str().unwrap().to_owned()).find(|id| id != &first).unwrap();
    assert!(second.starts_with("events-"));
    assert_eq!(status(&h, &first).await["activities"][0]["state"], "cancelled");
    run_until_activities(&h, &second, "idle").await;
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "Events"));
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "EventsV2"));

    // An instance still on the old settings changes nothing: the old job stays cancelled and
    // the new one runs on.
    h.restart(&v1).await;
    tick_and_settle(&h).await;
    assert_eq!(jobs(&h).await.len(), 2);
    assert_eq!(status(&h, &first).await["activities"][0]["state"], "cancelled");
    assert_eq!(status(&h, &second).await["activities"][0]["state"], "idle");

    // Removed: its job is cancelled, and stays so.
    let v3 = settings(serde_json::json!([]), 3);
    h.restart(&v3).await;
    tick_and_settle(&h).await;
    assert_eq!(status(&h, &second).await["activities"][0]["state"], "cancelled");
    h.restart(&v2).await; // an instance with the settings before the removal
    tick_and_settle(&h).await;
    assert_eq!(status(&h, &second).await["activities"][0]["state"], "cancelled");
    assert_eq!(jobs(&h).await.len(), 2);
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "EventsV2"));
    let tables = format!("{:?}", h.destination.command(DB, ".show tables").unwrap().rows);
    assert!(!tables.contains("kc_staging"), "{tables}");
}

/// A malformed KC_REPLICATIONS stops `kc serve` at start-up, naming the setting.
#[tokio::test]
async fn a_malformed_declaration_stops_kc_serve_with_the_reason() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kc"))
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", common::free_port().to_string())
        .env("KC_BLOB_ENDPOINT", "https://127.0.0.1:1/devstoreaccount1")
        .env("KC_QUEUE_ENDPOINT", "https://127.0.0.1:1/devstoreaccount1")
        .env("KC_CREDENTIAL", "emulator")
        .env("KC_REPLICATIONS", r#"[{"source": "https://a.kusto.windows.net/db/T"}]"#)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("KC_REPLICATIONS") && stderr.contains("\"name\""), "{stderr}");
}

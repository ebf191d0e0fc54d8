//! End to end under the host harness: `kc serve` processes driven like the Functions host
//! drives them, two instances sharing queues and checkpoints, one of them killed and started
//! again mid-copy. The copy must still be exact, with creation times kept.

mod common;

use common::harness::{Host, Outcome};
use kc_test_stack::Azurite;
use kusto_copy::storage::queue::MessageSender;
use kusto_sim::{Cluster, ClusterConfig, Column, ScalarType, SeedPlan};
use std::sync::Arc;
use std::time::Duration;

const DB: &str = "db";
const HOUR: i64 = 3600 * 10_000_000;
const DAY: i64 = 24 * HOUR;
const JAN_2023: i64 = 1_672_531_200 * 10_000_000;

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
    let mut host = Host::load_many(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), &[&urls[0], &urls[1]], common::clients(&azurite));
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
        let state = status["activities"]["default"]["state"].as_str().unwrap_or_default().to_owned();
        if state == "completed" {
            assert_eq!(status["activities"]["default"]["copiedRows"], 600, "{status}");
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

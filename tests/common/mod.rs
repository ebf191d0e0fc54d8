//! Shared by the integration tests: clients for a test Azurite, on the production token path.
#![allow(dead_code)]

pub mod copy;
pub mod host;
#[path = "../../tools/serverless-demo/src/queues.rs"]
mod queues;

use kc_host_harness::QueueService;
use kc_test_stack::Azurite;
use kusto_copy::auth::EmulatorCredential;
use kusto_copy::storage::clients::{RetryBudget, StorageClients};
use std::sync::Arc;

pub fn clients(azurite: &Azurite) -> StorageClients {
    StorageClients::new(
        azurite.blob_endpoint().parse().unwrap(),
        azurite.queue_endpoint().parse().unwrap(),
        Some(Arc::new(EmulatorCredential::default())),
        Some(&azurite.ca_pem_path),
        RetryBudget::LOCAL,
    )
    .expect("clients for Azurite")
}

/// The names of this Azurite's containers that start with `prefix`.
pub async fn containers(azurite: &Azurite, prefix: &str) -> Vec<String> {
    let service = clients(azurite).blob_service().unwrap();
    let mut pages = service.list_containers(None).unwrap().into_pages();
    let mut names = Vec::new();
    while let Some(page) = futures::TryStreamExt::try_next(&mut pages).await.unwrap() {
        names.extend(page.into_model().unwrap().container_items.into_iter().filter_map(|c| c.name).filter(|n| n.starts_with(prefix)));
    }
    names
}

/// A fresh, unique name for a container or queue, so tests sharing an Azurite never collide.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `kc serve` as the Functions host starts it, on Azurite with the emulator credential.
pub fn spawn_kc_serve(azurite: &Azurite, port: u16) -> tokio::process::Child {
    spawn_kc_serve_with(azurite, port, &[])
}

/// `kc serve` with more settings (replications, say).
pub fn spawn_kc_serve_with(azurite: &Azurite, port: u16, settings: &[(&str, String)]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kc"))
        .arg("serve")
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("KC_BLOB_ENDPOINT", azurite.blob_endpoint())
        .env("KC_QUEUE_ENDPOINT", azurite.queue_endpoint())
        .env("KC_CREDENTIAL", "emulator")
        .env("KC_CA_CERT", &azurite.ca_pem_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits for the readiness probe to answer, as the host does.
pub async fn wait_ready(port: u16) {
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("http://127.0.0.1:{port}/")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("kc serve on {port} never became ready");
}

/// Rows of a table in a simulated cluster by extent creation time.
pub fn rows_by_creation(cluster: &kusto_sim::Cluster, db: &str, table: &str) -> std::collections::BTreeMap<i64, usize> {
    let mut out = std::collections::BTreeMap::new();
    for e in cluster.extents(db, table).unwrap() {
        assert_eq!(e.min_created_on, e.max_created_on, "one creation time per copied extent");
        *out.entry(e.max_created_on).or_default() += e.row_count;
    }
    out
}

/// Rows of a query as exact text keyed by their first column (a long `Id`), and how many sit
/// in extents of each creation time. Decimals compare by value (1.50 is 1.5: Parquet keeps
/// the number, not the way its text was written).
pub fn query_rows(cluster: &kusto_sim::Cluster, db: &str, query: &str) -> (std::collections::BTreeMap<i64, String>, std::collections::BTreeMap<i64, usize>) {
    use kusto_sim::Value;
    let frame = cluster.query(db, query).unwrap();
    let table = query.split_whitespace().next().unwrap();
    let created: std::collections::HashMap<uuid::Uuid, i64> = cluster.extents(db, table).unwrap().into_iter().map(|e| (e.id, e.max_created_on)).collect();
    let mut by_id = std::collections::BTreeMap::new();
    let mut by_creation = std::collections::BTreeMap::new();
    for r in &frame.rows {
        let Value::Long(id) = r.values[0] else { panic!("Id first") };
        let values: Vec<Value> = r
            .values
            .iter()
            .cloned()
            .map(|v| match v {
                Value::Decimal(text) if text.contains('.') => Value::Decimal(text.trim_end_matches('0').trim_end_matches('.').to_owned()),
                other => other,
            })
            .collect();
        by_id.insert(id, format!("{values:?}"));
        if let Some(meta) = &r.meta {
            *by_creation.entry(created[&meta.extent_id]).or_default() += 1;
        }
    }
    (by_id, by_creation)
}

/// The harness (`kc-host-harness`) over this Azurite: the host's queue service. The adapter
/// is the serverless demo's, shared as a source file (a crate dependency would be a cycle).
pub fn host_queues(azurite: &Azurite) -> Arc<dyn QueueService> {
    queues::host_queues(clients(azurite))
}

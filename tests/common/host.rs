//! One `kc serve` under the host harness, over Azurite and two simulated clusters: what the
//! tests of the serverless path share.

use kc_host_harness::{Host, Outcome};
use kc_test_stack::Azurite;
use kusto_sim::{Cluster, ClusterConfig, Column, ScalarType, SeedPlan};
use std::sync::Arc;
use std::time::Duration;

pub const HOUR: i64 = 3600 * 10_000_000;
pub const DAY: i64 = 24 * HOUR;
pub const JAN_2023: i64 = 1_672_531_200 * 10_000_000;

/// Azurite, two simulated clusters and one `kc serve` under the harness.
pub struct HostStack {
    pub azurite: Azurite,
    pub source: Cluster,
    pub destination: Cluster,
    pub host: Arc<Host>,
    pub kc: tokio::process::Child,
    pub port: u16,
}

impl HostStack {
    /// Stops `kc serve` and starts it again on the same port with `settings`, as the host
    /// restarts a worker after a settings change.
    pub async fn restart(&mut self, settings: &[(&str, String)]) {
        self.kc.kill().await.unwrap();
        self.kc = super::spawn_kc_serve_with(&self.azurite, self.port, settings);
        super::wait_ready(self.port).await;
    }
}

pub async fn host_stack() -> HostStack {
    host_stack_with(&[]).await
}

pub async fn host_stack_with(settings: &[(&str, String)]) -> HostStack {
    let azurite = Azurite::start();
    let config = ClusterConfig {
        async_duration: Duration::from_millis(200),
        ca_cert_pem: Some(std::fs::read(&azurite.ca_pem_path).unwrap()),
        ..ClusterConfig::default()
    };
    let source = Cluster::start("source", config.clone()).await.unwrap();
    let destination = Cluster::start("destination", config).await.unwrap();
    let port = super::free_port();
    let kc = super::spawn_kc_serve_with(&azurite, port, settings);
    super::wait_ready(port).await;
    let mut host = Host::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), &format!("http://127.0.0.1:{port}"), super::host_queues(&azurite));
    host.settings.visibility_timeout = Duration::from_secs(1);
    HostStack { azurite, source, destination, host: Arc::new(host), kc, port }
}

pub fn seed(cluster: &Cluster, db: &str, table: &str, rows: usize, extents: usize, first_creation: i64) {
    cluster.create_database(db);
    let columns = vec![
        Column::new("Id", ScalarType::Long),
        Column::new("Name", ScalarType::String),
        Column::new("Amount", ScalarType::Real),
        Column::new("Props", ScalarType::Dynamic),
    ];
    cluster
        .seed_table(db, table, &columns, &SeedPlan {
            rows,
            extents,
            first_creation,
            creation_step: 30 * DAY,
            first_ingestion: Some(JAN_2023 + 600 * DAY),
            ingestion_step: HOUR,
        })
        .unwrap();
}

/// 40 rows with ids from `first_id` into `db.Events` (the [`seed`] columns), in one extent
/// created at `creation_time` and ingested after everything [`seed`] made.
pub fn ingest_late(cluster: &Cluster, db: &str, first_id: i64, label: &str, creation_time: i64) {
    let rows = (0..40)
        .map(|i| {
            vec![
                kusto_sim::Value::Long(first_id + i),
                kusto_sim::Value::String(format!("{label}-{i}")),
                kusto_sim::Value::Real(i as f64),
                kusto_sim::Value::Dynamic(serde_json::json!({label: i})),
            ]
        })
        .collect();
    cluster.seed_extent(db, "Events", kusto_sim::SeedExtent { rows, creation_time, ingestion_time: Some(JAN_2023 + 900 * DAY), tags: vec![] }).unwrap();
}

/// Delivers messages until every activity of the job reaches `state` (or fails the test).
pub async fn run_until_activities(h: &HostStack, job: &str, state: &str) -> serde_json::Value {
    run_until_status(h, job, |activities| activities.iter().all(|a| a["state"] == state)).await
}

/// Delivers messages until the job's status (the `status` function's answer) has activities
/// and `done` holds for them; fails the test on a failed activity or a poisoned message.
pub async fn run_until_status(h: &HostStack, job: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let (code, status) = h.host.http_get("status", &[("job", job)]).await;
        // 404 until the request itself has been delivered.
        assert!(code == 200 || code == 404, "{status}");
        let activities = status["activities"].as_array().cloned().unwrap_or_default();
        assert!(!activities.iter().any(|a| a["state"] == "failed"), "{status}");
        if !activities.is_empty() && done(&activities) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {job} did not get there: {status}");
        let outcomes = h.host.poll_once().await;
        assert!(!outcomes.iter().any(|o| matches!(o, Outcome::Poisoned { .. })), "{outcomes:?}");
        if outcomes.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn assert_same(h: &HostStack, (src_db, src_query): (&str, &str), (dst_db, dst_table): (&str, &str)) {
    let (expected, ages) = super::query_rows(&h.source, src_db, src_query);
    let (copied, _) = super::query_rows(&h.destination, dst_db, &format!("{dst_table} | order by Id asc"));
    assert_eq!(copied.len(), expected.len(), "{dst_table}: row count");
    assert_eq!(copied, expected, "{dst_table}: every row, every column");
    assert_eq!(super::rows_by_creation(&h.destination, dst_db, dst_table), ages, "{dst_table}: creation times");
    assert!(h.destination.extents(dst_db, dst_table).unwrap().iter().all(|e| e.tags.is_empty()), "{dst_table}: tags left");
}


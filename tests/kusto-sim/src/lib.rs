//! kusto-sim: an in-memory Kusto cluster for tests.
//!
//! It speaks the documented REST protocol (v1 management answers, v2 query frames, Kusto's
//! error JSON), checks bearer-token audiences, keeps databases, typed tables, extents with
//! creation/ingestion times and tags, cursors and an operations log, runs a KQL subset with a
//! real tokenizer/parser/evaluator, and injects faults on demand. See README.md for the subset
//! and its limits.
//!
//! # Layout
//! - `server`: the HTTP endpoints of one cluster; `auth`: bearer audience check.
//! - `wire/`: v1 and v2 answers and the error JSON (the one error type of the HTTP boundary).
//! - `model/`: values and types, tables and extents, the cluster state.
//! - `kql/`: lexer, parser, AST, evaluator, scalar functions.
//! - `commands/`: management command parser and handlers (show, schema, data).
//! - `ops`: the operations log; `faults`: the fault plan; `seed`: data seeding.
//! - `blob`: blob I/O behind a trait; `parquet_io`: Parquet as Kusto writes and reads it;
//!   `queued`: the ingest-v2 queued ingestion endpoints; `control`: test-only HTTP endpoints
//!   for faults and extents, for tests that run the binary.
//! - `Cluster` (below): a running cluster that tests start, seed, break and inspect.

pub mod auth;
pub mod blob;
pub mod commands;
pub mod control;
pub mod csv_io;
pub mod faults;
pub mod ids;
pub mod kql;
pub mod model;
pub mod ops;
pub mod parquet_io;
pub mod queued;
pub mod seed;
pub mod server;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

pub use faults::{request_label, CommandKind, Fault};
pub use kql::eval::Frame;
pub use model::cluster::{drawn_duration, ClusterConfig, ClusterState, SimClock, Spread};
pub use model::table::Column;
pub use model::value::{ScalarType, Value};
pub use seed::{SeedExtent, SeedPlan};
pub use wire::error::KustoError;

use commands::{lock, Shared};

/// What tests see of an extent.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtentInfo {
    pub id: Uuid,
    pub row_count: usize,
    pub min_created_on: i64,
    pub max_created_on: i64,
    pub tags: Vec<String>,
    pub ingestion_times: Vec<Option<i64>>,
}

/// A running simulated cluster, listening on its own port.
pub struct Cluster {
    name: String,
    url: String,
    state: Shared,
    /// The HTTP server; `None` for a cluster reached in-process only.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// Starts a cluster on 127.0.0.1 with a free port.
    pub async fn start(name: &str, config: ClusterConfig) -> std::io::Result<Cluster> {
        Cluster::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr, config: ClusterConfig) -> std::io::Result<Cluster> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let url = format!("http://127.0.0.1:{port}");
        let cluster = ClusterState::new(name, &url, config).map_err(std::io::Error::other)?;
        let state: Shared = Arc::new(Mutex::new(cluster));
        let app = server::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("kusto-sim server stopped: {e}");
            }
        });
        Ok(Cluster { name: name.to_string(), url, state, task: Some(task) })
    }

    /// A cluster that listens nowhere: requests reach it through [`Cluster::router`] in the
    /// same process (the fault explorer's clusters, in virtual time). `uri` is the name
    /// clients use for it and the audience its tokens must carry.
    pub fn in_process(name: &str, uri: &str, config: ClusterConfig) -> Result<Cluster, String> {
        let cluster = ClusterState::new(name, uri, config)?;
        Ok(Cluster { name: name.to_string(), url: uri.to_string(), state: Arc::new(Mutex::new(cluster)), task: None })
    }

    /// The cluster's HTTP endpoints as a service, to call without a socket.
    pub fn router(&self) -> axum::Router {
        server::router(self.state.clone())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster URI: the base URL of its endpoints and the audience tokens must carry.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A token this cluster accepts (unsigned JWT with the right audience).
    pub fn token(&self) -> String {
        auth::mint_token(&self.url)
    }

    /// Runs a closure on the state (inspection, seeding, configuration).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// Runs a management command in-process (no HTTP, no auth, no request-level faults).
    pub fn command(&self, db: &str, csl: &str) -> Result<Frame, KustoError> {
        commands::execute_command(&self.state, db, csl)
    }

    /// Runs any management command in-process, including `.export` and `.ingest` from blobs.
    pub async fn command_async(&self, db: &str, csl: &str) -> Result<Frame, KustoError> {
        commands::execute_command_async(&self.state, db, csl).await
    }

    /// Replaces the blob store (tests use [`blob::MemoryBlobStore`] to run without storage).
    pub fn set_blob_store(&self, store: Arc<dyn blob::BlobStore>) {
        self.with_state(|s| s.blobs = store);
    }

    /// Runs a query in-process.
    pub fn query(&self, db: &str, kql: &str) -> Result<Frame, KustoError> {
        self.query_with_parameters(db, kql, &[])
    }

    /// Runs a query with request parameters (for `declare query_parameters`).
    pub fn query_with_parameters(&self, db: &str, kql: &str, parameters: &[(&str, &str)]) -> Result<Frame, KustoError> {
        let s = lock(&self.state);
        s.database(db)?;
        let catalog = s.catalog(db);
        let mut env = kql::eval::Env::new(&catalog, s.now(), s.cursor_current());
        env.parameters = parameters.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(kql::eval::run_query(kql, &env)?)
    }

    /// The next `times` requests of `kind` (any when `None`) meet `fault`.
    pub fn script_fault(&self, kind: Option<CommandKind>, fault: Fault, times: u32) {
        self.with_state(|s| s.faults.script(kind, fault, times));
    }

    /// Requests of `kind` meet `fault` with a probability, from a seeded generator.
    pub fn random_faults(&self, seed: u64, kind: Option<CommandKind>, fault: Fault, probability: f64) {
        self.with_state(|s| s.faults.random(seed, kind, fault, probability));
    }

    /// As [`Cluster::random_faults`], firing at most `max` times.
    pub fn random_faults_at_most(&self, seed: u64, kind: Option<CommandKind>, fault: Fault, probability: f64, max: u32) {
        self.with_state(|s| s.faults.random_at_most(seed, kind, fault, probability, max));
    }

    pub fn clear_faults(&self) {
        self.with_state(|s| s.faults.clear());
    }

    /// Moves the cluster's clock forward (e.g. to age operation records out).
    pub fn advance_clock(&self, by: Duration) {
        self.with_state(|s| s.clock_offset += by.as_nanos() as i64 / 100);
    }

    /// Declares a materialized view over `source` (listed by `.show materialized-views`; not
    /// materialized).
    pub fn add_materialized_view(&self, db: &str, name: &str, source: &str, query: &str) -> Result<(), KustoError> {
        let mut s = lock(&self.state);
        let d = s.databases.get_mut(db).ok_or_else(|| KustoError::not_found("Database", db))?;
        d.materialized_views.push(model::table::MaterializedView { name: name.into(), source_table: source.into(), query: query.into(), is_enabled: true });
        Ok(())
    }

    pub fn create_database(&self, db: &str) {
        self.with_state(|s| {
            s.databases.entry(db.to_string()).or_insert_with(|| model::table::Database::new(db));
        });
    }

    pub fn seed_table(&self, db: &str, table: &str, columns: &[Column], plan: &SeedPlan) -> Result<Vec<Uuid>, KustoError> {
        self.with_state(|s| s.seed_table(db, table, columns, plan))
    }

    pub fn seed_extent(&self, db: &str, table: &str, extent: SeedExtent) -> Result<Uuid, KustoError> {
        self.with_state(|s| s.seed_extent(db, table, extent))
    }

    /// The extents of a table, in storage order.
    pub fn extents(&self, db: &str, table: &str) -> Result<Vec<ExtentInfo>, KustoError> {
        self.with_state(|s| {
            Ok(s.table(db, table)?
                .extents
                .iter()
                .map(|e| ExtentInfo {
                    id: e.id,
                    row_count: e.row_count(),
                    min_created_on: e.min_created_on,
                    max_created_on: e.max_created_on,
                    tags: e.tags.clone(),
                    ingestion_times: e.ingestion_times.clone(),
                })
                .collect())
        })
    }

    /// Merges the table's mergeable extents now (extent ids change).
    pub fn merge_extents(&self, db: &str, table: &str) -> Result<(), KustoError> {
        self.with_state(|s| s.merge_extents(db, table))
    }

    /// Stops listening.
    pub fn shutdown(self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Several named clusters from one process (e.g. `source` and `destination`).
pub struct Simulator {
    pub clusters: Vec<Cluster>,
}

impl Simulator {
    pub async fn start(names: &[&str], config: ClusterConfig) -> std::io::Result<Simulator> {
        let mut clusters = Vec::new();
        for n in names {
            clusters.push(Cluster::start(n, config.clone()).await?);
        }
        Ok(Simulator { clusters })
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

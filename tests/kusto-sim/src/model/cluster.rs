//! One simulated cluster's state: databases, the ingestion clock behind cursors, the
//! operations log, capacity settings and the fault plan.

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;

use super::table::{Column, Database, Extent, Table};
use super::value::{ticks_from_offset_datetime, Value, TICKS_PER_SECOND};
use crate::faults::{CommandKind, FaultPlan};
use crate::kql::eval::{Catalog, Frame, Row, RowMeta};
use crate::kql::functions::ticks_to_cursor;
use crate::kql::KqlError;
use crate::ops::OperationLog;
use crate::wire::error::KustoError;

/// Knobs that make the simulator slow, small or forgetful on purpose.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How long an async operation (export, ingest, move) stays InProgress, unless
    /// `durations` names its kind.
    pub async_duration: Duration,
    /// Per command kind (export, ingest, queued ingestion, move, ...): how long its async
    /// operation runs.
    pub durations: BTreeMap<CommandKind, Duration>,
    /// Where the cluster reads the time; the machine's clock by default. The fault explorer
    /// gives it the virtual clock its engine runs on.
    pub clock: SimClock,
    /// The `DataExport` capacity: concurrent exports beyond it are throttled.
    pub export_capacity: usize,
    /// The audience tokens must carry, when not the cluster's URI (as a cluster that wants
    /// the Kusto service's resource id): `/v1/rest/auth/metadata` names it.
    pub audience: Option<String>,
    /// `.show capacity` is refused (403), as for a principal without AllDatabasesMonitor
    /// (management/show-capacity-command); exports are still throttled beyond the capacity.
    pub capacity_hidden: bool,
    /// How long operation records stay in `.show operations` (about 6 h on real clusters).
    pub operation_retention: Duration,
    /// The database created at start, so a fresh cluster is usable at once.
    pub default_database: String,
    /// An extra root CA (PEM) for HTTPS blob storage, e.g. the test stack's self-signed one.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// How long after an extent's newest ingestion (or move) the extent tags retention policy
    /// may act on it. The docs: tags are never deleted before the period is exceeded, "but
    /// deletion isn't immediate following that point".
    pub tag_retention_lag: Duration,
    /// When set, each async operation's duration is drawn around its kind's mean instead of
    /// being the mean ([`drawn_duration`]): the benchmark's operations of uneven length.
    pub spread: Option<Spread>,
}

/// Durations drawn uniformly in `mean * (1 ± fraction)`, from a seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub seed: u64,
    pub fraction: f64,
}

impl ClusterConfig {
    /// How long an async operation of `kind` runs, on average.
    pub fn duration(&self, kind: CommandKind) -> Duration {
        self.durations.get(&kind).copied().unwrap_or(self.async_duration)
    }
}

/// The duration of the `ordinal`-th (from 0) async operation of `kind` a cluster starts:
/// a pure function of the seed, so a benchmark computes the ideal schedule of the very
/// durations the cluster will use.
pub fn drawn_duration(mean: Duration, spread: Spread, kind: CommandKind, ordinal: u64) -> Duration {
    // splitmix64 over (seed, kind, ordinal): independent, repeatable draws.
    let mut z = spread.seed ^ ((kind as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ ordinal.wrapping_mul(0xd1b5_4a32_d192_ed03);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    mean.mul_f64((1.0 + spread.fraction * (2.0 * unit - 1.0)).max(0.0))
}

/// A source of the current time (the machine's, or a virtual one).
#[derive(Clone, Default)]
pub struct SimClock(Option<std::sync::Arc<dyn Fn() -> time::OffsetDateTime + Send + Sync>>);

impl SimClock {
    pub fn new(now: impl Fn() -> time::OffsetDateTime + Send + Sync + 'static) -> SimClock {
        SimClock(Some(std::sync::Arc::new(now)))
    }
    pub fn now(&self) -> time::OffsetDateTime {
        match &self.0 {
            Some(f) => f(),
            None => time::OffsetDateTime::now_utc(),
        }
    }
}

impl std::fmt::Debug for SimClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "SimClock(injected)" } else { "SimClock(system)" })
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            async_duration: Duration::from_millis(200),
            durations: BTreeMap::new(),
            clock: SimClock::default(),
            export_capacity: 2,
            capacity_hidden: false,
            audience: None,
            operation_retention: Duration::from_secs(6 * 3600),
            default_database: "db".into(),
            ca_cert_pem: None,
            tag_retention_lag: Duration::from_secs(30),
            spread: None,
        }
    }
}

pub struct ClusterState {
    pub name: String,
    pub uri: String,
    pub databases: BTreeMap<String, Database>,
    pub operations: OperationLog,
    pub config: ClusterConfig,
    pub faults: FaultPlan,
    /// The last ingestion time handed out: ingestion times only grow, so cursors are exact.
    pub last_ingestion: i64,
    /// Exports refused because the `DataExport` capacity was in use (tests check that a
    /// client's flow control keeps this at zero).
    pub throttled_exports: u64,
    /// Shifts the cluster's clock (tests use it to age operation records).
    pub clock_offset: i64,
    pub started_on: i64,
    /// Where export writes and ingestion reads.
    pub blobs: crate::commands::storage::Blobs,
    /// Queued (ingest-v2) ingestions and their per-blob status.
    pub queued: crate::queued::QueuedLog,
    /// Requests that sent `queryconsistency`: (the request text's first word, the value).
    pub consistency_log: Vec<(String, String)>,
    /// Async operations started so far, per kind (the ordinal of the next duration drawn).
    pub operations_started: BTreeMap<CommandKind, u64>,
    /// Requests answered past authentication, by [`crate::faults::request_label`]: what a
    /// benchmark counts per block.
    pub requests: BTreeMap<String, u64>,
}

impl ClusterState {
    /// The audience a bearer token must carry.
    pub fn audience(&self) -> String {
        self.config.audience.clone().unwrap_or_else(|| self.uri.clone())
    }

    /// Fails only when the configured CA certificate is not valid PEM.
    pub fn new(name: &str, uri: &str, config: ClusterConfig) -> Result<ClusterState, String> {
        let blobs = std::sync::Arc::new(crate::blob::HttpBlobStore::new(config.ca_cert_pem.as_deref())?);
        let mut databases = BTreeMap::new();
        databases.insert(config.default_database.clone(), Database::new(config.default_database.clone()));
        let now = ticks_from_offset_datetime(config.clock.now());
        Ok(ClusterState {
            name: name.into(),
            uri: uri.into(),
            databases,
            operations: OperationLog::default(),
            config,
            faults: FaultPlan::default(),
            last_ingestion: 0,
            throttled_exports: 0,
            clock_offset: 0,
            started_on: now,
            blobs,
            queued: Default::default(),
            consistency_log: Vec::new(),
            operations_started: BTreeMap::new(),
            requests: BTreeMap::new(),
        })
    }

    /// How long the async operation of `kind` starting now runs: the kind's mean, or with a
    /// [`Spread`] the next draw around it.
    pub fn next_duration(&mut self, kind: CommandKind) -> Duration {
        let ordinal = self.operations_started.entry(kind).or_default();
        let n = *ordinal;
        *ordinal += 1;
        let mean = self.config.duration(kind);
        match self.config.spread {
            Some(spread) => drawn_duration(mean, spread, kind, n),
            None => mean,
        }
    }

    pub fn now(&self) -> i64 {
        ticks_from_offset_datetime(self.config.clock.now()) + self.clock_offset
    }

    /// The extent tags retention policy at work: a tag matching a policy's `TagPrefix` is
    /// removed once the extent's creation time is older than its `RetentionPeriod` (and the
    /// extent has sat for `tag_retention_lag`). A table's policy overrides its database's.
    /// Removing a tag rewrites the extent under a new id, as `.drop extent tags` does.
    /// Docs: management/extent-tags-retention-policy.
    pub fn apply_tag_retention(&mut self) {
        let now = self.now();
        let lag = (self.config.tag_retention_lag.as_nanos() / 100) as i64;
        for db in self.databases.values_mut() {
            let db_policy = db.policies.get("extent_tags_retention").cloned();
            for table in db.tables.values_mut() {
                let Some(policy) = table.policies.get("extent_tags_retention").cloned().or_else(|| db_policy.clone()) else { continue };
                let rules: Vec<(String, i64)> = policy
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| {
                                let prefix = r.get("TagPrefix")?.as_str()?.to_owned();
                                let period = super::value::parse_timespan(r.get("RetentionPeriod")?.as_str()?)?;
                                Some((prefix, period))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                for e in table.extents.iter_mut() {
                    let settled = e.ingestion_times.iter().flatten().max().is_none_or(|t| t + lag <= now);
                    let before = e.tags.len();
                    e.tags.retain(|tag| !(settled && rules.iter().any(|(prefix, period)| tag.starts_with(prefix.as_str()) && e.max_created_on + period <= now)));
                    if e.tags.len() != before {
                        e.id = crate::ids::new_uuid();
                    }
                }
            }
        }
    }

    /// A fresh ingestion time, strictly after every earlier one.
    pub fn next_ingestion_time(&mut self) -> i64 {
        let t = self.now().max(self.last_ingestion + 1);
        self.last_ingestion = t;
        t
    }

    pub fn cursor_current(&self) -> String {
        ticks_to_cursor(self.last_ingestion)
    }

    pub fn retention_ticks(&self) -> i64 {
        self.config.operation_retention.as_secs() as i64 * TICKS_PER_SECOND
    }

    pub fn database(&self, db: &str) -> Result<&Database, KustoError> {
        self.databases.get(db).ok_or_else(|| KustoError::not_found("Database", db))
    }

    pub fn database_mut(&mut self, db: &str) -> Result<&mut Database, KustoError> {
        self.databases.get_mut(db).ok_or_else(|| KustoError::not_found("Database", db))
    }

    pub fn table(&self, db: &str, table: &str) -> Result<&Table, KustoError> {
        self.database(db)?.tables.get(table).ok_or_else(|| KustoError::not_found("Table", table))
    }

    pub fn table_mut(&mut self, db: &str, table: &str) -> Result<&mut Table, KustoError> {
        self.database_mut(db)?.tables.get_mut(table).ok_or_else(|| KustoError::not_found("Table", table))
    }

    /// Appends rows as one new extent, as an ingestion does. Returns the extent id.
    /// `ingestion_time` is taken from the clock unless the table's IngestionTime policy is off.
    pub fn ingest_extent(
        &mut self,
        db: &str,
        table: &str,
        rows: Vec<Vec<Value>>,
        creation_time: Option<i64>,
        tags: Vec<String>,
    ) -> Result<Uuid, KustoError> {
        let t = self.table(db, table)?;
        let enabled = t.ingestion_time_enabled();
        let rows = normalize_rows(&t.columns, rows);
        let ingestion = if enabled { Some(self.next_ingestion_time()) } else { None };
        let now = self.now();
        let created = creation_time.unwrap_or(now);
        let extent = Extent {
            id: crate::ids::new_uuid(),
            ingestion_times: vec![ingestion; rows.len()],
            rows,
            min_created_on: created,
            max_created_on: created,
            tags,
        };
        let id = extent.id;
        self.table_mut(db, table)?.extents.push(extent);
        Ok(id)
    }

    /// Merges a table's extents that may merge (same tags; merge policy allows it) into one
    /// extent with a new id, as the background merge does: extent ids are not stable.
    pub fn merge_extents(&mut self, db: &str, table: &str) -> Result<(), KustoError> {
        self.merge_extents_within(db, table, i64::MAX)
    }

    /// Merges extents with the same tags whose creation times lie within `max_range` ticks of
    /// each other, as the merge policy's `MaxRangeInHours` bounds real merges.
    pub fn merge_extents_within(&mut self, db: &str, table: &str, max_range: i64) -> Result<(), KustoError> {
        let t = self.table_mut(db, table)?;
        if !t.merges_allowed() {
            return Ok(());
        }
        let mut groups: BTreeMap<Vec<String>, Vec<Extent>> = BTreeMap::new();
        for e in t.extents.drain(..) {
            let mut key = e.tags.clone();
            key.sort();
            groups.entry(key).or_default().push(e);
        }
        for (_, mut group) in groups {
            group.sort_by_key(|e| e.min_created_on);
            let mut runs: Vec<Vec<Extent>> = Vec::new();
            for e in group {
                match runs.last_mut() {
                    Some(run) if e.max_created_on.saturating_sub(run[0].min_created_on) <= max_range => run.push(e),
                    _ => runs.push(vec![e]),
                }
            }
            for run in runs {
                if run.len() == 1 {
                    t.extents.extend(run);
                    continue;
                }
                let mut merged = Extent {
                    id: crate::ids::new_uuid(),
                    rows: Vec::new(),
                    ingestion_times: Vec::new(),
                    min_created_on: run.iter().map(|e| e.min_created_on).min().unwrap_or(0),
                    max_created_on: run.iter().map(|e| e.max_created_on).max().unwrap_or(0),
                    tags: run[0].tags.clone(),
                };
                for e in run {
                    merged.rows.extend(e.rows);
                    merged.ingestion_times.extend(e.ingestion_times);
                }
                t.extents.push(merged);
            }
        }
        Ok(())
    }

    /// A catalog view for queries against one database.
    pub fn catalog<'a>(&'a self, db: &'a str) -> ClusterCatalog<'a> {
        ClusterCatalog { state: self, default_db: db }
    }
}

/// Kusto strings are never null: a null string cell is stored as the empty string.
pub fn normalize_rows(columns: &[Column], mut rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    for r in rows.iter_mut() {
        for (v, c) in r.iter_mut().zip(columns) {
            if c.ty == super::value::ScalarType::String && v.is_null() {
                *v = Value::String(String::new());
            }
        }
    }
    rows
}

/// Turns a table into a query frame, rows carrying their ingestion time and extent id.
pub fn table_frame(t: &Table) -> Frame {
    let rows = t
        .extents
        .iter()
        .flat_map(|e| {
            let tags = std::sync::Arc::new(e.tags.clone());
            e.rows.iter().zip(&e.ingestion_times).map(move |(r, it)| Row {
                values: r.clone(),
                meta: Some(RowMeta { ingestion_time: *it, extent_id: e.id, extent_tags: tags.clone() }),
            })
        })
        .collect();
    Frame { columns: t.columns.clone(), rows, has_meta: true }
}

pub struct ClusterCatalog<'a> {
    state: &'a ClusterState,
    default_db: &'a str,
}

impl Catalog for ClusterCatalog<'_> {
    fn table(&self, database: Option<&str>, name: &str) -> Result<Option<Frame>, KqlError> {
        let db_name = database.unwrap_or(self.default_db);
        let Some(db) = self.state.databases.get(db_name) else {
            return Err(KqlError::semantic(format!(
                "SEM0100: 'database' operator: Failed to resolve database expression named '{db_name}'"
            )));
        };
        Ok(db.tables.get(name).map(table_frame))
    }

    fn scan(&self, database: Option<&str>, name: &str, keep: &mut dyn FnMut(&crate::kql::eval::Row) -> bool) -> Result<Option<Frame>, KqlError> {
        let db_name = database.unwrap_or(self.default_db);
        let Some(db) = self.state.databases.get(db_name) else {
            return Err(KqlError::semantic(format!(
                "SEM0100: 'database' operator: Failed to resolve database expression named '{db_name}'"
            )));
        };
        let Some(t) = db.tables.get(name) else { return Ok(None) };
        let mut rows = Vec::new();
        for e in &t.extents {
            let tags = std::sync::Arc::new(e.tags.clone());
            for (r, it) in e.rows.iter().zip(&e.ingestion_times) {
                let meta = RowMeta { ingestion_time: *it, extent_id: e.id, extent_tags: tags.clone() };
                let probe = Row { values: vec![], meta: Some(meta) };
                if keep(&probe) {
                    rows.push(Row { values: r.clone(), meta: probe.meta });
                }
            }
        }
        Ok(Some(Frame { columns: t.columns.clone(), rows, has_meta: true }))
    }
}

/// Columns helper for command answers.
pub fn cols(spec: &[(&str, super::value::ScalarType)]) -> Vec<Column> {
    spec.iter().map(|(n, t)| Column::new(*n, *t)).collect()
}

//! What a schedule must end with, checked from outside the engine: the source's rows (as
//! they were before the copy) against the destination's, row by row and value by value, with
//! each row's extent creation time; what is left in staging, at the destination and in the
//! slot records; and how each job ended.

use crate::staging::ChaosStaging;
use kusto_copy::engine::copy::{keys, ActivityState, CopyEngine};
use kusto_copy::engine::records::{BlockRecord, BlockState};
use kusto_copy::job::JobRecord;
use kusto_copy::storage::checkpoint::CheckpointStore;
use kusto_sim::{Cluster, Value};
use std::collections::{BTreeMap, HashMap};
use time::OffsetDateTime;

/// The bound the README documents: a copied row's extent is at most a day younger than its
/// source extent (a block keeps the newest creation time of extents within a day).
pub const CREATION_BOUND_TICKS: i64 = 24 * 3600 * 10_000_000;

/// The counts the issue names, and the reasons behind any that is not zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Rows that should be at the destination and are not, or are with other values.
    pub lost: u64,
    /// Rows at the destination more than once, or that no committed block holds.
    pub duplicated: u64,
    pub creation_mismatch: u64,
    pub leaked: u64,
    pub incomplete: u64,
    pub over_capacity: u64,
    pub problems: Vec<String>,
}

impl Findings {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.creation_mismatch == 0 && self.leaked == 0 && self.incomplete == 0 && self.over_capacity == 0
    }

    pub fn add(&mut self, other: &Findings) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.creation_mismatch += other.creation_mismatch;
        self.leaked += other.leaked;
        self.incomplete += other.incomplete;
        self.over_capacity += other.over_capacity;
    }
}

/// A source row as it was before the copy started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    pub values: String,
    /// Its extent's (newest) creation time, ticks since the Unix epoch.
    pub created: i64,
    pub ingested: Option<i64>,
}

/// A table's rows by `Id` (the first column, unique), with their extent's creation time.
pub fn source_rows(cluster: &Cluster, db: &str, table: &str) -> BTreeMap<i64, SourceRow> {
    let created: HashMap<uuid::Uuid, i64> = cluster.extents(db, table).expect("extents").into_iter().map(|e| (e.id, e.max_created_on)).collect();
    let frame = cluster.query(db, table).expect("rows");
    let mut out = BTreeMap::new();
    for r in frame.rows {
        let Value::Long(id) = r.values[0] else { panic!("Id first") };
        let meta = r.meta.expect("table rows carry their extent");
        out.insert(id, SourceRow { values: format!("{:?}", r.values), created: created[&meta.extent_id], ingested: meta.ingestion_time });
    }
    out
}

/// Rows at the destination by `Id`: values and extent creation time, once per copy.
fn destination_rows(cluster: &Cluster, db: &str, table: &str) -> BTreeMap<i64, Vec<(String, i64)>> {
    let mut out: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    let Ok(extents) = cluster.extents(db, table) else { return out };
    let created: HashMap<uuid::Uuid, i64> = extents.into_iter().map(|e| (e.id, e.max_created_on)).collect();
    let Ok(frame) = cluster.query(db, table) else { return out };
    for r in frame.rows {
        let Value::Long(id) = r.values[0] else { continue };
        let c = r.meta.map(|m| created[&m.extent_id]).unwrap_or_default();
        out.entry(id).or_default().push((format!("{:?}", r.values), c));
    }
    out
}

pub fn row_ids(cluster: &Cluster, db: &str, table: &str) -> Vec<i64> {
    destination_rows(cluster, db, table).into_keys().collect()
}

pub fn tables_with_prefix(cluster: &Cluster, db: &str, prefix: &str) -> Vec<String> {
    let Ok(frame) = cluster.command(db, ".show tables") else { return Vec::new() };
    let col = frame.column_index("TableName").unwrap_or(0);
    frame
        .rows
        .iter()
        .filter_map(|r| match &r.values[col] {
            Value::String(n) if n.starts_with(prefix) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

pub struct Inputs<'a> {
    pub seed: u64,
    pub jobs: &'a [JobRecord],
    pub tables: Vec<String>,
    pub sources: &'a [BTreeMap<i64, SourceRow>],
    /// The job whose activity a fatal fault was aimed at.
    pub fatal_job: Option<usize>,
    /// Rows the "user" removed from the destination (a table recreated).
    pub removed_by_user: &'a [i64],
    pub source: &'a Cluster,
    pub destination: &'a Cluster,
    pub staging: &'a ChaosStaging,
    pub store: &'a dyn CheckpointStore,
    pub observer: &'a CopyEngine,
    pub now: OffsetDateTime,
    /// The destination's soft-delete period, when the stage set one: rows created before
    /// `now - period` may be missing, if the activity reports exactly those.
    pub soft_delete: Option<time::Duration>,
}

/// The ingestion-time ranges of the blocks of a job's current iteration that are done.
async fn done_blocks(store: &dyn CheckpointStore, job: &str, iteration: u64) -> Vec<(OffsetDateTime, OffsetDateTime)> {
    let mut out = Vec::new();
    for key in store.list(&keys::blocks(job, "default", iteration)).await.unwrap_or_default() {
        let Ok(Some(v)) = store.read(&key).await else { continue };
        let Ok(block) = serde_json::from_slice::<BlockRecord>(&v.value) else { continue };
        // A block too old for the destination is done without rows.
        if matches!(block.state, BlockState::Done { .. }) && !block.beyond_retention {
            out.push((block.from, block.to));
        }
    }
    out
}

fn at(ticks: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::nanoseconds(ticks * 100)
}

pub async fn check(i: &Inputs<'_>) -> Findings {
    let mut f = Findings::default();
    let mut all_finished = true;
    for (j, job) in i.jobs.iter().enumerate() {
        let activity = i.observer.activity(&job.id, "default").await.ok().flatten();
        let finished = i.observer.job_finished(job).await.unwrap_or(false);
        all_finished &= finished;
        let fatal = i.fatal_job == Some(j);
        let state = activity.as_ref().map(|a| a.state.clone());
        let clean_end = match &state {
            Some(ActivityState::Completed) => true,
            Some(ActivityState::Failed { reason }) => fatal && !reason.trim().is_empty(),
            _ => false,
        };
        if !finished || !clean_end {
            f.incomplete += 1;
            f.problems.push(format!("{}: ended {:?} (finished: {finished})", job.id, state));
        }
        // Which source rows must be at the destination: all of them for a completed copy;
        // for a failed one, those of the blocks it committed (whole blocks, nothing else).
        let source = &i.sources[j];
        let removed: std::collections::HashSet<i64> = if fatal { i.removed_by_user.iter().copied().collect() } else { Default::default() };
        let expected: BTreeMap<i64, &SourceRow> = match &state {
            Some(ActivityState::Failed { .. }) if fatal => {
                let iteration = activity.as_ref().map(|a| a.iteration).unwrap_or(0);
                let blocks = done_blocks(i.store, &job.id, iteration).await;
                source
                    .iter()
                    .filter(|(_, r)| r.ingested.is_some_and(|t| blocks.iter().any(|(from, to)| *from <= at(t) && at(t) < *to)))
                    .map(|(id, r)| (*id, r))
                    .collect()
            }
            _ => source.iter().map(|(id, r)| (*id, r)).collect(),
        };
        let copied = destination_rows(i.destination, kusto_sim_db(), &i.tables[j]);
        let mut lost = 0;
        let mut missing: Vec<i64> = Vec::new();
        // Rows older than the destination keeps (by the end, the latest cutoff) that did not
        // arrive: allowed when the activity reports exactly as many.
        let cutoff = i.soft_delete.map(|period| ((i.now - period).unix_timestamp_nanos() / 100) as i64);
        let mut too_old_missing = 0;
        for (id, row) in &expected {
            if removed.contains(id) {
                continue;
            }
            match copied.get(id) {
                None if cutoff.is_some_and(|c| row.created < c) => too_old_missing += 1,
                Some(copies) if copies.iter().any(|(v, _)| v == &row.values) => {}
                Some(copies) => {
                    lost += 1;
                    f.problems.push(format!("{}: row {id} arrived as {:?}, was {}", job.id, copies, row.values));
                }
                None if finished => {
                    lost += 1;
                    missing.push(*id);
                }
                None => {}
            }
        }
        if finished && matches!(state, Some(ActivityState::Completed)) {
            let reported = activity.as_ref().map(|a| a.rows_beyond_retention).unwrap_or(0);
            if reported != too_old_missing {
                lost += too_old_missing.abs_diff(reported);
                f.problems.push(format!("{}: {too_old_missing} rows older than the destination keeps did not arrive, {reported} reported", job.id));
            }
        }
        if lost > 0 {
            f.problems.push(format!("{}: {lost} rows lost, ids {}", job.id, id_ranges(&missing)));
        }
        f.lost += lost;
        let mut extra = 0;
        let mut extras: Vec<i64> = Vec::new();
        for (id, copies) in &copied {
            let mut n = copies.len() as u64 - 1;
            if finished && !expected.contains_key(id) {
                n += 1;
            }
            if n > 0 {
                extras.push(*id);
            }
            extra += n;
            if let Some(src) = source.get(id) {
                let off = copies.iter().filter(|(_, c)| (c - src.created).abs() > CREATION_BOUND_TICKS).count() as u64;
                if off > 0 {
                    f.problems.push(format!("{}: row {id} created {:?} at the destination, {} at the source", job.id, copies.iter().map(|c| c.1).collect::<Vec<_>>(), src.created));
                }
                f.creation_mismatch += off;
            }
        }
        if extra > 0 {
            f.problems.push(format!("{}: {extra} rows extra or repeated, ids {}", job.id, id_ranges(&extras)));
        }
        f.duplicated += extra;
    }

    // What is left behind once every job ended (a job still running may hold its staging).
    if all_finished {
        let tables = tables_with_prefix(i.destination, kusto_sim_db(), "kc_staging");
        let mut tags = 0;
        for t in &i.tables {
            for e in i.destination.extents(kusto_sim_db(), t).unwrap_or_default() {
                tags += e.tags.len() as u64;
            }
        }
        let containers = i.staging.containers();
        let mut claims = 0;
        for key in i.store.list("clusters/").await.unwrap_or_default().into_iter().filter(|k| k.contains("/export-slots/")) {
            let Ok(Some(v)) = i.store.read(&key).await else { continue };
            let Ok(claim) = serde_json::from_slice::<serde_json::Value>(&v.value) else { continue };
            let owner = claim["owner"].as_str().unwrap_or_default();
            let expires = claim["expiresAt"].as_str().and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
            if i.jobs.iter().any(|j| owner.starts_with(&format!("{}/", j.id))) && expires.is_some_and(|e| e > i.now) {
                claims += 1;
                f.problems.push(format!("slot {key} still claimed by {owner}"));
            }
        }
        if !tables.is_empty() || tags > 0 || !containers.is_empty() {
            f.problems.push(format!("left: staging tables {tables:?}, {tags} destination tags, containers {containers:?}"));
        }
        f.leaked = tables.len() as u64 + tags + containers.len() as u64 + claims;
    }
    f.over_capacity = i.source.with_state(|s| s.throttled_exports);
    if f.over_capacity > 0 {
        f.problems.push(format!("{} exports beyond the source's capacity", f.over_capacity));
    }
    let _ = i.seed;
    f
}

/// Ids as runs: "1-5, 9".
fn id_ranges(ids: &[i64]) -> String {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &id in ids {
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == id => *hi = id,
            _ => runs.push((id, id)),
        }
    }
    runs.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect::<Vec<_>>().join(", ")
}

fn kusto_sim_db() -> &'static str {
    crate::driver::DB
}

//! The engine's checkpoint records and their pure transitions.
//!
//! One record per activity iteration and one per block, so every step reads and writes O(1)
//! small records whatever the size of the copy:
//!
//! ```text
//! jobs/<job>/job.json
//! jobs/<job>/<activity>/activity.json
//! jobs/<job>/<activity>/<iteration>/iteration.json
//! jobs/<job>/<activity>/<iteration>/blocks/<block>.json
//! ```
//!
//! A block moves through its states in one direction only:
//!
//! ```text
//! Planned -> Exporting -> Exported -> Ingesting -> Ingested -> Moving -> Moved -> Done
//!                                                  (no rows: Committed -> Done)
//!    ^___________|  (export failed or lost: new attempt, new folder)
//!                          ^___________|  (ingestion failed or counted wrong: new tag)
//!    ^_______________________________________|  (verify content: staging differs from the
//!                                                source; given up unmoved, exported again)
//! ```
//!
//! Messages only name the step to try; [`BlockRecord::due`] says which step the record is
//! waiting for, and a message for any other step is stale.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The steps a message can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Plan,
    Export,
    AwaitExport,
    Ingest,
    AwaitIngest,
    Commit,
    Cleanup,
    /// A failed or cancelled activity's iteration: release, remove and untag what it left.
    Abort,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Plan => "plan",
            Step::Export => "export",
            Step::AwaitExport => "await-export",
            Step::Ingest => "ingest",
            Step::AwaitIngest => "await-ingest",
            Step::Commit => "commit",
            Step::Cleanup => "cleanup",
            Step::Abort => "abort",
        }
    }

    pub fn parse(text: &str) -> Option<Step> {
        [Step::Plan, Step::Export, Step::AwaitExport, Step::Ingest, Step::AwaitIngest, Step::Commit, Step::Cleanup, Step::Abort]
            .into_iter()
            .find(|s| s.name() == text)
    }
}

/// How a block's blobs are ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum IngestRoute {
    /// The ingest-v2 REST API on the cluster's ingest endpoint: what Kusto recommends for
    /// volume, with per-blob status.
    #[default]
    Queued,
    /// `.ingest async into table` on the engine endpoint, tracked by `.show operations`.
    Direct,
}

/// The file format a table's rows travel in through staging, chosen once per iteration from
/// the columns the copy produces and recorded before any block exists, so every block of the
/// iteration (and a resumed copy) ingests what it exported.
///
/// Parquet is exact only for `bool int long real string dynamic`: by the export docs' Parquet
/// mapping datetime is written as microseconds (Kusto keeps 100 ns ticks), timespan as INT64
/// ticks and guid as UTF8, and the documented Parquet ingestion conversions turn no Parquet
/// type into timespan and only UUID into guid ("might result in empty or incorrect data",
/// management/mappings), while decimal's Parquet precision and scale are not stated. Any
/// other column sends the table through gzip CSV, whose text carries every type, read back by
/// an explicit ordinal mapping (CSV ingests by position, and the staging table has the
/// destination's column order, which may differ from the copy's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "camelCase")]
pub enum DataRoute {
    Parquet,
    /// Gzip CSV; `columns`: the exported columns in export order (the mapping's ordinals).
    Csv { columns: Vec<String> },
}

impl DataRoute {
    /// Parquet when every column is of a type it carries exactly, else CSV.
    pub fn for_columns(columns: &[crate::kusto::Column]) -> DataRoute {
        use crate::kusto::KustoType as K;
        let exact_in_parquet = |k: &K| matches!(k, K::Bool | K::Int | K::Long | K::Real | K::String | K::Dynamic);
        if columns.iter().all(|c| exact_in_parquet(&c.kind)) {
            DataRoute::Parquet
        } else {
            DataRoute::Csv { columns: columns.iter().map(|c| c.name.clone()).collect() }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum BlockState {
    Planned,
    /// The attempt is recorded before `.export` is sent; the operation id after. A record
    /// still without an id was interrupted in between: its export (if any) is abandoned.
    Exporting {
        #[serde(rename = "operationId")]
        operation_id: Option<Uuid>,
        #[serde(rename = "startedAt", with = "time::serde::rfc3339")]
        started_at: OffsetDateTime,
    },
    Exported {
        /// Blob names in the attempt's folder, exactly as the export listed them.
        blobs: Vec<String>,
        rows: u64,
    },
    /// Recorded before the ingestion is sent; `operations` after (empty: interrupted in
    /// between, so this tag is abandoned and a new attempt gets a new one).
    Ingesting {
        blobs: Vec<String>,
        rows: u64,
        tag: String,
        route: IngestRoute,
        /// Ingest-v2 operation ids (one per call of up to 20 blobs), or the `.ingest async`
        /// operation id.
        operations: Vec<String>,
        #[serde(rename = "startedAt", with = "time::serde::rfc3339")]
        started_at: OffsetDateTime,
    },
    /// The tag holds exactly the exported rows in these staging extents: only these are
    /// moved (a late duplicate under the same tag is not among them).
    Ingested {
        rows: u64,
        tag: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extents: Vec<Uuid>,
    },
    /// Recorded before `.move extents` is sent: a repeat first looks where the counted
    /// extents are.
    Moving {
        rows: u64,
        tag: String,
        extents: Vec<Uuid>,
    },
    /// `.move` answered success for every counted extent (`moved`: the ids at the
    /// destination); the destination's tag is still to drop.
    Moved {
        rows: u64,
        tag: String,
        moved: Vec<Uuid>,
        /// The staging extents that were counted (and moved).
        #[serde(default)]
        extents: Vec<Uuid>,
        #[serde(rename = "createdOn", default, with = "time::serde::rfc3339::option")]
        created_on: Option<OffsetDateTime>,
        /// The destination was seen holding the block's rows (before its tag is dropped:
        /// dropping rewrites the extents under new ids).
        #[serde(default)]
        verified: bool,
    },
    Committed {
        rows: u64,
    },
    Done {
        rows: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockRecord {
    pub number: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    pub planned_rows: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub creation_time: Option<OffsetDateTime>,
    /// Export attempts so far; each has its own staging folder.
    pub export_attempt: u32,
    /// Ingestion attempts of the current export; each has its own tag.
    pub ingest_attempt: u32,
    /// Every staging folder this block created, for cleanup.
    pub folders: Vec<String>,
    #[serde(flatten)]
    pub state: BlockState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When a step last wrote or looked at this block; a block untouched for long had its
    /// message lost (or poisoned), and the sweeper sends its due step again (and touches it,
    /// so it is sent once per stall, not once per tick).
    #[serde(with = "time::serde::rfc3339")]
    pub touched_at: OffsetDateTime,
    /// The delivery running an attempt that has sent, or may have sent, a command whose answer
    /// is not recorded yet. A duplicate delivery never takes over a fresh lease; an expired
    /// one is taken over as a new attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// Waiting for an export slot of the source cluster: the one chain of messages that
    /// waits looks again at this time. An earlier delivery is a duplicate chain and ends.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub waiting_until: Option<OffsetDateTime>,
    /// Transient failures recorded on this block (its error budget).
    #[serde(default)]
    pub transient_errors: u32,
    /// Attempts whose staging rows differed from the source by content (`verify: content`):
    /// each is given up unmoved and the block exports again, up to a limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub content_mismatches: u32,
    /// Exports of this block that ran and failed (or vanished): bounded by the attempt
    /// limit. A start refused or lost is not one; those count as transient errors.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub export_failures: u32,
    /// Ingestions of this block that ran and gave the wrong rows or failed: bounded by the
    /// attempt limit. A start that failed (a signature, a refused request) is not one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingest_failures: u32,
    /// The count alone cannot vouch for the current ingestion: its status was gone, so a
    /// failed blob and a duplicated one could add up to the exported rows. Its content is
    /// compared with the source before the move, whatever the job's `verify`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify_content: bool,
    /// When an export start whose answer never came was sent: that export may be running,
    /// unknown to us, in the source's capacity. No new export starts until none that could be
    /// it is still listed as running.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub unconfirmed_export: Option<OffsetDateTime>,
    /// The block's creation time is older than the destination's soft-delete period: the
    /// destination refuses its rows (or would remove them at once), so they are not copied.
    /// The block ends done with no rows, and its planned rows are reported on the activity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub beyond_retention: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

/// Who runs an attempt, and until when that claim holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Lease {
    pub fn is_fresh(&self, now: OffsetDateTime) -> bool {
        now < self.expires_at
    }
}

impl BlockRecord {
    pub fn planned(number: u64, from: OffsetDateTime, to: OffsetDateTime, rows: u64, creation_time: Option<OffsetDateTime>, now: OffsetDateTime) -> Self {
        BlockRecord {
            number,
            from,
            to,
            planned_rows: rows,
            creation_time,
            export_attempt: 0,
            ingest_attempt: 0,
            folders: Vec::new(),
            state: BlockState::Planned,
            last_error: None,
            touched_at: now,
            lease: None,
            waiting_until: None,
            transient_errors: 0,
            content_mismatches: 0,
            export_failures: 0,
            ingest_failures: 0,
            verify_content: false,
            unconfirmed_export: None,
            beyond_retention: false,
        }
    }

    /// The step this record waits for; `None` when the block is done.
    pub fn due(&self) -> Option<Step> {
        Some(match &self.state {
            BlockState::Planned => Step::Export,
            BlockState::Exporting { operation_id: None, .. } => Step::Export,
            BlockState::Exporting { .. } => Step::AwaitExport,
            BlockState::Exported { .. } => Step::Ingest,
            BlockState::Ingesting { operations, .. } if operations.is_empty() => Step::Ingest,
            BlockState::Ingesting { .. } => Step::AwaitIngest,
            BlockState::Ingested { .. } | BlockState::Moving { .. } | BlockState::Moved { .. } => Step::Commit,
            BlockState::Committed { .. } => Step::Cleanup,
            BlockState::Done { .. } => return None,
        })
    }

    /// Planned and never started: its turn to export has not come (or its hand-over was lost).
    pub fn never_started(&self) -> bool {
        matches!(self.state, BlockState::Planned) && self.export_attempt == 0 && self.waiting_until.is_none()
    }

    pub fn is_exporting(&self) -> bool {
        matches!(self.state, BlockState::Exporting { .. })
    }

    /// What a message for `step` should do with this record: run it, or ignore it as stale
    /// (a duplicate, or a message overtaken by another delivery). A redelivery of the step
    /// that produced the current state re-emits the due step: its first delivery may have
    /// moved the state and then failed before its follow-up was written.
    pub fn on_message(&self, step: Step, dequeue_count: u32) -> MessageAction {
        let Some(due) = self.due() else { return MessageAction::Ignore };
        if step == due {
            return MessageAction::Run;
        }
        if dequeue_count > 1 && self.produced_by().contains(&step) {
            return MessageAction::Reemit(due);
        }
        MessageAction::Ignore
    }

    /// The steps whose decisions write this state: a redelivery of one of them may be the
    /// delivery that wrote it and stopped before sending what follows.
    fn produced_by(&self) -> &'static [Step] {
        match &self.state {
            // A new attempt: planned, or an export or content check given up.
            BlockState::Planned | BlockState::Exporting { operation_id: None, .. } => &[Step::Plan, Step::AwaitExport, Step::Commit],
            BlockState::Exporting { .. } => &[Step::Export],
            // Exported, or an ingestion given up for a new tag.
            BlockState::Exported { .. } | BlockState::Ingesting { .. } if self.due() == Some(Step::Ingest) => &[Step::AwaitExport, Step::AwaitIngest],
            BlockState::Exported { .. } | BlockState::Ingesting { .. } => &[Step::Ingest],
            BlockState::Ingested { .. } | BlockState::Moving { .. } | BlockState::Moved { .. } => &[Step::AwaitIngest],
            // Moved and untagged; or done without rows: an empty export, a block too old for
            // the destination (skipped at export, or refused at ingestion).
            BlockState::Committed { .. } => &[Step::Commit, Step::Export, Step::AwaitExport, Step::AwaitIngest],
            BlockState::Done { .. } => &[],
        }
    }

    /// Rows in the block once its export is known.
    pub fn rows(&self) -> Option<u64> {
        match &self.state {
            BlockState::Planned | BlockState::Exporting { .. } => None,
            BlockState::Exported { rows, .. }
            | BlockState::Ingesting { rows, .. }
            | BlockState::Ingested { rows, .. }
            | BlockState::Moving { rows, .. }
            | BlockState::Moved { rows, .. }
            | BlockState::Committed { rows }
            | BlockState::Done { rows } => Some(*rows),
        }
    }

    /// Whether the block's export is over (it no longer holds an export slot).
    pub fn exported(&self) -> bool {
        !matches!(self.state, BlockState::Planned | BlockState::Exporting { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageAction {
    Run,
    Reemit(Step),
    Ignore,
}

/// What an ingestion's check found, decided without I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestVerdict {
    /// The tag holds exactly the exported rows.
    Complete,
    /// Still running.
    Wait,
    /// Fewer rows than exported after the operation ended, or more (a stray duplicate): drop
    /// the tag's extents and ingest again with a new tag.
    Redo,
}

pub fn ingest_verdict(operation_finished: bool, operation_failed: bool, tagged_rows: u64, exported_rows: u64) -> IngestVerdict {
    if tagged_rows > exported_rows || operation_failed {
        return IngestVerdict::Redo;
    }
    match (tagged_rows == exported_rows, operation_finished) {
        (true, true) => IngestVerdict::Complete,
        (false, true) => IngestVerdict::Redo,
        (_, false) => IngestVerdict::Wait,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IterationState {
    Planning,
    Copying,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IterationRecord {
    pub number: u64,
    /// Exclusive lower cursor (the previous iteration's upper one); `None` for the first.
    pub cursor_from: Option<String>,
    pub cursor_to: String,
    pub state: IterationState,
    pub blocks: u64,
    pub planned_rows: u64,
    /// Rows the window could not hold because they have no ingestion time.
    pub rows_without_ingestion_time: u64,
    pub staging_table: String,
    /// Planning progress: the window was measured, and the chunk of ingestion times still to
    /// plan is `[plan_next, plan_end)` (`None`: no row has an ingestion time).
    #[serde(default)]
    pub summarized: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub plan_next: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub plan_end: Option<OffsetDateTime>,
    /// Exports this iteration runs at once (the job's export count capped by the cluster's
    /// capacity), fixed when copying starts: block `n` finishing its export starts block
    /// `n + export_slots`, so who may export next follows from the records alone.
    #[serde(default)]
    pub export_slots: u64,
    /// The source's `DataExport` capacity, read when copying starts; exports across all
    /// jobs on that cluster hold claims below it (see [`super::slots`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_capacity: Option<u64>,
    /// Bins one planning chunk counts; halved when a chunk's query times out or is
    /// truncated, so a chunk that is too large is split, not retried as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_bins: Option<u32>,
    /// How this iteration's blocks travel (set by the first planning step, before any block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<DataRoute>,
    /// A failed or cancelled activity's leftovers (staging table, folders, destination tags,
    /// slot claims) were removed.
    #[serde(default)]
    pub aborted: bool,
    /// The ingestion times of the window's first and last rows, as planning measured them
    /// (for status: which rows an iteration holds). `None`: nothing in the window.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub first_ingestion: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub last_ingestion: Option<OffsetDateTime>,
    /// Rows the iteration copied, counted from its blocks when it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_rows: Option<u64>,
    /// The destination table's soft-delete period (its own retention policy's, else its
    /// database's), read by the first planning step; `None`: none, or not readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_soft_delete_secs: Option<i64>,
    /// Rows and blocks not copied because they are older than that period, counted from the
    /// blocks when the iteration finished.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub rows_beyond_retention: u64,
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub blocks_beyond_retention: u64,
    /// Blocks a planning step decided whose records may not be written yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<BlockRecord>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

impl IterationRecord {
    /// The destination's soft-delete period, when planning found one.
    pub fn destination_soft_delete(&self) -> Option<time::Duration> {
        self.destination_soft_delete_secs.map(time::Duration::seconds)
    }

    /// The route of this iteration's blocks. A record without one was written before routes
    /// existed, when every block was exported as Parquet: it goes on as it began.
    pub fn data_route(&self) -> DataRoute {
        self.route.clone().unwrap_or(DataRoute::Parquet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_route_is_parquet_only_where_parquet_is_exact() {
        use crate::kusto::{Column, KustoType as K};
        let cols = |kinds: &[K]| kinds.iter().enumerate().map(|(i, k)| Column { name: format!("c{i}"), kind: *k }).collect::<Vec<_>>();
        assert_eq!(DataRoute::for_columns(&cols(&[K::Bool, K::Int, K::Long, K::Real, K::String, K::Dynamic])), DataRoute::Parquet);
        for lossy in [K::DateTime, K::TimeSpan, K::Guid, K::Decimal] {
            let c = cols(&[K::Long, lossy]);
            assert_eq!(DataRoute::for_columns(&c), DataRoute::Csv { columns: vec!["c0".into(), "c1".into()] }, "{lossy:?}");
        }
        let json = serde_json::to_string(&DataRoute::Csv { columns: vec!["a".into()] }).unwrap();
        assert_eq!(json, r#"{"format":"csv","columns":["a"]}"#);
    }

    fn block(state: BlockState) -> BlockRecord {
        let mut b = BlockRecord::planned(1, datetime!(2026-01-01 0:00 UTC), datetime!(2026-01-01 1:00 UTC), 10, None, T);
        b.state = state;
        b
    }

    const T: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);

    #[test]
    fn every_state_names_the_step_it_waits_for() {
        let id = Some(Uuid::from_u128(1));
        let table = [
            (BlockState::Planned, Some(Step::Export)),
            (BlockState::Exporting { operation_id: None, started_at: T }, Some(Step::Export)),
            (BlockState::Exporting { operation_id: id, started_at: T }, Some(Step::AwaitExport)),
            (BlockState::Exported { blobs: vec![], rows: 1 }, Some(Step::Ingest)),
            (BlockState::Ingesting { blobs: vec![], rows: 1, tag: "t".into(), route: IngestRoute::Queued, operations: vec![], started_at: T }, Some(Step::Ingest)),
            (BlockState::Ingesting { blobs: vec![], rows: 1, tag: "t".into(), route: IngestRoute::Queued, operations: vec!["op".into()], started_at: T }, Some(Step::AwaitIngest)),
            (BlockState::Ingested { rows: 1, tag: "t".into(), extents: vec![] }, Some(Step::Commit)),
            (BlockState::Moving { rows: 1, tag: "t".into(), extents: vec![] }, Some(Step::Commit)),
            (BlockState::Moved { rows: 1, tag: "t".into(), moved: vec![], extents: vec![], created_on: None, verified: false }, Some(Step::Commit)),
            (BlockState::Committed { rows: 1 }, Some(Step::Cleanup)),
            (BlockState::Done { rows: 1 }, None),
        ];
        for (state, due) in table {
            assert_eq!(block(state.clone()).due(), due, "{state:?}");
        }
    }

    #[test]
    fn duplicates_and_stale_messages_are_absorbed() {
        let exported = block(BlockState::Exported { blobs: vec![], rows: 1 });
        assert_eq!(exported.on_message(Step::Ingest, 1), MessageAction::Run);
        // The await that produced this state, delivered again after a failure: re-emit.
        assert_eq!(exported.on_message(Step::AwaitExport, 2), MessageAction::Reemit(Step::Ingest));
        // The same, first delivery (a duplicate we sent ourselves): ignore.
        assert_eq!(exported.on_message(Step::AwaitExport, 1), MessageAction::Ignore);
        // Far behind or ahead: ignore.
        assert_eq!(exported.on_message(Step::Export, 3), MessageAction::Ignore);
        assert_eq!(exported.on_message(Step::Commit, 1), MessageAction::Ignore);
        // A block done without rows at its export (empty, or too old for the destination),
        // or at its ingestion (refused for its age): their redeliveries re-emit the cleanup.
        let empty = block(BlockState::Committed { rows: 0 });
        for step in [Step::Export, Step::AwaitExport, Step::AwaitIngest, Step::Commit] {
            assert_eq!(empty.on_message(step, 2), MessageAction::Reemit(Step::Cleanup), "{step:?}");
        }
        assert_eq!(empty.on_message(Step::Ingest, 2), MessageAction::Ignore);
        // An ingestion given up goes back to Exported: the await-ingest that did it re-emits.
        assert_eq!(exported.on_message(Step::AwaitIngest, 2), MessageAction::Reemit(Step::Ingest));
        // A done block absorbs everything.
        let done = block(BlockState::Done { rows: 1 });
        for step in [Step::Export, Step::Commit, Step::Cleanup] {
            assert_eq!(done.on_message(step, 5), MessageAction::Ignore);
        }
    }

    #[test]
    fn ingestion_verdicts() {
        assert_eq!(ingest_verdict(true, false, 10, 10), IngestVerdict::Complete);
        assert_eq!(ingest_verdict(false, false, 4, 10), IngestVerdict::Wait);
        assert_eq!(ingest_verdict(false, false, 10, 10), IngestVerdict::Wait, "all rows but the operation still runs");
        assert_eq!(ingest_verdict(true, false, 4, 10), IngestVerdict::Redo);
        assert_eq!(ingest_verdict(false, false, 11, 10), IngestVerdict::Redo, "a stray duplicate");
        assert_eq!(ingest_verdict(true, true, 10, 10), IngestVerdict::Redo, "a failed operation is not trusted");
    }

    #[test]
    fn records_round_trip_through_json() {
        let b = block(BlockState::Ingesting { blobs: vec!["a.parquet".into()], rows: 3, tag: "drop-by:kc".into(), route: IngestRoute::Direct, operations: vec![Uuid::from_u128(7).to_string()], started_at: T });
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.contains("\"state\":\"ingesting\""), "{json}");
        assert_eq!(serde_json::from_str::<BlockRecord>(&json).unwrap(), b);
    }
}

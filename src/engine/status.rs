//! What a job is doing, for a person: one document shared by the `status` function and
//! `kc status` (so `kc status --json` is exactly what the function answers).
//!
//! It is built from per-iteration summaries (the activity record, each iteration's record
//! and its running count of finished blocks), never by reading every block of a large job:
//! only a current iteration of at most [`PHASE_DETAIL_BLOCKS`] blocks has its blocks read to
//! say how many are exporting, ingesting or committing, and what the last error was.

use super::copy::{keys, ActivityRecord, ActivityState, Progress};
use super::records::{BlockRecord, BlockState, IterationRecord, IterationState};
use crate::job::{JobRecord, JobState};
use crate::storage::checkpoint::{read_json, CheckpointStore, RecordError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Above this many blocks, a running iteration shows finished and in-flight blocks only.
pub const PHASE_DETAIL_BLOCKS: u64 = 500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(flatten)]
    pub job: JobRecord,
    /// Per activity, in the job's order (empty for a rejected request).
    pub activities: Vec<ActivityStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityStatus {
    pub name: String,
    /// The current iteration (0: not started).
    pub iteration: u64,
    /// notStarted, running, idle (waiting for the next period), completed, failed or cancelled.
    pub state: String,
    /// Why a failed activity stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rows copied by the finished iterations, plus the current one's so far.
    pub copied_rows: u64,
    pub rows_without_ingestion_time: u64,
    /// Rows not copied because they are older than the destination's soft-delete period.
    #[serde(default)]
    pub rows_beyond_retention: u64,
    /// Every iteration so far, the first first.
    pub iterations: Vec<IterationStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IterationStatus {
    pub number: u64,
    /// planning, copying or done.
    pub state: String,
    /// The window: rows ingested after `cursorFrom` (none: from the start) up to `cursorTo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_from: Option<String>,
    pub cursor_to: String,
    /// Ingestion times of the window's first and last rows.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub first_ingestion: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_ingestion: Option<OffsetDateTime>,
    pub blocks: u64,
    pub blocks_done: u64,
    pub planned_rows: u64,
    pub copied_rows: u64,
    /// Blocks by phase, for a running iteration small enough to read its blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
    /// The last error a block of this iteration recorded (it is being retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Rows per second since the iteration started, and the time left at that rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// After a failure or a cancel: the iteration's leftovers (staging table, folders, tags)
    /// are removed.
    #[serde(default)]
    pub cleaned_up: bool,
}

/// Blocks of a running iteration by what they wait for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Phases {
    pub planned: u64,
    pub exporting: u64,
    pub ingesting: u64,
    pub committing: u64,
    pub done: u64,
}

impl JobStatus {
    /// Nothing more happens without a person or the schedule: the job was rejected, or every
    /// activity has completed, failed, or finished an iteration and waits for its period.
    /// A completed or idle activity counts once its iterations say done too: the engine
    /// records the activity's end before the iteration's (the activity's count is what a
    /// step stopped between the two must not lose), so a look between the writes sees an
    /// activity completed and its last iteration still copying.
    pub fn finished(&self) -> bool {
        self.job.state == JobState::Rejected
            || self.activities.iter().all(|a| match a.state.as_str() {
                "completed" | "idle" => a.iterations.iter().all(|i| i.state == "done"),
                "failed" | "cancelled" => true,
                _ => false,
            })
    }
}

/// The status of one job at `now` (rates are measured up to it).
pub async fn job_status(store: &dyn CheckpointStore, job: &JobRecord, now: OffsetDateTime) -> Result<JobStatus, RecordError> {
    status_of(store, job, now, true).await
}

/// The same from the summaries alone: a running iteration's phases and last error, which
/// take a read of each of its blocks (up to [`PHASE_DETAIL_BLOCKS`]), are left out. For a
/// program that asks often whether a job has finished ([`JobStatus::finished`] needs only
/// the summaries): kc-bench asked every 20 ms, and its 200 block reads per look kept Azurite
/// busy under the engine it measured.
pub async fn job_summary(store: &dyn CheckpointStore, job: &JobRecord, now: OffsetDateTime) -> Result<JobStatus, RecordError> {
    status_of(store, job, now, false).await
}

async fn status_of(store: &dyn CheckpointStore, job: &JobRecord, now: OffsetDateTime, phases: bool) -> Result<JobStatus, RecordError> {
    let mut activities = Vec::new();
    for activity in job.spec.iter().flat_map(|s| s.activities.iter()) {
        let Some((record, _)) = read_json::<ActivityRecord>(store, &keys::activity(&job.id, &activity.name)).await? else {
            activities.push(ActivityStatus {
                name: activity.name.clone(),
                iteration: 0,
                state: "notStarted".into(),
                reason: None,
                copied_rows: 0,
                rows_without_ingestion_time: 0,
                rows_beyond_retention: 0,
                iterations: vec![],
            });
            continue;
        };
        let mut iterations = Vec::new();
        for n in 1..=record.iteration {
            let Some((it, _)) = read_json::<IterationRecord>(store, &keys::iteration(&job.id, &activity.name, n)).await? else { continue };
            iterations.push(iteration_status(store, &job.id, &activity.name, &it, now, phases).await?);
        }
        // Finished iterations are in the activity's count; the current one adds its progress.
        let current = iterations.iter().filter(|i| i.number > record.last_finished_iteration).map(|i| i.copied_rows).sum::<u64>();
        let (state, reason) = match &record.state {
            ActivityState::Running => ("running", None),
            ActivityState::Idle => ("idle", None),
            ActivityState::Completed => ("completed", None),
            ActivityState::Failed { reason } => ("failed", Some(reason.clone())),
            ActivityState::Cancelled => ("cancelled", None),
        };
        activities.push(ActivityStatus {
            name: activity.name.clone(),
            iteration: record.iteration,
            state: state.into(),
            reason,
            copied_rows: record.copied_rows + current,
            rows_without_ingestion_time: record.rows_without_ingestion_time,
            rows_beyond_retention: record.rows_beyond_retention,
            iterations,
        });
    }
    Ok(JobStatus { job: job.clone(), activities })
}

async fn iteration_status(
    store: &dyn CheckpointStore,
    job: &str,
    activity: &str,
    it: &IterationRecord,
    now: OffsetDateTime,
    with_phases: bool,
) -> Result<IterationStatus, RecordError> {
    let done = read_json::<Progress>(store, &keys::done(job, activity, it.number)).await?.map(|(p, _)| p).unwrap_or_default();
    let copied_rows = it.copied_rows.unwrap_or(done.rows);
    let blocks_done = if it.state == IterationState::Done { it.blocks } else { done.blocks.len() as u64 };
    let mut phases = None;
    let mut last_error = None;
    if with_phases && it.state == IterationState::Copying && it.blocks <= PHASE_DETAIL_BLOCKS {
        let mut p = Phases::default();
        for key in store.list(&keys::blocks(job, activity, it.number)).await? {
            let Some((block, _)) = read_json::<BlockRecord>(store, &key).await? else { continue };
            match block.state {
                BlockState::Planned => p.planned += 1,
                BlockState::Exporting { .. } => p.exporting += 1,
                BlockState::Exported { .. } | BlockState::Ingesting { .. } => p.ingesting += 1,
                BlockState::Ingested { .. } | BlockState::Moving { .. } | BlockState::Moved { .. } | BlockState::Committed { .. } => p.committing += 1,
                BlockState::Done { .. } => p.done += 1,
            }
            if !matches!(block.state, BlockState::Done { .. }) {
                last_error = last_error.or(block.last_error.map(|e| crate::job::redact::redact(&e)));
            }
        }
        phases = Some(p);
    }
    let (rows_per_second, eta_seconds) = match it.state {
        IterationState::Copying => {
            let seconds = (now - it.started_at).as_seconds_f64();
            let rate = (seconds > 0.0 && copied_rows > 0).then(|| copied_rows as f64 / seconds);
            let eta = rate.map(|r| (it.planned_rows.saturating_sub(copied_rows) as f64 / r).ceil() as u64);
            (rate, eta)
        }
        IterationState::Done => {
            let seconds = it.finished_at.map(|f| (f - it.started_at).as_seconds_f64()).unwrap_or(0.0);
            ((seconds > 0.0 && copied_rows > 0).then(|| copied_rows as f64 / seconds), None)
        }
        IterationState::Planning => (None, None),
    };
    Ok(IterationStatus {
        number: it.number,
        state: match it.state {
            IterationState::Planning => "planning",
            IterationState::Copying => "copying",
            IterationState::Done => "done",
        }
        .into(),
        cursor_from: it.cursor_from.clone(),
        cursor_to: it.cursor_to.clone(),
        first_ingestion: it.first_ingestion,
        last_ingestion: it.last_ingestion,
        blocks: it.blocks,
        blocks_done,
        planned_rows: it.planned_rows,
        copied_rows,
        phases,
        last_error,
        rows_per_second,
        eta_seconds,
        started_at: it.started_at,
        finished_at: it.finished_at,
        cleaned_up: it.aborted,
    })
}

/// The status as a table per activity and iteration, for a terminal.
pub fn render(status: &JobStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let job = &status.job;
    let received = job.received_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let _ = writeln!(out, "job {} ({:?}, received {received})", job.id, job.state);
    if let Some(reason) = &job.reason {
        let _ = writeln!(out, "  rejected: {reason}");
    }
    for a in &status.activities {
        let _ = write!(out, "activity {}: {}, {} rows copied", a.name, a.state, a.copied_rows);
        if a.rows_without_ingestion_time > 0 {
            let _ = write!(out, ", {} rows without ingestion time not copied", a.rows_without_ingestion_time);
        }
        if a.rows_beyond_retention > 0 {
            let _ = write!(out, ", {} rows older than the destination's retention not copied", a.rows_beyond_retention);
        }
        let _ = writeln!(out);
        if let Some(reason) = &a.reason {
            let _ = writeln!(out, "  failed: {reason}");
        }
        if a.iterations.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {:>4}  {:<8}  {:>13}  {:>21}  {:>10}  {:>9}  {:<30}  {:<30}", "iter", "state", "blocks done", "rows copied", "rows/s", "eta", "ingested from", "ingested to");
        for i in &a.iterations {
            let eta = i.eta_seconds.map(|s| format!("{s} s")).unwrap_or_else(|| "-".into());
            let rate = i.rows_per_second.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into());
            let time = |t: Option<OffsetDateTime>| {
                t.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()).unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                out,
                "  {:>4}  {:<8}  {:>13}  {:>21}  {:>10}  {:>9}  {:<30}  {:<30}",
                i.number,
                i.state,
                format!("{}/{}", i.blocks_done, i.blocks),
                format!("{}/{}", i.copied_rows, i.planned_rows),
                rate,
                eta,
                time(i.first_ingestion),
                time(i.last_ingestion),
            );
            if let Some(p) = &i.phases {
                let _ = writeln!(
                    out,
                    "        blocks: {} planned, {} exporting, {} ingesting, {} committing, {} done",
                    p.planned, p.exporting, p.ingesting, p.committing, p.done
                );
            }
            if let Some(e) = &i.last_error {
                let _ = writeln!(out, "        last error (retrying): {e}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(activity: &str, iteration: &str) -> JobStatus {
        let now = OffsetDateTime::UNIX_EPOCH;
        JobStatus {
            job: JobRecord { id: "j".into(), state: JobState::Accepted, received_at: now, reason: None, spec: None, request_excerpt: None, expires_at: None },
            activities: vec![ActivityStatus {
                name: "default".into(),
                iteration: 1,
                state: activity.into(),
                reason: None,
                copied_rows: 400,
                rows_without_ingestion_time: 0,
                rows_beyond_retention: 0,
                iterations: vec![IterationStatus {
                    number: 1,
                    state: iteration.into(),
                    cursor_from: None,
                    cursor_to: "1".into(),
                    first_ingestion: None,
                    last_ingestion: None,
                    blocks: 4,
                    blocks_done: 4,
                    planned_rows: 400,
                    copied_rows: 400,
                    phases: None,
                    last_error: None,
                    rows_per_second: None,
                    eta_seconds: None,
                    started_at: now,
                    finished_at: None,
                    cleaned_up: false,
                }],
            }],
        }
    }

    /// A look between the activity's end and its iteration's (CI saw one): not finished yet,
    /// so `kc status --watch` prints the iteration done before it stops.
    #[test]
    fn an_activity_ends_once_its_iteration_has_too() {
        assert!(!status("completed", "copying").finished());
        assert!(!status("idle", "copying").finished());
        assert!(status("completed", "done").finished());
        assert!(status("idle", "done").finished());
        assert!(status("cancelled", "copying").finished());
        assert!(status("failed", "copying").finished());
        assert!(!status("running", "copying").finished());
    }
}

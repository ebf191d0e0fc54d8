//! Each block step as a pure decision: `decide(record, observation, ctx) -> Transition`.
//!
//! A delivery of a step is a conversation between a decision and the executor
//! ([`super::execute`]):
//!
//! ```text
//!   obs = Delivered
//!   loop {
//!       t = decide(record, obs, ctx)          pure: no I/O, no clock, no randomness
//!       if t.record: compare-and-swap it with the ETag of the previous write (lost: stop)
//!       if t.fail:   the activity fails with that reason (and is cleaned up)
//!       if t.effect: perform it; its outcome is the next obs; else stop
//!   }
//!   send t.messages of every round
//! ```
//!
//! The time, this delivery's lease name and the block this one hands its export slot to are
//! in [`Ctx`]. Every rule of a step is in its file, with a table test over its (state,
//! observation) pairs: [`export`], [`ingest`], [`commit`], [`cleanup`].

pub mod cleanup;
pub mod commit;
pub mod export;
pub mod ingest;
pub mod operation;

use super::records::{BlockRecord, BlockState, IngestRoute, Lease, Step};
use crate::job::Verify;
use crate::kusto::digest::ContentDigest;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// What a kind of operation usually takes on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub mean: Duration,
    /// The usual distance from the mean.
    pub deviation: Duration,
    /// Look early and often (an export, whose end hands its slot on: a late look idles the
    /// source's capacity; an ingestion of the last round, whose end ends the copy), rather
    /// than late and seldom (other ingestions: the destination's capacity is not the bound,
    /// and each look costs requests).
    pub eager: bool,
}

/// Limits the decisions apply.
#[derive(Debug, Clone)]
pub struct Rules {
    pub max_export_attempts: u32,
    pub max_ingest_attempts: u32,
    /// Transient failures a block may record before its activity is stopped.
    pub error_budget: u32,
    /// How long an attempt's claim holds against duplicate deliveries.
    pub lease: time::Duration,
    pub min_poll: Duration,
    pub max_poll: Duration,
    /// The shortest wait before a look at an operation expected to end soon (the queue's
    /// visibility is in whole seconds; the in-process driver can go lower).
    pub poll_floor: Duration,
    /// Where this process batches its looks at running exports (every look due at one tick
    /// of this grid is one `.show operations`; 100 ms in `kc copy` and `kc serve`): an
    /// export expected to end soon is looked at on every tick, from two deviations before
    /// its usual end. `None`: each look is its own request (see [`Ctx::poll_delay`]).
    pub poll_grid: Option<Duration>,
    /// How often a block waiting for an export slot of its cluster looks again.
    pub slot_poll: Duration,
    /// How long after an export start whose answer was lost `.show operations` is trusted
    /// to list its operation if it started, and how often a block whose earlier export may
    /// still run looks again.
    pub orphan_settle: time::Duration,
    pub orphan_poll: Duration,
    /// Attempts of a block whose staging content differs from the source before the
    /// activity stops (`verify: content`). A difference that repeats is not noise: it is a
    /// value the route cannot carry, or a bug, and a person must look.
    pub max_content_attempts: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_export_attempts: 5,
            max_ingest_attempts: 5,
            error_budget: 20,
            lease: time::Duration::minutes(2),
            min_poll: Duration::from_secs(2),
            max_poll: Duration::from_secs(60),
            poll_floor: Duration::from_millis(250),
            poll_grid: None,
            slot_poll: Duration::from_secs(5),
            orphan_settle: time::Duration::minutes(1),
            orphan_poll: Duration::from_secs(30),
            max_content_attempts: 3,
        }
    }
}

/// What a decision knows besides the record and the observation.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub now: OffsetDateTime,
    /// This delivery's name, for leases: the queue message's id, so a redelivery of the same
    /// message (its first delivery died) takes its own attempt over.
    pub owner: String,
    /// The short id of (job, activity, iteration): folders and tags derive from it.
    pub iteration_id: String,
    /// The block this block's finished export starts (`number + export_slots`, or at the end of
    /// that chain the last block not known to have started), if any.
    pub handover: Option<u64>,
    pub route: IngestRoute,
    /// What a block must show before it is moved (the job's `verify`).
    pub verify: Verify,
    /// The destination's soft-delete period, as planning read it.
    pub soft_delete: Option<time::Duration>,
    /// This message was delivered before: that delivery may have written its decision and
    /// stopped before sending what followed.
    pub redelivered: bool,
    /// How long the operation this step waits for usually takes on its cluster (learned from
    /// the ones that ended before), when known.
    pub expected: Option<Expected>,
    /// The step waits for an export, whose end hands its slot on, or for an ingestion of the
    /// iteration's last round: looked at early and often even before any duration of its
    /// kind was learned (a process's first exports).
    pub eager: bool,
    pub rules: Rules,
}

impl Ctx {
    /// Why the destination would refuse this block's rows for their age, if it would: its
    /// creation time is before `now - soft-delete period` (kusto.md: such an ingestion is
    /// refused with `BadRequest_CreationTimeEarlierThanSoftDeletePeriod`).
    pub fn too_old(&self, b: &BlockRecord) -> Option<String> {
        let (created, period) = (b.creation_time?, self.soft_delete?);
        (created < self.now - period).then(|| {
            format!(
                "created {}, before the destination's soft-delete period of {} days: its {} rows are not copied",
                created.date(),
                period.whole_days(),
                b.planned_rows
            )
        })
    }
    pub fn lease(&self) -> Lease {
        Lease { owner: self.owner.clone(), expires_at: self.now + self.rules.lease }
    }
    /// When to look at a running operation again. Its usual duration known ([`Expected`]):
    /// an eager look (an export) from half a deviation before the usual end, then every half
    /// deviation, so its end is seen soon and its slot handed on; otherwise from half a
    /// deviation after it, then every deviation. Unknown, or past twice the usual duration:
    /// after about a quarter of the time it has run, so long ones are not polled needlessly
    /// (a sixteenth for exports looked at on a grid, see below).
    pub fn poll_delay(&self, started_at: OffsetDateTime) -> Duration {
        let elapsed = (self.now - started_at).unsigned_abs();
        let (floor, max) = (self.rules.poll_floor, self.rules.max_poll);
        match self.expected {
            // Looks batched on a grid are cheap (one request for every export due at a
            // tick): from two deviations before the usual end, on every tick.
            Some(e) if elapsed < 2 * e.mean && e.eager && self.rules.poll_grid.is_some() => {
                let grid = self.rules.poll_grid.unwrap_or_default();
                let first = e.mean.saturating_sub(e.deviation * 2);
                self.on_grid(first.saturating_sub(elapsed).min(max), grid)
            }
            Some(e) if elapsed < 2 * e.mean => {
                // Eager: from half a deviation before the mean, every half deviation; else
                // from half a deviation after it, every deviation.
                let (first, every) = if e.eager { (e.mean.saturating_sub(e.deviation / 2), e.deviation / 2) } else { (e.mean + e.deviation / 2, e.deviation) };
                if elapsed < first { (first - elapsed).clamp(floor, max) } else { every.max(e.mean / 16).clamp(floor, max) }
            }
            // Unknown, or long past the usual: from the floor when eager, else from
            // `min_poll`; after about a quarter of the time it has run, or a sixteenth for
            // looks batched on the grid (one request a tick serves every export due then). A
            // process's first exports end unseen for an eighth of their age on average at a
            // quarter: kc-bench's first round handed its slots on 0.3 to 0.5 s late (0.09 s
            // later on). An export of ten minutes costs about a hundred looks this way (25 at
            // a quarter) before its process has learned a duration: one request each at
            // most, fewer where looks land on the same tick of one process.
            _ if self.eager => match self.rules.poll_grid {
                Some(grid) => self.on_grid((elapsed / 16).clamp(floor, max), grid),
                None => (elapsed / 4).clamp(floor, max),
            },
            _ => (elapsed / 4).clamp(self.rules.min_poll, max),
        }
    }
    /// `delay`, lengthened to end on the next tick of `grid` (ticks counted from the Unix
    /// epoch, so every look of the process due about then lands on the same tick).
    fn on_grid(&self, delay: Duration, grid: Duration) -> Duration {
        let grid_ns = grid.as_nanos().max(1) as i128;
        let at = (self.now + delay).unix_timestamp_nanos();
        let tick = (at + grid_ns - 1).div_euclid(grid_ns) * grid_ns;
        let wait = (tick - self.now.unix_timestamp_nanos()).max(0) as u64;
        // A tick only just ahead is the next one's: never a look at once after the last.
        let wait = if wait < grid.as_nanos() as u64 / 4 { wait + grid.as_nanos() as u64 } else { wait };
        Duration::from_nanos(wait)
    }

    /// Back-off after `errors` transient failures.
    pub fn backoff(&self, errors: u32) -> Duration {
        self.rules.min_poll.saturating_mul(1 << errors.min(6)).min(self.rules.max_poll)
    }
}

pub fn folder_name(iteration_id: &str, block: u64, attempt: u32) -> String {
    format!("kcs-{iteration_id}-{block}-{attempt}")
}

/// Which of the job's `n` staging directories holds a block attempt's folder: they take turns
/// by block, and a new attempt of a block moves to the next one (a throttled or failing
/// account is not retried alone). Fixed by the folder's name, so every later step (ingest,
/// cleanup, abort) finds the folder without a record of where it went.
pub fn staging_index(block: u64, attempt: u32, n: usize) -> usize {
    ((block + u64::from(attempt.max(1)) - 1) % n.max(1) as u64) as usize
}

/// [`staging_index`] of a folder named by [`folder_name`] (`None`: not such a name).
pub fn staging_index_of(folder: &str, n: usize) -> Option<usize> {
    let mut parts = folder.rsplitn(3, '-');
    let attempt: u32 = parts.next()?.parse().ok()?;
    let block: u64 = parts.next()?.parse().ok()?;
    Some(staging_index(block, attempt, n))
}

/// Unique to (block, export attempt, ingestion attempt).
pub fn tag_for(iteration_id: &str, block: &BlockRecord) -> String {
    format!("drop-by:kc-{iteration_id}-{}-{}-{}", block.number, block.export_attempt, block.ingest_attempt)
}

/// The second tag every ingested extent carries, beside its `drop-by:` tag: a plain tag that
/// no `drop-by:` tag retention policy of the destination removes. After a move whose answer
/// was lost, it is how the block's rows are found at the destination (a database policy
/// like the docs' `drop-by:` for three days removes the other at once from years-old extents).
pub fn marker_of(tag: &str) -> String {
    format!("kc-block:{}", tag.strip_prefix("drop-by:").unwrap_or(tag))
}

/// An I/O the executor performs for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Take (or keep) this block's export slot of the source cluster.
    AcquireSlot,
    RenewSlot,
    ReleaseSlot,
    /// Create the folder and send `.export` into it.
    StartExport { folder: String },
    PollExport { operation: Uuid },
    /// Queue (or `.ingest`) the exported blobs of `folder` under `tag`.
    StartIngest { folder: String, tag: String },
    /// Operation status and the staging extents under `tag`.
    PollIngest { tag: String, route: IngestRoute, operations: Vec<String> },
    /// Drop the staging extents under a tag that is given up.
    DropStaged { tag: String },
    /// The content digest of the block at the source (its export's selection) and of these
    /// staging extents (`verify: content`).
    CompareContent { extents: Vec<Uuid> },
    /// `.move extents` of exactly these staging extents.
    Move { extents: Vec<Uuid> },
    /// After a move whose answer is unknown: which counted extents are still in staging, and
    /// how many rows the destination holds under the tag.
    Locate { extents: Vec<Uuid>, tag: String },
    /// Rows at the destination in the moved extents and under the tag, and how many of the
    /// counted extents are still in staging.
    Verify { moved: Vec<Uuid>, tag: String, counted: Vec<Uuid> },
    DropDestinationTag { tag: String, created_on: Option<OffsetDateTime> },
    DeleteFolders { folders: Vec<String> },
    /// Count the block done; finish the iteration when it was the last.
    Finish,
    /// Export operations of the source that could be an earlier attempt's, started without
    /// our knowing (its answer was lost): those started from `since` on and still running.
    FindOrphans { since: OffsetDateTime },
}

impl Effect {
    /// Whether performing it starts work for the activity (takes a slot, sends an export, an
    /// ingestion, a move): the executor looks whether the activity stopped (failed, cancelled)
    /// before the first of these in a step. The others look, give back or tidy up, and are
    /// harmless after a stop: the abort that follows a stop does the same.
    pub fn starts_work(&self) -> bool {
        matches!(self, Effect::AcquireSlot | Effect::StartExport { .. } | Effect::StartIngest { .. } | Effect::Move { .. })
    }
}

/// A step's failure, classified once where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub transient: bool,
    pub message: String,
    /// The command may have run although it failed (its answer was lost, it timed out): an
    /// export started this way may still be running, unknown to us, in the source's capacity.
    pub may_have_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportPoll {
    Pending,
    Completed { blobs: Vec<String>, rows: u64 },
    /// Failed, or another final state, or its record is gone: a new attempt.
    Ended { why: String },
    /// A final state another attempt cannot change (see [`operation`]): the activity stops.
    Stopped { why: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestPoll {
    /// Every operation reached a final state.
    pub finished: bool,
    pub failed: bool,
    /// The status is no longer known (404, or the operation record expired).
    pub status_missing: bool,
    /// A final state another attempt cannot change (see [`operation`]): the activity stops.
    pub stopped: Option<String>,
    /// The destination refused the rows for their age (older than its soft-delete period):
    /// its words. No attempt can change that; the block ends without its rows.
    pub too_old: Option<String>,
    /// Staging extents under the tag: (id, rows).
    pub extents: Vec<(Uuid, u64)>,
}

/// What the executor saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obs {
    /// The message was delivered: nothing observed yet.
    Delivered,
    /// An effect with nothing to report.
    Done,
    Failed(Failure),
    Slot { granted: bool },
    ExportStarted(Uuid),
    Export(ExportPoll),
    IngestStarted(Vec<String>),
    Ingest(IngestPoll),
    /// `.move` result rows: the destination ids, and the details of rows that failed.
    Moved { moved: Vec<Uuid>, failed: Vec<String> },
    /// The two digests of [`Effect::CompareContent`].
    Compared { source: ContentDigest, staging: ContentDigest },
    Located { in_staging: Vec<Uuid>, tagged_at_destination: u64 },
    /// Rows at the destination in the moved extents; under the tag or marker, and the
    /// counted extents left in staging, when looked for (`None`: not looked at, the moved
    /// extents holding every row already).
    Verified { by_ids: u64, by_tag: Option<u64>, left_in_staging: Option<usize> },
    TagDropped { failed: Vec<String> },
    /// How many export operations that may be an earlier attempt's still run.
    Orphans { running: u32 },
}

/// A message to send: a step of a block, after a delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub step: Step,
    pub block: u64,
    pub delay: Duration,
}

impl Msg {
    pub fn now(step: Step, block: u64) -> Msg {
        Msg { step, block, delay: Duration::ZERO }
    }
    pub fn later(step: Step, block: u64, delay: Duration) -> Msg {
        Msg { step, block, delay }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    /// The new record, to write with compare-and-swap; `None`: unchanged.
    pub record: Option<BlockRecord>,
    pub effect: Option<Effect>,
    pub messages: Vec<Msg>,
    /// The activity cannot go on: this is why, and what a person should do.
    pub fail: Option<String>,
}

impl Transition {
    /// Nothing to do: a duplicate, or the end of a conversation.
    pub fn none() -> Transition {
        Transition::default()
    }
    pub fn write(record: BlockRecord) -> Transition {
        Transition { record: Some(record), ..Transition::default() }
    }
    pub fn effect(effect: Effect) -> Transition {
        Transition { effect: Some(effect), ..Transition::default() }
    }
    pub fn fail(reason: String) -> Transition {
        Transition { fail: Some(reason), ..Transition::default() }
    }
    pub fn then(mut self, effect: Effect) -> Transition {
        self.effect = Some(effect);
        self
    }
    pub fn send(mut self, msg: Msg) -> Transition {
        self.messages.push(msg);
        self
    }
}

/// Decides one round of the step a message named, which must be the block's due step.
pub fn decide(step: Step, record: &BlockRecord, obs: &Obs, ctx: &Ctx) -> Transition {
    match step {
        Step::Export | Step::AwaitExport => export::decide(record, obs, ctx),
        Step::Ingest | Step::AwaitIngest => ingest::decide(record, obs, ctx),
        Step::Commit => commit::decide(record, obs, ctx),
        Step::Cleanup => cleanup::decide(record, obs, ctx),
        Step::Plan | Step::Abort => Transition::none(),
    }
}

/// The messages the write that produced `record`'s state sent: what a redelivery of that
/// step sends again (its first delivery may have written the state and stopped before it
/// sent them).
pub fn follow_ups(record: &BlockRecord, ctx: &Ctx) -> Vec<Msg> {
    let mut out: Vec<Msg> = record.due().map(|s| Msg::now(s, record.number)).into_iter().collect();
    // Harmless when repeated: the block handed to ignores an Export it is past.
    if record.exported() {
        if let Some(next) = ctx.handover {
            out.push(Msg::now(Step::Export, next));
        }
    }
    out
}

/// A transient failure counted against the block's budget, retried by `retry` after a
/// back-off; a permanent one stops the activity.
pub(crate) fn failed(record: &BlockRecord, failure: &Failure, ctx: &Ctx, what: &str, reset: Option<BlockState>, retry: Step) -> Transition {
    if !failure.transient {
        return Transition::fail(format!("block {}: {what}: {}", record.number, failure.message));
    }
    let mut next = record.clone();
    next.transient_errors += 1;
    if next.transient_errors > ctx.rules.error_budget {
        return Transition::fail(format!(
            "block {}: {what} failed {} times in a row; last error: {}",
            record.number, next.transient_errors, failure.message
        ));
    }
    next.last_error = Some(format!("{what}: {}", failure.message));
    next.lease = None;
    next.touched_at = ctx.now;
    if let Some(state) = reset {
        next.state = state;
    }
    let delay = ctx.backoff(next.transient_errors);
    Transition::write(next).send(Msg::later(retry, record.number, delay))
}

/// A block seen alive is written (touched, its slot claim renewed) at most this often while
/// its operation runs: often enough that the sweeper (ten minutes) and the claim's expiry
/// (thirty) never take it for stalled, rarely enough that a poll is mostly a read. The write
/// also ends a duplicate chain of polls (its compare-and-swap loses), so one lives at most
/// this long.
pub const TOUCH_EVERY: time::Duration = time::Duration::seconds(30);

/// Whether a poll that saw the block's operation still running should write the block.
pub(crate) fn touch_due(record: &BlockRecord, ctx: &Ctx) -> bool {
    ctx.now - record.touched_at >= TOUCH_EVERY || record.transient_errors > 0
}

/// A record written by this decision: touched now.
pub(crate) fn touched(record: &BlockRecord, ctx: &Ctx) -> BlockRecord {
    let mut next = record.clone();
    next.touched_at = ctx.now;
    next
}

/// A fresh lease held by another delivery: this one is a duplicate message, and ends. The
/// owner is a delivery of another message: if it dies, its own message comes back (the same
/// owner, which takes over) or the sweeper finds the block.
pub(crate) fn held_by_other(record: &BlockRecord, ctx: &Ctx) -> Option<Transition> {
    let lease = record.lease.as_ref()?;
    if lease.owner == ctx.owner || !lease.is_fresh(ctx.now) {
        return None;
    }
    Some(Transition::none())
}

#[cfg(test)]
mod staging_tests {
    use super::*;

    #[test]
    fn blocks_take_turns_over_the_staging_directories_and_a_new_attempt_moves_on() {
        let order: Vec<usize> = (0..6).map(|b| staging_index(b, 1, 3)).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(staging_index(0, 2, 3), 1, "the second attempt of block 0 goes to the next");
        assert_eq!(staging_index(7, 1, 1), 0, "one directory takes everything");
        let folder = folder_name("ab12cd-0123456789ab", 4, 2);
        assert_eq!(staging_index_of(&folder, 3), Some(staging_index(4, 2, 3)));
        assert_eq!(staging_index_of("kcs-probe", 3), None);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use time::macros::datetime;

    pub const T0: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);

    pub fn ctx() -> Ctx {
        Ctx {
            now: T0 + time::Duration::hours(1),
            owner: "me".into(),
            iteration_id: "it".into(),
            handover: Some(9),
            route: IngestRoute::Queued,
            verify: Verify::Count,
            soft_delete: None,
            redelivered: false,
            expected: None,
            eager: false,
            rules: Rules::default(),
        }
    }

    pub fn block(state: BlockState) -> BlockRecord {
        let mut b = BlockRecord::planned(1, T0, T0 + time::Duration::hours(1), 10, Some(T0), T0);
        b.state = state;
        b
    }

    pub fn transient(m: &str) -> Obs {
        Obs::Failed(Failure { transient: true, message: m.into(), may_have_run: false })
    }

    /// A transient failure whose command may have run (a lost answer).
    pub fn lost_answer(m: &str) -> Obs {
        Obs::Failed(Failure { transient: true, message: m.into(), may_have_run: true })
    }

    pub fn permanent(m: &str) -> Obs {
        Obs::Failed(Failure { transient: false, message: m.into(), may_have_run: false })
    }

    pub fn other_lease(ctx: &Ctx) -> Lease {
        Lease { owner: "other".into(), expires_at: ctx.now + time::Duration::seconds(30) }
    }

    pub fn expired_lease(ctx: &Ctx) -> Lease {
        Lease { owner: "other".into(), expires_at: ctx.now - time::Duration::seconds(1) }
    }
}

#[cfg(test)]
mod poll_tests {
    use super::test_support::*;
    use super::*;

    fn at(c: &Ctx, elapsed_ms: i64) -> Duration {
        c.poll_delay(c.now - time::Duration::milliseconds(elapsed_ms))
    }

    #[test]
    fn polls_follow_the_expected_duration_when_known() {
        let unknown = ctx();
        assert_eq!(at(&unknown, 0), unknown.rules.min_poll, "unknown: the plain schedule");
        assert_eq!(at(&unknown, 40_000), Duration::from_secs(10));
        let e = Expected { mean: Duration::from_secs(2), deviation: Duration::from_millis(400), eager: true };
        let eager = Ctx { expected: Some(e), ..ctx() };
        assert_eq!(at(&eager, 0), Duration::from_millis(1800), "an export: first look half a deviation before the mean");
        assert_eq!(at(&eager, 1900), Duration::from_millis(250), "then every half deviation (the floor here)");
        let lazy = Ctx { expected: Some(Expected { eager: false, ..e }), ..ctx() };
        assert_eq!(at(&lazy, 0), Duration::from_millis(2200), "an ingestion: half a deviation after the mean");
        assert_eq!(at(&lazy, 2300), Duration::from_millis(400), "then every deviation");
        assert_eq!(at(&eager, 5000), unknown.rules.min_poll, "past twice the mean: the plain schedule again");
    }

    #[test]
    fn batched_looks_land_on_the_ticks_of_the_grid() {
        let e = Expected { mean: Duration::from_secs(2), deviation: Duration::from_millis(400), eager: true };
        let grid = Duration::from_millis(100);
        // Now is 30 ms past a tick (T0 is on a whole second).
        let c = Ctx { expected: Some(e), rules: Rules { poll_grid: Some(grid), ..Rules::default() }, now: ctx().now + time::Duration::milliseconds(30), ..ctx() };
        assert_eq!(at(&c, 0), Duration::from_millis(1270), "first two deviations before the mean (1.2 s), to the next tick");
        assert_eq!(at(&c, 1500), Duration::from_millis(70), "then on the next tick");
        let just_before = Ctx { now: ctx().now + time::Duration::milliseconds(90), ..c.clone() };
        assert_eq!(at(&just_before, 1500), Duration::from_millis(110), "a tick only just ahead is skipped: never a look at once after the last");
        assert_eq!(at(&c, 5000), c.rules.min_poll, "past twice the mean: the plain schedule");
        let lazy = Ctx { expected: Some(Expected { eager: false, ..e }), ..c.clone() };
        assert_eq!(at(&lazy, 0), Duration::from_millis(2200), "an ingestion is not batched");
    }

    #[test]
    fn a_first_export_is_looked_at_often_before_any_duration_is_learned() {
        let grid = Duration::from_millis(100);
        let c = Ctx { eager: true, rules: Rules { poll_grid: Some(grid), ..Rules::default() }, now: ctx().now + time::Duration::milliseconds(30), ..ctx() };
        assert_eq!(at(&c, 0), Duration::from_millis(270), "from the floor (250 ms), to the next tick");
        assert_eq!(at(&c, 2000), Duration::from_millis(270), "then a sixteenth of the time it has run (125 ms, the floor here), on a tick");
        assert_eq!(at(&c, 8000), Duration::from_millis(570), "a sixteenth of 8 s, on a tick");
        assert_eq!(at(&Ctx { rules: Rules::default(), ..c.clone() }, 2000), Duration::from_millis(500), "without a grid (each look a request), a quarter, as it falls");
        assert_eq!(at(&Ctx { eager: false, ..c }, 2000), Rules::default().min_poll, "an ingestion keeps the plain schedule");
    }
}

//! `export` and `await-export`: a block's rows into a staging folder of its own attempt.
//!
//! Rules:
//! - A block exports only while it holds one of its source cluster's export slots (shared by
//!   every job on that cluster). Waiting for one is one chain of messages: the record says
//!   when the waiting chain looks next, and an earlier delivery is a duplicate that ends.
//! - The attempt (number, folder, lease) is recorded before `.export` is sent, and the
//!   operation id after. A duplicate delivery never takes over a fresh lease; an expired one
//!   is taken over as a new attempt with a new folder (the old folder is never read).
//! - Only the blobs the finished operation lists are ingested. A finished export hands the
//!   export slot of its job at once to block `number + export_slots`, or at the end of that
//!   chain to the last block not known to have started (`Ctx::handover`, chosen by
//!   `Cached::hand_over_to`).
//! - A block created before the destination's soft-delete period is not exported: the
//!   destination would refuse its rows. It ends without them, reported on the activity, and
//!   hands its turn on at once.
//! - A failed or vanished operation is a new attempt, up to `max_export_attempts`; a
//!   permanent error of the command (a bad query, a missing column) stops the activity, and so
//!   does a final state another attempt cannot change (`BadInput`, `Canceled`, an unknown
//!   state: the table in [`super::operation`]).

use super::{failed, held_by_other, touched, Ctx, Effect, ExportPoll, Msg, Obs, Transition};
use crate::engine::records::{BlockRecord, BlockState, Step};

/// A waiting chain's message may come this much before its time (clocks of instances
/// differ) and still count as the chain.
const EARLY: time::Duration = time::Duration::seconds(1);

pub fn decide(b: &BlockRecord, obs: &Obs, ctx: &Ctx) -> Transition {
    match (&b.state, obs) {
        // ---- export: take a slot, record the attempt, send the command ---------------
        (BlockState::Planned | BlockState::Exporting { operation_id: None, .. }, Obs::Delivered) => {
            if let Some(t) = held_by_other(b, ctx) {
                return t;
            }
            if let Some(at) = b.waiting_until.filter(|at| ctx.now + EARLY < *at) {
                // Another chain waits for this block's slot. Unless this is a redelivery of
                // the delivery that set that time: its message to look again may never have
                // been sent, so it is sent (again; a second copy at the same time ends here).
                return if ctx.redelivered { Transition::none().send(Msg::later(Step::Export, b.number, (at - ctx.now).unsigned_abs())) } else { Transition::none() };
            }
            match unconfirmed(b) {
                // Too old for the destination, and no export of it can be running: not
                // exported at all. It hands its turn on as a finished export would.
                None if matches!(b.state, BlockState::Planned) && ctx.too_old(b).is_some() => skip_too_old(b, ctx),
                // `.show operations` may list a new operation only after a while: until then
                // its absence proves nothing.
                Some(since) if ctx.now < since + ctx.rules.orphan_settle => wait_for_orphans(b, ctx, since, since + ctx.rules.orphan_settle),
                Some(since) => Transition::effect(Effect::FindOrphans { since }),
                None => Transition::effect(Effect::AcquireSlot),
            }
        }
        (BlockState::Planned | BlockState::Exporting { operation_id: None, .. }, Obs::Orphans { running }) => {
            let since = unconfirmed(b).unwrap_or(ctx.now);
            if *running > 0 {
                // An export that may be ours still runs in the slot we hold: starting another
                // would run two where the capacity counts one.
                return wait_for_orphans(b, ctx, since, ctx.now + ctx.rules.orphan_poll);
            }
            let mut next = touched(b, ctx);
            next.unconfirmed_export = None;
            next.state = BlockState::Planned;
            next.lease = None;
            Transition::write(next).then(Effect::AcquireSlot)
        }
        (BlockState::Planned | BlockState::Exporting { operation_id: None, .. }, Obs::Slot { granted: false }) => {
            let mut next = touched(b, ctx);
            // The look succeeded: the error budget counts failures in a row, and a long wait
            // must not add up scattered ones until the activity fails.
            next.transient_errors = 0;
            next.waiting_until = Some(ctx.now + ctx.rules.slot_poll);
            next.state = BlockState::Planned;
            next.lease = None;
            Transition::write(next).send(Msg::later(Step::Export, b.number, ctx.rules.slot_poll))
        }
        (BlockState::Planned | BlockState::Exporting { operation_id: None, .. }, Obs::Slot { granted: true }) => {
            if b.export_failures >= ctx.rules.max_export_attempts {
                return Transition::fail(format!(
                    "block {} failed to export {} times; last error: {}",
                    b.number,
                    b.export_failures,
                    b.last_error.clone().unwrap_or_default()
                ));
            }
            let mut next = touched(b, ctx);
            next.export_attempt += 1;
            let folder = super::folder_name(&ctx.iteration_id, b.number, next.export_attempt);
            next.folders.push(folder.clone());
            next.state = BlockState::Exporting { operation_id: None, started_at: ctx.now };
            next.lease = Some(ctx.lease());
            next.waiting_until = None;
            Transition::write(next).then(Effect::StartExport { folder })
        }
        // The slot's record or `.show operations` could not be read: this delivery's chain
        // looks again after a back-off (it sent nothing yet), and is the waiting chain.
        (BlockState::Planned, Obs::Failed(f)) => {
            let mut t = failed(b, f, ctx, "take an export slot", None, Step::Export);
            if let (Some(next), Some(retry)) = (t.record.as_mut(), t.messages.first()) {
                next.waiting_until = Some(ctx.now + retry.delay);
            }
            t
        }
        (BlockState::Exporting { operation_id: None, .. }, Obs::ExportStarted(op)) => {
            let mut next = touched(b, ctx);
            next.state = BlockState::Exporting { operation_id: Some(*op), started_at: ctx.now };
            next.lease = None;
            Transition::write(next).send(Msg::later(Step::AwaitExport, b.number, ctx.poll_delay(ctx.now)))
        }
        (BlockState::Exporting { operation_id: None, started_at }, Obs::Failed(f)) => {
            // Its folder is abandoned either way, and the slot is kept for the next attempt.
            // A start refused (throttled, never sent) is a transient error, not an attempt;
            // one whose answer was lost may have started an export that still occupies the
            // slot: the next attempt waits until none that could be it runs.
            let mut t = failed(b, f, ctx, "start the export", Some(BlockState::Planned), Step::Export);
            if f.may_have_run {
                if let Some(next) = t.record.as_mut() {
                    next.unconfirmed_export = Some(b.unconfirmed_export.map_or(*started_at, |u| u.min(*started_at)));
                }
            }
            t
        }

        // ---- await-export: poll until the operation ends ------------------------------
        (BlockState::Exporting { operation_id: Some(op), .. }, Obs::Delivered) => Transition::effect(Effect::PollExport { operation: *op }),
        (BlockState::Exporting { started_at, .. }, Obs::Export(ExportPoll::Pending)) => {
            let again = Msg::later(Step::AwaitExport, b.number, ctx.poll_delay(*started_at));
            if !super::touch_due(b, ctx) {
                return Transition::none().send(again);
            }
            // Seen alive: the sweeper leaves it alone, and the slot's claim is kept fresh.
            let mut next = touched(b, ctx);
            next.transient_errors = 0;
            Transition::write(next).then(Effect::RenewSlot).send(again)
        }
        (BlockState::Exporting { .. }, Obs::Export(ExportPoll::Completed { blobs, rows })) => {
            let mut next = touched(b, ctx);
            next.last_error = None;
            next.transient_errors = 0;
            next.state = if *rows == 0 { BlockState::Committed { rows: 0 } } else { BlockState::Exported { blobs: blobs.clone(), rows: *rows } };
            let mut t = Transition::write(next).then(Effect::ReleaseSlot);
            t.messages = super::follow_ups(t.record.as_ref().expect("written"), ctx);
            t
        }
        (BlockState::Exporting { .. }, Obs::Export(ExportPoll::Ended { why })) => {
            let mut next = touched(b, ctx);
            next.export_failures += 1;
            next.last_error = Some(why.clone());
            next.state = BlockState::Planned;
            next.lease = None;
            Transition::write(next).send(Msg::now(Step::Export, b.number))
        }
        (BlockState::Exporting { .. }, Obs::Export(ExportPoll::Stopped { why })) => Transition::fail(format!("block {}: {why}", b.number)),
        (BlockState::Exporting { operation_id: Some(_), .. }, Obs::Failed(f)) => failed(b, f, ctx, "look at the export", None, Step::AwaitExport),

        // Slot renewals and releases report nothing to decide on.
        (_, Obs::Done) => Transition::none(),
        // Anything else is a stale observation for this state: do nothing.
        _ => Transition::none(),
    }
}

/// A block the destination would refuse for its age: done without rows, through cleanup (it
/// may hold a slot kept from a refused start, and folders of earlier attempts), reported on
/// the activity.
fn skip_too_old(b: &BlockRecord, ctx: &Ctx) -> Transition {
    let mut next = touched(b, ctx);
    next.beyond_retention = true;
    next.last_error = ctx.too_old(b);
    next.state = BlockState::Committed { rows: 0 };
    next.lease = None;
    next.waiting_until = None;
    let mut t = Transition::write(next).then(Effect::ReleaseSlot);
    t.messages = super::follow_ups(t.record.as_ref().expect("written"), ctx);
    t
}

/// Since when an export of this block may run unknown to us: an earlier start whose answer
/// was lost, or an attempt interrupted between its record and its answer (a crash).
fn unconfirmed(b: &BlockRecord) -> Option<time::OffsetDateTime> {
    match b.state {
        BlockState::Exporting { operation_id: None, started_at } => Some(b.unconfirmed_export.map_or(started_at, |u| u.min(started_at))),
        _ => b.unconfirmed_export,
    }
}

/// One chain waits (holding and renewing the slot) and looks again at `until`.
fn wait_for_orphans(b: &BlockRecord, ctx: &Ctx, since: time::OffsetDateTime, until: time::OffsetDateTime) -> Transition {
    let mut next = touched(b, ctx);
    next.unconfirmed_export = Some(since);
    next.state = BlockState::Planned;
    next.lease = None;
    next.waiting_until = Some(until);
    let delay = (until - ctx.now).max(time::Duration::ZERO).unsigned_abs();
    Transition::write(next).then(Effect::RenewSlot).send(Msg::later(Step::Export, b.number, delay))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{Effect, ExportPoll, Msg, Obs};
    use super::*;
    use uuid::Uuid;

    fn exporting(op: Option<u128>) -> BlockState {
        BlockState::Exporting { operation_id: op.map(Uuid::from_u128), started_at: T0 }
    }

    #[test]
    fn a_delivery_asks_for_a_slot_unless_another_chain_waits_or_holds_the_lease() {
        let c = ctx();
        assert_eq!(decide(&block(BlockState::Planned), &Obs::Delivered, &c).effect, Some(Effect::AcquireSlot));

        let mut waiting = block(BlockState::Planned);
        waiting.waiting_until = Some(c.now + time::Duration::seconds(5));
        assert_eq!(decide(&waiting, &Obs::Delivered, &c), Transition::none(), "a second waiting chain ends");
        // The delivery that set that time, again (its send failed, or it stopped after the
        // write): it may be the only chain, so it sends the look again.
        let again = Ctx { redelivered: true, ..c.clone() };
        let t = decide(&waiting, &Obs::Delivered, &again);
        assert_eq!((t.record, t.effect), (None, None));
        assert_eq!(t.messages, vec![Msg::later(Step::Export, 1, std::time::Duration::from_secs(5))]);
        waiting.waiting_until = Some(c.now);
        assert_eq!(decide(&waiting, &Obs::Delivered, &c).effect, Some(Effect::AcquireSlot), "the chain's own look");

        let mut held = block(exporting(None));
        held.lease = Some(other_lease(&c));
        let t = decide(&held, &Obs::Delivered, &c);
        assert_eq!(t, Transition::none(), "a fresh lease of another delivery is never taken over");
        let mut own = held.clone();
        own.lease = Some(crate::engine::records::Lease { owner: c.owner.clone(), ..other_lease(&c) });
        // Taken over, the interrupted attempt's export may have started: look for it first.
        assert_eq!(decide(&own, &Obs::Delivered, &c).effect, Some(Effect::FindOrphans { since: T0 }), "a redelivery of the same message takes over");

        held.lease = Some(expired_lease(&c));
        assert_eq!(decide(&held, &Obs::Delivered, &c).effect, Some(Effect::FindOrphans { since: T0 }), "an expired lease is taken over");
    }

    #[test]
    fn a_block_older_than_the_destination_keeps_is_not_exported() {
        let mut c = ctx();
        let b = block(BlockState::Planned); // created T0, an hour before now
        c.soft_delete = Some(time::Duration::minutes(30));
        let t = decide(&b, &Obs::Delivered, &c);
        let next = t.record.clone().unwrap();
        assert_eq!(next.state, BlockState::Committed { rows: 0 });
        assert!(next.beyond_retention);
        assert!(next.last_error.unwrap().contains("10 rows are not copied"));
        assert_eq!(t.effect, Some(Effect::ReleaseSlot));
        assert_eq!(t.messages, vec![Msg::now(Step::Cleanup, 1), Msg::now(Step::Export, 9)], "cleanup, and the turn handed on");
        // Within the period, or no period known: exported as usual.
        c.soft_delete = Some(time::Duration::hours(2));
        assert_eq!(decide(&b, &Obs::Delivered, &c).effect, Some(Effect::AcquireSlot));
        c.soft_delete = None;
        assert_eq!(decide(&b, &Obs::Delivered, &c).effect, Some(Effect::AcquireSlot));
        // An earlier start may still be exporting: that is looked into first (the ingestion
        // is refused later, which ends the block the same way).
        c.soft_delete = Some(time::Duration::minutes(30));
        let mut lost = b.clone();
        lost.unconfirmed_export = Some(T0);
        assert_eq!(decide(&lost, &Obs::Delivered, &c).effect, Some(Effect::FindOrphans { since: T0 }));
    }

    /// Scenario 1's other half: the read of the slot records fails once. The chain goes on
    /// (the explorer found it ending there, found only by the sweeper ten minutes later).
    #[test]
    fn a_failed_look_at_the_slots_is_retried_by_the_same_chain() {
        let c = ctx();
        let t = decide(&block(BlockState::Planned), &transient("503 on the slot record"), &c);
        let next = t.record.unwrap();
        assert_eq!(next.transient_errors, 1);
        assert_eq!(t.messages.len(), 1);
        assert_eq!(t.messages[0].step, Step::Export);
        assert_eq!(next.waiting_until, Some(c.now + t.messages[0].delay), "the retry is the waiting chain");
        assert!(decide(&block(BlockState::Planned), &permanent("403"), &c).fail.is_some());
    }

    #[test]
    fn busy_slots_make_one_waiter() {
        let c = ctx();
        let t = decide(&block(BlockState::Planned), &Obs::Slot { granted: false }, &c);
        let next = t.record.unwrap();
        assert_eq!(next.waiting_until, Some(c.now + c.rules.slot_poll));
        assert_eq!(next.export_attempt, 0, "waiting is not an attempt");
        let mut erred = block(BlockState::Planned);
        erred.transient_errors = 7;
        let next = decide(&erred, &Obs::Slot { granted: false }, &c).record.unwrap();
        assert_eq!(next.transient_errors, 0, "a successful look ends the run of failures");
        assert_eq!(t.messages, vec![Msg::later(Step::Export, 1, c.rules.slot_poll)]);
    }

    #[test]
    fn a_granted_slot_records_a_new_attempt_before_sending() {
        let c = ctx();
        let mut b = block(BlockState::Planned);
        b.export_attempt = 2;
        b.folders = vec!["kcs-it-1-1".into(), "kcs-it-1-2".into()];
        let t = decide(&b, &Obs::Slot { granted: true }, &c);
        let next = t.record.unwrap();
        assert_eq!(next.export_attempt, 3);
        assert_eq!(next.folders.last().unwrap(), "kcs-it-1-3", "a new folder, never a reused one");
        assert_eq!(next.state, BlockState::Exporting { operation_id: None, started_at: c.now });
        assert_eq!(next.lease.unwrap().owner, "me");
        assert_eq!(t.effect, Some(Effect::StartExport { folder: "kcs-it-1-3".into() }));

        b.export_attempt = c.rules.max_export_attempts;
        assert!(decide(&b, &Obs::Slot { granted: true }, &c).fail.is_none(), "starts refused or lost are not failed exports");
        b.export_failures = c.rules.max_export_attempts;
        assert!(decide(&b, &Obs::Slot { granted: true }, &c).fail.is_some(), "exports that ran and failed are bounded");
    }

    #[test]
    fn an_ended_export_counts_as_a_failure() {
        let c = ctx();
        let t = decide(&block(exporting(Some(7))), &Obs::Export(ExportPoll::Ended { why: "Failed".into() }), &c);
        let next = t.record.unwrap();
        assert_eq!((next.export_failures, next.state), (1, BlockState::Planned));
    }

    /// An export start whose answer was lost (or a crash between record and answer) may have
    /// started an export that runs unknown to us: no new export starts until `.show
    /// operations` lists none that could be it, and not before that list can be trusted.
    #[test]
    fn a_lost_start_answer_waits_for_any_export_that_could_be_its_own() {
        let c = ctx();
        let started = c.now - time::Duration::seconds(10);
        let b = block(BlockState::Exporting { operation_id: None, started_at: started });

        // A refused start (throttled, never sent): transient, no orphan to look for.
        let refused = decide(&b, &transient("429 throttled"), &c).record.unwrap();
        assert_eq!((refused.unconfirmed_export, refused.export_failures), (None, 0));
        // A lost answer: remembered.
        let lost = decide(&b, &lost_answer("connection reset"), &c).record.unwrap();
        assert_eq!(lost.unconfirmed_export, Some(started));
        assert_eq!(lost.state, BlockState::Planned);

        // Before the list settles: wait, holding the slot, one chain.
        let mut early = lost.clone();
        early.waiting_until = None;
        let t = decide(&early, &Obs::Delivered, &c);
        assert_eq!(t.effect, Some(Effect::RenewSlot));
        assert_eq!(t.record.as_ref().unwrap().waiting_until, Some(started + c.rules.orphan_settle));
        assert_eq!(t.messages, vec![Msg::later(Step::Export, 1, (started + c.rules.orphan_settle - c.now).unsigned_abs())]);

        // A crashed attempt (still Exporting without an id) is the same case.
        let later = Ctx { now: started + c.rules.orphan_settle, ..ctx() };
        assert_eq!(decide(&b, &Obs::Delivered, &later).effect, Some(Effect::FindOrphans { since: started }));
        assert_eq!(decide(&early, &Obs::Delivered, &later).effect, Some(Effect::FindOrphans { since: started }));

        // One still runs: wait and look again; none: forget it and take the slot.
        let t = decide(&early, &Obs::Orphans { running: 1 }, &later);
        assert_eq!(t.effect, Some(Effect::RenewSlot));
        assert_eq!(t.record.as_ref().unwrap().unconfirmed_export, Some(started));
        assert_eq!(t.messages, vec![Msg::later(Step::Export, 1, later.rules.orphan_poll)]);
        let t = decide(&b, &Obs::Orphans { running: 0 }, &later);
        let next = t.record.unwrap();
        assert_eq!((next.unconfirmed_export, next.state), (None, BlockState::Planned));
        assert_eq!(t.effect, Some(Effect::AcquireSlot));
    }

    #[test]
    fn the_export_answer_is_recorded_or_classified() {
        let c = ctx();
        let b = block(exporting(None));
        let t = decide(&b, &Obs::ExportStarted(Uuid::from_u128(7)), &c);
        assert_eq!(t.record.unwrap().state, exporting(Some(7)).clone_with_start(c.now));
        assert_eq!(t.messages, vec![Msg::later(Step::AwaitExport, 1, c.rules.min_poll)]);

        let t = decide(&b, &transient("503"), &c);
        let next = t.record.unwrap();
        assert_eq!(next.state, BlockState::Planned);
        assert_eq!(next.transient_errors, 1);
        assert_eq!(t.messages[0].step, Step::Export);

        let t = decide(&b, &permanent("SEM0100: 'Nmae' does not exist"), &c);
        assert!(t.fail.unwrap().contains("Nmae"), "a bad query stops the activity with Kusto's message");
    }

    #[test]
    fn polls_renew_finish_hand_over_or_retry() {
        let c = ctx();
        let b = block(exporting(Some(7)));
        assert_eq!(decide(&b, &Obs::Delivered, &c).effect, Some(Effect::PollExport { operation: Uuid::from_u128(7) }));

        let t = decide(&b, &Obs::Export(ExportPoll::Pending), &c);
        assert_eq!(t.effect, Some(Effect::RenewSlot), "touched long ago: touched again, the claim renewed");
        assert_eq!(t.messages[0].step, Step::AwaitExport);
        let recent = BlockRecord { touched_at: c.now - time::Duration::seconds(5), ..b.clone() };
        let t = decide(&recent, &Obs::Export(ExportPoll::Pending), &c);
        assert_eq!((t.record, t.effect), (None, None), "touched a moment ago: no write");
        assert_eq!(t.messages, vec![Msg::later(Step::AwaitExport, 1, c.poll_delay(T0))]);

        let t = decide(&b, &Obs::Export(ExportPoll::Completed { blobs: vec!["a.parquet".into()], rows: 10 }), &c);
        assert_eq!(t.record.unwrap().state, BlockState::Exported { blobs: vec!["a.parquet".into()], rows: 10 });
        assert_eq!(t.effect, Some(Effect::ReleaseSlot));
        assert_eq!(t.messages, vec![Msg::now(Step::Ingest, 1), Msg::now(Step::Export, 9)], "the slot goes to the next block at once");

        let t = decide(&b, &Obs::Export(ExportPoll::Completed { blobs: vec![], rows: 0 }), &c);
        assert_eq!(t.record.unwrap().state, BlockState::Committed { rows: 0 }, "an empty block needs no ingestion");

        let t = decide(&b, &Obs::Export(ExportPoll::Ended { why: "Failed".into() }), &c);
        assert_eq!(t.record.unwrap().state, BlockState::Planned);
        assert_eq!(t.messages, vec![Msg::now(Step::Export, 1)]);

        let t = decide(&b, &transient("timeout"), &c);
        assert_eq!(t.record.unwrap().state, b.state, "a failed look changes nothing but the budget");

        let t = decide(&b, &Obs::Export(ExportPoll::Stopped { why: "export was canceled".into() }), &c);
        assert!(t.record.is_none() && t.fail.unwrap().contains("canceled"), "recorded on the activity, not retried");
    }

    /// Every final operation state, through the table in `operation` and this step: a new
    /// attempt (a new folder) or a recorded failure, never "still pending".
    #[test]
    fn each_final_operation_state_is_a_new_attempt_or_a_recorded_failure() {
        use crate::engine::steps::operation::{consequence, Consequence, Waiting};
        use crate::kusto::results::OperationState as S;
        let c = ctx();
        let b = block(exporting(Some(7)));
        let table = [
            (S::Failed, true),
            (S::PartiallySucceeded, true),
            (S::Throttled, true),
            (S::Abandoned, true),
            (S::Skipped, true),
            (S::BadInput, false),
            (S::Canceled, false),
        ];
        for (state, new_attempt) in table {
            let poll = match consequence(&state, None, Waiting::Export) {
                Consequence::NewAttempt(why) => ExportPoll::Ended { why },
                Consequence::Fail(why) => ExportPoll::Stopped { why },
                other => panic!("{state:?}: {other:?}"),
            };
            let t = decide(&b, &Obs::Export(poll), &c);
            if new_attempt {
                assert_eq!(t.record.unwrap().state, BlockState::Planned, "{state:?}");
                assert_eq!(t.messages, vec![Msg::now(Step::Export, 1)], "{state:?}");
            } else {
                assert!(t.fail.is_some() && t.record.is_none(), "{state:?}");
            }
        }
    }

    #[test]
    fn stale_observations_change_nothing() {
        let c = ctx();
        for state in [BlockState::Exported { blobs: vec![], rows: 1 }, BlockState::Done { rows: 1 }] {
            for obs in [Obs::Delivered, Obs::Slot { granted: true }, Obs::Export(ExportPoll::Pending), Obs::Done] {
                assert_eq!(decide(&block(state.clone()), &obs, &c), Transition::none(), "{state:?} {obs:?}");
            }
        }
    }

    trait WithStart {
        fn clone_with_start(&self, at: time::OffsetDateTime) -> BlockState;
    }
    impl WithStart for BlockState {
        fn clone_with_start(&self, at: time::OffsetDateTime) -> BlockState {
            match self {
                BlockState::Exporting { operation_id, .. } => BlockState::Exporting { operation_id: *operation_id, started_at: at },
                other => other.clone(),
            }
        }
    }
}

//! `ingest` and `await-ingest`: the exported blobs into the iteration's staging table, under
//! a tag unique to (block, export attempt, ingestion attempt), with the block's creation time.
//!
//! Rules:
//! - The attempt and its tag are recorded (with a lease) before the ingestion is sent; the
//!   operation ids after. A duplicate never takes over a fresh lease; an expired one is a
//!   new attempt under a new tag (whatever the old one ingests is never moved).
//! - Done when the tag holds exactly the exported rows and the operations are over, or their
//!   status is no longer known (404 or expired): the counted extents are recorded, and only
//!   they are moved, so a late duplicate under the same tag stays behind.
//! - More rows than exported (a stray duplicate), a failed operation, or fewer rows once it
//!   is over: the tag is given up (its extents dropped) and the block ingests again.
//! - An operation in a final state another attempt cannot change (`BadInput`, `Canceled`, an
//!   unknown state: the table in [`super::operation`]) stops the activity with the reason.
//! - Rows refused for their age (a creation time older than the destination's soft-delete
//!   period) end the block without them, reported on the activity: never an error loop.

use super::{failed, held_by_other, touched, Ctx, Effect, IngestPoll, Msg, Obs, Transition};
use crate::engine::records::{BlockRecord, BlockState, Step};

pub fn decide(b: &BlockRecord, obs: &Obs, ctx: &Ctx) -> Transition {
    match (&b.state, obs) {
        (BlockState::Exported { .. }, Obs::Delivered) => start(b, ctx),
        (BlockState::Ingesting { operations, .. }, Obs::Delivered) if operations.is_empty() => {
            held_by_other(b, ctx).unwrap_or_else(|| start(b, ctx))
        }
        (BlockState::Ingesting { blobs, rows, tag, route, started_at, operations }, Obs::IngestStarted(ops)) if operations.is_empty() => {
            let mut next = touched(b, ctx);
            next.lease = None;
            next.state = BlockState::Ingesting {
                blobs: blobs.clone(),
                rows: *rows,
                tag: tag.clone(),
                route: *route,
                operations: ops.clone(),
                started_at: *started_at,
            };
            Transition::write(next).send(Msg::later(Step::AwaitIngest, b.number, ctx.poll_delay(ctx.now)))
        }
        (BlockState::Ingesting { blobs, rows, operations, .. }, Obs::Failed(f)) if operations.is_empty() => {
            failed(b, f, ctx, "start the ingestion", Some(BlockState::Exported { blobs: blobs.clone(), rows: *rows }), Step::Ingest)
        }

        (BlockState::Ingesting { tag, route, operations, .. }, Obs::Delivered) => {
            Transition::effect(Effect::PollIngest { tag: tag.clone(), route: *route, operations: operations.clone() })
        }
        // Refused for its age, once every blob is over: no attempt can change that answer.
        // The block ends without its rows (reported on the activity), its exported folders
        // are deleted by cleanup, and whatever reached staging is dropped (never moved).
        (BlockState::Ingesting { tag, started_at, .. }, Obs::Ingest(poll @ IngestPoll { too_old: Some(why), .. })) => {
            if !(poll.finished || poll.status_missing) {
                return Transition::write(touched(b, ctx)).send(Msg::later(Step::AwaitIngest, b.number, ctx.poll_delay(*started_at)));
            }
            let mut next = touched(b, ctx);
            next.beyond_retention = true;
            next.lease = None;
            next.last_error = Some(format!("the destination refused the rows for their age: {why}"));
            next.state = BlockState::Committed { rows: 0 };
            let t = Transition::write(next).send(Msg::now(Step::Cleanup, b.number));
            if poll.extents.is_empty() {
                t
            } else {
                t.then(Effect::DropStaged { tag: tag.clone() })
            }
        }
        (BlockState::Ingesting { .. }, Obs::Ingest(IngestPoll { stopped: Some(why), .. })) => {
            Transition::fail(format!("block {}: {why}", b.number))
        }
        (BlockState::Ingesting { blobs, rows, tag, started_at, .. }, Obs::Ingest(poll)) => {
            let tagged: u64 = poll.extents.iter().map(|(_, r)| r).sum();
            match verdict(poll, tagged, *rows) {
                Verdict::Complete => {
                    let mut next = touched(b, ctx);
                    next.last_error = None;
                    next.transient_errors = 0;
                    next.state = BlockState::Ingested { rows: *rows, tag: tag.clone(), extents: poll.extents.iter().map(|(id, _)| *id).collect() };
                    // Never success from absence: without the status, the content decides.
                    next.verify_content = poll.status_missing;
                    Transition::write(next).send(Msg::now(Step::Commit, b.number))
                }
                Verdict::Wait if !super::touch_due(b, ctx) => Transition::none().send(Msg::later(Step::AwaitIngest, b.number, ctx.poll_delay(*started_at))),
                Verdict::Wait => Transition::write(touched(b, ctx)).send(Msg::later(Step::AwaitIngest, b.number, ctx.poll_delay(*started_at))),
                Verdict::Redo => {
                    let mut next = touched(b, ctx);
                    next.ingest_failures += 1;
                    next.last_error = Some(format!(
                        "ingestion under {tag} gave {tagged} rows of {rows}{}",
                        if poll.failed { " and failed" } else { "" }
                    ));
                    next.state = BlockState::Exported { blobs: blobs.clone(), rows: *rows };
                    let t = Transition::write(next).send(Msg::now(Step::Ingest, b.number));
                    // Recorded first: strays under the old tag are never moved, whether or not
                    // this drop happens.
                    if tagged > 0 {
                        t.then(Effect::DropStaged { tag: tag.clone() })
                    } else {
                        t
                    }
                }
            }
        }
        (BlockState::Ingesting { .. }, Obs::Failed(f)) => failed(b, f, ctx, "look at the ingestion", None, Step::AwaitIngest),
        _ => Transition::none(),
    }
}

fn start(b: &BlockRecord, ctx: &Ctx) -> Transition {
    let (blobs, rows) = match &b.state {
        BlockState::Exported { blobs, rows } | BlockState::Ingesting { blobs, rows, .. } => (blobs.clone(), *rows),
        _ => return Transition::none(),
    };
    if b.ingest_failures >= ctx.rules.max_ingest_attempts {
        return Transition::fail(format!(
            "block {} failed to ingest {} times; last error: {}",
            b.number,
            b.ingest_failures,
            b.last_error.clone().unwrap_or_default()
        ));
    }
    let mut next = touched(b, ctx);
    next.ingest_attempt += 1;
    next.verify_content = false;
    let tag = super::tag_for(&ctx.iteration_id, &next);
    next.lease = Some(ctx.lease());
    next.state = BlockState::Ingesting { blobs, rows, tag: tag.clone(), route: ctx.route, operations: vec![], started_at: ctx.now };
    let folder = b.folders.last().cloned().unwrap_or_default();
    Transition::write(next).then(Effect::StartIngest { folder, tag })
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Complete,
    Wait,
    Redo,
}

fn verdict(poll: &IngestPoll, tagged: u64, exported: u64) -> Verdict {
    let over = poll.finished || poll.status_missing;
    if tagged > exported || poll.failed {
        Verdict::Redo
    } else if tagged == exported && over {
        Verdict::Complete
    } else if over {
        Verdict::Redo
    } else {
        Verdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{Effect, IngestPoll, Msg, Obs};
    use super::*;
    use crate::engine::records::IngestRoute;
    use uuid::Uuid;

    fn exported() -> BlockState {
        BlockState::Exported { blobs: vec!["a.parquet".into()], rows: 10 }
    }

    fn ingesting(ops: &[&str]) -> BlockState {
        BlockState::Ingesting {
            blobs: vec!["a.parquet".into()],
            rows: 10,
            tag: "drop-by:kc-it-1-1-1".into(),
            route: IngestRoute::Queued,
            operations: ops.iter().map(|s| s.to_string()).collect(),
            started_at: T0,
        }
    }

    fn poll(finished: bool, failed: bool, missing: bool, extents: &[u64]) -> Obs {
        Obs::Ingest(IngestPoll {
            finished,
            failed,
            status_missing: missing,
            stopped: None,
            too_old: None,
            extents: extents.iter().enumerate().map(|(i, r)| (Uuid::from_u128(i as u128 + 1), *r)).collect(),
        })
    }

    #[test]
    fn each_attempt_gets_a_new_tag_recorded_before_it_is_sent() {
        let c = ctx();
        let mut b = block(exported());
        b.export_attempt = 1;
        let t = decide(&b, &Obs::Delivered, &c);
        let next = t.record.unwrap();
        assert_eq!(next.ingest_attempt, 1);
        assert_eq!(t.effect, Some(Effect::StartIngest { folder: String::new(), tag: "drop-by:kc-it-1-1-1".into() }));
        assert!(next.lease.is_some());

        // Interrupted before its operations were recorded, lease expired: a new tag.
        let mut again = next.clone();
        again.lease = Some(expired_lease(&c));
        let t = decide(&again, &Obs::Delivered, &c);
        assert_eq!(t.record.unwrap().ingest_attempt, 2);
        assert!(matches!(t.effect, Some(Effect::StartIngest { tag, .. }) if tag == "drop-by:kc-it-1-1-2"));

        // A fresh lease of another delivery: never taken over.
        again.lease = Some(other_lease(&c));
        let t = decide(&again, &Obs::Delivered, &c);
        assert_eq!((t.record, t.effect), (None, None));

        b.ingest_attempt = c.rules.max_ingest_attempts;
        assert!(decide(&b, &Obs::Delivered, &c).fail.is_none(), "failed starts are transient errors, not failed ingestions");
        b.ingest_failures = c.rules.max_ingest_attempts;
        assert!(decide(&b, &Obs::Delivered, &c).fail.is_some(), "ingestions that gave the wrong rows are bounded");
    }

    #[test]
    fn started_and_failed_starts() {
        let c = ctx();
        let b = block(ingesting(&[]));
        let t = decide(&b, &Obs::IngestStarted(vec!["op1".into()]), &c);
        assert_eq!(t.record.unwrap().state, ingesting(&["op1"]));
        assert_eq!(t.messages, vec![Msg::later(Step::AwaitIngest, 1, c.rules.min_poll)]);
        let t = decide(&b, &transient("503"), &c);
        assert_eq!(t.record.unwrap().state, exported());
        assert!(decide(&b, &permanent("400 bad mapping"), &c).fail.is_some());
    }

    #[test]
    fn verdicts_over_every_poll() {
        let c = ctx();
        let b = block(ingesting(&["op1"]));
        assert!(matches!(decide(&b, &Obs::Delivered, &c).effect, Some(Effect::PollIngest { .. })));
        // (finished, failed, status missing, extents) -> state after
        let ingested = |ids: &[u128]| BlockState::Ingested { rows: 10, tag: "drop-by:kc-it-1-1-1".into(), extents: ids.iter().map(|i| Uuid::from_u128(*i)).collect() };
        let table: Vec<(Obs, BlockState, Option<Step>, bool)> = vec![
            (poll(true, false, false, &[6, 4]), ingested(&[1, 2]), Some(Step::Commit), false),
            (poll(false, false, true, &[10]), ingested(&[1]), Some(Step::Commit), false), // status gone (404), rows exact
            (poll(false, false, true, &[4]), exported(), Some(Step::Ingest), true),       // status gone, fewer rows
            (poll(false, false, true, &[10, 10]), exported(), Some(Step::Ingest), true),  // status gone, more rows
            (poll(false, false, false, &[4]), ingesting(&["op1"]), Some(Step::AwaitIngest), false),
            (poll(false, false, false, &[10]), ingesting(&["op1"]), Some(Step::AwaitIngest), false), // rows there, still running
            (poll(false, false, false, &[10, 1]), exported(), Some(Step::Ingest), true),  // a stray duplicate
            (poll(true, true, false, &[10]), exported(), Some(Step::Ingest), true),       // failed: not trusted
            (poll(true, false, false, &[]), exported(), Some(Step::Ingest), false),       // nothing arrived
        ];
        for (obs, state, step, drops) in table {
            let t = decide(&b, &obs, &c);
            let unvouched = matches!((&obs, &state), (Obs::Ingest(p), BlockState::Ingested { .. }) if p.status_missing);
            assert_eq!(t.record.as_ref().unwrap().verify_content, unvouched, "without a status the content decides: {obs:?}");
            assert_eq!(t.record.as_ref().unwrap().state, state, "{obs:?}");
            assert_eq!(t.messages.first().map(|m| m.step), step, "{obs:?}");
            assert_eq!(matches!(t.effect, Some(Effect::DropStaged { .. })), drops, "{obs:?}");
        }
    }

    #[test]
    fn rows_refused_for_their_age_end_the_block_without_them() {
        let c = ctx();
        let b = block(ingesting(&["op1"]));
        let refused = |finished: bool, missing: bool, extents: &[u64]| match poll(finished, true, missing, extents) {
            Obs::Ingest(p) => Obs::Ingest(IngestPoll { too_old: Some("BadRequest_CreationTimeEarlierThanSoftDeletePeriod".into()), ..p }),
            _ => unreachable!(),
        };
        // Over, nothing arrived: done without rows, through cleanup (its folders), reported.
        let t = decide(&b, &refused(true, false, &[]), &c);
        let next = t.record.clone().unwrap();
        assert_eq!(next.state, BlockState::Committed { rows: 0 });
        assert!(next.beyond_retention && next.ingest_failures == 0, "not a failed attempt: no attempt can change it");
        assert!(next.last_error.unwrap().contains("SoftDeletePeriod"));
        assert_eq!((t.messages, t.effect, t.fail), (vec![Msg::now(Step::Cleanup, 1)], None, None));
        // Something reached staging under the tag anyway: dropped, never moved.
        let t = decide(&b, &refused(true, false, &[3]), &c);
        assert_eq!(t.effect, Some(Effect::DropStaged { tag: "drop-by:kc-it-1-1-1".into() }));
        // The status aged out after the refusal was seen: the same.
        assert_eq!(decide(&b, &refused(false, true, &[]), &c).record.unwrap().state, BlockState::Committed { rows: 0 });
        // Other blobs still running: wait for them to end first.
        let t = decide(&b, &refused(false, false, &[]), &c);
        assert_eq!(t.record.unwrap().state, b.state);
        assert_eq!(t.messages[0].step, Step::AwaitIngest);
    }

    #[test]
    fn each_final_operation_state_is_a_new_tag_or_a_recorded_failure() {
        use crate::engine::steps::operation::{consequence, Consequence, Waiting};
        use crate::kusto::results::OperationState as S;
        let c = ctx();
        let b = block(ingesting(&["op1"]));
        // The rows are all there: only the state decides.
        let table = [(S::Failed, true), (S::PartiallySucceeded, true), (S::Throttled, true), (S::Abandoned, true), (S::Skipped, true), (S::BadInput, false), (S::Canceled, false)];
        for (state, new_attempt) in table {
            let mut p = IngestPoll { finished: true, failed: false, status_missing: false, stopped: None, too_old: None, extents: vec![(Uuid::from_u128(1), 10)] };
            match consequence(&state, None, Waiting::Ingestion) {
                Consequence::NewAttempt(_) => p.failed = true,
                Consequence::Fail(why) => p.stopped = Some(why),
                other => panic!("{state:?}: {other:?}"),
            }
            let t = decide(&b, &Obs::Ingest(p), &c);
            if new_attempt {
                assert_eq!(t.record.unwrap().state, exported(), "{state:?}: never trusted, even with the rows there");
                assert!(matches!(t.effect, Some(Effect::DropStaged { .. })), "{state:?}");
            } else {
                assert!(t.fail.is_some() && t.record.is_none(), "{state:?}");
            }
        }
    }

    #[test]
    fn stale_observations_change_nothing() {
        let c = ctx();
        for state in [BlockState::Planned, BlockState::Committed { rows: 1 }] {
            assert_eq!(decide(&block(state), &poll(true, false, false, &[10]), &c), Transition::none());
        }
    }
}

//! `commit`: the counted staging extents moved to the destination, verified there, then the
//! destination's tag dropped, the block's staging folders deleted, and the block done.
//!
//! Rules:
//! - With `verify: content`, nothing is moved before Kusto on both sides has computed the same
//!   digest of the block (rows, per-column and per-row hashes: `kusto::digest`): the source
//!   over the block's export selection, staging over exactly the counted extents. A
//!   difference gives the attempt up unmoved (its tag's extents dropped) and exports the
//!   block again, up to `max_content_attempts`; then the activity stops naming the block and
//!   the column. The comparison only reads, so a repeat after a lost delivery compares again.
//! - `Moving` (with a lease) is recorded before `.move extents` is sent, naming exactly the
//!   extents that were counted; nothing else is ever moved.
//! - Success is what `.move` answered: a result row per extent, none `Failed`. Then the
//!   destination must hold the block's rows in the moved extents (or under the tag) before
//!   the tag is dropped. A move that failed moved nothing (it is all or nothing): try again.
//! - A move whose answer was lost is judged by looking: every counted extent still in staging
//!   means not moved (move again); none in staging and the tag's rows at the destination
//!   means moved. Anything else is never guessed: the activity stops with what was seen.

use super::{failed, held_by_other, touched, Ctx, Effect, Msg, Obs, Transition};
use crate::engine::records::{BlockRecord, BlockState, Step};
use crate::job::Verify;

pub fn decide(b: &BlockRecord, obs: &Obs, ctx: &Ctx) -> Transition {
    match (&b.state, obs) {
        (BlockState::Ingested { rows, tag, extents }, Obs::Delivered) => {
            if extents.is_empty() {
                return Transition::fail(format!("block {}: no counted extents recorded for tag {tag}", b.number));
            }
            match ctx.verify {
                Verify::Count if !b.verify_content => start_move(b, ctx, *rows, tag, extents),
                _ => Transition::effect(Effect::CompareContent { extents: extents.clone() }),
            }
        }
        (BlockState::Ingested { rows, tag, extents }, Obs::Compared { source, staging }) => match source.difference(staging) {
            None => start_move(b, ctx, *rows, tag, extents),
            Some(why) => content_differs(b, ctx, tag, &why),
        },
        (BlockState::Ingested { .. }, Obs::Failed(f)) => failed(b, f, ctx, "compare the block's content with the source", None, Step::Commit),
        (BlockState::Moving { tag, extents, .. }, Obs::Delivered) => {
            held_by_other(b, ctx).unwrap_or_else(|| Transition::effect(Effect::Locate { extents: extents.clone(), tag: tag.clone() }))
        }
        (BlockState::Moving { rows, tag, extents }, Obs::Moved { moved, failed: bad }) => {
            if !bad.is_empty() || moved.len() < extents.len() {
                // All or nothing: nothing moved. Look again after a pause (and count it).
                let f = super::Failure {
                    transient: true,
                    message: format!("the move reported {} of {} extents failed: {}", bad.len().max(extents.len() - moved.len().min(extents.len())), extents.len(), bad.join("; ")),
                    may_have_run: false,
                };
                return failed(b, &f, ctx, "move the block's extents", Some(BlockState::Ingested { rows: *rows, tag: tag.clone(), extents: extents.clone() }), Step::Commit);
            }
            moved_to(b, ctx, *rows, tag, moved.clone(), extents)
        }
        (BlockState::Moving { rows, tag, extents }, Obs::Located { in_staging, tagged_at_destination }) => {
            if in_staging.len() == extents.len() {
                let mut next = touched(b, ctx);
                next.lease = Some(ctx.lease());
                Transition::write(next).then(Effect::Move { extents: extents.clone() })
            } else if in_staging.is_empty() && *tagged_at_destination == *rows {
                moved_to(b, ctx, *rows, tag, vec![], extents)
            } else {
                Transition::fail(format!(
                    "block {}: after a move whose answer was lost, {} of its {} extents are in staging and the destination holds {} of its {rows} rows under {tag}: \
                     check the destination table for this block's rows before resubmitting",
                    b.number,
                    in_staging.len(),
                    extents.len(),
                    tagged_at_destination
                ))
            }
        }
        (BlockState::Moving { .. }, Obs::Failed(f)) => {
            // The move may have run: the next try looks before it moves (state stays Moving).
            failed(b, f, ctx, "move the block's extents", None, Step::Commit)
        }

        (BlockState::Moved { tag, moved, extents, verified: false, .. }, Obs::Delivered) => {
            Transition::effect(Effect::Verify { moved: moved.clone(), tag: tag.clone(), counted: extents.clone() })
        }
        (BlockState::Moved { tag, created_on, verified: true, .. }, Obs::Delivered) => {
            Transition::effect(Effect::DropDestinationTag { tag: tag.clone(), created_on: *created_on })
        }
        (BlockState::Moved { rows, tag, moved, extents, created_on, verified: false }, Obs::Verified { by_ids, by_tag, left_in_staging }) => {
            // Seen at the destination; or, when its own processes (tag retention, merges) have
            // rewritten the moved extents since, the move's result rows named every counted
            // extent and none of them is left in staging.
            let reported = !moved.is_empty() && moved.len() >= extents.len() && *left_in_staging == Some(0);
            if *by_ids == *rows || *by_tag == Some(*rows) || reported {
                let mut next = touched(b, ctx);
                next.state = BlockState::Moved { rows: *rows, tag: tag.clone(), moved: moved.clone(), extents: extents.clone(), created_on: *created_on, verified: true };
                Transition::write(next).then(Effect::DropDestinationTag { tag: tag.clone(), created_on: *created_on })
            } else {
                Transition::fail(format!(
                    "block {}: moved, but the destination holds {by_ids} of its {rows} rows in the moved extents and {} under {tag}",
                    b.number,
                    by_tag.unwrap_or(0)
                ))
            }
        }
        // The tag dropped, the block's folders are deleted in the same step, and then it is
        // done: no `Committed` record and `cleanup` step between (issue 12: a write and, under
        // the host, a message fewer per block). Stopped in between, the step runs again from
        // `Moved`: dropping a dropped tag and deleting deleted folders change nothing.
        (BlockState::Moved { verified: true, .. }, Obs::TagDropped { failed: bad }) => {
            if bad.is_empty() {
                Transition::effect(Effect::DeleteFolders { folders: b.folders.clone() })
            } else {
                let f = super::Failure { transient: true, message: bad.join("; "), may_have_run: false };
                failed(b, &f, ctx, "drop the block's tag at the destination", None, Step::Commit)
            }
        }
        (BlockState::Moved { rows, verified: true, .. }, Obs::Done) => {
            let mut next = touched(b, ctx);
            next.lease = None;
            next.last_error = None;
            next.transient_errors = 0;
            next.state = BlockState::Done { rows: *rows };
            Transition::write(next).then(Effect::Finish)
        }
        (BlockState::Moved { .. }, Obs::Failed(f)) => failed(b, f, ctx, "finish the move", None, Step::Commit),
        _ => Transition::none(),
    }
}

fn start_move(b: &BlockRecord, ctx: &Ctx, rows: u64, tag: &str, extents: &[uuid::Uuid]) -> Transition {
    let mut next = touched(b, ctx);
    next.lease = Some(ctx.lease());
    next.state = BlockState::Moving { rows, tag: tag.to_owned(), extents: extents.to_vec() };
    Transition::write(next).then(Effect::Move { extents: extents.to_vec() })
}

/// Staging holds other values than the source: this attempt is never moved. Recorded first
/// (back to `Planned`, a new export with a new folder and tag), then its extents dropped.
fn content_differs(b: &BlockRecord, ctx: &Ctx, tag: &str, why: &str) -> Transition {
    let mut next = touched(b, ctx);
    next.content_mismatches += 1;
    let reason = format!("block {} (ingestion times {} to {}): staging under {tag} differs from the source: {why}", b.number, b.from, b.to);
    if next.content_mismatches >= ctx.rules.max_content_attempts {
        return Transition::fail(format!("{reason}; {} attempts differed, none was moved", next.content_mismatches));
    }
    next.last_error = Some(reason);
    next.lease = None;
    next.state = BlockState::Planned;
    Transition::write(next).send(Msg::now(Step::Export, b.number)).then(Effect::DropStaged { tag: tag.to_owned() })
}

fn moved_to(b: &BlockRecord, ctx: &Ctx, rows: u64, tag: &str, moved: Vec<uuid::Uuid>, counted: &[uuid::Uuid]) -> Transition {
    let mut next = touched(b, ctx);
    next.lease = None;
    next.state = BlockState::Moved { rows, tag: tag.to_owned(), moved: moved.clone(), extents: counted.to_vec(), created_on: b.creation_time, verified: false };
    Transition::write(next).then(Effect::Verify { moved, tag: tag.to_owned(), counted: counted.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{Effect, Msg, Obs};
    use super::*;
    use uuid::Uuid;

    const TAG: &str = "drop-by:kc-it-1-1-1";

    fn ids(n: &[u128]) -> Vec<Uuid> {
        n.iter().map(|i| Uuid::from_u128(*i)).collect()
    }
    fn ingested() -> BlockState {
        BlockState::Ingested { rows: 10, tag: TAG.into(), extents: ids(&[1, 2]) }
    }
    fn moving() -> BlockState {
        BlockState::Moving { rows: 10, tag: TAG.into(), extents: ids(&[1, 2]) }
    }
    fn moved(verified: bool) -> BlockState {
        BlockState::Moved { rows: 10, tag: TAG.into(), moved: ids(&[11, 12]), extents: ids(&[1, 2]), created_on: Some(T0), verified }
    }

    #[test]
    fn the_counted_extents_are_recorded_then_moved() {
        let c = ctx();
        let t = decide(&block(ingested()), &Obs::Delivered, &c);
        assert_eq!(t.record.unwrap().state, moving());
        assert_eq!(t.effect, Some(Effect::Move { extents: ids(&[1, 2]) }), "exactly the counted ids");
    }

    #[test]
    fn move_results_decide() {
        let c = ctx();
        let b = block(moving());
        let t = decide(&b, &Obs::Moved { moved: ids(&[11, 12]), failed: vec![] }, &c);
        assert_eq!(t.record.unwrap().state, moved(false));
        assert_eq!(t.effect, Some(Effect::Verify { moved: ids(&[11, 12]), tag: TAG.into(), counted: ids(&[1, 2]) }));

        let t = decide(&b, &Obs::Moved { moved: vec![], failed: vec!["Failed: extent merged".into()] }, &c);
        assert_eq!(t.record.unwrap().state, ingested(), "a failed move moved nothing: count on and retry");
        assert_eq!(t.messages[0].step, Step::Commit);

        let t = decide(&b, &transient("connection lost"), &c);
        assert_eq!(t.record.unwrap().state, moving(), "unknown outcome: stay Moving, look first next time");
        assert!(decide(&b, &permanent("schemas differ"), &c).fail.is_some());
    }

    #[test]
    fn a_lost_answer_is_judged_by_looking_never_by_absence() {
        let c = ctx();
        let mut b = block(moving());
        assert_eq!(decide(&b, &Obs::Delivered, &c).effect, Some(Effect::Locate { extents: ids(&[1, 2]), tag: TAG.into() }));
        b.lease = Some(other_lease(&c));
        assert_eq!(decide(&b, &Obs::Delivered, &c).effect, None, "a fresh move of another delivery is not repeated");
        b.lease = None;

        let t = decide(&b, &Obs::Located { in_staging: ids(&[1, 2]), tagged_at_destination: 0 }, &c);
        assert_eq!(t.effect, Some(Effect::Move { extents: ids(&[1, 2]) }), "still in staging: not moved");
        let t = decide(&b, &Obs::Located { in_staging: vec![], tagged_at_destination: 10 }, &c);
        assert!(matches!(t.record.unwrap().state, BlockState::Moved { verified: false, .. }), "seen at the destination: moved");
        // The tag is gone from both tables (tag retention, a drop): never read as moved.
        let t = decide(&b, &Obs::Located { in_staging: vec![], tagged_at_destination: 0 }, &c);
        assert!(t.fail.unwrap().contains("0 of its 10 rows"));
        let t = decide(&b, &Obs::Located { in_staging: ids(&[1]), tagged_at_destination: 4 }, &c);
        assert!(t.fail.is_some());
    }

    #[test]
    fn verified_then_untagged_then_committed() {
        let c = ctx();
        let b = block(moved(false));
        assert_eq!(decide(&b, &Obs::Delivered, &c).effect, Some(Effect::Verify { moved: ids(&[11, 12]), tag: TAG.into(), counted: ids(&[1, 2]) }));
        // Seen by the moved ids, by the tag, or (rewritten at the destination since) reported
        // by the move for every counted extent with none left in staging.
        for (by_ids, by_tag, left) in [(10, None, None), (0, Some(10), Some(2)), (0, Some(0), Some(0))] {
            let t = decide(&b, &Obs::Verified { by_ids, by_tag, left_in_staging: left }, &c);
            assert_eq!(t.record.unwrap().state, moved(true));
            assert_eq!(t.effect, Some(Effect::DropDestinationTag { tag: TAG.into(), created_on: Some(T0) }));
        }
        assert!(decide(&b, &Obs::Verified { by_ids: 9, by_tag: Some(0), left_in_staging: Some(1) }, &c).fail.is_some());
        let mut found_by_looking = block(moved(false));
        if let BlockState::Moved { moved, .. } = &mut found_by_looking.state {
            moved.clear(); // a lost answer: no result rows to rely on
        }
        assert!(decide(&found_by_looking, &Obs::Verified { by_ids: 0, by_tag: Some(0), left_in_staging: Some(0) }, &c).fail.is_some(), "never success from absence alone");

        let v = block(moved(true));
        assert_eq!(decide(&v, &Obs::Delivered, &c).effect, Some(Effect::DropDestinationTag { tag: TAG.into(), created_on: Some(T0) }), "verified before: not again (the drop renames extents)");
        let mut v = v;
        v.folders = vec!["kcs-it-1-1".into()];
        let t = decide(&v, &Obs::TagDropped { failed: vec![] }, &c);
        assert_eq!((t.record, t.effect), (None, Some(Effect::DeleteFolders { folders: v.folders.clone() })), "the folders next, in the same step");
        let t = decide(&v, &Obs::Done, &c);
        assert_eq!(t.record.unwrap().state, BlockState::Done { rows: 10 });
        assert_eq!(t.effect, Some(Effect::Finish));
        assert!(t.messages.is_empty());
        let t = decide(&v, &transient("503"), &c);
        assert_eq!(t.record.unwrap().state, v.state, "a failed deletion: the step again, from Moved");
        assert_eq!(t.messages[0].step, Step::Commit);
        let t = decide(&v, &Obs::TagDropped { failed: vec!["Failed".into()] }, &c);
        assert_eq!(t.record.unwrap().state, moved(true));
    }

    fn digest(rows: i64, row_hash: i64, a: i64) -> crate::kusto::digest::ContentDigest {
        crate::kusto::digest::ContentDigest { rows, row_hash: Some(row_hash), columns: vec![("A".into(), Some(a)), ("B".into(), Some(5))], pairs: vec![] }
    }

    #[test]
    fn content_is_compared_before_any_move() {
        let count = ctx();
        let content = Ctx { verify: Verify::Content, ..ctx() };
        let b = block(ingested());
        assert_eq!(decide(&b, &Obs::Delivered, &count).effect, Some(Effect::Move { extents: ids(&[1, 2]) }), "count: move at once");
        let t = decide(&b, &Obs::Delivered, &content);
        assert_eq!(t.effect, Some(Effect::CompareContent { extents: ids(&[1, 2]) }), "content: the counted extents, compared first");
        assert_eq!(t.record, None, "a comparison only reads: nothing to record before it");
        let mut unvouched = b.clone();
        unvouched.verify_content = true;
        assert_eq!(
            decide(&unvouched, &Obs::Delivered, &count).effect,
            Some(Effect::CompareContent { extents: ids(&[1, 2]) }),
            "an ingestion whose status was gone is compared whatever the job's verify"
        );

        // (source, staging) -> what happens
        let same = Obs::Compared { source: digest(10, 7, 3), staging: digest(10, 7, 3) };
        let t = decide(&b, &same, &content);
        assert_eq!(t.record.unwrap().state, moving());
        assert_eq!(t.effect, Some(Effect::Move { extents: ids(&[1, 2]) }));

        for (staging, names) in [(digest(10, 7, 4), "column A"), (digest(10, 8, 3), "not in the same rows"), (digest(9, 7, 3), "rows")] {
            let t = decide(&b, &Obs::Compared { source: digest(10, 7, 3), staging }, &content);
            let next = t.record.unwrap();
            assert_eq!(next.state, BlockState::Planned, "{names}: given up unmoved, exported again");
            assert_eq!(next.content_mismatches, 1);
            assert!(next.last_error.unwrap().contains(names));
            assert_eq!(t.effect, Some(Effect::DropStaged { tag: TAG.into() }), "its extents dropped (after the record says so)");
            assert_eq!(t.messages, vec![Msg::now(Step::Export, 1)]);
        }

        let mut worn = block(ingested());
        worn.content_mismatches = content.rules.max_content_attempts - 1;
        let t = decide(&worn, &Obs::Compared { source: digest(10, 7, 3), staging: digest(10, 7, 4) }, &content);
        let why = t.fail.expect("the limit stops the activity");
        assert!(why.starts_with("block 1 ") && why.contains("column A") && why.contains("none was moved"), "{why}");
        assert_eq!(t.effect, None, "nothing moved");

        let t = decide(&b, &transient("query timed out"), &content);
        assert_eq!(t.record.unwrap().state, ingested(), "a failed comparison is retried as it was");
        assert_eq!(t.messages[0].step, Step::Commit);
        assert!(decide(&b, &permanent("hash_xxhash64 unknown"), &content).fail.is_some());
    }

    #[test]
    fn stale_observations_change_nothing() {
        let c = ctx();
        for state in [BlockState::Planned, BlockState::Committed { rows: 1 }, BlockState::Done { rows: 1 }] {
            assert_eq!(decide(&block(state), &Obs::Moved { moved: ids(&[1]), failed: vec![] }, &c), Transition::none());
        }
    }
}

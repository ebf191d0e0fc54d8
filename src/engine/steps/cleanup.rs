//! `cleanup`: the staging folders of a block that ends without a move (an empty export, a
//! block too old for the destination) deleted, then the block done and counted. A moved
//! block's `commit` step does the same itself.
//!
//! Rules:
//! - Every folder the block ever created is deleted (a failed attempt's partial export too).
//! - The block is marked done, then counted towards its iteration; the iteration finishes
//!   with its last block (and the sweeper finishes one whose blocks are all done, should the
//!   step stop in between).

use super::{failed, touched, Ctx, Effect, Obs, Transition};
use crate::engine::records::{BlockRecord, BlockState, Step};

pub fn decide(b: &BlockRecord, obs: &Obs, ctx: &Ctx) -> Transition {
    match (&b.state, obs) {
        (BlockState::Committed { .. }, Obs::Delivered) => Transition::effect(Effect::DeleteFolders { folders: b.folders.clone() }),
        (BlockState::Committed { rows }, Obs::Done) => {
            let mut next = touched(b, ctx);
            next.state = BlockState::Done { rows: *rows };
            next.lease = None;
            Transition::write(next).then(Effect::Finish)
        }
        (BlockState::Committed { .. }, Obs::Failed(f)) => failed(b, f, ctx, "delete the staging folders", None, Step::Cleanup),
        _ => Transition::none(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{Effect, Obs};
    use super::*;

    #[test]
    fn folders_then_done_then_counted() {
        let c = ctx();
        let mut b = block(BlockState::Committed { rows: 10 });
        b.folders = vec!["kcs-it-1-1".into(), "kcs-it-1-2".into()];
        assert_eq!(decide(&b, &Obs::Delivered, &c).effect, Some(Effect::DeleteFolders { folders: b.folders.clone() }));
        let t = decide(&b, &Obs::Done, &c);
        assert_eq!(t.record.unwrap().state, BlockState::Done { rows: 10 });
        assert_eq!(t.effect, Some(Effect::Finish));
        let t = decide(&b, &transient("503"), &c);
        assert_eq!(t.record.unwrap().state, b.state);
        assert_eq!(t.messages[0].step, Step::Cleanup);
        // Done absorbs everything.
        let done = block(BlockState::Done { rows: 10 });
        for obs in [Obs::Delivered, Obs::Done, transient("x")] {
            assert_eq!(decide(&done, &obs, &c), Transition::none());
        }
    }
}

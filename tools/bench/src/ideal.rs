//! T*, the makespan of a perfect pipeline over the very durations the simulated clusters
//! draw (README, "Benchmarks", gives the formula):
//!
//! - the k-th export started runs `export[k]` (the k-th draw of the export kind); exports
//!   start in order, each on the first of the C slots to free up, with no gap;
//! - block k's ingestion starts when its export ends and runs `ingest[k]`, then its move
//!   runs `move[k]` (the destination's ingestion is not the bound here);
//! - T* is when the last block's move ends.
//!
//! Planning, polls, queues and storage are free in this pipeline: T / T* charges all of them
//! to the engine. T_base ([`super::base`]) measures what the simulator and storage cost anyway.

use kusto_sim::{drawn_duration, CommandKind, Spread};
use std::time::Duration;

/// Mean durations per kind and their spread: what the clusters are configured with.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    pub export: Duration,
    pub ingest: Duration,
    pub moves: Duration,
    pub spread: Spread,
}

impl Durations {
    /// The `k`-th draw of each kind, as the cluster draws it.
    pub fn drawn(&self, kind: CommandKind, k: u64) -> Duration {
        let mean = match kind {
            CommandKind::Export => self.export,
            CommandKind::Move => self.moves,
            _ => self.ingest,
        };
        drawn_duration(mean, self.spread, kind, k)
    }
}

/// The ideal makespan of `blocks` blocks with `capacity` export slots. The engine ingests by
/// the queued route (kind `QueuedIngest`), so that kind's draws are the ingestion's.
pub fn t_star(durations: &Durations, blocks: u64, capacity: usize) -> Duration {
    let mut slots = vec![Duration::ZERO; capacity.max(1)];
    let mut makespan = Duration::ZERO;
    for k in 0..blocks {
        let (slot, free_at) = slots.iter().enumerate().min_by_key(|(_, t)| **t).map(|(i, t)| (i, *t)).expect("one slot at least");
        let exported = free_at + durations.drawn(CommandKind::Export, k);
        slots[slot] = exported;
        let done = exported + durations.drawn(CommandKind::QueuedIngest, k) + durations.drawn(CommandKind::Move, k);
        makespan = makespan.max(done);
    }
    makespan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(export_ms: u64) -> Durations {
        Durations {
            export: Duration::from_millis(export_ms),
            ingest: Duration::from_millis(1000),
            moves: Duration::from_millis(200),
            spread: Spread { seed: 1, fraction: 0.0 },
        }
    }

    #[test]
    fn fixed_durations_give_rounds_of_exports_then_one_ingestion_and_move() {
        // The example: 100 blocks, capacity 8 -> 13 rounds of 8 exports.
        let d = Durations { export: Duration::from_millis(300), ingest: Duration::from_millis(300), moves: Duration::from_millis(300), ..fixed(300) };
        assert_eq!(t_star(&d, 100, 8), Duration::from_millis(13 * 300 + 300 + 300));
        assert_eq!(t_star(&fixed(2000), 200, 8), Duration::from_millis(25 * 2000 + 1200));
        assert_eq!(t_star(&fixed(2000), 1, 8), Duration::from_millis(3200));
    }

    #[test]
    fn spread_durations_keep_every_slot_busy() {
        let d = Durations { spread: Spread { seed: 9, fraction: 0.3 }, ..fixed(2000) };
        let t = t_star(&d, 200, 8);
        let busy: Duration = (0..200).map(|k| d.drawn(CommandKind::Export, k)).sum();
        // No slot idles before the last export starts: T* is about busy / C, plus the tail.
        assert!(t >= busy / 8, "{t:?} vs {busy:?}");
        assert!(t <= busy / 8 + Duration::from_millis(2600 + 1300 + 260), "{t:?} vs {busy:?}");
    }
}

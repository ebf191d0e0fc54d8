//! Where the simulator's ids (extents, operations, ingestion sources) come from: random
//! (v4) by default; from a seeded counter on a thread that asked for it, so the fault
//! explorer, which runs a whole schedule on one thread, replays a seed exactly.

use std::cell::Cell;
use uuid::Uuid;

thread_local! {
    static SEEDED: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// From now on, ids made on this thread come from `seed` and a counter (`None`: random again).
pub fn seed_thread(seed: Option<u64>) {
    SEEDED.with(|s| s.set(seed.map(|seed| (seed, 0))));
}

pub fn new_uuid() -> Uuid {
    SEEDED.with(|s| match s.get() {
        None => Uuid::new_v4(),
        Some((seed, n)) => {
            s.set(Some((seed, n + 1)));
            // splitmix64 of (seed, n), twice, shaped as a v4 uuid.
            let mix = |mut z: u64| {
                z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            };
            let hi = mix(seed ^ n.wrapping_mul(2));
            let lo = mix(seed ^ n.wrapping_mul(2).wrapping_add(1));
            uuid::Builder::from_random_bytes(((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes()).into_uuid()
        }
    })
}

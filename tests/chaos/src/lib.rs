//! The seeded fault explorer (issue 8): the real engine, the in-memory checkpoint store and
//! two in-process simulated clusters, in virtual time, under a host that delivers, loses,
//! duplicates and delays messages and a set of faults drawn from one seed. Each schedule
//! ends with a check of what the destination holds against what the source held.
//!
//! `kc-chaos --schedules N --seed S` runs many; `tests/chaos.rs` runs a few hundred in the
//! test command. A schedule is its seed: `kc-chaos --replay SEED` runs it again with a trace.

pub mod azurite;
pub mod check;
pub mod driver;
pub mod faults;
pub mod rng;
pub mod staging;
pub mod store;
pub mod transport;

pub use check::Findings;
pub use driver::{run_schedule, Outcome, Sabotage, ScheduleOptions};
pub use faults::Class;

/// The seed of schedule `i` of a run started with `seed`: independent of how many run.
pub fn schedule_seed(seed: u64, i: u64) -> u64 {
    let mut r = rng::Rng::new(seed.wrapping_add(i.wrapping_mul(0xD1B5_4A32_D192_ED03)));
    r.next_u64()
}

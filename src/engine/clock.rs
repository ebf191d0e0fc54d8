//! Time and identity are inputs of the engine: decisions take the time as an argument, and
//! the executor asks these for it, so a test or the fault explorer can run the real engine in
//! virtual time with reproducible ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use time::OffsetDateTime;

pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

/// The machine's clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock(Mutex::new(start))
    }
    pub fn advance(&self, by: time::Duration) {
        *self.0.lock().unwrap() += by;
    }
    pub fn set(&self, to: OffsetDateTime) {
        *self.0.lock().unwrap() = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

/// Names for leases (who runs an attempt).
pub trait Ids: Send + Sync {
    fn lease_owner(&self) -> String;
}

/// Random ids: distinct across processes and instances.
#[derive(Debug, Default)]
pub struct RandomIds;

impl Ids for RandomIds {
    fn lease_owner(&self) -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }
}

/// Ids from a counter: the same run gives the same ids.
#[derive(Debug, Default)]
pub struct SequentialIds(AtomicU64);

impl Ids for SequentialIds {
    fn lease_owner(&self) -> String {
        format!("d{}", self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

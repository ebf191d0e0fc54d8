//! What a schedule may break, and the record of what it did break.
//!
//! A [`Profile`] is drawn from the schedule's seed: a probability per fault site (zero for
//! the sites this schedule leaves alone), so schedules differ in what they stress. [`Chaos`]
//! holds the generator every site draws from, in the order the single-threaded runtime
//! reaches them, and counts each fault injected by kind.
//!
//! A crash is a step stopped at a call and never resumed: the wrapper of the Kusto transport,
//! the checkpoint store or the staging store parks the step's future for good and marks it
//! crashed; the driver drops it (the process died) and the queue delivers its message again
//! after the visibility timeout, as the Functions host does.

use crate::rng::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Whether the job must still complete exactly (recoverable) or may fail cleanly (fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Recoverable,
    Fatal,
}

/// Probabilities per site, per call or per delivery.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub deliver_twice: f64,
    pub redeliver_while_running: f64,
    pub deliver_late: f64,
    pub drop_message: f64,
    pub queue_send_fails: f64,
    pub storage_fails: f64,
    pub storage_answer_lost: f64,
    pub crash: f64,
    pub kusto_fails: f64,
    pub kusto_answer_lost: f64,
    pub staging_fails: f64,
}

impl Profile {
    /// A profile from the seed: each site is on in about half the schedules, at a rate drawn
    /// around its typical value.
    pub fn draw(rng: &mut Rng) -> Profile {
        let mut site = |typical: f64| if rng.chance(0.5) { typical * (0.5 + rng.unit()) } else { 0.0 };
        Profile {
            deliver_twice: site(0.08),
            redeliver_while_running: site(0.04),
            deliver_late: site(0.08),
            drop_message: site(0.03),
            queue_send_fails: site(0.03),
            storage_fails: site(0.03),
            storage_answer_lost: site(0.02),
            crash: site(0.01),
            kusto_fails: site(0.04),
            kusto_answer_lost: site(0.03),
            staging_fails: site(0.05),
        }
    }
}

pub struct Chaos {
    rng: Mutex<Rng>,
    pub profile: Profile,
    injected: Mutex<BTreeMap<(Class, String), u64>>,
    trace: Option<Mutex<Vec<String>>>,
    /// Until set, no fault fires (the job is recorded and the stage set without faults).
    armed: AtomicBool,
}

impl Chaos {
    pub fn new(seed: u64, profile: Profile, trace: bool) -> Chaos {
        Chaos { rng: Mutex::new(Rng::new(seed)), profile, injected: Mutex::default(), trace: trace.then(Mutex::default), armed: AtomicBool::new(false) }
    }

    pub fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::SeqCst);
    }

    /// Draws whether a fault with probability `p` fires here.
    pub fn roll(&self, p: f64) -> bool {
        self.armed.load(Ordering::SeqCst) && p > 0.0 && self.rng.lock().unwrap().chance(p)
    }

    pub fn range(&self, lo: u64, hi: u64) -> u64 {
        self.rng.lock().unwrap().range(lo, hi)
    }

    /// Counts a fault injected and, when tracing, says where.
    pub fn note(&self, class: Class, kind: &str, detail: impl FnOnce() -> String) {
        *self.injected.lock().unwrap().entry((class, kind.to_owned())).or_default() += 1;
        self.log(|| format!("fault {kind}: {}", detail()));
    }

    pub fn log(&self, line: impl FnOnce() -> String) {
        if let Some(t) = &self.trace {
            t.lock().unwrap().push(line());
        }
    }

    pub fn injected(&self) -> BTreeMap<(Class, String), u64> {
        self.injected.lock().unwrap().clone()
    }

    pub fn trace(&self) -> Vec<String> {
        self.trace.as_ref().map(|t| t.lock().unwrap().clone()).unwrap_or_default()
    }

    /// A crash point: inside a step, with the profile's probability, the step stops here for
    /// good. `site` names the call, `after` whether it already took effect.
    pub async fn crash_point(&self, site: &str, after: bool) {
        let Ok(ctl) = STEP.try_with(|c| c.clone()) else { return };
        if self.roll(self.profile.crash) {
            let when = if after { "after" } else { "before" };
            self.note(Class::Recoverable, &format!("crash_{when}_call"), || format!("{site} in {}", ctl.name));
            ctl.crashed.store(true, Ordering::SeqCst);
            ctl.stopped.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

/// The step (or tick) a future is running, for its crash points.
pub struct StepCtl {
    pub name: String,
    pub crashed: AtomicBool,
    /// Woken when the step crashes, so the driver drops it (the process died).
    pub stopped: tokio::sync::Notify,
}

impl StepCtl {
    pub fn new(name: String) -> Arc<StepCtl> {
        Arc::new(StepCtl { name, crashed: AtomicBool::new(false), stopped: tokio::sync::Notify::new() })
    }
}

tokio::task_local! {
    pub static STEP: Arc<StepCtl>;
}

//! The in-process driver (`kc copy`, tests): a queue of due messages in memory, worked by
//! a few concurrent workers, until no message is left.
//!
//! It is the same engine as under the Functions host; only the message transport differs.
//! Nothing here is state: the checkpoints are, so a killed `kc copy` started again resumes
//! from [`super::copy::CopyEngine::resume`].

use super::{Delivery, Engine, EngineError, Outgoing, StepMessage};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Transient failures of one message before the driver gives up on it.
const MAX_TRANSIENT_RETRIES: u32 = 30;

#[derive(Debug, PartialEq, Eq)]
struct Due {
    at: Instant,
    seq: u64,
    /// The message's id, kept across its retries (leases know a redelivery by it).
    id: u64,
    message: StepMessage,
    failures: u32,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: the earliest due comes first.
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What happened, for a progress view.
#[derive(Debug, Clone)]
pub enum Event {
    Ran { message: StepMessage },
    Retrying { message: StepMessage, error: String, attempt: u32 },
    Failed { message: StepMessage, error: String },
}

/// Runs messages until none is left. Returns the permanent failures seen.
pub async fn run(
    engine: Arc<dyn Engine>,
    initial: Vec<Outgoing>,
    workers: usize,
    mut on_event: impl FnMut(&Event) + Send,
) -> Vec<String> {
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    let now = Instant::now();
    for o in initial {
        seq += 1;
        queue.push(Due { at: now + o.delay, seq, id: seq, message: o.message, failures: 0 });
    }
    // Message ids unique to this run: another `kc copy` of the same job never shares them.
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut running = tokio::task::JoinSet::new();
    let mut failures = Vec::new();
    loop {
        // Start what is due, up to the worker count.
        while running.len() < workers.max(1) {
            match queue.peek() {
                Some(d) if d.at <= Instant::now() => {
                    let d = queue.pop().expect("peeked");
                    let engine = engine.clone();
                    let message_id = Some(format!("local-{run}-{}", d.id));
                    running.spawn(async move {
                        let delivery = Delivery { message_id, dequeue_count: d.failures + 1 };
                        let result = engine.step(&d.message, &delivery).await;
                        (d, result)
                    });
                }
                _ => break,
            }
        }
        if running.is_empty() {
            match queue.peek() {
                None => return failures,
                Some(d) => {
                    tokio::time::sleep_until(d.at).await;
                    continue;
                }
            }
        }
        let next_due = queue.peek().map(|d| d.at);
        let joined = match next_due {
            Some(at) => tokio::select! {
                j = running.join_next() => j,
                _ = tokio::time::sleep_until(at) => continue,
            },
            None => running.join_next().await,
        };
        let Some(joined) = joined else { continue };
        let (d, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("a step panicked: {e}"));
                continue;
            }
        };
        match result {
            Ok(next) => {
                on_event(&Event::Ran { message: d.message.clone() });
                let now = Instant::now();
                for o in next {
                    seq += 1;
                    queue.push(Due { at: now + o.delay, seq, id: seq, message: o.message, failures: 0 });
                }
            }
            Err(EngineError::Transient(error)) if d.failures < MAX_TRANSIENT_RETRIES => {
                let attempt = d.failures + 1;
                on_event(&Event::Retrying { message: d.message.clone(), error, attempt });
                // Exponential backoff from 200 ms, capped at 30 s.
                let delay = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(8))).min(Duration::from_secs(30));
                seq += 1;
                queue.push(Due { at: Instant::now() + delay, seq, id: d.id, message: d.message, failures: attempt });
            }
            Err(e) => {
                let error = e.to_string();
                on_event(&Event::Failed { message: d.message.clone(), error: error.clone() });
                failures.push(error);
            }
        }
    }
}

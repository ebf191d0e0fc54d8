//! `steps`: one engine step named by a message on `kc-steps`.

use super::invocation::{queue_text, InvocationResult};
use super::{bindings, emit, AppState, HandlerError};
use crate::engine::{Delivery, EngineError, Outgoing, StepMessage};
use serde_json::json;
use std::time::Duration;
use tracing::Instrument;

/// A follow-up due sooner than this (a look at an operation about to end) is run in this
/// invocation after its wait instead of through the queue, whose delays are whole seconds.
const INLINE_BELOW: Duration = Duration::from_secs(1);
/// At most this many such follow-ups per invocation, and for at most this long in all: a
/// look at an export about to end runs on every tick of the poll grid until the export ends
/// (through the queue each look would wait a whole second and the host's next poll, with the
/// slot idle meanwhile), yet an invocation never holds its host concurrency for long.
const INLINE_ROUNDS: u32 = 64;
const INLINE_BUDGET: Duration = Duration::from_secs(10);

pub async fn run(state: &AppState, invocation: &super::Invocation) -> Result<InvocationResult, HandlerError> {
    let text = queue_text(invocation.binding(bindings::STEP).map_err(HandlerError::BadPayload)?)
        .map_err(HandlerError::BadPayload)?;
    // Only our own code writes this queue: a message we cannot read is a bug, and failing it
    // keeps it (in the poison queue) for a person to look at.
    let message: StepMessage = serde_json::from_str(&text)
        .map_err(|e| HandlerError::Failed(format!("step message is not a step ({e}): {}", truncate(&text))))?;
    let delivery = Delivery {
        message_id: invocation.meta_string("Id"),
        dequeue_count: invocation.meta_u32("DequeueCount").unwrap_or(1),
    };
    let mut result = InvocationResult::default();
    match state.engine.step(&message, &delivery).instrument(step_span(&message)).await {
        Ok(outgoing) => {
            let outgoing = run_soon_ones(state, outgoing, &delivery).await;
            emit(state, outgoing, &mut result).await?;
            result.return_value = json!({"step": message.step, "job": message.job});
            Ok(result)
        }
        Err(EngineError::Transient(m)) => Err(HandlerError::Transient(m)),
        Err(EngineError::Permanent(m)) => {
            // The engine has recorded the failure on the job; retrying cannot help.
            step_span(&message).in_scope(|| tracing::error!(error = %m, "step failed for good"));
            result.logs.push(m.clone());
            result.return_value = json!({"step": message.step, "job": message.job, "failed": m});
            Ok(result)
        }
    }
}

/// Runs here, up to [`INLINE_ROUNDS`] times within [`INLINE_BUDGET`], the follow-ups that
/// should not wait for the queue: the export starts due now, together (a finished export
/// handing its slot on: through the queue it would wait for the host's next look, up to
/// `maxPollingInterval`, with the source's capacity idle), else the one follow-up due now,
/// else the one due within [`INLINE_BELOW`], after its wait. The others that wait are sent
/// as it goes; answers what is left to send.
/// Safe against a crash at any point: this invocation's own message is deleted only once we
/// answer, so a crash redelivers it and the engine sends its follow-ups again. A follow-up
/// that fails here is sent through the queue as it would have been.
async fn run_soon_ones(state: &AppState, mut outgoing: Vec<Outgoing>, delivery: &Delivery) -> Vec<Outgoing> {
    let started = tokio::time::Instant::now();
    for round in 1..=INLINE_ROUNDS {
        let due = |o: &Outgoing| o.delay.is_zero();
        let hand_overs: Vec<usize> = outgoing.iter().enumerate().filter(|(_, o)| due(o) && o.message.step == "export").map(|(i, _)| i).collect();
        let now: Vec<usize> = outgoing.iter().enumerate().filter(|(_, o)| due(o)).map(|(i, _)| i).collect();
        let soon: Vec<usize> = outgoing.iter().enumerate().filter(|(_, o)| !due(o) && o.delay < INLINE_BELOW).map(|(i, _)| i).collect();
        let picked: Vec<usize> = match (&hand_overs[..], &now[..], &soon[..]) {
            // Every export due now, side by side: planning's first exports (one after the
            // other, the last of eight started 0.2 s after the first), or the hand-overs of
            // exports that ended together.
            ([_, ..], _, _) => hand_overs,
            // The one step due now (planning's next chunk, a block's next phase): through
            // the queue it would wait for the host's next look. Several go out together, for
            // the host to run side by side.
            ([], [i], _) => vec![*i],
            ([], [], [i]) => vec![*i],
            _ => break,
        };
        let wait = picked.iter().map(|&i| outgoing[i].delay).max().unwrap_or_default();
        if started.elapsed() + wait > INLINE_BUDGET {
            break;
        }
        let mut batch = Vec::with_capacity(picked.len());
        for &i in picked.iter().rev() {
            batch.push(outgoing.remove(i));
        }
        batch.reverse();
        // The others that must wait go to the queue now: held until this loop ends, a look
        // at an export this invocation just started waited for the whole chain run here
        // (kc-bench saw first looks 2.5 s after an export's start instead of 1.3 s, its
        // slot idle for up to a second after the export ended).
        outgoing = send_delayed(state, outgoing).await;
        tokio::time::sleep(wait).await;
        let runs = batch.iter().enumerate().map(|(k, next)| {
            // Its own delivery name: leases tell this run from the message's redeliveries.
            let inline = Delivery { message_id: delivery.message_id.as_ref().map(|id| format!("{id}/inline-{round}-{k}")), dequeue_count: 1 };
            async move { state.engine.step(&next.message, &inline).instrument(step_span(&next.message)).await }
        });
        let results = futures::future::join_all(runs).await;
        let mut failed = false;
        for (next, result) in batch.into_iter().zip(results) {
            match result {
                Ok(more) => outgoing.extend(more),
                Err(e) => {
                    step_span(&next.message).in_scope(|| tracing::info!(error = %e, "a follow-up run in the invocation failed: it goes through the queue"));
                    outgoing.push(Outgoing { delay: Duration::from_secs(1), ..next });
                    failed = true;
                }
            }
        }
        if failed {
            break;
        }
    }
    outgoing
}

/// Sends the follow-ups that wait (a delay of their own) through the queue now; answers the
/// rest, and any whose send failed (the invocation's answer sends those, or fails).
async fn send_delayed(state: &AppState, outgoing: Vec<Outgoing>) -> Vec<Outgoing> {
    let mut kept = Vec::new();
    for out in outgoing {
        if out.delay.is_zero() {
            kept.push(out);
            continue;
        }
        let text = serde_json::to_string(&out.message).expect("step messages serialize");
        if let Err(e) = state.steps.send(&text, out.delay).await {
            step_span(&out.message).in_scope(|| tracing::info!(error = %e, "sending a follow-up failed: the invocation's answer sends it"));
            kept.push(out);
        }
    }
    kept
}

/// The span a step's logs carry. Attached with `instrument`, never `enter`: a guard held
/// across an await stays entered on whatever else the worker thread polls meanwhile, and
/// other invocations' logs would name this block.
fn step_span(message: &StepMessage) -> tracing::Span {
    tracing::info_span!("step", job = %message.job, activity = ?message.activity,
        iteration = ?message.iteration, block = ?message.block, step = %message.step)
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

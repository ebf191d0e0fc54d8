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

/// Runs here, up to [`INLINE_ROUNDS`] times within [`INLINE_BUDGET`], the follow-up that
/// should not wait for the queue: an export start due now (a finished export handing its
/// slot on: through the queue it would wait for the host's next look, up to
/// `maxPollingInterval`, with the source's capacity idle), else the one follow-up due now,
/// else the one due within [`INLINE_BELOW`], after its wait. Answers what is left to send.
/// Safe against a crash at any point: this invocation's own message is deleted only once we
/// answer, so a crash redelivers it and the engine sends its follow-ups again. A follow-up
/// that fails here is sent through the queue as it would have been.
async fn run_soon_ones(state: &AppState, mut outgoing: Vec<Outgoing>, delivery: &Delivery) -> Vec<Outgoing> {
    let started = tokio::time::Instant::now();
    for round in 1..=INLINE_ROUNDS {
        let hand_over = outgoing.iter().position(|o| o.delay.is_zero() && o.message.step == "export");
        let now: Vec<usize> = outgoing.iter().enumerate().filter(|(_, o)| o.delay.is_zero()).map(|(i, _)| i).collect();
        let soon: Vec<usize> = outgoing.iter().enumerate().filter(|(_, o)| !o.delay.is_zero() && o.delay < INLINE_BELOW).map(|(i, _)| i).collect();
        let i = match (hand_over, &now[..], &soon[..]) {
            (Some(i), _, _) => i,
            // The one step due now (planning's next chunk, a block's next phase): through
            // the queue it would wait for the host's next look. Several go out together, for
            // the host to run side by side.
            (None, [i], _) => *i,
            (None, [], [i]) => *i,
            _ => break,
        };
        if started.elapsed() + outgoing[i].delay > INLINE_BUDGET {
            break;
        }
        let next = outgoing.remove(i);
        tokio::time::sleep(next.delay).await;
        // Its own delivery name: leases tell this run from the message's redeliveries.
        let inline = Delivery { message_id: delivery.message_id.as_ref().map(|id| format!("{id}/inline-{round}")), dequeue_count: 1 };
        match state.engine.step(&next.message, &inline).instrument(step_span(&next.message)).await {
            Ok(more) => outgoing.extend(more),
            Err(e) => {
                step_span(&next.message).in_scope(|| tracing::info!(error = %e, "a follow-up run in the invocation failed: it goes through the queue"));
                outgoing.push(Outgoing { delay: Duration::from_secs(1), ..next });
                break;
            }
        }
    }
    outgoing
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

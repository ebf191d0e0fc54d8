//! `steps`: one engine step named by a message on `kc-steps`.

use super::invocation::{queue_text, InvocationResult};
use super::{bindings, emit, AppState, HandlerError};
use crate::engine::{Delivery, EngineError, StepMessage};
use serde_json::json;

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
    let span = tracing::info_span!("step", job = %message.job, activity = ?message.activity,
        iteration = ?message.iteration, block = ?message.block, step = %message.step);
    let _enter = span.enter();
    let mut result = InvocationResult::default();
    match state.engine.step(&message, &delivery).await {
        Ok(outgoing) => {
            emit(state, outgoing, &mut result).await?;
            result.return_value = json!({"step": message.step, "job": message.job});
            Ok(result)
        }
        Err(EngineError::Transient(m)) => Err(HandlerError::Transient(m)),
        Err(EngineError::Permanent(m)) => {
            // The engine has recorded the failure on the job; retrying cannot help.
            tracing::error!(error = %m, "step failed for good");
            result.logs.push(m.clone());
            result.return_value = json!({"step": message.step, "job": message.job, "failed": m});
            Ok(result)
        }
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

//! `scheduler`: the timer. Keeps the declared replications, starts due iterations of
//! continuous jobs and re-emits lost work.

use super::invocation::{timer_info, InvocationResult};
use super::{bindings, emit, AppState, HandlerError};
use crate::engine::{EngineError, Tick};
use serde_json::json;

pub async fn run(state: &AppState, invocation: &super::Invocation) -> Result<InvocationResult, HandlerError> {
    let timer = timer_info(invocation.binding(bindings::TIMER).map_err(HandlerError::BadPayload)?)
        .map_err(HandlerError::BadPayload)?;
    let tick = Tick {
        now: invocation.utc_now().unwrap_or_else(time::OffsetDateTime::now_utc),
        past_due: timer.is_past_due,
    };
    let mut result = InvocationResult::default();
    // A timer invocation is not retried by the host, so a failure here only waits for the next
    // tick; say so in the answer.
    let failed = |e| match e {
        EngineError::Transient(m) => HandlerError::Transient(format!("{m}; the next tick will try again")),
        EngineError::Permanent(m) => HandlerError::Failed(m),
    };
    let declared = &state.replications;
    let mut outgoing = if declared.replications.is_empty() && declared.version == 0 {
        Vec::new()
    } else {
        super::replications::reconcile(state.store.as_ref(), state.engine.as_ref(), &state.policy, &declared.replications, declared.version, tick.now)
            .await
            .map_err(failed)?
    };
    outgoing.extend(state.engine.tick(&tick).await.map_err(failed)?);
    let count = outgoing.len();
    emit(state, outgoing, &mut result).await?;
    result.return_value = json!({"pastDue": tick.past_due, "messages": count});
    Ok(result)
}

//! `requests`: a copy request dropped on `kc-requests`.
//!
//! Valid or not, the request is recorded and answered 2xx: an invalid request will not become
//! valid by retrying, so it is recorded as rejected with its reason (visible through `status`)
//! instead of bouncing into the poison queue. Only storage failures answer non-2xx.

use super::invocation::{queue_text, InvocationResult};
use super::{bindings, emit, AppState, HandlerError};
use crate::engine::EngineError;
use crate::job::{record_request, RecordOutcome};
use serde_json::json;

pub async fn run(state: &AppState, invocation: &super::Invocation) -> Result<InvocationResult, HandlerError> {
    let text = queue_text(invocation.binding(bindings::REQUEST).map_err(HandlerError::BadPayload)?)
        .map_err(HandlerError::BadPayload)?;
    let now = invocation.utc_now().unwrap_or_else(time::OffsetDateTime::now_utc);
    // The size limit holds on the raw text too (request::parse refuses it, recorded once).
    let outcome = record_request(state.store.as_ref(), &text, now, &state.policy).await?;
    let mut result = InvocationResult::default();
    let job = match outcome {
        RecordOutcome::Accepted(job) => {
            result.logs.push(format!("job {} accepted", job.id));
            tracing::info!(job = %job.id, "job accepted");
            job
        }
        RecordOutcome::AlreadyRecorded(job) => {
            // A redelivery: start again, harmlessly; the engine ignores what is already done.
            result.logs.push(format!("job {} was already recorded", job.id));
            job
        }
        RecordOutcome::IdTaken { id } => {
            let message = format!("job id {id} is taken by a job with a different definition; nothing was recorded: submit under a new jobId");
            tracing::warn!(job = %id, "{message}");
            result.logs.push(message.clone());
            result.return_value = json!({"jobId": id, "state": "IdTaken", "reason": message});
            return Ok(result);
        }
        RecordOutcome::Rejected(job) => {
            let reason = job.reason.clone().unwrap_or_default();
            tracing::warn!(job = %job.id, reason = %reason, "request rejected");
            result.logs.push(format!("request rejected as {}: {reason}", job.id));
            result.return_value = json!({"jobId": job.id, "state": "Rejected", "reason": reason});
            return Ok(result);
        }
    };
    let outgoing = state.engine.start_job(&job).await.map_err(|e| match e {
        EngineError::Transient(m) => HandlerError::Transient(m),
        EngineError::Permanent(m) => HandlerError::Failed(m),
    })?;
    emit(state, outgoing, &mut result).await?;
    result.return_value = json!({"jobId": job.id, "state": "Accepted"});
    Ok(result)
}

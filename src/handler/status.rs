//! `status`: `GET /api/status` (all jobs) or `GET /api/status?job=<id>` (one, with every
//! activity and iteration: the same document `kc status --json` prints).

use super::invocation::{http_response, HttpRequest, InvocationResult};
use super::{bindings, AppState, HandlerError};
use crate::engine::status::job_status;
use crate::job::record::{list_jobs, read_job};
use serde_json::json;

pub async fn run(state: &AppState, invocation: &super::Invocation) -> Result<InvocationResult, HandlerError> {
    let req = HttpRequest::parse(invocation.binding(bindings::REQ).map_err(HandlerError::BadPayload)?)
        .map_err(HandlerError::BadPayload)?;
    let job_id = req.query_param("job").or_else(|| req.params.get("job").and_then(|v| v.as_str()).map(str::to_owned));
    let (code, body) = match job_id {
        Some(id) => match read_job(state.store.as_ref(), &id).await? {
            Some(job) => {
                let status = job_status(state.store.as_ref(), &job, time::OffsetDateTime::now_utc()).await?;
                (200, serde_json::to_value(&status).expect("statuses serialize"))
            }
            None => (404, json!({"error": format!("no job '{id}'")})),
        },
        None => {
            let jobs = list_jobs(state.store.as_ref()).await?;
            (200, json!({"jobs": jobs}))
        }
    };
    let mut result = InvocationResult::default();
    result.outputs.insert(bindings::RES.into(), http_response(code, &body));
    Ok(result)
}

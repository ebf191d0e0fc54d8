//! `status`: `GET /api/status` (all jobs) or `GET /api/status?job=<id>` (one).

use super::invocation::{http_response, HttpRequest, InvocationResult};
use super::{bindings, AppState, HandlerError};
use crate::job::record::{list_jobs, read_job};
use serde_json::json;

pub async fn run(state: &AppState, invocation: &super::Invocation) -> Result<InvocationResult, HandlerError> {
    let req = HttpRequest::parse(invocation.binding(bindings::REQ).map_err(HandlerError::BadPayload)?)
        .map_err(HandlerError::BadPayload)?;
    let job_id = req.query_param("job").or_else(|| req.params.get("job").and_then(|v| v.as_str()).map(str::to_owned));
    let (code, body) = match job_id {
        Some(id) => match read_job(state.store.as_ref(), &id).await? {
            Some(job) => {
                let mut body = serde_json::to_value(&job).expect("job records serialize");
                body["activities"] = activities(state, &job).await?;
                (200, body)
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

/// Each activity's progress: its current iteration, state, rows copied.
async fn activities(state: &AppState, job: &crate::job::JobRecord) -> Result<serde_json::Value, HandlerError> {
    let mut out = serde_json::Map::new();
    for activity in job.spec.iter().flat_map(|s| s.activities.iter()) {
        let key = crate::engine::copy::keys::activity(&job.id, &activity.name);
        let record = crate::storage::checkpoint::read_json::<crate::engine::copy::ActivityRecord>(state.store.as_ref(), &key).await?;
        let value = match record {
            Some((r, _)) => serde_json::to_value(r).expect("activity records serialize"),
            None => json!({"state": "notStarted"}),
        };
        out.insert(activity.name.clone(), value);
    }
    Ok(serde_json::Value::Object(out))
}

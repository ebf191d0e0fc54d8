//! A small control plane for tests that drive the binary from another process (the Python
//! check, the README demo): script or randomize faults, clear them, list a table's extents.
//! It sits on the cluster's port under `/kusto-sim/` and needs the same bearer token.
//!
//! - `POST /kusto-sim/faults` `{"kind": "Query"|null, "fault": "PartialQueryFailure", "times": 1}`
//!   or `{"kind": ..., "fault": ..., "seed": 7, "probability": 0.1}`
//! - `DELETE /kusto-sim/faults`
//! - `GET /kusto-sim/extents/{db}/{table}`

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};

use crate::auth::check_bearer;
use crate::commands::{lock, Shared};
use crate::faults::{CommandKind, Fault};
use crate::model::value::format_datetime;

/// Parses `Throttle`, `ServerError:503`, `Slow:250` (milliseconds), ... (case-insensitive).
pub fn parse_fault(text: &str) -> Option<Fault> {
    let (name, arg) = match text.split_once([':', '(']) {
        Some((n, a)) => (n, Some(a.trim_end_matches(')'))),
        None => (text, None),
    };
    Some(match name.to_ascii_lowercase().as_str() {
        "throttle" => Fault::Throttle,
        "servererror" => Fault::ServerError(arg.and_then(|a| a.parse().ok()).unwrap_or(503)),
        "connectiondrop" => Fault::ConnectionDrop,
        "dropafterexecution" => Fault::DropAfterExecution,
        "partialqueryfailure" => Fault::PartialQueryFailure,
        "exportpartialfailure" => Fault::ExportPartialFailure,
        "ingestionfailure" => Fault::IngestionFailure,
        "duplicateingestion" => Fault::DuplicateIngestion,
        "slow" => Fault::Slow(std::time::Duration::from_millis(arg?.parse().ok()?)),
        "expireoperation" => Fault::ExpireOperation,
        "mergeextents" => Fault::MergeExtents,
        _ => return None,
    })
}

pub fn parse_kind(text: &str) -> Option<CommandKind> {
    Some(match text.to_ascii_lowercase().as_str() {
        "query" => CommandKind::Query,
        "show" => CommandKind::Show,
        "export" => CommandKind::Export,
        "ingest" => CommandKind::Ingest,
        "queuedingest" => CommandKind::QueuedIngest,
        "move" => CommandKind::Move,
        "dropextents" => CommandKind::DropExtents,
        "droptags" => CommandKind::DropTags,
        "schema" => CommandKind::Schema,
        "other" => CommandKind::Other,
        _ => return None,
    })
}

fn refuse(state: &Shared, headers: &HeaderMap) -> Option<Response> {
    let uri = lock(state).audience();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    check_bearer(headers.get("authorization").and_then(|v| v.to_str().ok()), &uri, now)
        .err()
        .map(|e| (StatusCode::UNAUTHORIZED, e.detail).into_response())
}

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

pub async fn add_fault(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = refuse(&state, &headers) {
        return r;
    }
    let Ok(req) = serde_json::from_str::<Json>(&body) else {
        return bad("body must be JSON".into());
    };
    let kind = match req.get("kind").and_then(|k| k.as_str()) {
        None => None,
        Some(k) => match parse_kind(k) {
            Some(k) => Some(k),
            None => return bad(format!("unknown command kind '{k}'")),
        },
    };
    let Some(fault) = req.get("fault").and_then(|f| f.as_str()).and_then(parse_fault) else {
        return bad("missing or unknown 'fault'".into());
    };
    let mut s = lock(&state);
    match (req.get("seed").and_then(|v| v.as_u64()), req.get("probability").and_then(|v| v.as_f64())) {
        (Some(seed), Some(p)) => s.faults.random(seed, kind, fault, p),
        _ => s.faults.script(kind, fault, req.get("times").and_then(|v| v.as_u64()).unwrap_or(1) as u32),
    }
    StatusCode::NO_CONTENT.into_response()
}

pub async fn clear_faults(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&state, &headers) {
        return r;
    }
    lock(&state).faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

pub async fn extents(State(state): State<Shared>, headers: HeaderMap, Path((db, table)): Path<(String, String)>) -> Response {
    if let Some(r) = refuse(&state, &headers) {
        return r;
    }
    let s = lock(&state);
    let t = match s.table(&db, &table) {
        Ok(t) => t,
        Err(e) => return (StatusCode::NOT_FOUND, e.detail).into_response(),
    };
    let list: Vec<Json> = t
        .extents
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "rowCount": e.row_count(),
                "minCreatedOn": format_datetime(e.min_created_on),
                "maxCreatedOn": format_datetime(e.max_created_on),
                "tags": e.tags,
            })
        })
        .collect();
    (StatusCode::OK, [("content-type", "application/json")], Json::Array(list).to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_parse() {
        assert_eq!(parse_fault("ServerError:520"), Some(Fault::ServerError(520)));
        assert_eq!(parse_fault("servererror(500)"), Some(Fault::ServerError(500)));
        assert_eq!(parse_fault("Slow:250"), Some(Fault::Slow(std::time::Duration::from_millis(250))));
        assert_eq!(parse_fault("PartialQueryFailure"), Some(Fault::PartialQueryFailure));
        assert_eq!(parse_fault("nope"), None);
        assert_eq!(parse_kind("Export"), Some(CommandKind::Export));
    }
}

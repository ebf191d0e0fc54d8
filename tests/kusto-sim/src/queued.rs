//! The ingest-v2 REST API for queued ingestion, served on the cluster's own port:
//! `POST /v1/rest/ingestion/queued/{db}/{table}` submits up to 20 blobs and answers an
//! `ingestionOperationId` (empty unless `enableTracking`); `GET .../{operationId}[?details=true]`
//! answers status counts and per-blob details.
//!
//! The status answer uses the casing of the official client's OpenAPI spec
//! (`ingest-v2/src/main/resources/openapi.yaml` in Azure/azure-kusto-java): counts
//! `succeeded`, `failed`, `inProgress`, `canceled`; per blob `sourceId`, `status`, `startedAt`,
//! `lastUpdateTime`, `errorCode`, `failureStatus`, `details`. The docs' example
//! (queued-ingest-status) spells the counts in PascalCase; clients should read both.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};

use crate::auth::check_bearer;
use crate::blob::without_secret;
use crate::commands::parse::Props;
use crate::commands::storage::ingest_blobs;
use crate::commands::{lock, Shared};
use crate::faults::{CommandKind, Fault};
use crate::model::value::format_datetime;
use crate::wire::error::KustoError;
use crate::wire::RequestIds;

pub const MAX_BLOBS_PER_CALL: usize = 20;

#[derive(Debug, Clone)]
pub struct BlobStatus {
    pub source_id: String,
    /// Without its SAS query.
    pub url: String,
    pub status: &'static str,
    pub start: i64,
    pub last: i64,
    pub error_code: Option<String>,
    pub failure_status: Option<&'static str>,
    pub details: Option<String>,
}

#[derive(Debug, Clone)]
pub struct QueuedOperation {
    pub start: i64,
    pub last: i64,
    pub blobs: Vec<BlobStatus>,
}

/// Tracked queued ingestions, by operation id.
pub type QueuedLog = BTreeMap<String, QueuedOperation>;

/// What the HTTP layer does to one request.
enum Gate {
    /// Answer this instead (bad token, injected fault).
    Refuse(Response),
    /// Run the request; drop the connection instead of answering when `true`.
    Run { drop_answer: bool },
}

/// Checks the token and applies request-level faults. `PartialQueryFailure` has no meaning
/// for ingestion and is ignored here.
fn gate(state: &Shared, headers: &HeaderMap, kind: CommandKind, label: &str) -> Gate {
    let ids = RequestIds::from_headers(headers);
    let uri = lock(state).audience();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(e) = check_bearer(headers.get("authorization").and_then(|v| v.to_str().ok()), &uri, now) {
        return Gate::Refuse(crate::server::error_response(&e, &ids));
    }
    *lock(state).requests.entry(label.to_owned()).or_default() += 1;
    let mut drop_answer = false;
    for f in lock(state).faults.take(kind, true) {
        let e = match f {
            Fault::Throttle => KustoError::throttled("The ingestion request was throttled (injected fault)"),
            Fault::ServerError(code) => KustoError::transient(code, format!("Service temporarily unavailable (injected fault {code})")),
            Fault::ConnectionDrop => return Gate::Refuse(crate::server::dropped_connection()),
            Fault::DropAfterExecution => {
                drop_answer = true;
                continue;
            }
            _ => continue,
        };
        return Gate::Refuse(crate::server::error_response(&e, &ids));
    }
    Gate::Run { drop_answer }
}

/// Ingestion properties as the `.ingest` command spells them (JSON arrays become JSON text).
fn props_of(properties: &Json) -> Props {
    let mut props = Props::new();
    if let Some(obj) = properties.as_object() {
        for (k, v) in obj {
            let text = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            props.insert(k.to_ascii_lowercase(), text);
        }
    }
    props
}

pub async fn submit(
    State(state): State<Shared>,
    Path((db, table)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let drop_answer = match gate(&state, &headers, CommandKind::QueuedIngest, "queued ingest") {
        Gate::Refuse(r) => return r,
        Gate::Run { drop_answer } => drop_answer,
    };
    let request_ids = RequestIds::from_headers(&headers);
    let fail = |e: KustoError| crate::server::error_response(&e, &request_ids);
    let body: Json = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return fail(KustoError::bad_request(format!("The request body is not valid JSON: {e}"))),
    };
    let blobs: Vec<(String, String)> = body
        .get("blobs")
        .and_then(|b| b.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|b| {
                    let url = b.get("url")?.as_str()?.to_string();
                    let source = b.get("sourceId").and_then(|s| s.as_str()).map(str::to_string).unwrap_or_else(|| crate::ids::new_uuid().to_string());
                    Some((url, source))
                })
                .collect()
        })
        .unwrap_or_default();
    if blobs.is_empty() || blobs.len() > MAX_BLOBS_PER_CALL {
        return fail(KustoError::bad_request(format!(
            "A queued ingestion request takes 1 to {MAX_BLOBS_PER_CALL} blobs, got {}",
            blobs.len()
        )));
    }
    let props = props_of(body.get("properties").unwrap_or(&Json::Null));
    let format = props.get("format").map(|f| f.to_ascii_lowercase()).unwrap_or_else(|| "csv".into());
    if format != "parquet" && format != "csv" {
        return fail(KustoError::bad_request(format!("kusto-sim ingests only parquet and csv, not '{format}'")));
    }
    if let Err(e) = crate::commands::data::ingest_props(&props) {
        return fail(e);
    }
    let tracking = props.get("enabletracking").is_some_and(|v| v == "true");
    let (columns, store, delay, now) = {
        let mut s = lock(&state);
        let columns = match s.table(&db, &table) {
            Ok(t) => t.columns.clone(),
            Err(e) => return fail(e),
        };
        (columns, s.blobs.clone(), s.next_duration(CommandKind::QueuedIngest), s.now())
    };
    let op_id = crate::ids::new_uuid().to_string();
    {
        let mut s = lock(&state);
        let statuses = blobs
            .iter()
            .map(|(url, source)| BlobStatus {
                source_id: source.clone(),
                url: without_secret(url).to_string(),
                status: "InProgress",
                start: now,
                last: now,
                error_code: None,
                failure_status: None,
                details: None,
            })
            .collect();
        s.queued.insert(op_id.clone(), QueuedOperation { start: now, last: now, blobs: statuses });
    }
    let task_state = state.clone();
    let task_op = op_id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut forget = false;
        for (i, (url, _)) in blobs.iter().enumerate() {
            let faults = lock(&task_state).faults.take(CommandKind::QueuedIngest, false);
            forget |= faults.contains(&Fault::ForgetIngestionStatus);
            for fault in &faults {
                if let Fault::LateDuplicate(after) = fault {
                    let (st, db, table, store, url, columns, format, props, after) =
                        (task_state.clone(), db.clone(), table.clone(), store.clone(), url.clone(), columns.clone(), format.clone(), props.clone(), *after);
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = ingest_blobs(&st, &db, &table, &*store, std::slice::from_ref(&url), &columns, &format, &props, &[]).await;
                    });
                }
            }
            let outcome = ingest_blobs(&task_state, &db, &table, &*store, std::slice::from_ref(url), &columns, &format, &props, &faults).await;
            let mut s = lock(&task_state);
            let now = s.now();
            if let Some(op) = s.queued.get_mut(&task_op) {
                op.last = now;
                let b = &mut op.blobs[i];
                b.last = now;
                match outcome {
                    Ok(_) => b.status = "Succeeded",
                    Err(e) => {
                        b.status = "Failed";
                        b.error_code = Some(e.code.clone());
                        b.failure_status = Some(if e.permanent { "Permanent" } else { "Transient" });
                        b.details = Some(e.detail.clone());
                    }
                }
            }
        }
        if forget {
            lock(&task_state).queued.remove(&task_op);
        }
    });
    if drop_answer {
        return crate::server::dropped_connection();
    }
    let shown = if tracking { op_id } else { String::new() };
    (StatusCode::OK, [("content-type", "application/json; charset=utf-8")], json!({ "ingestionOperationId": shown }).to_string()).into_response()
}

pub async fn status(
    State(state): State<Shared>,
    Path((_db, _table, op)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Gate::Refuse(r) = gate(&state, &headers, CommandKind::Show, "queued ingest status") {
        return r;
    }
    let details = query.get("details").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let s = lock(&state);
    let Some(o) = s.queued.get(&op) else {
        return crate::server::error_response(&KustoError::not_found("IngestionOperation", &op), &RequestIds::from_headers(&headers));
    };
    let count = |st: &str| o.blobs.iter().filter(|b| b.status == st).count();
    let mut body = json!({
        "startTime": format_datetime(o.start),
        "lastUpdated": format_datetime(o.last),
        "status": {
            "succeeded": count("Succeeded"),
            "failed": count("Failed"),
            "inProgress": count("InProgress"),
            "canceled": count("Canceled"),
        }
    });
    if details {
        body["details"] = Json::Array(
            o.blobs
                .iter()
                .map(|b| {
                    let mut d = json!({
                        "sourceId": b.source_id,
                        "url": b.url,
                        "status": b.status,
                        "startedAt": format_datetime(b.start),
                        "lastUpdateTime": format_datetime(b.last),
                    });
                    if b.status == "Failed" {
                        d["errorCode"] = json!(b.error_code);
                        d["failureStatus"] = json!(b.failure_status);
                        d["details"] = json!(b.details);
                    }
                    d
                })
                .collect(),
        );
    }
    (StatusCode::OK, [("content-type", "application/json; charset=utf-8")], body.to_string()).into_response()
}

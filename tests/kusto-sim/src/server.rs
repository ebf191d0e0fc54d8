//! The HTTP face of one cluster: `/v1/rest/mgmt`, `/v1/rest/query`, `/v2/rest/query`, and
//! the ingest-v2 queued ingestion endpoints (same port: the client uses one base URL here).
//! Every request is authenticated, then may meet an injected fault, then runs.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::check_bearer;
use crate::commands::{execute_command_async, lock, redact, Shared};
use crate::faults::{CommandKind, Fault};
use crate::kql::eval::{run_query, Env, Frame};
use crate::wire::error::KustoError;
use crate::wire::{v1, v2, RequestIds};

#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Mgmt,
    QueryV1,
    QueryV2,
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/rest/auth/metadata", get(auth_metadata))
        .route("/v1/rest/mgmt", post(mgmt))
        .route("/v1/rest/query", post(query_v1))
        .route("/v2/rest/query", post(query_v2))
        .route("/v1/rest/ingestion/queued/{db}/{table}", post(crate::queued::submit))
        .route("/v1/rest/ingestion/queued/{db}/{table}/{operation}", get(crate::queued::status))
        .route("/kusto-sim/faults", post(crate::control::add_fault).delete(crate::control::clear_faults))
        .route("/kusto-sim/extents/{db}/{table}", get(crate::control::extents))
        .with_state(state)
}

async fn mgmt(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    handle(s, headers, body, Endpoint::Mgmt).await
}

/// `GET /v1/rest/auth/metadata`, answered without a token, in the shape the official
/// clients read (`AzureAD.KustoServiceResourceId` is the audience tokens must carry).
async fn auth_metadata(State(s): State<Shared>) -> Response {
    let audience = lock(&s).audience();
    axum::Json(serde_json::json!({
        "AzureAD": {
            "LoginEndpoint": "https://login.microsoftonline.com",
            "LoginMfaRequired": false,
            "KustoClientAppId": "db662dc1-0cfe-4e1c-a843-19a68e65be58",
            "KustoClientRedirectUri": "https://microsoft/kustoclient",
            "KustoServiceResourceId": audience,
            "FirstPartyAuthorityUrl": "https://login.microsoftonline.com/f8cdef31-a31e-4b4a-93e4-5f571e91255a"
        },
        "dSTS": {}
    }))
    .into_response()
}

async fn query_v1(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    handle(s, headers, body, Endpoint::QueryV1).await
}

async fn query_v2(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    handle(s, headers, body, Endpoint::QueryV2).await
}

/// The request body: `{"db", "csl", "properties"}`.
struct Request {
    db: Option<String>,
    csl: String,
    /// `properties.Parameters`, for `declare query_parameters`.
    parameters: std::collections::HashMap<String, String>,
    /// `properties.Options.queryconsistency`, if sent.
    consistency: Option<String>,
}

/// The values `queryconsistency` is documented with (concepts/query-consistency, client
/// request properties).
const CONSISTENCIES: [&str; 5] = ["strongconsistency", "weakconsistency", "weakconsistency_by_query", "weakconsistency_by_database", "weakconsistency_by_session"];

fn properties_of(properties: Option<&serde_json::Value>) -> serde_json::Value {
    match properties {
        Some(serde_json::Value::String(s)) => serde_json::from_str(s).unwrap_or(serde_json::Value::Null),
        Some(v) => v.clone(),
        None => serde_json::Value::Null,
    }
}

/// `properties` may be an object or a JSON string holding one (both are documented).
fn parameters_of(properties: Option<&serde_json::Value>) -> std::collections::HashMap<String, String> {
    let parsed = match properties {
        Some(serde_json::Value::String(s)) => serde_json::from_str(s).unwrap_or(serde_json::Value::Null),
        Some(v) => v.clone(),
        None => serde_json::Value::Null,
    };
    parsed
        .get("Parameters")
        .and_then(|p| p.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_body(body: &str) -> Result<Request, KustoError> {
    let json: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| KustoError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    let csl = json
        .get("csl")
        .and_then(|c| c.as_str())
        .ok_or_else(|| KustoError::bad_request("The request body has no 'csl' string"))?
        .to_string();
    let db = json.get("db").and_then(|d| d.as_str()).filter(|d| !d.is_empty()).map(str::to_string);
    let consistency = properties_of(json.get("properties")).get("Options").and_then(|o| o.get("queryconsistency")).map(|v| v.as_str().unwrap_or_default().to_string());
    if let Some(c) = consistency.as_deref().filter(|c| !CONSISTENCIES.contains(&c.to_ascii_lowercase().as_str())) {
        return Err(KustoError::bad_request(format!("Request property 'queryconsistency' has an invalid value '{c}'")));
    }
    Ok(Request { db, csl, parameters: parameters_of(json.get("properties")), consistency })
}

async fn handle(state: Shared, headers: HeaderMap, body: String, endpoint: Endpoint) -> Response {
    let ids = RequestIds::from_headers(&headers);
    let (name, uri, now_unix) = {
        let s = lock(&state);
        (s.name.clone(), s.audience(), time::OffsetDateTime::now_utc().unix_timestamp())
    };
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if let Err(e) = check_bearer(auth, &uri, now_unix) {
        tracing::info!(cluster = %name, status = 401, "refused a request: {}", e.detail);
        return error_response(&e, &ids);
    }
    let req = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e, &ids),
    };
    let kind = CommandKind::of(&req.csl);
    *lock(&state).requests.entry(crate::faults::request_label(&req.csl)).or_default() += 1;
    if let Some(c) = &req.consistency {
        lock(&state).consistency_log.push((req.csl.split_whitespace().next().unwrap_or_default().to_string(), c.clone()));
    }
    let faults = lock(&state).faults.take(kind, true);
    for f in &faults {
        match f {
            Fault::Throttle => {
                return error_response(
                    &KustoError::throttled(format!(
                        "The request was aborted due to throttling (injected fault). Retrying after some backoff might succeed. CommandKind: {kind:?}"
                    )),
                    &ids,
                )
            }
            Fault::ServerError(code) => {
                return error_response(&KustoError::transient(*code, format!("Service temporarily unavailable (injected fault {code})")), &ids)
            }
            Fault::ConnectionDrop => return dropped_connection(),
            _ => {}
        }
    }
    let drop_after = faults.contains(&Fault::DropAfterExecution);
    let partial_failure = faults.contains(&Fault::PartialQueryFailure);
    let db = req.db.unwrap_or_else(|| lock(&state).config.default_database.clone());
    let is_command = req.csl.trim_start().starts_with('.');
    let result: Result<Frame, KustoError> = match (endpoint, is_command) {
        (Endpoint::Mgmt, true) => execute_command_async(&state, &db, req.csl.trim()).await,
        (Endpoint::Mgmt, false) | (Endpoint::QueryV1, false) | (Endpoint::QueryV2, false) => {
            // A slow query answers late (past the client's timeout, the client sees a
            // timeout; the query ran). Commands are slowed in their operations instead.
            let slow: std::time::Duration = lock(&state)
                .faults
                .take(kind, false)
                .iter()
                .filter_map(|f| if let Fault::Slow(d) = f { Some(*d) } else { None })
                .sum();
            if !slow.is_zero() {
                tokio::time::sleep(slow).await;
            }
            run_kql(&state, &db, &req.csl, req.parameters.clone())
        }
        (_, true) => Err(KustoError::bad_request(
            "Management commands must be sent to /v1/rest/mgmt, not to the query endpoint",
        )),
    };
    tracing::info!(
        cluster = %name,
        kind = ?kind,
        ok = result.is_ok(),
        csl = %redact(&req.csl).chars().take(200).collect::<String>(),
        "request"
    );
    if drop_after {
        return dropped_connection();
    }
    match result {
        Ok(frame) => {
            let body = match endpoint {
                Endpoint::QueryV2 if partial_failure => v2::partial_failure_response(
                    &frame,
                    &ids,
                    &KustoError::partial_query_failure(
                        "Query execution has exceeded the allowed limits (80DA0003): partial query failure (injected fault)",
                    ),
                ),
                Endpoint::QueryV2 => v2::query_response(&frame, &ids),
                Endpoint::QueryV1 => v1::query_response(&frame, &ids.client_request_id).to_string(),
                Endpoint::Mgmt if is_command => v1::command_response(&frame).to_string(),
                Endpoint::Mgmt => v1::query_response(&frame, &ids.client_request_id).to_string(),
            };
            json_response(StatusCode::OK, body, &ids)
        }
        Err(e) => error_response(&e, &ids),
    }
}

fn run_kql(state: &Shared, db: &str, csl: &str, parameters: std::collections::HashMap<String, String>) -> Result<Frame, KustoError> {
    let s = lock(state);
    s.database(db)?;
    let catalog = s.catalog(db);
    let mut env = Env::new(&catalog, s.now(), s.cursor_current());
    env.parameters = parameters;
    Ok(run_query(csl, &env)?)
}

fn json_response(status: StatusCode, body: String, ids: &RequestIds) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&ids.activity_id) {
        h.insert("x-ms-activity-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&ids.client_request_id) {
        h.insert("x-ms-client-request-id", v);
    }
    resp
}

pub fn error_response(e: &KustoError, ids: &RequestIds) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, e.body(&ids.client_request_id, &ids.activity_id).to_string(), ids)
}

/// An answer whose body fails mid-way: the client sees the connection break.
pub(crate) fn dropped_connection() -> Response {
    let stream = futures::stream::once(async {
        Err::<String, std::io::Error>(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected connection drop"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

//! `kc serve`: the Azure Functions custom handler.
//!
//! The host starts us with `FUNCTIONS_CUSTOMHANDLER_PORT`, probes `GET /` until it answers,
//! then POSTs each invocation to `/{function}` (the function's folder under `functions/`).
//! One file per function: [`requests`], [`steps`], [`scheduler`], [`status`]. The wire format
//! is in [`invocation`]; statuses are chosen in [`HandlerError`] only.
//!
//! Each invocation runs in its own task, so a panic answers 500 for that invocation alone
//! and the server keeps serving.

pub mod invocation;
pub mod replications;
pub mod requests;
pub mod scheduler;
pub mod status;
pub mod steps;

use crate::engine::{Engine, Outgoing};
use crate::storage::checkpoint::{CheckpointStore, RecordError};
use crate::storage::queue::MessageSender;
use crate::storage::StorageError;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use invocation::{Invocation, InvocationResult};
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::Instrument;

/// The function folders this handler serves, and their binding names (kept in step with
/// `functions/*/function.json` by a test).
pub mod bindings {
    pub const REQUESTS: &str = "requests";
    pub const STEPS: &str = "steps";
    pub const SCHEDULER: &str = "scheduler";
    pub const STATUS: &str = "status";
    pub const FUNCTIONS: [&str; 4] = [REQUESTS, STEPS, SCHEDULER, STATUS];

    /// Queue trigger of `requests`.
    pub const REQUEST: &str = "request";
    /// Queue trigger of `steps`.
    pub const STEP: &str = "step";
    /// Queue output (to `kc-steps`) of `requests`, `steps` and `scheduler`.
    pub const NEXT: &str = "next";
    /// Timer trigger of `scheduler`.
    pub const TIMER: &str = "timer";
    /// HTTP trigger and output of `status`.
    pub const REQ: &str = "req";
    pub const RES: &str = "res";
}

/// What every invocation can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn CheckpointStore>,
    /// The `kc-steps` queue, for messages that must wait (output bindings cannot delay).
    pub steps: Arc<dyn MessageSender>,
    pub engine: Arc<dyn Engine>,
    /// What requests may name (hosts, identity): checked before any job is recorded.
    pub policy: Arc<crate::job::RequestPolicy>,
    /// Replications declared in the settings, kept by the scheduler.
    pub replications: Arc<Declared>,
}

/// `KC_REPLICATIONS` and its version (`KC_REPLICATIONS_VERSION`).
#[derive(Debug, Clone, Default)]
pub struct Declared {
    pub replications: Vec<crate::job::replication::Replication>,
    pub version: u64,
}

/// Why an invocation did not succeed, and so which status the host sees. A non-2xx answer
/// makes the host retry the message later (and poison it after `maxDequeueCount`).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("no function named '{0}' (this handler serves: requests, steps, scheduler, status)")]
    UnknownFunction(String),
    #[error("bad invocation payload: {0}")]
    BadPayload(String),
    /// Waiting can help; the host will deliver the message again.
    #[error("{0}")]
    Transient(String),
    /// Something is wrong that waiting will not fix; still non-2xx so that the message ends in
    /// the poison queue for a person to see, rather than vanishing.
    #[error("{0}")]
    Failed(String),
}

impl From<StorageError> for HandlerError {
    fn from(e: StorageError) -> Self {
        if e.is_transient() {
            HandlerError::Transient(e.to_string())
        } else {
            HandlerError::Failed(e.to_string())
        }
    }
}

impl From<RecordError> for HandlerError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Storage(s) => s.into(),
            corrupt => HandlerError::Failed(corrupt.to_string()),
        }
    }
}

impl IntoResponse for HandlerError {
    fn into_response(self) -> Response {
        let status = match self {
            HandlerError::UnknownFunction(_) => StatusCode::NOT_FOUND,
            HandlerError::BadPayload(_) => StatusCode::BAD_REQUEST,
            HandlerError::Transient(_) => StatusCode::SERVICE_UNAVAILABLE,
            HandlerError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = self.to_string();
        tracing::warn!(status = status.as_u16(), error = %message, "invocation failed");
        (status, Json(json!({"Logs": [message.clone()], "error": message}))).into_response()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(ready))
        .route("/{function}", post(invoke))
        .with_state(state)
}

/// The host's readiness probe: answered before any network I/O.
async fn ready() -> StatusCode {
    StatusCode::OK
}

async fn invoke(
    State(state): State<AppState>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let invocation_id = headers
        .get("x-azure-functions-invocationid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!("invocation", function = %function, invocation_id = %invocation_id);
    let task = tokio::spawn(dispatch(state, function, body).instrument(span.clone()));
    match task.await {
        Ok(Ok(result)) => Json(result).into_response(),
        Ok(Err(err)) => span.in_scope(|| err.into_response()),
        Err(join) => {
            let detail = if join.is_panic() { "the invocation panicked" } else { "the invocation was cancelled" };
            span.in_scope(|| tracing::error!(error = detail, "invocation aborted"));
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"Logs": [detail], "error": detail}))).into_response()
        }
    }
}

async fn dispatch(state: AppState, function: String, body: Bytes) -> Result<InvocationResult, HandlerError> {
    if !bindings::FUNCTIONS.contains(&function.as_str()) {
        return Err(HandlerError::UnknownFunction(function));
    }
    let invocation = Invocation::parse(&body).map_err(HandlerError::BadPayload)?;
    match function.as_str() {
        bindings::REQUESTS => requests::run(&state, &invocation).await,
        bindings::STEPS => steps::run(&state, &invocation).await,
        bindings::SCHEDULER => scheduler::run(&state, &invocation).await,
        bindings::STATUS => status::run(&state, &invocation).await,
        _ => unreachable!("checked against FUNCTIONS above"),
    }
}

/// Splits the engine's messages: immediate ones go to the `next` output binding (written by
/// the host only if we answer 2xx); delayed ones are sent now, since bindings cannot delay.
pub(crate) async fn emit(state: &AppState, outgoing: Vec<Outgoing>, result: &mut InvocationResult) -> Result<(), HandlerError> {
    let mut now = Vec::new();
    for out in outgoing {
        let value = serde_json::to_value(&out.message).expect("step messages serialize");
        if out.delay.is_zero() {
            now.push(value);
        } else {
            state.steps.send(&value.to_string(), out.delay).await?;
            result.logs.push(format!("scheduled {} in {} s", value, out.delay.as_secs()));
        }
    }
    if !now.is_empty() {
        result.outputs.insert(bindings::NEXT.into(), Value::Array(now));
    }
    Ok(())
}

impl AppState {
    /// Production wiring: blob checkpoints, the `kc-steps` queue, the configured credential,
    /// and the copy engine over them. Builds clients only; no network I/O happens until the
    /// first invocation.
    pub fn from_settings(settings: &crate::config::Settings) -> Result<Self, String> {
        use crate::engine::copy::{CopyEngine, EngineOptions, LiveConnections};
        use crate::storage::{checkpoint::BlobCheckpointStore, clients::StorageClients, queue::{MessageEncoding, StorageQueue}};
        let credential = crate::auth::credential(&settings.credential).map_err(|e| format!("credential: {e}"))?;
        let clients = StorageClients::from_settings(&settings.storage, Some(credential.clone())).map_err(|e| e.to_string())?;
        let container = clients.container_without_retries(&settings.storage.checkpoint_container).map_err(|e| e.to_string())?;
        let steps_queue = crate::config::queues::STEPS;
        let queue = clients.queue(steps_queue).map_err(|e| e.to_string())?;
        let store: Arc<dyn CheckpointStore> = Arc::new(BlobCheckpointStore::new(container));
        let connections = Arc::new(LiveConnections::new(credential, settings.storage.ca_cert.clone(), crate::engine::copy::step_client_options()));
        let options = EngineOptions {
            ingest_route: if settings.direct_ingestion {
                crate::engine::records::IngestRoute::Direct
            } else {
                crate::engine::records::IngestRoute::Queued
            },
            deployment: crate::engine::copy::deployment_hash(&settings.deployment_id),
            // Looks at exports batched on a 100 ms grid: the looks due within a second wait
            // in their invocation (see `steps::run_soon_ones`), so concurrent invocations
            // land on the same ticks and share one request. Measured with kc-bench (N = 200,
            // C = 8): none 1.30 T/T* at 11.3 Kusto requests per block; 250 ms 1.27 at 10.3;
            // 150 ms 1.19 at 11.2; 100 ms 1.16 at 12.2. Once a look runs inline until its
            // export ends (fewer lone looks from the queue): 150 ms 1.11 at 10.6, 100 ms
            // 1.08 at 11.1.
            poll_grid: Some(std::time::Duration::from_millis(100)),
            // Such a look waits in its invocation, not in the queue (whose delays are whole
            // seconds): the floor can be a tick, as in `kc copy`. It sets how soon a
            // process's first exports are looked at, before any duration is learned.
            poll_floor: std::time::Duration::from_millis(100),
            ..EngineOptions::default()
        };
        let engine = Arc::new(CopyEngine::new(store.clone(), connections, options));
        Ok(AppState {
            store,
            steps: Arc::new(StorageQueue::new(queue, steps_queue, MessageEncoding::None)),
            engine,
            policy: Arc::new(settings.policy.clone()),
            replications: Arc::new(Declared { replications: settings.replications.clone(), version: settings.replications_version }),
        })
    }
}

/// Serves until SIGTERM or Ctrl-C, then finishes the invocations in flight.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing invocations in flight");
}

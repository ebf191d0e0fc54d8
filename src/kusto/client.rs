//! The HTTP client for `/v1/rest/mgmt` and `/v2/rest/query`: headers, token, timeouts,
//! retries, and parsing into a [`DataSet`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use backon::Retryable;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use serde_json::json;

use super::commands::{Command, CommandKind};
use super::endpoint::ClusterEndpoint;
use super::error::KustoError;
use super::response::{parse_v1, parse_v2, DataSet};
use super::retry::{parse_retry_after, RetryPolicy};
use super::token::TokenCache;
use super::transport::{HttpTransport, Transport, WireRequest};
use super::value::format_timespan;

/// Kusto's own defaults: 4 minutes for queries, 10 for commands.
const QUERY_SERVER_TIMEOUT: Duration = Duration::from_secs(4 * 60);
const MGMT_SERVER_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Room for the answer to travel after the server gives up.
const CLIENT_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

/// `x-ms-version`, as the official clients send it: `KUSTO_API_VERSION = "2024-12-12"` in the
/// Java ingest-v2 client (Azure/azure-kusto-java, ingest-v2) and `x-ms-version: 2024-12-12` on
/// every request of the Go client (Azure/azure-kusto-go, `conn.go`).
pub const API_VERSION: &str = "2024-12-12";

/// A meaningful `x-ms-client-request-id`: `KC.<step>;<job>;<block>;<attempt>;<uuid>`, so a
/// request in Kusto's logs points back at the copy step that sent it. Retries of one call
/// send the same id with `;r<n>` appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequestId(String);

impl ClientRequestId {
    pub fn new(step: &str, job: &str, block: &str, attempt: u32) -> ClientRequestId {
        ClientRequestId(format!(
            "KC.{};{};{};{};{}",
            header_safe(step),
            header_safe(job),
            header_safe(block),
            attempt,
            uuid::Uuid::new_v4()
        ))
    }

    /// For calls outside a block (planning, cleanup, status).
    pub fn for_step(step: &str) -> ClientRequestId {
        ClientRequestId(format!("KC.{};{}", header_safe(step), uuid::Uuid::new_v4()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn for_try(&self, try_number: u32) -> String {
        if try_number <= 1 {
            self.0.clone()
        } else {
            format!("{};r{}", self.0, try_number - 1)
        }
    }
}

impl std::fmt::Display for ClientRequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn header_safe(part: &str) -> String {
    part.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(100)
        .collect()
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `x-ms-app`.
    pub app_name: String,
    /// `x-ms-client-version`.
    pub client_version: String,
    pub retry: RetryPolicy,
    /// Ingest endpoint, when not `https://ingest-<host>`.
    pub ingest_url: Option<String>,
    /// Token scope for both endpoints, instead of `<cluster origin>/.default`. The official
    /// SDKs ask the cluster (`GET /v1/rest/auth/metadata`, `KustoServiceResourceId`) and so
    /// use `https://kusto.kusto.windows.net/.default` on the public cloud.
    pub token_scope: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            app_name: "kusto-copy".to_string(),
            client_version: format!("Kusto.Copy.Rust:{}", env!("CARGO_PKG_VERSION")),
            retry: RetryPolicy::default(),
            ingest_url: None,
            token_scope: None,
        }
    }
}

/// A client for one cluster. Cheap to clone; clones share the connection pool and tokens.
#[derive(Clone)]
pub struct KustoClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Arc<dyn Transport>,
    endpoint: ClusterEndpoint,
    tokens: TokenCache,
    options: ClientOptions,
    /// The scope the cluster's auth metadata named after it refused a token for its origin.
    discovered_scope: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for KustoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KustoClient")
            .field("engine", &self.inner.endpoint.engine().as_str())
            .field("ingest", &self.inner.endpoint.ingest().as_str())
            .finish()
    }
}

/// One HTTP request, ready to send as many times as needed.
pub(crate) struct Request<'a> {
    pub method: Method,
    pub url: Url,
    pub scope: String,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    pub repeatable: bool,
    pub request_id: &'a ClientRequestId,
    /// Safe to log.
    pub what: &'a str,
}

/// A successful answer.
pub(crate) struct Answer {
    pub body: Vec<u8>,
    pub activity_id: Option<String>,
}

impl KustoClient {
    pub fn new(
        cluster_url: &str,
        credential: Arc<dyn TokenCredential>,
        options: ClientOptions,
    ) -> Result<KustoClient, KustoError> {
        KustoClient::with_transport(cluster_url, credential, options, Arc::new(HttpTransport::new()?))
    }

    /// A client whose requests go through `transport` (the fault explorer's in-process
    /// clusters) instead of HTTP.
    pub fn with_transport(
        cluster_url: &str,
        credential: Arc<dyn TokenCredential>,
        options: ClientOptions,
        http: Arc<dyn Transport>,
    ) -> Result<KustoClient, KustoError> {
        let endpoint = ClusterEndpoint::parse(cluster_url, options.ingest_url.as_deref())?;
        Ok(KustoClient {
            inner: Arc::new(Inner {
                http,
                endpoint,
                tokens: TokenCache::new(credential),
                options,
                discovered_scope: std::sync::Mutex::new(None),
            }),
        })
    }

    pub fn endpoint(&self) -> &ClusterEndpoint {
        &self.inner.endpoint
    }

    pub(crate) fn engine_scope(&self) -> String {
        self.configured_scope().unwrap_or_else(|| self.inner.endpoint.engine_scope())
    }

    pub(crate) fn ingest_scope(&self) -> String {
        self.configured_scope().unwrap_or_else(|| self.inner.endpoint.ingest_scope())
    }

    fn configured_scope(&self) -> Option<String> {
        self.inner.options.token_scope.clone().or_else(|| self.inner.discovered_scope.lock().unwrap().clone())
    }

    /// The token scope the cluster's `GET /v1/rest/auth/metadata` names (asked without a
    /// token): `AzureAD.KustoServiceResourceId` + `/.default`, its `.kusto.` turned into
    /// `.kustomfa.` when `LoginMfaRequired`, as the official Java, Node, Go and Python clients
    /// do; a 404 means the public cloud's `https://kusto.kusto.windows.net`, as theirs. Only
    /// a Kusto resource is taken (a well-known Kusto domain, or this cluster itself): an
    /// answer naming any other resource would have us mint, and send, a token for it.
    async fn discover_scope(&self) -> Option<String> {
        let url = self.inner.endpoint.engine_path("/v1/rest/auth/metadata");
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let wire = WireRequest { method: Method::GET, url, headers, body: None, timeout: Duration::from_secs(30) };
        let response = self.inner.http.send(wire).await.ok()?;
        let resource = match response.status {
            200 => {
                let json: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
                let aad = json.get("AzureAD")?;
                let resource = aad.get("KustoServiceResourceId")?.as_str()?.trim_end_matches('/').to_string();
                if aad.get("LoginMfaRequired").and_then(|v| v.as_bool()).unwrap_or(false) {
                    resource.replacen(".kusto.", ".kustomfa.", 1)
                } else {
                    resource
                }
            }
            404 => "https://kusto.kusto.windows.net".to_string(),
            _ => return None,
        };
        let parsed = Url::parse(&resource).ok()?;
        let host = parsed.host_str()?;
        let own = self.inner.endpoint.engine().host_str() == Some(host);
        let kusto = parsed.scheme() == "https" && crate::job::hosts::kusto_cloud(host).is_some();
        if !(own || kusto) {
            tracing::warn!(resource = %resource, "the cluster's auth metadata names a resource that is not Kusto: not used");
            return None;
        }
        Some(format!("{resource}/.default"))
    }

    /// Runs a query (`/v2/rest/query`) or management command (`/v1/rest/mgmt`) in a
    /// database. Transient failures are retried per the policy; a command that may have run
    /// already and is not repeatable is returned to the caller instead of being sent again.
    pub async fn execute(
        &self,
        database: &str,
        command: &Command,
        request_id: &ClientRequestId,
    ) -> Result<DataSet, KustoError> {
        let (path, default_timeout) = match command.kind() {
            CommandKind::Query => ("/v2/rest/query", QUERY_SERVER_TIMEOUT),
            CommandKind::Management => ("/v1/rest/mgmt", MGMT_SERVER_TIMEOUT),
        };
        let server_timeout = command.server_timeout().unwrap_or(default_timeout);
        let mut options = json!({ "servertimeout": format_timespan(server_timeout) });
        if command.is_strongly_consistent() && !self.inner.endpoint.is_fabric() {
            options["queryconsistency"] = json!("strongconsistency");
        }
        let body = json!({
            "db": database,
            "csl": command.expose_text(),
            "properties": {
                "Options": options,
                "Parameters": {},
            },
        });
        let body = serde_json::to_vec(&body)
            .map_err(|e| KustoError::invalid_input(format!("request body: {e}")))?;
        let request = Request {
            method: Method::POST,
            url: self.inner.endpoint.engine_path(path),
            scope: self.engine_scope(),
            body: Some(body),
            timeout: server_timeout + CLIENT_TIMEOUT_MARGIN,
            repeatable: command.is_repeatable(),
            request_id,
            what: command.redacted(),
        };
        let kind = command.kind();
        self.send(&request, |answer| {
            let parsed = match kind {
                CommandKind::Query => parse_v2(&answer.body),
                CommandKind::Management => parse_v1(&answer.body),
            };
            parsed.map_err(|e| e.with_activity_id(answer.activity_id.clone()))
        })
        .await
    }

    /// Sends with retries; `parse` turns a 2xx answer into the result. Its errors go through
    /// the same rules: a cut-off answer is retried when the request is repeatable, an error
    /// Kusto reported inside a 200 is handed back.
    pub(crate) async fn send<T>(
        &self,
        request: &Request<'_>,
        parse: impl Fn(Answer) -> Result<T, KustoError>,
    ) -> Result<T, KustoError> {
        let first = self.send_retrying(request, &parse).await;
        // 401: the token was not accepted. If it was for the cluster's origin (the scope the
        // docs name), the cluster may want another audience: its auth metadata says which.
        // Tried once per client; the scope found is kept for every later request.
        let refused = matches!(&first, Err(e) if e.status == Some(401));
        if !refused || self.inner.options.token_scope.is_some() {
            return first;
        }
        match self.discover_scope().await {
            Some(scope) if scope != request.scope => {
                tracing::info!(scope = %scope, "the cluster refused a token for its origin: using the audience its auth metadata names");
                *self.inner.discovered_scope.lock().unwrap() = Some(scope.clone());
                let again = Request {
                    method: request.method.clone(),
                    url: request.url.clone(),
                    scope,
                    body: request.body.clone(),
                    timeout: request.timeout,
                    repeatable: request.repeatable,
                    request_id: request.request_id,
                    what: request.what,
                };
                self.send_retrying(&again, &parse).await
            }
            _ => first,
        }
    }

    async fn send_retrying<T>(&self, request: &Request<'_>, parse: &impl Fn(Answer) -> Result<T, KustoError>) -> Result<T, KustoError> {
        let tries = AtomicU32::new(0);
        let policy = &self.inner.options.retry;
        let started = std::time::Instant::now();
        let once = || async {
            let n = tries.fetch_add(1, Ordering::Relaxed) + 1;
            let id = request.request_id.for_try(n);
            let answer = self.send_once(request, &id).await?;
            parse(answer).map_err(|e| e.with_client_request_id(&id))
        };
        once.retry(policy.backoff())
            .sleep(tokio::time::sleep)
            .when(|e: &KustoError| RetryPolicy::should_retry(e, request.repeatable))
            .adjust(|e: &KustoError, d| policy.next_delay_within(e, d, started.elapsed()))
            .notify(|e: &KustoError, wait| {
                tracing::warn!(
                    what = request.what,
                    error = %e,
                    wait_ms = wait.as_millis() as u64,
                    "Kusto request failed; retrying"
                );
            })
            .await
    }

    async fn send_once(&self, request: &Request<'_>, request_id: &str) -> Result<Answer, KustoError> {
        let fail = |e: KustoError| e.with_client_request_id(request_id);
        let bearer = self.inner.tokens.bearer(&request.scope).await.map_err(fail)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let mut auth = HeaderValue::from_str(&bearer)
            .map_err(|_| fail(KustoError::invalid_input("token is not a valid header value")))?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        let header = |v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| fail(KustoError::invalid_input(format!("bad header value {v:?}"))))
        };
        headers.insert("x-ms-client-request-id", header(request_id)?);
        headers.insert("x-ms-app", header(&self.inner.options.app_name)?);
        headers.insert("x-ms-client-version", header(&self.inner.options.client_version)?);
        headers.insert("x-ms-version", HeaderValue::from_static(API_VERSION));
        if request.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        }
        tracing::debug!(what = request.what, request_id, url = %request.url, "Kusto request");
        let wire = WireRequest {
            method: request.method.clone(),
            url: request.url.clone(),
            headers,
            body: request.body.clone(),
            timeout: request.timeout,
        };
        let response = self.inner.http.send(wire).await.map_err(fail)?;
        let status = response.status;
        let activity_id = response
            .headers
            .get("x-ms-activity-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry_after = parse_retry_after(&response.headers);
        let body = response.body;
        if !(200..300).contains(&status) {
            let mut err = KustoError::from_http(status, &body);
            err.retry_after = retry_after;
            // The header names this very answer; an id inside the body may be a sub-activity.
            return Err(fail(err.with_activity_id(activity_id)));
        }
        Ok(Answer { body, activity_id })
    }
}

//! The in-process road to a simulated cluster: the real `KustoClient` (headers, tokens,
//! retries, parsing) over a [`Transport`] that hands each request to the simulator's router
//! without a socket, and may fail before the request runs, lose the answer after it ran, or
//! crash the step on either side.

use crate::faults::{Chaos, Class};
use async_trait::async_trait;
use kusto_copy::kusto::{ErrorKind, KustoError, Transport, WireRequest, WireResponse};
use std::sync::Arc;
use tower::ServiceExt;

pub struct SimTransport {
    pub router: axum::Router,
    pub chaos: Arc<Chaos>,
    pub cluster: String,
}

fn what(req: &WireRequest) -> String {
    // The path only: never the query or body (a SAS lives in the body).
    format!("{} {}", req.method, req.url.path())
}

#[async_trait]
impl Transport for SimTransport {
    async fn send(&self, request: WireRequest) -> Result<WireResponse, KustoError> {
        let site = format!("{} {}", self.cluster, what(&request));
        self.chaos.crash_point(&site, false).await;
        if self.chaos.roll(self.chaos.profile.kusto_fails) {
            self.chaos.note(Class::Recoverable, "kusto_connect_failed", || site.clone());
            return Err(KustoError::transport(ErrorKind::Connect, "chaos: connection refused"));
        }
        let mut builder = axum::http::Request::builder().method(request.method.clone()).uri(request.url.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let http = builder
            .body(axum::body::Body::from(request.body.clone().unwrap_or_default()))
            .map_err(|e| KustoError::transport(ErrorKind::Connect, format!("chaos: bad request: {e}")))?;
        let call = async {
            let response = self.router.clone().oneshot(http).await.expect("the router is infallible");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.map_err(|e| KustoError::transport(ErrorKind::ConnectionLost, e.to_string()))?;
            Ok::<_, KustoError>(WireResponse { status, headers, body: body.to_vec() })
        };
        let answer = match tokio::time::timeout(request.timeout, call).await {
            Ok(a) => a?,
            Err(_) => return Err(KustoError::transport(ErrorKind::Timeout, "chaos: the answer did not come in time")),
        };
        self.chaos.crash_point(&site, true).await;
        if self.chaos.roll(self.chaos.profile.kusto_answer_lost) {
            self.chaos.note(Class::Recoverable, "kusto_answer_lost", || format!("{site} answered {}", answer.status));
            return Err(KustoError::transport(ErrorKind::ConnectionLost, "chaos: connection reset after the request was sent"));
        }
        Ok(answer)
    }
}

//! Where a Kusto request travels: over HTTP (reqwest), or, for the fault explorer, into a
//! simulated cluster in the same process. Everything above it (headers, tokens, retries,
//! parsing, error classes) is the same client either way.

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use std::time::Duration;

use super::error::KustoError;

/// One request as it goes on the wire.
#[derive(Debug, Clone)]
pub struct WireRequest {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
    /// How long to wait for the whole answer.
    pub timeout: Duration,
}

/// An answer as it came off the wire, any status.
#[derive(Debug, Clone)]
pub struct WireResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[async_trait]
pub trait Transport: Send + Sync {
    /// Sends the request; an error is a transport failure (no answer, or a broken one),
    /// classified like reqwest's ([`KustoError::transport`]).
    async fn send(&self, request: WireRequest) -> Result<WireResponse, KustoError>;
}

/// HTTP(S) with a connection pool.
pub struct HttpTransport(reqwest::Client);

impl HttpTransport {
    pub fn new() -> Result<HttpTransport, KustoError> {
        let http = reqwest::Client::builder()
            .gzip(true)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| KustoError::invalid_input(format!("HTTP client: {e}")))?;
        Ok(HttpTransport(http))
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn send(&self, request: WireRequest) -> Result<WireResponse, KustoError> {
        let mut builder = self.0.request(request.method, request.url).headers(request.headers).timeout(request.timeout);
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let response = builder.send().await.map_err(|e| KustoError::from_transport(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| KustoError::from_transport(&e))?.to_vec();
        Ok(WireResponse { status, headers, body })
    }
}

//! The one place that builds Storage clients from a URL and a credential.
//!
//! Two things vary between Azure and the local emulator, and both are decided here: which
//! certificates the transport trusts (Azurite serves a self-signed one) and how patient the
//! SDK's own retry policy is (a broken TLS setup must fail in seconds in tests, not after the
//! default minute of silent retries).

use crate::config::StorageSettings;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport, Url};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions, BlobServiceClient, BlobServiceClientOptions};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use std::path::Path;
use std::sync::Arc;

/// Builds clients for one storage account with one credential and one transport.
#[derive(Clone)]
pub struct StorageClients {
    blob_endpoint: Url,
    queue_endpoint: Url,
    credential: Option<Arc<dyn TokenCredential>>,
    options: ClientOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("cannot read CA certificate {path}: {source}")]
    ReadCa { path: String, source: std::io::Error },
    #[error("CA certificate {path} is not PEM: {source}")]
    BadCa { path: String, source: reqwest::Error },
    #[error("cannot build the HTTP client: {0}")]
    Http(reqwest::Error),
    #[error("cannot build a Storage client for {url}: {source}")]
    Client { url: String, source: azure_core::Error },
}

/// How hard the SDK retries on its own before we see an error.
#[derive(Debug, Clone, Copy)]
pub struct RetryBudget {
    pub max_retries: u32,
    pub initial_delay: time::Duration,
    pub max_total: time::Duration,
}

impl RetryBudget {
    /// Azure: a few retries over tens of seconds; a step that still fails is retried later
    /// by the engine with its own backoff.
    pub const PRODUCTION: RetryBudget = RetryBudget {
        max_retries: 4,
        initial_delay: time::Duration::milliseconds(400),
        max_total: time::Duration::seconds(30),
    };
    /// Local emulator: fail fast so a broken setup shows in a second.
    pub const LOCAL: RetryBudget = RetryBudget {
        max_retries: 1,
        initial_delay: time::Duration::milliseconds(100),
        max_total: time::Duration::seconds(3),
    };
}

impl StorageClients {
    pub fn from_settings(
        settings: &StorageSettings,
        credential: Option<Arc<dyn TokenCredential>>,
    ) -> Result<Self, ClientSetupError> {
        let local = crate::config::is_loopback(&settings.blob_endpoint);
        let budget = if local { RetryBudget::LOCAL } else { RetryBudget::PRODUCTION };
        Self::new(
            settings.blob_endpoint.clone(),
            settings.queue_endpoint.clone(),
            credential,
            settings.ca_cert.as_deref(),
            budget,
        )
    }

    pub fn new(
        blob_endpoint: Url,
        queue_endpoint: Url,
        credential: Option<Arc<dyn TokenCredential>>,
        ca_cert: Option<&Path>,
        budget: RetryBudget,
    ) -> Result<Self, ClientSetupError> {
        let http = http_client(ca_cert)?;
        let options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: budget.initial_delay,
                max_retries: budget.max_retries,
                max_total_elapsed: budget.max_total,
                max_delay: time::Duration::seconds(10),
            }),
            // Every try counted (`crate::metrics`): what the benchmark reports per block.
            per_try_policies: vec![Arc::new(crate::metrics::CountStorageRequests { queue_service: false })],
            ..Default::default()
        };
        Ok(Self {
            blob_endpoint: crate::config::normalize_service_url(blob_endpoint),
            queue_endpoint: crate::config::normalize_service_url(queue_endpoint),
            credential,
            options,
        })
    }

    pub fn blob_endpoint(&self) -> &Url {
        &self.blob_endpoint
    }

    pub fn blob_service(&self) -> Result<BlobServiceClient, ClientSetupError> {
        let options = BlobServiceClientOptions { client_options: self.options.clone(), ..Default::default() };
        BlobServiceClient::new(self.blob_endpoint.clone(), self.credential.clone(), Some(options))
            .map_err(|source| ClientSetupError::Client { url: self.blob_endpoint.to_string(), source })
    }

    pub fn container(&self, name: &str) -> Result<BlobContainerClient, ClientSetupError> {
        let url = join(&self.blob_endpoint, name);
        let options = BlobContainerClientOptions { client_options: self.options.clone(), ..Default::default() };
        BlobContainerClient::new(url.clone(), self.credential.clone(), Some(options))
            .map_err(|source| ClientSetupError::Client { url: url.to_string(), source })
    }

    /// A container client whose requests the SDK never retries on its own: for conditional
    /// writes, where a blind retry of a write that did land comes back as a conflict. The
    /// checkpoint store retries those itself, knowing when an attempt may have landed.
    pub fn container_without_retries(&self, name: &str) -> Result<BlobContainerClient, ClientSetupError> {
        let url = join(&self.blob_endpoint, name);
        let mut client_options = self.options.clone();
        client_options.retry = RetryOptions::none();
        let options = BlobContainerClientOptions { client_options, ..Default::default() };
        BlobContainerClient::new(url.clone(), self.credential.clone(), Some(options))
            .map_err(|source| ClientSetupError::Client { url: url.to_string(), source })
    }

    pub fn queue(&self, name: &str) -> Result<QueueClient, ClientSetupError> {
        let url = join(&self.queue_endpoint, name);
        let mut client_options = self.options.clone();
        client_options.per_try_policies = vec![Arc::new(crate::metrics::CountStorageRequests { queue_service: true })];
        let options = QueueClientOptions { client_options, ..Default::default() };
        QueueClient::new(url.clone(), self.credential.clone(), Some(options))
            .map_err(|source| ClientSetupError::Client { url: url.to_string(), source })
    }

    /// A container client that authenticates with the SAS in `url`'s query instead of a
    /// credential (what Kusto does with the URLs we hand it).
    pub fn container_with_sas(&self, url: Url) -> Result<BlobContainerClient, ClientSetupError> {
        let options = BlobContainerClientOptions { client_options: self.options.clone(), ..Default::default() };
        BlobContainerClient::new(url, None, Some(options))
            .map_err(|source| ClientSetupError::Client { url: "(SAS URL)".into(), source })
    }
}

/// The transport: rustls with the platform roots, plus the emulator's CA when given.
/// Automatic decompression stays off: the blob client reads ranges of stored bytes.
pub fn http_client(ca_cert: Option<&Path>) -> Result<reqwest::Client, ClientSetupError> {
    let mut builder = reqwest::Client::builder()
        .no_gzip()
        .no_deflate()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .map_err(|source| ClientSetupError::ReadCa { path: path.display().to_string(), source })?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|source| ClientSetupError::BadCa { path: path.display().to_string(), source })?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(ClientSetupError::Http)
}

fn join(base: &Url, segment: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}/{}", base.path().trim_end_matches('/'), segment.trim_start_matches('/'));
    url.set_path(&path);
    url
}

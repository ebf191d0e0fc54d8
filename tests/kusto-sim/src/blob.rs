//! Blob I/O for export and ingestion, behind a small trait: the real one speaks the Blob REST
//! API over the SAS URLs the commands carry (Azurite over HTTPS in the test stack); the
//! in-memory one lets tests run without storage.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

/// Where exported files go and ingested files come from. URLs carry their SAS query.
pub trait BlobStore: Send + Sync {
    fn put<'a>(&'a self, url: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<(), String>>;
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>>;
}

/// The URL of a file inside a directory URL, keeping the directory's SAS query.
pub fn file_url(dir: &str, name: &str) -> String {
    let (path, query) = match dir.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (dir, None),
    };
    let mut url = format!("{}/{}", path.trim_end_matches('/'), name);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// A URL without its query: what may be shown (the SAS is a secret).
pub fn without_secret(url: &str) -> &str {
    url.split(['?', ';']).next().unwrap_or(url)
}

/// Blob REST over HTTP(S): Put Blob (BlockBlob) and Get Blob.
pub struct HttpBlobStore {
    client: reqwest::Client,
}

impl HttpBlobStore {
    /// `ca_pem`: an extra root certificate (the test stack's self-signed CA).
    pub fn new(ca_pem: Option<&[u8]>) -> Result<HttpBlobStore, String> {
        let mut builder = reqwest::Client::builder()
            .no_gzip()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120));
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| format!("bad CA certificate: {e}"))?;
            builder = builder.tls_certs_merge([cert]);
        }
        Ok(HttpBlobStore { client: builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))? })
    }
}

fn describe(url: &str, what: &str, e: impl std::fmt::Display) -> String {
    // Never echo the SAS query.
    format!("{what} {} failed: {e}", without_secret(url))
}

/// A transport error with its causes (TLS and connection details hide in the sources);
/// the URL, which carries the SAS, is dropped.
fn chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

impl BlobStore for HttpBlobStore {
    fn put<'a>(&'a self, url: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let resp = self
                .client
                .put(url)
                .header("x-ms-blob-type", "BlockBlob")
                .header("x-ms-version", "2021-08-06")
                .header("content-length", data.len().to_string())
                .body(data)
                .send()
                .await
                .map_err(|e| describe(url, "PUT", chain(e)))?;
            if !resp.status().is_success() {
                return Err(describe(url, "PUT", resp.status()));
            }
            Ok(())
        })
    }

    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let resp = self
                .client
                .get(url)
                .header("x-ms-version", "2021-08-06")
                .send()
                .await
                .map_err(|e| describe(url, "GET", chain(e)))?;
            if !resp.status().is_success() {
                return Err(describe(url, "GET", resp.status()));
            }
            Ok(resp.bytes().await.map_err(|e| describe(url, "GET", chain(e)))?.to_vec())
        })
    }
}

/// Blobs in memory, keyed by URL without query: for tests that need no storage.
#[derive(Default)]
pub struct MemoryBlobStore {
    pub blobs: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryBlobStore {
    pub fn names(&self) -> Vec<String> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

impl BlobStore for MemoryBlobStore {
    fn put<'a>(&'a self, url: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.blobs.lock().unwrap_or_else(|p| p.into_inner()).insert(without_secret(url).to_string(), data);
            Ok(())
        })
    }

    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            self.blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(without_secret(url))
                .cloned()
                .ok_or_else(|| format!("GET {} failed: 404 Not Found", without_secret(url)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_keep_the_sas_and_shown_urls_drop_it() {
        assert_eq!(file_url("https://a/c/dir?sv=1&sig=x", "f.parquet"), "https://a/c/dir/f.parquet?sv=1&sig=x");
        assert_eq!(file_url("https://a/c/dir/", "f"), "https://a/c/dir/f");
        assert_eq!(without_secret("https://a/c/f?sig=x"), "https://a/c/f");
        assert_eq!(without_secret("https://a/c;secretkey"), "https://a/c");
    }
}

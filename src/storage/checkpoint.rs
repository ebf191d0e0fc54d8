//! The checkpoint store: small records written with compare-and-swap.
//!
//! # Contract
//! - [`CheckpointStore::create`] writes only if nothing is stored under the key.
//! - [`CheckpointStore::replace`] writes only if the stored version still has the ETag the
//!   caller read. There is no blind overwrite: every change of state is conditional.
//! - Losing either race is the normal outcome [`Written::Conflict`], not an error: the caller
//!   re-reads and decides whether the winner already did its work.
//! - A write retried after an attempt that may have landed (timeout, reset, 5xx), and then
//!   refused as a conflict, counts as done if the stored bytes are exactly ours: the refusal
//!   was of our own earlier write. Records that must tell writers apart (claims, leases)
//!   carry the writer's id in their bytes, so two writers never write identical bytes.
//! - Errors are [`StorageError`]s that say whether waiting can help.
//!
//! Two implementations: [`BlobCheckpointStore`] (Azure Blob Storage / Azurite) and
//! [`MemoryCheckpointStore`] (tests and in-process runs). Both pass the same conformance
//! suite (`tests/storage_conformance.rs`).

use super::{classify, Failure, StorageError};
use async_trait::async_trait;
use azure_core::http::{Etag, RequestContent};
use azure_storage_blob::models::{BlobContainerClientListBlobsOptions, BlockBlobClientUploadOptions};
use azure_storage_blob::BlobContainerClient;
use futures::TryStreamExt;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Attempts of one conditional write before a transient failure is handed to the caller.
const PUT_ATTEMPTS: u32 = 4;

/// An opaque version of a stored record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub etag: ETag,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Done(ETag),
    /// Another writer got there first (the record exists, or changed since it was read).
    Conflict,
}

#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The record and its version, or `None` if absent.
    async fn read(&self, key: &str) -> Result<Option<Versioned>, StorageError>;
    /// Writes only if absent.
    async fn create(&self, key: &str, value: &[u8]) -> Result<Written, StorageError>;
    /// Writes only if the stored version is still `etag`.
    async fn replace(&self, key: &str, value: &[u8], etag: &ETag) -> Result<Written, StorageError>;
    /// Keys starting with `prefix`, in lexicographic order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Removes the record; absent is fine.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
}

/// JSON on top of the byte-level contract.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("record {key} is not valid JSON for its type: {source}")]
    Corrupt { key: String, source: serde_json::Error },
}

impl RecordError {
    pub fn is_transient(&self) -> bool {
        matches!(self, RecordError::Storage(e) if e.is_transient())
    }
}

pub async fn read_json<T: DeserializeOwned>(
    store: &dyn CheckpointStore,
    key: &str,
) -> Result<Option<(T, ETag)>, RecordError> {
    let Some(found) = store.read(key).await? else { return Ok(None) };
    let value = serde_json::from_slice(&found.value)
        .map_err(|source| RecordError::Corrupt { key: key.to_owned(), source })?;
    Ok(Some((value, found.etag)))
}

pub async fn create_json<T: Serialize>(
    store: &dyn CheckpointStore,
    key: &str,
    value: &T,
) -> Result<Written, StorageError> {
    store.create(key, &to_bytes(value)).await
}

pub async fn replace_json<T: Serialize>(
    store: &dyn CheckpointStore,
    key: &str,
    value: &T,
    etag: &ETag,
) -> Result<Written, StorageError> {
    store.replace(key, &to_bytes(value), etag).await
}

fn to_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own record types cannot fail: they hold no maps with non-string keys.
    serde_json::to_vec_pretty(value).expect("checkpoint records serialize to JSON")
}

/// An in-memory store with the same contract, for tests and in-process runs.
#[derive(Debug, Default)]
pub struct MemoryCheckpointStore {
    records: Mutex<BTreeMap<String, (Vec<u8>, u64)>>,
    next_version: Mutex<u64>,
}

impl MemoryCheckpointStore {
    fn bump(&self) -> u64 {
        let mut v = self.next_version.lock().unwrap();
        *v += 1;
        *v
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn read(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        Ok(self.records.lock().unwrap().get(key).map(|(value, version)| Versioned {
            value: value.clone(),
            etag: ETag(version.to_string()),
        }))
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Written, StorageError> {
        let version = self.bump();
        let mut records = self.records.lock().unwrap();
        if records.contains_key(key) {
            return Ok(Written::Conflict);
        }
        records.insert(key.to_owned(), (value.to_vec(), version));
        Ok(Written::Done(ETag(version.to_string())))
    }

    async fn replace(&self, key: &str, value: &[u8], etag: &ETag) -> Result<Written, StorageError> {
        let version = self.bump();
        let mut records = self.records.lock().unwrap();
        match records.get_mut(key) {
            Some(record) if record.1.to_string() == etag.0 => {
                *record = (value.to_vec(), version);
                Ok(Written::Done(ETag(version.to_string())))
            }
            _ => Ok(Written::Conflict),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self.records.lock().unwrap().keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.records.lock().unwrap().remove(key);
        Ok(())
    }
}

/// Records as block blobs in one container, keyed by blob name.

pub struct BlobCheckpointStore {
    container: BlobContainerClient,
}

impl BlobCheckpointStore {
    pub fn new(container: BlobContainerClient) -> Self {
        Self { container }
    }

    async fn put(&self, key: &str, value: &[u8], condition: Condition<'_>) -> Result<Written, StorageError> {
        let what = format!("write checkpoint {key}");
        // Set once an attempt failed in a way that may have hidden a landed write (a timeout,
        // a reset, a 5xx): a conflict after that may be our own write, and is settled by
        // comparing bytes. A conflict on a clean first attempt is always another writer's.
        let mut maybe_landed = false;
        let mut created_container = false;
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=PUT_ATTEMPTS {
            let options = match condition {
                Condition::Absent => BlockBlobClientUploadOptions { if_none_match: Some(Etag::from("*")), ..Default::default() },
                Condition::Matches(etag) => BlockBlobClientUploadOptions { if_match: Some(Etag::from(etag.0.as_str())), ..Default::default() },
            };
            let blob = self.container.blob_client(key).block_blob_client();
            let failure = match blob.upload(RequestContent::from(value.to_vec()), Some(options)).await {
                Ok(done) => {
                    let etag = done.etag.map(|e| ETag(e.to_string())).unwrap_or_else(|| ETag(String::new()));
                    return Ok(Written::Done(etag));
                }
                Err(err) => classify(&what, err),
            };
            match failure {
                Failure::Conflict if maybe_landed => return self.settle_conflict(key, value).await,
                Failure::Conflict => return Ok(Written::Conflict),
                // The container is created on first use, so a fresh account needs no setup.
                Failure::NotFound if !created_container && matches!(condition, Condition::Absent) => {
                    self.ensure_container().await?;
                    created_container = true;
                }
                // Replacing a record that vanished: someone deleted it; another writer won.
                Failure::NotFound => return Ok(Written::Conflict),
                Failure::Error(e) if e.is_transient() && attempt < PUT_ATTEMPTS => {
                    maybe_landed = true;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Failure::Error(e) => return Err(e),
            }
        }
        Err(StorageError::Transient { what, detail: format!("gave up after {PUT_ATTEMPTS} attempts") })
    }

    /// After an attempt that may have landed: the conflict is ours if the stored bytes are
    /// exactly what we wrote (see module docs).
    async fn settle_conflict(&self, key: &str, value: &[u8]) -> Result<Written, StorageError> {
        match self.read(key).await? {
            Some(stored) if stored.value == value => Ok(Written::Done(stored.etag)),
            _ => Ok(Written::Conflict),
        }
    }

    /// Creates the container if it does not exist yet.
    pub async fn ensure_container(&self) -> Result<(), StorageError> {
        match self.container.create(None).await {
            Ok(_) => Ok(()),
            Err(err) => match classify("create checkpoint container", err) {
                Failure::Conflict => Ok(()),
                other => Err(other.into_error("create checkpoint container")),
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Condition<'a> {
    Absent,
    Matches(&'a ETag),
}

#[async_trait]
impl CheckpointStore for BlobCheckpointStore {
    async fn read(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        let what = format!("read checkpoint {key}");
        let result = self.container.blob_client(key).download(None).await;
        let download = match result {
            Ok(d) => d,
            Err(err) => {
                return match classify(&what, err) {
                    Failure::NotFound => Ok(None),
                    other => Err(other.into_error(&what)),
                }
            }
        };
        let etag = download.properties.etag.as_ref().map(|e| ETag(e.to_string()));
        let value = download.body.collect().await.map_err(|e| match classify(&what, e) {
            other => other.into_error(&what),
        })?;
        let etag = etag.ok_or_else(|| StorageError::Permanent { what, detail: "response has no ETag".into() })?;
        Ok(Some(Versioned { value: value.to_vec(), etag }))
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Written, StorageError> {
        self.put(key, value, Condition::Absent).await
    }

    async fn replace(&self, key: &str, value: &[u8], etag: &ETag) -> Result<Written, StorageError> {
        self.put(key, value, Condition::Matches(etag)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let what = format!("list checkpoints under {prefix}");
        let options = BlobContainerClientListBlobsOptions { prefix: Some(prefix.to_owned()), ..Default::default() };
        let pager = self.container.list_blobs(Some(options)).map_err(|e| classify(&what, e).into_error(&what))?;
        let mut pages = pager.into_pages();
        let mut keys = Vec::new();
        loop {
            match pages.try_next().await {
                Ok(Some(page)) => {
                    let page = page.into_model().map_err(|e| classify(&what, e).into_error(&what))?;
                    keys.extend(page.blob_items.into_iter().filter_map(|b| b.name));
                }
                Ok(None) => break,
                Err(err) => {
                    return match classify(&what, err) {
                        // No container yet means no records yet.
                        Failure::NotFound => Ok(Vec::new()),
                        other => Err(other.into_error(&what)),
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let what = format!("delete checkpoint {key}");
        match self.container.blob_client(key).delete(None).await {
            Ok(_) => Ok(()),
            Err(err) => match classify(&what, err) {
                Failure::NotFound => Ok(()),
                other => Err(other.into_error(&what)),
            },
        }
    }
}

/// A store seen through a key prefix: `kc copy` keeps its checkpoints under the staging
/// directory's `tracking/` folder, beside nothing else's.
pub struct PrefixedStore {
    inner: std::sync::Arc<dyn CheckpointStore>,
    prefix: String,
}

impl PrefixedStore {
    pub fn new(inner: std::sync::Arc<dyn CheckpointStore>, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { inner, prefix }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl CheckpointStore for PrefixedStore {
    async fn read(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        self.inner.read(&self.key(key)).await
    }
    async fn create(&self, key: &str, value: &[u8]) -> Result<Written, StorageError> {
        self.inner.create(&self.key(key), value).await
    }
    async fn replace(&self, key: &str, value: &[u8], etag: &ETag) -> Result<Written, StorageError> {
        self.inner.replace(&self.key(key), value, etag).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let keys = self.inner.list(&self.key(prefix)).await?;
        Ok(keys.into_iter().filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned)).collect())
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(&self.key(key)).await
    }
}

//! The checkpoint store under faults: any call may fail before it takes effect, a write may
//! take effect and lose its answer, and a step may crash on either side of any call.

use crate::faults::{Chaos, Class};
use async_trait::async_trait;
use kusto_copy::storage::checkpoint::{CheckpointStore, ETag, Versioned, Written};
use kusto_copy::storage::StorageError;
use std::sync::Arc;

pub struct ChaosStore {
    pub inner: Arc<dyn CheckpointStore>,
    pub chaos: Arc<Chaos>,
}

impl ChaosStore {
    async fn before(&self, op: &str, key: &str) -> Result<(), StorageError> {
        let site = format!("checkpoint {op} {key}");
        self.chaos.crash_point(&site, false).await;
        if self.chaos.roll(self.chaos.profile.storage_fails) {
            self.chaos.note(Class::Recoverable, "storage_failed", || site.clone());
            return Err(StorageError::Transient { what: site, detail: "chaos: HTTP 503 ServerBusy".into() });
        }
        Ok(())
    }

    async fn after<T>(&self, op: &str, key: &str, result: Result<T, StorageError>) -> Result<T, StorageError> {
        let site = format!("checkpoint {op} {key}");
        self.chaos.crash_point(&site, true).await;
        if result.is_ok() && self.chaos.roll(self.chaos.profile.storage_answer_lost) {
            self.chaos.note(Class::Recoverable, "storage_answer_lost", || site.clone());
            return Err(StorageError::Transient { what: site, detail: "chaos: connection reset after the write took effect".into() });
        }
        result
    }
}

#[async_trait]
impl CheckpointStore for ChaosStore {
    async fn read(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        self.before("read", key).await?;
        self.inner.read(key).await
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Written, StorageError> {
        self.before("create", key).await?;
        let r = self.inner.create(key, value).await;
        self.after("create", key, r).await
    }

    async fn replace(&self, key: &str, value: &[u8], etag: &ETag) -> Result<Written, StorageError> {
        self.before("replace", key).await?;
        let r = self.inner.replace(key, value, etag).await;
        self.after("replace", key, r).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.before("list", prefix).await?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.before("delete", key).await?;
        let r = self.inner.delete(key).await;
        self.after("delete", key, r).await
    }
}

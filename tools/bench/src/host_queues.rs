//! The host harness's queues over Azurite (the serverless demo's, shared as a source file),
//! with every call the host makes counted: the host's own Storage transactions, reported
//! apart from the engine's.

use async_trait::async_trait;
use kc_host_harness::{HostQueue, MessageEncoding, QueueError, QueueService, Received};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "../../serverless-demo/src/queues.rs"]
mod azure;

/// The host's calls so far, by kind.
#[derive(Debug, Default)]
pub struct HostCalls {
    pub send: AtomicU64,
    pub receive: AtomicU64,
    pub delete: AtomicU64,
    pub visibility: AtomicU64,
    pub other: AtomicU64,
}

impl HostCalls {
    pub fn by_kind(&self) -> std::collections::BTreeMap<String, u64> {
        [("queue send", &self.send), ("queue receive", &self.receive), ("queue delete", &self.delete), ("queue visibility", &self.visibility), ("other", &self.other)]
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

pub fn counted(clients: kusto_copy::storage::clients::StorageClients, calls: Arc<HostCalls>) -> Arc<dyn QueueService> {
    Arc::new(Counted { inner: azure::host_queues(clients), calls })
}

struct Counted {
    inner: Arc<dyn QueueService>,
    calls: Arc<HostCalls>,
}

#[async_trait]
impl QueueService for Counted {
    async fn open(&self, name: &str, encoding: MessageEncoding) -> Result<Arc<dyn HostQueue>, QueueError> {
        // Opening creates the queue if needed: one call.
        self.calls.other.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(CountedQueue { inner: self.inner.open(name, encoding).await?, calls: self.calls.clone() }))
    }
}

struct CountedQueue {
    inner: Arc<dyn HostQueue>,
    calls: Arc<HostCalls>,
}

#[async_trait]
impl HostQueue for CountedQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, text: &str, delay: Duration) -> Result<(), QueueError> {
        self.calls.send.fetch_add(1, Ordering::Relaxed);
        self.inner.send(text, delay).await
    }
    async fn receive(&self, max: u8, visibility: Duration) -> Result<Vec<Received>, QueueError> {
        self.calls.receive.fetch_add(1, Ordering::Relaxed);
        self.inner.receive(max, visibility).await
    }
    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), QueueError> {
        self.calls.delete.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(id, pop_receipt).await
    }
    async fn release(&self, id: &str, pop_receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.calls.visibility.fetch_add(1, Ordering::Relaxed);
        self.inner.release(id, pop_receipt, visibility).await
    }
}

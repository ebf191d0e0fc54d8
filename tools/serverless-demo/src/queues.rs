//! The host harness's queues (`kc-host-harness`) over Azure Queue Storage, through
//! kusto-copy's own queue client. Shared as a source file by the serverless demo and the
//! integration tests (`tests/common`): a crate they both depend on would depend on
//! kusto-copy, which dev-depends on it, a cycle.

use async_trait::async_trait;
use kc_host_harness::{HostQueue, QueueError, QueueService, Received};
use kusto_copy::storage::clients::StorageClients;
use kusto_copy::storage::queue::{MessageEncoding, MessageSender, StorageQueue};
use std::sync::Arc;
use std::time::Duration;

/// The host's queue service over the queue endpoint of `clients`.
pub fn host_queues(clients: StorageClients) -> Arc<dyn QueueService> {
    Arc::new(AzureQueues(clients))
}

struct AzureQueues(StorageClients);

#[async_trait]
impl QueueService for AzureQueues {
    async fn open(&self, name: &str, encoding: kc_host_harness::MessageEncoding) -> Result<Arc<dyn HostQueue>, QueueError> {
        let encoding = match encoding {
            kc_host_harness::MessageEncoding::None => MessageEncoding::None,
            kc_host_harness::MessageEncoding::Base64 => MessageEncoding::Base64,
        };
        let q = StorageQueue::new(self.0.queue(name)?, name, encoding);
        q.ensure_exists().await?;
        Ok(Arc::new(AzureQueue(q)))
    }
}

struct AzureQueue(StorageQueue);

#[async_trait]
impl HostQueue for AzureQueue {
    fn name(&self) -> &str {
        self.0.name()
    }
    async fn send(&self, text: &str, delay: Duration) -> Result<(), QueueError> {
        Ok(MessageSender::send(&self.0, text, delay).await?)
    }
    async fn receive(&self, max: u8, visibility: Duration) -> Result<Vec<Received>, QueueError> {
        Ok(self
            .0
            .receive(max, visibility)
            .await?
            .into_iter()
            .map(|m| Received {
                id: m.id,
                pop_receipt: m.pop_receipt,
                dequeue_count: m.dequeue_count,
                text: m.text,
                insertion_time: m.insertion_time,
                expiration_time: m.expiration_time,
                next_visible: m.next_visible,
            })
            .collect())
    }
    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), QueueError> {
        // A stale receipt means another delivery holds the message now: nothing to delete.
        self.0.delete(id, pop_receipt).await?;
        Ok(())
    }
    async fn release(&self, id: &str, pop_receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.0.extend(id, pop_receipt, visibility).await?;
        Ok(())
    }
}

//! Schedules with the checkpoints in a real Azurite (blob service, production client path),
//! in real time: the storage faults come from [`crate::store::ChaosStore`] around it.

use kc_test_stack::Azurite;
use kusto_copy::auth::EmulatorCredential;
use kusto_copy::storage::checkpoint::{BlobCheckpointStore, CheckpointStore};
use kusto_copy::storage::clients::{RetryBudget, StorageClients};
use std::sync::Arc;

/// A checkpoint store in a fresh container of `azurite`, named after `seed`.
pub fn store(azurite: &Azurite, seed: u64) -> Arc<dyn CheckpointStore> {
    let clients = StorageClients::new(
        azurite.blob_endpoint().parse().expect("blob endpoint"),
        azurite.queue_endpoint().parse().expect("queue endpoint"),
        Some(Arc::new(EmulatorCredential::default())),
        Some(&azurite.ca_pem_path),
        RetryBudget::LOCAL,
    )
    .expect("clients for Azurite");
    let name = format!("chaos-{seed:016x}-{}", std::process::id());
    Arc::new(BlobCheckpointStore::new(clients.container_without_retries(&name).expect("a container client")))
}

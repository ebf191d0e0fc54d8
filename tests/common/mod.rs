//! Shared by the integration tests: clients for a test Azurite, on the production token path.
#![allow(dead_code)]

pub mod harness;

use kc_test_stack::Azurite;
use kusto_copy::auth::EmulatorCredential;
use kusto_copy::storage::clients::{RetryBudget, StorageClients};
use std::sync::Arc;

pub fn clients(azurite: &Azurite) -> StorageClients {
    StorageClients::new(
        azurite.blob_endpoint().parse().unwrap(),
        azurite.queue_endpoint().parse().unwrap(),
        Some(Arc::new(EmulatorCredential::default())),
        Some(&azurite.ca_pem_path),
        RetryBudget::LOCAL,
    )
    .expect("clients for Azurite")
}

/// A fresh, unique name for a container or queue, so tests sharing an Azurite never collide.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

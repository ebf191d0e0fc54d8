//! Staging storage in memory, shared by the engine (as its [`StagingStore`]: containers made,
//! signed, deleted, listed) and by the simulated clusters (as their [`BlobStore`]: files put by
//! exports, read by ingestions). A put into a container that does not exist fails, as Azure
//! answers `ContainerNotFound`, so a folder deleted too early shows.

use crate::faults::{Chaos, Class};
use async_trait::async_trait;
use futures::future::BoxFuture;
use kusto_copy::kusto::SecretUrl;
use kusto_copy::storage::sas::Access;
use kusto_copy::storage::staging::StagingStore;
use kusto_copy::storage::StorageError;
use kusto_sim::blob::{without_secret, BlobStore};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The one staging account's blob endpoint (loopback: nothing ever connects to it).
pub const ACCOUNT_URL: &str = "https://127.0.0.1:10000/devstoreaccount1";

#[derive(Default)]
struct Blobs {
    containers: BTreeSet<String>,
    /// By "container/name".
    files: BTreeMap<String, Vec<u8>>,
}

pub struct ChaosStaging {
    blobs: Mutex<Blobs>,
    pub chaos: Arc<Chaos>,
}

impl ChaosStaging {
    pub fn new(chaos: Arc<Chaos>) -> ChaosStaging {
        ChaosStaging { blobs: Mutex::default(), chaos }
    }

    /// Containers that exist now.
    pub fn containers(&self) -> Vec<String> {
        self.blobs.lock().unwrap().containers.iter().cloned().collect()
    }

    /// "container/name" of a blob URL of this account.
    fn path_of(url: &str) -> Result<String, String> {
        let bare = without_secret(url);
        bare.strip_prefix(ACCOUNT_URL).map(|p| p.trim_start_matches('/').to_owned()).ok_or_else(|| format!("{bare}: not the staging account"))
    }

    async fn before(&self, op: &str, folder: &str) -> Result<(), StorageError> {
        let site = format!("staging {op} {folder}");
        self.chaos.crash_point(&site, false).await;
        if self.chaos.roll(self.chaos.profile.staging_fails) {
            self.chaos.note(Class::Recoverable, "staging_failed", || site.clone());
            return Err(StorageError::Transient { what: site, detail: "chaos: HTTP 500 InternalError".into() });
        }
        Ok(())
    }
}

impl BlobStore for ChaosStaging {
    fn put<'a>(&'a self, url: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let path = Self::path_of(url)?;
            let container = path.split('/').next().unwrap_or_default().to_owned();
            let mut b = self.blobs.lock().unwrap();
            if !b.containers.contains(&container) {
                return Err(format!("PUT {} failed: 404 ContainerNotFound", without_secret(url)));
            }
            b.files.insert(path, data);
            Ok(())
        })
    }

    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let path = Self::path_of(url)?;
            self.blobs.lock().unwrap().files.get(&path).cloned().ok_or_else(|| format!("GET {} failed: 404 BlobNotFound", without_secret(url)))
        })
    }
}

#[async_trait]
impl StagingStore for ChaosStaging {
    async fn create_folder(&self, folder: &str) -> Result<(), StorageError> {
        self.before("create", folder).await?;
        self.blobs.lock().unwrap().containers.insert(folder.to_owned());
        self.chaos.crash_point(&format!("staging create {folder}"), true).await;
        Ok(())
    }

    async fn folder_url(&self, folder: &str, access: Access, _lifetime: time::Duration) -> Result<SecretUrl, StorageError> {
        self.before("sign", folder).await?;
        let permissions = match access {
            Access::ExportWrite => "cwl",
            Access::IngestRead => "r",
        };
        let url = format!("{ACCOUNT_URL}/{folder}?sv=2025-01-05&sr=c&sp={permissions}&sig=chaos");
        SecretUrl::parse(&url).map_err(|e| StorageError::Permanent { what: "sign".into(), detail: e.to_string() })
    }

    async fn delete_folder(&self, folder: &str) -> Result<(), StorageError> {
        self.before("delete", folder).await?;
        {
            let mut b = self.blobs.lock().unwrap();
            b.containers.remove(folder);
            let prefix = format!("{folder}/");
            b.files.retain(|k, _| !k.starts_with(&prefix));
        }
        self.chaos.crash_point(&format!("staging delete {folder}"), true).await;
        Ok(())
    }

    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.before("list", prefix).await?;
        Ok(self.blobs.lock().unwrap().containers.iter().filter(|c| c.starts_with(prefix)).cloned().collect())
    }
}

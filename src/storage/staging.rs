//! Staging folders (one blob container per block attempt) behind a small trait, so the engine
//! runs the same against Azure Storage and against the fault explorer's in-memory staging.
//!
//! Absence and presence are normal outcomes here: creating a folder that exists, or deleting
//! one that is gone, succeeds (a retried step does either).

use super::clients::StorageClients;
use super::sas::{Access, StagingSas};
use super::{classify, Failure, StorageError};
use crate::kusto::SecretUrl;
use async_trait::async_trait;
use time::Duration;

#[async_trait]
pub trait StagingStore: Send + Sync {
    /// Creates the container `folder`; one that exists already is fine.
    async fn create_folder(&self, folder: &str) -> Result<(), StorageError>;
    /// A SAS URL for `folder` that Kusto may use for `access`, valid for `lifetime`.
    async fn folder_url(&self, folder: &str, access: Access, lifetime: Duration) -> Result<SecretUrl, StorageError>;
    /// Deletes the container `folder` and what is in it; one that is gone already is fine.
    async fn delete_folder(&self, folder: &str) -> Result<(), StorageError>;
    /// The containers whose names start with `prefix`.
    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
}

/// Staging on one Azure Storage account: clients and the SAS minter.
pub struct AzureStaging {
    pub clients: StorageClients,
    pub sas: StagingSas,
}

fn setup(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Permanent { what: what.into(), detail: e.to_string() }
}

#[async_trait]
impl StagingStore for AzureStaging {
    async fn create_folder(&self, folder: &str) -> Result<(), StorageError> {
        let what = format!("create staging folder {folder}");
        let container = self.clients.container(folder).map_err(|e| setup(&what, e))?;
        match container.create(None).await {
            Ok(_) => Ok(()),
            Err(e) => match classify(&what, e) {
                Failure::Conflict => Ok(()),
                other => Err(other.into_error(&what)),
            },
        }
    }

    async fn folder_url(&self, folder: &str, access: Access, lifetime: Duration) -> Result<SecretUrl, StorageError> {
        self.sas.folder_url(folder, access, lifetime).await
    }

    async fn delete_folder(&self, folder: &str) -> Result<(), StorageError> {
        let what = format!("delete staging folder {folder}");
        let container = self.clients.container(folder).map_err(|e| setup(&what, e))?;
        match container.delete(None).await {
            Ok(_) => Ok(()),
            Err(e) => match classify(&what, e) {
                Failure::NotFound => Ok(()),
                other => Err(other.into_error(&what)),
            },
        }
    }

    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        use azure_storage_blob::models::BlobServiceClientListContainersOptions;
        let what = "list staging folders";
        let service = self.clients.blob_service().map_err(|e| setup(what, e))?;
        let options = BlobServiceClientListContainersOptions { prefix: Some(prefix.to_owned()), ..Default::default() };
        let mut pages = service.list_containers(Some(options)).map_err(|e| classify(what, e).into_error(what))?.into_pages();
        let mut names = Vec::new();
        while let Some(page) = futures::TryStreamExt::try_next(&mut pages).await.map_err(|e| classify(what, e).into_error(what))? {
            let page = page.into_model().map_err(|e| classify(what, e).into_error(what))?;
            names.extend(page.container_items.into_iter().filter_map(|c| c.name));
        }
        Ok(names)
    }
}

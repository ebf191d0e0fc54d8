//! Short-lived user-delegation SAS for staging folders.
//!
//! Kusto reaches our staging storage only through SAS URLs we mint: write-only for an export
//! (create, write, list: no read, no delete), read-only for an ingestion. Each SAS is scoped
//! to one staging folder and expires soon. They are signed with a user delegation key (the
//! identity needs Storage Blob Delegator), never an account key; the key is cached and
//! refreshed well before it expires.
//!
//! A staging folder is a blob **container**. A SAS for a folder inside a container (`sr=d`)
//! exists only on hierarchical-namespace accounts, and Azurite does not implement it; a
//! container SAS (`sr=c`) confines the holder on every kind of account. So the engine gives
//! every block attempt its own short-lived container, and deleting that container also sweeps
//! up whatever a failed export left behind.
//!
//! The URLs are [`SecretUrl`]s, which never print their query: SAS tokens stay out of logs
//! and error messages.

use super::{classify, StorageError};
use azure_core::http::{RequestContent, Url, XmlFormat};
use azure_storage_blob::models::KeyInfo;
use azure_storage_blob::BlobServiceClient;
use azure_storage_common::models::UserDelegationKey;
use azure_storage_sas::SasBuilder;
use crate::kusto::SecretUrl;
use time::{Duration, OffsetDateTime};
use tokio::sync::Mutex;

/// What the holder of the SAS may do in its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// For `.export`: create, write and list blobs; never read or delete them.
    ExportWrite,
    /// For ingestion: read blobs; never write, list or delete them.
    IngestRead,
}

/// How long a user delegation key we ask for lives (the service allows up to 7 days).
const KEY_LIFETIME: Duration = Duration::days(1);
/// Longest SAS we mint; the key is refreshed when it would expire before such a SAS.
pub const MAX_SAS_LIFETIME: Duration = Duration::hours(12);
/// SAS and keys start a little in the past: clocks on the service and here disagree.
const CLOCK_SKEW: Duration = Duration::minutes(5);

pub struct StagingSas {
    service: BlobServiceClient,
    account: String,
    key: Mutex<Option<UserDelegationKey>>,
}

impl StagingSas {
    pub fn new(service: BlobServiceClient) -> Self {
        let account = account_name(service.url());
        Self { service, account, key: Mutex::new(None) }
    }

    /// A SAS URL for the container `folder`, valid for `lifetime` (capped at
    /// [`MAX_SAS_LIFETIME`]).
    pub async fn folder_url(&self, folder: &str, access: Access, lifetime: Duration) -> Result<SecretUrl, StorageError> {
        let now = OffsetDateTime::now_utc();
        let expiry = now + lifetime.min(MAX_SAS_LIFETIME);
        let key = self.delegation_key(now).await?;
        let builder = SasBuilder::new(self.account.as_str(), &key, expiry)
            .map_err(|e| StorageError::Permanent { what: "build SAS".into(), detail: e.to_string() })?
            .start(now - CLOCK_SKEW)
            .container(folder);
        let token = match access {
            Access::ExportWrite => builder.create().write().list().build(),
            Access::IngestRead => builder.read().build(),
        };
        let mut url = self.service.url().clone();
        let path = format!("{}/{}", url.path().trim_end_matches('/'), folder);
        url.set_path(&path);
        url.set_query(Some(&token));
        Ok(SecretUrl::from_url(url))
    }

    /// The cached key, or a new one if there is none or it would expire before the longest
    /// SAS we may sign with it.
    async fn delegation_key(&self, now: OffsetDateTime) -> Result<UserDelegationKey, StorageError> {
        let mut cached = self.key.lock().await;
        if let Some(key) = cached.as_ref() {
            if key.signed_expiry.is_some_and(|exp| exp > now + MAX_SAS_LIFETIME + CLOCK_SKEW) {
                return Ok(key.clone());
            }
        }
        let what = "get user delegation key";
        let info = KeyInfo { start: Some(now - CLOCK_SKEW), expiry: Some(now + KEY_LIFETIME), ..Default::default() };
        let content: RequestContent<KeyInfo, XmlFormat> =
            info.try_into().map_err(|e| classify(what, e).into_error(what))?;
        let key = self
            .service
            .get_user_delegation_key(content, None)
            .await
            .map_err(|e| classify(what, e).into_error(what))?
            .into_model()
            .map_err(|e| classify(what, e).into_error(what))?;
        *cached = Some(key.clone());
        Ok(key)
    }
}

/// `https://acct.blob.core.windows.net` → `acct`; the emulator's path-style
/// `https://127.0.0.1:10000/devstoreaccount1` → `devstoreaccount1`.
pub fn account_name(service_url: &Url) -> String {
    let first_segment = service_url.path_segments().and_then(|mut s| s.next()).filter(|s| !s.is_empty());
    match (first_segment, service_url.host()) {
        (Some(segment), _) => segment.to_owned(),
        (None, Some(url::Host::Domain(host))) => host.split('.').next().unwrap_or(host).to_owned(),
        (None, _) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_from_both_url_styles() {
        assert_eq!(account_name(&Url::parse("https://acct.blob.core.windows.net").unwrap()), "acct");
        assert_eq!(account_name(&Url::parse("https://127.0.0.1:10000/devstoreaccount1").unwrap()), "devstoreaccount1");
    }

    #[test]
    fn sas_urls_never_print_their_token() {
        let url = SecretUrl::from_url(Url::parse("https://a.blob.core.windows.net/c?sv=1&sig=SECRET").unwrap());
        let blob = url.file("x/y.parquet");
        for shown in [format!("{url}"), format!("{url:?}"), format!("{blob}"), format!("{blob:?}")] {
            assert!(!shown.contains("SECRET"), "{shown}");
        }
        assert_eq!(blob.expose_url().path(), "/c/x/y.parquet");
        assert_eq!(blob.expose_url().query(), Some("sv=1&sig=SECRET"));
    }
}

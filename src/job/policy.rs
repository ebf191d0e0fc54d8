//! What this deployment admits in a request: the settings that narrow hosts and identities.
//!
//! Built once from the settings (the process environment in `kc serve`, `kc copy` and
//! `kc validate`; a literal in tests) and handed to [`super::request::check_request`], so the
//! checks never read the environment themselves and every driver applies the same ones.

use crate::config::names;
use std::collections::HashMap;

/// Requests may name only hosts and identities this admits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestPolicy {
    /// `KC_ALLOWED_CLUSTERS`: exact host names (lower case). When set, no other cluster is
    /// accepted, and it may admit a custom domain or private endpoint the SDK list lacks.
    pub allowed_clusters: Option<Vec<String>>,
    /// `KC_ALLOWED_STORAGE_ACCOUNTS`: account names. When set, no other account is accepted.
    pub allowed_storage_accounts: Option<Vec<String>>,
    /// `KC_CREDENTIAL=emulator`: loopback hosts (the simulator, Azurite) are admitted. Never
    /// otherwise: a loopback URI in production reaches whatever listens on the app's host.
    pub loopback: bool,
    /// The app's own user-assigned identity (`KC_IDENTITY_CLIENT_ID`), the only value a
    /// request's `managedIdentityClientId` may carry: a requester never picks the identity.
    pub app_client_id: Option<String>,
}

impl RequestPolicy {
    /// The local stack's policy: loopback admitted, no allow-lists.
    pub fn emulator() -> Self {
        RequestPolicy { loopback: true, ..Default::default() }
    }

    /// Reads the allow-lists from a settings map; `loopback` and `app_client_id` come from the
    /// credential the caller resolved (it knows whether it signs with the emulator's tokens).
    pub fn from_map(env: &HashMap<String, String>, loopback: bool, app_client_id: Option<String>) -> Self {
        RequestPolicy {
            allowed_clusters: list(env, names::ALLOWED_CLUSTERS),
            allowed_storage_accounts: list(env, names::ALLOWED_STORAGE_ACCOUNTS),
            loopback,
            app_client_id,
        }
    }

    /// What `kc serve` should warn about at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.allowed_clusters.is_none() {
            out.push(format!(
                "{} is not set: any Kusto endpoint of the official SDKs' list is accepted as a cluster; set it to the host names this deployment may copy from and to",
                names::ALLOWED_CLUSTERS
            ));
        }
        if self.allowed_storage_accounts.is_none() {
            out.push(format!(
                "{} is not set: any Azure Storage account is accepted as staging; set it to the accounts this deployment may stage in",
                names::ALLOWED_STORAGE_ACCOUNTS
            ));
        }
        out
    }
}

/// A comma- or whitespace-separated list; empty or absent is `None` (not set).
fn list(env: &HashMap<String, String>, name: &str) -> Option<Vec<String>> {
    let raw = env.get(name)?;
    let items: Vec<String> = raw
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .map(|s| s.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    (!items.is_empty()).then_some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_and_lowered_and_warned_about_when_unset() {
        let env: HashMap<String, String> = [(names::ALLOWED_CLUSTERS.to_owned(), " A.kusto.windows.net, b.kusto.windows.net ".to_owned())].into();
        let p = RequestPolicy::from_map(&env, false, None);
        assert_eq!(p.allowed_clusters.as_deref(), Some(&["a.kusto.windows.net".to_owned(), "b.kusto.windows.net".to_owned()][..]));
        assert_eq!(p.allowed_storage_accounts, None);
        let warnings = p.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains(names::ALLOWED_STORAGE_ACCOUNTS));
        assert_eq!(RequestPolicy::from_map(&HashMap::new(), false, None).warnings().len(), 2);
    }
}

//! Which Entra ID credential signs our requests.
//!
//! Production uses the Function App's managed identity (no keys anywhere); a laptop uses the
//! developer tools (Azure CLI / azd); tests and the local demo use [`EmulatorCredential`],
//! whose unsigned tokens only local emulators accept (Azurite in `--oauth basic` mode checks
//! the claims but not the signature, and so does kusto-sim).

use crate::config::CredentialKind;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// Builds the credential the settings ask for. Does no network I/O: tokens are fetched on
/// first use, so `kc serve` can answer the host's readiness probe first.
pub fn credential(kind: &CredentialKind) -> azure_core::Result<Arc<dyn TokenCredential>> {
    Ok(match kind {
        CredentialKind::ManagedIdentity { client_id } => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                ..Default::default()
            };
            ManagedIdentityCredential::new(Some(options))?
        }
        CredentialKind::DeveloperTools => DeveloperToolsCredential::new(None)?,
        CredentialKind::Emulator => Arc::new(EmulatorCredential::default()),
    })
}

/// Gets one Storage token before a terminal command does anything else, so that a
/// credential that cannot be had at all (no `az` on PATH, nobody signed in) is one clear
/// error saying what to do, instead of a "transient" failure retried step after step. The
/// token is cached by the credential, so the first real request reuses it.
pub async fn preflight(kind: &CredentialKind, credential: &Arc<dyn TokenCredential>) -> Result<(), String> {
    let Err(e) = credential.get_token(&["https://storage.azure.com/.default"], None).await else { return Ok(()) };
    // The SDK's message lists each developer tool it tried and why it failed (azure_identity
    // DeveloperToolsCredential); keep it, after the advice.
    let advice = match kind {
        CredentialKind::DeveloperTools => {
            "sign in with the Azure CLI (`az login`) or the Azure Developer CLI (`azd auth login`), \
             or on an Azure host with a managed identity set KC_CREDENTIAL=managed-identity (or pass --clientId)"
        }
        CredentialKind::ManagedIdentity { .. } => {
            "this host has no managed identity that can sign in (or not the one named by --clientId / \
             KC_IDENTITY_CLIENT_ID); on a laptop, set KC_CREDENTIAL=developer and sign in with `az login`"
        }
        CredentialKind::Emulator => "the emulator credential never fails; this is a bug",
    };
    Err(format!("cannot get a token: {advice}.\n  the credential said: {}", e.to_string().replace('\n', "\n  ")))
}

/// Mints unsigned JWTs shaped like Entra ID access tokens: `aud` is the scope's resource
/// (`https://storage.azure.com` for `https://storage.azure.com/.default`), with issuer,
/// tenant, object id and validity claims. Only emulators accept them.
#[derive(Debug, Clone)]
pub struct EmulatorCredential {
    pub tenant_id: String,
    pub object_id: String,
    pub lifetime: Duration,
}

impl Default for EmulatorCredential {
    fn default() -> Self {
        Self {
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            object_id: "00000000-0000-0000-0000-00000000c0de".into(),
            lifetime: Duration::hours(1),
        }
    }
}

impl EmulatorCredential {
    /// The token for one audience, valid from a minute ago (clock skew) for `lifetime`.
    pub fn token_for(&self, audience: &str, now: OffsetDateTime) -> AccessToken {
        let header = serde_json::json!({"alg": "none", "typ": "JWT"});
        let iat = now.unix_timestamp() - 60;
        let exp = (now + self.lifetime).unix_timestamp();
        let claims = serde_json::json!({
            "aud": audience,
            "iss": format!("https://sts.windows.net/{}/", self.tenant_id),
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "oid": self.object_id,
            "tid": self.tenant_id,
            "appid": self.object_id,
        });
        let token = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        AccessToken::new(token, now + self.lifetime)
    }
}

#[async_trait::async_trait]
impl TokenCredential for EmulatorCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let scope = scopes.first().copied().unwrap_or_default();
        Ok(self.token_for(audience_of_scope(scope), OffsetDateTime::now_utc()))
    }
}

/// `https://storage.azure.com/.default` → `https://storage.azure.com`.
pub fn audience_of_scope(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn emulator_tokens_carry_the_scope_resource_as_audience() {
        let cred = EmulatorCredential::default();
        let token = cred.get_token(&["https://storage.azure.com/.default"], None).await.unwrap();
        let parts: Vec<&str> = token.token.secret().split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], "", "unsigned");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://storage.azure.com");
        assert!(claims["exp"].as_i64().unwrap() > OffsetDateTime::now_utc().unix_timestamp());
        assert!(claims["iss"].as_str().unwrap().starts_with("https://sts.windows.net/"));
    }
}

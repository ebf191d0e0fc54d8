//! Bearer tokens per scope, cached until shortly before they expire.

use std::collections::HashMap;
use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential};
use time::{Duration, OffsetDateTime};
use tokio::sync::Mutex;

use super::error::{ErrorKind, KustoError};

/// Refresh this long before expiry, so a token never expires in flight.
const REFRESH_MARGIN: Duration = Duration::minutes(5);

pub(crate) struct TokenCache {
    credential: Arc<dyn TokenCredential>,
    // A tokio mutex so that concurrent calls wait for one refresh instead of each asking.
    tokens: Mutex<HashMap<String, AccessToken>>,
}

impl TokenCache {
    pub(crate) fn new(credential: Arc<dyn TokenCredential>) -> Self {
        TokenCache { credential, tokens: Mutex::new(HashMap::new()) }
    }

    /// The `Authorization` header value for a scope.
    pub(crate) async fn bearer(&self, scope: &str) -> Result<String, KustoError> {
        let mut tokens = self.tokens.lock().await;
        let fresh = tokens
            .get(scope)
            .is_some_and(|t| t.expires_on - OffsetDateTime::now_utc() > REFRESH_MARGIN);
        if !fresh {
            let token = self.credential.get_token(&[scope], None).await.map_err(|e| {
                KustoError::new(ErrorKind::Credential, format!("token for {scope}: {e}"))
            })?;
            tokens.insert(scope.to_string(), token);
        }
        let token = &tokens[scope];
        Ok(format!("Bearer {}", token.token.secret()))
    }
}

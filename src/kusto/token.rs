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

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::credentials::TokenRequestOptions;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out tokens that live `lifetime`, counting the calls.
    #[derive(Debug)]
    struct Counting {
        calls: AtomicUsize,
        lifetime: Duration,
    }

    #[async_trait::async_trait]
    impl TokenCredential for Counting {
        async fn get_token(
            &self,
            _scopes: &[&str],
            _options: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(AccessToken::new(format!("t{n}"), OffsetDateTime::now_utc() + self.lifetime))
        }
    }

    #[tokio::test]
    async fn cached_per_scope_until_near_expiry() {
        let long = Arc::new(Counting { calls: AtomicUsize::new(0), lifetime: Duration::hours(1) });
        let cache = TokenCache::new(long.clone());
        assert_eq!(cache.bearer("https://a/.default").await.unwrap(), "Bearer t0");
        assert_eq!(cache.bearer("https://a/.default").await.unwrap(), "Bearer t0");
        assert_eq!(cache.bearer("https://b/.default").await.unwrap(), "Bearer t1");
        assert_eq!(long.calls.load(Ordering::SeqCst), 2);

        // Inside the refresh margin: every use asks again.
        let short = Arc::new(Counting { calls: AtomicUsize::new(0), lifetime: Duration::minutes(2) });
        let cache = TokenCache::new(short.clone());
        assert_eq!(cache.bearer("https://a/.default").await.unwrap(), "Bearer t0");
        assert_eq!(cache.bearer("https://a/.default").await.unwrap(), "Bearer t1");
        assert_eq!(short.calls.load(Ordering::SeqCst), 2);
    }
}

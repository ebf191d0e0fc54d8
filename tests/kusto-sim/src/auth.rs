//! Bearer-token check: the token's audience must be this cluster's URI, as in Azure where a
//! token minted for another resource is refused. Signatures are not verified (the test
//! credential mints unsigned JWTs), but expiry is.

use base64::Engine;

use crate::wire::error::KustoError;

/// Checks an `Authorization` header value against the cluster URI.
pub fn check_bearer(header: Option<&str>, cluster_uri: &str, now_unix: i64) -> Result<(), KustoError> {
    let header = header.ok_or_else(|| KustoError::unauthorized("No Authorization header: a bearer token is required"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| KustoError::unauthorized("The Authorization header is not a bearer token"))?
        .trim();
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| KustoError::unauthorized("The bearer token is not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| KustoError::unauthorized("The bearer token's payload is not base64url"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| KustoError::unauthorized("The bearer token's payload is not JSON"))?;
    let want = cluster_uri.trim_end_matches('/');
    let audience_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a.trim_end_matches('/') == want,
        Some(serde_json::Value::Array(list)) => {
            list.iter().any(|a| a.as_str().is_some_and(|a| a.trim_end_matches('/') == want))
        }
        _ => false,
    };
    if !audience_ok {
        // Never echo the token; the audience is not secret and helps the caller fix its scope.
        let got = claims.get("aud").map(|a| a.to_string()).unwrap_or_else(|| "none".into());
        return Err(KustoError::unauthorized(format!(
            "The token's audience {got} does not match this cluster ('{want}'): request a token for scope '{want}/.default'"
        )));
    }
    if let Some(exp) = claims.get("exp").and_then(|e| e.as_i64()) {
        if exp < now_unix {
            return Err(KustoError::unauthorized("The bearer token has expired"));
        }
    }
    Ok(())
}

/// Mints an unsigned JWT for a cluster (tests and the README demo use it).
pub fn mint_token(audience: &str) -> String {
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(serde_json::json!({"aud": audience, "iss": "kusto-sim", "oid": "00000000-0000-0000-0000-000000000001", "iat": now, "nbf": now, "exp": now + 3600}))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_matching_audience_with_or_without_slash() {
        let t = mint_token("http://127.0.0.1:1234/");
        assert!(check_bearer(Some(&format!("Bearer {t}")), "http://127.0.0.1:1234", 0).is_ok());
        let t = mint_token("http://127.0.0.1:1234");
        assert!(check_bearer(Some(&format!("Bearer {t}")), "http://127.0.0.1:1234/", 0).is_ok());
    }

    #[test]
    fn refuses_missing_wrong_or_expired_tokens() {
        assert_eq!(check_bearer(None, "http://a", 0).unwrap_err().status, 401);
        let t = mint_token("https://storage.azure.com");
        let e = check_bearer(Some(&format!("Bearer {t}")), "http://127.0.0.1:1", 0).unwrap_err();
        assert_eq!(e.status, 401);
        assert!(!e.detail.contains(&t));
        assert!(check_bearer(Some("Bearer not-a-jwt"), "http://a", 0).is_err());
        let t = mint_token("http://a");
        assert!(check_bearer(Some(&format!("Bearer {t}")), "http://a", i64::MAX).is_err());
    }
}

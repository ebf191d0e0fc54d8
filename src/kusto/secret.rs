//! A URL that carries a credential (a SAS), which must reach Kusto but never a log.

use std::fmt;

use url::Url;

use super::error::KustoError;

/// A blob or folder URL with a SAS. `Debug` and `Display` print it without its query string,
/// so logging one by mistake leaks nothing; only [`SecretUrl::expose`] gives the full text.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Url);

impl SecretUrl {
    pub fn parse(text: &str) -> Result<SecretUrl, KustoError> {
        // Do not echo the text: it is the secret.
        let url = Url::parse(text)
            .map_err(|e| KustoError::invalid_input(format!("not a URL ({e})")))?;
        Ok(SecretUrl(url))
    }

    pub fn from_url(url: Url) -> SecretUrl {
        SecretUrl(url)
    }

    /// The full URL, SAS included, for the request body only.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The same, parsed: for a client that authenticates with the SAS in it.
    pub fn expose_url(&self) -> &Url {
        &self.0
    }

    /// The URL of one blob in this folder, with the same SAS.
    pub fn file(&self, name: &str) -> SecretUrl {
        let mut url = self.0.clone();
        let path = format!("{}/{}", url.path().trim_end_matches('/'), name.trim_start_matches('/'));
        url.set_path(&path);
        SecretUrl(url)
    }

    /// The URL without its query: safe for logs.
    pub fn redacted(&self) -> String {
        let mut u = self.0.clone();
        let had_query = u.query().is_some();
        u.set_query(None);
        let _ = u.set_password(None);
        let mut text = u.to_string();
        if had_query {
            text.push_str("?<redacted>");
        }
        text
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

//! Where a cluster's engine and ingest endpoints are, and which token scope each needs.

use url::Url;

use super::error::KustoError;

/// The engine and ingest base URLs of one cluster (ADX or Fabric Eventhouse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEndpoint {
    engine: Url,
    ingest: Url,
}

impl ClusterEndpoint {
    /// `https://<host>` for real clusters; `http://` only on a loopback host (the local
    /// simulator). The ingest endpoint is `https://ingest-<host>`, the same base URL on
    /// loopback, or `ingest_override` when given.
    pub fn parse(cluster: &str, ingest_override: Option<&str>) -> Result<ClusterEndpoint, KustoError> {
        let engine = base_url(cluster)?;
        let ingest = match ingest_override {
            Some(text) => base_url(text)?,
            None if crate::config::is_loopback(&engine) => engine.clone(),
            None => {
                let host = engine.host_str().unwrap_or_default();
                let mut ingest = engine.clone();
                ingest
                    .set_host(Some(&format!("ingest-{host}")))
                    .map_err(|e| KustoError::invalid_input(format!("ingest host: {e}")))?;
                ingest
            }
        };
        Ok(ClusterEndpoint { engine, ingest })
    }

    pub fn engine(&self) -> &Url {
        &self.engine
    }

    pub fn ingest(&self) -> &Url {
        &self.ingest
    }

    /// A Fabric Eventhouse (`*.kusto.fabric.microsoft.com`), where some ADX request
    /// properties and commands are not documented.
    pub fn is_fabric(&self) -> bool {
        self.engine.host_str().is_some_and(|h| h.to_ascii_lowercase().ends_with(".fabric.microsoft.com"))
    }

    pub fn engine_scope(&self) -> String {
        scope(&self.engine)
    }

    pub fn ingest_scope(&self) -> String {
        scope(&self.ingest)
    }

    pub(crate) fn engine_path(&self, path: &str) -> Url {
        let mut u = self.engine.clone();
        u.set_path(path);
        u
    }
}

fn base_url(text: &str) -> Result<Url, KustoError> {
    let url = Url::parse(text.trim())
        .map_err(|e| KustoError::invalid_input(format!("cluster URL {text:?}: {e}")))?;
    if url.host().is_none() {
        return Err(KustoError::invalid_input(format!("cluster URL {text:?} has no host")));
    }
    match url.scheme() {
        "https" => {}
        "http" if crate::config::is_loopback(&url) => {}
        "http" => {
            return Err(KustoError::invalid_input(format!(
                "cluster URL {text:?}: plain http is only allowed to a loopback host"
            )))
        }
        other => {
            return Err(KustoError::invalid_input(format!(
                "cluster URL {text:?}: unsupported scheme {other}"
            )))
        }
    }
    if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(KustoError::invalid_input(format!(
            "cluster URL {text:?} must not carry a query or credentials"
        )));
    }
    // Only the origin matters: requests go to fixed paths under it.
    let mut base = url;
    base.set_path("/");
    base.set_fragment(None);
    Ok(base)
}

/// `<scheme>://<host[:port]>/.default`.
fn scope(url: &Url) -> String {
    format!("{}/.default", url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_cluster() {
        let e = ClusterEndpoint::parse("https://mycluster.westeurope.kusto.windows.net", None).unwrap();
        assert_eq!(e.engine_scope(), "https://mycluster.westeurope.kusto.windows.net/.default");
        assert_eq!(e.ingest().as_str(), "https://ingest-mycluster.westeurope.kusto.windows.net/");
        assert_eq!(e.ingest_scope(), "https://ingest-mycluster.westeurope.kusto.windows.net/.default");
        assert!(!e.is_fabric());
        let f = ClusterEndpoint::parse("https://trd-abc123.z4.kusto.fabric.microsoft.com", None).unwrap();
        assert!(f.is_fabric(), "a Fabric Eventhouse query URI");
    }

    #[test]
    fn loopback_and_refusals() {
        let e = ClusterEndpoint::parse("http://127.0.0.1:8123", None).unwrap();
        assert_eq!(e.engine_scope(), "http://127.0.0.1:8123/.default");
        assert_eq!(e.ingest(), e.engine());
        assert!(ClusterEndpoint::parse("http://example.com", None).is_err());
        assert!(ClusterEndpoint::parse("ftp://example.com", None).is_err());
        let o = ClusterEndpoint::parse("https://a.kusto.windows.net", Some("https://b.example")).unwrap();
        assert_eq!(o.ingest().as_str(), "https://b.example/");
    }
}

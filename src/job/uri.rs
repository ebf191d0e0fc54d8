//! The URIs a person writes in a copy request: Kusto tables and databases, staging folders.

use serde::{Deserialize, Serialize};
use url::Url;

/// Which service a cluster URI points at. Only informative: any https cluster is accepted
/// (private endpoints and sovereign clouds have their own host names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterKind {
    AzureDataExplorer,
    FabricEventhouse,
    /// A loopback address: the local simulator.
    Local,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRef {
    /// `https://host[:port]`, no path, no trailing slash.
    pub cluster: String,
    pub database: String,
    pub table: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRef {
    pub cluster: String,
    pub database: String,
    /// `None`: the source table's name.
    pub table: Option<String>,
}

/// A staging directory: an account, a container and an optional folder inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingRef {
    /// `https://acct.blob.core.windows.net` (or the emulator's `https://127.0.0.1:p/acct`).
    pub account_url: String,
    pub container: String,
    /// Folder inside the container, without leading or trailing slash; may be empty.
    pub path: String,
}

pub fn cluster_kind(cluster: &Url) -> ClusterKind {
    if crate::config::is_loopback(cluster) {
        return ClusterKind::Local;
    }
    let host = cluster.host_str().unwrap_or_default().to_ascii_lowercase();
    if host.ends_with(".kusto.fabric.microsoft.com") {
        ClusterKind::FabricEventhouse
    } else if [
        ".kusto.windows.net",
        ".kusto.azuresynapse.net",
        ".kusto.usgovcloudapi.net",
        ".kusto.chinacloudapi.cn",
        ".kustomfa.windows.net",
        ".kusto.data.microsoft.com",
    ]
    .iter()
    .any(|suffix| host.ends_with(suffix))
    {
        ClusterKind::AzureDataExplorer
    } else {
        ClusterKind::Other
    }
}

/// Splits a Kusto URI into its cluster and its path segments, checking what every cluster
/// URI must satisfy.
fn parse_cluster_uri(field: &str, raw: &str) -> Result<(Url, Vec<String>), String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("{field}: '{raw}' is not a URI ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if crate::config::is_loopback(&url) => {}
        other => return Err(format!("{field}: '{raw}' uses {other}; Kusto clusters are reached over https")),
    }
    if url.host_str().is_none() {
        return Err(format!("{field}: '{raw}' has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{field}: '{raw}' must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{field}: '{raw}' must not have a query string or fragment"));
    }
    let segments = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).map(percent_decode).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|e| format!("{field}: '{raw}': {e}"))?
        .unwrap_or_default();
    let mut cluster = url.clone();
    cluster.set_path("");
    let cluster_text = cluster.as_str().trim_end_matches('/').to_owned();
    Ok((Url::parse(&cluster_text).expect("re-parse of a valid URL"), segments))
}

/// `https://cluster/db/table`.
pub fn parse_table_uri(field: &str, raw: &str) -> Result<TableRef, String> {
    let (cluster, segments) = parse_cluster_uri(field, raw)?;
    match segments.as_slice() {
        [database, table] => {
            validate_entity_name(field, "database", database)?;
            validate_entity_name(field, "table", table)?;
            Ok(TableRef { cluster: cluster_string(&cluster), database: database.clone(), table: table.clone() })
        }
        _ => Err(format!(
            "{field}: '{raw}' should name a table, like https://mycluster.westeurope.kusto.windows.net/MyDatabase/MyTable"
        )),
    }
}

/// `https://cluster/db` or `https://cluster/db/table`.
pub fn parse_destination_uri(field: &str, raw: &str) -> Result<DestinationRef, String> {
    let (cluster, segments) = parse_cluster_uri(field, raw)?;
    let (database, table) = match segments.as_slice() {
        [database] => (database.clone(), None),
        [database, table] => {
            validate_entity_name(field, "table", table)?;
            (database.clone(), Some(table.clone()))
        }
        _ => {
            return Err(format!(
                "{field}: '{raw}' should name a database or a table, like https://mycluster.westeurope.kusto.windows.net/MyDatabase[/MyTable]"
            ))
        }
    };
    validate_entity_name(field, "database", &database)?;
    Ok(DestinationRef { cluster: cluster_string(&cluster), database, table })
}

/// `https://acct.blob.core.windows.net/container[/folder...]`.
pub fn parse_staging_uri(field: &str, raw: &str) -> Result<StagingRef, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("{field}: '{raw}' is not a URI ({e})"))?;
    if url.scheme() != "https" {
        return Err(format!("{field}: '{raw}' must use https"));
    }
    if url.query().is_some() {
        return Err(format!(
            "{field}: '{raw}' must not carry a query string: no SAS or key is needed, the app's identity is used"
        ));
    }
    let segments: Vec<&str> = url.path_segments().map(|s| s.filter(|p| !p.is_empty()).collect()).unwrap_or_default();
    // The emulator puts the account in the path: https://127.0.0.1:10000/devstoreaccount1/container
    let account_in_path = crate::config::is_loopback(&url);
    let skip = usize::from(account_in_path);
    let Some(container) = segments.get(skip) else {
        return Err(format!(
            "{field}: '{raw}' should point at least to a container, like https://myaccount.blob.core.windows.net/mycontainer/myfolder"
        ));
    };
    crate::config::validate_container_name(container).map_err(|e| format!("{field}: {e}"))?;
    let mut account = url.clone();
    account.set_path(if account_in_path { segments[0] } else { "" });
    Ok(StagingRef {
        account_url: account.as_str().trim_end_matches('/').to_owned(),
        container: (*container).to_owned(),
        path: segments[skip + 1..].join("/"),
    })
}

fn cluster_string(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

fn percent_decode(segment: &str) -> Result<String, String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "path is not UTF-8".to_owned())
}

/// Kusto entity names: letters, digits, `_`, `-`, `.` and spaces, 1 to 1024 characters.
pub fn validate_entity_name(field: &str, what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.chars().count() <= 1024
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
        && name.trim() == name;
    if ok {
        Ok(())
    } else {
        Err(format!("{field}: '{name}' is not a valid {what} name (letters, digits, '_', '-', '.', spaces)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_uris_of_both_services() {
        let adx = parse_table_uri("source", "https://help.kusto.windows.net/Samples/StormEvents").unwrap();
        assert_eq!(adx.cluster, "https://help.kusto.windows.net");
        assert_eq!((adx.database.as_str(), adx.table.as_str()), ("Samples", "StormEvents"));
        let fabric = parse_table_uri("source", "https://trd-abc123.z2.kusto.fabric.microsoft.com/My%20Db/T1/").unwrap();
        assert_eq!(fabric.database, "My Db");
        assert_eq!(cluster_kind(&Url::parse(&fabric.cluster).unwrap()), ClusterKind::FabricEventhouse);
        assert_eq!(cluster_kind(&Url::parse(&adx.cluster).unwrap()), ClusterKind::AzureDataExplorer);
        let local = parse_table_uri("source", "http://127.0.0.1:8080/db/t").unwrap();
        assert_eq!(local.cluster, "http://127.0.0.1:8080");
    }

    #[test]
    fn bad_table_uris_say_why() {
        for (raw, needle) in [
            ("help.kusto.windows.net/Samples/T", "is not a URI"),
            ("http://help.kusto.windows.net/Samples/T", "https"),
            ("https://help.kusto.windows.net/Samples", "should name a table"),
            ("https://help.kusto.windows.net/Samples/T?x=1", "query string"),
            ("https://help.kusto.windows.net/Samples/T;drop", "not a valid table name"),
        ] {
            let err = parse_table_uri("source", raw).unwrap_err();
            assert!(err.contains(needle), "{raw}: {err}");
        }
    }

    #[test]
    fn destinations_with_and_without_table() {
        assert_eq!(parse_destination_uri("d", "https://c.kusto.windows.net/db/").unwrap().table, None);
        assert_eq!(parse_destination_uri("d", "https://c.kusto.windows.net/db/t").unwrap().table.as_deref(), Some("t"));
        assert!(parse_destination_uri("d", "https://c.kusto.windows.net/").is_err());
    }

    #[test]
    fn staging_uris() {
        let s = parse_staging_uri("t", "https://acct.blob.core.windows.net/staging/kc/run1/").unwrap();
        assert_eq!((s.account_url.as_str(), s.container.as_str(), s.path.as_str()), ("https://acct.blob.core.windows.net", "staging", "kc/run1"));
        let e = parse_staging_uri("t", "https://127.0.0.1:10000/devstoreaccount1/staging").unwrap();
        assert_eq!((e.account_url.as_str(), e.container.as_str(), e.path.as_str()), ("https://127.0.0.1:10000/devstoreaccount1", "staging", ""));
        assert!(parse_staging_uri("t", "https://acct.blob.core.windows.net/").unwrap_err().contains("container"));
        assert!(parse_staging_uri("t", "https://acct.blob.core.windows.net/c?sig=x").unwrap_err().contains("query"));
    }
}

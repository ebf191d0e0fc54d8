//! Which hosts a request may name. The app sends its Kusto and Storage bearer tokens to the
//! hosts of a request, so a host is checked here, at validation (which every driver goes
//! through before any client is built), and a token is never requested for one that failed.
//!
//! - Clusters: a Kusto endpoint by the official SDKs' trusted-endpoint list
//!   ([`well_known_kusto_endpoints.json`](well_known_kusto_endpoints.json), embedded from the
//!   Python client; the Java, .NET and Go clients ship the same data). As the SDKs match: a
//!   host is trusted when it ends with one of a cloud's `AllowedKustoSuffixes` (each begins
//!   with a dot, so `evilkusto.windows.net` is no match) or equals one of its
//!   `AllowedKustoHostnames`, case-insensitively. The SDKs then also ask the cluster which
//!   login endpoint it uses and match against that cloud's list only; we cannot ask before
//!   trusting the host, so any cloud's list admits it (the token's audience is still the host).
//!   `KC_ALLOWED_CLUSTERS`, when set, replaces the list with exact names.
//! - Staging: a Blob or Data Lake endpoint of Azure Storage, `<account>.blob.<suffix>` or
//!   `<account>.dfs.<suffix>`, with the public and sovereign storage suffixes
//!   (`core.windows.net`, `core.chinacloudapi.cn`, `core.usgovcloudapi.net`: the
//!   `StorageEndpointSuffix` of each environment, learn.microsoft.com
//!   storage/common/storage-powershell-independent-clouds), or an Azure DNS zone endpoint
//!   `<account>.z<NN>.blob.storage.azure.net` (preview, retiring 2027:
//!   storage/common/azurednszone-endpoints-retirement-faq). Account names are 3-24 lowercase
//!   letters and digits. `KC_ALLOWED_STORAGE_ACCOUNTS`, when set, admits only those accounts.
//! - Loopback (127.0.0.0/8, ::1, `localhost`) only with `KC_CREDENTIAL=emulator`; other IP
//!   literals never (Azure endpoints are names). Only the default port, except on loopback.

use super::policy::RequestPolicy;
use crate::config::names;
use serde::Deserialize;
use std::sync::OnceLock;
use url::{Host, Url};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WellKnown {
    allowed_endpoints_by_login: std::collections::BTreeMap<String, Cloud>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Cloud {
    allowed_kusto_suffixes: Vec<String>,
    allowed_kusto_hostnames: Vec<String>,
}

fn well_known() -> &'static WellKnown {
    static DATA: OnceLock<WellKnown> = OnceLock::new();
    DATA.get_or_init(|| {
        serde_json::from_str(include_str!("well_known_kusto_endpoints.json")).expect("the embedded endpoint list parses")
    })
}

/// The login endpoint of the cloud whose list admits `host`, if any.
pub fn kusto_cloud(host: &str) -> Option<&'static str> {
    let host = host.to_ascii_lowercase();
    well_known().allowed_endpoints_by_login.iter().find_map(|(login, cloud)| {
        let by_suffix = cloud.allowed_kusto_suffixes.iter().any(|s| host.ends_with(&s.to_ascii_lowercase()));
        let by_name = cloud.allowed_kusto_hostnames.iter().any(|h| h.eq_ignore_ascii_case(&host));
        (by_suffix || by_name).then_some(login.as_str())
    })
}

const STORAGE_SUFFIXES: [&str; 3] = ["core.windows.net", "core.chinacloudapi.cn", "core.usgovcloudapi.net"];

/// What every host must satisfy whatever its service: a name or a loopback address, no
/// trailing dot, the default port unless loopback. Returns the host name (lower case) or
/// `None` for an admitted loopback host.
fn common(field: &str, url: &Url, policy: &RequestPolicy, service: &str) -> Result<Option<String>, String> {
    let loopback = crate::config::is_loopback(url);
    if loopback {
        if !policy.loopback {
            return Err(format!(
                "{field}: {} is a loopback address, accepted only when {}=emulator (the local stack)",
                url.host_str().unwrap_or_default(),
                names::CREDENTIAL
            ));
        }
        return Ok(None);
    }
    let host = match url.host() {
        Some(Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(Host::Ipv4(ip)) => return Err(format!("{field}: {ip} is an IP address; {service} endpoints are named by host name")),
        Some(Host::Ipv6(ip)) => return Err(format!("{field}: [{ip}] is an IP address; {service} endpoints are named by host name")),
        None => return Err(format!("{field}: the URI has no host")),
    };
    if host.ends_with('.') {
        return Err(format!("{field}: '{host}' ends with a dot; write the host name without it"));
    }
    if url.port().is_some() {
        return Err(format!("{field}: '{host}' names a port; {service} endpoints are reached on the default https port"));
    }
    Ok(Some(host))
}

/// A cluster URI (`https://host[:port]`, already parsed) the app may send its Kusto token to.
pub fn check_cluster(field: &str, cluster: &str, policy: &RequestPolicy) -> Result<(), String> {
    let url = Url::parse(cluster).map_err(|e| format!("{field}: '{cluster}' is not a URI ({e})"))?;
    let Some(host) = common(field, &url, policy, "Kusto")? else {
        return match &policy.allowed_clusters {
            Some(list) if !list.iter().any(|h| Some(h.as_str()) == url.host_str()) => Err(format!(
                "{field}: '{}' is not in {}",
                url.host_str().unwrap_or_default(),
                names::ALLOWED_CLUSTERS
            )),
            _ => Ok(()),
        };
    };
    let idn = if host.split('.').any(|l| l.starts_with("xn--")) { " (an internationalised name, shown in punycode)" } else { "" };
    match &policy.allowed_clusters {
        Some(list) if list.contains(&host) => Ok(()),
        Some(_) => Err(format!(
            "{field}: '{host}'{idn} is not in {}, which lists the only clusters this deployment may reach; add it there to admit it",
            names::ALLOWED_CLUSTERS
        )),
        None if kusto_cloud(&host).is_some() => Ok(()),
        None => Err(format!(
            "{field}: '{host}'{idn} is not a Kusto endpoint by the official Kusto SDKs' trusted list (like *.kusto.windows.net or *.kusto.fabric.microsoft.com); a custom domain or private endpoint is admitted by listing it in {}",
            names::ALLOWED_CLUSTERS
        )),
    }
}

/// A staging account URL the app may send its Storage token to. Returns the account name.
pub fn check_storage(field: &str, url: &Url, policy: &RequestPolicy) -> Result<String, String> {
    let account = match common(field, url, policy, "Azure Storage")? {
        // The emulator puts the account in the path: https://127.0.0.1:10000/devstoreaccount1/…
        None => url.path_segments().and_then(|mut s| s.find(|p| !p.is_empty())).unwrap_or_default().to_owned(),
        Some(host) => storage_account(&host).ok_or_else(|| {
            format!(
                "{field}: '{host}' is not an Azure Storage Blob or Data Lake endpoint (<account>.blob.core.windows.net, <account>.dfs.core.windows.net, or the sovereign clouds' core.chinacloudapi.cn and core.usgovcloudapi.net)"
            )
        })?,
    };
    if !(3..=24).contains(&account.len()) || !account.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(format!("{field}: '{account}' is not a storage account name (3-24 lowercase letters and digits)"));
    }
    match &policy.allowed_storage_accounts {
        Some(list) if !list.contains(&account) => Err(format!(
            "{field}: storage account '{account}' is not in {}, which lists the only accounts this deployment may stage in; add it there to admit it",
            names::ALLOWED_STORAGE_ACCOUNTS
        )),
        _ => Ok(account),
    }
}

/// `acct.blob.core.windows.net` → `acct`; `None` when the host is no storage endpoint.
fn storage_account(host: &str) -> Option<String> {
    let (account, rest) = host.split_once('.')?;
    let standard = STORAGE_SUFFIXES
        .iter()
        .any(|suffix| rest == format!("blob.{suffix}") || rest == format!("dfs.{suffix}"));
    let dns_zone = rest
        .strip_suffix(".storage.azure.net")
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(zone, service)| {
            zone.len() == 3 && zone.starts_with('z') && zone[1..].chars().all(|c| c.is_ascii_digit()) && matches!(service, "blob" | "dfs")
        });
    (standard || dns_zone).then(|| account.to_owned())
}

/// The Blob endpoint of a Data Lake (`dfs`) host: the same account and data, and the
/// endpoint our Blob clients and Kusto's export speak.
pub fn blob_endpoint_of(host: &str) -> String {
    match host.split_once(".dfs.") {
        Some((account, rest)) => format!("{account}.blob.{rest}"),
        None => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(raw: &str, policy: &RequestPolicy) -> Result<(), String> {
        let t = super::super::uri::parse_table_uri("source", &format!("{raw}/db/T"))?;
        check_cluster("source", &t.cluster, policy)
    }

    #[test]
    fn kusto_hosts_by_the_sdk_list() {
        let p = RequestPolicy::default();
        for ok in [
            "https://help.kusto.windows.net",
            "https://HELP.Kusto.Windows.NET",
            "https://trd-abc.z9.kusto.fabric.microsoft.com",
            "https://c.westus.kusto.usgovcloudapi.net",
            "https://c.kusto.chinacloudapi.cn",
            "https://ade.loganalytics.io",
            "https://x.kusto.windows.net:443",
        ] {
            cluster(ok, &p).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, needle) in [
            ("https://x.kusto.windows.net@evil.example", "credentials"),
            ("https://x.kusto.windows.net.", "ends with a dot"),
            ("https://evilkusto.windows.net", "not a Kusto endpoint"),
            ("https://kusto.windows.net", "not a Kusto endpoint"),
            ("https://x.kusto.windows.net.evil.example", "not a Kusto endpoint"),
            ("https://x.kusto.wíndows.net", "punycode"),
            ("https://10.0.0.4", "IP address"),
            ("https://[fe80::1]", "IP address"),
            ("https://x.kusto.windows.net:8443", "port"),
            ("https://127.0.0.1:8080", "KC_CREDENTIAL=emulator"),
            ("http://localhost:8080", "KC_CREDENTIAL=emulator"),
            ("https://evil.example", "KC_ALLOWED_CLUSTERS"),
        ] {
            let err = cluster(bad, &p).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        cluster("http://127.0.0.1:8080", &RequestPolicy::emulator()).unwrap();
        cluster("http://[::1]:8080", &RequestPolicy::emulator()).unwrap();
    }

    #[test]
    fn the_cluster_allow_list_narrows_and_admits_exact_names() {
        let p = RequestPolicy {
            allowed_clusters: Some(vec!["a.kusto.windows.net".into(), "kusto.contoso.com".into()]),
            ..Default::default()
        };
        cluster("https://A.kusto.windows.net", &p).unwrap();
        cluster("https://kusto.contoso.com", &p).unwrap();
        let err = cluster("https://b.kusto.windows.net", &p).unwrap_err();
        assert!(err.contains("not in KC_ALLOWED_CLUSTERS"), "{err}");
        assert!(cluster("https://x.kusto.contoso.com", &p).is_err(), "exact names, not suffixes");
    }

    fn staging(raw: &str, policy: &RequestPolicy) -> Result<String, String> {
        check_storage("stagingDirectory", &Url::parse(raw).unwrap(), policy)
    }

    #[test]
    fn storage_hosts() {
        let p = RequestPolicy::default();
        for (ok, account) in [
            ("https://acct.blob.core.windows.net/c", "acct"),
            ("https://ACCT.BLOB.core.windows.net/c", "acct"),
            ("https://acct.dfs.core.windows.net/c", "acct"),
            ("https://acct.blob.core.chinacloudapi.cn/c", "acct"),
            ("https://acct.blob.core.usgovcloudapi.net/c", "acct"),
            ("https://acct.z12.blob.storage.azure.net/c", "acct"),
        ] {
            assert_eq!(staging(ok, &p).unwrap_or_else(|e| panic!("{ok}: {e}")), account);
        }
        for (bad, needle) in [
            ("https://acct.blob.core.windows.net.evil.example/c", "not an Azure Storage"),
            ("https://acct.queue.core.windows.net/c", "not an Azure Storage"),
            ("https://acct.evil.blob.core.windows.net/c", "not an Azure Storage"),
            ("https://blob.core.windows.net/c", "not an Azure Storage"),
            ("https://ac.blob.core.windows.net/c", "not a storage account name"),
            ("https://acct.blob.core.windows.net./c", "ends with a dot"),
            ("https://acct.blob.core.windows.net:444/c", "port"),
            ("https://52.1.2.3/acct/c", "IP address"),
            ("https://127.0.0.1:10000/devstoreaccount1/c", "KC_CREDENTIAL=emulator"),
        ] {
            let err = staging(bad, &p).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert_eq!(staging("https://127.0.0.1:10000/devstoreaccount1/c", &RequestPolicy::emulator()).unwrap(), "devstoreaccount1");
    }

    #[test]
    fn the_storage_allow_list_matches_the_account() {
        let p = RequestPolicy { allowed_storage_accounts: Some(vec!["good".into(), "devstoreaccount1".into()]), loopback: true, ..Default::default() };
        staging("https://good.blob.core.windows.net/c", &p).unwrap();
        staging("https://good.dfs.core.chinacloudapi.cn/c", &p).unwrap();
        staging("https://127.0.0.1:10000/devstoreaccount1/c", &p).unwrap();
        let err = staging("https://other.blob.core.windows.net/c", &p).unwrap_err();
        assert!(err.contains("KC_ALLOWED_STORAGE_ACCOUNTS"), "{err}");
        assert!(staging("https://127.0.0.1:10000/otheraccount/c", &p).is_err());
        assert_eq!(blob_endpoint_of("a.dfs.core.windows.net"), "a.blob.core.windows.net");
    }
}

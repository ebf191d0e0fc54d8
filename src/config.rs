//! App settings, read once at start-up.
//!
//! Every setting has a documented name (see the README's "Configuration" table). A missing
//! or malformed one is reported as one [`ConfigError`] naming the setting, before the server
//! starts, rather than as a panic in the middle of an invocation later.

use std::collections::HashMap;
use std::path::PathBuf;
use url::Url;

/// Names of the settings, in one place so errors, docs and tests agree.
pub mod names {
    pub const PORT: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
    pub const BLOB_ENDPOINT: &str = "KC_BLOB_ENDPOINT";
    pub const QUEUE_ENDPOINT: &str = "KC_QUEUE_ENDPOINT";
    /// Set by identity-based host storage; used when KC_BLOB_ENDPOINT/KC_QUEUE_ENDPOINT are not.
    pub const HOST_STORAGE_ACCOUNT: &str = "AzureWebJobsStorage__accountName";
    pub const CHECKPOINT_CONTAINER: &str = "KC_CHECKPOINT_CONTAINER";
    pub const CREDENTIAL: &str = "KC_CREDENTIAL";
    pub const IDENTITY_CLIENT_ID: &str = "KC_IDENTITY_CLIENT_ID";
    pub const CA_CERT: &str = "KC_CA_CERT";
    pub const LOG_FORMAT: &str = "KC_LOG_FORMAT";
    pub const INGESTION: &str = "KC_INGESTION";
    /// Cluster host names a request may name (exact; comma-separated). Unset: the Kusto SDKs' list.
    pub const ALLOWED_CLUSTERS: &str = "KC_ALLOWED_CLUSTERS";
    /// Storage account names a request may stage in (comma-separated). Unset: any account.
    pub const ALLOWED_STORAGE_ACCOUNTS: &str = "KC_ALLOWED_STORAGE_ACCOUNTS";
    /// Replications to keep running: a JSON array of copy requests, each with a `name`.
    pub const REPLICATIONS: &str = "KC_REPLICATIONS";
    /// Which declaration of KC_REPLICATIONS is newer (an integer, e.g. the deployment time
    /// as yyyyMMddHHmmss): instances with older settings change nothing.
    pub const REPLICATIONS_VERSION: &str = "KC_REPLICATIONS_VERSION";
    /// Names this deployment in its staging tables and containers (hashed); default: where
    /// its checkpoints live.
    pub const DEPLOYMENT_ID: &str = "KC_DEPLOYMENT_ID";
    /// A file `kc copy` and `kc serve` write their usage to as they exit (Storage
    /// transactions, CPU, peak memory: `crate::metrics`); a measurement aid.
    pub const USAGE_FILE: &str = "KC_USAGE_FILE";
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("setting {name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(name: &'static str, problem: impl Into<String>) -> Self {
        Self { name, problem: problem.into() }
    }
}

/// The queues are named in `functions/*/function.json`, which the host reads before we run;
/// they are constants rather than settings so the two can never disagree.
pub mod queues {
    pub const REQUESTS: &str = "kc-requests";
    pub const STEPS: &str = "kc-steps";
}

/// Which credential signs requests to Storage and Kusto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// The Function App's managed identity; `client_id` selects a user-assigned one.
    ManagedIdentity { client_id: Option<String> },
    /// Azure CLI / Azure Developer CLI on a developer's machine.
    DeveloperTools,
    /// Unsigned tokens accepted only by local emulators (Azurite `--oauth basic`, kusto-sim).
    Emulator,
}

/// Where the handler keeps its state and sends its messages.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub blob_endpoint: Url,
    pub queue_endpoint: Url,
    pub checkpoint_container: String,
    /// Extra CA certificate (PEM) to trust, for a local emulator's self-signed certificate.
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub storage: StorageSettings,
    pub credential: CredentialKind,
    /// `.ingest async` on the engine endpoint instead of the ingest-v2 queued API.
    pub direct_ingestion: bool,
    /// What requests may name: allow-lists, loopback (only with the emulator credential).
    pub policy: crate::job::RequestPolicy,
    pub replications: Vec<crate::job::replication::Replication>,
    pub replications_version: u64,
    /// `KC_DEPLOYMENT_ID`, or the checkpoint store's location.
    pub deployment_id: String,
}

/// Reads settings from a name → value map (the process environment in production, a literal
/// map in tests, so tests never mutate the process environment).
pub fn from_map(env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

    let account = get(names::HOST_STORAGE_ACCOUNT);
    let blob_endpoint = endpoint(get(names::BLOB_ENDPOINT), names::BLOB_ENDPOINT, account, "blob")?;
    let queue_endpoint =
        endpoint(get(names::QUEUE_ENDPOINT), names::QUEUE_ENDPOINT, account, "queue")?;

    let checkpoint_container = get(names::CHECKPOINT_CONTAINER).unwrap_or("kc-checkpoints");
    validate_container_name(checkpoint_container)
        .map_err(|p| ConfigError::new(names::CHECKPOINT_CONTAINER, p))?;

    let client_id = get(names::IDENTITY_CLIENT_ID).map(str::to_owned);
    let credential = match get(names::CREDENTIAL) {
        None | Some("managed-identity") => CredentialKind::ManagedIdentity { client_id },
        Some("developer") => CredentialKind::DeveloperTools,
        Some("emulator") => CredentialKind::Emulator,
        Some(other) => {
            return Err(ConfigError::new(
                names::CREDENTIAL,
                format!("'{other}' is not one of managed-identity, developer, emulator"),
            ))
        }
    };
    if credential == CredentialKind::Emulator {
        // Unsigned tokens must never be pointed at a real account by mistake.
        for (name, url) in [(names::BLOB_ENDPOINT, &blob_endpoint), (names::QUEUE_ENDPOINT, &queue_endpoint)] {
            if !is_loopback(url) {
                return Err(ConfigError::new(
                    name,
                    format!("{url} is not a loopback address, and {}=emulator only talks to local emulators", names::CREDENTIAL),
                ));
            }
        }
    }
    let direct_ingestion = match get(names::INGESTION) {
        None | Some("queued") => false,
        Some("direct") => true,
        Some(other) => return Err(ConfigError::new(names::INGESTION, format!("'{other}' is not one of queued, direct"))),
    };
    let replications = match get(names::REPLICATIONS) {
        None => Vec::new(),
        Some(text) => crate::job::replication::parse(text).map_err(|p| ConfigError::new(names::REPLICATIONS, p))?,
    };
    let replications_version = match get(names::REPLICATIONS_VERSION) {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| ConfigError::new(names::REPLICATIONS_VERSION, format!("'{v}' is not a whole number")))?,
    };
    let deployment_id = get(names::DEPLOYMENT_ID).map(str::to_owned).unwrap_or_else(|| format!("{blob_endpoint}{checkpoint_container}"));
    let ca_cert = get(names::CA_CERT).map(PathBuf::from);
    if let Some(path) = &ca_cert {
        if !path.is_file() {
            return Err(ConfigError::new(names::CA_CERT, format!("{} is not a readable file", path.display())));
        }
    }

    Ok(Settings {
        storage: StorageSettings {
            blob_endpoint,
            queue_endpoint,
            checkpoint_container: checkpoint_container.to_owned(),
            ca_cert,
        },
        policy: crate::job::RequestPolicy::from_map(
            env,
            credential == CredentialKind::Emulator,
            match &credential {
                CredentialKind::ManagedIdentity { client_id } => client_id.clone(),
                _ => None,
            },
        ),
        credential,
        direct_ingestion,
        replications,
        replications_version,
        deployment_id,
    })
}

/// Reads settings from the process environment.
pub fn from_env() -> Result<Settings, ConfigError> {
    from_map(&std::env::vars().collect())
}

/// The port the Functions host chose for us.
pub fn port_from_map(env: &HashMap<String, String>) -> Result<u16, ConfigError> {
    let raw = env
        .get(names::PORT)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ConfigError::new(names::PORT, "missing; the Functions host sets it, or set it yourself to run `kc serve` locally"))?;
    match raw.parse::<u16>() {
        Ok(0) | Err(_) => Err(ConfigError::new(names::PORT, format!("'{raw}' is not a TCP port (1-65535)"))),
        Ok(port) => Ok(port),
    }
}

pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn endpoint(
    explicit: Option<&str>,
    name: &'static str,
    account: Option<&str>,
    service: &str,
) -> Result<Url, ConfigError> {
    let raw = match (explicit, account) {
        (Some(raw), _) => raw.to_owned(),
        (None, Some(account)) => format!("https://{account}.{service}.core.windows.net"),
        (None, None) => {
            return Err(ConfigError::new(
                name,
                format!("missing, and so is {} to derive it from", names::HOST_STORAGE_ACCOUNT),
            ))
        }
    };
    let url = Url::parse(&raw).map_err(|e| ConfigError::new(name, format!("'{raw}' is not a URL: {e}")))?;
    if url.scheme() != "https" {
        // The storage clients refuse to send a bearer token over http.
        return Err(ConfigError::new(name, format!("'{raw}' must use https")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(name, "must not carry a query string (no SAS or keys: the app uses its identity)"));
    }
    Ok(normalize_service_url(url))
}

/// Azurite answers a bare 400 to a service URL with a trailing slash, so we never keep one.
pub fn normalize_service_url(mut url: Url) -> Url {
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
    url
}

/// Blob container naming rules: 3-63 chars, lowercase letters, digits, single hyphens.
pub fn validate_container_name(name: &str) -> Result<(), String> {
    validate_storage_name(name, "container")
}

fn validate_storage_name(name: &str, what: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ok_shape = (3..=63).contains(&name.len())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok_chars && ok_shape {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid {what} name (3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit)"
        ))
    }
}

/// Who must set a setting where. `infra/main.bicep` is checked against [`SETTINGS`] by
/// `tests/infra_bicep.rs`: it sets every [`Need::Production`] setting and no
/// [`Need::TestOnly`] or [`Need::Host`] one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A deployment must set it (the code may have a default, but a deployed app needs the
    /// deployment's own value).
    Production,
    /// Has a default that fits a deployment; set it to change behaviour.
    Optional,
    /// Only for local emulators and tests; never set in a deployment.
    TestOnly,
    /// Set by the Functions host itself; a deployment must not set it.
    Host,
}

/// Every setting `kc serve` (or the host, for the app) reads, with who must set it.
/// Names given as literals are read by code still landing on other branches (allow-lists,
/// replications) or by the host alone (`KC_SCHEDULE`, in `functions/scheduler/function.json`).
pub const SETTINGS: &[(&str, Need)] = &[
    (names::PORT, Need::Host),
    (names::HOST_STORAGE_ACCOUNT, Need::Production),
    (names::IDENTITY_CLIENT_ID, Need::Production),
    ("KC_ALLOWED_CLUSTERS", Need::Production),
    ("KC_ALLOWED_STORAGE_ACCOUNTS", Need::Production),
    ("KC_SCHEDULE", Need::Production),
    (names::BLOB_ENDPOINT, Need::Optional),
    (names::QUEUE_ENDPOINT, Need::Optional),
    (names::CHECKPOINT_CONTAINER, Need::Optional),
    (names::CREDENTIAL, Need::Optional),
    (names::LOG_FORMAT, Need::Optional),
    (names::INGESTION, Need::Optional),
    (names::REPLICATIONS, Need::Optional),
    (names::REPLICATIONS_VERSION, Need::Optional),
    (names::DEPLOYMENT_ID, Need::Optional),
    (names::USAGE_FILE, Need::Optional),
    (names::CA_CERT, Need::TestOnly),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn derives_endpoints_from_the_host_storage_account() {
        let s = from_map(&map(&[(names::HOST_STORAGE_ACCOUNT, "acct")])).unwrap();
        assert_eq!(s.storage.blob_endpoint.as_str(), "https://acct.blob.core.windows.net/");
        assert_eq!(s.storage.queue_endpoint.as_str(), "https://acct.queue.core.windows.net/");
        assert_eq!(s.storage.checkpoint_container, "kc-checkpoints");
        assert_eq!(s.credential, CredentialKind::ManagedIdentity { client_id: None });
    }

    #[test]
    fn explicit_endpoints_lose_their_trailing_slash() {
        let s = from_map(&map(&[
            (names::BLOB_ENDPOINT, "https://127.0.0.1:1234/devstoreaccount1/"),
            (names::QUEUE_ENDPOINT, "https://127.0.0.1:1235/devstoreaccount1"),
            (names::CREDENTIAL, "emulator"),
        ]))
        .unwrap();
        assert_eq!(s.storage.blob_endpoint.as_str(), "https://127.0.0.1:1234/devstoreaccount1");
        assert_eq!(s.credential, CredentialKind::Emulator);
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![], names::BLOB_ENDPOINT),
            (vec![(names::BLOB_ENDPOINT, "http://x"), (names::QUEUE_ENDPOINT, "https://y")], names::BLOB_ENDPOINT),
            (vec![(names::HOST_STORAGE_ACCOUNT, "a"), (names::CHECKPOINT_CONTAINER, "Bad_Name")], names::CHECKPOINT_CONTAINER),
            (vec![(names::HOST_STORAGE_ACCOUNT, "a"), (names::CHECKPOINT_CONTAINER, "x")], names::CHECKPOINT_CONTAINER),
            (vec![(names::HOST_STORAGE_ACCOUNT, "a"), (names::CREDENTIAL, "password")], names::CREDENTIAL),
            (vec![(names::HOST_STORAGE_ACCOUNT, "a"), (names::CREDENTIAL, "emulator")], names::BLOB_ENDPOINT),
            (vec![(names::HOST_STORAGE_ACCOUNT, "a"), (names::CA_CERT, "/nonexistent.pem")], names::CA_CERT),
            (vec![(names::BLOB_ENDPOINT, "https://a.blob.core.windows.net?sig=x"), (names::QUEUE_ENDPOINT, "https://y")], names::BLOB_ENDPOINT),
        ];
        for (pairs, expected) in cases {
            let err = from_map(&map(&pairs)).unwrap_err();
            assert_eq!(err.name, expected, "{pairs:?} gave {err}");
        }
    }

    #[test]
    fn port_must_be_a_port() {
        assert_eq!(port_from_map(&map(&[(names::PORT, "7071")])), Ok(7071));
        for bad in ["", "0", "70000", "abc"] {
            let err = port_from_map(&map(&[(names::PORT, bad)])).unwrap_err();
            assert_eq!(err.name, names::PORT);
        }
        assert!(port_from_map(&map(&[])).unwrap_err().to_string().contains("missing"));
    }

    #[test]
    fn every_named_setting_is_classified_once() {
        let all = [
            names::PORT, names::BLOB_ENDPOINT, names::QUEUE_ENDPOINT, names::HOST_STORAGE_ACCOUNT, names::CHECKPOINT_CONTAINER,
            names::CREDENTIAL, names::IDENTITY_CLIENT_ID, names::CA_CERT, names::LOG_FORMAT, names::INGESTION, names::USAGE_FILE,
        ];
        for name in all {
            assert_eq!(SETTINGS.iter().filter(|(n, _)| *n == name).count(), 1, "{name} in SETTINGS once");
        }
    }
}

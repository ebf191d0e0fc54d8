//! A copy request as a person writes it (a queue message, or `kc copy`'s options), and its
//! validation into a [`JobSpec`].
//!
//! Two shapes are accepted, the same as the original kusto-copy's CLI options and YAML file:
//! - one table: `source`, `destination`, `stagingDirectory`, optional `query`;
//! - a job of several activities: `activities: [{activityName, source: {clusterUri,
//!   databaseName, tableName}, destination: {...}, kqlQuery}]` with
//!   `stagingStorageDirectories`.
//!
//! Unknown fields are refused: a misspelt `copymode` silently ignored would copy the wrong
//! thing.

use super::hosts;
use super::policy::RequestPolicy;
use super::uri::{self, DestinationRef, StagingRef, TableRef};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const DEFAULT_EXPORT_COUNT: u32 = 20;
pub const MAX_EXPORT_COUNT: u32 = 100;
/// Azure Queue Storage refuses a message over 64 KiB, so a longer request could never have
/// arrived by the queue; `kc validate` and `kc submit` refuse it first.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CopyMode {
    /// Copy what is in the table now, once.
    #[default]
    BackfillOnly,
    /// Copy what is there now, then keep copying what arrives.
    BackfillAndNew,
    /// Copy only what arrives from now on.
    NewOnly,
}

impl CopyMode {
    pub fn is_continuous(self) -> bool {
        !matches!(self, CopyMode::BackfillOnly)
    }
}

/// What a block must show before it is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// The staging extents hold as many rows as the export wrote.
    #[default]
    Count,
    /// And Kusto on both sides computes the same digest of the block's values (row count,
    /// per-column and per-row hashes): see `kusto::digest`.
    Content,
}

impl Verify {
    pub fn is_count(&self) -> bool {
        *self == Verify::Count
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyRequest {
    pub job_id: Option<String>,
    pub source: Option<String>,
    pub destination: Option<String>,
    pub staging_directory: Option<String>,
    pub query: Option<String>,
    pub activities: Option<Vec<ActivityRequest>>,
    pub staging_storage_directories: Option<Vec<String>>,
    pub copy_mode: Option<CopyMode>,
    pub iteration_period: Option<String>,
    pub export_count: Option<u32>,
    pub managed_identity_client_id: Option<String>,
    /// Create a missing destination table with the columns the copy produces.
    pub create_destination_table: Option<bool>,
    /// `count` (default) or `content`.
    pub verify: Option<Verify>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivityRequest {
    pub activity_name: Option<String>,
    pub source: TablePartsRequest,
    pub destination: TablePartsRequest,
    pub kql_query: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TablePartsRequest {
    pub cluster_uri: String,
    pub database_name: String,
    pub table_name: Option<String>,
}

/// A validated job: everything the engine needs, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub activities: Vec<Activity>,
    pub staging: Vec<StagingRef>,
    pub copy_mode: CopyMode,
    /// Seconds between iterations of a continuous job.
    pub iteration_period_secs: Option<u64>,
    pub export_count: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_destination_table: bool,
    /// Left out when `count`, so the specs (and so the job ids) of jobs that do not ask for
    /// content verification are what they were before the option existed.
    #[serde(default, skip_serializing_if = "Verify::is_count")]
    pub verify: Verify,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    pub name: String,
    pub source: TableRef,
    pub destination: TableRef,
    /// A pipeline tail applied to the source table, starting with `|`.
    pub query: Option<String>,
}

/// Why a request was refused, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(pub String);

/// Parses and validates a request's text under a policy: the one check `requests`, `kc copy`,
/// `kc validate` and `kc submit` share. The reason never quotes a secret: query strings,
/// `sig=` values and `h'…'` literals are redacted from it.
pub fn check_request(text: &str, policy: &RequestPolicy) -> Result<JobSpec, Rejection> {
    parse(text).and_then(|r| r.validate(policy)).map_err(|Rejection(reason)| Rejection(super::redact::redact(&reason)))
}

/// The JSON text of a request: the text itself, or, when it is base64 of a JSON object (the
/// Azure portal and Storage Explorer can encode queue messages so), the decoded text.
pub fn decode_text(text: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        return text.into();
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|t| t.trim_start().starts_with('{'));
    match decoded {
        Some(t) => t.into(),
        None => text.into(),
    }
}

/// Parses the message text of a request (plain, or base64 of the JSON).
pub fn parse(text: &str) -> Result<CopyRequest, Rejection> {
    if text.len() > MAX_REQUEST_BYTES {
        return Err(Rejection(format!(
            "the request is {} bytes; at most {MAX_REQUEST_BYTES} (64 KiB, the queue's own limit) are accepted: split it into several jobs",
            text.len()
        )));
    }
    let text = decode_text(text);
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Rejection(format!("the request is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Rejection("the request must be a JSON object, like {\"source\": ..., \"destination\": ..., \"stagingDirectory\": ...}".into()));
    }
    serde_json::from_value(value).map_err(|e| Rejection(format!("the request does not fit the schema: {e}")))
}

impl CopyRequest {
    pub fn validate(&self, policy: &RequestPolicy) -> Result<JobSpec, Rejection> {
        let reject = |s: String| Rejection(s);
        if let Some(id) = &self.managed_identity_client_id {
            // A requester never picks the identity the app acts as.
            let own = policy.app_client_id.as_deref();
            if own.map(str::to_ascii_lowercase) != Some(id.trim().to_ascii_lowercase()) {
                return Err(reject(match own {
                    Some(_) => format!("managedIdentityClientId '{id}' is not this app's identity; leave it out: the app always uses its own ({})", crate::config::names::IDENTITY_CLIENT_ID),
                    None => format!("managedIdentityClientId '{id}' is not this app's identity (it has none configured in {}); leave it out", crate::config::names::IDENTITY_CLIENT_ID),
                }));
            }
        }
        let single = self.source.is_some() || self.destination.is_some() || self.query.is_some();
        let activities = match (&self.activities, single) {
            (Some(_), true) => {
                return Err(reject("give either source/destination/query or activities, not both".into()))
            }
            (Some(list), false) => {
                if list.is_empty() {
                    return Err(reject("activities is empty: name at least one table to copy".into()));
                }
                list.iter().enumerate().map(|(i, a)| a.validate(i, policy)).collect::<Result<Vec<_>, _>>().map_err(reject)?
            }
            (None, _) => {
                let source = self.source.as_deref().ok_or_else(|| {
                    reject("source is required: the table to copy, like https://mycluster.westeurope.kusto.windows.net/MyDatabase/MyTable".into())
                })?;
                let destination = self.destination.as_deref().ok_or_else(|| {
                    reject("destination is required: a database or table URI, like https://other.westeurope.kusto.windows.net/MyDatabase".into())
                })?;
                let source = uri::parse_table_uri("source", source).map_err(reject)?;
                hosts::check_cluster("source", &source.cluster, policy).map_err(reject)?;
                let destination = uri::parse_destination_uri("destination", destination).map_err(reject)?;
                hosts::check_cluster("destination", &destination.cluster, policy).map_err(reject)?;
                vec![Activity {
                    name: "default".into(),
                    destination: resolve_destination(destination, &source),
                    query: validate_query("query", self.query.as_deref()).map_err(reject)?,
                    source,
                }]
            }
        };
        let mut names: Vec<&str> = activities.iter().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(reject(format!("activity name '{}' is used twice; names must be unique", w[0])));
        }

        let staging_texts: Vec<&String> = match (&self.staging_directory, &self.staging_storage_directories) {
            (Some(one), None) => vec![one],
            (None, Some(many)) => many.iter().collect(),
            (Some(_), Some(_)) => {
                return Err(reject("give stagingDirectory or stagingStorageDirectories, not both".into()))
            }
            (None, None) => {
                return Err(reject("stagingDirectory is required: a blob container (and folder) for staging and tracking, like https://myaccount.blob.core.windows.net/staging/kc".into()))
            }
        };
        if staging_texts.is_empty() {
            return Err(reject("stagingStorageDirectories is empty: give at least one".into()));
        }
        let staging = staging_texts
            .iter()
            .map(|t| uri::parse_staging_uri("stagingDirectory", t).and_then(|s| check_staging("stagingDirectory", s, policy)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(reject)?;

        let copy_mode = self.copy_mode.unwrap_or_default();
        let iteration_period_secs = match &self.iteration_period {
            None => None,
            Some(_) if !copy_mode.is_continuous() => {
                return Err(reject("iterationPeriod applies only to copyMode BackfillAndNew or NewOnly; BackfillOnly copies once".into()))
            }
            Some(text) => {
                let period = parse_period(text).map_err(|e| reject(format!("iterationPeriod: {e}")))?;
                if period < Duration::from_secs(1) || period > Duration::from_secs(30 * 24 * 3600) {
                    return Err(reject(format!("iterationPeriod '{text}' must be between 1 second and 30 days")));
                }
                Some(period.as_secs())
            }
        };
        let export_count = self.export_count.unwrap_or(DEFAULT_EXPORT_COUNT);
        if !(1..=MAX_EXPORT_COUNT).contains(&export_count) {
            return Err(reject(format!("exportCount {export_count} must be between 1 and {MAX_EXPORT_COUNT}")));
        }
        let create_destination_table = self.create_destination_table.unwrap_or(false);
        let verify = self.verify.unwrap_or_default();
        Ok(JobSpec { activities, staging, copy_mode, iteration_period_secs, export_count, create_destination_table, verify })
    }
}

/// Checks a staging directory's host, and names its account by the Blob endpoint.
fn check_staging(field: &str, mut staging: StagingRef, policy: &RequestPolicy) -> Result<StagingRef, String> {
    let url = url::Url::parse(&staging.account_url).map_err(|e| format!("{field}: {e}"))?;
    hosts::check_storage(field, &url, policy)?;
    if let Some(host) = url.host_str().filter(|h| h.contains(".dfs.")) {
        staging.account_url = format!("https://{}", hosts::blob_endpoint_of(host));
    }
    Ok(staging)
}

/// Activity names become a blob path segment (`jobs/<job>/<activity>/…`) and a label in
/// client request ids: letters, digits, `-`, `_` and inner `.`, 1 to 64 characters.
fn validate_activity_name(field: &str, name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: '{name}' is not a safe activity name: 1-64 letters, digits, '-', '_' or '.' (not first or last); it names a folder of the job's checkpoints"
        ))
    }
}

impl ActivityRequest {
    fn validate(&self, index: usize, policy: &RequestPolicy) -> Result<Activity, String> {
        let name = self.activity_name.clone().unwrap_or_else(|| format!("activity-{}", index + 1));
        validate_activity_name(&format!("activities[{index}].activityName"), &name)?;
        let field = |part: &str| format!("activities[{index}].{part}");
        let source_table = self
            .source
            .table_name
            .as_deref()
            .ok_or_else(|| format!("{} is required", field("source.tableName")))?;
        let source = uri::parse_table_uri(
            &field("source"),
            &format!("{}/{}/{}", self.source.cluster_uri.trim_end_matches('/'), encode(&self.source.database_name), encode(source_table)),
        )?;
        hosts::check_cluster(&field("source"), &source.cluster, policy)?;
        let destination_text = match &self.destination.table_name {
            Some(t) => format!("{}/{}/{}", self.destination.cluster_uri.trim_end_matches('/'), encode(&self.destination.database_name), encode(t)),
            None => format!("{}/{}", self.destination.cluster_uri.trim_end_matches('/'), encode(&self.destination.database_name)),
        };
        let destination = uri::parse_destination_uri(&field("destination"), &destination_text)?;
        hosts::check_cluster(&field("destination"), &destination.cluster, policy)?;
        Ok(Activity {
            name,
            destination: resolve_destination(destination, &source),
            query: validate_query(&field("kqlQuery"), self.kql_query.as_deref())?,
            source,
        })
    }
}

fn encode(segment: &str) -> String {
    segment.replace('%', "%25").replace(' ', "%20").replace('/', "%2F").replace('?', "%3F").replace('#', "%23")
}

fn resolve_destination(d: DestinationRef, source: &TableRef) -> TableRef {
    TableRef { cluster: d.cluster, database: d.database, table: d.table.unwrap_or_else(|| source.table.clone()) }
}

/// A query is a pipeline tail applied to the source table (`| where ... | project ...`): a
/// row filter and a projection, checked by [`super::query::check`].
fn validate_query(field: &str, query: Option<&str>) -> Result<Option<String>, String> {
    let Some(q) = query.map(str::trim).filter(|q| !q.is_empty()) else { return Ok(None) };
    if q.starts_with('.') {
        return Err(format!("{field}: a management command cannot be a copy query; give a pipeline like \"| where Level == 'Error'\""));
    }
    if !q.starts_with('|') {
        return Err(format!("{field}: '{q}' must start with '|': it is applied to the source table, like \"| where Level == 'Error' | project Timestamp, Message\""));
    }
    super::query::check(q).map_err(|e| format!("{field}: {e}"))?;
    Ok(Some(q.to_owned()))
}

/// Accepts .NET TimeSpan text (`[d.]hh:mm[:ss]`, what the original tool takes) and the short
/// forms `90s`, `15m`, `2h`, `1d`.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("'{text}' is not a period; write hh:mm:ss (like 00:15:00) or 15m, 2h, 1d");
    if let Some(unit) = t.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
        let secs = match unit {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            'd' => n * 86400,
            _ => return Err(bad()),
        };
        return Ok(Duration::from_secs(secs));
    }
    let (days, clock) = match t.split_once('.') {
        Some((d, rest)) if rest.contains(':') => (d.parse::<u64>().map_err(|_| bad())?, rest),
        _ => (0, t),
    };
    let parts: Vec<u64> = clock.split(':').map(|p| p.parse::<u64>().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let (h, m, s) = match parts.as_slice() {
        [h, m] => (*h, *m, 0),
        [h, m, s] => (*h, *m, *s),
        _ => return Err(bad()),
    };
    if h > 23 || m > 59 || s > 59 {
        return Err(bad());
    }
    Ok(Duration::from_secs(days * 86400 + h * 3600 + m * 60 + s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(parse_period("00:15:00").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_period("1.02:00:00").unwrap(), Duration::from_secs(93600));
        assert_eq!(parse_period("0:05").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_period("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_period("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "5 minutes", "25:00:00", "1x", "::"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }

    fn minimal() -> String {
        r#"{"source":"https://a.kusto.windows.net/db/T","destination":"https://b.kusto.windows.net/db2","stagingDirectory":"https://stg.blob.core.windows.net/staging/kc"}"#.into()
    }

    #[test]
    fn one_table_request() {
        let spec = parse(&minimal()).unwrap().validate(&RequestPolicy::default()).unwrap();
        assert_eq!(spec.activities.len(), 1);
        assert_eq!(spec.activities[0].destination.table, "T", "destination table defaults to the source's");
        assert_eq!(spec.export_count, DEFAULT_EXPORT_COUNT);
        assert_eq!(spec.copy_mode, CopyMode::BackfillOnly);
    }

    #[test]
    fn activities_request_like_the_original_yaml() {
        let text = r#"{
          "activities": [
            {"activityName": "storms", "source": {"clusterUri": "https://a.kusto.windows.net", "databaseName": "db", "tableName": "Storms"},
             "destination": {"clusterUri": "https://trd-x.z1.kusto.fabric.microsoft.com", "databaseName": "eh"}, "kqlQuery": "| where State == 'TX'"},
            {"source": {"clusterUri": "https://a.kusto.windows.net", "databaseName": "db2", "tableName": "Logs"},
             "destination": {"clusterUri": "https://b.kusto.windows.net", "databaseName": "d", "tableName": "LogsCopy"}}
          ],
          "stagingStorageDirectories": ["https://stg.blob.core.windows.net/staging"],
          "copyMode": "BackfillAndNew", "iterationPeriod": "00:10:00", "exportCount": 8
        }"#;
        let spec = parse(text).unwrap().validate(&RequestPolicy::default()).unwrap();
        assert_eq!(spec.activities[0].name, "storms");
        assert_eq!(spec.activities[1].name, "activity-2");
        assert_eq!(spec.activities[1].destination.table, "LogsCopy");
        assert_eq!(spec.iteration_period_secs, Some(600));
        assert_eq!(spec.export_count, 8);
    }

    #[test]
    fn verify_is_count_unless_content_is_asked_and_only_content_shows_in_the_spec() {
        let spec = parse(&minimal()).unwrap().validate(&RequestPolicy::default()).unwrap();
        assert_eq!(spec.verify, Verify::Count);
        assert!(!serde_json::to_string(&spec).unwrap().contains("verify"), "job ids of count jobs are unchanged");
        let text = minimal().replace("}", r#","verify":"content"}"#);
        let spec = parse(&text).unwrap().validate(&RequestPolicy::default()).unwrap();
        assert_eq!(spec.verify, Verify::Content);
        assert!(serde_json::to_string(&spec).unwrap().contains(r#""verify":"content""#), "kc validate shows it");
        assert!(parse(&minimal().replace("}", r#","verify":"rows"}"#)).is_err(), "only count and content");
    }

    #[test]
    fn queries_that_could_escape_their_place_are_refused() {
        for bad in ["| where a == 1; .drop table T", "| where a == 'open", "| take 1 <| .show tables", "| where (a"] {
            let text = minimal().replace("}", &format!(",\"query\":{}}}", serde_json::to_string(bad).unwrap()));
            let err = parse(&text).unwrap().validate(&RequestPolicy::default()).unwrap_err();
            assert!(err.0.starts_with("query:"), "{bad}: {}", err.0);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = minimal().replace("\"source\"", "\"copymode\":\"x\",\"source\"");
        assert!(parse(&text).unwrap_err().0.contains("unknown field `copymode`"));
    }
}

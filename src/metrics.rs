//! What this process has cost: Storage transactions by kind (counted at the client, every
//! try, as Azure bills them), CPU time and peak memory.
//!
//! Counting is a handful of relaxed atomic increments per request, always on. `kc copy` and
//! `kc serve` write the totals as JSON to `KC_USAGE_FILE` when they exit, if it is set: the
//! benchmark (`kc-bench`) reads them to report transactions and CPU per block, and an
//! operator can use them to price a copy.

use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Method, Request};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The kinds of Storage transaction told apart. The queue's are the ones the Functions host
/// also makes (receive, delete, visibility), so a benchmark can set ours beside its. Each
/// kind's counter is `STORAGE[kind as usize]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    BlobRead,
    BlobWrite,
    BlobDelete,
    BlobList,
    QueueSend,
    QueueReceive,
    QueueDelete,
    QueueVisibility,
    /// Queue creation, metadata, anything else.
    Other,
}

const KINDS: [StorageKind; 9] = [
    StorageKind::BlobRead,
    StorageKind::BlobWrite,
    StorageKind::BlobDelete,
    StorageKind::BlobList,
    StorageKind::QueueSend,
    StorageKind::QueueReceive,
    StorageKind::QueueDelete,
    StorageKind::QueueVisibility,
    StorageKind::Other,
];

impl StorageKind {
    pub fn name(self) -> &'static str {
        match self {
            StorageKind::BlobRead => "blob read",
            StorageKind::BlobWrite => "blob write",
            StorageKind::BlobDelete => "blob delete",
            StorageKind::BlobList => "blob list",
            StorageKind::QueueSend => "queue send",
            StorageKind::QueueReceive => "queue receive",
            StorageKind::QueueDelete => "queue delete",
            StorageKind::QueueVisibility => "queue visibility",
            StorageKind::Other => "other",
        }
    }

    /// Which kind a request to the blob or the queue service is, from its method and URL
    /// (the REST API's shapes: messages live under `/<queue>/messages`, a listing has
    /// `comp=list`).
    pub fn of(queue_service: bool, method: &Method, url: &url::Url) -> StorageKind {
        let path = url.path();
        let list = url.query_pairs().any(|(k, v)| k == "comp" && v == "list");
        if !queue_service {
            return match method {
                Method::Get if list => StorageKind::BlobList,
                Method::Get | Method::Head => StorageKind::BlobRead,
                Method::Put => StorageKind::BlobWrite,
                Method::Delete => StorageKind::BlobDelete,
                _ => StorageKind::Other,
            };
        }
        if let Some(at) = path.find("/messages") {
            let message = path[at + "/messages".len()..].trim_matches('/');
            return match (method, message.is_empty()) {
                (Method::Post, true) => StorageKind::QueueSend,
                (Method::Get, true) => StorageKind::QueueReceive,
                (Method::Delete, false) => StorageKind::QueueDelete,
                (Method::Put, false) => StorageKind::QueueVisibility,
                _ => StorageKind::Other,
            };
        }
        StorageKind::Other
    }
}

static STORAGE: [AtomicU64; KINDS.len()] = [const { AtomicU64::new(0) }; KINDS.len()];

/// Storage transactions so far, by kind name (kinds with none left out).
pub fn storage_transactions() -> BTreeMap<String, u64> {
    KINDS
        .iter()
        .filter_map(|k| {
            let n = STORAGE[*k as usize].load(Ordering::Relaxed);
            (n > 0).then(|| (k.name().to_owned(), n))
        })
        .collect()
}

fn count(kind: StorageKind) {
    STORAGE[kind as usize].fetch_add(1, Ordering::Relaxed);
}

/// The pipeline policy that counts: a per-try policy, so a retried request counts each time
/// it is sent.
#[derive(Debug, Default)]
pub struct CountStorageRequests {
    pub queue_service: bool,
}

#[async_trait::async_trait]
impl Policy for CountStorageRequests {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        count(StorageKind::of(self.queue_service, &request.method(), request.url()));
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// What `KC_USAGE_FILE` receives.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// Storage transactions by kind.
    pub storage: BTreeMap<String, u64>,
    /// User and system CPU time of the whole process.
    pub cpu_ms: f64,
    /// The process's peak resident memory (VmHWM).
    pub peak_rss_mib: f64,
}

impl Usage {
    pub fn of_this_process() -> Usage {
        Usage { storage: storage_transactions(), cpu_ms: cpu_ms_of("self").unwrap_or(0.0), peak_rss_mib: peak_rss_mib_of("self").unwrap_or(0.0) }
    }

    pub fn storage_total(&self) -> u64 {
        self.storage.values().sum()
    }
}

/// User plus system CPU time of a process (`self` or a pid), from `/proc/<pid>/stat`.
/// `None` where there is no procfs.
pub fn cpu_ms_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split at its closing paren).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux kernel configuration Azure and this project run on.
    Some(ticks * 10.0)
}

/// Peak resident memory of a process (`VmHWM` in `/proc/<pid>/status`).
pub fn peak_rss_mib_of(pid: &str) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|k| k / 1024.0)
}

/// Current resident memory of a process (`VmRSS`).
pub fn rss_mib_of(pid: &str) -> Option<f64> {
    status_kib(pid, "VmRSS:").map(|k| k / 1024.0)
}

fn status_kib(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Writes this process's usage to `path` (the `KC_USAGE_FILE` setting). Best effort: a
/// measurement aid must never fail the copy it measures.
pub fn write_usage_file(path: &std::path::Path) {
    let usage = Usage::of_this_process();
    if let Err(e) = std::fs::write(path, serde_json::to_vec(&usage).unwrap_or_default()) {
        tracing::warn!(path = %path.display(), error = %e, "could not write the usage file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: Method, url: &str) -> StorageKind {
        let queue = url.contains("queue") || url.contains(":10001");
        StorageKind::of(queue, &method, &url.parse().unwrap())
    }

    #[test]
    fn tells_the_transactions_apart_by_method_and_path() {
        let q = "https://127.0.0.1:10001/devstoreaccount1/kc-steps/messages";
        assert_eq!(kind(Method::Post, q), StorageKind::QueueSend);
        assert_eq!(kind(Method::Get, &format!("{q}?numofmessages=8&visibilitytimeout=30")), StorageKind::QueueReceive);
        assert_eq!(kind(Method::Delete, &format!("{q}/abc?popreceipt=x")), StorageKind::QueueDelete);
        assert_eq!(kind(Method::Put, &format!("{q}/abc?popreceipt=x&visibilitytimeout=10")), StorageKind::QueueVisibility);
        assert_eq!(kind(Method::Put, "https://acct.queue.core.windows.net/kc-steps"), StorageKind::Other);
        let b = "https://acct.blob.core.windows.net/kc/jobs/j1/block-1.json";
        assert_eq!(kind(Method::Get, b), StorageKind::BlobRead);
        assert_eq!(kind(Method::Head, b), StorageKind::BlobRead);
        assert_eq!(kind(Method::Put, b), StorageKind::BlobWrite);
        assert_eq!(kind(Method::Delete, b), StorageKind::BlobDelete);
        assert_eq!(kind(Method::Get, "https://acct.blob.core.windows.net/kc?restype=container&comp=list&prefix=jobs/"), StorageKind::BlobList);
    }

    #[test]
    fn reads_its_own_cpu_and_memory() {
        let usage = Usage::of_this_process();
        assert!(usage.peak_rss_mib > 1.0, "{usage:?}");
        assert!(cpu_ms_of("self").is_some());
        assert!(rss_mib_of("self").unwrap() <= usage.peak_rss_mib + 0.01);
    }
}

//! The secrets scan: whole copies under the host harness (with an export and ingestions that
//! fail and are retried, and a request carrying a SAS) and then every log line `kc serve`
//! wrote, every status answer and every checkpoint are searched for what must never be kept
//! or shown: SAS signatures, bearer tokens (the emulator credential's tokens have the shape
//! of Entra ID's), account keys and function keys.

mod common;

use common::host::*;
use kusto_copy::storage::checkpoint::{BlobCheckpointStore, CheckpointStore};
use std::time::Duration;

const DB: &str = "db";

/// Where a secret would show: the text around each find.
fn secrets_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let lower = text.to_ascii_lowercase();
    let mut look = |needle: &str, is_secret: &dyn Fn(&str) -> bool| {
        let mut from = 0;
        while let Some(i) = lower[from..].find(needle).map(|i| i + from) {
            let after: String = text[i + needle.len()..].chars().take(40).collect();
            if is_secret(&after) {
                found.push(text[i.saturating_sub(60)..(i + needle.len() + after.len()).min(text.len())].to_owned());
            }
            from = i + needle.len();
        }
    };
    // A SAS signature: `sig=` and a value that is not the redaction marker.
    look("sig=", &|v| !v.starts_with("<redacted>") && v.chars().take_while(|c| c.is_ascii_alphanumeric() || "%+/=".contains(*c)).count() >= 8);
    // A JWT: base64url of `{"alg"` or `{"typ"`, then a payload.
    look("eyj", &|v| v.chars().take_while(|c| c.is_ascii_alphanumeric() || "-_".contains(*c)).count() >= 10);
    look("accountkey=", &|v| !v.is_empty());
    look("sharedaccesskey=", &|v| !v.is_empty());
    look("x-functions-key", &|_| true);
    look("bearer ", &|v| v.chars().take_while(|c| !c.is_whitespace()).count() >= 10);
    found
}

#[test]
fn the_scanner_finds_what_it_looks_for() {
    assert_eq!(secrets_in("GET https://a.blob.core.windows.net/c?sv=2022&sig=AbC%2Fdef123456&se=x").len(), 1);
    assert!(secrets_in("https://a.blob.core.windows.net/c?<redacted> sig=<redacted>").is_empty());
    // The bearer prefix, and the JWT header and payload segments.
    assert_eq!(secrets_in("Authorization: Bearer eyJhbGciOiJub25lIn0.eyJhdWQiOiJ4In0.").len(), 3);
    assert_eq!(secrets_in("DefaultEndpointsProtocol=https;AccountKey=abc==").len(), 1);
    assert!(secrets_in("a plain log line about 600 rows").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_in_logs_status_or_checkpoints() {
    let logs = std::env::temp_dir().join(format!("kc-secrets-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&logs).unwrap();
    let mut h = host_stack().await;
    // kc serve again, logging (our code at debug level) to files.
    h.kc.kill().await.unwrap();
    h.kc = tokio::process::Command::new(env!("CARGO_BIN_EXE_kc"))
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", h.port.to_string())
        .env("KC_BLOB_ENDPOINT", h.azurite.blob_endpoint())
        .env("KC_QUEUE_ENDPOINT", h.azurite.queue_endpoint())
        .env("KC_CREDENTIAL", "emulator")
        .env("KC_CA_CERT", &h.azurite.ca_pem_path)
        .env("KC_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,kusto_copy=debug,kc=debug,azure_core=warn")
        .stdout(std::fs::File::create(logs.join("stdout")).unwrap())
        .stderr(std::fs::File::create(logs.join("stderr")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_ready(h.port).await;

    seed(&h.source, DB, "Events", 300, 3, JAN_2023);
    h.destination.command(DB, ".create table Events (Id:long, Name:string, Amount:real, Props:dynamic)").unwrap();
    h.source.script_fault(Some(kusto_sim::CommandKind::Export), kusto_sim::Fault::ExportPartialFailure, 1);
    h.destination.script_fault(Some(kusto_sim::CommandKind::QueuedIngest), kusto_sim::Fault::IngestionFailure, 1);
    h.destination.script_fault(Some(kusto_sim::CommandKind::QueuedIngest), kusto_sim::Fault::DuplicateIngestion, 2);
    let queue = h.host.queue("kc-requests").await;
    // A request carrying a SAS in its staging directory: refused, and its text kept redacted.
    let with_sas = serde_json::json!({
        "jobId": "carries-a-sas",
        "source": format!("{}/{DB}/Events", h.source.url()),
        "destination": format!("{}/{DB}", h.destination.url()),
        "stagingDirectory": format!("{}/staging/x?sv=2022-11-02&sr=c&sp=rwl&sig=S3cr3tS1gnatureValue%2B%3D", h.azurite.blob_endpoint()),
    });
    queue.send(&with_sas.to_string(), Duration::ZERO).await.unwrap();
    let good = serde_json::json!({
        "jobId": "scanned",
        "source": format!("{}/{DB}/Events", h.source.url()),
        "destination": format!("{}/{DB}", h.destination.url()),
        "stagingDirectory": format!("{}/staging/scanned", h.azurite.blob_endpoint()),
        "exportCount": 2,
    });
    queue.send(&good.to_string(), Duration::ZERO).await.unwrap();
    let done = run_until_activities(&h, "scanned", "completed").await;
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "Events"));
    assert_eq!(h.source.with_state(|s| s.faults.pending()) + h.destination.with_state(|s| s.faults.pending()), 0, "every fault was met");

    let mut texts: Vec<(String, String)> = Vec::new();
    let (_, rejected) = h.host.http_get("status", &[("job", "carries-a-sas")]).await;
    assert_eq!(rejected["state"], "Rejected", "{rejected}");
    let (_, all) = h.host.http_get("status", &[]).await;
    texts.push(("status carries-a-sas".into(), rejected.to_string()));
    texts.push(("status scanned".into(), done.to_string()));
    texts.push(("status (all)".into(), all.to_string()));
    let store = BlobCheckpointStore::new(common::clients(&h.azurite).container_without_retries("kc-checkpoints").unwrap());
    let keys = store.list("").await.unwrap();
    assert!(keys.len() > 5, "the checkpoints were read: {keys:?}");
    for key in keys {
        let value = store.read(&key).await.unwrap().unwrap().value;
        texts.push((format!("checkpoint {key}"), String::from_utf8_lossy(&value).into_owned()));
    }
    h.kc.kill().await.unwrap();
    for stream in ["stdout", "stderr"] {
        let text = std::fs::read_to_string(logs.join(stream)).unwrap();
        texts.push((format!("kc serve {stream}"), text));
    }
    assert!(texts.iter().any(|(w, t)| w == "kc serve stdout" && t.contains("job accepted")), "the logs were captured");
    assert!(
        texts.iter().any(|(w, t)| w.starts_with("checkpoint jobs/carries-a-sas") && t.contains("staging/x?<redacted>") && !t.contains("S3cr3t")),
        "the request carrying a SAS was kept, redacted"
    );
    let found: Vec<String> = texts.iter().flat_map(|(what, text)| secrets_in(text).into_iter().map(move |s| format!("{what}: …{s}…"))).collect();
    assert!(found.is_empty(), "secrets found:\n{}", found.join("\n"));
    let _ = std::fs::remove_dir_all(&logs);
}

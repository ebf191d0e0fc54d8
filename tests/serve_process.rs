//! `kc serve` as the host runs it: a process with settings in its environment. Bad settings
//! fail at start-up naming the setting; good ones give a server that answers the readiness
//! probe, records jobs in Azurite (HTTPS, OAuth tokens), and stops cleanly on SIGTERM.

mod common;

use kc_test_stack::Azurite;
use kusto_copy::storage::checkpoint::BlobCheckpointStore;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kc"));
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn start_up_errors_name_the_setting() {
    let out = kc().arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("setting FUNCTIONS_CUSTOMHANDLER_PORT: missing"), "{out:?}");

    let out = kc().arg("serve").env("FUNCTIONS_CUSTOMHANDLER_PORT", "http").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("FUNCTIONS_CUSTOMHANDLER_PORT: 'http' is not a TCP port"), "{out:?}");

    let out = kc().arg("serve").env("FUNCTIONS_CUSTOMHANDLER_PORT", "7071").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KC_BLOB_ENDPOINT"), "{out:?}");

    let out = kc()
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", "7071")
        .env("AzureWebJobsStorage__accountName", "acct")
        .env("KC_CREDENTIAL", "password")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("KC_CREDENTIAL: 'password' is not one of"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_records_jobs_in_azurite_and_stops_on_sigterm() {
    let azurite = Azurite::start();
    let port = free_port();
    let mut child = tokio::process::Command::from({
        let mut c = kc();
        c.arg("serve")
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("KC_BLOB_ENDPOINT", azurite.blob_endpoint())
            .env("KC_QUEUE_ENDPOINT", azurite.queue_endpoint())
            .env("KC_CREDENTIAL", "emulator")
            .env("KC_CA_CERT", &azurite.ca_pem_path)
            .env("KC_CHECKPOINT_CONTAINER", "kc-checkpoints")
            .env("KC_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    })
    .kill_on_drop(true)
    .spawn()
    .unwrap();

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/")).send().await {
            assert_eq!(r.status().as_u16(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "kc serve never answered the readiness probe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Clusters on a closed loopback port: nothing in a test may reach beyond this machine.
    let text = r#"{"jobId":"orders-eu","source":"http://127.0.0.1:9/Sales/Orders","destination":"http://127.0.0.1:9/Sales","stagingDirectory":"https://127.0.0.1:9/devstoreaccount1/staging"}"#;
    let payload = json!({
        "Data": {"request": serde_json::to_string(text).unwrap()},
        "Metadata": {"DequeueCount": "1", "Id": "\"m1\"", "sys": {"UtcNow": "2026-11-23T10:00:00Z"}}
    });
    let answer: Value = http
        .post(format!("{base}/requests"))
        .header("X-Azure-Functions-InvocationId", "inv-1")
        .json(&payload)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["ReturnValue"]["state"], "Accepted", "{answer}");
    // A request that names no table is rejected: a warning.
    let bad = text.replace("orders-eu", "no-table").replace("/Sales/Orders", "/Sales");
    let payload = json!({
        "Data": {"request": serde_json::to_string(&bad).unwrap()},
        "Metadata": {"DequeueCount": "1", "Id": "\"m2\"", "sys": {"UtcNow": "2026-11-23T10:00:00Z"}}
    });
    let answer: Value = http.post(format!("{base}/requests")).json(&payload).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["ReturnValue"]["state"], "Rejected", "{answer}");

    // The record is really in Azurite: read it back with our own client.
    let store = BlobCheckpointStore::new(common::clients(&azurite).container_without_retries("kc-checkpoints").unwrap());
    let job = kusto_copy::job::record::read_job(&store, "orders-eu").await.unwrap().expect("job recorded in blob storage");
    assert_eq!(job.spec.unwrap().activities[0].destination.table, "Orders");

    // And `status` reads it from there.
    let status: Value = http
        .post(format!("{base}/status"))
        .json(&json!({"Data": {"req": {"Url": "x", "Method": "GET", "Query": {"job": "orders-eu"}, "Headers": {}, "Params": {}}}, "Metadata": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body: Value = serde_json::from_str(status["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["id"], "orders-eu");

    // SIGTERM: a clean, prompt exit.
    let pid = child.id().unwrap();
    Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "{status}");
    let (mut stdout, mut stderr) = (String::new(), String::new());
    tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).await.unwrap();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).await.unwrap();
    // JSON log lines carrying the invocation id, and no bearer token anywhere.
    let parse = |text: &str| -> Vec<Value> { text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}"))).collect() };
    let (out_lines, err_lines) = (parse(&stdout), parse(&stderr));
    assert!(out_lines.iter().any(|l| l.to_string().contains("inv-1")), "invocation id in the logs: {stdout}");
    assert!(!stdout.contains("eyJ") && !stderr.contains("eyJ"), "a JWT leaked into the logs");
    // The host logs every stderr line as an error: informational lines on stdout, warnings
    // and errors on stderr, nothing else there.
    let level = |l: &Value| l["level"].as_str().unwrap_or_default().to_owned();
    assert!(out_lines.iter().any(|l| l["fields"]["message"] == "kc serve listening" && level(l) == "INFO"), "{stdout}");
    assert!(out_lines.iter().all(|l| level(l) == "INFO" || level(l) == "DEBUG" || level(l) == "TRACE"), "{stdout}");
    assert!(err_lines.iter().any(|l| level(l) == "WARN" && l["fields"]["message"] == "request rejected"), "the rejection is a warning on stderr: {stderr}");
    assert!(err_lines.iter().all(|l| level(l) == "WARN" || level(l) == "ERROR"), "{stderr}");
}

//! The operator's CLI against a deployment on the local stack: `kc submit` puts a job on
//! `kc-requests` and `kc status --json --watch` follows it to completion while `kc serve`
//! runs under the host harness; `kc cancel` stops a job mid-copy and leaves nothing behind
//! but whole committed blocks; `kc validate` reads JSON requests and the original tool's YAML
//! job files; a credential that cannot be had is one clear error.

mod common;

use common::host::*;
use kc_test_stack::Azurite;
use std::process::Stdio;
use std::time::Duration;

const DB: &str = "db";

fn kc(azurite: &Azurite, args: &[&str]) -> tokio::process::Command {
    kc_test_stack::kc_command(env!("CARGO_BIN_EXE_kc"), azurite, args)
}

async fn output(mut c: tokio::process::Command) -> (bool, String, String) {
    let out = c.output().await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Delivers messages under the harness until `child` exits; returns its stdout.
async fn deliver_until_exit(h: &HostStack, mut child: tokio::process::Child) -> (std::process::ExitStatus, String) {
    let mut stdout = child.stdout.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text).await.unwrap();
        text
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the command never exited");
        if h.host.poll_once().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    (status, reader.await.unwrap())
}

fn submit_args(h: &HostStack, folder: &str) -> Vec<String> {
    vec![
        "submit".into(),
        "-s".into(),
        format!("{}/{DB}/Events", h.source.url()),
        "-d".into(),
        format!("{}/{DB}", h.destination.url()),
        "-t".into(),
        format!("{}/staging/{folder}", h.azurite.blob_endpoint()),
        "--export".into(),
        "2".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kc_submit_then_kc_status_follows_the_job_to_completion() {
    let h = host_stack().await;
    seed(&h.source, DB, "Events", 400, 4, JAN_2023);
    h.destination.command(DB, ".create table Events (Id:long, Name:string, Amount:real, Props:dynamic)").unwrap();

    h.host.poll_once().await; // the host creates its queues when it starts listening
    let args = submit_args(&h, "submitted");
    let (ok, stdout, stderr) = output(kc(&h.azurite, &args.iter().map(String::as_str).collect::<Vec<_>>())).await;
    assert!(ok, "{stdout}\n{stderr}");
    let job = stdout.trim().to_owned();
    assert!(kusto_copy::job::record::validate_job_id(&job).is_ok(), "prints the job id: {stdout}");
    assert!(stderr.contains("may still refuse"), "says the app checks again: {stderr}");

    let watch = kc(&h.azurite, &["status", &job, "--json", "--watch", "--interval", "1"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let (exit, lines) = deliver_until_exit(&h, watch).await;
    assert!(exit.success(), "{lines}");
    let last: kusto_copy::engine::status::JobStatus = serde_json::from_str(lines.trim().lines().last().unwrap()).unwrap();
    assert_eq!(last.job.id, job);
    let activity = &last.activities[0];
    assert_eq!((activity.state.as_str(), activity.copied_rows, activity.iterations.len()), ("completed", 400, 1), "{activity:?}");
    let iteration = &activity.iterations[0];
    assert_eq!((iteration.blocks_done, iteration.blocks, iteration.copied_rows, iteration.planned_rows), (iteration.blocks, iteration.blocks, 400, 400));
    assert!(iteration.first_ingestion.is_some() && iteration.first_ingestion < iteration.last_ingestion, "{iteration:?}");
    // The function answers the very same document.
    let (_, from_function) = h.host.http_get("status", &[("job", job.as_str())]).await;
    let from_function: kusto_copy::engine::status::JobStatus = serde_json::from_value(from_function).unwrap();
    assert_eq!(from_function.activities, last.activities);
    assert_same(&h, (DB, "Events | order by Id asc"), (DB, "Events"));

    // Submitting the same job again is the same job.
    let (ok, again, _) = output(kc(&h.azurite, &args.iter().map(String::as_str).collect::<Vec<_>>())).await;
    assert!(ok);
    assert_eq!(again.trim(), job);

    // The table view names the activity, its state and its rows.
    let (ok, table, _) = output(kc(&h.azurite, &["status", &job])).await;
    assert!(ok && table.contains("activity default: completed, 400 rows copied") && table.contains("4/4"), "{table}");
    let (ok, all, _) = output(kc(&h.azurite, &["status"])).await;
    assert!(ok && all.contains(&job), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kc_cancel_mid_copy_leaves_only_whole_committed_blocks() {
    let h = host_stack().await;
    seed(&h.source, DB, "Events", 600, 6, JAN_2023);
    h.destination.command(DB, ".create table Events (Id:long, Name:string, Amount:real, Props:dynamic)").unwrap();
    h.host.poll_once().await;
    let mut args = submit_args(&h, "cancelled");
    args.extend(["--job-id".into(), "to-cancel".into()]);
    let (ok, stdout, stderr) = output(kc(&h.azurite, &args.iter().map(String::as_str).collect::<Vec<_>>())).await;
    assert!(ok && stdout.trim() == "to-cancel", "{stdout}\n{stderr}");

    // Some blocks under way (exported, ingesting, or already moved), not all done.
    run_until_status(&h, "to-cancel", |a| a[0]["iterations"][0]["phases"]["ingesting"].as_u64().unwrap_or(0) > 0).await;
    let cancel = kc(&h.azurite, &["cancel", "to-cancel", "--wait"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (exit, said) = deliver_until_exit(&h, cancel).await;
    assert!(exit.success(), "{said}");
    assert!(said.contains("cancelled and cleaned up"), "{said}");
    // Let whatever is still queued run: it must find the job stopped and change nothing.
    for _ in 0..30 {
        if h.host.poll_once().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let (_, status) = h.host.http_get("status", &[("job", "to-cancel")]).await;
    let activity = &status["activities"][0];
    assert_eq!(activity["state"], "cancelled", "{status}");
    assert_eq!(activity["iterations"][0]["cleanedUp"], true, "{status}");
    // Whatever reached the destination is whole blocks of source rows, each row once, with
    // its creation time; and the count matches what status says was copied.
    let (source_rows, _) = common::query_rows(&h.source, DB, "Events | order by Id asc");
    let (copied, _) = common::query_rows(&h.destination, DB, "Events | order by Id asc");
    assert!(copied.len() < 600, "cancelled before the end");
    for (id, row) in &copied {
        assert_eq!(source_rows.get(id), Some(row), "row {id} copied exactly");
    }
    let done: u64 = {
        let (_, status) = h.host.http_get("status", &[("job", "to-cancel")]).await;
        status["activities"][0]["iterations"][0]["copiedRows"].as_u64().unwrap()
    };
    assert_eq!(copied.len() as u64, done, "the destination holds exactly the committed blocks: {status}");
    assert!(h.destination.extents(DB, "Events").unwrap().iter().all(|e| e.tags.is_empty()), "no tag left");
    let tables = format!("{:?}", h.destination.command(DB, ".show tables").unwrap().rows);
    assert!(!tables.contains("kc_staging"), "staging table left: {tables}");
    let left = common::containers(&h.azurite, "kcs-").await;
    assert!(left.is_empty(), "staging folders left: {left:?}");

    // Sending the job again does not bring it back.
    let (ok, _, _) = output(kc(&h.azurite, &args.iter().map(String::as_str).collect::<Vec<_>>())).await;
    assert!(ok);
    for _ in 0..20 {
        if h.host.poll_once().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, status) = h.host.http_get("status", &[("job", "to-cancel")]).await;
    assert_eq!(status["activities"][0]["state"], "cancelled", "{status}");
    assert_eq!(common::query_rows(&h.destination, DB, "Events | order by Id asc").0.len(), copied.len());
}

/// No `az` on PATH and no other way to sign in: one line saying what to do, at once.
#[tokio::test]
async fn a_credential_that_cannot_be_had_is_one_clear_error() {
    let dir = std::env::temp_dir().join(format!("kc-no-tools-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for args in [
        vec!["status", "--account", "kcstoreexample"],
        vec!["submit", "--account", "kcstoreexample", "-s", "https://a.kusto.windows.net/db/T", "-d", "https://b.kusto.windows.net/db", "-t", "https://stg.blob.core.windows.net/staging"],
        vec!["copy", "-s", "https://a.kusto.windows.net/db/T", "-d", "https://b.kusto.windows.net/db", "-t", "https://stg.blob.core.windows.net/staging"],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kc"))
            .args(&args)
            .env_clear()
            .env("PATH", &dir)
            .env("HOME", &dir)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("fails at once, not after retries").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("az login") && stderr.contains("cannot get a token"), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kc_validate_reads_json_requests_and_the_original_tools_yaml() {
    let dir = std::env::temp_dir().join(format!("kc-validate-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let validate = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kc")).arg("validate").arg(&path).env_remove("KC_CREDENTIAL").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, spec, _) = validate(
        "good.json",
        r#"{"source": "https://src.westeurope.kusto.windows.net/db/Logs", "destination": "https://dst.kusto.windows.net/archive", "stagingDirectory": "https://stg.blob.core.windows.net/staging"}"#,
    );
    assert_eq!(code, Some(0), "{spec}");
    assert!(spec.contains("\"table\": \"Logs\""), "prints the job it stands for: {spec}");

    let (code, _, why) = validate(
        "bad.json",
        r#"{"source": "https://src.kusto.windows.net/db/Logs", "destination": "https://dst.kusto.windows.net/archive", "stagingDirectory": "https://evil.example/staging", "query": "| take 10"}"#,
    );
    assert_eq!(code, Some(2));
    assert!(why.contains("evil.example") || why.contains("take"), "says why: {why}");

    // The original kusto-copy job file, as `kc copy -y` reads it.
    let (code, spec, why) = validate(
        "job.yaml",
        "activities:\n  - activityName: logs\n    source:\n      clusterUri: https://src.kusto.windows.net\n      databaseName: db\n      tableName: Logs\n    destination:\n      clusterUri: https://dst.kusto.windows.net\n      databaseName: archive\n    kqlQuery: \"| where Level == 'Error'\"\nstagingStorageDirectories:\n  - https://stg.blob.core.windows.net/staging\nexportCount: 3\n",
    );
    assert_eq!(code, Some(0), "{why}");
    assert!(spec.contains("\"name\": \"logs\"") && spec.contains("Level == 'Error'") && spec.contains("\"exportCount\": 3"), "{spec}");

    let (code, _, why) = validate("broken.yaml", "activities:\n  - activityName: [unclosed\n");
    assert_eq!(code, Some(2));
    assert!(why.contains("broken.yaml"), "names the file: {why}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kc validate --connect` reaches both clusters and the staging account as the copy will:
/// every check passes on a good job; a missing source table and a missing destination table
/// are each named; the probes leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kc_validate_connect_checks_what_the_copy_needs() {
    let stack = common::copy::stack().await;
    common::copy::seed(&stack);
    let dir = std::env::temp_dir().join(format!("kc-connect-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, source_table: &str, dest_table: &str| {
        let request = serde_json::json!({
            "source": format!("{}/{}/{source_table}", stack.source.url(), common::copy::DB),
            "destination": format!("{}/{}/{dest_table}", stack.destination.url(), common::copy::DB),
            "stagingDirectory": format!("{}/staging/connect", stack.azurite.blob_endpoint()),
        });
        let path = dir.join(name);
        std::fs::write(&path, request.to_string()).unwrap();
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_kc"));
        c.arg("validate").arg(&path).arg("--connect").env("KC_CREDENTIAL", "emulator").env("KC_CA_CERT", &stack.azurite.ca_pem_path).env("RUST_LOG", "warn");
        output(c)
    };
    let (ok, stdout, stderr) = run("good.json", "Events", "Events").await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("every check passed") && !stdout.contains("FAIL"), "{stdout}");
    for needed in ["read db.Events", "source cursor", "destination table db.Events", "staging tables in db", "staging account devstoreaccount1"] {
        assert!(stdout.contains(needed), "checks {needed}: {stdout}");
    }
    assert!(stdout.contains("no update policy or materialized view reads it"), "{stdout}");

    // The destination's own machinery over the table: named as warnings, not failures.
    let db = common::copy::DB;
    stack.destination.command(db, ".create table Derived (Id:long)").unwrap();
    stack.destination.command(db, r#".alter table Derived policy update '[{"IsEnabled": true, "Source": "Events", "Query": "Events | project Id", "IsTransactional": false}]'"#).unwrap();
    stack.destination.add_materialized_view(db, "EventsByName", "Events", "Events | summarize count() by Name").unwrap();
    let (ok, stdout, stderr) = run("good.json", "Events", "Events").await;
    assert!(ok, "warnings do not fail the check: {stdout}\n{stderr}");
    let warns: Vec<&str> = stdout.lines().filter(|l| l.starts_with("WARN")).collect();
    assert_eq!(warns.len(), 1, "{stdout}");
    assert!(warns[0].contains("update policy of table Derived") && warns[0].contains("materialized view EventsByName"), "{stdout}");

    let (ok, stdout, stderr) = run("bad.json", "NoSuchTable", "NoSuchCopy").await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("checks failed"), "{stderr}");
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(fails.iter().any(|l| l.contains("read db.NoSuchTable")), "{stdout}");
    assert!(fails.iter().any(|l| l.contains("destination table db.NoSuchCopy") && l.contains("createDestinationTable")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("ok") && l.contains("staging account")), "the rest is still checked: {stdout}");

    let tables = format!("{:?}", stack.destination.command(common::copy::DB, ".show tables").unwrap().rows);
    assert!(!tables.contains("kc_probe"), "probe table left: {tables}");
    let probes = common::containers(&stack.azurite, "kcs-probe").await;
    assert!(probes.is_empty(), "probe containers left: {probes:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

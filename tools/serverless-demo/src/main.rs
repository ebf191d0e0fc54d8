//! The serverless path, locally (`scripts/demo --serverless`): the same copy as `kc-demo`,
//! run the way it runs in Azure.
//!
//! Two `kc serve` instances are driven by the host harness (which plays the Functions host:
//! queue triggers, output bindings, retries, the timer); the job is dropped on `kc-requests`
//! by `kc submit`; progress is followed with `kc status --json`; then the table `kc status`
//! prints, and the same verification as `kc-demo`.
//!
//! `kc-serverless-demo [--rows N] [--extents N] [--kc path/to/kc]`

mod queues;

use kc_host_harness::{Host, Outcome};
use kc_test_stack::demo::{self, arg};
use kusto_copy::auth::EmulatorCredential;
use kusto_copy::engine::status::JobStatus;
use kusto_copy::storage::clients::{RetryBudget, StorageClients};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn kc(path: &str, azurite: &kc_test_stack::Azurite, args: &[&str]) -> tokio::process::Command {
    kc_test_stack::kc_command(path, azurite, args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let rows: usize = arg("--rows").and_then(|v| v.parse().ok()).unwrap_or(500_000);
    let extents: usize = arg("--extents").and_then(|v| v.parse().ok()).unwrap_or(50);
    let kc_path = arg("--kc").unwrap_or_else(|| kc_test_stack::repo_root().join("target/release/kc").display().to_string());
    let stack = demo::start(rows, extents).await;
    let azurite = &stack.azurite;

    println!("== two `kc serve` instances under the host harness");
    let mut instances = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let port = kc_test_stack::free_loopback_port();
        let child = kc(&kc_path, azurite, &["serve"])
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            // Errors only: the allow-list warnings are for a deployment, not this stack.
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn();
        match child {
            Ok(c) => instances.push(c),
            Err(e) => {
                eprintln!("cannot run {kc_path}: {e} (build it with `cargo build --release --bin kc`)");
                return ExitCode::FAILURE;
            }
        }
        if !kc_test_stack::wait_listening(port).await {
            eprintln!("kc serve on port {port} never answered");
            return ExitCode::FAILURE;
        }
        urls.push(format!("http://127.0.0.1:{port}"));
        println!("   kc serve on 127.0.0.1:{port}");
    }
    let clients = StorageClients::new(
        azurite.blob_endpoint().parse().expect("blob endpoint"),
        azurite.queue_endpoint().parse().expect("queue endpoint"),
        Some(Arc::new(EmulatorCredential::default())),
        Some(&azurite.ca_pem_path),
        RetryBudget::LOCAL,
    )
    .expect("clients for Azurite");
    let url_refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let host = Arc::new(Host::load_many(&kc_test_stack::repo_root(), &url_refs, queues::host_queues(clients)));
    host.poll_once().await; // the host creates its queues as it starts listening

    let source = format!("{}/demo/Events", stack.source.url());
    let destination = format!("{}/demo", stack.destination.url());
    let staging = format!("{}/staging/serverless", azurite.blob_endpoint());
    println!("== kc submit -s {source} -d {destination} -t {staging} --export 8");
    let out = kc(&kc_path, azurite, &["submit", "-s", &source, "-d", &destination, "-t", &staging, "--export", "8"]).output().await;
    let job = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => {
            eprintln!("kc submit failed: {}", String::from_utf8_lossy(&o.stderr));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("cannot run {kc_path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("   job {job}");

    // The host: deliveries all the time, the timer (the sweeper) every ten seconds.
    let driver = {
        let host = host.clone();
        tokio::spawn(async move {
            let mut last_tick = Instant::now();
            loop {
                let outcomes = host.poll_once().await;
                for o in &outcomes {
                    if let Outcome::Poisoned { .. } = o {
                        eprintln!("   poisoned: {o:?}");
                    }
                }
                if last_tick.elapsed() > Duration::from_secs(10) {
                    host.fire_timer("scheduler", false).await;
                    last_tick = Instant::now();
                }
                if outcomes.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };

    println!("== following it with kc status {job} --json");
    let started = Instant::now();
    let finished = loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted");
                return ExitCode::FAILURE;
            }
        }
        let Ok(out) = kc(&kc_path, azurite, &["status", &job, "--json"]).output().await else { continue };
        let Ok(status) = serde_json::from_slice::<JobStatus>(&out.stdout) else {
            println!("   {:>5.1} s  waiting for the app to read the request", started.elapsed().as_secs_f64());
            continue;
        };
        for a in &status.activities {
            let line = match a.iterations.last() {
                Some(i) => format!(
                    "{}: {}, iteration {} {}, blocks {}/{}, rows {}/{}{}",
                    a.name,
                    a.state,
                    i.number,
                    i.state,
                    i.blocks_done,
                    i.blocks,
                    i.copied_rows,
                    i.planned_rows,
                    i.rows_per_second.map(|r| format!(", {r:.0} rows/s")).unwrap_or_default()
                ),
                None => format!("{}: {}", a.name, a.state),
            };
            println!("   {:>5.1} s  {line}", started.elapsed().as_secs_f64());
        }
        if status.finished() {
            break status;
        }
    };
    driver.abort();
    let seconds = started.elapsed().as_secs_f64();
    println!("   copied in {seconds:.1} s ({:.0} rows/s)", rows as f64 / seconds);
    if let Ok(out) = kc(&kc_path, azurite, &["status", &job]).output().await {
        println!("== kc status {job}\n{}", String::from_utf8_lossy(&out.stdout).trim_end());
    }
    let completed = finished.activities.iter().all(|a| a.state == "completed");
    drop(instances);
    if demo::verify(&stack) && completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

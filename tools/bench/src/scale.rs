//! The scale run: a job of many blocks planned and looked at, not copied (exports are made to
//! last an hour, so the first ones just hold their slots).
//!
//! - In memory ([`engine_in_memory`], in a child process of the benchmark so its peak memory
//!   is the engine's alone): the engine `kc copy` and `kc serve` share, over the in-memory
//!   checkpoint store, plans the job step by step; then the status `kc status` shows is built.
//! - On Azurite: `kc serve` plans it under the host (its peak RSS), then `kc status <job>`
//!   runs as a person would run it; `kc copy` plans the same shape in its own process (its
//!   peak RSS, read before it is stopped).

use crate::drivers::{host_for, ServeInstances, StatusReader};
use crate::host_queues::HostCalls;
use crate::stack::RunStack;
use kusto_copy::engine::copy::{CopyEngine, EngineOptions, LiveConnections};
use kusto_copy::engine::{Delivery, Engine};
use kusto_copy::storage::checkpoint::MemoryCheckpointStore;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the in-memory child reports on its standard output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineScale {
    pub blocks: u64,
    pub plan_seconds: f64,
    pub status_seconds: f64,
    pub peak_rss_mib: f64,
}

/// The child's side: plans a job of the source's table on the in-memory store. Arguments:
/// the source table URI, the destination database URI, a staging directory URL.
pub async fn engine_in_memory(source: &str, destination: &str, staging: &str) -> Result<EngineScale, String> {
    let store = Arc::new(MemoryCheckpointStore::default());
    let policy = kusto_copy::job::RequestPolicy { loopback: true, ..Default::default() };
    let request = serde_json::json!({"source": source, "destination": destination, "stagingStorageDirectories": [staging], "exportCount": 8}).to_string();
    let job = match kusto_copy::job::record_request(store.as_ref(), &request, time::OffsetDateTime::now_utc(), &policy).await.map_err(|e| e.to_string())? {
        kusto_copy::job::RecordOutcome::Accepted(job) => job,
        other => return Err(format!("the request was not accepted: {other:?}")),
    };
    let credential = Arc::new(kusto_copy::auth::EmulatorCredential::default());
    let connections = Arc::new(LiveConnections::new(credential, std::env::var_os("KC_CA_CERT").map(Into::into), kusto_copy::engine::copy::step_client_options()));
    let engine = Arc::new(CopyEngine::new(store.clone(), connections, EngineOptions::default()));
    let started = Instant::now();
    let mut due = engine.start_job(&job).await.map_err(|e| e.to_string())?;
    let mut blocks = 0;
    // Only planning runs: every other message (the first exports) is set aside.
    while let Some(next) = due.iter().position(|o| o.message.step == "plan") {
        let message = due.remove(next).message;
        due.extend(engine.step(&message, &Delivery::default()).await.map_err(|e| e.to_string())?);
    }
    let plan_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let status = kusto_copy::engine::status::job_status(store.as_ref(), &job, time::OffsetDateTime::now_utc()).await.map_err(|e| e.to_string())?;
    let status_seconds = started.elapsed().as_secs_f64();
    for a in &status.activities {
        blocks += a.iterations.iter().map(|i| i.blocks).sum::<u64>();
    }
    Ok(EngineScale { blocks, plan_seconds, status_seconds, peak_rss_mib: kusto_copy::metrics::peak_rss_mib_of("self").unwrap_or(0.0) })
}

/// The parent's side: the stack, then the child (`kc-bench scale-engine …`).
pub async fn in_memory(stack: &RunStack) -> Result<EngineScale, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let staging = format!("{}/kc-bench/scale", stack.azurite.blob_endpoint());
    let out = tokio::process::Command::new(me)
        .args(["scale-engine", &stack.source_uri(), &stack.destination_uri(), &staging])
        .env("KC_CA_CERT", &stack.azurite.ca_pem_path)
        .env("RUST_LOG", "error")
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("the in-memory scale run failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let scale: EngineScale = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
    if scale.blocks != stack.blocks {
        return Err(format!("the planner made {} blocks, not the {} asked for", scale.blocks, stack.blocks));
    }
    Ok(scale)
}

/// The Azurite side's figures.
#[derive(Debug, Clone, Default)]
pub struct AzuriteScale {
    pub plan_seconds: f64,
    pub status_seconds: f64,
    pub peak_rss_mib_serve: f64,
    pub peak_rss_mib_copy: f64,
}

pub async fn on_azurite(kc: &Path, stack: &RunStack, work: &Path) -> Result<AzuriteScale, String> {
    // kc serve under the host: submit, wait for the plan, then `kc status`.
    let instances = ServeInstances::start(kc, stack, 1, work, &[]).await?;
    let (stop, host) = host_for(stack, &instances, Arc::new(HostCalls::default())).await;
    let reader = StatusReader::new(stack);
    let started = Instant::now();
    let job = crate::drivers::submit(kc, stack, &format!("{}/kc-bench/scale-serve", stack.azurite.blob_endpoint())).await?;
    let planned = |s: &kusto_copy::engine::status::JobStatus| s.activities.iter().flat_map(|a| a.iterations.iter()).any(|i| i.state != "planning");
    loop {
        if reader.status(&job).await.is_some_and(|s| planned(&s)) {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err("planning on Azurite took over 30 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let plan_seconds = started.elapsed().as_secs_f64();
    let status_started = Instant::now();
    let out = kc_test_stack::kc_command(kc, &stack.azurite, &["status", &job]).output().await.map_err(|e| e.to_string())?;
    let status_seconds = status_started.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("kc status failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains(&stack.blocks.to_string()) {
        return Err(format!("kc status does not show the {} blocks: {text}", stack.blocks));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = host.await;
    let usage = instances.stop().await?;
    let peak_rss_mib_serve = usage.iter().map(|u| u.peak_rss_mib).fold(0.0, f64::max);

    // kc copy of the same shape, into its own staging folder: stopped once it has planned.
    let staging = format!("{}/kc-bench/scale-copy", stack.azurite.blob_endpoint());
    let args = ["copy", "-s", &stack.source_uri(), "-d", &stack.destination_uri(), "-t", &staging, "--export", "8"];
    let mut child = kc_test_stack::kc_command(kc, &stack.azurite, &args).env("RUST_LOG", "error").stdout(std::process::Stdio::null()).spawn().map_err(|e| e.to_string())?;
    let pid = child.id().ok_or("kc copy exited at once")?.to_string();
    let store = kusto_copy::storage::checkpoint::PrefixedStore::new(
        Arc::new(kusto_copy::storage::checkpoint::BlobCheckpointStore::new(stack.storage_clients().container_without_retries("kc-bench").map_err(|e| e.to_string())?)),
        "scale-copy/tracking",
    );
    let started = Instant::now();
    let mut peak_rss_mib_copy = 0.0;
    loop {
        peak_rss_mib_copy = kusto_copy::metrics::peak_rss_mib_of(&pid).unwrap_or(peak_rss_mib_copy);
        let jobs = kusto_copy::job::record::list_jobs(&store).await.unwrap_or_default();
        let mut done = false;
        for j in &jobs {
            if let Ok(s) = kusto_copy::engine::status::job_status(&store, j, time::OffsetDateTime::now_utc()).await {
                done |= planned(&s);
            }
        }
        if done || started.elapsed() > Duration::from_secs(1800) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("kc copy exited during planning: {status}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    peak_rss_mib_copy = kusto_copy::metrics::peak_rss_mib_of(&pid).unwrap_or(peak_rss_mib_copy);
    let _ = child.kill().await;
    Ok(AzuriteScale { plan_seconds, status_seconds, peak_rss_mib_serve, peak_rss_mib_copy })
}

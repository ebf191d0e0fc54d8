//! The two ways the engine runs, measured: `kc copy` as a child process, and `kc serve`
//! instances under the host harness (host.json's queue settings, the scheduler timer on
//! its deployed schedule), the job dropped by `kc submit`.

use crate::host_queues::{counted, HostCalls};
use crate::stack::RunStack;
use kc_host_harness::Host;
use kusto_copy::metrics::Usage;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one driver's run showed.
#[derive(Debug, Clone)]
pub struct Measured {
    /// From starting the copy (the `kc copy` exec, the `kc submit`) to the job done.
    pub t: Duration,
    /// One per `kc` process.
    pub usage: Vec<Usage>,
    /// The host's queue calls (serve only).
    pub host_storage: std::collections::BTreeMap<String, u64>,
    /// CPU time of the `kc` processes over the run, as a share of one core.
    pub cpu_percent: f64,
    /// When T started (the clusters' clock: the machine's), to place their operations in it.
    pub started_at: time::OffsetDateTime,
}

impl Measured {
    pub fn engine_storage_total(&self) -> u64 {
        self.usage.iter().map(Usage::storage_total).sum()
    }
    pub fn cpu_ms(&self) -> f64 {
        self.usage.iter().map(|u| u.cpu_ms).sum()
    }
    pub fn peak_rss_mib(&self) -> f64 {
        self.usage.iter().map(|u| u.peak_rss_mib).fold(0.0, f64::max)
    }
}

/// `KC_BENCH_LOG=<filter>`: the `kc` processes log at that filter (`RUST_LOG` syntax) into
/// the work directory (`copy.log`, `serve-<i>.log`), to see where a run's time went.
pub const LOG: &str = "KC_BENCH_LOG";

fn log_filter() -> String {
    std::env::var(LOG).unwrap_or_else(|_| "error".into())
}

fn read_usage(path: &Path) -> Result<Usage, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e} (did kc exit cleanly?)", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `kc copy -s … -d … -t … --export C`, from exec to exit.
pub async fn copy(kc: &Path, stack: &RunStack, work: &Path) -> Result<Measured, String> {
    let usage = work.join("copy-usage.json");
    let staging = format!("{}/kc-bench/copy", stack.azurite.blob_endpoint());
    let capacity = stack.capacity.to_string();
    let args = ["copy", "-s", &stack.source_uri(), "-d", &stack.destination_uri(), "-t", &staging, "--export", &capacity];
    let (started, started_at) = (Instant::now(), time::OffsetDateTime::now_utc());
    let out = kc_test_stack::kc_command(kc, &stack.azurite, &args)
        .env(kusto_copy::config::names::USAGE_FILE, &usage)
        .env("RUST_LOG", log_filter())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", kc.display()))?;
    let t = started.elapsed();
    if std::env::var(LOG).is_ok() {
        let _ = std::fs::write(work.join("copy.log"), &out.stderr);
    }
    if !out.status.success() {
        return Err(format!("kc copy failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let usage = read_usage(&usage)?;
    let cpu_percent = 100.0 * usage.cpu_ms / 1000.0 / t.as_secs_f64();
    Ok(Measured { t, usage: vec![usage], host_storage: Default::default(), cpu_percent, started_at })
}

/// `kc serve` processes on free ports, each writing its usage to its own file on exit.
pub struct ServeInstances {
    children: Vec<tokio::process::Child>,
    pub urls: Vec<String>,
    usage_files: Vec<PathBuf>,
}

impl ServeInstances {
    pub async fn start(kc: &Path, stack: &RunStack, n: usize, work: &Path, extra_env: &[(&str, &str)]) -> Result<ServeInstances, String> {
        let mut me = ServeInstances { children: Vec::new(), urls: Vec::new(), usage_files: Vec::new() };
        for i in 0..n {
            let port = kc_test_stack::free_loopback_port();
            let usage = work.join(format!("serve-{i}-usage.json"));
            let _ = std::fs::remove_file(&usage);
            let mut command = kc_test_stack::kc_command(kc, &stack.azurite, &["serve"]);
            command
                .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
                .env(kusto_copy::config::names::USAGE_FILE, &usage)
                .env("RUST_LOG", log_filter())
                .stdout(match std::env::var(LOG) {
                    Ok(_) => std::fs::File::create(work.join(format!("serve-{i}.log"))).map_err(|e| e.to_string())?.into(),
                    Err(_) => std::process::Stdio::null(),
                });
            for (k, v) in extra_env {
                command.env(k, v);
            }
            me.children.push(command.spawn().map_err(|e| format!("cannot run {}: {e}", kc.display()))?);
            if !kc_test_stack::wait_listening(port).await {
                return Err(format!("kc serve on port {port} never answered"));
            }
            me.urls.push(format!("http://127.0.0.1:{port}"));
            me.usage_files.push(usage);
        }
        Ok(me)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|c| c.id()).collect()
    }

    /// SIGTERM (the host's way), then each one's usage.
    pub async fn stop(mut self) -> Result<Vec<Usage>, String> {
        for c in &self.children {
            if let Some(pid) = c.id() {
                let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            }
        }
        for c in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(20), c.wait()).await;
        }
        self.usage_files.iter().map(|f| read_usage(f)).collect()
    }
}

/// The deployed default of `KC_SCHEDULE` (infra/main.bicep): the scheduler every minute.
const SCHEDULE: &str = "0 */1 * * * *";

/// The host harness over `instances`, listening until the returned flag is set.
pub async fn host_for(stack: &RunStack, instances: &ServeInstances, calls: Arc<HostCalls>) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let urls: Vec<&str> = instances.urls.iter().map(String::as_str).collect();
    let mut host = Host::load_many(&kc_test_stack::repo_root(), &urls, counted(stack.storage_clients(), calls));
    host.app_settings.insert("KC_SCHEDULE".into(), SCHEDULE.into());
    let host = Arc::new(host);
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (host, stop) = (host.clone(), stop.clone());
        tokio::spawn(async move {
            let timer = {
                let host = host.clone();
                tokio::spawn(async move { host.run_timer_for("scheduler", Duration::from_secs(24 * 3600)).await })
            };
            let outcomes = host.listen(stop).await;
            timer.abort();
            for o in outcomes {
                if let kc_host_harness::Outcome::Poisoned { .. } = o {
                    eprintln!("   poisoned: {o:?}");
                }
            }
        })
    };
    (stop, task)
}

/// Reads a deployment's job status in this process (as `kc status --json` would).
pub struct StatusReader {
    store: Arc<dyn kusto_copy::storage::checkpoint::CheckpointStore>,
}

impl StatusReader {
    pub fn new(stack: &RunStack) -> StatusReader {
        let container = stack.storage_clients().container_without_retries("kc-checkpoints").expect("checkpoint container client");
        StatusReader { store: Arc::new(kusto_copy::storage::checkpoint::BlobCheckpointStore::new(container)) }
    }

    /// From the summaries only (`job_summary`): asked every 20 ms, the full status read each
    /// of the 200 blocks every time, a load on Azurite under the engine being measured.
    pub async fn status(&self, job: &str) -> Option<kusto_copy::engine::status::JobStatus> {
        let record = kusto_copy::job::record::read_job(self.store.as_ref(), job).await.ok()??;
        kusto_copy::engine::status::job_summary(self.store.as_ref(), &record, time::OffsetDateTime::now_utc()).await.ok()
    }
}

pub async fn submit(kc: &Path, stack: &RunStack, staging: &str) -> Result<String, String> {
    let capacity = stack.capacity.to_string();
    let out = kc_test_stack::kc_command(kc, &stack.azurite, &["submit", "-s", &stack.source_uri(), "-d", &stack.destination_uri(), "-t", staging, "--export", &capacity])
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", kc.display()))?;
    if !out.status.success() {
        return Err(format!("kc submit failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `n` instances of `kc serve` under the host; `kc submit`, then until the job is done.
pub async fn serve(kc: &Path, stack: &RunStack, n: usize, work: &Path) -> Result<Measured, String> {
    let instances = ServeInstances::start(kc, stack, n, work, &[]).await?;
    let calls = Arc::new(HostCalls::default());
    let (stop, host) = host_for(stack, &instances, calls.clone()).await;
    let reader = StatusReader::new(stack);
    let staging = format!("{}/kc-bench/serve", stack.azurite.blob_endpoint());
    let cpu_before: f64 = instances.pids().iter().filter_map(|p| kusto_copy::metrics::cpu_ms_of(&p.to_string())).sum();
    let (started, started_at) = (Instant::now(), time::OffsetDateTime::now_utc());
    let job = submit(kc, stack, &staging).await?;
    let deadline = started + Duration::from_secs(3600);
    let finished = loop {
        if let Some(s) = reader.status(&job).await.filter(|s| s.finished()) {
            break s;
        }
        if Instant::now() > deadline {
            return Err(format!("job {job} did not finish within an hour"));
        }
        // As often as the ideal scheduler polls its operations: T ends when the job is, not
        // up to a tenth of a second later (the status is a few Storage reads).
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let t = started.elapsed();
    let cpu_after: f64 = instances.pids().iter().filter_map(|p| kusto_copy::metrics::cpu_ms_of(&p.to_string())).sum();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = host.await;
    let usage = instances.stop().await?;
    if let Some(a) = finished.activities.iter().find(|a| a.state != "completed") {
        return Err(format!("activity {} ended {}: {:?}", a.name, a.state, a.reason));
    }
    let planned: u64 = finished.activities.iter().flat_map(|a| a.iterations.iter()).map(|i| i.blocks).sum();
    if planned != stack.blocks {
        return Err(format!("the planner made {planned} blocks, not the {} asked for", stack.blocks));
    }
    let cpu_percent = 100.0 * (cpu_after - cpu_before) / 1000.0 / t.as_secs_f64();
    Ok(Measured { t, usage, host_storage: calls.by_kind(), cpu_percent, started_at })
}

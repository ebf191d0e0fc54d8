//! The operator's commands against a deployment: `kc submit` drops a job on `kc-requests`,
//! `kc status` reads the checkpoints the app writes, `kc cancel` asks the engine to stop a
//! job. A deployment is reached by its storage account (`--account NAME`), or by the same
//! settings `kc serve` reads (`KC_BLOB_ENDPOINT`, `KC_QUEUE_ENDPOINT`, ...), with the
//! signed-in developer credential unless `KC_CREDENTIAL` says otherwise.

use crate::config::{self, names, Settings};
use crate::engine::status::{job_status, render, JobStatus};
use crate::job::record::{job_id_for, list_jobs, read_job};
use crate::storage::checkpoint::{BlobCheckpointStore, CheckpointStore};
use crate::storage::clients::StorageClients;
use crate::storage::queue::{MessageEncoding, MessageSender, StorageQueue};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Which deployment a command talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct Deployment {
    /// The deployment's storage account (the Bicep output `storageAccountName`); without
    /// it, the settings `kc serve` reads (KC_BLOB_ENDPOINT, KC_QUEUE_ENDPOINT, ...).
    #[arg(long, global = true)]
    pub account: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:
  kc submit --account kcstore123 -s https://src.westeurope.kusto.windows.net/db/Logs \\
      -d https://dst.northeurope.kusto.windows.net/db -t https://stg123.blob.core.windows.net/staging
  kc submit --account kcstore123 -y job.yaml --job-id nightly-logs")]
pub struct SubmitArgs {
    #[command(flatten)]
    pub deployment: Deployment,
    #[command(flatten)]
    pub job: super::copy::CopyArgs,
    /// The job's id (1-64 letters, digits, '-' or '_'); default: derived from the job, so
    /// the same job submitted twice is one job.
    #[arg(long = "job-id")]
    pub job_id: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:
  kc status --account kcstore123                 every job, a line each
  kc status --account kcstore123 nightly-logs    one job: its activities and iterations
  kc status nightly-logs --json --watch          JSON lines until the job ends (exit 1 if it failed)")]
pub struct StatusArgs {
    #[command(flatten)]
    pub deployment: Deployment,
    /// The job to show; without it, every job.
    pub job: Option<String>,
    /// The same document the `status` function answers.
    #[arg(long)]
    pub json: bool,
    /// Show again every few seconds until the job has ended.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between two looks with --watch.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
}

/// The settings of the deployment named by `--account` or the environment. An operator's
/// machine signs in with the developer tools unless `KC_CREDENTIAL` says otherwise.
pub fn settings(deployment: &Deployment, env: &HashMap<String, String>) -> Result<Settings, String> {
    let mut env = env.clone();
    if let Some(account) = &deployment.account {
        env.insert(names::HOST_STORAGE_ACCOUNT.into(), account.clone());
        env.remove(names::BLOB_ENDPOINT);
        env.remove(names::QUEUE_ENDPOINT);
    }
    env.entry(names::CREDENTIAL.into()).or_insert_with(|| "developer".into());
    config::from_map(&env).map_err(|e| match e.name {
        names::BLOB_ENDPOINT | names::QUEUE_ENDPOINT => format!("{e} (name the deployment's storage account with --account NAME)"),
        _ => e.to_string(),
    })
}

async fn clients(settings: &Settings) -> Result<StorageClients, String> {
    let credential = crate::auth::credential(&settings.credential).map_err(|e| format!("credential: {e}"))?;
    crate::auth::preflight(&settings.credential, &credential).await?;
    StorageClients::from_settings(&settings.storage, Some(credential)).map_err(|e| e.to_string())
}

async fn checkpoints(settings: &Settings) -> Result<Arc<dyn CheckpointStore>, String> {
    let container = clients(settings).await?.container_without_retries(&settings.storage.checkpoint_container).map_err(|e| e.to_string())?;
    Ok(Arc::new(BlobCheckpointStore::new(container)))
}

/// Checks the job as the app will, puts it on `kc-requests`, and says which job it is.
pub async fn submit(args: &SubmitArgs, env: &HashMap<String, String>) -> Result<String, String> {
    let settings = settings(&args.deployment, env)?;
    let text = super::copy::request_text(&args.job)?;
    let mut request: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if let Some(id) = &args.job_id {
        request.insert("jobId".into(), id.clone().into());
    }
    let text = serde_json::Value::Object(request.clone()).to_string();
    let spec = crate::job::check_request(&text, &settings.policy).map_err(|r| r.0)?;
    let id = match request.get("jobId").and_then(|v| v.as_str()) {
        Some(id) => {
            crate::job::record::validate_job_id(id)?;
            id.to_owned()
        }
        None => {
            // Named in the message, so the app records exactly the id printed here.
            let id = job_id_for(&spec);
            request.insert("jobId".into(), id.clone().into());
            id
        }
    };
    let message = serde_json::Value::Object(request).to_string();
    let queue = clients(&settings).await?.queue(config::queues::REQUESTS).map_err(|e| e.to_string())?;
    StorageQueue::new(queue, config::queues::REQUESTS, MessageEncoding::None)
        .send(&message, Duration::ZERO)
        .await
        .map_err(|e| {
            let hint = if e.to_string().ends_with("not found") {
                " (the deployment creates this queue: is this the deployment's storage account, the Bicep output storageAccountName?)"
            } else {
                ""
            };
            format!("cannot put the job on {}: {e}{hint}", config::queues::REQUESTS)
        })?;
    Ok(id)
}

/// What `kc status` prints once, and whether a watched job has ended (and how).
pub async fn status_once(args: &StatusArgs, store: &dyn CheckpointStore) -> Result<(String, Option<JobStatus>), String> {
    let now = time::OffsetDateTime::now_utc();
    let Some(id) = &args.job else {
        let jobs = list_jobs(store).await.map_err(|e| e.to_string())?;
        if args.json {
            return Ok((serde_json::json!({ "jobs": jobs }).to_string(), None));
        }
        let mut out = format!("{:<40}  {:<9}  {:<25}  {}\n", "job", "state", "received", "activities");
        for job in &jobs {
            let status = job_status(store, job, now).await.map_err(|e| e.to_string())?;
            let activities: Vec<String> = status.activities.iter().map(|a| format!("{} {} ({} rows)", a.name, a.state, a.copied_rows)).collect();
            let state = format!("{:?}", job.state);
            out.push_str(&format!("{:<40}  {:<9}  {:<25}  {}\n", job.id, state, job.received_at.to_string(), activities.join(", ")));
        }
        if jobs.is_empty() {
            out.push_str("(no jobs)\n");
        }
        return Ok((out, None));
    };
    let job = read_job(store, id).await.map_err(|e| e.to_string())?.ok_or_else(|| {
        format!("no job '{id}' (yet: a submitted job appears once the app has read its message; `kc status` lists every job)")
    })?;
    let status = job_status(store, &job, now).await.map_err(|e| e.to_string())?;
    let text = if args.json { serde_json::to_string(&status).expect("statuses serialize") } else { render(&status) };
    Ok((text, Some(status)))
}

/// `kc status`: once, or with `--watch` until the job has ended. Ok(false): it failed.
pub async fn status(args: &StatusArgs, env: &HashMap<String, String>) -> Result<bool, String> {
    let settings = settings(&args.deployment, env)?;
    let store = checkpoints(&settings).await?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        // A job not recorded yet is waited for when watching (the app may not have read the
        // message a `kc submit` just sent).
        let once = status_once(args, store.as_ref()).await;
        let (text, status) = match once {
            Err(e) if args.watch && e.starts_with("no job") => {
                tokio::time::sleep(Duration::from_secs(args.interval.max(1))).await;
                continue;
            }
            other => other?,
        };
        if args.watch && terminal && !args.json {
            print!("\x1b[2J\x1b[H");
        }
        println!("{}", text.trim_end());
        let Some(status) = status.filter(|_| args.watch) else { return Ok(true) };
        if status.finished() {
            let failed = status.job.state == crate::job::JobState::Rejected || status.activities.iter().any(|a| a.state == "failed");
            return Ok(!failed);
        }
        tokio::time::sleep(Duration::from_secs(args.interval.max(1))).await;
    }
}

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:
  kc cancel --account kcstore123 nightly-logs
  kc cancel nightly-logs --wait      until the app has cleaned up (staging table, folders, tags)")]
pub struct CancelArgs {
    #[command(flatten)]
    pub deployment: Deployment,
    /// The job to cancel.
    pub job: String,
    /// Wait until the app has removed what the job's current iterations left.
    #[arg(long)]
    pub wait: bool,
}

/// `kc cancel`: marks every activity of the job cancelled (the engine's cancel flag) and puts
/// each cleanup step on `kc-steps`, for the app to run with its own identity. Rows already
/// moved to the destination stay; the scheduler's sweeper sends a lost cleanup again.
pub async fn cancel(args: &CancelArgs, env: &HashMap<String, String>) -> Result<String, String> {
    use crate::engine::copy::{CopyEngine, EngineOptions, LiveConnections};
    let settings = settings(&args.deployment, env)?;
    let credential = crate::auth::credential(&settings.credential).map_err(|e| format!("credential: {e}"))?;
    crate::auth::preflight(&settings.credential, &credential).await?;
    let clients = StorageClients::from_settings(&settings.storage, Some(credential.clone())).map_err(|e| e.to_string())?;
    let container = clients.container_without_retries(&settings.storage.checkpoint_container).map_err(|e| e.to_string())?;
    let store: Arc<dyn CheckpointStore> = Arc::new(BlobCheckpointStore::new(container));
    let job = read_job(store.as_ref(), &args.job).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no job '{}'", args.job))?;
    // Cancelling only writes checkpoints and messages: the Kusto and staging clean-up is the
    // app's, under its identity, so these connections are never used here.
    let connections = Arc::new(LiveConnections::new(credential, settings.storage.ca_cert.clone(), crate::engine::copy::step_client_options()));
    let engine = CopyEngine::new(store.clone(), connections, EngineOptions::default());
    let messages = engine.cancel_job(&job).await.map_err(|e| e.to_string())?;
    let steps = StorageQueue::new(clients.queue(config::queues::STEPS).map_err(|e| e.to_string())?, config::queues::STEPS, MessageEncoding::None);
    for message in &messages {
        let text = serde_json::to_string(&message.message).expect("step messages serialize");
        steps.send(&text, message.delay).await.map_err(|e| format!("cannot put the clean-up on {}: {e}", config::queues::STEPS))?;
    }
    if !args.wait {
        return Ok(format!("job {} cancelled; the app removes its staging leftovers next (`kc status {}` shows when)", job.id, job.id));
    }
    loop {
        let status = job_status(store.as_ref(), &job, time::OffsetDateTime::now_utc()).await.map_err(|e| e.to_string())?;
        let clean = status.activities.iter().all(|a| a.iterations.last().is_none_or(|i| i.cleaned_up || i.state == "done"));
        if clean {
            let rows: u64 = status.activities.iter().map(|a| a.copied_rows).sum();
            return Ok(format!("job {} cancelled and cleaned up; {rows} rows had been copied and stay", job.id));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

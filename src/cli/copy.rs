//! `kc copy`: the copy engine driven in-process to completion, with a progress view.
//!
//! Same options and meanings as the original kusto-copy CLI. Checkpoints go to the staging
//! directory's `tracking/` folder, and the job id is derived from the options, so running
//! the same command again after an interruption resumes where it stopped.

use crate::auth;
use crate::config::CredentialKind;
use crate::engine::copy::{ActivityState, CopyEngine, EngineOptions, LiveConnections};
use crate::engine::local::Event;
use crate::engine::{Engine, Tick};
use crate::job::{record_request, JobRecord, RecordOutcome};
use crate::storage::checkpoint::{BlobCheckpointStore, CheckpointStore, PrefixedStore};
use crate::storage::clients::{RetryBudget, StorageClients};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CopyArgs {
    /// Source table URI: https://<cluster>/<database>/<table>.
    #[arg(short = 's', long)]
    pub source: Option<String>,
    /// Destination database or table URI: https://<cluster>/<database>[/<table>].
    #[arg(short = 'd', long)]
    pub destination: Option<String>,
    /// Staging directory (a blob container, optionally a folder in it); may repeat.
    #[arg(short = 't', long = "staging-storage")]
    pub staging: Vec<String>,
    /// Query applied to the source table, starting with '|'.
    #[arg(short = 'q', long)]
    pub query: Option<String>,
    /// BackfillOnly (default), BackfillAndNew or NewOnly.
    #[arg(long = "copy-mode")]
    pub copy_mode: Option<String>,
    /// Time between iterations of a continuous copy (00:15:00 or 15m).
    #[arg(long = "iteration-period")]
    pub iteration_period: Option<String>,
    /// Exports in flight at once on the source.
    #[arg(long = "export")]
    pub export: Option<u32>,
    /// A job file (YAML or JSON, the original tool's schema) instead of -s/-d.
    #[arg(short = 'y', long = "yaml")]
    pub yaml: Option<PathBuf>,
    /// What a block must show before it is moved: count (default) or content (a digest of
    /// its values computed by Kusto on both sides).
    #[arg(long = "verify")]
    pub verify: Option<String>,
    /// Client id of a user-assigned managed identity (then the managed identity is used).
    #[arg(long = "clientId")]
    pub client_id: Option<String>,
    /// Ingest with `.ingest async` on the engine endpoint instead of the queued ingest API.
    #[arg(long = "direct-ingestion")]
    pub direct_ingestion: bool,
    /// Iterations to run in a continuous copy before stopping (default: until interrupted).
    #[arg(long, hide = true)]
    pub iterations: Option<u64>,
}

/// Everything `kc copy` needs besides its arguments.
pub struct Environment {
    /// What the request may name; checked before any client is built.
    pub policy: crate::job::RequestPolicy,
    pub credential: CredentialKind,
    pub ca_cert: Option<PathBuf>,
    pub engine_options: EngineOptions,
    pub show_progress: bool,
}

/// The request these arguments stand for, in the queue message's schema.
pub fn request_text(args: &CopyArgs) -> Result<String, String> {
    let mut request: serde_json::Map<String, Value> = match &args.yaml {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let value: Value = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            match value {
                Value::Object(map) => map,
                _ => return Err(format!("{}: a job file is a mapping with activities", path.display())),
            }
        }
        None => serde_json::Map::new(),
    };
    let mut set = |key: &str, value: Value| {
        request.insert(key.to_owned(), value);
    };
    if let Some(s) = &args.source {
        set("source", json!(s));
    }
    if let Some(d) = &args.destination {
        set("destination", json!(d));
    }
    if let Some(q) = &args.query {
        set("query", json!(q));
    }
    if !args.staging.is_empty() {
        set("stagingStorageDirectories", json!(args.staging));
    }
    if let Some(m) = &args.copy_mode {
        set("copyMode", json!(m));
    }
    if let Some(p) = &args.iteration_period {
        set("iterationPeriod", json!(p));
    }
    if let Some(e) = args.export {
        set("exportCount", json!(e));
    }
    if let Some(v) = &args.verify {
        set("verify", json!(v));
    }
    if let Some(c) = &args.client_id {
        set("managedIdentityClientId", json!(c));
    }
    Ok(Value::Object(request).to_string())
}

/// The managed identity a request names (`managedIdentityClientId`, or `--clientId`).
fn identity_named(request: &str) -> Option<String> {
    serde_json::from_str::<Value>(request).ok().and_then(|v| v.get("managedIdentityClientId").and_then(Value::as_str).map(str::to_owned))
}

/// Runs the copy to completion (or, for a continuous copy, iteration after iteration).
/// Returns a summary line, or why it stopped.
pub async fn run(args: &CopyArgs, mut env: Environment) -> Result<String, String> {
    let text = request_text(args)?;
    // `--clientId`, or the job file's `managedIdentityClientId` (the original tool's field):
    // on this machine the person running the copy chooses the identity, so it is the one the
    // request may name.
    let client_id = identity_named(&text);
    if let Some(id) = &client_id {
        env.policy.app_client_id = Some(id.clone());
    }
    let spec = crate::job::check_request(&text, &env.policy).map_err(|r| r.0)?;
    let staging = spec.staging[0].clone();
    let credential_kind = match &client_id {
        Some(id) => CredentialKind::ManagedIdentity { client_id: Some(id.clone()) },
        None => env.credential.clone(),
    };
    let credential = auth::credential(&credential_kind).map_err(|e| format!("credential: {e}"))?;
    auth::preflight(&credential_kind, &credential).await?;
    let account: url::Url = staging.account_url.parse().map_err(|e| format!("staging account: {e}"))?;
    let budget = if crate::config::is_loopback(&account) { RetryBudget::LOCAL } else { RetryBudget::PRODUCTION };
    let clients = StorageClients::new(account.clone(), account, Some(credential.clone()), env.ca_cert.as_deref(), budget)
        .map_err(|e| e.to_string())?;
    let container = clients.container_without_retries(&staging.container).map_err(|e| e.to_string())?;
    let tracking = if staging.path.is_empty() { "tracking".to_owned() } else { format!("{}/tracking", staging.path) };
    let store: Arc<dyn CheckpointStore> = Arc::new(PrefixedStore::new(Arc::new(BlobCheckpointStore::new(container)), tracking));

    // One job per staging folder: running again continues it; a changed job (another query,
    // destination, mode...) would be another job copying everything again beside it, so it
    // is refused with what to do instead.
    let id = crate::job::record::job_id_for(&spec);
    for other in crate::job::record::list_jobs(store.as_ref()).await.map_err(|e| e.to_string())? {
        if other.state == crate::job::JobState::Accepted && other.id != id && other.spec.as_ref() != Some(&spec) {
            return Err(format!(
                "the staging folder {} holds another job ({}): {}; this command differs from it. \
                 To continue that job, run it as it was; to copy with the new options, start over in another staging folder (-t)",
                [staging.account_url.as_str(), staging.container.as_str(), staging.path.as_str()].iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/"),
                other.id,
                describe(other.spec.as_ref().expect("accepted jobs have a spec")),
            ));
        }
    }
    let job = match record_request(store.as_ref(), &text, time::OffsetDateTime::now_utc(), &env.policy).await.map_err(|e| e.to_string())? {
        RecordOutcome::Accepted(job) | RecordOutcome::AlreadyRecorded(job) => job,
        RecordOutcome::IdTaken { id } => return Err(format!("job {id} in this staging directory has a different definition; use another staging folder")),
        RecordOutcome::Rejected(job) => return Err(job.reason.unwrap_or_default()),
    };
    let connections = Arc::new(LiveConnections::new(credential, env.ca_cert.clone(), crate::engine::copy::step_client_options()));
    let mut options = env.engine_options.clone();
    // One `kc copy` deployment per tracking folder.
    options.deployment = crate::engine::copy::deployment_hash(&format!("{}/{}/{}", staging.account_url, staging.container, staging.path));
    if args.direct_ingestion {
        options.ingest_route = crate::engine::records::IngestRoute::Direct;
    }
    let engine = Arc::new(CopyEngine::new(store.clone(), connections, options));
    let workers = (spec.export_count as usize * 2).clamp(2, 64);
    let progress = Progress::new(env.show_progress);

    // Rows and blocks from the checkpoints, once a second: the bar's rate and ETA follow.
    // Only for a bar someone sees: each look is three Storage reads.
    let progress = Arc::new(progress);
    let watcher = env.show_progress.then(|| {
        let (engine, job, progress) = (engine.clone(), job.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(p) = engine.progress(&job).await {
                    progress.rows(p);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    });
    let result = drive(&engine, &job, &spec, args, workers, &progress).await;
    if let Some(w) = watcher {
        w.abort();
    }
    if let Ok(p) = engine.progress(&job).await {
        progress.rows(p);
    }
    progress.finish();
    result
}

async fn drive(
    engine: &Arc<CopyEngine>,
    job: &JobRecord,
    spec: &crate::job::JobSpec,
    args: &CopyArgs,
    workers: usize,
    progress: &Progress,
) -> Result<String, String> {
    let mut iterations_run = 0u64;
    let before = engine.copied_rows(job).await.map_err(|e| e.to_string())?;
    // Run again on a finished job: a continuous one copies what arrived since (the new
    // iteration's plan is sent by resuming); a BackfillOnly one has nothing left to do.
    let started = engine.next_iteration(job).await.map_err(|e| e.to_string())?;
    if started.is_empty() && !spec.copy_mode.is_continuous() && engine.job_finished(job).await.map_err(|e| e.to_string())? {
        let summary = summarize(engine, job).await?;
        return Ok(format!("{summary} (already complete: a BackfillOnly job copies once; use another staging folder or jobId to copy again)"));
    }
    // What a crashed earlier run of this job left and no iteration owns any more.
    match engine.janitor(std::slice::from_ref(job)).await {
        Ok(0) => {}
        Ok(n) => progress.note(&format!("removed {n} staging object(s) an earlier run left")),
        Err(e) => tracing::warn!(error = %e, "could not look for what an earlier run left"),
    }
    loop {
        let failures = engine.run_locally(job, workers, |e| progress.on_event(e)).await.map_err(|e| e.to_string())?;
        iterations_run += 1;
        if !failures.is_empty() {
            return Err(format!("{} step(s) failed; first: {}", failures.len(), failures[0]));
        }
        let after = engine.copied_rows(job).await.map_err(|e| e.to_string())?;
        let summary = format!("{} ({} rows by this run)", summarize(engine, job).await?, after.saturating_sub(before));
        let continuous = spec.copy_mode.is_continuous() && spec.iteration_period_secs.is_some();
        if !continuous || args.iterations.is_some_and(|n| iterations_run >= n) {
            return Ok(summary);
        }
        progress.note(&format!("iteration done ({}); next in {} s", summary, spec.iteration_period_secs.unwrap_or(0)));
        tokio::time::sleep(Duration::from_secs(spec.iteration_period_secs.unwrap_or(60))).await;
        engine.tick(&Tick { now: time::OffsetDateTime::now_utc() + time::Duration::days(3650), past_due: false }).await.map_err(|e| e.to_string())?;
    }
}

/// A job in a few words, for a person comparing it with the command they ran.
fn describe(spec: &crate::job::JobSpec) -> String {
    let activities: Vec<String> = spec
        .activities
        .iter()
        .map(|a| {
            let query = a.query.as_deref().map(|q| format!(" {q}")).unwrap_or_default();
            format!("{}.{}{query} -> {}.{}", a.source.database, a.source.table, a.destination.database, a.destination.table)
        })
        .collect();
    let verify = if spec.verify == crate::job::Verify::Content { ", verify content" } else { "" };
    format!("{} ({:?}{verify})", activities.join(", "), spec.copy_mode)
}

async fn summarize(engine: &CopyEngine, job: &JobRecord) -> Result<String, String> {
    let spec = job.spec.as_ref().expect("accepted jobs have a spec");
    let mut parts = Vec::new();
    for activity in &spec.activities {
        let record = engine.activity(&job.id, &activity.name).await.map_err(|e| e.to_string())?;
        match record {
            Some(r) => {
                if let ActivityState::Failed { reason } = &r.state {
                    return Err(format!("activity {} stopped: {reason}", activity.name));
                }
                if r.state == ActivityState::Cancelled {
                    return Err(format!("activity {} was cancelled ({} rows copied before); copy again under another staging folder or jobId", activity.name, r.copied_rows));
                }
                let mut line = format!("{}: {} rows copied", activity.name, r.copied_rows);
                if r.rows_without_ingestion_time > 0 {
                    line.push_str(&format!(", {} rows without ingestion time not copied", r.rows_without_ingestion_time));
                }
                if r.rows_beyond_retention > 0 {
                    line.push_str(&format!(
                        ", {} rows older than the destination's soft-delete period not copied (the destination would remove them at once)",
                        r.rows_beyond_retention
                    ));
                }
                parts.push(line);
            }
            None => parts.push(format!("{}: not started", activity.name)),
        }
    }
    Ok(format!("job {}: {}", job.id, parts.join("; ")))
}

/// Counts steps as they finish and shows them.
struct Progress {
    bar: Option<ProgressBar>,
    exports: AtomicU64,
    exported: AtomicU64,
    ingested: AtomicU64,
    retries: AtomicU64,
    blocks: AtomicU64,
    blocks_done: AtomicU64,
}

impl Progress {
    fn new(show: bool) -> Self {
        let bar = show.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:24} {human_pos}/{human_len} rows, {per_sec}, ETA {eta}\n  {msg}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress {
            bar,
            exports: 0.into(),
            exported: 0.into(),
            ingested: 0.into(),
            retries: 0.into(),
            blocks: 0.into(),
            blocks_done: 0.into(),
        }
    }

    fn rows(&self, p: crate::engine::copy::JobProgress) {
        if let Some(bar) = &self.bar {
            bar.set_length(p.planned_rows);
            bar.set_position(p.copied_rows);
        }
        self.blocks.store(p.blocks, Ordering::Relaxed);
        self.blocks_done.store(p.blocks_done, Ordering::Relaxed);
        self.refresh();
    }

    fn on_event(&self, event: &Event) {
        match event {
            Event::Ran { message } => {
                let counter = match message.step.as_str() {
                    "export" => &self.exports,
                    "ingest" => &self.exported,
                    "commit" => &self.ingested,
                    _ => return self.refresh(),
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Event::Retrying { .. } => {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            Event::Failed { message, error } => self.note(&format!("step {} of block {:?} failed: {error}", message.step, message.block)),
        }
        self.refresh();
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "blocks: {} planned, exports started {}, exported {}, ingested {}, done {} (transient retries {})",
                self.blocks.load(Ordering::Relaxed),
                self.exports.load(Ordering::Relaxed),
                self.exported.load(Ordering::Relaxed),
                self.ingested.load(Ordering::Relaxed),
                self.blocks_done.load(Ordering::Relaxed),
                self.retries.load(Ordering::Relaxed),
            ));
        }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            self.refresh();
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CopyArgs,
    }

    #[test]
    fn a_job_files_managed_identity_is_the_one_used_and_clientid_overrides_it() {
        let file = std::env::temp_dir().join(format!("kc-mi-{}.yaml", uuid::Uuid::new_v4()));
        std::fs::write(&file, "managedIdentityClientId: 11111111-2222-3333-4444-555555555555\nactivities: []\n").unwrap();
        let from_file = Cli::parse_from(["kc", "-y", file.to_str().unwrap()]).args;
        assert_eq!(identity_named(&request_text(&from_file).unwrap()).as_deref(), Some("11111111-2222-3333-4444-555555555555"));
        let overridden = Cli::parse_from(["kc", "-y", file.to_str().unwrap(), "--clientId", "99999999-2222-3333-4444-555555555555"]).args;
        assert_eq!(identity_named(&request_text(&overridden).unwrap()).as_deref(), Some("99999999-2222-3333-4444-555555555555"));
        let none = Cli::parse_from(["kc", "-s", "https://a.kusto.windows.net/db/T"]).args;
        assert_eq!(identity_named(&request_text(&none).unwrap()), None);
        let _ = std::fs::remove_file(&file);
    }

    fn spec(extra: &[&str]) -> crate::job::JobSpec {
        let mut argv = vec!["kc", "-s", "https://a.kusto.windows.net/db/T", "-d", "https://b.kusto.windows.net/db2", "-t", "https://stg.blob.core.windows.net/staging/kc"];
        argv.extend_from_slice(extra);
        let text = request_text(&Cli::parse_from(argv).args).unwrap();
        crate::job::check_request(&text, &crate::job::RequestPolicy::default()).unwrap()
    }

    #[test]
    fn verify_content_is_asked_for_by_flag_and_shown_in_the_description() {
        assert_eq!(spec(&[]).verify, crate::job::Verify::Count);
        let content = spec(&["--verify", "content"]);
        assert_eq!(content.verify, crate::job::Verify::Content);
        assert!(describe(&content).ends_with("(BackfillOnly, verify content)"), "{}", describe(&content));
    }
}

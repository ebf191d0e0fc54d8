//! `kc`: parses arguments, starts tracing, and calls the library.

use clap::{Parser, Subcommand};
use kusto_copy::{config, engine, handler};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kc", version, about = "Exact, resumable, age-preserving copies of Kusto tables")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as the Azure Functions custom handler (the host sets FUNCTIONS_CUSTOMHANDLER_PORT).
    #[command(after_help = "Settings come from the environment (README, \"Configuration\"). Locally, against Azurite:\n  FUNCTIONS_CUSTOMHANDLER_PORT=7071 KC_CREDENTIAL=emulator KC_BLOB_ENDPOINT=https://127.0.0.1:10000/devstoreaccount1 \\\n    KC_QUEUE_ENDPOINT=https://127.0.0.1:10001/devstoreaccount1 KC_CA_CERT=ca.pem kc serve")]
    Serve,
    /// Copy a table (or a job of several) to completion, with the engine in this process.
    #[command(after_help = "Examples:
  kc copy -s https://src.westeurope.kusto.windows.net/Sales/Orders -d https://dst.kusto.windows.net/Sales \\
      -t https://stagingacct.blob.core.windows.net/staging/orders
  kc copy ... -q \"| where Region == 'EU' | project OrderId, Amount\"      a query of the table
  kc copy ... --copy-mode BackfillAndNew      run again later: copies what arrived since
  kc copy -y job.yaml                        the original tool's job file (several tables)
Interrupted? Run the same command again: it resumes from the checkpoints in the staging folder.")]
    Copy(kusto_copy::cli::copy::CopyArgs),
    /// Check a copy request without running it: JSON as dropped on the kc-requests queue, or
    /// a YAML job file in the original tool's schema (as `kc copy -y` reads).
    #[command(after_help = "Examples:\n  kc validate request.json\n  kc validate job.yaml\n  kc validate job.yaml --connect    also reach the clusters and staging accounts, as the copy will\n  echo '{\"source\": ...}' | kc validate -")]
    Validate {
        /// Path to the request file, or - for standard input.
        file: String,
        /// Reach both clusters and every staging account with the copy's credential and check
        /// what the copy will need (each refusal names the missing role).
        #[arg(long)]
        connect: bool,
    },
    /// Put a copy job on a deployment's kc-requests queue (checked as the app checks it) and
    /// print its job id.
    Submit(kusto_copy::cli::operate::SubmitArgs),
    /// Show a deployment's jobs, or one job's activities and iterations.
    Status(kusto_copy::cli::operate::StatusArgs),
    /// Cancel a job: copied rows stay at the destination, everything else is removed.
    Cancel(kusto_copy::cli::operate::CancelArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => serve(),
        Command::Validate { file, connect } => validate(&file, connect),
        Command::Copy(args) => copy(&args),
        Command::Submit(args) => operate(|env| async move {
            let id = kusto_copy::cli::operate::submit(&args, &env).await?;
            println!("{id}");
            eprintln!(
                "kc: job {id} is on {}; the app checks it again against its own allow-lists and may still refuse it: follow it with `kc status {id}`",
                config::queues::REQUESTS
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Cancel(args) => operate(|env| async move {
            println!("{}", kusto_copy::cli::operate::cancel(&args, &env).await?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Status(args) => operate(|env| async move {
            let ok = kusto_copy::cli::operate::status(&args, &env).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }),
    }
}

/// Runs an operator command against a deployment: logs to stderr, errors as one line.
fn operate<F, Fut>(command: F) -> ExitCode
where
    F: FnOnce(std::collections::HashMap<String, String>) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, String>>,
{
    init_tracing(false, LogStreams::StderrOnly);
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(command(env)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// Where log lines go. Under the Functions host, every stderr line of a custom handler is
/// logged at Error level (Warning if it contains "warn") and stdout lines at Information
/// (`shared/reference/functions-host.md`), so `kc serve` writes warnings and errors to stderr
/// and everything else to stdout. The CLI keeps all logs on stderr, beside its progress view.
#[derive(Clone, Copy, PartialEq)]
enum LogStreams {
    SplitByLevel,
    StderrOnly,
}

fn init_tracing(json: bool, streams: LogStreams) {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,azure_core=warn,azure_storage_blob=warn,azure_storage_queue=warn"));
    let writer = match streams {
        LogStreams::SplitByLevel => BoxMakeWriter::new(std::io::stderr.with_max_level(tracing::Level::WARN).or_else(std::io::stdout)),
        LogStreams::StderrOnly => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

fn serve() -> ExitCode {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    // Under the host, logs are JSON lines the host captures; KC_LOG_FORMAT=text overrides.
    let json = match env.get(config::names::LOG_FORMAT).map(String::as_str) {
        Some("text") => false,
        Some("json") => true,
        _ => env.contains_key("FUNCTIONS_WORKER_RUNTIME") || env.contains_key("WEBSITE_SITE_NAME"),
    };
    init_tracing(json, LogStreams::SplitByLevel);
    let port = match config::port_from_map(&env) {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    let settings = match config::from_map(&env) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    for warning in settings.policy.warnings() {
        tracing::warn!("{warning}");
    }
    // Checked again when each job is recorded (its rejection then shows in status); said here
    // too, so a bad declaration is seen at start-up.
    for r in &settings.replications {
        if let Err(rejection) = kusto_copy::job::check_request(&r.request, &settings.policy) {
            tracing::error!(replication = %r.name, reason = %rejection.0, "replication in KC_REPLICATIONS is invalid and will not run");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let state = match handler::AppState::from_settings(&settings) {
            Ok(s) => s,
            Err(e) => return fail(&e),
        };
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(e) => return fail(&format!("cannot listen on 127.0.0.1:{port}: {e}")),
        };
        tracing::info!(port, "kc serve listening");
        let served = handler::serve(listener, state).await;
        write_usage(&env);
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("server error: {e}")),
        }
    })
}

/// `KC_USAGE_FILE`, when set: what this process cost (`kusto_copy::metrics`).
fn write_usage(env: &std::collections::HashMap<String, String>) {
    if let Some(path) = env.get(config::names::USAGE_FILE) {
        kusto_copy::metrics::write_usage_file(std::path::Path::new(path));
    }
}

fn copy(args: &kusto_copy::cli::copy::CopyArgs) -> ExitCode {
    init_tracing(false, LogStreams::StderrOnly);
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    // A laptop signs in with the developer tools; KC_CREDENTIAL=emulator for the local stack.
    let credential = terminal_credential(&env);
    let policy = kusto_copy::job::RequestPolicy::from_map(
        &env,
        credential == config::CredentialKind::Emulator,
        args.client_id.clone().or_else(|| env.get(config::names::IDENTITY_CLIENT_ID).cloned()),
    );
    let environment = kusto_copy::cli::copy::Environment {
        policy,
        credential,
        ca_cert: env.get(config::names::CA_CERT).map(std::path::PathBuf::from),
        // In process there is no queue granularity: look at short operations soon.
        // A short lease: the only other delivery of a step in process is a `kc copy` of the same
        // job that died, and a rerun should take its attempts over soon.
        engine_options: engine::copy::EngineOptions {
            min_poll: std::time::Duration::from_millis(500),
            poll_floor: std::time::Duration::from_millis(100),
            poll_grid: Some(std::time::Duration::from_millis(100)),
            lease: time::Duration::seconds(20),
            ..Default::default()
        },
        show_progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(kusto_copy::cli::copy::run(args, environment));
    write_usage(&env);
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn validate(file: &str, connect: bool) -> ExitCode {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => return fail(&format!("cannot read {file}: {e}")),
    };
    // A YAML job file (the original tool's schema, as `kc copy -y` reads it) is checked as the
    // JSON request it stands for; JSON stays JSON, so its errors point into the JSON.
    let yaml = file.ends_with(".yaml") || file.ends_with(".yml") || (serde_json::from_str::<serde_json::Value>(&text).is_err() && !text.trim_start().starts_with('{'));
    let text = if yaml {
        match serde_norway::from_str::<serde_json::Value>(&text) {
            Ok(value) if value.is_object() => value.to_string(),
            Ok(_) => return fail(&format!("{file}: a job file is a mapping with activities")),
            Err(e) => return fail(&format!("{file}: {e}")),
        }
    } else {
        text
    };
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let emulator = env.get(config::names::CREDENTIAL).map(String::as_str) == Some("emulator");
    let policy = kusto_copy::job::RequestPolicy::from_map(&env, emulator, env.get(config::names::IDENTITY_CLIENT_ID).cloned());
    let spec = match kusto_copy::job::check_request(&text, &policy) {
        Ok(spec) => spec,
        Err(rejection) => return fail(&rejection.0),
    };
    println!("{}", serde_json::to_string_pretty(&spec).expect("specs serialize"));
    if !connect {
        return ExitCode::SUCCESS;
    }
    init_tracing(false, LogStreams::StderrOnly);
    let credential_kind = terminal_credential(&env);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let credential = match kusto_copy::auth::credential(&credential_kind) {
            Ok(c) => c,
            Err(e) => return fail(&format!("credential: {e}")),
        };
        if let Err(e) = kusto_copy::auth::preflight(&credential_kind, &credential).await {
            return fail(&e);
        }
        let connections = engine::copy::LiveConnections::new(credential, env.get(config::names::CA_CERT).map(std::path::PathBuf::from), engine::copy::step_client_options());
        let checks = kusto_copy::cli::connect::check(&spec, &connections).await;
        let mut failed = 0;
        for c in &checks {
            match &c.outcome {
                Ok(found) if found.starts_with("warning: ") => println!("WARN  {}: {}", c.subject, &found["warning: ".len()..]),
                Ok(found) => println!("ok    {}: {found}", c.subject),
                Err(problem) => {
                    failed += 1;
                    println!("FAIL  {}: {problem}", c.subject);
                }
            }
        }
        if failed == 0 {
            println!("every check passed: the copy has what it needs");
            ExitCode::SUCCESS
        } else {
            fail(&format!("{failed} of {} checks failed", checks.len()))
        }
    })
}

/// The credential a terminal command uses: the developer tools (Azure CLI / azd) unless
/// `KC_CREDENTIAL` names the emulator or a managed identity.
fn terminal_credential(env: &std::collections::HashMap<String, String>) -> config::CredentialKind {
    match env.get(config::names::CREDENTIAL).map(String::as_str) {
        Some("emulator") => config::CredentialKind::Emulator,
        Some("managed-identity") => config::CredentialKind::ManagedIdentity { client_id: env.get(config::names::IDENTITY_CLIENT_ID).cloned() },
        _ => config::CredentialKind::DeveloperTools,
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("kc: {message}");
    ExitCode::from(2)
}

//! `kusto-sim`: starts named simulated clusters and prints their URLs as one JSON line.
//!
//! ```text
//! kusto-sim [--cluster NAME]... [--database NAME] [--async-ms N] [--export-ms N] [--ingest-ms N] [--move-ms N] [--export-capacity N]
//!           [--ca-cert PEM]
//! kusto-sim token <cluster-url>      # prints a bearer token that cluster accepts
//! ```

use std::time::Duration;

use kusto_sim::{ClusterConfig, CommandKind, Simulator};

fn usage() -> ! {
    eprintln!(
        "usage: kusto-sim [--cluster NAME]... [--database NAME] [--async-ms N] [--export-ms N] [--ingest-ms N] [--move-ms N] [--export-capacity N] [--ca-cert PEM]\n       kusto-sim token <cluster-url>"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("token") {
        let Some(url) = args.get(1) else { usage() };
        println!("{}", kusto_sim::auth::mint_token(url));
        return;
    }
    // Logs go to stderr so that stdout stays one JSON line; bearer and SAS tokens are never logged.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kusto_sim=info")),
        )
        .init();
    let mut names = Vec::new();
    let mut config = ClusterConfig::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--cluster" => names.push(value()),
            "--database" => config.default_database = value(),
            "--async-ms" => config.async_duration = Duration::from_millis(value().parse().unwrap_or_else(|_| usage())),
            // Per kind: how long that kind's async operation runs (else --async-ms).
            "--export-ms" => {
                config.durations.insert(CommandKind::Export, Duration::from_millis(value().parse().unwrap_or_else(|_| usage())));
            }
            "--ingest-ms" => {
                let d = Duration::from_millis(value().parse().unwrap_or_else(|_| usage()));
                config.durations.insert(CommandKind::Ingest, d);
                config.durations.insert(CommandKind::QueuedIngest, d);
            }
            "--move-ms" => {
                config.durations.insert(CommandKind::Move, Duration::from_millis(value().parse().unwrap_or_else(|_| usage())));
            }
            "--export-capacity" => config.export_capacity = value().parse().unwrap_or_else(|_| usage()),
            "--ca-cert" => {
                let path = value();
                config.ca_cert_pem = Some(std::fs::read(&path).unwrap_or_else(|e| {
                    eprintln!("kusto-sim: cannot read --ca-cert {path}: {e}");
                    std::process::exit(2)
                }));
            }
            _ => usage(),
        }
    }
    if names.is_empty() {
        names.push("local".into());
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let sim = match Simulator::start(&refs, config.clone()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kusto-sim: cannot listen: {e}");
            std::process::exit(1)
        }
    };
    let clusters: Vec<_> = sim
        .clusters
        .iter()
        .map(|c| serde_json::json!({"name": c.name(), "url": c.url(), "database": config.default_database}))
        .collect();
    println!("{}", serde_json::json!({ "clusters": clusters }));
    let _ = tokio::signal::ctrl_c().await;
}

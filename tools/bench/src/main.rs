//! `kc-bench`: how close the engine comes to the clusters' own pace, and what it costs.
//!
//! Copies run in real time against simulated clusters whose operations last a drawn time
//! around a mean per kind (export 2 s, ingestion 1 s, move 0.2 s, each ±30 %), the source
//! holding C export slots. For `kc copy` (a child process) and `kc serve` (under the host
//! harness) it prints the makespan T beside T* (the perfect pipeline over the same draws,
//! [`ideal`]) and T_base (an ideal scheduler on the same simulator and Azurite, [`base`]),
//! export-slot utilisation, Storage transactions and Kusto requests per block, CPU per block
//! and peak memory; then the scale run ([`scale`]), the scale-out, and the cold start.
//!
//! `kc-bench [--blocks 200] [--capacity 8] [--json PATH] [--quick]` (README, "Benchmarks").

mod base;
mod cold_start;
mod drivers;
mod host_queues;
mod ideal;
mod scale;
mod stack;

use clap::Parser;
use serde_json::{json, Value};
use stack::RunStack;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(name = "kc-bench", about = "kc copy and kc serve against simulated clusters, beside the ideal pipeline")]
struct Args {
    /// Blocks the source is shaped into (one extent each).
    #[arg(long, default_value_t = 200)]
    blocks: u64,
    /// The source's export capacity C (and the job's exportCount).
    #[arg(long, default_value_t = 8)]
    capacity: usize,
    /// Mean duration of an export, an ingestion, a move (ms).
    #[arg(long, default_value_t = 2000)]
    export_ms: u64,
    #[arg(long, default_value_t = 1000)]
    ingest_ms: u64,
    #[arg(long, default_value_t = 200)]
    move_ms: u64,
    /// Each duration is drawn uniformly within mean x (1 ± spread).
    #[arg(long, default_value_t = 0.3)]
    spread: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 100)]
    rows_per_block: usize,
    /// Blocks of the in-memory scale run, and of the one on Azurite.
    #[arg(long, default_value_t = 100_000)]
    scale_blocks: u64,
    #[arg(long, default_value_t = 10_000)]
    azurite_scale_blocks: u64,
    /// `kc serve` instance counts of the scale-out (comma-separated).
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    scale_out: Vec<usize>,
    /// Parts to run (comma-separated): base, copy, serve, scale-out, scale, cold-start.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A small smoke run (a dozen short blocks, small scale runs): the test command runs it.
    #[arg(long)]
    quick: bool,
    /// The `kc` binary (default: target/release/kc).
    #[arg(long)]
    kc: Option<PathBuf>,
    #[command(subcommand)]
    internal: Option<Internal>,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum Internal {
    /// The in-memory scale run's child process.
    #[command(hide = true)]
    ScaleEngine { source: String, destination: String, staging: String },
}

impl Args {
    fn quick(mut self) -> Args {
        if self.quick {
            (self.blocks, self.capacity, self.export_ms, self.ingest_ms, self.move_ms) = (12, 4, 300, 150, 50);
            (self.scale_blocks, self.azurite_scale_blocks, self.scale_out) = (3_000, 300, vec![1, 2]);
        }
        self
    }

    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }

    fn durations(&self) -> ideal::Durations {
        ideal::Durations {
            export: Duration::from_millis(self.export_ms),
            ingest: Duration::from_millis(self.ingest_ms),
            moves: Duration::from_millis(self.move_ms),
            spread: kusto_sim::Spread { seed: self.seed, fraction: self.spread },
        }
    }
}

/// One driver's figures, in the JSON's shape.
fn driver_figures(args: &Args, stack: &RunStack, m: &drivers::Measured, t_star: f64, t_base: Option<f64>) -> Value {
    let n = stack.blocks as f64;
    let t = m.t.as_secs_f64();
    let (exports, busy) = stack.exports();
    let requests = stack.kusto_requests();
    let total_requests: u64 = requests.values().sum();
    let mut engine_storage = std::collections::BTreeMap::<String, u64>::new();
    for u in &m.usage {
        for (k, v) in &u.storage {
            *engine_storage.entry(k.clone()).or_default() += v;
        }
    }
    let (first, last, share, handover, handover_p90) = stack.export_window(m.started_at);
    json!({
        "exports": exports,
        "handover_seconds": handover,
        "handover_p90_seconds": handover_p90,
        "first_export_at": first,
        "last_export_end_at": last,
        "busy_share_between": share,
        "t": t,
        "t_star": t_star,
        "t_base": t_base,
        "ratio": t / t_star,
        "ratio_base": t_base.map(|b| t / b),
        "export_utilisation": busy / (args.capacity as f64 * t),
        "storage_tx_per_block": m.engine_storage_total() as f64 / n,
        "storage_tx_by_kind": engine_storage,
        "host_storage_tx_per_block": m.host_storage.values().sum::<u64>() as f64 / n,
        "host_storage_tx_by_kind": m.host_storage,
        "kusto_requests_per_block": total_requests as f64 / n,
        "kusto_requests_by_kind": requests,
        "cpu_ms_per_block": m.cpu_ms() / n,
        "cpu_percent": m.cpu_percent,
        "peak_rss_mib": m.peak_rss_mib(),
    })
}

fn print_driver(name: &str, v: &Value) {
    let f = |k: &str| v[k].as_f64().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    println!(
        "{name:<6} T {:>7} s   T* {:>7} s   T_base {:>7} s   T/T* {:>5}   T/T_base {:>5}   export utilisation {:>4}",
        f("t"), f("t_star"), f("t_base"), f("ratio"), f("ratio_base"), f("export_utilisation")
    );
    println!(
        "       per block: storage tx {:>6} (host {:>6}), Kusto requests {:>6}, CPU {:>6} ms   peak RSS {:>6} MiB",
        f("storage_tx_per_block"), f("host_storage_tx_per_block"), f("kusto_requests_per_block"), f("cpu_ms_per_block"), f("peak_rss_mib")
    );
    println!(
        "       first export at +{:.2} s, last export ended at +{:.2} s, slots busy {:.2} of the time between; an export's end to the next start: {:.3} s (90th percentile {:.3} s)",
        v["first_export_at"].as_f64().unwrap_or(0.0), v["last_export_end_at"].as_f64().unwrap_or(0.0), v["busy_share_between"].as_f64().unwrap_or(0.0), v["handover_seconds"].as_f64().unwrap_or(0.0),
        v["handover_p90_seconds"].as_f64().unwrap_or(0.0)
    );
    println!("       Kusto requests: {}", v["kusto_requests_by_kind"]);
    println!("       engine storage: {}", v["storage_tx_by_kind"]);
    if v["host_storage_tx_by_kind"].as_object().is_some_and(|o| !o.is_empty()) {
        println!("       host storage:   {}", v["host_storage_tx_by_kind"]);
    }
}

async fn run(args: Args) -> Result<Value, String> {
    let kc = args.kc.clone().unwrap_or_else(|| kc_test_stack::repo_root().join("target/release/kc"));
    if !kc.exists() {
        return Err(format!("no kc at {} (build it with `cargo build --release --bin kc`, or pass --kc)", kc.display()));
    }
    let work = std::env::temp_dir().join(format!("kc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let durations = args.durations();
    let t_star = ideal::t_star(&durations, args.blocks, args.capacity).as_secs_f64();
    println!(
        "kc-bench: {} blocks of {} rows, capacity {}, export {} ms / ingestion {} ms / move {} ms ± {:.0} %, seed {}; T* = {t_star:.2} s",
        args.blocks, args.rows_per_block, args.capacity, args.export_ms, args.ingest_ms, args.move_ms, args.spread * 100.0, args.seed
    );
    let mut out = json!({});
    let fresh = || RunStack::start(args.blocks, args.rows_per_block, args.capacity, &durations);

    let mut t_base = None;
    if args.runs("base") {
        let stack = fresh().await;
        let t = base::run(&stack, args.capacity).await?.as_secs_f64();
        stack.check(true).map_err(|e| format!("base: {e}"))?;
        println!("base   T_base {t:.2} s (the ideal scheduler on the same simulator and Azurite: T_base/T* {:.2})", t / t_star);
        t_base = Some(t);
    }
    if args.runs("copy") {
        let stack = fresh().await;
        let m = drivers::copy(&kc, &stack, &work).await?;
        stack.check(true).map_err(|e| format!("kc copy: {e}"))?;
        let v = driver_figures(&args, &stack, &m, t_star, t_base);
        print_driver("copy", &v);
        out["copy"] = v;
    }
    let mut scale_out = Vec::new();
    if args.runs("serve") || args.runs("scale-out") {
        for (i, &instances) in args.scale_out.iter().enumerate() {
            if i > 0 && !args.runs("scale-out") {
                break;
            }
            let stack = fresh().await;
            let m = drivers::serve(&kc, &stack, instances, &work).await?;
            stack.check(false).map_err(|e| format!("kc serve x{instances}: {e}"))?;
            let v = driver_figures(&args, &stack, &m, t_star, t_base);
            if i == 0 {
                print_driver("serve", &v);
                out["serve"] = v.clone();
            }
            println!("scale-out: {instances} kc serve: T/T* {:.2}, storage tx per block {:.2}, CPU {:.0} %", v["ratio"].as_f64().unwrap_or(0.0), v["storage_tx_per_block"].as_f64().unwrap_or(0.0), m.cpu_percent);
            scale_out.push(json!({"instances": instances, "ratio": v["ratio"], "storage_tx_per_block": v["storage_tx_per_block"], "cpu_percent": m.cpu_percent}));
        }
        out["scale_out"] = json!(scale_out);
    }
    if args.runs("scale") {
        // Exports that last an hour: the scale run plans and looks, it does not copy.
        let planning_only = ideal::Durations { export: Duration::from_secs(3600), ..durations };
        let stack = RunStack::start(args.scale_blocks, 1, 8, &planning_only).await;
        let memory = scale::in_memory(&stack).await?;
        drop(stack);
        println!(
            "scale  {} blocks in memory: planned in {:.2} s, status in {:.3} s, engine peak RSS {:.1} MiB",
            memory.blocks, memory.plan_seconds, memory.status_seconds, memory.peak_rss_mib
        );
        let stack = RunStack::start(args.azurite_scale_blocks, 1, 8, &planning_only).await;
        let azurite = scale::on_azurite(&kc, &stack, &work).await?;
        println!(
            "scale  {} blocks on Azurite: kc serve planned in {:.1} s, `kc status` {:.2} s; peak RSS kc serve {:.1} MiB, kc copy {:.1} MiB",
            args.azurite_scale_blocks, azurite.plan_seconds, azurite.status_seconds, azurite.peak_rss_mib_serve, azurite.peak_rss_mib_copy
        );
        out["scale"] = json!({
            "blocks": memory.blocks,
            "plan_seconds": memory.plan_seconds,
            "status_seconds": memory.status_seconds,
            "peak_rss_mib_engine": memory.peak_rss_mib,
            "peak_rss_mib_copy": azurite.peak_rss_mib_copy,
            "peak_rss_mib_serve": azurite.peak_rss_mib_serve,
            "azurite_blocks": args.azurite_scale_blocks,
            "azurite_plan_seconds": azurite.plan_seconds,
            "azurite_status_seconds": azurite.status_seconds,
        });
    }
    if args.runs("cold-start") {
        let c = cold_start::measure(&kc, if args.quick { 3 } else { 15 });
        println!(
            "cold   kc serve exec -> first 200: median {:.1} ms (min {:.1}, max {:.1}; `kc --version` {:.1} ms, {:.1}x); idle RSS {:.1} MiB (`kc validate -` {:.1} MiB, {:.1}x)",
            c.ms, c.min_ms, c.max_ms, c.baseline_ms, c.ms / c.baseline_ms, c.idle_rss_mib, c.baseline_rss_mib, c.idle_rss_mib / c.baseline_rss_mib
        );
        out["cold_start"] = json!({"ms": c.ms, "idle_rss_mib": c.idle_rss_mib, "runs": c.runs, "baseline_ms": c.baseline_ms, "baseline_rss_mib": c.baseline_rss_mib});
    }
    if std::env::var(drivers::LOG).is_ok() {
        eprintln!("kc-bench: the kc processes' logs are in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse().quick();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Some(Internal::ScaleEngine { source, destination, staging }) = &args.internal {
        return match runtime.block_on(scale::engine_in_memory(source, destination, staging)) {
            Ok(figures) => {
                println!("{}", serde_json::to_string(&figures).expect("figures serialize"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kc-bench scale-engine: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(args.clone())) {
        Ok(figures) => {
            if let Some(path) = &args.json {
                if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&figures).expect("figures serialize")) {
                    eprintln!("kc-bench: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kc-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

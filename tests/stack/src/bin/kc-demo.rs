//! The local demo (`scripts/demo`): a real copy end to end on this machine.
//!
//! Starts Azurite (HTTPS, OAuth) and two simulated Kusto clusters, seeds the source with a
//! table of a few million rows over many extents with historical creation times, runs the
//! real `kc copy` binary against them, and prints the verification: row counts, a checksum
//! over every column of every row, and rows per extent creation time on both sides.
//!
//! `kc-demo [--rows N] [--extents N] [--kc path/to/kc]`

use kc_test_stack::Azurite;
use kusto_sim::{Cluster, ClusterConfig, Column, ScalarType, SeedPlan};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DAY: i64 = 24 * 3600 * 10_000_000;
/// 2023-01-01T00:00:00Z in 100 ns ticks since the Unix epoch.
const JAN_2023: i64 = 1_672_531_200 * 10_000_000;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// Order-sensitive FNV-1a over each row's values, rows ordered by Id.
fn checksum(cluster: &Cluster, table: &str) -> (usize, u64) {
    let frame = cluster.query("demo", &format!("{table} | order by Id asc")).expect("query");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for row in &frame.rows {
        for byte in format!("{:?}", row.values).bytes() {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (frame.rows.len(), hash)
}

fn ages(cluster: &Cluster, table: &str) -> BTreeMap<i64, usize> {
    let mut out = BTreeMap::new();
    for e in cluster.extents("demo", table).expect("extents") {
        *out.entry(e.max_created_on).or_default() += e.row_count;
    }
    out
}

fn date(ticks: i64) -> String {
    let days = (ticks - JAN_2023) / DAY;
    format!("2023-01-01 + {days} d")
}

#[tokio::main]
async fn main() -> ExitCode {
    let rows: usize = arg("--rows").and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let extents: usize = arg("--extents").and_then(|v| v.parse().ok()).unwrap_or(100);
    let kc = arg("--kc").unwrap_or_else(|| kc_test_stack::repo_root().join("target/release/kc").display().to_string());

    println!("== starting Azurite (HTTPS, OAuth) and two simulated clusters");
    let azurite = Azurite::start();
    let config = ClusterConfig {
        async_duration: Duration::from_millis(300),
        export_capacity: 8,
        default_database: "demo".into(),
        ca_cert_pem: Some(std::fs::read(&azurite.ca_pem_path).expect("CA")),
        ..ClusterConfig::default()
    };
    let source = Cluster::start("source", config.clone()).await.expect("source");
    let destination = Cluster::start("destination", config).await.expect("destination");
    println!("   Azurite blob {}\n   source {}\n   destination {}", azurite.blob_endpoint(), source.url(), destination.url());

    println!("== seeding demo.Events on the source: {rows} rows over {extents} extents, created over two years");
    let started = Instant::now();
    let columns = vec![
        Column::new("Id", ScalarType::Long),
        Column::new("Device", ScalarType::String),
        Column::new("Timestamp", ScalarType::DateTime),
        Column::new("Reading", ScalarType::Real),
        Column::new("Attributes", ScalarType::Dynamic),
    ];
    source
        .seed_table("demo", "Events", &columns, &SeedPlan {
            rows,
            extents,
            first_creation: JAN_2023,
            creation_step: 7 * DAY,
            first_ingestion: Some(JAN_2023 + 800 * DAY),
            ingestion_step: 3600 * 10_000_000,
        })
        .expect("seed");
    destination
        .command("demo", ".create table Events (Id:long, Device:string, Timestamp:datetime, Reading:real, Attributes:dynamic)")
        .expect("destination table");
    println!("   seeded in {:.1} s", started.elapsed().as_secs_f64());

    let staging = format!("{}/staging/demo", azurite.blob_endpoint());
    println!("== kc copy -s {}/demo/Events -d {}/demo -t {staging}", source.url(), destination.url());
    let started = Instant::now();
    let child = tokio::process::Command::new(&kc)
        .args(["copy", "-s", &format!("{}/demo/Events", source.url()), "-d", &format!("{}/demo", destination.url()), "-t", &staging, "--export", "8"])
        .env("KC_CREDENTIAL", "emulator")
        .env("KC_CA_CERT", &azurite.ca_pem_path)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn();
    let status = match child {
        // Ctrl-C stops kc copy too (and Azurite, when this returns and its handle drops).
        Ok(mut child) => tokio::select! {
            s = child.wait() => s,
            _ = tokio::signal::ctrl_c() => {
                let _ = child.kill().await;
                eprintln!("interrupted");
                return ExitCode::FAILURE;
            }
        },
        Err(e) => Err(e),
    };
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("kc copy failed: {s}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("cannot run {kc}: {e} (build it with `cargo build --release --bin kc`)");
            return ExitCode::FAILURE;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("   copied in {seconds:.1} s ({:.0} rows/s)", rows as f64 / seconds);

    println!("== verification");
    let (src_rows, src_sum) = checksum(&source, "Events");
    let (dst_rows, dst_sum) = checksum(&destination, "Events");
    println!("   rows      source {src_rows:>10}   destination {dst_rows:>10}");
    println!("   checksum  source {src_sum:016x}   destination {dst_sum:016x}   (every column of every row, by Id)");
    let (src_ages, dst_ages) = (ages(&source, "Events"), ages(&destination, "Events"));
    let (first, last) = (src_ages.keys().next().copied().unwrap_or(0), src_ages.keys().last().copied().unwrap_or(0));
    println!(
        "   creation  {} distinct creation times from {} to {} on the source; destination extents carry {} of them, rows per creation time {}",
        src_ages.len(),
        date(first),
        date(last),
        dst_ages.len(),
        if src_ages == dst_ages { "identical" } else { "DIFFERENT" }
    );
    let leftovers = format!("{:?}", destination.command("demo", ".show tables").map(|f| f.rows).unwrap_or_default());
    let clean = !leftovers.contains("kc_staging");
    println!("   staging tables left: {}", if clean { "none" } else { "SOME" });
    if src_rows == dst_rows && src_sum == dst_sum && src_ages == dst_ages && clean {
        println!("== verified: the copy is exact and keeps every extent's creation time");
        ExitCode::SUCCESS
    } else {
        println!("== NOT VERIFIED");
        ExitCode::FAILURE
    }
}

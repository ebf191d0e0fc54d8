//! What both local demos share (`kc-demo`, the `kc copy` path, and `kc-serverless-demo`, the
//! `kc serve` path): the local stack, a seeded source table, and the verification they print.

use super::Azurite;
use kusto_sim::{Cluster, ClusterConfig, Column, ScalarType, SeedPlan};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const DAY: i64 = 24 * 3600 * 10_000_000;
/// 2023-01-01T00:00:00Z in 100 ns ticks since the Unix epoch.
const JAN_2023: i64 = 1_672_531_200 * 10_000_000;

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

pub struct DemoStack {
    pub azurite: Azurite,
    pub source: Cluster,
    pub destination: Cluster,
    pub rows: usize,
}

/// Azurite (HTTPS, OAuth), two simulated clusters, and `demo.Events` seeded on the source
/// with `rows` rows over `extents` extents whose creation times span two years.
pub async fn start(rows: usize, extents: usize) -> DemoStack {
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
    DemoStack { azurite, source, destination, rows }
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

/// Prints the verification (rows, a checksum over every column of every row, rows per
/// creation time on both sides, staging tables left); whether the copy is exact.
pub fn verify(stack: &DemoStack) -> bool {
    let (source, destination) = (&stack.source, &stack.destination);
    println!("== verification");
    let (src_rows, src_sum) = checksum(source, "Events");
    let (dst_rows, dst_sum) = checksum(destination, "Events");
    println!("   rows      source {src_rows:>10}   destination {dst_rows:>10}");
    println!("   checksum  source {src_sum:016x}   destination {dst_sum:016x}   (every column of every row, by Id)");
    let (src_ages, dst_ages) = (ages(source, "Events"), ages(destination, "Events"));
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
    let exact = src_rows == dst_rows && src_sum == dst_sum && src_ages == dst_ages && clean;
    if exact {
        println!("== verified: the copy is exact and keeps every extent's creation time");
    } else {
        println!("== NOT VERIFIED");
    }
    exact
}

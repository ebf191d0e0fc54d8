//! One measured run's services: its own Azurite and two simulated clusters, the source
//! shaped so that the planner makes exactly the blocks asked for.
//!
//! The shape: one extent per block, one hour of ingestion time apart, creation times more
//! than a day apart (the planner never puts extents created over a day apart in one block,
//! and an hour's bin holds far fewer rows than a block may).

use crate::ideal::Durations;
use kc_test_stack::Azurite;
use kusto_copy::kusto::IngestionRange;
use kusto_sim::{Cluster, ClusterConfig, Column, CommandKind, ScalarType, SeedPlan};
use std::sync::Arc;
use std::time::Duration;

pub const DB: &str = "bench";
pub const SCHEMA: &str = "Id:long, Device:string, Reading:real";

const HOUR: i64 = 3600 * 10_000_000;
const DAY: i64 = 24 * HOUR;
/// 2000-01-01T00:00:00Z in 100 ns ticks since the Unix epoch.
const Y2000: i64 = 946_684_800 * 10_000_000;

pub struct RunStack {
    pub azurite: Azurite,
    pub source: Cluster,
    pub destination: Cluster,
    pub blocks: u64,
    pub capacity: usize,
}

/// Each block's extent is created 25 hours after the previous one.
const CREATION_STEP: i64 = DAY + HOUR;
/// Ingestion times one hour apart, from 2000-01-01.
const INGESTION_STEP: i64 = HOUR;

impl RunStack {
    pub async fn start(blocks: u64, rows_per_block: usize, capacity: usize, durations: &Durations) -> RunStack {
        let azurite = Azurite::start();
        let mut config = ClusterConfig {
            async_duration: Duration::from_millis(50),
            export_capacity: capacity,
            default_database: DB.into(),
            ca_cert_pem: Some(std::fs::read(&azurite.ca_pem_path).expect("Azurite's CA")),
            spread: Some(durations.spread),
            ..ClusterConfig::default()
        };
        config.durations.insert(CommandKind::Export, durations.export);
        config.durations.insert(CommandKind::Ingest, durations.ingest);
        config.durations.insert(CommandKind::QueuedIngest, durations.ingest);
        config.durations.insert(CommandKind::Move, durations.moves);
        let source = Cluster::start("source", config.clone()).await.expect("source cluster");
        let destination = Cluster::start("destination", config).await.expect("destination cluster");
        let columns = vec![Column::new("Id", ScalarType::Long), Column::new("Device", ScalarType::String), Column::new("Reading", ScalarType::Real)];
        let rows = blocks as usize * rows_per_block;
        source
            .seed_table(DB, "Events", &columns, &SeedPlan {
                rows,
                extents: blocks as usize,
                first_creation: Y2000 - 400 * 365 * DAY / 4,
                creation_step: CREATION_STEP,
                first_ingestion: Some(Y2000),
                ingestion_step: INGESTION_STEP,
            })
            .expect("seed the source");
        destination.command(DB, &format!(".create table Events ({SCHEMA})")).expect("destination table");
        RunStack { azurite, source, destination, blocks, capacity }
    }

    /// Block `k`'s ingestion-time range (its extent's hour).
    pub fn ingestion_range(&self, k: u64) -> IngestionRange {
        let at = |ticks: i64| time::OffsetDateTime::from_unix_timestamp_nanos(ticks as i128 * 100).expect("a valid time");
        let from = Y2000 + k as i64 * INGESTION_STEP;
        IngestionRange { from: at(from), to: at(from + INGESTION_STEP) }
    }

    pub fn storage_clients(&self) -> kusto_copy::storage::clients::StorageClients {
        kusto_copy::storage::clients::StorageClients::new(
            self.azurite.blob_endpoint().parse().expect("blob endpoint"),
            self.azurite.queue_endpoint().parse().expect("queue endpoint"),
            Some(Arc::new(kusto_copy::auth::EmulatorCredential::default())),
            Some(&self.azurite.ca_pem_path),
            kusto_copy::storage::clients::RetryBudget::LOCAL,
        )
        .expect("clients for Azurite")
    }

    pub fn source_uri(&self) -> String {
        format!("{}/{DB}/Events", self.source.url())
    }

    pub fn destination_uri(&self) -> String {
        format!("{}/{DB}", self.destination.url())
    }

    /// Exports the source ran, and the busy export-seconds they held a slot for (from its
    /// operation log).
    pub fn exports(&self) -> (u64, f64) {
        self.source.with_state(|s| {
            let exports: Vec<_> = s.operations.records.iter().filter(|o| o.operation == "DataExportToFile").collect();
            let busy = exports.iter().map(|o| (o.last_updated_on - o.started_on) as f64 / 1e7).sum();
            (exports.len() as u64, busy)
        })
    }

    /// Where the time went, for reading a ratio: the first export's start and the last one's
    /// end, in seconds after `t0`; the slots' busy share between those two; a hand-over's
    /// mean and 90th percentile.
    pub fn export_window(&self, t0: time::OffsetDateTime) -> (f64, f64, f64, f64, f64) {
        let t0 = (t0.unix_timestamp_nanos() / 100) as i64;
        self.source.with_state(|s| {
            let exports: Vec<_> = s.operations.records.iter().filter(|o| o.operation == "DataExportToFile").collect();
            if let Ok(path) = std::env::var("KC_BENCH_EXPORTS") {
                let lines: Vec<String> = exports.iter().map(|o| format!("{},{},{}", o.id, o.started_on - t0, o.last_updated_on - t0)).collect();
                let _ = std::fs::write(path, lines.join("\n"));
            }
            let first = exports.iter().map(|o| o.started_on).min().unwrap_or(t0);
            let last = exports.iter().map(|o| o.last_updated_on).max().unwrap_or(t0);
            let busy: i64 = exports.iter().map(|o| o.last_updated_on - o.started_on).sum();
            let share = busy as f64 / (self.capacity as f64 * (last - first).max(1) as f64);
            // The i-th export start takes the slot the (i - C)-th end freed: the mean wait
            // between the two is what a hand-over costs (seeing the end, then starting).
            let mut starts: Vec<i64> = exports.iter().map(|o| o.started_on).collect();
            let mut ends: Vec<i64> = exports.iter().map(|o| o.last_updated_on).collect();
            starts.sort();
            ends.sort();
            let c = self.capacity;
            let mut gaps: Vec<i64> = (c..starts.len()).map(|i| starts[i] - ends[i - c]).collect();
            gaps.sort();
            let handover = if gaps.is_empty() { 0.0 } else { gaps.iter().sum::<i64>() as f64 / gaps.len() as f64 / 1e7 };
            let p90 = gaps.get(gaps.len() * 9 / 10).or(gaps.last()).map_or(0.0, |g| *g as f64 / 1e7);
            ((first - t0) as f64 / 1e7, (last - t0) as f64 / 1e7, share, handover, p90)
        })
    }

    /// Requests both clusters answered, by kind.
    pub fn kusto_requests(&self) -> std::collections::BTreeMap<String, u64> {
        let mut all = std::collections::BTreeMap::new();
        for cluster in [&self.source, &self.destination] {
            for (k, n) in cluster.with_state(|s| s.requests.clone()) {
                *all.entry(k).or_default() += n;
            }
        }
        all
    }

    /// Whether the destination holds every source row and the planner made exactly the
    /// blocks asked for, known by one export each (`exports_tell_blocks`: `kc copy`, whose
    /// plan the bench does not read) or by the job's status (the serve driver checks it
    /// there, and a repeated export is then a cost the figures show, not a failed run).
    pub fn check(&self, exports_tell_blocks: bool) -> Result<(), String> {
        let count = |c: &Cluster| c.query(DB, "Events | count").map_err(|e| e.detail).map(|f| format!("{:?}", f.rows.first().map(|r| &r.values)));
        let (src, dst) = (count(&self.source)?, count(&self.destination)?);
        if src != dst {
            return Err(format!("destination rows {dst} differ from the source's {src}"));
        }
        let (exports, _) = self.exports();
        if exports < self.blocks || (exports_tell_blocks && exports != self.blocks) {
            return Err(format!("{exports} exports ran for {} blocks: the planner did not make the blocks asked for, or exports were repeated", self.blocks));
        }
        Ok(())
    }
}

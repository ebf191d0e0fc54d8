//! Commands that touch blob storage: `.export ... to parquet|csv` and `.ingest into table T
//! (blobs)`. Both really write or read files through the SAS URLs they are given.

use std::sync::Arc;

use uuid::Uuid;

use super::data::{ingest_rows, parse_csv_rows, write_csv};
use super::parse::{Command, Props};
use super::{frame, lock, Shared};
use crate::blob::{file_url, without_secret, BlobStore};
use crate::faults::{CommandKind, Fault};
use crate::kql::eval::{run_query, Env, Frame};
use crate::model::table::Column;
use crate::model::value::{ScalarType as T, Value as V};
use crate::parquet_io::{read_parquet, write_parquet, DatetimePrecision};
use crate::wire::error::KustoError;

pub const EXPORT_OPERATION: &str = "DataExportToFile";

/// One file to write: its URL (with SAS), the rows, and the name shown in results.
struct ExportFile {
    url: String,
    rows: Vec<Vec<V>>,
}

pub async fn run(state: &Shared, db: &str, cmd: Command) -> Result<Frame, KustoError> {
    match cmd {
        Command::Export { is_async, compressed, format, targets, props, query } => {
            export(state, db, is_async, compressed, &format, targets, props, &query).await
        }
        Command::Ingest { is_async, table, sources, props } => ingest(state, db, is_async, table, sources, props).await,
        _ => Err(KustoError::bad_request("not a storage command")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn export(
    state: &Shared,
    db: &str,
    is_async: bool,
    compressed: bool,
    format: &str,
    targets: Vec<String>,
    props: Props,
    query: &str,
) -> Result<Frame, KustoError> {
    if format != "parquet" && format != "csv" {
        return Err(KustoError::bad_request(format!("kusto-sim exports only parquet and csv, not '{format}'")));
    }
    if format == "csv" && compressed {
        return Err(KustoError::bad_request("kusto-sim does not write compressed (gzip) CSV; use parquet or drop 'compressed'"));
    }
    let precision = match props.get("parquetdatetimeprecision") {
        Some(p) => DatetimePrecision::parse(p)
            .ok_or_else(|| KustoError::bad_request(format!("parquetDatetimePrecision '{p}' is not millisecond or microsecond")))?,
        None => DatetimePrecision::Microsecond,
    };
    let row_group_size = props.get("parquetrowgroupsize").and_then(|v| v.parse().ok()).unwrap_or(100_000usize);
    let prefix = props.get("nameprefix").cloned().unwrap_or_else(|| "export".into());
    let distribution = props.get("distribution").map(|d| d.to_ascii_lowercase()).unwrap_or_else(|| "per_shard".into());

    // Admission, query and file plan under the lock; writing happens without it.
    let (frame_out, files, blobs, faults, op, delay) = {
        let mut s = lock(state);
        let running = s.operations.in_progress(EXPORT_OPERATION);
        if running >= s.config.export_capacity {
            s.throttled_exports += 1;
            return Err(KustoError::throttled(format!(
                "The control command was aborted due to throttling. Retrying after some backoff might succeed. CommandType: 'DataExport', Capacity: {}, Origin: 'CapacityPolicy/Export'",
                s.config.export_capacity
            )));
        }
        let result = {
            let catalog = s.catalog(db);
            let env = Env::new(&catalog, s.now(), s.cursor_current());
            run_query(query, &env)?
        };
        let faults = s.faults.take(CommandKind::Export, false);
        let now = s.now();
        // A sync export also holds a capacity slot while it writes.
        let op = s.operations.start(EXPORT_OPERATION, db, now);
        let mut delay = if is_async { s.config.async_duration } else { std::time::Duration::ZERO };
        for f in &faults {
            if let Fault::Slow(d) = f {
                delay += *d;
            }
        }
        let files = plan_files(&result, &targets, &prefix, &distribution, op, format, compressed);
        (result, files, s.blobs.clone(), faults, op, delay)
    };
    let columns = frame_out.columns.clone();
    let work = {
        let state = state.clone();
        let format = format.to_string();
        async move {
            tokio::time::sleep(delay).await;
            let outcome = write_files(&*blobs, &columns, files, &format, precision, row_group_size, &faults).await;
            let mut s = lock(&state);
            let now = s.now();
            let recorded = outcome.clone().map_err(|e| (e.detail.clone(), !e.permanent));
            s.operations.finish(op, now, recorded);
            if faults.contains(&Fault::ExpireOperation) {
                s.operations.remove(op);
            }
            outcome
        }
    };
    if is_async {
        tokio::spawn(work);
        return Ok(frame(&[("OperationId", T::Guid)], vec![vec![V::Guid(op)]]));
    }
    work.await
}

/// Splits the rows into files: one per source extent (`per_shard`, the default), one per
/// pretend node (`per_node`: two), or one (`single`); files go round-robin over the targets.
fn plan_files(result: &Frame, targets: &[String], prefix: &str, distribution: &str, op: Uuid, format: &str, compressed: bool) -> Vec<ExportFile> {
    let mut groups: Vec<Vec<Vec<V>>> = Vec::new();
    match distribution {
        "single" => groups.push(result.values()),
        "per_node" => {
            let mut a = Vec::new();
            let mut b = Vec::new();
            for (i, r) in result.rows.iter().enumerate() {
                if i % 2 == 0 { a.push(r.values.clone()) } else { b.push(r.values.clone()) }
            }
            groups.push(a);
            if !b.is_empty() {
                groups.push(b);
            }
        }
        _ => {
            let mut order: Vec<Option<Uuid>> = Vec::new();
            let mut by_extent: Vec<Vec<Vec<V>>> = Vec::new();
            for r in &result.rows {
                let key = r.meta.as_ref().map(|m| m.extent_id);
                let i = match order.iter().position(|k| *k == key) {
                    Some(i) => i,
                    None => {
                        order.push(key);
                        by_extent.push(Vec::new());
                        order.len() - 1
                    }
                };
                by_extent[i].push(r.values.clone());
            }
            groups = by_extent;
        }
    }
    if groups.is_empty() {
        // An empty result still writes one (empty) file, so readers see the schema.
        groups.push(Vec::new());
    }
    let ext = match (format, compressed) {
        ("parquet", true) => "snappy.parquet",
        ("parquet", false) => "parquet",
        _ => "csv",
    };
    let short = op.simple().to_string();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, rows)| ExportFile {
            url: file_url(&targets[i % targets.len()], &format!("{prefix}_{}_{short}.{ext}", i + 1)),
            rows,
        })
        .collect()
}

async fn write_files(
    blobs: &dyn BlobStore,
    columns: &[Column],
    files: Vec<ExportFile>,
    format: &str,
    precision: DatetimePrecision,
    row_group_size: usize,
    faults: &[Fault],
) -> Result<Frame, KustoError> {
    let total = files.len();
    if faults.contains(&Fault::ExportPartialFailure) {
        // Write some artifacts (half of a lone file), then fail: what was written stays
        // behind, as with a failed Kusto export.
        let keep = (total / 2).max(1);
        for f in files.iter().take(keep) {
            let rows = if total == 1 { &f.rows[..f.rows.len() / 2] } else { &f.rows[..] };
            let data = encode(columns, rows, format, precision, row_group_size)?;
            blobs.put(&f.url, data).await.map_err(|e| KustoError::transient(500, e))?;
        }
        return Err(KustoError::transient(
            500,
            format!("Export failed after writing {keep} of {total} artifacts (injected fault): partial artifacts may remain in storage"),
        ));
    }
    let mut rows_out = Vec::new();
    for f in files {
        let data = encode(columns, &f.rows, format, precision, row_group_size)?;
        let size = data.len() as i64;
        blobs
            .put(&f.url, data)
            .await
            .map_err(|e| KustoError::transient(500, format!("Export failed writing to storage: {e}")))?;
        rows_out.push(vec![V::String(without_secret(&f.url).to_string()), V::Long(f.rows.len() as i64), V::Long(size)]);
    }
    Ok(frame(&[("Path", T::String), ("NumRecords", T::Long), ("SizeInBytes", T::Long)], rows_out))
}

fn encode(columns: &[Column], rows: &[Vec<V>], format: &str, precision: DatetimePrecision, row_group_size: usize) -> Result<Vec<u8>, KustoError> {
    match format {
        "parquet" => write_parquet(columns, rows, precision, row_group_size).map_err(|e| KustoError::internal(format!("writing Parquet failed: {e}"))),
        _ => Ok(write_csv(rows).into_bytes()),
    }
}

async fn ingest(state: &Shared, db: &str, is_async: bool, table: String, sources: Vec<String>, props: Props) -> Result<Frame, KustoError> {
    let format = props.get("format").map(|f| f.to_ascii_lowercase()).unwrap_or_else(|| "csv".into());
    if format != "parquet" && format != "csv" {
        return Err(KustoError::bad_request(format!("kusto-sim ingests only parquet and csv, not '{format}'")));
    }
    super::data::ingest_props(&props)?;
    let (columns, blobs, faults, op, delay, lenient) = {
        let mut s = lock(state);
        let columns = s.table(db, &table)?.columns.clone();
        let faults = s.faults.take(CommandKind::Ingest, false);
        let now = s.now();
        let op = if is_async { Some(s.operations.start("DataIngestPull", db, now)) } else { None };
        let mut delay = if is_async { s.config.async_duration } else { std::time::Duration::ZERO };
        for f in &faults {
            if let Fault::Slow(d) = f {
                delay += *d;
            }
        }
        (columns, s.blobs.clone(), faults, op, delay, s.config.lenient_parquet)
    };
    let db = db.to_string();
    let work = {
        let state = state.clone();
        async move {
            tokio::time::sleep(delay).await;
            let outcome = ingest_blobs(&state, &db, &table, &*blobs, &sources, &columns, &format, &props, &faults, lenient).await;
            if let Some(op) = op {
                let mut s = lock(&state);
                let now = s.now();
                s.operations.finish(op, now, outcome.clone().map_err(|e| (e.detail.clone(), !e.permanent)));
                if faults.contains(&Fault::ExpireOperation) {
                    s.operations.remove(op);
                }
            }
            outcome
        }
    };
    match op {
        Some(op) => {
            tokio::spawn(work);
            Ok(frame(&[("OperationId", T::Guid)], vec![vec![V::Guid(op)]]))
        }
        None => work.await,
    }
}

/// Downloads and parses every blob, then adds all their rows as one extent.
#[allow(clippy::too_many_arguments)]
pub async fn ingest_blobs(
    state: &Shared,
    db: &str,
    table: &str,
    blobs: &dyn BlobStore,
    sources: &[String],
    columns: &[Column],
    format: &str,
    props: &Props,
    faults: &[Fault],
    lenient: bool,
) -> Result<Frame, KustoError> {
    let mut rows = Vec::new();
    for url in sources {
        let data = blobs
            .get(url)
            .await
            .map_err(|e| KustoError::transient(500, format!("Ingestion failed to download a blob: {e}")))?;
        let mut parsed = match format {
            "parquet" => read_parquet(data, columns, lenient)
                .map_err(|e| KustoError::bad_request(format!("Ingestion of {} failed: {e}", without_secret(url))))?,
            _ => {
                let text = String::from_utf8(data)
                    .map_err(|_| KustoError::bad_request(format!("{} is not UTF-8 text", without_secret(url))))?;
                parse_csv_rows(&text, columns)?
            }
        };
        rows.append(&mut parsed);
    }
    let mut s = lock(state);
    ingest_rows(&mut s, db, table, rows, props, faults)
}

/// Shared handle type for the blob store kept in the cluster state.
pub type Blobs = Arc<dyn BlobStore>;

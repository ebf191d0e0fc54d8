//! Commands that touch blob storage: `.export ... to parquet|csv` and `.ingest into table T
//! (blobs)`. Both really write or read files through the SAS URLs they are given.

use std::sync::Arc;

use uuid::Uuid;

use super::data::ingest_rows;
use super::parse::{Command, Props};
use super::{frame, lock, Shared};
use crate::blob::{file_url, without_secret, BlobStore};
use crate::faults::{CommandKind, Fault};
use crate::kql::eval::{run_query, Env, Frame};
use crate::model::table::Column;
use crate::model::value::{ScalarType as T, Value as V};
use crate::csv_io;
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
    let compression = props.get("compressiontype").map(|c| c.to_ascii_lowercase()).unwrap_or_else(|| "gzip".into());
    if compressed && format == "csv" && compression != "gzip" {
        return Err(KustoError::bad_request(format!("compressionType '{compression}' does not apply to csv: only gzip does")));
    }
    // `none` (the documented default): no header line, so every record is data.
    let headers = props.get("includeheaders").map(|h| h.to_ascii_lowercase()).unwrap_or_else(|| "none".into());
    if !["none", "all", "firstfile"].contains(&headers.as_str()) {
        return Err(KustoError::bad_request(format!("includeHeaders '{headers}' is not none, all or firstFile")));
    }
    let encoding = CsvEncoding { gzip: compressed, headers };
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
        let mut delay = if is_async { s.next_duration(CommandKind::Export) } else { std::time::Duration::ZERO };
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
            let outcome = write_files(&*blobs, &columns, files, &format, precision, row_group_size, &encoding, &faults).await;
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
        (_, true) => "csv.gz",
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

/// How CSV artifacts are written: gzip (`compressed`) and header lines (`includeHeaders`).
struct CsvEncoding {
    gzip: bool,
    headers: String,
}

impl CsvEncoding {
    fn header_for(&self, file_index: usize) -> bool {
        self.headers == "all" || (self.headers == "firstfile" && file_index == 0)
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_files(
    blobs: &dyn BlobStore,
    columns: &[Column],
    files: Vec<ExportFile>,
    format: &str,
    precision: DatetimePrecision,
    row_group_size: usize,
    csv: &CsvEncoding,
    faults: &[Fault],
) -> Result<Frame, KustoError> {
    let total = files.len();
    if faults.contains(&Fault::ExportPartialFailure) {
        // Write some artifacts (half of a lone file), then fail: what was written stays
        // behind, as with a failed Kusto export.
        let keep = (total / 2).max(1);
        for (i, f) in files.iter().take(keep).enumerate() {
            let rows = if total == 1 { &f.rows[..f.rows.len() / 2] } else { &f.rows[..] };
            let data = encode(columns, rows, format, precision, row_group_size, csv, i)?;
            blobs.put(&f.url, data).await.map_err(|e| KustoError::transient(500, e))?;
        }
        return Err(KustoError::transient(
            500,
            format!("Export failed after writing {keep} of {total} artifacts (injected fault): partial artifacts may remain in storage"),
        ));
    }
    let mut rows_out = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let data = encode(columns, &f.rows, format, precision, row_group_size, csv, i)?;
        let size = data.len() as i64;
        blobs
            .put(&f.url, data)
            .await
            .map_err(|e| KustoError::transient(500, format!("Export failed writing to storage: {e}")))?;
        rows_out.push(vec![V::String(without_secret(&f.url).to_string()), V::Long(f.rows.len() as i64), V::Long(size)]);
    }
    Ok(frame(&[("Path", T::String), ("NumRecords", T::Long), ("SizeInBytes", T::Long)], rows_out))
}

#[allow(clippy::too_many_arguments)]
fn encode(columns: &[Column], rows: &[Vec<V>], format: &str, precision: DatetimePrecision, row_group_size: usize, csv: &CsvEncoding, file_index: usize) -> Result<Vec<u8>, KustoError> {
    match format {
        "parquet" => write_parquet(columns, rows, precision, row_group_size).map_err(|e| KustoError::internal(format!("writing Parquet failed: {e}"))),
        _ => {
            let text = csv_io::write_csv(columns, rows, csv.header_for(file_index)).into_bytes();
            Ok(if csv.gzip { csv_io::gzip(&text) } else { text })
        }
    }
}

async fn ingest(state: &Shared, db: &str, is_async: bool, table: String, sources: Vec<String>, props: Props) -> Result<Frame, KustoError> {
    let format = props.get("format").map(|f| f.to_ascii_lowercase()).unwrap_or_else(|| "csv".into());
    if format != "parquet" && format != "csv" {
        return Err(KustoError::bad_request(format!("kusto-sim ingests only parquet and csv, not '{format}'")));
    }
    super::data::ingest_props(&props)?;
    let (columns, blobs, faults, op, delay) = {
        let mut s = lock(state);
        let columns = s.table(db, &table)?.columns.clone();
        let faults = s.faults.take(CommandKind::Ingest, false);
        let now = s.now();
        let op = if is_async { Some(s.operations.start("DataIngestPull", db, now)) } else { None };
        let mut delay = if is_async { s.next_duration(CommandKind::Ingest) } else { std::time::Duration::ZERO };
        for f in &faults {
            if let Fault::Slow(d) = f {
                delay += *d;
            }
        }
        (columns, s.blobs.clone(), faults, op, delay)
    };
    let db = db.to_string();
    let work = {
        let state = state.clone();
        async move {
            tokio::time::sleep(delay).await;
            let outcome = ingest_blobs(&state, &db, &table, &*blobs, &sources, &columns, &format, &props, &faults).await;
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
) -> Result<Frame, KustoError> {
    let mapping = match props.get("ingestionmapping") {
        None => None,
        Some(_) if format == "parquet" => {
            return Err(KustoError::bad_request("kusto-sim takes an ingestionMapping for csv only; Parquet maps columns by name"))
        }
        Some(json) => Some(csv_io::parse_mapping(json, columns).map_err(|e| KustoError::bad_request(format!("Invalid ingestionMapping: {e}")))?),
    };
    if props.contains_key("ingestionmappingreference") {
        return Err(KustoError::bad_request("kusto-sim does not keep named ingestion mappings: pass ingestionMapping"));
    }
    let mut rows = Vec::new();
    for url in sources {
        let data = blobs
            .get(url)
            .await
            .map_err(|e| KustoError::transient(500, format!("Ingestion failed to download a blob: {e}")))?;
        let failed = |e: String| KustoError::bad_request(format!("Ingestion of {} failed: {e}", without_secret(url)));
        // Compression is known by the blob's extension, as Kusto knows it.
        let data = if csv_io::is_gzip_name(url) { csv_io::gunzip(&data).map_err(failed)? } else { data };
        let mut parsed = match format {
            "parquet" => read_parquet(data, columns).map_err(failed)?,
            _ => {
                let text = String::from_utf8(data).map_err(|_| failed("not UTF-8 text".into()))?;
                csv_io::read_csv(&text, columns, mapping.as_deref()).map_err(failed)?
            }
        };
        rows.append(&mut parsed);
    }
    let mut s = lock(state);
    ingest_rows(&mut s, db, table, rows, props, faults)
}

/// Shared handle type for the blob store kept in the cluster state.
pub type Blobs = Arc<dyn BlobStore>;

//! Typed rows of the answers the copy reads. Each reader names the columns it needs, so a
//! changed answer fails here, loudly, instead of deep in the engine.

use time::OffsetDateTime;
use uuid::Uuid;

use super::error::KustoError;
use super::response::{DataSet, Row};
use super::value::KustoValue;

/// `print Cursor=cursor_current()`.
pub fn cursor(answer: &DataSet) -> Result<String, KustoError> {
    let table = answer.primary()?;
    let row = table
        .rows()
        .next()
        .ok_or_else(|| KustoError::protocol("cursor query answered no row"))?;
    Ok(row.required("Cursor", Row::string)?.to_string())
}

/// The single OperationId row of an async command (`.export async`, `.move async`, ...).
pub fn operation_id(answer: &DataSet) -> Result<Uuid, KustoError> {
    let table = answer.primary()?;
    let row = table
        .rows()
        .next()
        .ok_or_else(|| KustoError::protocol("async command answered no OperationId"))?;
    row.required("OperationId", Row::guid)
}

/// State of an async operation, as `.show operations` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationState {
    InProgress,
    Scheduled,
    Throttled,
    Completed,
    PartiallySucceeded,
    Failed,
    Abandoned,
    BadInput,
    Canceled,
    Skipped,
    Other(String),
}

impl OperationState {
    pub fn from_text(s: &str) -> OperationState {
        match s {
            "InProgress" => OperationState::InProgress,
            "Scheduled" => OperationState::Scheduled,
            "Throttled" => OperationState::Throttled,
            "Completed" => OperationState::Completed,
            "PartiallySucceeded" => OperationState::PartiallySucceeded,
            "Failed" => OperationState::Failed,
            "Abandoned" => OperationState::Abandoned,
            "BadInput" => OperationState::BadInput,
            "Canceled" | "Cancelled" => OperationState::Canceled,
            "Skipped" => OperationState::Skipped,
            other => OperationState::Other(other.to_string()),
        }
    }

    /// Still running or waiting to run.
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            // `Throttled` is final: the operation was aborted for throttling (kusto.md).
            OperationState::InProgress | OperationState::Scheduled
        )
    }
}

/// One row of `.show operations`.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: Uuid,
    pub operation: Option<String>,
    pub state: OperationState,
    pub status: Option<String>,
    pub started_on: Option<OffsetDateTime>,
    pub last_updated_on: Option<OffsetDateTime>,
    /// Kusto's hint that a failed operation is worth a new attempt.
    pub should_retry: Option<bool>,
}

/// `.show operations (ids)`: one entry per operation still remembered (about 6 hours).
/// An operation can appear more than once while it changes state; the latest row wins.
pub fn operations(answer: &DataSet) -> Result<Vec<Operation>, KustoError> {
    let table = answer.primary()?;
    let has_should_retry = table.column_index("ShouldRetry").is_some();
    let mut out: Vec<Operation> = Vec::new();
    for row in table.rows() {
        let op = Operation {
            id: row.required("OperationId", Row::guid)?,
            operation: row.string("Operation")?.map(str::to_string),
            state: OperationState::from_text(row.required("State", Row::string)?),
            status: row.string("Status")?.map(str::to_string),
            started_on: row.datetime("StartedOn")?,
            last_updated_on: row.datetime("LastUpdatedOn")?,
            should_retry: if has_should_retry { loose_bool(row.get("ShouldRetry")?) } else { None },
        };
        match out.iter_mut().find(|o| o.id == op.id) {
            Some(existing) if existing.last_updated_on <= op.last_updated_on => *existing = op,
            Some(_) => {}
            None => out.push(op),
        }
    }
    Ok(out)
}

/// An undocumented column: read whatever form it comes in, and never fail on it.
fn loose_bool(v: &KustoValue) -> Option<bool> {
    match v {
        KustoValue::Bool(b) => Some(*b),
        KustoValue::Int(_) | KustoValue::Long(_) => v.as_i64().map(|n| n != 0),
        KustoValue::String(s) => s.trim().to_ascii_lowercase().parse().ok(),
        _ => None,
    }
}

/// One blob written by an export (`.show operation <id> details`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedBlob {
    /// Blob URL without SAS.
    pub path: String,
    pub records: i64,
    pub size_bytes: Option<i64>,
}

pub fn exported_blobs(answer: &DataSet) -> Result<Vec<ExportedBlob>, KustoError> {
    let table = answer.primary()?;
    let has_size = table.column_index("SizeInBytes").is_some();
    table
        .rows()
        .map(|row| {
            Ok(ExportedBlob {
                path: row.required("Path", Row::string)?.to_string(),
                records: row.required("NumRecords", Row::long)?,
                size_bytes: if has_size { row.long("SizeInBytes")? } else { None },
            })
        })
        .collect()
}

/// One extent of `.show table T extents`.
#[derive(Debug, Clone, PartialEq)]
pub struct Extent {
    pub id: Uuid,
    pub table: Option<String>,
    pub row_count: i64,
    pub min_created_on: Option<OffsetDateTime>,
    pub max_created_on: Option<OffsetDateTime>,
    pub tags: Vec<String>,
}

impl Extent {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

pub fn extents(answer: &DataSet) -> Result<Vec<Extent>, KustoError> {
    let table = answer.primary()?;
    let has_table = table.column_index("TableName").is_some();
    table
        .rows()
        .map(|row| {
            let tags = row.string("Tags")?.unwrap_or_default();
            Ok(Extent {
                id: row.required("ExtentId", Row::guid)?,
                table: if has_table { row.string("TableName")?.map(str::to_string) } else { None },
                row_count: row.required("RowCount", Row::long)?,
                min_created_on: row.datetime("MinCreatedOn")?,
                max_created_on: row.datetime("MaxCreatedOn")?,
                // Kusto separates tags with a line break.
                tags: tags
                    .split(['\r', '\n'])
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// One row of `.show capacity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub resource: String,
    pub total: i64,
    pub consumed: i64,
    pub remaining: i64,
}

pub fn capacities(answer: &DataSet) -> Result<Vec<Capacity>, KustoError> {
    answer
        .primary()?
        .rows()
        .map(|row| {
            Ok(Capacity {
                resource: row.required("Resource", Row::string)?.to_string(),
                total: row.required("Total", Row::long)?,
                consumed: row.required("Consumed", Row::long)?,
                remaining: row.required("Remaining", Row::long)?,
            })
        })
        .collect()
}

/// The `SoftDeletePeriod` of a `.show ... policy retention` answer: `Ok(None)` when the entity
/// has no policy of its own (a null `Policy`), or its policy sets no period. The policy is a
/// JSON string, `{"SoftDeletePeriod": "365.00:00:00", "Recoverability": "Enabled"}`
/// (management/retention-policy).
pub fn soft_delete_period(answer: &DataSet) -> Result<Option<time::Duration>, KustoError> {
    let table = answer.primary()?;
    let Some(row) = table.rows().next() else { return Ok(None) };
    let policy: Option<serde_json::Value> = match row.get("Policy")? {
        KustoValue::Null => None,
        KustoValue::String(text) if text.trim().is_empty() || text.trim() == "null" => None,
        KustoValue::String(text) => Some(serde_json::from_str(text).map_err(|e| KustoError::protocol(format!("retention policy is not JSON: {e}")))?),
        KustoValue::Dynamic(json) => Some(json.clone()),
        other => return Err(KustoError::protocol(format!("retention policy of an unexpected type: {other:?}"))),
    };
    let Some(period) = policy.as_ref().and_then(|p| p.get("SoftDeletePeriod")).filter(|v| !v.is_null()) else { return Ok(None) };
    let text = period.as_str().ok_or_else(|| KustoError::protocol(format!("SoftDeletePeriod is not a timespan: {period}")))?;
    crate::kusto::parse_timespan(text).map(Some).ok_or_else(|| KustoError::protocol(format!("SoftDeletePeriod '{text}' is not a timespan")))
}

/// An enabled update policy of `table` whose source is `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePolicy {
    pub table: String,
    pub source: String,
    pub query: String,
}

/// The enabled update policies of `.show table * policy update`. `EntityName` reads
/// `[database].[table]`.
pub fn update_policies(answer: &DataSet) -> Result<Vec<UpdatePolicy>, KustoError> {
    let mut out = Vec::new();
    for row in answer.primary()?.rows() {
        let entity = row.string("EntityName")?.unwrap_or_default();
        let table = entity.rsplit("].[").next().unwrap_or(entity).trim_matches(|c| c == '[' || c == ']').to_string();
        let policies: serde_json::Value = match row.get("Policy")? {
            KustoValue::String(text) if !text.trim().is_empty() && text.trim() != "null" => {
                serde_json::from_str(text).map_err(|e| KustoError::protocol(format!("update policy of {table} is not JSON: {e}")))?
            }
            KustoValue::Dynamic(json) => json.clone(),
            _ => continue,
        };
        for p in policies.as_array().into_iter().flatten() {
            if p.get("IsEnabled").and_then(|v| v.as_bool()).unwrap_or(true) {
                let field = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
                out.push(UpdatePolicy { table: table.clone(), source: field("Source"), query: field("Query") });
            }
        }
    }
    Ok(out)
}

/// The enabled materialized views of `.show materialized-views`: (name, source table).
pub fn materialized_views(answer: &DataSet) -> Result<Vec<(String, String)>, KustoError> {
    let mut out = Vec::new();
    for row in answer.primary()?.rows() {
        if row.bool("IsEnabled")?.unwrap_or(true) {
            out.push((row.required("Name", Row::string)?.to_string(), row.required("SourceTable", Row::string)?.to_string()));
        }
    }
    Ok(out)
}

/// Table names of `.show tables`.
pub fn table_names(answer: &DataSet) -> Result<Vec<String>, KustoError> {
    answer
        .primary()?
        .rows()
        .map(|row| Ok(row.required("TableName", Row::string)?.to_string()))
        .collect()
}

/// One row of `row_counts_by_ingestion_bin`.
#[derive(Debug, Clone, PartialEq)]
pub struct RowCountBin {
    /// `None` for rows without an ingestion time: they cannot be windowed, report them.
    pub bin: Option<OffsetDateTime>,
    pub extent_id: Option<String>,
    pub rows: i64,
    pub min_ingestion_time: Option<OffsetDateTime>,
    pub max_ingestion_time: Option<OffsetDateTime>,
}

pub fn row_count_bins(answer: &DataSet) -> Result<Vec<RowCountBin>, KustoError> {
    answer
        .primary()?
        .rows()
        .map(|row| {
            Ok(RowCountBin {
                bin: row.datetime("IngestionTimeBin")?,
                extent_id: row.string("ExtentId")?.map(str::to_string),
                rows: row.required("RowCount", Row::long)?,
                min_ingestion_time: row.datetime("MinIngestionTime")?,
                max_ingestion_time: row.datetime("MaxIngestionTime")?,
            })
        })
        .collect()
}

/// The `Count` of a `| count` query.
pub fn count(answer: &DataSet) -> Result<i64, KustoError> {
    let table = answer.primary()?;
    let row = table
        .rows()
        .next()
        .ok_or_else(|| KustoError::protocol("count answered no row"))?;
    row.required("Count", Row::long)
}

/// The answer of `window_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSummary {
    pub rows: i64,
    pub rows_without_ingestion_time: i64,
    pub first: Option<OffsetDateTime>,
    pub last: Option<OffsetDateTime>,
}

pub fn window_summary(answer: &DataSet) -> Result<WindowSummary, KustoError> {
    let table = answer.primary()?;
    let row = table.rows().next().ok_or_else(|| KustoError::protocol("window summary answered no row"))?;
    Ok(WindowSummary {
        rows: row.required("Rows", Row::long)?,
        rows_without_ingestion_time: row.long("NoIngestionTime")?.unwrap_or(0),
        first: row.datetime("First")?,
        last: row.datetime("Last")?,
    })
}

/// Result rows of `.move extents` and `.drop extent tags`: the new extent ids, and the
/// details of the rows that failed (`ResultExtentId` is `Failed` on failure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentRewrite {
    pub results: Vec<Uuid>,
    pub failed: Vec<String>,
}

pub fn extent_rewrites(answer: &DataSet) -> Result<ExtentRewrite, KustoError> {
    let table = answer.primary()?;
    let mut out = ExtentRewrite::default();
    for row in table.rows() {
        let original = row.string("OriginalExtentId")?.unwrap_or_default().to_owned();
        let result = row.string("ResultExtentId")?.unwrap_or_default();
        match Uuid::parse_str(result.trim()) {
            Ok(id) => out.results.push(id),
            Err(_) => {
                let details = row.string("Details")?.unwrap_or_default();
                out.failed.push(format!("extent {original}: {result} {details}").trim().to_owned());
            }
        }
    }
    Ok(out)
}

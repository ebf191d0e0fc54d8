//! Parsing of v1 (`/v1/rest/mgmt`) and v2 (`/v2/rest/query`) answers into typed tables, and
//! of the OneApiErrors that Kusto sends in error bodies and inside 200 answers.

use serde_json::Value as Json;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::error::{ErrorKind, KustoError};
use super::value::{KustoType, KustoValue};

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub kind: KustoType,
}

/// One result table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    /// v2 `TableKind` (`PrimaryResult`, `QueryProperties`, `QueryCompletionInformation`);
    /// `None` for v1 tables.
    pub kind: Option<String>,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<KustoValue>>,
}

impl Table {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(move |values| Row { table: self, values })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A row with typed accessors by column name. Accessors return `Ok(None)` for null and an
/// error when the column is missing or has another type, so that a schema change in Kusto's
/// answers is loud rather than silently read as null.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    table: &'a Table,
    values: &'a [KustoValue],
}

impl<'a> Row<'a> {
    pub fn get(&self, column: &str) -> Result<&'a KustoValue, KustoError> {
        let i = self.table.column_index(column).ok_or_else(|| {
            KustoError::protocol(format!(
                "table {} has no column {column}",
                self.table.name
            ))
        })?;
        self.values
            .get(i)
            .ok_or_else(|| KustoError::protocol(format!("row too short for column {column}")))
    }

    pub fn values(&self) -> &'a [KustoValue] {
        self.values
    }

    fn typed<T>(
        &self,
        column: &str,
        want: &str,
        read: impl Fn(&'a KustoValue) -> Option<T>,
    ) -> Result<Option<T>, KustoError> {
        let v = self.get(column)?;
        if v.is_null() {
            return Ok(None);
        }
        read(v).map(Some).ok_or_else(|| {
            KustoError::protocol(format!("column {column} is not a {want}: {v:?}"))
        })
    }

    pub fn string(&self, column: &str) -> Result<Option<&'a str>, KustoError> {
        self.typed(column, "string", |v| v.as_str())
    }

    pub fn long(&self, column: &str) -> Result<Option<i64>, KustoError> {
        self.typed(column, "long", |v| v.as_i64())
    }

    pub fn real(&self, column: &str) -> Result<Option<f64>, KustoError> {
        self.typed(column, "real", |v| v.as_f64())
    }

    pub fn bool(&self, column: &str) -> Result<Option<bool>, KustoError> {
        self.typed(column, "bool", |v| v.as_bool())
    }

    pub fn datetime(&self, column: &str) -> Result<Option<OffsetDateTime>, KustoError> {
        self.typed(column, "datetime", |v| v.as_datetime())
    }

    pub fn timespan(&self, column: &str) -> Result<Option<Duration>, KustoError> {
        self.typed(column, "timespan", |v| v.as_timespan())
    }

    pub fn guid(&self, column: &str) -> Result<Option<Uuid>, KustoError> {
        self.typed(column, "guid", |v| v.as_guid())
    }

    pub fn dynamic(&self, column: &str) -> Result<Option<Json>, KustoError> {
        self.typed(column, "dynamic", |v| v.as_json())
    }

    /// A column that must not be null.
    pub fn required<T>(
        &self,
        column: &str,
        read: impl Fn(&Self, &str) -> Result<Option<T>, KustoError>,
    ) -> Result<T, KustoError> {
        read(self, column)?
            .ok_or_else(|| KustoError::protocol(format!("column {column} is null")))
    }
}

/// All tables of one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSet {
    pub tables: Vec<Table>,
}

impl DataSet {
    /// The first primary result: the first table of a v1 answer, the first `PrimaryResult`
    /// of a v2 answer.
    pub fn primary(&self) -> Result<&Table, KustoError> {
        self.tables
            .iter()
            .find(|t| t.kind.as_deref().is_none_or(|k| k == "PrimaryResult"))
            .ok_or_else(|| KustoError::protocol("the answer has no primary result"))
    }

    pub fn primary_results(&self) -> impl Iterator<Item = &Table> {
        self.tables
            .iter()
            .filter(|t| t.kind.as_deref().is_none_or(|k| k == "PrimaryResult"))
    }
}

fn parse_table(
    name: String,
    kind: Option<String>,
    columns_json: &Json,
    rows_json: Option<&Json>,
) -> Result<Table, KustoError> {
    let columns = columns_json
        .as_array()
        .ok_or_else(|| KustoError::protocol("Columns is not an array"))?
        .iter()
        .map(|c| {
            let name = c
                .get("ColumnName")
                .and_then(Json::as_str)
                .ok_or_else(|| KustoError::protocol("column without ColumnName"))?;
            // v1 carries both DataType (CLR name) and, in newer answers, ColumnType.
            let type_name = c
                .get("ColumnType")
                .and_then(Json::as_str)
                .or_else(|| c.get("DataType").and_then(Json::as_str))
                .ok_or_else(|| KustoError::protocol(format!("column {name} has no type")))?;
            let kind = KustoType::from_name(type_name).ok_or_else(|| {
                KustoError::protocol(format!("column {name} has unknown type {type_name}"))
            })?;
            Ok(Column { name: name.to_string(), kind })
        })
        .collect::<Result<Vec<_>, KustoError>>()?;
    let mut table = Table { name, kind, columns, rows: Vec::new() };
    if let Some(rows) = rows_json {
        append_rows(&mut table, rows)?;
    }
    Ok(table)
}

fn append_rows(table: &mut Table, rows: &Json) -> Result<(), KustoError> {
    let rows = rows
        .as_array()
        .ok_or_else(|| KustoError::protocol("Rows is not an array"))?;
    for row in rows {
        match row {
            Json::Array(cells) => {
                if cells.len() != table.columns.len() {
                    return Err(KustoError::protocol(format!(
                        "row of {} cells in table {} of {} columns",
                        cells.len(),
                        table.name,
                        table.columns.len()
                    )));
                }
                let values = cells
                    .iter()
                    .zip(&table.columns)
                    .map(|(cell, col)| KustoValue::decode(col.kind, cell))
                    .collect::<Result<Vec<_>, _>>()?;
                table.rows.push(values);
            }
            // A query that fails after it started streaming puts the error in place of a row.
            Json::Object(obj) => {
                return Err(obj
                    .get("OneApiErrors")
                    .and_then(first_one_api_error)
                    .unwrap_or_else(|| {
                        KustoError::new(ErrorKind::Query, "error row without OneApiErrors")
                    }));
            }
            _ => return Err(KustoError::protocol("row is neither an array nor an error")),
        }
    }
    Ok(())
}

/// Parses a v1 answer: `{"Tables": [{"TableName", "Columns", "Rows"}]}`.
pub fn parse_v1(body: &[u8]) -> Result<DataSet, KustoError> {
    let json: Json = serde_json::from_slice(body).map_err(|e| truncated_or_bad(body, e))?;
    // Old engines reported failures inside a 200 as a top-level Exceptions list.
    if let Some(exceptions) = json.get("Exceptions").and_then(Json::as_array) {
        if !exceptions.is_empty() {
            let text: Vec<String> = exceptions
                .iter()
                .map(|e| e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string()))
                .collect();
            return Err(KustoError::new(ErrorKind::Query, text.join("; ")));
        }
    }
    let tables = json
        .get("Tables")
        .and_then(Json::as_array)
        .ok_or_else(|| KustoError::protocol("v1 answer without Tables"))?;
    let tables = tables
        .iter()
        .map(|t| {
            let name = t.get("TableName").and_then(Json::as_str).unwrap_or_default();
            let columns = t
                .get("Columns")
                .ok_or_else(|| KustoError::protocol("table without Columns"))?;
            parse_table(name.to_string(), None, columns, Some(t.get("Rows").unwrap_or(&Json::Null)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DataSet { tables })
}

/// Parses a v2 answer: a JSON array of frames. Errors reported inside the answer (error rows,
/// `TableCompletion` or `DataSetCompletion` with `OneApiErrors`, `HasErrors`, `Cancelled`)
/// become a `KustoError` even though the HTTP status was 200.
pub fn parse_v2(body: &[u8]) -> Result<DataSet, KustoError> {
    let json: Json = serde_json::from_slice(body).map_err(|e| truncated_or_bad(body, e))?;
    let frames = json
        .as_array()
        .ok_or_else(|| KustoError::protocol("v2 answer is not an array of frames"))?;
    let mut tables: Vec<(Option<i64>, Table)> = Vec::new();
    let mut completed = false;
    for frame in frames {
        let frame_type = frame.get("FrameType").and_then(Json::as_str).unwrap_or_default();
        match frame_type {
            "DataSetHeader" => {}
            "DataTable" | "TableHeader" => {
                let id = frame.get("TableId").and_then(Json::as_i64);
                let name = frame.get("TableName").and_then(Json::as_str).unwrap_or_default();
                let kind = frame.get("TableKind").and_then(Json::as_str).map(str::to_string);
                let columns = frame
                    .get("Columns")
                    .ok_or_else(|| KustoError::protocol("table frame without Columns"))?;
                let rows = if frame_type == "DataTable" {
                    Some(frame.get("Rows").unwrap_or(&Json::Null))
                } else {
                    None
                };
                tables.push((id, parse_table(name.to_string(), kind, columns, rows)?));
            }
            // Progressive answers (only sent when asked for) split a table over fragments.
            "TableFragment" => {
                let id = frame.get("TableId").and_then(Json::as_i64);
                let table = tables
                    .iter_mut()
                    .rev()
                    .find(|(tid, _)| *tid == id)
                    .map(|(_, t)| t)
                    .ok_or_else(|| KustoError::protocol("fragment of an unknown table"))?;
                if frame.get("TableFragmentType").and_then(Json::as_str) == Some("DataReplace") {
                    table.rows.clear();
                }
                append_rows(table, frame.get("Rows").unwrap_or(&Json::Null))?;
            }
            "TableCompletion" | "TableProgress" => {
                if let Some(err) = frame.get("OneApiErrors").and_then(first_one_api_error) {
                    return Err(err);
                }
            }
            "DataSetCompletion" => {
                completed = true;
                let has_errors = frame.get("HasErrors").and_then(Json::as_bool) == Some(true);
                let cancelled = frame.get("Cancelled").and_then(Json::as_bool) == Some(true);
                if let Some(err) = frame.get("OneApiErrors").and_then(first_one_api_error) {
                    return Err(err);
                }
                if has_errors || cancelled {
                    let detail = completion_errors(&tables).unwrap_or_else(|| {
                        if cancelled { "the query was cancelled" } else { "the query reported errors" }
                            .to_string()
                    });
                    return Err(KustoError::new(ErrorKind::Query, detail));
                }
            }
            other => {
                return Err(KustoError::protocol(format!("unknown v2 frame type {other:?}")));
            }
        }
    }
    if !completed {
        // The stream ended early: the connection broke after the status line.
        return Err(KustoError::new(
            ErrorKind::ConnectionLost,
            "v2 answer ended without DataSetCompletion",
        ));
    }
    Ok(DataSet { tables: tables.into_iter().map(|(_, t)| t).collect() })
}

/// The error texts of `QueryCompletionInformation` rows with Level Error (2) or worse.
fn completion_errors(tables: &[(Option<i64>, Table)]) -> Option<String> {
    let (_, info) = tables
        .iter()
        .find(|(_, t)| t.kind.as_deref() == Some("QueryCompletionInformation"))?;
    let texts: Vec<String> = info
        .rows()
        .filter(|r| r.long("Level").ok().flatten().is_some_and(|l| l <= 2))
        .filter_map(|r| r.get("Payload").ok().and_then(|p| p.as_json()).map(|p| p.to_string()))
        .collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}

fn truncated_or_bad(body: &[u8], e: serde_json::Error) -> KustoError {
    if e.is_eof() {
        KustoError::new(ErrorKind::ConnectionLost, format!("answer cut short: {e}"))
    } else {
        let head: String = String::from_utf8_lossy(body).chars().take(200).collect();
        KustoError::protocol(format!("answer is not JSON ({e}): {head}"))
    }
}

fn first_one_api_error(errors: &Json) -> Option<KustoError> {
    errors.as_array()?.iter().find_map(one_api_error)
}

/// Reads `{"error": {"code", "message", "@type", "@message", "@context", "@permanent"}}`.
fn one_api_error(json: &Json) -> Option<KustoError> {
    let e = json.get("error")?;
    let s = |k: &str| e.get(k).and_then(Json::as_str).map(str::to_string);
    let context = e.get("@context");
    let ctx = |k: &str| context.and_then(|c| c.get(k)).and_then(Json::as_str).map(str::to_string);
    // `@message` carries the detail; `message` is often a generic sentence.
    let message = match (s("message"), s("@message")) {
        (Some(m), Some(d)) if m != d => format!("{m} {d}"),
        (m, d) => d.or(m).unwrap_or_else(|| "unknown Kusto error".to_string()),
    };
    Some(KustoError {
        kind: ErrorKind::Query,
        status: None,
        code: s("code"),
        message,
        activity_id: ctx("activityId"),
        client_request_id: ctx("clientRequestId"),
        permanent: e.get("@permanent").and_then(Json::as_bool),
        retry_after: None,
    })
}

/// Parses an error body (`{"error": {...}}`, or a bare OneApiErrors list); `None` when the body
/// is not in a documented error format.
pub fn parse_error_body(body: &[u8]) -> Option<KustoError> {
    let json: Json = serde_json::from_slice(body).ok()?;
    if json.get("error").is_some() {
        return one_api_error(&json);
    }
    if let Some(list) = json.get("OneApiErrors") {
        return first_one_api_error(list);
    }
    None
}

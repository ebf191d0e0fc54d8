//! Commands that add, move or remove data: `.ingest inline`, `.set-or-append`/`.append`/
//! `.set`, `.move extents`, `.drop table T extent tags`, `.drop extents`.

use uuid::Uuid;

use super::parse::{Command, ExtentSelector, IngestMode, Props};
use super::{frame, lock, run_maybe_async, Shared};
use crate::faults::{CommandKind, Fault};
use crate::kql::eval::{run_query, Env, Frame};
use crate::kql::functions::convert;
use crate::model::cluster::ClusterState;
use crate::model::table::{Column, Extent, Table};
use crate::model::value::{parse_datetime, parse_text, parse_timespan, ScalarType as T, Value as V};
use crate::wire::error::KustoError;

pub fn run(state: &Shared, db: &str, cmd: Command, kind: CommandKind) -> Result<Frame, KustoError> {
    let db_owned = db.to_string();
    match cmd {
        Command::IngestInline { table, props, data } => run_maybe_async(state, db, "DataIngestPull", kind, false, move |s, faults| {
            let columns = s.table(&db_owned, &table)?.columns.clone();
            let rows = parse_csv_rows(&data, &columns)?;
            ingest_rows(s, &db_owned, &table, rows, &props, faults)
        }),
        Command::SetOrAppend { is_async, mode, table, props, query } => {
            run_maybe_async(state, db, "TableSetOrAppend", kind, is_async, move |s, faults| {
                let result = {
                    let catalog = s.catalog(&db_owned);
                    let env = Env::new(&catalog, s.now(), s.cursor_current());
                    run_query(&query, &env)?
                };
                let exists = s.database(&db_owned)?.tables.contains_key(&table);
                match (&mode, exists) {
                    (IngestMode::Append, false) => return Err(KustoError::not_found("Table", &table)),
                    (IngestMode::Set, true) => return Err(KustoError::entity_exists("Table", &table)),
                    (_, false) => {
                        let t = Table::new(table.clone(), result.columns.clone());
                        s.database_mut(&db_owned)?.tables.insert(table.clone(), t);
                    }
                    _ => {}
                }
                let target = s.table(&db_owned, &table)?.columns.clone();
                let rows = map_columns(&result, &target)?;
                ingest_rows(s, &db_owned, &table, rows, &props, faults)
            })
        }
        Command::MoveExtents { is_async, from, to, selector, props } => {
            // Resolve `<| .show ... extents` now: the move acts on the extents listed at submission.
            let (from, selector) = match selector {
                ExtentSelector::Command(c) => {
                    let listed = super::execute_command(state, db, &c)?;
                    let id_col = listed.column_index("ExtentId").ok_or_else(|| {
                        KustoError::bad_request("the command after '<|' must answer an ExtentId column")
                    })?;
                    let table_col = listed.column_index("TableName");
                    let ids: Vec<Uuid> = listed.rows.iter().filter_map(|r| match &r.values[id_col] {
                        V::Guid(g) => Some(*g),
                        V::String(s) => Uuid::parse_str(s).ok(),
                        _ => None,
                    }).collect();
                    let src = from.or_else(|| {
                        table_col.and_then(|c| listed.rows.first().map(|r| crate::kql::functions::to_text(&r.values[c])))
                    });
                    (src, ExtentSelector::Ids(ids))
                }
                other => (from, other),
            };
            let set_new = props.get("setnewingestiontime").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            run_maybe_async(state, db, "ExtentsMove", kind, is_async, move |s, faults| {
                let Some(from) = from else {
                    // Nothing listed: nothing to move.
                    return Ok(move_frame(vec![]));
                };
                let out = move_extents(s, &db_owned, &from, &to, &selector, set_new)?;
                if faults.contains(&Fault::MergeExtents) {
                    s.merge_extents(&db_owned, &to)?;
                }
                Ok(out)
            })
        }
        Command::DropExtentTags { table, tags, props } => {
            // extentCreatedOnFrom/To narrow the extents considered (by MinCreatedOn).
            let bound = |key: &str| -> Result<Option<i64>, KustoError> {
                match props.get(key) {
                    None => Ok(None),
                    Some(t) => parse_datetime(t).map(Some).ok_or_else(|| KustoError::bad_request(format!("{key} '{t}' is not a datetime"))),
                }
            };
            let (from, to) = (bound("extentcreatedonfrom")?, bound("extentcreatedonto")?);
            let mut s = lock(state);
            let t = s.table_mut(db, &table)?;
            let mut rows = Vec::new();
            for e in t.extents.iter_mut() {
                let in_range = from.is_none_or(|f| e.min_created_on >= f) && to.is_none_or(|t| e.min_created_on <= t);
                if in_range && e.tags.iter().any(|x| tags.contains(x)) {
                    let original = e.id;
                    e.tags.retain(|x| !tags.contains(x));
                    // Kusto rewrites the extent: it gets a new id.
                    e.id = crate::ids::new_uuid();
                    rows.push(vec![V::String(original.to_string()), V::String(e.id.to_string()), V::String(e.tags.join("\r\n")), V::String(String::new())]);
                }
            }
            Ok(frame(
                &[("OriginalExtentId", T::String), ("ResultExtentId", T::String), ("ResultExtentTags", T::String), ("Details", T::String)],
                rows,
            ))
        }
        Command::DropExtents { table, selector } => {
            let (table, ids) = match selector {
                ExtentSelector::Command(c) => {
                    let listed = super::execute_command(state, db, &c)?;
                    let id_col = listed.column_index("ExtentId").ok_or_else(|| KustoError::bad_request("the command after '<|' must answer an ExtentId column"))?;
                    let table_col = listed.column_index("TableName");
                    let ids: Vec<Uuid> = listed.rows.iter().filter_map(|r| if let V::Guid(g) = &r.values[id_col] { Some(*g) } else { None }).collect();
                    let t = table.or_else(|| table_col.and_then(|c| listed.rows.first().map(|r| crate::kql::functions::to_text(&r.values[c]))));
                    (t, Some(ids))
                }
                ExtentSelector::Ids(ids) => (table, Some(ids)),
                ExtentSelector::All => (table, None),
            };
            let mut s = lock(state);
            let tables: Vec<String> = match table {
                Some(t) => vec![t],
                None => s.database(db)?.tables.keys().cloned().collect(),
            };
            let mut rows = Vec::new();
            for name in tables {
                let t = s.table_mut(db, &name)?;
                let (dropped, kept): (Vec<Extent>, Vec<Extent>) =
                    t.extents.drain(..).partition(|e| ids.as_ref().is_none_or(|ids| ids.contains(&e.id)));
                t.extents = kept;
                for e in dropped {
                    rows.push(vec![V::Guid(e.id), V::String(name.clone()), V::DateTime(e.max_created_on)]);
                }
            }
            Ok(frame(&[("ExtentId", T::Guid), ("TableName", T::String), ("CreatedOn", T::DateTime)], rows))
        }
        _ => Err(KustoError::bad_request("unsupported command")),
    }
}

fn move_frame(rows: Vec<Vec<V>>) -> Frame {
    frame(&[("OriginalExtentId", T::String), ("ResultExtentId", T::String), ("Details", T::String)], rows)
}

/// Moves extents between tables, all or nothing.
fn move_extents(
    s: &mut ClusterState,
    db: &str,
    from: &str,
    to: &str,
    selector: &ExtentSelector,
    set_new_ingestion_time: bool,
) -> Result<Frame, KustoError> {
    let src = s.table(db, from)?;
    let dst = s.table(db, to)?;
    if src.columns != dst.columns {
        return Err(KustoError::bad_request(format!(
            "Cannot move extents from '{from}' to '{to}': the tables' schemas differ ('{}' vs '{}')",
            src.csl_schema(),
            dst.csl_schema()
        )));
    }
    let ids: Vec<Uuid> = match selector {
        ExtentSelector::All => src.extents.iter().map(|e| e.id).collect(),
        ExtentSelector::Ids(ids) => ids.clone(),
        ExtentSelector::Command(_) => unreachable!("resolved before"),
    };
    if let Some(missing) = ids.iter().find(|id| !src.extents.iter().any(|e| e.id == **id)) {
        return Err(KustoError::bad_request(format!(
            "Extent '{missing}' was not found in table '{from}': no extent was moved"
        )));
    }
    let ingestion = if set_new_ingestion_time { Some(s.next_ingestion_time()) } else { None };
    let src = s.table_mut(db, from)?;
    let (moving, staying): (Vec<Extent>, Vec<Extent>) = src.extents.drain(..).partition(|e| ids.contains(&e.id));
    src.extents = staying;
    let mut rows = Vec::new();
    let dst = s.table_mut(db, to)?;
    for mut e in moving {
        let original = e.id;
        e.id = crate::ids::new_uuid();
        if let Some(t) = ingestion {
            e.ingestion_times = vec![Some(t); e.rows.len()];
        }
        rows.push(vec![V::String(original.to_string()), V::String(e.id.to_string()), V::String(String::new())]);
        dst.extents.push(e);
    }
    Ok(move_frame(rows))
}

/// Ingestion properties shared by every ingestion path.
pub struct IngestProps {
    pub creation_time: Option<i64>,
    pub tags: Vec<String>,
    pub ingest_if_not_exists: Vec<String>,
}

pub fn ingest_props(props: &Props) -> Result<IngestProps, KustoError> {
    let creation_time = match props.get("creationtime") {
        Some(t) => Some(parse_datetime(t).ok_or_else(|| KustoError::bad_request(format!("creationTime '{t}' is not a valid datetime")))?),
        None => None,
    };
    let list = |key: &str| -> Result<Vec<String>, KustoError> {
        match props.get(key) {
            None => Ok(vec![]),
            Some(text) => serde_json::from_str::<Vec<String>>(text)
                .map_err(|_| KustoError::bad_request(format!("'{key}' must be a JSON array of strings, got '{text}'"))),
        }
    };
    Ok(IngestProps { creation_time, tags: list("tags")?, ingest_if_not_exists: list("ingestifnotexists")? })
}

/// Adds rows as a new extent, honouring creationTime, tags, ingestIfNotExists and the
/// ingestion faults. Answers the ingestion result table.
pub fn ingest_rows(
    s: &mut ClusterState,
    db: &str,
    table: &str,
    rows: Vec<Vec<V>>,
    props: &Props,
    faults: &[Fault],
) -> Result<Frame, KustoError> {
    let p = ingest_props(props)?;
    let t = s.table(db, table)?;
    if let Some(ct) = p.creation_time {
        if let Some(soft_delete) = soft_delete_ticks(s, db, t) {
            if ct < s.now() - soft_delete {
                return Err(KustoError {
                    code: "BadRequest_CreationTimeEarlierThanSoftDeletePeriod".into(),
                    ..KustoError::bad_request(format!(
                        "Creation time '{}' is earlier than the soft-delete period of table '{table}'",
                        crate::model::value::format_datetime(ct)
                    ))
                });
            }
        }
    }
    let mut tags = p.tags;
    for value in &p.ingest_if_not_exists {
        let tag = format!("ingest-by:{value}");
        if t.extents.iter().any(|e| e.has_tag(&tag)) {
            // Skipped on purpose: the data is already there.
            return Ok(ingest_frame(vec![]));
        }
    }
    if faults.contains(&Fault::IngestionFailure) {
        return Err(KustoError::transient(500, "Ingestion failed (injected fault): no data was added"));
    }
    tags.dedup();
    let mut rows = rows;
    if let Some(fault) = s.faults.take_for_table(table) {
        alter_rows(&mut rows, &s.table(db, table)?.columns, &fault)?;
    }
    let row_count = rows.len();
    let mut out = Vec::new();
    let copies = if faults.contains(&Fault::DuplicateIngestion) { 2 } else { 1 };
    for _ in 0..copies {
        let id = s.ingest_extent(db, table, rows.clone(), p.creation_time, tags.clone())?;
        out.push(vec![V::Guid(id), V::Long(0), V::Long(0), V::Long(0), V::Long(0), V::Long(row_count as i64)]);
    }
    if faults.contains(&Fault::MergeExtents) {
        s.merge_extents(db, table)?;
    }
    Ok(ingest_frame(out))
}

/// Applies a data fault to rows about to land: the test's way to put a wrong value in staging
/// while every count stays right.
fn alter_rows(rows: &mut [Vec<V>], columns: &[Column], fault: &Fault) -> Result<(), KustoError> {
    let (Fault::CorruptIngestedValue { column, .. } | Fault::SwapIngestedValues { column, .. }) = fault else { return Ok(()) };
    let i = columns.iter().position(|c| &c.name == column).ok_or_else(|| KustoError::bad_request(format!("fault names no column '{column}'")))?;
    match fault {
        Fault::SwapIngestedValues { .. } if rows.len() >= 2 => {
            let (a, b) = (rows[0][i].clone(), rows[1][i].clone());
            rows[0][i] = b;
            rows[1][i] = a;
        }
        Fault::CorruptIngestedValue { .. } if !rows.is_empty() => {
            rows[0][i] = match &rows[0][i] {
                V::Long(x) => V::Long(x.wrapping_add(1)),
                V::Int(x) => V::Int(x.wrapping_add(1)),
                V::Real(x) => V::Real(x + 1.0),
                V::Bool(b) => V::Bool(!b),
                V::String(s) => V::String(format!("{s}~")),
                V::Null => V::String(String::new()),
                _ => V::Null,
            };
        }
        _ => {}
    }
    Ok(())
}

fn ingest_frame(rows: Vec<Vec<V>>) -> Frame {
    frame(
        &[("ExtentId", T::Guid), ("OriginalSize", T::Long), ("ExtentSize", T::Long), ("ColumnSize", T::Long), ("IndexSize", T::Long), ("RowCount", T::Long)],
        rows,
    )
}

fn soft_delete_ticks(s: &ClusterState, db: &str, t: &Table) -> Option<i64> {
    let policy = t.policies.get("retention").or_else(|| s.databases.get(db).and_then(|d| d.policies.get("retention")))?;
    policy.get("SoftDeletePeriod").and_then(|v| v.as_str()).and_then(parse_timespan)
}

/// Maps a query result onto a table's columns: by name when every result column exists in
/// the table, else by position when the counts match.
fn map_columns(result: &Frame, target: &[Column]) -> Result<Vec<Vec<V>>, KustoError> {
    let by_name: Option<Vec<Option<usize>>> = if result.columns.iter().all(|c| target.iter().any(|t| t.name == c.name)) {
        Some(target.iter().map(|t| result.column_index(&t.name)).collect())
    } else if result.columns.len() == target.len() {
        Some((0..target.len()).map(Some).collect())
    } else {
        None
    };
    let map = by_name.ok_or_else(|| {
        KustoError::bad_request(format!(
            "the query's columns ({}) do not match the table's schema ({})",
            result.columns.iter().map(|c| format!("{}:{}", c.name, c.ty)).collect::<Vec<_>>().join(", "),
            target.iter().map(|c| format!("{}:{}", c.name, c.ty)).collect::<Vec<_>>().join(", ")
        ))
    })?;
    Ok(result
        .rows
        .iter()
        .map(|r| {
            map.iter()
                .zip(target)
                .map(|(i, c)| match i {
                    Some(i) => convert(&r.values[*i], c.ty),
                    None => V::Null,
                })
                .collect()
        })
        .collect())
}

/// Parses CSV records into typed rows. A value that does not fit its column fails the whole
/// ingestion, as Kusto's CSV ingestion reports a bad record.
pub fn parse_csv_rows(data: &str, columns: &[Column]) -> Result<Vec<Vec<V>>, KustoError> {
    let mut rows = Vec::new();
    for (n, record) in parse_csv(data).into_iter().enumerate() {
        if record.len() != columns.len() {
            return Err(KustoError::bad_request(format!(
                "CSV record {} has {} fields, the table has {} columns",
                n + 1,
                record.len(),
                columns.len()
            )));
        }
        let row = record
            .iter()
            .zip(columns)
            .map(|(text, c)| {
                parse_text(c.ty, text).map_err(|e| KustoError::bad_request(format!("CSV record {}, column '{}': {e}", n + 1, c.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(row);
    }
    Ok(rows)
}

/// RFC 4180 CSV: quoted fields may hold commas, quotes (doubled) and newlines.
pub fn parse_csv(data: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut chars = data.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                in_quotes = true;
                any = true;
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                any = true;
            }
            '\r' => {}
            '\n' => {
                if any || !field.is_empty() {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                any = false;
            }
            _ => {
                field.push(c);
                any = true;
            }
        }
    }
    if any || !field.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// Writes rows as CSV, the inverse of [`parse_csv`] (nulls are empty fields).
pub fn write_csv(rows: &[Vec<V>]) -> String {
    let mut out = String::new();
    for r in rows {
        let fields: Vec<String> = r
            .iter()
            .map(|v| {
                let text = match v {
                    V::Null => return String::new(),
                    V::Dynamic(d) => d.to_string(),
                    other => crate::kql::functions::to_text(other),
                };
                if text.contains([',', '"', '\n', '\r']) || text.is_empty() {
                    format!("\"{}\"", text.replace('"', "\"\""))
                } else {
                    text
                }
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trips_quotes_commas_and_newlines() {
        let rows = vec![vec![V::String("a,\"b\"\nc".into()), V::Long(1), V::Null]];
        let text = write_csv(&rows);
        let parsed = parse_csv(&text);
        assert_eq!(parsed, vec![vec!["a,\"b\"\nc".to_string(), "1".to_string(), String::new()]]);
    }

    #[test]
    fn csv_rows_are_typed_or_refused() {
        let cols = vec![Column::new("a", T::Long), Column::new("b", T::DateTime)];
        let rows = parse_csv_rows("1,2024-01-01\n,\n", &cols).unwrap();
        assert_eq!(rows[0][0], V::Long(1));
        assert_eq!(rows[1], vec![V::Null, V::Null]);
        assert!(parse_csv_rows("x,2024-01-01", &cols).is_err());
        assert!(parse_csv_rows("1", &cols).is_err());
    }
}

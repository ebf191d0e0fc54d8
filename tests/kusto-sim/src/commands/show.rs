//! `.show ...` commands.

use uuid::Uuid;

use super::frame;
use super::parse::{Command, TagFilter};
use crate::kql::eval::Frame;
use crate::kql::functions::has_term;
use crate::model::cluster::ClusterState;
use crate::model::table::{Extent, Table};
use crate::model::value::{ScalarType as T, Value as V};
use crate::wire::error::KustoError;

pub fn run(s: &mut ClusterState, db: &str, cmd: Command) -> Result<Frame, KustoError> {
    let now = s.now();
    let retention = s.retention_ticks();
    s.operations.prune(now, retention);
    match cmd {
        Command::ShowTables => {
            let d = s.database(db)?;
            Ok(frame(
                &[("TableName", T::String), ("DatabaseName", T::String), ("Folder", T::String), ("DocString", T::String)],
                d.tables
                    .values()
                    .map(|t| vec![V::String(t.name.clone()), V::String(db.into()), V::String(t.folder.clone()), V::String(t.docstring.clone())])
                    .collect(),
            ))
        }
        Command::ShowDatabases => Ok(frame(
            &[("DatabaseName", T::String), ("PersistentStorage", T::String), ("Version", T::String), ("IsCurrent", T::Bool), ("DatabaseAccessMode", T::String), ("PrettyName", T::String)],
            s.databases
                .keys()
                .map(|n| vec![V::String(n.clone()), V::String(String::new()), V::String("v1.0".into()), V::Bool(n == db), V::String("ReadWrite".into()), V::String(String::new())])
                .collect(),
        )),
        Command::ShowTableDetails(name) => {
            let d = s.database(db)?;
            let tables: Vec<&Table> = match &name {
                Some(n) => vec![d.tables.get(n).ok_or_else(|| KustoError::not_found("Table", n))?],
                None => d.tables.values().collect(),
            };
            Ok(frame(
                &[
                    ("TableName", T::String),
                    ("DatabaseName", T::String),
                    ("Folder", T::String),
                    ("DocString", T::String),
                    ("TotalExtents", T::Long),
                    ("TotalExtentSize", T::Real),
                    ("TotalOriginalSize", T::Real),
                    ("TotalRowCount", T::Long),
                    ("HotExtents", T::Long),
                    ("HotExtentSize", T::Real),
                    ("HotOriginalSize", T::Real),
                    ("HotRowCount", T::Long),
                    ("RetentionPolicy", T::Dynamic),
                    ("CachingPolicy", T::Dynamic),
                    ("MergePolicy", T::Dynamic),
                    ("IngestionBatchingPolicy", T::Dynamic),
                    ("PartitioningPolicy", T::Dynamic),
                    ("MinExtentsCreationTime", T::DateTime),
                    ("MaxExtentsCreationTime", T::DateTime),
                    ("TableSchema", T::String),
                ],
                tables
                    .into_iter()
                    .map(|t| {
                        let size: i64 = t.extents.iter().map(Extent::original_size).sum();
                        let rows = t.row_count() as i64;
                        let policy = |k: &str| t.policies.get(k).map(|p| V::Dynamic(p.clone())).unwrap_or(V::Null);
                        vec![
                            V::String(t.name.clone()),
                            V::String(db.into()),
                            V::String(t.folder.clone()),
                            V::String(t.docstring.clone()),
                            V::Long(t.extents.len() as i64),
                            V::Real(size as f64),
                            V::Real(size as f64),
                            V::Long(rows),
                            V::Long(t.extents.len() as i64),
                            V::Real(size as f64),
                            V::Real(size as f64),
                            V::Long(rows),
                            policy("retention"),
                            policy("caching"),
                            policy("merge"),
                            policy("ingestionbatching"),
                            policy("partitioning"),
                            t.extents.iter().map(|e| e.min_created_on).min().map(V::DateTime).unwrap_or(V::Null),
                            t.extents.iter().map(|e| e.max_created_on).max().map(V::DateTime).unwrap_or(V::Null),
                            V::String(t.json_schema().to_string()),
                        ]
                    })
                    .collect(),
            ))
        }
        Command::ShowTableSchema(name) => {
            let t = s.table(db, &name)?;
            Ok(frame(
                &[("TableName", T::String), ("Schema", T::String), ("DatabaseName", T::String), ("Folder", T::String), ("DocString", T::String)],
                vec![vec![V::String(t.name.clone()), V::String(t.csl_schema()), V::String(db.into()), V::String(t.folder.clone()), V::String(t.docstring.clone())]],
            ))
        }
        Command::ShowTablePolicy { table, kind } => {
            let t = s.table(db, &table)?;
            Ok(policy_frame(db, t, &kind))
        }
        Command::ShowAllTablesPolicy { kind } => {
            // One row per table of the database, its policy null when it has none.
            let d = s.database(db)?;
            let mut out = entity_policy_frame(None, &kind, "", "Table");
            out.rows = d.tables.values().flat_map(|t| policy_frame(db, t, &kind).rows).collect();
            Ok(out)
        }
        Command::ShowMaterializedViews => {
            let d = s.database(db)?;
            Ok(frame(
                &[("Name", T::String), ("SourceTable", T::String), ("Query", T::String), ("IsEnabled", T::Bool), ("Folder", T::String), ("DocString", T::String)],
                d.materialized_views
                    .iter()
                    .map(|m| vec![V::String(m.name.clone()), V::String(m.source_table.clone()), V::String(m.query.clone()), V::Bool(m.is_enabled), V::String(String::new()), V::String(String::new())])
                    .collect(),
            ))
        }
        Command::ShowDatabasePolicy { database, kind } => {
            let d = s.database(&database)?;
            Ok(entity_policy_frame(d.policies.get(&kind), &kind, &format!("[{}]", d.name), "Database"))
        }
        Command::ShowTableExtents { table, ids, filters } => {
            let t = s.table(db, &table)?;
            // Documented: "the returned data set is limited to those extents only"; ids that
            // are not (or no longer) in the table simply do not appear.
            let selected: Vec<&Extent> = t
                .extents
                .iter()
                .filter(|e| ids.as_ref().is_none_or(|ids| ids.contains(&e.id)))
                .filter(|e| filters.iter().all(|f| tag_filter_matches(e, f)))
                .collect();
            let answer = extents_frame(db, &t.name, &selected);
            let first = selected.first().map(|e| e.id);
            if let Some(id) = first.filter(|_| !filters.is_empty()) {
                let name = table.clone();
                if s.faults.take_scripted(|f| matches!(f, crate::faults::Fault::DuplicateAfterCount { table_prefix } if name.starts_with(table_prefix.as_str()))) {
                    let t = s.table_mut(db, &table)?;
                    if let Some(mut copy) = t.extents.iter().find(|e| e.id == id).cloned() {
                        copy.id = crate::ids::new_uuid();
                        t.extents.push(copy);
                    }
                }
            }
            Ok(answer)
        }
        Command::ShowCluster => Ok(frame(
            &[
                ("NodeId", T::String),
                ("Address", T::String),
                ("Name", T::String),
                ("StartTime", T::DateTime),
                ("IsAdmin", T::Bool),
                ("MachineTotalMemory", T::Long),
                ("MachineAvailableMemory", T::Long),
                ("ProcessorCount", T::Int),
                ("ProductVersion", T::String),
            ],
            vec![vec![
                V::String(format!("KSIM-{}", s.name)),
                V::String(s.uri.clone()),
                V::String(s.name.clone()),
                V::DateTime(s.started_on),
                V::Bool(true),
                V::Long(8 << 30),
                V::Long(4 << 30),
                V::Int(2),
                V::String(format!("kusto-sim {}", env!("CARGO_PKG_VERSION"))),
            ]],
        )),
        Command::ShowCapacity if s.config.capacity_hidden => Err(KustoError::forbidden(
            "Principal is not authorized to perform operation '.show capacity' (AllDatabasesMonitor is required)",
        )),
        Command::ShowCapacity => {
            let exports = s.operations.in_progress("DataExportToFile") as i64;
            let cap = s.config.export_capacity as i64;
            let row = |r: &str, total: i64, used: i64, origin: &str| {
                vec![V::String(r.into()), V::Long(total), V::Long(used), V::Long((total - used).max(0)), V::String(origin.into())]
            };
            Ok(frame(
                &[("Resource", T::String), ("Total", T::Long), ("Consumed", T::Long), ("Remaining", T::Long), ("Origin", T::String)],
                vec![
                    row("ExtentsMerge", 4, 0, "CapacityPolicy/ExtentsMerge"),
                    row("ExtentsPartition", 2, 0, "CapacityPolicy/ExtentsPartition"),
                    row("DataExport", cap, exports, "CapacityPolicy/Export"),
                    row("Ingestions", 12, 0, "CapacityPolicy/Ingestion"),
                    row("Queries", 40, 0, "QueryRequestsRateLimitPolicy"),
                ],
            ))
        }
        Command::ShowOperations(ids) => Ok(s.operations.show(ids.as_deref(), now)),
        Command::ShowOperationDetails(id) => operation_details(s, id),
        _ => unreachable!("not a show command"),
    }
}

fn operation_details(s: &ClusterState, id: Uuid) -> Result<Frame, KustoError> {
    let op = s.operations.get(id).ok_or_else(|| KustoError::not_found("Operation", &id.to_string()))?;
    match &op.result {
        Some(f) => Ok(f.clone()),
        None => Err(KustoError::bad_request(format!(
            "Operation '{id}' is in state '{}': its details are available only once it has completed",
            op.state.name()
        ))),
    }
}

pub fn tag_filter_matches(e: &Extent, f: &TagFilter) -> bool {
    let any = |pred: &dyn Fn(&str) -> bool| e.tags.iter().any(|t| pred(t));
    match f.op.as_str() {
        "has" => any(&|t| has_term(t, &f.tag, false)),
        "!has" => !any(&|t| has_term(t, &f.tag, false)),
        "contains" => any(&|t| t.to_lowercase().contains(&f.tag.to_lowercase())),
        "!contains" => !any(&|t| t.to_lowercase().contains(&f.tag.to_lowercase())),
        _ => false,
    }
}

/// The `.show table T extents` answer.
pub fn extents_frame(db: &str, table: &str, extents: &[&Extent]) -> Frame {
    frame(
        &[
            ("ExtentId", T::Guid),
            ("DatabaseName", T::String),
            ("TableName", T::String),
            ("MaxCreatedOn", T::DateTime),
            ("OriginalSize", T::Real),
            ("ExtentSize", T::Real),
            ("CompressedSize", T::Real),
            ("IndexSize", T::Real),
            ("Blocks", T::Long),
            ("Segments", T::Long),
            ("ExtentContainerId", T::String),
            ("RowCount", T::Long),
            ("MinCreatedOn", T::DateTime),
            ("Tags", T::String),
            ("Kind", T::String),
            ("DeletedRowCount", T::Long),
        ],
        extents
            .iter()
            .map(|e| {
                let size = e.original_size() as f64;
                vec![
                    V::Guid(e.id),
                    V::String(db.into()),
                    V::String(table.into()),
                    V::DateTime(e.max_created_on),
                    V::Real(size),
                    V::Real(size / 4.0),
                    V::Real(size / 5.0),
                    V::Real(size / 20.0),
                    V::Long(1),
                    V::Long(1),
                    V::String(String::new()),
                    V::Long(e.row_count() as i64),
                    V::DateTime(e.min_created_on),
                    // Kusto lists an extent's tags separated by CR LF.
                    V::String(e.tags.join("\r\n")),
                    V::String("StorageV3".into()),
                    V::Long(0),
                ]
            })
            .collect(),
    )
}

pub fn policy_frame(db: &str, t: &Table, kind: &str) -> Frame {
    entity_policy_frame(t.policies.get(kind), kind, &format!("[{db}].[{}]", t.name), "Table")
}

/// `.show table|database X policy K`: the policy as JSON text, null when the entity has none
/// of its own.
fn entity_policy_frame(policy: Option<&serde_json::Value>, kind: &str, entity: &str, entity_type: &str) -> Frame {
    let policy = policy.map(|p| V::String(match p {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }));
    frame(
        &[("PolicyName", T::String), ("EntityName", T::String), ("Policy", T::String), ("ChildEntities", T::String), ("EntityType", T::String)],
        vec![vec![
            V::String(format!("{kind}Policy")),
            V::String(entity.to_string()),
            policy.unwrap_or(V::Null),
            V::String(String::new()),
            V::String(entity_type.into()),
        ]],
    )
}

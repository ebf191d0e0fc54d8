//! The v1 answer: `{"Tables": [{"TableName", "Columns": [{"ColumnName", "DataType",
//! "ColumnType"}], "Rows": [...]}]}`. Management commands answer one table; queries sent to
//! `/v1/rest/query` answer the primary result, properties, status and a table of contents.

use serde_json::{json, Value as Json};

use crate::kql::eval::Frame;

fn table(name: &str, frame: &Frame) -> Json {
    json!({
        "TableName": name,
        "Columns": frame.columns.iter().map(|c| json!({
            "ColumnName": c.name,
            "DataType": c.ty.clr_name(),
            "ColumnType": c.ty.kql_name(),
        })).collect::<Vec<_>>(),
        "Rows": frame.rows.iter().map(|r| super::cells(frame, &r.values)).collect::<Vec<_>>(),
    })
}

/// The answer to a management command: a single table named `Table_0`.
pub fn command_response(frame: &Frame) -> Json {
    json!({ "Tables": [table("Table_0", frame)] })
}

/// The answer to a v1 query, with the table of contents that v1 clients read table kinds from.
pub fn query_response(frame: &Frame, client_request_id: &str) -> Json {
    let status = json!({
        "TableName": "Table_2",
        "Columns": [
            {"ColumnName": "Timestamp", "DataType": "DateTime", "ColumnType": "datetime"},
            {"ColumnName": "Severity", "DataType": "Int32", "ColumnType": "int"},
            {"ColumnName": "SeverityName", "DataType": "String", "ColumnType": "string"},
            {"ColumnName": "StatusCode", "DataType": "Int32", "ColumnType": "int"},
            {"ColumnName": "StatusDescription", "DataType": "String", "ColumnType": "string"},
            {"ColumnName": "Count", "DataType": "Int32", "ColumnType": "int"},
            {"ColumnName": "RequestId", "DataType": "Guid", "ColumnType": "guid"},
            {"ColumnName": "ActivityId", "DataType": "Guid", "ColumnType": "guid"},
            {"ColumnName": "SubActivityId", "DataType": "Guid", "ColumnType": "guid"},
            {"ColumnName": "ClientActivityId", "DataType": "String", "ColumnType": "string"}
        ],
        "Rows": [[now(), 4, "Info", 0, "Query completed successfully", 1,
                  crate::ids::new_uuid().to_string(), crate::ids::new_uuid().to_string(),
                  crate::ids::new_uuid().to_string(), client_request_id]]
    });
    let props = json!({
        "TableName": "Table_1",
        "Columns": [{"ColumnName": "Value", "DataType": "String", "ColumnType": "string"}],
        "Rows": [["{\"Visualization\":null,\"Title\":null}"]]
    });
    let toc = json!({
        "TableName": "Table_3",
        "Columns": [
            {"ColumnName": "Ordinal", "DataType": "Int64", "ColumnType": "long"},
            {"ColumnName": "Kind", "DataType": "String", "ColumnType": "string"},
            {"ColumnName": "Name", "DataType": "String", "ColumnType": "string"},
            {"ColumnName": "Id", "DataType": "String", "ColumnType": "string"},
            {"ColumnName": "PrettyName", "DataType": "String", "ColumnType": "string"}
        ],
        "Rows": [
            [0, "QueryResult", "PrimaryResult", crate::ids::new_uuid().to_string(), ""],
            [1, "QueryProperties", "@ExtendedProperties", crate::ids::new_uuid().to_string(), ""],
            [2, "QueryStatus", "QueryStatus", "00000000-0000-0000-0000-000000000000", ""]
        ]
    });
    json!({ "Tables": [table("Table_0", frame), props, status, toc] })
}

fn now() -> String {
    crate::model::value::format_datetime(crate::model::value::ticks_from_offset_datetime(time::OffsetDateTime::now_utc()))
}

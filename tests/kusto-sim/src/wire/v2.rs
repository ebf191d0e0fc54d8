//! The v2 answer: a JSON array of frames. `DataSetHeader`, then `DataTable` frames
//! (`@ExtendedProperties`, `PrimaryResult`, `QueryCompletionInformation`), then
//! `DataSetCompletion`.

use serde_json::{json, Value as Json};

use crate::kql::eval::Frame;
use crate::model::value::{format_datetime, ticks_from_offset_datetime};

fn columns(frame: &Frame) -> Json {
    Json::Array(
        frame.columns.iter().map(|c| json!({"ColumnName": c.name, "ColumnType": c.ty.kql_name()})).collect(),
    )
}

fn rows(frame: &Frame) -> Json {
    Json::Array(frame.rows.iter().map(|r| Json::Array(super::cells(frame, &r.values))).collect())
}

/// A JSON object with its keys in the given order. Kusto writes `FrameType` first and a
/// table's `Columns` before its `Rows`; streaming readers (the official clients' streaming
/// APIs) rely on that order, so it cannot be left to a map's key order.
fn ordered(pairs: &[(&str, Json)]) -> String {
    let fields: Vec<String> = pairs.iter().map(|(k, v)| format!("{}:{}", Json::String(k.to_string()), v)).collect();
    format!("{{{}}}", fields.join(","))
}

fn data_table(id: i64, kind: &str, name: &str, columns: Json, rows: Json) -> String {
    ordered(&[
        ("FrameType", json!("DataTable")),
        ("TableId", json!(id)),
        ("TableKind", json!(kind)),
        ("TableName", json!(name)),
        ("Columns", columns),
        ("Rows", rows),
    ])
}

/// The v2 answer as JSON text (frames in order, keys in Kusto's order).
pub fn query_response(frame: &Frame, ids: &super::RequestIds) -> String {
    answer(frame, ids, None)
}

/// A 200 answer that fails part-way: half the rows, then an error row in the primary table,
/// an Error-level completion record, and `HasErrors: true` with the error in `OneApiErrors`.
pub fn partial_failure_response(frame: &Frame, ids: &super::RequestIds, error: &crate::wire::error::KustoError) -> String {
    answer(frame, ids, Some(error))
}

fn answer(frame: &Frame, ids: &super::RequestIds, error: Option<&crate::wire::error::KustoError>) -> String {
    let now = format_datetime(ticks_from_offset_datetime(time::OffsetDateTime::now_utc()));
    let nil = uuid::Uuid::nil().to_string();
    let header = ordered(&[
        ("FrameType", json!("DataSetHeader")),
        ("IsProgressive", json!(false)),
        ("Version", json!("v2.0")),
        ("IsFragmented", json!(false)),
        ("ErrorReportingPlacement", json!("EndOfTable")),
    ]);
    let properties = data_table(
        0,
        "QueryProperties",
        "@ExtendedProperties",
        json!([
            {"ColumnName": "TableId", "ColumnType": "int"},
            {"ColumnName": "Key", "ColumnType": "string"},
            {"ColumnName": "Value", "ColumnType": "dynamic"}
        ]),
        json!([[1, "Visualization", "{\"Visualization\":null,\"Title\":null,\"XColumn\":null,\"Series\":null,\"YColumns\":null,\"AnomalyColumns\":null,\"XTitle\":null,\"YTitle\":null,\"XAxis\":null,\"YAxis\":null,\"Legend\":null,\"YSplit\":null,\"Accumulate\":false,\"IsQuerySorted\":false,\"Kind\":null,\"Ymin\":\"NaN\",\"Ymax\":\"NaN\",\"Xmin\":null,\"Xmax\":null}"]]),
    );
    let one_api_errors = error.map(|e| json!([{"error": e.body(&ids.client_request_id, &ids.activity_id)["error"].clone()}]));
    let primary_rows = match &one_api_errors {
        None => rows(frame),
        Some(errors) => {
            let mut kept: Vec<Json> = match rows(frame) {
                Json::Array(r) => r.into_iter().take(frame.rows.len() / 2).collect(),
                _ => Vec::new(),
            };
            kept.push(json!({ "OneApiErrors": errors }));
            Json::Array(kept)
        }
    };
    let primary = data_table(1, "PrimaryResult", "PrimaryResult", columns(frame), primary_rows);
    let completion_info = data_table(
        2,
        "QueryCompletionInformation",
        "QueryCompletionInformation",
        json!([
            {"ColumnName": "Timestamp", "ColumnType": "datetime"},
            {"ColumnName": "ClientRequestId", "ColumnType": "string"},
            {"ColumnName": "ActivityId", "ColumnType": "guid"},
            {"ColumnName": "SubActivityId", "ColumnType": "guid"},
            {"ColumnName": "ParentActivityId", "ColumnType": "guid"},
            {"ColumnName": "Level", "ColumnType": "int"},
            {"ColumnName": "LevelName", "ColumnType": "string"},
            {"ColumnName": "StatusCode", "ColumnType": "int"},
            {"ColumnName": "StatusCodeName", "ColumnType": "string"},
            {"ColumnName": "EventType", "ColumnType": "int"},
            {"ColumnName": "EventTypeName", "ColumnType": "string"},
            {"ColumnName": "Payload", "ColumnType": "string"}
        ]),
        match error {
            None => json!([[
                now, ids.client_request_id, ids.activity_id, ids.activity_id, nil, 4, "Info", 0, "S_OK (0)", 4, "QueryInfo",
                format!("{{\"Count\":1,\"Text\":\"Query completed successfully\",\"RowCount\":{}}}", frame.rows.len())
            ]]),
            Some(e) => json!([[
                now, ids.client_request_id, ids.activity_id, ids.activity_id, nil, 2, "Error", -2133196797, "LimitsExceeded", 4, "QueryInfo",
                json!({"Count": 1, "Text": e.detail}).to_string()
            ]]),
        },
    );
    let completion = match one_api_errors {
        None => ordered(&[("FrameType", json!("DataSetCompletion")), ("HasErrors", json!(false)), ("Cancelled", json!(false))]),
        Some(errors) => ordered(&[
            ("FrameType", json!("DataSetCompletion")),
            ("HasErrors", json!(true)),
            ("Cancelled", json!(false)),
            ("OneApiErrors", errors),
        ]),
    };
    format!("[{header},{properties},{primary},{completion_info},{completion}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::Column;
    use crate::model::value::{ScalarType, Value};

    #[test]
    fn frames_put_frame_type_first_and_columns_before_rows() {
        let frame = Frame {
            columns: vec![Column::new("a", ScalarType::Long)],
            rows: vec![crate::kql::eval::Row { values: vec![Value::Long(1)], meta: None }],
            has_meta: false,
        };
        let ids = super::super::RequestIds { client_request_id: "c".into(), activity_id: "a".into() };
        let text = query_response(&frame, &ids);
        let parsed: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 5);
        for f in parsed.as_array().unwrap() {
            let raw = f.to_string();
            assert!(raw.contains("FrameType"));
        }
        let primary = text.find("\"TableKind\":\"PrimaryResult\"").unwrap();
        let frame_start = text[..primary].rfind("{\"FrameType\":\"DataTable\"").unwrap();
        let cols = text[frame_start..].find("\"Columns\"").unwrap();
        let rows = text[frame_start..].find("\"Rows\"").unwrap();
        assert!(cols < rows);
        assert!(text.starts_with("[{\"FrameType\":\"DataSetHeader\""));
    }
}

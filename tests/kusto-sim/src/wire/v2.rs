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

pub fn query_response(frame: &Frame, ids: &super::RequestIds) -> Json {
    let now = format_datetime(ticks_from_offset_datetime(time::OffsetDateTime::now_utc()));
    let nil = uuid::Uuid::nil().to_string();
    json!([
        {
            "FrameType": "DataSetHeader",
            "IsProgressive": false,
            "Version": "v2.0",
            "IsFragmented": false,
            "ErrorReportingPlacement": "EndOfTable"
        },
        {
            "FrameType": "DataTable",
            "TableId": 0,
            "TableKind": "QueryProperties",
            "TableName": "@ExtendedProperties",
            "Columns": [
                {"ColumnName": "TableId", "ColumnType": "int"},
                {"ColumnName": "Key", "ColumnType": "string"},
                {"ColumnName": "Value", "ColumnType": "dynamic"}
            ],
            "Rows": [[1, "Visualization", "{\"Visualization\":null,\"Title\":null,\"XColumn\":null,\"Series\":null,\"YColumns\":null,\"AnomalyColumns\":null,\"XTitle\":null,\"YTitle\":null,\"XAxis\":null,\"YAxis\":null,\"Legend\":null,\"YSplit\":null,\"Accumulate\":false,\"IsQuerySorted\":false,\"Kind\":null,\"Ymin\":\"NaN\",\"Ymax\":\"NaN\",\"Xmin\":null,\"Xmax\":null}"]]
        },
        {
            "FrameType": "DataTable",
            "TableId": 1,
            "TableKind": "PrimaryResult",
            "TableName": "PrimaryResult",
            "Columns": columns(frame),
            "Rows": rows(frame)
        },
        {
            "FrameType": "DataTable",
            "TableId": 2,
            "TableKind": "QueryCompletionInformation",
            "TableName": "QueryCompletionInformation",
            "Columns": [
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
            ],
            "Rows": [
                [now, ids.client_request_id, ids.activity_id, ids.activity_id, nil, 4, "Info", 0, "S_OK (0)", 4, "QueryInfo",
                 format!("{{\"Count\":1,\"Text\":\"Query completed successfully\",\"RowCount\":{}}}", frame.rows.len())]
            ]
        },
        {
            "FrameType": "DataSetCompletion",
            "HasErrors": false,
            "Cancelled": false
        }
    ])
}

//! Parsing of answers in the documented formats: v1, v2 with several tables, v2 with an error
//! inside a 200, OneApiErrors bodies, and the ingest-v2 status.

use kusto_copy::kusto::results::{self, OperationState};
use kusto_copy::kusto::{
    parse_error_body, parse_ingestion_status, parse_v1, parse_v2, BlobState, ErrorKind,
    KustoError, KustoType, KustoValue, RetryClass,
};
use serde_json::json;
use time::macros::datetime;
use time::Duration;
use uuid::Uuid;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/kusto/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn v1_every_type_and_null() {
    let data = parse_v1(&fixture("v1_all_types.json")).unwrap();
    assert_eq!(data.tables.len(), 1);
    let t = data.primary().unwrap();
    assert_eq!(t.name, "Table_0");
    let kinds: Vec<KustoType> = t.columns.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        vec![
            KustoType::Bool,
            KustoType::Bool, // SByte without ColumnType
            KustoType::Int,
            KustoType::Long,
            KustoType::Real,
            KustoType::Decimal,
            KustoType::String,
            KustoType::DateTime,
            KustoType::TimeSpan,
            KustoType::Guid,
            KustoType::Dynamic,
        ]
    );
    assert_eq!(t.rows.len(), 3);

    let r0 = &t.rows[0];
    assert_eq!(r0[0], KustoValue::Bool(true));
    assert_eq!(r0[1], KustoValue::Bool(true));
    assert_eq!(r0[2], KustoValue::Int(-42));
    // Beyond f64 precision: must arrive exact.
    assert_eq!(r0[3], KustoValue::Long(9_007_199_254_740_993));
    assert_eq!(r0[4], KustoValue::Real(2.5));
    assert_eq!(r0[5], KustoValue::Decimal("79228162514264337593543950335".into()));
    assert_eq!(r0[6], KustoValue::String("it's \"quoted\"\nline".into()));
    assert_eq!(
        r0[7],
        KustoValue::DateTime(datetime!(2024-02-29 23:59:59.1234567 UTC))
    );
    assert_eq!(
        r0[8],
        KustoValue::TimeSpan(
            Duration::days(1) + Duration::hours(2) + Duration::minutes(3) + Duration::milliseconds(4500)
        )
    );
    assert_eq!(
        r0[9],
        KustoValue::Guid(Uuid::parse_str("6f3c1072-2739-461c-8aa7-3cfc8ff528a8").unwrap())
    );
    // v1 sends dynamic as JSON text; as_json reads it.
    assert_eq!(r0[10].as_json(), Some(json!({"a": [1, 2]})));

    assert!(t.rows[1].iter().all(KustoValue::is_null), "{:?}", t.rows[1]);

    let r2 = &t.rows[2];
    assert_eq!(r2[0], KustoValue::Bool(false));
    assert_eq!(r2[1], KustoValue::Bool(false));
    assert_eq!(r2[2], KustoValue::Int(i32::MAX));
    assert_eq!(r2[3], KustoValue::Long(-1));
    assert!(matches!(r2[4], KustoValue::Real(r) if r.is_nan()));
    assert_eq!(r2[5], KustoValue::Decimal("-0.5".into()));
    // An empty string is a value, not a null.
    assert_eq!(r2[6], KustoValue::String(String::new()));
    assert_eq!(r2[7], KustoValue::DateTime(datetime!(2016-06-06 15:35:00 UTC)));
    assert_eq!(r2[8], KustoValue::TimeSpan(-Duration::nanoseconds(100)));
    assert_eq!(r2[9], KustoValue::Guid(Uuid::nil()));
    assert_eq!(r2[10].as_json(), Some(json!(["x"])));

    // Typed access by name.
    let row = t.rows().next().unwrap();
    assert_eq!(row.long("Count64").unwrap(), Some(9_007_199_254_740_993));
    assert_eq!(row.string("Name").unwrap(), Some("it's \"quoted\"\nline"));
    assert!(row.long("Name").is_err(), "a string is not a long");
    assert!(row.string("NoSuchColumn").is_err());
    let null_row = t.rows().nth(1).unwrap();
    assert_eq!(null_row.datetime("When").unwrap(), None);
}

#[test]
fn v1_show_operations_latest_state_wins() {
    let data = parse_v1(&fixture("v1_show_operations.json")).unwrap();
    let ops = results::operations(&data).unwrap();
    assert_eq!(ops.len(), 2);
    let export = &ops[0];
    assert_eq!(export.id, Uuid::parse_str("2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f").unwrap());
    assert_eq!(export.state, OperationState::Completed);
    assert_eq!(export.last_updated_on, Some(datetime!(2024-05-01 10:05:00 UTC)));
    assert_eq!(export.should_retry, Some(false));
    let failed = &ops[1];
    assert_eq!(failed.state, OperationState::Failed);
    assert_eq!(failed.status.as_deref(), Some("Blob not found"));
    assert_eq!(failed.should_retry, Some(true));
    assert!(!failed.state.is_pending());
}

#[test]
fn v2_several_tables_every_type_and_null() {
    let data = parse_v2(&fixture("v2_multi_table.json")).unwrap();
    let kinds: Vec<Option<&str>> = data.tables.iter().map(|t| t.kind.as_deref()).collect();
    assert_eq!(
        kinds,
        vec![
            Some("QueryProperties"),
            Some("PrimaryResult"),
            Some("PrimaryResult"),
            Some("QueryCompletionInformation")
        ]
    );
    assert_eq!(data.primary_results().count(), 2);
    let t = data.primary().unwrap();
    assert_eq!(t.name, "PrimaryResult");
    let r0 = &t.rows[0];
    assert_eq!(r0[0], KustoValue::Bool(true));
    assert_eq!(r0[1], KustoValue::Int(7));
    assert_eq!(r0[2], KustoValue::Long(i64::MAX));
    assert_eq!(r0[3], KustoValue::Real(0.001));
    assert_eq!(r0[4], KustoValue::Decimal("0.1000000000000000000000000001".into()));
    assert_eq!(r0[5], KustoValue::String("héllo 'w' \"x\"".into()));
    assert_eq!(r0[6], KustoValue::DateTime(datetime!(2016-06-06 15:35:00 UTC)));
    assert_eq!(
        r0[7],
        KustoValue::TimeSpan(
            Duration::days(4)
                + Duration::hours(1)
                + Duration::minutes(2)
                + Duration::seconds(3)
                + Duration::milliseconds(567)
        )
    );
    assert_eq!(
        r0[8],
        KustoValue::Guid(Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").unwrap())
    );
    assert_eq!(r0[9], KustoValue::Dynamic(json!({"k": [1, "two", null]})));

    assert_eq!(t.rows[1].len(), 10);
    assert!(t.rows[1].iter().all(KustoValue::is_null));

    let r2 = &t.rows[2];
    assert_eq!(r2[0], KustoValue::Bool(false));
    assert_eq!(r2[1], KustoValue::Int(i32::MIN));
    assert_eq!(r2[2], KustoValue::Long(i64::MIN));
    assert_eq!(r2[3], KustoValue::Real(f64::NEG_INFINITY));
    assert_eq!(r2[4], KustoValue::Decimal("1E-28".into()));
    assert_eq!(r2[5], KustoValue::String(String::new()));
    assert_eq!(r2[6], KustoValue::DateTime(datetime!(2024-01-01 00:00:00.0000001 UTC)));
    assert_eq!(r2[7], KustoValue::TimeSpan(Duration::ZERO));
    assert_eq!(r2[8], KustoValue::Guid(Uuid::max()));
    assert_eq!(r2[9], KustoValue::Dynamic(json!([1, 2])));

    let second = data.primary_results().nth(1).unwrap();
    assert_eq!(results::count(&kusto_copy::kusto::DataSet { tables: vec![second.clone()] }).unwrap(), 42);

    let info = &data.tables[3];
    let row = info.rows().next().unwrap();
    assert_eq!(row.long("Level").unwrap(), Some(4));
    assert_eq!(row.string("LevelName").unwrap(), Some("Info"));
}

fn assert_limits_exceeded(err: &KustoError) {
    assert_eq!(err.kind, ErrorKind::Query);
    assert_eq!(err.status, None);
    assert_eq!(err.code.as_deref(), Some("LimitsExceeded"));
    assert!(err.message.contains("exceeded the allowed limits (80DA0003)"), "{}", err.message);
    assert_eq!(err.activity_id.as_deref(), Some("a57ec272-8846-49e6-b458-460b841ed47d"));
    assert_eq!(
        err.client_request_id.as_deref(),
        Some("KC.plan;d3a43e37-0d7f-47a9-b6cd-a889b2aee3d3")
    );
    assert_eq!(err.permanent, Some(false));
    // Kusto says it is not permanent: worth another try.
    assert_eq!(err.retry_class(), RetryClass::Transient);
}

#[test]
fn v2_error_row_inside_a_200_is_an_error() {
    let err = parse_v2(&fixture("v2_error_row_in_200.json")).unwrap_err();
    assert_limits_exceeded(&err);
}

#[test]
fn v2_completion_error_inside_a_200_is_an_error() {
    let err = parse_v2(&fixture("v2_completion_error_in_200.json")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Query);
    assert_eq!(err.code.as_deref(), Some("General_BadRequest"));
    assert!(err.message.contains("SEM0100"), "{}", err.message);
    assert_eq!(err.activity_id.as_deref(), Some("9dcc4522-7b51-41db-a7ae-7c1bfe0696b2"));
    assert_eq!(
        err.client_request_id.as_deref(),
        Some("KC.plan;0b9c2f5e-6f53-4c1a-9a1e-2f0d3c1b5a77")
    );
    assert_eq!(err.permanent, Some(true));
    assert_eq!(err.retry_class(), RetryClass::Permanent);
}

#[test]
fn v2_has_errors_without_details_and_cancelled_and_truncated() {
    let has_errors = json!([
        {"FrameType": "DataSetHeader", "IsProgressive": false, "Version": "v2.0"},
        {"FrameType": "DataTable", "TableId": 0, "TableKind": "QueryCompletionInformation", "TableName": "QueryCompletionInformation",
         "Columns": [{"ColumnName": "Level", "ColumnType": "int"}, {"ColumnName": "Payload", "ColumnType": "string"}],
         "Rows": [[4, "{\"Text\":\"fine\"}"], [2, "{\"Text\":\"partial failure\"}"]]},
        {"FrameType": "DataSetCompletion", "HasErrors": true, "Cancelled": false}
    ]);
    let err = parse_v2(has_errors.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Query);
    assert!(err.message.contains("partial failure"), "{}", err.message);
    assert!(!err.message.contains("fine"));
    assert!(!err.is_transient());

    let cancelled = json!([
        {"FrameType": "DataSetHeader", "IsProgressive": false, "Version": "v2.0"},
        {"FrameType": "DataSetCompletion", "HasErrors": false, "Cancelled": true}
    ]);
    assert_eq!(parse_v2(cancelled.to_string().as_bytes()).unwrap_err().kind, ErrorKind::Query);

    // No DataSetCompletion: the answer was cut after the 200.
    let cut = json!([{"FrameType": "DataSetHeader", "IsProgressive": false, "Version": "v2.0"}]);
    let err = parse_v2(cut.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ConnectionLost);
    assert!(err.is_transient());
    let full = fixture("v2_multi_table.json");
    let err = parse_v2(&full[..full.len() / 2]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ConnectionLost);
}

#[test]
fn v2_progressive_frames() {
    let body = json!([
        {"FrameType": "DataSetHeader", "IsProgressive": true, "Version": "v2.0"},
        {"FrameType": "TableHeader", "TableId": 1, "TableKind": "PrimaryResult", "TableName": "PrimaryResult",
         "Columns": [{"ColumnName": "x", "ColumnType": "long"}]},
        {"FrameType": "TableFragment", "TableId": 1, "FieldCount": 1, "TableFragmentType": "DataAppend", "Rows": [[1], [2]]},
        {"FrameType": "TableFragment", "TableId": 1, "FieldCount": 1, "TableFragmentType": "DataAppend", "Rows": [[3]]},
        {"FrameType": "TableCompletion", "TableId": 1, "RowCount": 3},
        {"FrameType": "DataSetCompletion", "HasErrors": false, "Cancelled": false}
    ]);
    let data = parse_v2(body.to_string().as_bytes()).unwrap();
    let xs: Vec<i64> = data.primary().unwrap().rows().map(|r| r.long("x").unwrap().unwrap()).collect();
    assert_eq!(xs, vec![1, 2, 3]);
}

#[test]
fn error_bodies() {
    let err = KustoError::from_http(400, &fixture("error_bad_request.json"));
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert_eq!(err.status, Some(400));
    assert_eq!(err.code.as_deref(), Some("General_BadRequest"));
    assert!(err.message.contains("Failed to resolve table expression named 'aaa'"));
    assert_eq!(err.activity_id.as_deref(), Some("9dcc4522-7b51-41db-a7ae-7c1bfe0696b2"));
    assert_eq!(
        err.client_request_id.as_deref(),
        Some("Kusto.Cli;b90f4260-4eac-4574-a27a-3f302db21404")
    );
    assert_eq!(err.permanent, Some(true));
    assert_eq!(err.retry_class(), RetryClass::Permanent);
    let shown = err.to_string();
    assert!(shown.contains("HTTP 400") && shown.contains("General_BadRequest"), "{shown}");

    let throttled = KustoError::from_http(429, &fixture("error_throttled.json"));
    assert_eq!(throttled.kind, ErrorKind::Throttled);
    assert_eq!(throttled.code.as_deref(), Some("LimitsExceeded"));
    assert_eq!(throttled.permanent, Some(false));
    assert!(throttled.is_transient());
    assert!(!throttled.may_have_executed());

    // The same body on a 503 is transient; with @permanent it would not be.
    assert!(KustoError::from_http(503, &fixture("error_throttled.json")).is_transient());
    assert!(!KustoError::from_http(503, &fixture("error_bad_request.json")).is_transient());

    // Gateways answer non-JSON bodies.
    let html = KustoError::from_http(502, b"<html>Bad Gateway</html>");
    assert_eq!(html.kind, ErrorKind::ServiceUnavailable);
    assert_eq!(html.code, None);
    assert!(html.message.contains("Bad Gateway"));
    assert!(html.is_transient());
    assert!(parse_error_body(b"not json").is_none());
    assert!(KustoError::from_http(520, b"").is_transient());
}

#[test]
fn ingest_v2_status_with_details() {
    let status = parse_ingestion_status(&fixture("ingest_status_details.json")).unwrap();
    assert_eq!((status.succeeded, status.failed, status.in_progress, status.canceled), (1, 1, 1, 0));
    assert_eq!(status.start_time, Some(datetime!(2025-10-01 12:00:00 UTC)));
    assert_eq!(status.last_updated, Some(datetime!(2025-10-01 12:30:00 UTC)));
    assert!(!status.is_finished());
    assert_eq!(status.blobs.len(), 3);
    let failed = &status.blobs[0];
    assert_eq!(failed.state, BlobState::Failed);
    assert_eq!(failed.source_id.as_deref(), Some("123a6999-411e-4226-a333-e79992dd9b95"));
    assert_eq!(failed.error_code.as_deref(), Some("BadRequest_MissingMappingFailure"));
    assert_eq!(failed.failure_status.as_deref(), Some("Permanent"));
    assert_eq!(failed.details.as_deref(), Some("Mapping not found"));
    // The echoed SAS stays out of Debug output.
    let shown = format!("{status:?}");
    assert!(!shown.contains("SECRETSIG"), "{shown}");
    assert!(shown.contains("blob1.parquet"));
    assert_eq!(status.blobs[1].state, BlobState::InProgress);
    assert_eq!(status.blobs[1].source_id, None);
    assert_eq!(status.blobs[2].state, BlobState::Succeeded);
}

#[test]
fn typed_result_readers() {
    let extents = json!({"Tables": [{"TableName": "Table_0", "Columns": [
        {"ColumnName": "ExtentId", "DataType": "Guid", "ColumnType": "guid"},
        {"ColumnName": "TableName", "DataType": "String", "ColumnType": "string"},
        {"ColumnName": "RowCount", "DataType": "Int64", "ColumnType": "long"},
        {"ColumnName": "MinCreatedOn", "DataType": "DateTime", "ColumnType": "datetime"},
        {"ColumnName": "MaxCreatedOn", "DataType": "DateTime", "ColumnType": "datetime"},
        {"ColumnName": "Tags", "DataType": "String", "ColumnType": "string"}],
      "Rows": [["9a2b1c3d-0000-4000-8000-00000000000a", "T", 1000, "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "drop-by:kc-1\r\ningest-by:x"],
               ["9a2b1c3d-0000-4000-8000-00000000000b", "T", 5, null, null, ""]]}]});
    let data = parse_v1(extents.to_string().as_bytes()).unwrap();
    let ex = results::extents(&data).unwrap();
    assert_eq!(ex[0].tags, vec!["drop-by:kc-1".to_string(), "ingest-by:x".to_string()]);
    assert!(ex[0].has_tag("drop-by:kc-1") && !ex[0].has_tag("drop-by:kc"));
    assert_eq!(ex[0].row_count, 1000);
    assert_eq!(ex[0].min_created_on, Some(datetime!(2024-01-01 00:00:00 UTC)));
    assert!(ex[1].tags.is_empty());

    let capacity = json!({"Tables": [{"TableName": "Table_0", "Columns": [
        {"ColumnName": "Resource", "DataType": "String"}, {"ColumnName": "Total", "DataType": "Int64"},
        {"ColumnName": "Consumed", "DataType": "Int64"}, {"ColumnName": "Remaining", "DataType": "Int64"},
        {"ColumnName": "Origin", "DataType": "String"}],
      "Rows": [["DataExport", 4, 1, 3, "CapacityPolicy/Export"], ["ExtentsMerge", 16, 0, 16, "CapacityPolicy/ExtentsMerge"]]}]});
    let caps = results::capacities(&parse_v1(capacity.to_string().as_bytes()).unwrap()).unwrap();
    assert_eq!(caps[0].resource, "DataExport");
    assert_eq!((caps[0].total, caps[0].consumed, caps[0].remaining), (4, 1, 3));

    let details = json!({"Tables": [{"TableName": "Table_0", "Columns": [
        {"ColumnName": "Path", "DataType": "String"}, {"ColumnName": "NumRecords", "DataType": "Int64"},
        {"ColumnName": "SizeInBytes", "DataType": "Int64"}],
      "Rows": [["https://acct.blob.core.windows.net/c/kc/export_1.parquet", 123, 4567]]}]});
    let blobs = results::exported_blobs(&parse_v1(details.to_string().as_bytes()).unwrap()).unwrap();
    assert_eq!(blobs[0].records, 123);
    assert_eq!(blobs[0].size_bytes, Some(4567));

    let op = json!({"Tables": [{"TableName": "Table_0", "Columns": [{"ColumnName": "OperationId", "DataType": "Guid"}],
      "Rows": [["2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f"]]}]});
    assert_eq!(
        results::operation_id(&parse_v1(op.to_string().as_bytes()).unwrap()).unwrap(),
        Uuid::parse_str("2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f").unwrap()
    );

    let missing = json!({"Tables": [{"TableName": "Table_0", "Columns": [{"ColumnName": "Other", "DataType": "String"}], "Rows": [["x"]]}]});
    assert!(results::operation_id(&parse_v1(missing.to_string().as_bytes()).unwrap()).is_err());
}

#[test]
fn malformed_answers_are_protocol_errors() {
    assert_eq!(parse_v1(b"[]").unwrap_err().kind, ErrorKind::Protocol);
    assert_eq!(parse_v2(b"{}").unwrap_err().kind, ErrorKind::Protocol);
    let wrong_width = json!({"Tables": [{"TableName": "t", "Columns": [{"ColumnName": "a", "DataType": "Int64"}], "Rows": [[1, 2]]}]});
    assert_eq!(parse_v1(wrong_width.to_string().as_bytes()).unwrap_err().kind, ErrorKind::Protocol);
    let wrong_type = json!({"Tables": [{"TableName": "t", "Columns": [{"ColumnName": "a", "DataType": "Int64"}], "Rows": [["x"]]}]});
    assert_eq!(parse_v1(wrong_type.to_string().as_bytes()).unwrap_err().kind, ErrorKind::Protocol);
}

/// The official client's OpenAPI spec (camelCase counts, `startedAt`/`lastUpdateTime`) and the
/// docs' example (PascalCase counts, `startTime`/`lastUpdated`) read the same.
#[test]
fn ingest_v2_status_in_both_casings() {
    let pascal = parse_ingestion_status(&fixture("ingest_status_details.json")).unwrap();
    let camel = parse_ingestion_status(&fixture("ingest_status_camel.json")).unwrap();
    assert_eq!((camel.succeeded, camel.failed, camel.in_progress, camel.canceled), (1, 1, 1, 0));
    assert_eq!(camel, pascal, "counts, times and every blob's detail agree");
    assert_eq!(camel.blobs[0].start_time, Some(datetime!(2025-10-01 12:00:00 UTC)));
    assert_eq!(camel.blobs[0].last_updated, Some(datetime!(2025-10-01 12:15:00 UTC)));
    assert!(!camel.is_finished(), "one blob is still in progress");
    assert!(camel.has_failures());
}

/// Completion and failure come from the per-blob details, as the official client decides
/// them: a non-empty list whose blobs are all final. Counts alone are not trusted.
#[test]
fn ingest_v2_completion_is_judged_by_the_blobs() {
    let status = |body: serde_json::Value| parse_ingestion_status(body.to_string().as_bytes()).unwrap();
    let blob = |s: &str| json!({"sourceId": "s", "status": s});
    // Counts say done, but no blob is listed yet: not finished.
    let empty = status(json!({"status": {"succeeded": 1, "inProgress": 0}, "details": []}));
    assert!(!empty.is_finished() && !empty.has_failures());
    let done = status(json!({"status": {"succeeded": 2}, "details": [blob("Succeeded"), blob("Succeeded")]}));
    assert!(done.is_finished() && !done.has_failures());
    // Counts say nothing failed; a blob's detail says it was canceled.
    let canceled = status(json!({"status": {"Succeeded": 1}, "details": [blob("Succeeded"), blob("Canceled")]}));
    assert!(canceled.is_finished() && canceled.has_failures());
    let queued = status(json!({"status": {}, "details": [blob("Queued"), blob("Succeeded")]}));
    assert!(!queued.is_finished());
    let unknown = status(json!({"details": [blob("Paused")]}));
    assert!(!unknown.is_finished(), "an unknown blob state is not final");
}

/// A blob refused for its age names the soft-delete period; other failures do not.
#[test]
fn ingest_v2_refusal_for_age_is_recognised() {
    let status = |body: serde_json::Value| parse_ingestion_status(body.to_string().as_bytes()).unwrap();
    let refused = status(json!({"status": {"failed": 1}, "details": [{"sourceId": "s", "status": "Failed",
        "errorCode": "BadRequest_CreationTimeEarlierThanSoftDeletePeriod", "failureStatus": "Permanent",
        "details": "Creation time is earlier than the soft-delete period"}]}));
    let why = refused.refused_as_too_old().expect("refused for its age");
    assert!(why.contains("BadRequest_CreationTimeEarlierThanSoftDeletePeriod") && why.contains("soft-delete period"), "{why}");
    let other = status(json!({"details": [{"sourceId": "s", "status": "Failed", "errorCode": "BadRequest_InvalidBlob", "failureStatus": "Permanent"}]}));
    assert!(other.has_failures() && other.refused_as_too_old().is_none());
}

/// `.show table|database ... policy retention`: the period from the policy's JSON text, and
/// none when the entity has no policy of its own.
#[test]
fn retention_policy_soft_delete_period() {
    let answer = |policy: serde_json::Value| {
        let body = json!({"Tables": [{"TableName": "Table_0", "Columns": [
            {"ColumnName": "PolicyName", "DataType": "String"}, {"ColumnName": "EntityName", "DataType": "String"},
            {"ColumnName": "Policy", "DataType": "String"}, {"ColumnName": "ChildEntities", "DataType": "String"},
            {"ColumnName": "EntityType", "DataType": "String"}],
          "Rows": [["RetentionPolicy", "[db].[T]", policy, "", "Table"]]}]});
        results::soft_delete_period(&parse_v1(body.to_string().as_bytes()).unwrap())
    };
    let days = answer(json!("{\"SoftDeletePeriod\": \"365.00:00:00\", \"Recoverability\": \"Enabled\"}")).unwrap();
    assert_eq!(days, Some(time::Duration::days(365)));
    assert_eq!(answer(json!("{\"SoftDeletePeriod\": \"12:30:00\"}")).unwrap(), Some(time::Duration::minutes(750)));
    assert_eq!(answer(serde_json::Value::Null).unwrap(), None, "no policy of its own");
    assert_eq!(answer(json!("{\"Recoverability\": \"Enabled\"}")).unwrap(), None);
    assert_eq!(answer(json!("{\"SoftDeletePeriod\": \"a year\"}")).unwrap_err().kind, ErrorKind::Protocol);
}

/// Each state `.show operations` documents is read as itself, and only InProgress and
/// Scheduled are pending (Throttled means "aborted because of throttling": final).
#[test]
fn every_documented_operation_state_is_parsed() {
    let states = [
        ("InProgress", OperationState::InProgress, true),
        ("Scheduled", OperationState::Scheduled, true),
        ("Completed", OperationState::Completed, false),
        ("Failed", OperationState::Failed, false),
        ("PartiallySucceeded", OperationState::PartiallySucceeded, false),
        ("Abandoned", OperationState::Abandoned, false),
        ("BadInput", OperationState::BadInput, false),
        ("Throttled", OperationState::Throttled, false),
        ("Canceled", OperationState::Canceled, false),
        ("Cancelled", OperationState::Canceled, false),
        ("Skipped", OperationState::Skipped, false),
    ];
    let rows: Vec<serde_json::Value> = states
        .iter()
        .enumerate()
        .map(|(i, (text, _, _))| json!([format!("00000000-0000-4000-8000-{i:012}"), "DataExportCommand", "2024-05-01T10:00:00Z", "2024-05-01T10:05:00Z", text, "why"]))
        .collect();
    let answer = json!({"Tables": [{"TableName": "Table_0", "Columns": [
        {"ColumnName": "OperationId", "DataType": "Guid", "ColumnType": "guid"},
        {"ColumnName": "Operation", "DataType": "String", "ColumnType": "string"},
        {"ColumnName": "StartedOn", "DataType": "DateTime", "ColumnType": "datetime"},
        {"ColumnName": "LastUpdatedOn", "DataType": "DateTime", "ColumnType": "datetime"},
        {"ColumnName": "State", "DataType": "String", "ColumnType": "string"},
        {"ColumnName": "Status", "DataType": "String", "ColumnType": "string"}],
      "Rows": rows}]});
    let ops = results::operations(&parse_v1(answer.to_string().as_bytes()).unwrap()).unwrap();
    assert_eq!(ops.len(), states.len());
    for (op, (text, state, pending)) in ops.iter().zip(states) {
        assert_eq!(op.state, state, "{text}");
        assert_eq!(op.state.is_pending(), pending, "{text}");
        assert_eq!(op.status.as_deref(), Some("why"));
    }
    assert_eq!(OperationState::from_text("Paused"), OperationState::Other("Paused".into()));
}

/// `.move extents` and `.drop table T extent tags` answer one row per extent rewritten:
/// `OriginalExtentId, ResultExtentId, Details`, with `ResultExtentId = "Failed"` (and the
/// reason in `Details`) for an extent the command could not rewrite (kusto.md, "`.move
/// extents` reports failure in its rows"). Both are read by the same reader.
#[test]
fn move_and_tag_drop_rows_report_failures() {
    let answer = |rows: serde_json::Value| {
        let body = json!({"Tables": [{"TableName": "Table_0", "Columns": [
            {"ColumnName": "OriginalExtentId", "DataType": "String"}, {"ColumnName": "ResultExtentId", "DataType": "String"},
            {"ColumnName": "Details", "DataType": "String"}],
          "Rows": rows}]});
        results::extent_rewrites(&parse_v1(body.to_string().as_bytes()).unwrap()).unwrap()
    };
    let ok = answer(json!([["9a2b1c3d-0000-4000-8000-00000000000a", "9a2b1c3d-0000-4000-8000-00000000000b", null]]));
    assert_eq!(ok.results, vec![Uuid::parse_str("9a2b1c3d-0000-4000-8000-00000000000b").unwrap()]);
    assert!(ok.failed.is_empty());
    let failed = answer(json!([
        ["9a2b1c3d-0000-4000-8000-00000000000a", "9a2b1c3d-0000-4000-8000-00000000000c", null],
        ["9a2b1c3d-0000-4000-8000-00000000000d", "Failed", "Extent schema does not match the target table"]
    ]));
    assert_eq!(failed.results.len(), 1, "only the rewritten extent's new id");
    assert_eq!(failed.failed.len(), 1);
    assert!(failed.failed[0].contains("00000000000d") && failed.failed[0].contains("does not match"), "{:?}", failed.failed);
}

//! The REST endpoints over real HTTP: auth, v1/v2 formats, errors, request-level faults.

use kusto_sim::{auth::mint_token, ClusterConfig, CommandKind, Fault, Simulator};
use serde_json::{json, Value};

async fn post(url: &str, path: &str, token: Option<&str>, csl: &str) -> reqwest::Result<(u16, Value)> {
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("{url}{path}"))
        .header("x-ms-client-request-id", "KSIM.test;1")
        .json(&json!({"db": "db", "csl": csl, "properties": {"Options": {}}}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await?;
    Ok((status, body))
}

#[tokio::test]
async fn tokens_must_carry_the_cluster_audience() {
    let sim = Simulator::start(&["source", "destination"], ClusterConfig::default()).await.unwrap();
    let src = sim.cluster("source").unwrap();
    let dst = sim.cluster("destination").unwrap();
    assert_ne!(src.url(), dst.url());
    let (status, _) = post(src.url(), "/v1/rest/mgmt", Some(&src.token()), ".show tables").await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = post(src.url(), "/v1/rest/mgmt", Some(&format!("{}/", src.url())).map(|a| mint_token(a)).as_deref(), ".show tables").await.unwrap();
    assert_eq!(status, 200, "a trailing slash in the audience is fine");
    let (status, body) = post(src.url(), "/v1/rest/mgmt", Some(&dst.token()), ".show tables").await.unwrap();
    assert_eq!(status, 401, "a token for the other cluster is refused");
    assert_eq!(body["error"]["code"], "Unauthorized");
    let (status, _) = post(src.url(), "/v1/rest/mgmt", None, ".show tables").await.unwrap();
    assert_eq!(status, 401);
    let (status, _) = post(src.url(), "/v2/rest/query", Some(&mint_token("https://storage.azure.com")), "print 1").await.unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn v2_query_answers_frames_and_v1_commands_answer_tables() {
    let sim = Simulator::start(&["c"], ClusterConfig::default()).await.unwrap();
    let c = &sim.clusters[0];
    let t = c.token();
    let (status, body) = post(c.url(), "/v1/rest/mgmt", Some(&t), ".create table T (a:string, b:datetime, c:timespan, d:dynamic, e:guid, f:bool, g:real)").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["Tables"][0]["TableName"], "Table_0");
    assert_eq!(body["Tables"][0]["Columns"][0], json!({"ColumnName": "TableName", "DataType": "String", "ColumnType": "string"}));
    post(c.url(), "/v1/rest/mgmt", Some(&t), ".ingest inline into table T <| x,2024-01-02T03:04:05.1234567Z,1.00:00:01,\"{\"\"k\"\": [1]}\",6f9619ff-8b86-d011-b42d-00c04fc964ff,true,1.5").await.unwrap();
    let (status, frames) = post(c.url(), "/v2/rest/query", Some(&t), "T | project a, b, c, d, e, f, g, n = long(null)").await.unwrap();
    assert_eq!(status, 200);
    let frames = frames.as_array().unwrap();
    assert_eq!(frames[0]["FrameType"], "DataSetHeader");
    assert_eq!(frames[0]["Version"], "v2.0");
    let last = frames.last().unwrap();
    assert_eq!(last["FrameType"], "DataSetCompletion");
    assert_eq!(last["HasErrors"], false);
    let primary = frames.iter().find(|f| f["TableKind"] == "PrimaryResult").unwrap();
    assert_eq!(primary["Columns"][1], json!({"ColumnName": "b", "ColumnType": "datetime"}));
    assert_eq!(
        primary["Rows"][0],
        json!(["x", "2024-01-02T03:04:05.1234567Z", "1.00:00:01", {"k": [1]}, "6f9619ff-8b86-d011-b42d-00c04fc964ff", true, 1.5, null])
    );
    assert!(frames.iter().any(|f| f["TableKind"] == "QueryCompletionInformation"));
    // Queries on the mgmt endpoint answer v1 with a table of contents.
    let (status, body) = post(c.url(), "/v1/rest/query", Some(&t), "T | count").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["Tables"][0]["Rows"][0][0], 1);
    assert_eq!(body["Tables"][3]["Rows"][0][1], "QueryResult");
    // A command on the query endpoint is refused.
    let (status, _) = post(c.url(), "/v2/rest/query", Some(&t), ".show tables").await.unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn errors_follow_kusto_error_json() {
    let sim = Simulator::start(&["c"], ClusterConfig::default()).await.unwrap();
    let c = &sim.clusters[0];
    let (status, body) = post(c.url(), "/v2/rest/query", Some(&c.token()), "Nope | take 1").await.unwrap();
    assert_eq!(status, 400);
    let e = &body["error"];
    assert_eq!(e["code"], "General_BadRequest");
    assert_eq!(e["message"], "Request is invalid and cannot be executed.");
    assert_eq!(e["@type"], "Kusto.Data.Exceptions.KustoBadRequestException");
    assert!(e["@message"].as_str().unwrap().contains("SEM0100"));
    assert_eq!(e["@context"]["clientRequestId"], "KSIM.test;1");
    assert_eq!(e["@permanent"], true);
}

#[tokio::test]
async fn request_level_faults() {
    let sim = Simulator::start(&["c"], ClusterConfig::default()).await.unwrap();
    let c = &sim.clusters[0];
    let t = c.token();
    c.script_fault(Some(CommandKind::Query), Fault::Throttle, 1);
    c.script_fault(Some(CommandKind::Show), Fault::ServerError(503), 1);
    let (status, body) = post(c.url(), "/v2/rest/query", Some(&t), "print 1").await.unwrap();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["@permanent"], false);
    let (status, _) = post(c.url(), "/v2/rest/query", Some(&t), "print 1").await.unwrap();
    assert_eq!(status, 200, "the scripted fault fired once");
    let (status, _) = post(c.url(), "/v1/rest/mgmt", Some(&t), ".show tables").await.unwrap();
    assert_eq!(status, 503);
    c.script_fault(None, Fault::ConnectionDrop, 1);
    assert!(post(c.url(), "/v1/rest/mgmt", Some(&t), ".show tables").await.is_err(), "the connection dropped");
    // A 200 that carries an error: part of the rows, an error row, HasErrors.
    c.script_fault(Some(CommandKind::Query), Fault::PartialQueryFailure, 1);
    let (status, frames) = post(c.url(), "/v2/rest/query", Some(&t), "print a = 1").await.unwrap();
    assert_eq!(status, 200);
    let frames = frames.as_array().unwrap();
    let completion = frames.last().unwrap();
    assert_eq!(completion["HasErrors"], true);
    assert_eq!(completion["OneApiErrors"][0]["error"]["code"], "LimitsExceeded");
    let primary = frames.iter().find(|f| f["TableKind"] == "PrimaryResult").unwrap();
    assert!(primary["Rows"].as_array().unwrap().last().unwrap()["OneApiErrors"].is_array());
    // Dropped after running: the caller sees an error, but the table exists.
    c.script_fault(Some(CommandKind::Schema), Fault::DropAfterExecution, 1);
    assert!(post(c.url(), "/v1/rest/mgmt", Some(&t), ".create table Z (a:long)").await.is_err());
    let (status, body) = post(c.url(), "/v1/rest/mgmt", Some(&t), ".show tables").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["Tables"][0]["Rows"][0][0], "Z");
}

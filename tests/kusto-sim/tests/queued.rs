//! The ingest-v2 queued ingestion endpoints over HTTP.

use std::sync::Arc;
use std::time::Duration;

use kusto_sim::blob::{BlobStore, MemoryBlobStore};
use kusto_sim::{Cluster, ClusterConfig, Value};
use serde_json::{json, Value as Json};

async fn post(c: &Cluster, path: &str, body: Json) -> (u16, Json) {
    let resp = reqwest::Client::new().post(format!("{}{path}", c.url())).bearer_auth(c.token()).json(&body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn get(c: &Cluster, path: &str) -> (u16, Json) {
    let resp = reqwest::Client::new().get(format!("{}{path}", c.url())).bearer_auth(c.token()).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn queued_ingestion_is_tracked_per_blob() {
    let c = Cluster::start("ingest", ClusterConfig { async_duration: Duration::from_millis(20), ..ClusterConfig::default() }).await.unwrap();
    let store = Arc::new(MemoryBlobStore::default());
    store.put("https://acct/c/ok.csv?sig=W", b"a,1\nb,2\n".to_vec()).await.unwrap();
    c.set_blob_store(store);
    c.command("db", ".create table T (s:string, n:long)").unwrap();
    let body = json!({
        "timestamp": "2025-10-01T12:00:00Z",
        "blobs": [
            {"url": "https://acct/c/ok.csv?sig=R", "sourceId": "s1", "rawSize": 8},
            {"url": "https://acct/c/missing.csv?sig=R", "sourceId": "s2"}
        ],
        "properties": {"format": "csv", "enableTracking": true, "tags": ["drop-by:q1"], "creationTime": "2021-03-04T00:00:00Z"}
    });
    let (status, answer) = post(&c, "/v1/rest/ingestion/queued/db/T", body).await;
    assert_eq!(status, 200, "{answer}");
    let op = answer["ingestionOperationId"].as_str().unwrap().to_string();
    assert!(!op.is_empty());
    let mut last = Json::Null;
    for _ in 0..100 {
        let (status, s) = get(&c, &format!("/v1/rest/ingestion/queued/db/T/{op}?details=true")).await;
        assert_eq!(status, 200);
        last = s;
        if last["status"]["inProgress"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The casing of the official client's OpenAPI spec, not the docs' PascalCase example.
    assert_eq!(last["status"]["succeeded"], 1, "{last}");
    assert_eq!(last["status"]["failed"], 1, "{last}");
    assert!(last["status"].get("Succeeded").is_none(), "{last}");
    let failed = last["details"].as_array().unwrap().iter().find(|d| d["status"] == "Failed").unwrap();
    assert_eq!(failed["sourceId"], "s2");
    assert_eq!(failed["failureStatus"], "Transient");
    assert!(failed["startedAt"].is_string() && failed["lastUpdateTime"].is_string(), "{failed}");
    assert!(!failed.to_string().contains("sig="), "no SAS in status answers");
    let extents = c.extents("db", "T").unwrap();
    assert_eq!(extents.len(), 1);
    assert_eq!(extents[0].tags, vec!["drop-by:q1"]);
    assert_eq!(extents[0].min_created_on, kusto_sim::model::value::parse_datetime("2021-03-04").unwrap());
    assert_eq!(c.query("db", "T | count").unwrap().rows[0].values[0], Value::Long(2));
    let (_, summary) = get(&c, &format!("/v1/rest/ingestion/queued/db/T/{op}")).await;
    assert!(summary.get("details").is_none());
}

#[tokio::test]
async fn queued_ingestion_refuses_bad_requests() {
    let c = Cluster::start("ingest", ClusterConfig::default()).await.unwrap();
    c.command("db", ".create table T (s:string)").unwrap();
    let blobs: Vec<Json> = (0..21).map(|i| json!({"url": format!("https://a/c/{i}")})).collect();
    let (status, _) = post(&c, "/v1/rest/ingestion/queued/db/T", json!({"blobs": blobs, "properties": {"format": "csv"}})).await;
    assert_eq!(status, 400, "at most 20 blobs a call");
    let (status, body) = post(&c, "/v1/rest/ingestion/queued/db/Nope", json!({"blobs": [{"url": "https://a/c/x"}], "properties": {"format": "csv"}})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "BadRequest_TableNotFound");
    let (status, body) = post(&c, "/v1/rest/ingestion/queued/db/T", json!({"blobs": [{"url": "https://a/c/x"}], "properties": {"format": "csv"}})).await;
    assert_eq!(status, 200);
    assert_eq!(body["ingestionOperationId"], "", "no tracking, no id");
    let (status, _) = get(&c, "/v1/rest/ingestion/queued/db/T/nope").await;
    assert_eq!(status, 400);
    let resp = reqwest::Client::new().get(format!("{}/v1/rest/ingestion/queued/db/T/x", c.url())).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    c.script_fault(Some(kusto_sim::CommandKind::QueuedIngest), kusto_sim::Fault::Throttle, 1);
    let (status, _) = post(&c, "/v1/rest/ingestion/queued/db/T", json!({"blobs": [{"url": "https://a/c/x"}], "properties": {"format": "csv"}})).await;
    assert_eq!(status, 429);
    c.script_fault(Some(kusto_sim::CommandKind::QueuedIngest), kusto_sim::Fault::ConnectionDrop, 1);
    let dropped = reqwest::Client::new()
        .post(format!("{}/v1/rest/ingestion/queued/db/T", c.url()))
        .bearer_auth(c.token())
        .json(&json!({"blobs": [{"url": "https://a/c/x"}], "properties": {"format": "csv"}}))
        .send()
        .await;
    let failed = match dropped {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(failed, "the connection dropped");
}

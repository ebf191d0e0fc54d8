//! The client against a real local HTTP server (raw TCP on 127.0.0.1, so it can also reset
//! connections) that plays a script of answers and records every request it saw.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use kusto_copy::kusto::results;
use kusto_copy::kusto::{
    commands, ClientOptions, ClientRequestId, CursorWindow, ErrorKind, ExportRequest, Ident,
    IngestProperties, KustoApi, KustoClient, QueuedBlob, RetryPolicy, SecretUrl,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One scripted answer.
#[derive(Clone)]
enum Reply {
    Status { code: u16, headers: Vec<(&'static str, String)>, body: Vec<u8> },
    /// Read the request, then reset the connection (RST, no answer).
    Reset,
}

fn reply(code: u16, body: impl Into<String>) -> Reply {
    Reply::Status { code, headers: vec![], body: body.into().into_bytes() }
}

#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Serves `script` in order; once it runs out, repeats its last entry.
    async fn start(script: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(_) => return,
                };
                let seen = seen2.clone();
                let script = script.clone();
                tokio::spawn(async move { serve(stream, seen, script).await });
            }
        });
        Server { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn attempts(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, script: Vec<Reply>) {
    // One request per connection: every answer says `Connection: close`.
    let Some(request) = read_request(&mut stream).await else { return };
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(request);
        seen.len() - 1
    };
    match script.get(index).or(script.last()).cloned().unwrap() {
        Reply::Reset => {
            stream.set_zero_linger().unwrap();
            drop(stream);
        }
        Reply::Status { code, headers, body } => {
            let mut head = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nx-ms-activity-id: activity-{index}\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        }
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen { request_line, headers, body })
}

/// A credential that counts how often it is asked, and for which scopes.
#[derive(Debug, Default)]
struct CountingCredential {
    calls: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl TokenCredential for CountingCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.scopes.lock().unwrap().extend(scopes.iter().map(|s| s.to_string()));
        Ok(AccessToken::new(
            "test-token-value",
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}

fn fast_policy(max_attempts: usize) -> RetryPolicy {
    RetryPolicy {
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_attempts,
        max_retry_after: Duration::from_secs(5),
        ..RetryPolicy::default()
    }
}

fn client_for(server: &Server, policy: RetryPolicy) -> (KustoClient, Arc<CountingCredential>) {
    let credential = Arc::new(CountingCredential::default());
    let options = ClientOptions { retry: policy, ..ClientOptions::default() };
    let client = KustoClient::new(&server.url, credential.clone(), options).unwrap();
    (client, credential)
}

fn cursor_answer(cursor: &str) -> String {
    json!([
        {"FrameType": "DataSetHeader", "IsProgressive": false, "Version": "v2.0"},
        {"FrameType": "DataTable", "TableId": 0, "TableKind": "PrimaryResult", "TableName": "PrimaryResult",
         "Columns": [{"ColumnName": "Cursor", "ColumnType": "string"}], "Rows": [[cursor]]},
        {"FrameType": "DataSetCompletion", "HasErrors": false, "Cancelled": false}
    ])
    .to_string()
}

const UNAVAILABLE: &str = r#"{"error":{"code":"ServiceUnavailable","message":"try later","@permanent":false}}"#;
const PERMANENT: &str = r#"{"error":{"code":"General_BadRequest","message":"Request is invalid and cannot be executed.","@message":"Semantic error","@permanent":true}}"#;

#[tokio::test]
async fn transient_failures_are_retried_until_success() {
    let server = Server::start(vec![
        Reply::Status {
            code: 429,
            headers: vec![("Retry-After", "1".to_string())],
            body: r#"{"error":{"code":"LimitsExceeded","message":"throttled","@permanent":false}}"#.into(),
        },
        reply(503, UNAVAILABLE),
        Reply::Reset,
        reply(200, cursor_answer("638000000000000000")),
    ])
    .await;
    let (client, credential) = client_for(&server, fast_policy(5));
    let id = ClientRequestId::new("plan", "job-1", "block 7", 2);
    let started = Instant::now();
    let answer = client.execute("MyDb", &commands::cursor_current(), &id).await.unwrap();
    let elapsed = started.elapsed();

    assert_eq!(results::cursor(&answer).unwrap(), "638000000000000000");
    assert_eq!(server.attempts(), 4, "429, 503, reset, then success");
    // The 429 asked for one second; the backoff alone would wait 10 ms.
    assert!(elapsed >= Duration::from_secs(1), "Retry-After not honoured: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    // One token for all four tries.
    assert_eq!(credential.calls.load(Ordering::SeqCst), 1);

    let seen = server.seen();
    let ids: Vec<&str> = seen.iter().map(|s| s.header("x-ms-client-request-id").unwrap()).collect();
    assert!(ids[0].starts_with("KC.plan;job-1;block_7;2;"), "{}", ids[0]);
    assert_eq!(ids[0], id.as_str());
    assert_eq!(ids[1], format!("{};r1", id.as_str()));
    assert_eq!(ids[3], format!("{};r3", id.as_str()));
}

#[tokio::test]
async fn requests_carry_the_documented_headers_and_body() {
    let server = Server::start(vec![reply(200, cursor_answer("c1"))]).await;
    let (client, credential) = client_for(&server, fast_policy(1));
    let command = commands::cursor_current().with_server_timeout(Duration::from_secs(3600));
    client.execute("My Db", &command, &ClientRequestId::for_step("plan")).await.unwrap();

    let seen = &server.seen()[0];
    assert_eq!(seen.request_line, "POST /v2/rest/query HTTP/1.1");
    assert_eq!(seen.header("authorization"), Some("Bearer test-token-value"));
    assert_eq!(seen.header("accept"), Some("application/json"));
    assert_eq!(seen.header("content-type"), Some("application/json; charset=utf-8"));
    assert!(seen.header("accept-encoding").unwrap_or_default().contains("gzip"));
    assert_eq!(seen.header("x-ms-app"), Some("kusto-copy"));
    assert!(seen.header("x-ms-client-version").unwrap().starts_with("Kusto.Copy.Rust:"));
    let body = seen.json();
    assert_eq!(body["db"], "My Db");
    assert_eq!(body["csl"], "print Cursor=cursor_current()");
    assert_eq!(body["properties"]["Options"]["servertimeout"], "01:00:00");
    // Planning reads (the cursor among them) ask for the latest state on ADX.
    assert_eq!(body["properties"]["Options"]["queryconsistency"], "strongconsistency");
    assert_eq!(
        credential.scopes.lock().unwrap().as_slice(),
        [format!("{}/.default", server.url)]
    );

    // Management commands go to /v1/rest/mgmt with Kusto's 10 minute default.
    let server = Server::start(vec![reply(200, r#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"TableName","DataType":"String"}],"Rows":[["T1"],["T2"]]}]}"#)]).await;
    let (client, _) = client_for(&server, fast_policy(1));
    // Through the trait the engine holds.
    let api: Arc<dyn KustoApi> = Arc::new(client);
    let answer = api
        .execute("Db", &commands::show_tables(), &ClientRequestId::for_step("cleanup"))
        .await
        .unwrap();
    assert_eq!(results::table_names(&answer).unwrap(), vec!["T1", "T2"]);
    let seen = &server.seen()[0];
    assert_eq!(seen.request_line, "POST /v1/rest/mgmt HTTP/1.1");
    assert_eq!(seen.json()["properties"]["Options"]["servertimeout"], "00:10:00");
    assert!(seen.json()["properties"]["Options"].get("queryconsistency").is_none(), "only the reads that need it ask");
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let server = Server::start(vec![reply(400, PERMANENT), reply(200, cursor_answer("never"))]).await;
    let (client, _) = client_for(&server, fast_policy(5));
    let id = ClientRequestId::for_step("plan");
    let err = client.execute("Db", &commands::cursor_current(), &id).await.unwrap_err();
    assert_eq!(server.attempts(), 1);
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert_eq!(err.status, Some(400));
    assert_eq!(err.code.as_deref(), Some("General_BadRequest"));
    assert_eq!(err.activity_id.as_deref(), Some("activity-0"));
    assert_eq!(err.client_request_id.as_deref(), Some(id.as_str()));
    assert!(!err.is_transient());

    // `@permanent: true` wins even over a 5xx.
    let server = Server::start(vec![reply(503, PERMANENT), reply(200, cursor_answer("never"))]).await;
    let (client, _) = client_for(&server, fast_policy(5));
    client.execute("Db", &commands::cursor_current(), &id).await.unwrap_err();
    assert_eq!(server.attempts(), 1);
}

#[tokio::test]
async fn retries_stop_at_the_cap() {
    let server = Server::start(vec![reply(503, UNAVAILABLE)]).await;
    let (client, _) = client_for(&server, fast_policy(3));
    let err = client
        .execute("Db", &commands::cursor_current(), &ClientRequestId::for_step("plan"))
        .await
        .unwrap_err();
    assert_eq!(server.attempts(), 3);
    assert_eq!(err.kind, ErrorKind::ServiceUnavailable);
    assert_eq!(err.activity_id.as_deref(), Some("activity-2"));
    assert!(err.client_request_id.as_deref().unwrap().ends_with(";r2"));
    assert!(err.is_transient(), "the caller may still try later");
}

#[tokio::test]
async fn a_long_retry_after_goes_back_to_the_caller() {
    let server = Server::start(vec![Reply::Status {
        code: 429,
        headers: vec![("Retry-After", "120".to_string())],
        body: Vec::new(),
    }])
    .await;
    let (client, _) = client_for(&server, fast_policy(5));
    let started = Instant::now();
    let err = client
        .execute("Db", &commands::cursor_current(), &ClientRequestId::for_step("plan"))
        .await
        .unwrap_err();
    assert_eq!(server.attempts(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err.kind, ErrorKind::Throttled);
    assert_eq!(err.retry_after, Some(Duration::from_secs(120)));
}

fn export_command() -> kusto_copy::kusto::Command {
    let table = Ident::new("Events").unwrap();
    let window = CursorWindow { from: None, to: "c1".into() };
    let dest = [SecretUrl::parse("https://acct.blob.core.windows.net/c/kc/b1?sv=1&sig=TOPSECRET").unwrap()];
    commands::export_parquet(&ExportRequest {
        table: &table,
        window: &window,
        range: None,
        user_query: None,
        destinations: &dest,
        name_prefix: "b1",
    })
    .unwrap()
}

fn operation_answer() -> String {
    r#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"OperationId","DataType":"Guid","ColumnType":"guid"}],"Rows":[["2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f"]]}]}"#.to_string()
}

#[tokio::test]
async fn a_command_that_may_have_run_is_not_sent_twice() {
    // A 503 or a reset after sending: the export may be running. The client hands the error
    // back; the engine checks before exporting again.
    for first in [reply(503, UNAVAILABLE), Reply::Reset] {
        let server = Server::start(vec![first, reply(200, operation_answer())]).await;
        let (client, _) = client_for(&server, fast_policy(5));
        let err = client
            .execute("Db", &export_command(), &ClientRequestId::new("export", "j", "b", 1))
            .await
            .unwrap_err();
        assert_eq!(server.attempts(), 1);
        assert!(err.is_transient());
        assert!(err.may_have_executed());
    }
    // A 429 means Kusto refused it before running: safe to send again.
    let server = Server::start(vec![reply(429, ""), reply(200, operation_answer())]).await;
    let (client, _) = client_for(&server, fast_policy(5));
    let answer = client
        .execute("Db", &export_command(), &ClientRequestId::new("export", "j", "b", 1))
        .await
        .unwrap();
    assert_eq!(server.attempts(), 2);
    assert!(results::operation_id(&answer).is_ok());
    // The SAS reached the server, inside an obfuscated literal.
    let csl = server.seen()[1].json()["csl"].as_str().unwrap().to_string();
    assert!(csl.contains("h'https://acct.blob.core.windows.net/c/kc/b1?sv=1&sig=TOPSECRET'"), "{csl}");
}

#[tokio::test]
async fn an_error_inside_a_200_is_returned_not_repeated() {
    let body = json!([
        {"FrameType": "DataSetHeader", "IsProgressive": false, "Version": "v2.0"},
        {"FrameType": "DataSetCompletion", "HasErrors": true, "Cancelled": false,
         "OneApiErrors": [{"error": {"code": "LimitsExceeded", "message": "too much",
            "@context": {"activityId": "inner-activity"}, "@permanent": false}}]}
    ]);
    let server = Server::start(vec![reply(200, body.to_string())]).await;
    let (client, _) = client_for(&server, fast_policy(5));
    let id = ClientRequestId::for_step("plan");
    let err = client.execute("Db", &commands::cursor_current(), &id).await.unwrap_err();
    assert_eq!(server.attempts(), 1);
    assert_eq!(err.kind, ErrorKind::Query);
    assert_eq!(err.code.as_deref(), Some("LimitsExceeded"));
    // The answer's own x-ms-activity-id names the request, over the one inside the error.
    assert_eq!(err.activity_id.as_deref(), Some("activity-0"));
    assert_eq!(err.client_request_id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn connection_refused_is_retried_and_reported() {
    // Bind then drop, so the port is very likely closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let credential = Arc::new(CountingCredential::default());
    let options = ClientOptions { retry: fast_policy(2), ..ClientOptions::default() };
    let client = KustoClient::new(&format!("http://127.0.0.1:{port}"), credential, options).unwrap();
    let err = client
        .execute("Db", &export_command(), &ClientRequestId::for_step("export"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Connect);
    assert!(err.is_transient());
    assert!(!err.may_have_executed());
}

#[tokio::test]
async fn queued_ingestion_and_status_on_the_ingest_api() {
    let status_body = std::fs::read_to_string(format!(
        "{}/tests/fixtures/kusto/ingest_status_details.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let server = Server::start(vec![
        reply(200, r#"{"ingestionOperationId":"ingest_op_12345"}"#),
        reply(503, UNAVAILABLE),
        reply(200, status_body),
    ])
    .await;
    let (client, credential) = client_for(&server, fast_policy(3));
    let db = Ident::new("My Db").unwrap();
    let table = Ident::new("kc-Events-staging").unwrap();
    let blobs = [QueuedBlob {
        url: SecretUrl::parse("https://acct.blob.core.windows.net/c/kc/b1/part0.parquet?sig=TOPSECRET").unwrap(),
        source_id: uuid::Uuid::parse_str("123a6999-411e-4226-a333-e79992dd9b95").unwrap(),
        raw_size: Some(1024),
    }];
    let props = IngestProperties {
        format: "parquet".into(),
        creation_time: Some(time::macros::datetime!(2024-03-01 12:00:00 UTC)),
        tags: vec!["drop-by:kc-b1-a1".into()],
        ingest_if_not_exists: vec![],
        ingestion_mapping: Some(kusto_copy::kusto::commands::csv_ordinal_mapping(&["A".into(), "B".into()])),
    };
    let id = ClientRequestId::new("ingest", "job", "b1", 1);
    let op = client.queue_ingestion(&db, &table, &blobs, &props, &id).await.unwrap();
    assert_eq!(op, "ingest_op_12345");

    let seen = server.seen();
    assert_eq!(
        seen[0].request_line,
        "POST /v1/rest/ingestion/queued/My%20Db/kc-Events-staging HTTP/1.1"
    );
    let body = seen[0].json();
    assert_eq!(body["blobs"][0]["url"], blobs[0].url.expose());
    assert_eq!(body["blobs"][0]["sourceId"], "123a6999-411e-4226-a333-e79992dd9b95");
    assert_eq!(body["blobs"][0]["rawSize"], 1024);
    assert_eq!(body["properties"]["format"], "parquet");
    assert_eq!(body["properties"]["enableTracking"], true);
    assert_eq!(body["properties"]["tags"], json!(["drop-by:kc-b1-a1"]));
    assert_eq!(body["properties"]["creationTime"], "2024-03-01T12:00:00.0000000Z");
    assert!(body["properties"].get("ingestIfNotExists").is_none());
    // The spec types the mapping as a string holding its JSON.
    assert_eq!(body["properties"]["ingestionMapping"], r#"[{"Column":"A","Properties":{"Ordinal":"0"}},{"Column":"B","Properties":{"Ordinal":"1"}}]"#);
    assert!(body["timestamp"].is_string());
    // The API version the official clients send (Java ingest-v2, Go), on the ingest API too.
    assert_eq!(seen[0].header("x-ms-version"), Some("2024-12-12"));

    let status = client.ingestion_status(&db, &table, &op, &id).await.unwrap();
    assert_eq!(server.attempts(), 3, "the status read is retried after a 503");
    assert_eq!(
        server.seen()[2].request_line,
        "GET /v1/rest/ingestion/queued/My%20Db/kc-Events-staging/ingest_op_12345?details=true HTTP/1.1"
    );
    assert_eq!(status.blobs.len(), 3);
    // Loopback: the ingest API is served by the same base URL, with the same token.
    assert_eq!(credential.calls.load(Ordering::SeqCst), 1);

    // More than 20 blobs is refused before sending.
    let many: Vec<QueuedBlob> = (0..21).map(|_| blobs[0].clone()).collect();
    let err = client.queue_ingestion(&db, &table, &many, &props, &id).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert_eq!(server.attempts(), 3);
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_and_errors_never_carry_the_sas_or_the_token() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Global, not scoped: tracing caches per-callsite interest across threads, and the other
    // tests of this binary run concurrently. Their logs land here too, and must be as clean.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = Server::start(vec![reply(429, ""), reply(503, UNAVAILABLE)]).await;
    let (client, _) = client_for(&server, fast_policy(5));
    let err = client
        .execute("Db", &export_command(), &ClientRequestId::new("export", "j", "b", 1))
        .await
        .unwrap_err();
    assert_eq!(server.attempts(), 2);

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "the retry was logged: {logs}");
    assert!(logs.contains("<redacted>"), "the command was logged redacted: {logs}");
    for shown in [logs.as_str(), &err.to_string(), &format!("{err:?}"), &format!("{client:?}")] {
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(!shown.contains("test-token-value"), "{shown}");
    }
}

/// A gzip member holding `data` in stored (uncompressed) deflate blocks: enough to prove the
/// client decodes `Content-Encoding: gzip` without a compression crate.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let chunks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    let mut crc: u32 = !0;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[tokio::test]
async fn gzip_answers_are_decoded() {
    let body = cursor_answer("zipped-cursor");
    let server = Server::start(vec![Reply::Status {
        code: 200,
        headers: vec![("Content-Encoding", "gzip".to_string())],
        body: gzip_stored(body.as_bytes()),
    }])
    .await;
    let (client, _) = client_for(&server, fast_policy(1));
    let answer = client
        .execute("Db", &commands::cursor_current(), &ClientRequestId::for_step("plan"))
        .await
        .unwrap();
    assert_eq!(results::cursor(&answer).unwrap(), "zipped-cursor");
}

#[tokio::test]
async fn retries_stop_at_the_elapsed_budget() {
    let server = Server::start(vec![reply(503, UNAVAILABLE)]).await;
    let policy = RetryPolicy {
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_millis(200),
        max_attempts: 100,
        max_elapsed: Duration::from_millis(700),
        ..RetryPolicy::default()
    };
    let (client, _) = client_for(&server, policy);
    let started = Instant::now();
    let err = client
        .execute("Db", &commands::cursor_current(), &ClientRequestId::for_step("plan"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ServiceUnavailable);
    // Waits of 200-400 ms (jitter) fit at most three times in 700 ms, and at least once.
    let attempts = server.attempts();
    assert!((2..=4).contains(&attempts), "{attempts}");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}

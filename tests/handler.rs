//! The custom handler over real HTTP, fed payloads in the exact shape the Functions host
//! sends (double-encoded queue text, numbers as strings, quoted metadata, the timer object,
//! the HTTP `req` object), checking answers, outputs and what was recorded.

use async_trait::async_trait;
use kusto_copy::engine::{Delivery, Engine, EngineError, Outgoing, StepMessage, Tick};
use kusto_copy::handler::{router, AppState};
use kusto_copy::job::JobRecord;
use kusto_copy::storage::checkpoint::{CheckpointStore, MemoryCheckpointStore};
use kusto_copy::storage::queue::MessageSender;
use kusto_copy::storage::StorageError;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An engine whose answers are fixed per step name, recording what it was handed.
#[derive(Default)]
struct ScriptedEngine {
    steps: Mutex<Vec<(StepMessage, Delivery)>>,
    ticks: Mutex<Vec<Tick>>,
    started: Mutex<Vec<String>>,
    /// The queue the handler sends delayed messages to, and how many it had been sent when
    /// each `next-phase` step ran.
    sender: Mutex<Option<Arc<RecordingSender>>>,
    sent_before: Mutex<Vec<usize>>,
    /// Two exports meet here: one run alone waits in vain.
    pair: Pair,
}

struct Pair(tokio::sync::Barrier);

impl Default for Pair {
    fn default() -> Self {
        Pair(tokio::sync::Barrier::new(2))
    }
}

fn msg(job: &str, step: &str) -> StepMessage {
    StepMessage { job: job.into(), activity: Some("default".into()), iteration: Some(1), block: Some(7), step: step.into() }
}

#[async_trait]
impl Engine for ScriptedEngine {
    async fn start_job(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        self.started.lock().unwrap().push(job.id.clone());
        Ok(vec![Outgoing { message: StepMessage { job: job.id.clone(), activity: None, iteration: None, block: None, step: "plan".into() }, delay: Duration::ZERO }])
    }
    async fn step(&self, message: &StepMessage, delivery: &Delivery) -> Result<Vec<Outgoing>, EngineError> {
        self.steps.lock().unwrap().push((message.clone(), delivery.clone()));
        match message.step.as_str() {
            "export" if message.block >= Some(100) => match tokio::time::timeout(Duration::from_secs(5), self.pair.0.wait()).await {
                Ok(_) => Ok(vec![]),
                Err(_) => Err(EngineError::Transient(format!("export {:?} ran alone", message.block))),
            },
            "plan-two" => Ok([100, 101]
                .into_iter()
                .map(|b| Outgoing { message: StepMessage { block: Some(b), ..msg(&message.job, "export") }, delay: Duration::ZERO })
                .collect()),
            "look-later" => Ok(vec![
                Outgoing { message: msg(&message.job, "await-look"), delay: Duration::from_secs(3) },
                Outgoing { message: msg(&message.job, "next-phase"), delay: Duration::ZERO },
            ]),
            "next-phase" => {
                let sent = self.sender.lock().unwrap().as_ref().map_or(0, |s| s.0.lock().unwrap().len());
                self.sent_before.lock().unwrap().push(sent);
                Ok(vec![])
            }
            "export" => Ok(vec![
                Outgoing { message: msg(&message.job, "await-export"), delay: Duration::from_secs(30) },
                Outgoing { message: msg(&message.job, "export-next"), delay: Duration::ZERO },
                Outgoing { message: msg(&message.job, "ingest-next"), delay: Duration::ZERO },
            ]),
            "transient" => Err(EngineError::Transient("cluster throttled".into())),
            "fatal" => Err(EngineError::Permanent("destination table schema does not match: column X".into())),
            "boom" => panic!("engine bug"),
            _ => Ok(vec![]),
        }
    }
    async fn tick(&self, tick: &Tick) -> Result<Vec<Outgoing>, EngineError> {
        self.ticks.lock().unwrap().push(tick.clone());
        Ok(vec![Outgoing { message: msg("cont", "plan"), delay: Duration::ZERO }])
    }
    async fn cancel(&self, _job: &kusto_copy::job::JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        Err(EngineError::Permanent("this test engine is never asked to cancel".into()))
    }
}

#[derive(Default)]
struct RecordingSender(Mutex<Vec<(String, Duration)>>);

#[async_trait]
impl MessageSender for RecordingSender {
    async fn send(&self, text: &str, delay: Duration) -> Result<(), StorageError> {
        self.0.lock().unwrap().push((text.to_owned(), delay));
        Ok(())
    }
}

struct Harness {
    base: String,
    http: reqwest::Client,
    store: Arc<MemoryCheckpointStore>,
    sender: Arc<RecordingSender>,
    engine: Arc<ScriptedEngine>,
}

async fn start() -> Harness {
    start_with(kusto_copy::job::RequestPolicy::emulator()).await
}

async fn start_with(policy: kusto_copy::job::RequestPolicy) -> Harness {
    let store = Arc::new(MemoryCheckpointStore::default());
    let sender = Arc::new(RecordingSender::default());
    let engine = Arc::new(ScriptedEngine::default());
    *engine.sender.lock().unwrap() = Some(sender.clone());
    let state = AppState { store: store.clone(), steps: sender.clone(), engine: engine.clone(), policy: Arc::new(policy), replications: Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    Harness { base, http: reqwest::Client::new(), store, sender, engine }
}

impl Harness {
    async fn invoke(&self, function: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/{function}", self.base))
            .header("X-Azure-Functions-InvocationId", "6c2c1f3e-0000-4000-8000-000000000001")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn status(&self, query: Value) -> (u16, Value) {
        let (code, answer) = self.invoke("status", &http_payload(query)).await;
        assert_eq!(code, 200, "{answer}");
        let res = &answer["Outputs"]["res"];
        let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
        (res["statusCode"].as_u64().unwrap() as u16, body)
    }
}

/// Queue text as the host sends it: the message text JSON-encoded a second time, metadata
/// numbers as strings and string metadata with its own quotes.
fn queue_payload(binding: &str, text: &str, dequeue_count: u32) -> Value {
    json!({
        "Data": { binding: serde_json::to_string(text).unwrap() },
        "Metadata": {
            "DequeueCount": dequeue_count.to_string(),
            "Id": "\"0c6b7c1e-5a44-4c4b-9a57-1d5f0f1f2a3b\"",
            "PopReceipt": "\"AgAAAAMAAAAAAAAAjY2wMcLC2gE=\"",
            "InsertionTime": "\"2026-11-23T10:00:00+00:00\"",
            "ExpirationTime": "\"9999-12-31T23:59:59+00:00\"",
            "NextVisibleTime": "\"2026-11-23T10:10:00+00:00\"",
            "sys": {"MethodName": binding, "UtcNow": "2026-11-23T10:00:01.1234567Z", "RandGuid": "e3d1d8c2-7a6b-4d1e-9f0a-2b3c4d5e6f70"}
        }
    })
}

fn http_payload(query: Value) -> Value {
    json!({
        "Data": { "req": {
            "Url": "https://kc-app.azurewebsites.net/api/status",
            "Method": "GET",
            "Query": query,
            "Headers": {"Accept": ["application/json"], "x-functions-key": ["(redacted by host)"]},
            "Params": {},
            "Body": null
        }},
        "Metadata": {"sys": {"MethodName": "status", "UtcNow": "2026-11-23T10:00:02Z", "RandGuid": "00000000-0000-4000-8000-000000000000"}}
    })
}

const VALID: &str = r#"{"source":"https://src.westeurope.kusto.windows.net/Sales/Orders","destination":"https://trd-q1w2e3.z4.kusto.fabric.microsoft.com/SalesCopy","stagingDirectory":"https://stagingacct.blob.core.windows.net/staging/kc","query":"| where Region == 'EU'"}"#;

#[tokio::test]
async fn readiness_probe_answers_200() {
    let h = start().await;
    let response = h.http.get(format!("{}/", h.base)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn a_request_becomes_a_job_that_status_shows() {
    let h = start().await;
    let (code, answer) = h.invoke("requests", &queue_payload("request", VALID, 1)).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["ReturnValue"]["state"], "Accepted");
    let job_id = answer["ReturnValue"]["jobId"].as_str().unwrap().to_owned();
    // The engine's first message goes to the output binding, as a JSON object: the requests
    // function records and starts a job, and never runs a step (it would reach the clusters
    // before the request's own invocation is over).
    assert_eq!(answer["Outputs"]["next"], json!([{"job": job_id, "step": "plan"}]));
    assert!(h.engine.steps.lock().unwrap().is_empty());
    assert!(answer["Logs"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("accepted")));

    let (code, body) = h.status(json!({"job": job_id})).await;
    assert_eq!(code, 200);
    assert_eq!(body["state"], "Accepted");
    assert_eq!(body["receivedAt"], "2026-11-23T10:00:01.1234567Z");
    assert_eq!(body["spec"]["activities"][0]["source"]["table"], "Orders");
    assert_eq!(body["spec"]["activities"][0]["destination"]["table"], "Orders");
    assert_eq!(body["spec"]["activities"][0]["query"], "| where Region == 'EU'");

    let (code, all) = h.status(json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);
    let (code, missing) = h.status(json!({"job": "nope"})).await;
    assert_eq!(code, 404);
    assert!(missing["error"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn the_same_request_twice_is_one_job() {
    let h = start().await;
    let (_, first) = h.invoke("requests", &queue_payload("request", VALID, 1)).await;
    // A redelivery (DequeueCount 2) and a second identical submission.
    let (code, second) = h.invoke("requests", &queue_payload("request", VALID, 2)).await;
    assert_eq!(code, 200);
    assert_eq!(first["ReturnValue"]["jobId"], second["ReturnValue"]["jobId"]);
    let (_, all) = h.status(json!({})).await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(h.store.list("jobs/").await.unwrap().len(), 1);
}

#[tokio::test]
async fn invalid_requests_are_recorded_as_rejected_with_distinct_reasons() {
    let h = start().await;
    let cases = [
        ("not json", "{source: https://x", "not valid JSON"),
        ("no source", r#"{"destination":"https://b.kusto.windows.net/db","stagingDirectory":"https://s.blob.core.windows.net/c"}"#, "source is required"),
        ("source is a database", &VALID.replace("/Sales/Orders", "/Sales"), "should name a table"),
        ("unknown copy mode", &VALID.replace("\"query\"", "\"copyMode\":\"Everything\",\"query\""), "unknown variant `Everything`"),
        ("period without continuous mode", &VALID.replace("\"query\"", "\"iterationPeriod\":\"00:05:00\",\"query\""), "iterationPeriod applies only"),
        ("zero exports", &VALID.replace("\"query\"", "\"exportCount\":0,\"query\""), "exportCount 0"),
        ("SAS in staging", &VALID.replace("/staging/kc", "/staging/kc?sv=2024&sig=abc"), "must not carry a query string"),
        ("command as query", &VALID.replace("| where Region == 'EU'", ".drop table Orders"), "management command"),
    ];
    let mut reasons = Vec::new();
    for (name, text, expected) in cases {
        let (code, answer) = h.invoke("requests", &queue_payload("request", text, 1)).await;
        assert_eq!(code, 200, "{name}: rejected requests are answered 2xx so the host does not retry them: {answer}");
        assert_eq!(answer["ReturnValue"]["state"], "Rejected", "{name}: {answer}");
        assert!(answer.get("Outputs").and_then(|o| o.get("next")).is_none(), "{name}: a rejected request starts nothing");
        let job_id = answer["ReturnValue"]["jobId"].as_str().unwrap().to_owned();
        let (_, recorded) = h.status(json!({"job": job_id})).await;
        assert_eq!(recorded["state"], "Rejected", "{name}");
        let reason = recorded["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains(expected), "{name}: reason '{reason}' should mention '{expected}'");
        reasons.push(reason);
    }
    let mut distinct = reasons.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), reasons.len(), "reasons must differ: {reasons:#?}");
    assert!(h.engine.started.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_step_reaches_the_engine_and_its_follow_ups_are_sent() {
    let h = start().await;
    let step = json!({"job": "j1", "activity": "default", "iteration": 1, "block": 7, "step": "export"}).to_string();
    let (code, answer) = h.invoke("steps", &queue_payload("step", &step, 3)).await;
    assert_eq!(code, 200, "{answer}");
    let (seen, delivery) = h.engine.steps.lock().unwrap()[0].clone();
    assert_eq!(seen, msg("j1", "export"));
    assert_eq!(delivery.dequeue_count, 3, "DequeueCount arrives as a string");
    assert_eq!(delivery.message_id.as_deref(), Some("0c6b7c1e-5a44-4c4b-9a57-1d5f0f1f2a3b"), "quotes removed");
    // The immediate follow-ups (two: the host runs them side by side) go through the output
    // binding...
    assert_eq!(
        answer["Outputs"]["next"],
        json!([{"job": "j1", "activity": "default", "iteration": 1, "block": 7, "step": "export-next"}, {"job": "j1", "activity": "default", "iteration": 1, "block": 7, "step": "ingest-next"}])
    );
    // ...the delayed one is sent directly with its delay.
    let sent = h.sender.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, Duration::from_secs(30));
    let sent_msg: StepMessage = serde_json::from_str(&sent[0].0).unwrap();
    assert_eq!(sent_msg.step, "await-export");
}

/// The one follow-up due now runs in the invocation; one that waits is on the queue before
/// it runs, not held until the invocation answers (a look at an export just started would
/// wait for the whole chain run inline).
#[tokio::test]
async fn a_follow_up_that_waits_is_sent_before_the_invocation_runs_the_next() {
    let h = start().await;
    let step = json!({"job": "j1", "activity": "default", "iteration": 1, "block": 7, "step": "look-later"}).to_string();
    let (code, answer) = h.invoke("steps", &queue_payload("step", &step, 1)).await;
    assert_eq!(code, 200, "{answer}");
    let ran: Vec<String> = h.engine.steps.lock().unwrap().iter().map(|(m, _)| m.step.clone()).collect();
    assert_eq!(ran, ["look-later", "next-phase"], "the step due now ran in the invocation");
    assert_eq!(*h.engine.sent_before.lock().unwrap(), [1], "the look was sent before it ran");
    let sent = h.sender.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(serde_json::from_str::<StepMessage>(&sent[0].0).unwrap().step, "await-look");
    assert_eq!(sent[0].1, Duration::from_secs(3));
    assert!(answer["Outputs"]["next"].is_null(), "nothing left for the output binding: {answer}");
}

/// Exports due at once (planning's first ones, hand-overs seen by one look) run in the
/// invocation side by side: each waits for the other, so one after the other both fail.
#[tokio::test]
async fn exports_due_together_run_side_by_side_in_the_invocation() {
    let h = start().await;
    let step = json!({"job": "j1", "activity": "default", "iteration": 1, "block": 0, "step": "plan-two"}).to_string();
    let (code, answer) = h.invoke("steps", &queue_payload("step", &step, 1)).await;
    assert_eq!(code, 200, "{answer}");
    let ran: Vec<(Option<u64>, Option<String>)> = h.engine.steps.lock().unwrap().iter().filter(|(m, _)| m.step == "export").map(|(m, d)| (m.block, d.message_id.clone())).collect();
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(ran.iter().all(|(_, id)| id.as_deref().is_some_and(|id| id.contains("/inline-"))), "both inline, each its own delivery: {ran:?}");
    assert_ne!(ran[0].1, ran[1].1);
    assert!(h.sender.0.lock().unwrap().is_empty(), "neither failed back to the queue");
    assert!(answer["Outputs"]["next"].is_null(), "{answer}");
}

#[tokio::test]
async fn step_failures_map_to_what_the_host_should_do() {
    let h = start().await;
    let step = |s: &str| json!({"job": "j1", "step": s}).to_string();
    // Transient: non-2xx, so the host makes the message visible again later.
    let (code, answer) = h.invoke("steps", &queue_payload("step", &step("transient"), 1)).await;
    assert_eq!(code, 503, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("throttled"));
    // Permanent: 2xx (retrying cannot help), the reason in the logs.
    let (code, answer) = h.invoke("steps", &queue_payload("step", &step("fatal"), 1)).await;
    assert_eq!(code, 200);
    assert!(answer["Logs"][0].as_str().unwrap().contains("column X"));
    // A message that is not a step: non-2xx, so it ends in the poison queue, not nowhere.
    let (code, answer) = h.invoke("steps", &queue_payload("step", r#"{"jobb":"x"}"#, 1)).await;
    assert_eq!(code, 500);
    assert!(answer["error"].as_str().unwrap().contains("not a step"));
}

#[tokio::test]
async fn a_panic_fails_one_invocation_and_the_server_keeps_serving() {
    let h = start().await;
    let (code, answer) = h.invoke("steps", &queue_payload("step", &json!({"job": "j", "step": "boom"}).to_string(), 1)).await;
    assert_eq!(code, 500, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("panicked"));
    let (code, _) = h.invoke("steps", &queue_payload("step", &json!({"job": "j", "step": "noop"}).to_string(), 1)).await;
    assert_eq!(code, 200);
    assert_eq!(h.http.get(format!("{}/", h.base)).send().await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn the_timer_reaches_the_engine() {
    let h = start().await;
    let payload = json!({
        "Data": {"timer": {
            "Schedule": {"AdjustForDST": true},
            "ScheduleStatus": {"Last": "2026-11-23T09:59:00+00:00", "Next": "2026-11-23T10:00:00+00:00", "LastUpdated": "2026-11-23T09:59:00+00:00"},
            "IsPastDue": true
        }},
        "Metadata": {"sys": {"MethodName": "scheduler", "UtcNow": "2026-11-23T10:00:00.5Z", "RandGuid": "00000000-0000-4000-8000-000000000000"}}
    });
    let (code, answer) = h.invoke("scheduler", &payload).await;
    assert_eq!(code, 200, "{answer}");
    let tick = h.engine.ticks.lock().unwrap()[0].clone();
    assert!(tick.past_due);
    assert_eq!(tick.now.unix_timestamp(), 1_795_428_000);
    assert_eq!(answer["Outputs"]["next"][0]["job"], "cont");
    // A first run has no ScheduleStatus yet.
    let first_run = json!({"Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": false}}, "Metadata": {}});
    assert_eq!(h.invoke("scheduler", &first_run).await.0, 200);
}

#[tokio::test]
async fn unknown_functions_and_bad_payloads_say_what_is_wrong() {
    let h = start().await;
    let (code, answer) = h.invoke("copy-everything", &json!({"Data": {}, "Metadata": {}})).await;
    assert_eq!(code, 404);
    assert!(answer["error"].as_str().unwrap().contains("copy-everything"));

    let response = h.http.post(format!("{}/requests", h.base)).body("not json").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("not JSON"));

    let (code, answer) = h.invoke("requests", &json!({"Data": {"wrong": "x"}, "Metadata": {}})).await;
    assert_eq!(code, 400);
    assert!(answer["error"].as_str().unwrap().contains("no binding 'request'"));

    let (code, answer) = h.invoke("scheduler", &json!({"Data": {"timer": 42}, "Metadata": {}})).await;
    assert_eq!(code, 400, "{answer}");
    let (code, _) = h.invoke("status", &json!({"Data": {"req": "GET /"}, "Metadata": {}})).await;
    assert_eq!(code, 400);
}

#[test]
fn function_folders_match_the_handler() {
    use kusto_copy::handler::bindings;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut folders: Vec<String> = std::fs::read_dir(root.join("functions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    folders.sort();
    let mut served = bindings::FUNCTIONS.to_vec();
    served.sort();
    assert_eq!(folders, served);

    let read = |f: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(root.join("functions").join(f).join("function.json")).unwrap()).unwrap() };
    let binding = |v: &Value, dir: &str| v["bindings"].as_array().unwrap().iter().find(|b| b["direction"] == dir).cloned().unwrap();
    let requests = read("requests");
    assert_eq!(binding(&requests, "in")["name"], bindings::REQUEST);
    assert_eq!(binding(&requests, "in")["queueName"], kusto_copy::config::queues::REQUESTS);
    for f in ["requests", "steps", "scheduler"] {
        let out = binding(&read(f), "out");
        assert_eq!(out["name"], bindings::NEXT, "{f}");
        assert_eq!(out["queueName"], kusto_copy::config::queues::STEPS, "{f}");
    }
    assert_eq!(binding(&read("steps"), "in")["name"], bindings::STEP);
    assert_eq!(binding(&read("steps"), "in")["queueName"], kusto_copy::config::queues::STEPS);
    assert_eq!(binding(&read("scheduler"), "in")["name"], bindings::TIMER);
    // The schedule is a setting (`%KC_SCHEDULE%`, resolved by the host from app settings), so
    // tests and deployments choose it; the harness resolves it the same way.
    assert_eq!(binding(&read("scheduler"), "in")["schedule"], "%KC_SCHEDULE%");
    let status = read("status");
    assert_eq!(binding(&status, "in")["name"], bindings::REQ);
    assert_eq!(binding(&status, "in")["authLevel"], "function");
    assert_eq!(binding(&status, "out")["name"], bindings::RES);

    let host: Value = serde_json::from_str(&std::fs::read_to_string(root.join("host.json")).unwrap()).unwrap();
    assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
    assert_eq!(host["customHandler"]["description"]["defaultExecutablePath"], "kc");
    assert_eq!(host["customHandler"]["description"]["arguments"], json!(["serve"]));
    assert_eq!(host["customHandler"]["enableProxyingHttpRequest"], false);
    // What we enqueue ourselves is plain text; the host must read it the same way.
    assert_eq!(host["extensions"]["queues"]["messageEncoding"], "none");
}

/// Hostile and careless requests, each refused for a reason that names what was refused,
/// through the `requests` function (recorded as rejected once, answered 2xx, nothing
/// started or sent) and through `kc validate` (exit 2, the same reason on stderr); and the
/// accepted ones accepted by both. The policy is production's: no loopback, no allow-lists.
#[tokio::test]
async fn every_refused_class_through_requests_and_kc_validate() {
    let base = serde_json::from_str::<Value>(VALID).unwrap();
    let with = |key: &str, value: Value| {
        let mut r = base.clone();
        r[key] = value;
        r.to_string()
    };
    let query = |q: &str| with("query", json!(q));
    let refused: Vec<(&str, String, &str)> = vec![
        ("userinfo in a cluster URI", with("source", json!("https://src.westeurope.kusto.windows.net@evil.example/Sales/Orders")), "evil.example"),
        ("a look-alike cluster host", with("source", json!("https://evilkusto.windows.net/Sales/Orders")), "evilkusto.windows.net"),
        ("a cluster on another port", with("source", json!("https://src.westeurope.kusto.windows.net:8443/Sales/Orders")), "port"),
        ("a cluster by IP", with("source", json!("https://10.1.2.3/Sales/Orders")), "10.1.2.3"),
        ("loopback without the emulator", with("source", json!("https://127.0.0.1:8080/Sales/Orders")), "127.0.0.1"),
        ("a storage look-alike", with("stagingDirectory", json!("https://stagingacct.blob.core.windows.net.evil.example/staging")), "evil.example"),
        ("staging on any host", with("stagingDirectory", json!("https://evil.example/staging")), "evil.example"),
        ("staging over http", with("stagingDirectory", json!("http://stagingacct.blob.core.windows.net/staging")), "https"),
        ("union", query("| union Other"), "union"),
        ("join", query("| join (Other) on OrderId"), "join"),
        ("lookup", query("| lookup Other on OrderId"), "lookup"),
        ("take", query("| take 10"), "take"),
        ("summarize", query("| summarize count() by Region"), "summarize"),
        ("distinct", query("| distinct Region"), "distinct"),
        ("evaluate", query("| evaluate bag_unpack(Props)"), "evaluate"),
        ("a subquery", query("| where OrderId in (Other | project OrderId)"), "subquery"),
        ("cluster()", query("| where OrderId in (cluster('x').database('y').T | project OrderId)"), "cluster"),
        ("time-dependent", query("| where Timestamp > ago(1d)"), "ago"),
        ("random", query("| extend r = rand()"), "rand"),
        ("order-dependent", query("| serialize | extend p = prev(OrderId)"), "serialize"),
        ("let", query("| where true; let x = 1"), ";"),
        ("a second command", query("| where true <| .drop table Orders"), "<|"),
        ("another app's identity", with("managedIdentityClientId", json!("11111111-2222-3333-4444-555555555555")), "managedIdentityClientId"),
        ("too many exports", with("exportCount", json!(1000)), "exportCount"),
        ("too large", with("query", json!(format!("| where Region in ({})", vec!["'EU'"; 20_000].join(",")))), "64"),
    ];
    let accepted = [VALID.to_owned(), query("| where Region == 'EU' | project OrderId, Region, Amount"), query("| extend Total = Amount * 2 | project-away Secret | project-rename Id = OrderId")];

    let h = start_with(kusto_copy::job::RequestPolicy { allowed_clusters: None, allowed_storage_accounts: None, loopback: false, app_client_id: None }).await;
    let dir = std::env::temp_dir().join(format!("kc-hostile-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let validate = |name: &str, text: &str| {
        let path = dir.join(format!("{}.json", name.replace(' ', "-")));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kc")).arg("validate").arg(&path).env_remove("KC_CREDENTIAL").env_remove("KC_ALLOWED_CLUSTERS").env_remove("KC_ALLOWED_STORAGE_ACCOUNTS").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let mismatches: Vec<String> = refused
        .iter()
        .filter_map(|(name, text, names)| {
            let (code, stderr) = validate(name, text);
            (code != Some(2) || !stderr.contains(names)).then(|| format!("{name}: exit {code:?}, expected the reason to name '{names}': {stderr}"))
        })
        .collect();
    assert!(mismatches.is_empty(), "kc validate:\n{}", mismatches.join("\n"));
    for (name, text, names) in &refused {
        for delivery in [1, 2] {
            let (code, answer) = h.invoke("requests", &queue_payload("request", text, delivery)).await;
            assert_eq!(code, 200, "{name}: {answer}");
            assert_eq!(answer["ReturnValue"]["state"], "Rejected", "{name}: {answer}");
            assert!(answer.get("Outputs").and_then(|o| o.get("next")).is_none(), "{name}: nothing is started");
            assert!(answer["ReturnValue"]["reason"].as_str().unwrap().contains(names), "{name}: {answer}");
        }
    }
    assert!(h.engine.started.lock().unwrap().is_empty(), "no refused request reached the engine");
    assert!(h.sender.0.lock().unwrap().is_empty(), "nothing was sent");
    assert_eq!(h.store.list("jobs/").await.unwrap().len(), refused.len(), "each rejection recorded once, though delivered twice");
    for text in &accepted {
        let (code, stderr) = validate("accepted", text);
        assert_eq!(code, Some(0), "{text}: {stderr}");
        let (_, answer) = h.invoke("requests", &queue_payload("request", text, 1)).await;
        assert_eq!(answer["ReturnValue"]["state"], "Accepted", "{text}: {answer}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

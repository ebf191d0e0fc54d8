//! The host harness against `kc serve` and an in-process handler, over Azurite queues: what
//! the Functions host does with answers (outputs only on 2xx, retries after the visibility
//! timeout, poison after maxDequeueCount, timers on their schedule) is what the handler gets.

mod common;

use async_trait::async_trait;
use kc_host_harness::{Host, Outcome};
use kc_test_stack::Azurite;
use kusto_copy::engine::{Delivery, Engine, EngineError, Outgoing, StepMessage, Tick};
use kusto_copy::handler::{router, AppState};
use kusto_copy::job::JobRecord;
use kusto_copy::storage::checkpoint::MemoryCheckpointStore;
use kusto_copy::storage::queue::{MessageEncoding, StorageQueue};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn repo() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Clusters on a closed loopback port: tests never send traffic off this machine, and a
/// cluster that refuses connections is a transient failure.
const VALID: &str = r#"{"jobId":"j-valid","source":"http://127.0.0.1:9/Sales/Orders","destination":"http://127.0.0.1:9/Sales","stagingDirectory":"https://127.0.0.1:9/devstoreaccount1/staging"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kc_serve_under_the_harness_records_rejects_and_poisons() {
    let azurite = Azurite::start();
    let port = common::free_port();
    let _kc = common::spawn_kc_serve(&azurite, port);
    let mut host = Host::load(repo(), &format!("http://127.0.0.1:{port}"), common::host_queues(&azurite));
    assert_eq!(host.settings.encoding, kc_host_harness::MessageEncoding::None, "read from host.json");
    assert_eq!(host.settings.max_dequeue_count, 5, "read from host.json");
    // host.json says 30 s; a test cannot wait 5 x 30 s for the poison queue.
    host.settings.visibility_timeout = Duration::from_secs(1);
    let host = Arc::new(host);
    common::wait_ready(port).await;

    let requests = host.queue("kc-requests").await;
    requests.send(VALID, Duration::ZERO).await.unwrap();
    requests.send(&VALID.replace("j-valid", "j-bad").replace("/Sales/Orders", "/OnlyADatabase"), Duration::ZERO).await.unwrap();
    let outcomes = host
        .run_until(Duration::from_secs(30), |o| o.iter().filter(|x| matches!(x, Outcome::Succeeded { .. })).count() == 2)
        .await;
    let mut requests_outputs: Vec<usize> = outcomes
        .iter()
        .filter_map(|o| match o { Outcome::Succeeded { function, outputs } if function == "requests" => Some(*outputs), _ => None })
        .collect();
    requests_outputs.sort();
    assert_eq!(requests_outputs, vec![0, 1], "the accepted job starts with one plan message, the rejected one with none: {outcomes:?}");

    let (code, job) = host.http_get("status", &[("job", "j-valid")]).await;
    assert_eq!((code, job["state"].as_str()), (200, Some("Accepted")));
    let (code, job) = host.http_get("status", &[("job", "j-bad")]).await;
    assert_eq!((code, job["state"].as_str()), (200, Some("Rejected")));
    assert!(job["reason"].as_str().unwrap().contains("should name a table"));
    assert!(host.queue("kc-requests-poison").await.receive(32, Duration::from_secs(1)).await.unwrap().is_empty(), "rejected requests are not poisoned");

    // The source cluster refuses connections: the plan step fails as transient every time,
    // comes back after the visibility timeout with a rising dequeue count, and lands in the
    // poison queue after 5 failures.
    let outcomes = host.run_until(Duration::from_secs(60), |o| o.iter().any(|x| matches!(x, Outcome::Poisoned { .. }))).await;
    let counts: Vec<u32> = outcomes.iter().filter_map(|o| match o { Outcome::Failed { dequeue_count, .. } => Some(*dequeue_count), _ => None }).collect();
    assert_eq!(counts, vec![1, 2, 3, 4], "{outcomes:?}");
    assert_eq!(outcomes.last().unwrap(), &Outcome::Poisoned { function: "steps".into(), queue: "kc-steps-poison".into() });
    let poisoned = host.queue("kc-steps-poison").await.receive(32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(poisoned.len(), 1);
    let step: serde_json::Value = serde_json::from_str(&poisoned[0].text).unwrap();
    assert_eq!((step["job"].as_str(), step["step"].as_str()), (Some("j-valid"), Some("plan")));
}

/// An engine that runs a fixed chain: start → a → (b now, c in 2 s) → done, failing `a` once.
#[derive(Default)]
struct ChainEngine {
    seen: Mutex<Vec<(String, u32)>>,
    failed_once: Mutex<bool>,
}

fn step(job: &str, name: &str) -> StepMessage {
    StepMessage { job: job.into(), activity: None, iteration: None, block: None, step: name.into() }
}

#[async_trait]
impl Engine for ChainEngine {
    async fn start_job(&self, job: &JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        Ok(vec![Outgoing { message: step(&job.id, "a"), delay: Duration::ZERO }])
    }
    async fn step(&self, m: &StepMessage, d: &Delivery) -> Result<Vec<Outgoing>, EngineError> {
        self.seen.lock().unwrap().push((m.step.clone(), d.dequeue_count));
        match m.step.as_str() {
            "a" => {
                let mut failed = self.failed_once.lock().unwrap();
                if !*failed {
                    *failed = true;
                    return Err(EngineError::Transient("first try throttled".into()));
                }
                Ok(vec![
                    Outgoing { message: step(&m.job, "b"), delay: Duration::ZERO },
                    Outgoing { message: step(&m.job, "b2"), delay: Duration::ZERO },
                    Outgoing { message: step(&m.job, "c"), delay: Duration::from_secs(2) },
                ])
            }
            _ => Ok(vec![]),
        }
    }
    async fn tick(&self, _t: &Tick) -> Result<Vec<Outgoing>, EngineError> {
        Ok(vec![Outgoing { message: step("timer-job", "t"), delay: Duration::ZERO }])
    }
    async fn cancel(&self, _job: &kusto_copy::job::JobRecord) -> Result<Vec<Outgoing>, EngineError> {
        Err(EngineError::Permanent("this test engine is never asked to cancel".into()))
    }
}

/// The handler serving a [`ChainEngine`] on a loopback port, and a harness host driving it.
async fn chain_host(azurite: &Azurite) -> (Arc<ChainEngine>, Host) {
    let clients = common::clients(azurite);
    let steps = StorageQueue::new(clients.queue("kc-steps").unwrap(), "kc-steps", MessageEncoding::None);
    steps.ensure_exists().await.unwrap();
    let engine = Arc::new(ChainEngine::default());
    let state = AppState { store: Arc::new(MemoryCheckpointStore::default()), steps: Arc::new(steps), engine: engine.clone(), policy: Arc::new(kusto_copy::job::RequestPolicy::emulator()), replications: Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    (engine, Host::load(repo(), &url, common::host_queues(azurite)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_retries_delays_and_timers_flow_through_the_harness() {
    let azurite = Azurite::start();
    let (engine, mut host) = chain_host(&azurite).await;
    host.settings.visibility_timeout = Duration::from_secs(1);
    host.app_settings.insert("KC_SCHEDULE".into(), "0 */1 * * * *".into());
    let host = Arc::new(host);

    host.queue("kc-requests").await.send(VALID, Duration::ZERO).await.unwrap();
    let started = std::time::Instant::now();
    host.run_until(Duration::from_secs(30), |_| engine.seen.lock().unwrap().iter().any(|(s, _)| s == "c")).await;
    let mut seen = engine.seen.lock().unwrap().clone();
    seen.sort();
    // `a` failed once and came back with dequeue count 2; `b` and `b2` came through the
    // output binding (two due at once: one alone would run in `a`'s invocation); `c` was
    // sent with a 2 s delay by the handler itself.
    assert_eq!(seen, vec![("a".into(), 1), ("a".into(), 2), ("b".into(), 1), ("b2".into(), 1), ("c".into(), 1)], "{seen:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "c arrived after its delay");

    // The timer's schedule is `%KC_SCHEDULE%` in function.json, resolved from the app
    // settings as the host does: every minute, on the minute, is the documented default.
    let after = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:30Z").unwrap().with_timezone(&chrono::Utc);
    let next: Vec<String> = host.timer_occurrences("scheduler", after, 2).iter().map(|t| t.to_rfc3339()).collect();
    assert_eq!(next, vec!["2026-11-23T10:01:00+00:00", "2026-11-23T10:02:00+00:00"]);
    // A tick's output reaches the steps function.
    assert_eq!(host.fire_timer("scheduler", false).await, Outcome::Succeeded { function: "scheduler".into(), outputs: 1 });
    host.run_until(Duration::from_secs(10), |_| engine.seen.lock().unwrap().iter().any(|(s, _)| s == "t")).await;
}

/// The host's queue listener backs off while its queue is empty (100 ms, doubling up to
/// `maxPollingInterval`), but a message an output binding of the same host adds wakes it at
/// once (the queue extension's `SharedQueueWatcher`: `QueueListener.Notify`). The steps
/// listener here has been idle long enough to be in a wait of 3.2 s or more; the request's
/// output reaches it long before that wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_binding_wakes_the_listener_of_its_queue() {
    let azurite = Azurite::start();
    let (engine, mut host) = chain_host(&azurite).await;
    host.settings.max_polling_interval = Duration::from_secs(30);
    let host = Arc::new(host);
    host.queue("kc-requests").await;
    host.queue("kc-steps").await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listening = tokio::spawn({
        let (host, stop) = (host.clone(), stop.clone());
        async move { host.listen(stop).await }
    });
    // Empty looks at 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s: at 4 s both listeners wait until 6.3 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The request goes through one look of this test's own (the listeners sleep), and its
    // output, the job's first step, is written to kc-steps by the binding.
    host.queue("kc-requests").await.send(VALID, Duration::ZERO).await.unwrap();
    let delivered = host.poll_once().await;
    assert_eq!(delivered, vec![Outcome::Succeeded { function: "requests".into(), outputs: 1 }]);
    let written = std::time::Instant::now();
    while !engine.seen.lock().unwrap().iter().any(|(s, _)| s == "a") {
        assert!(written.elapsed() < Duration::from_secs(2), "the steps listener slept through the binding's message (its back-off ends at 6.3 s)");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    listening.await.unwrap();
}

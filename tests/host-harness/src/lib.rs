//! A stand-in for the Azure Functions host, driving a custom handler the way the host does
//! (`shared/reference/functions-host.md`); no Functions host can be installed here.
//!
//! It reads `functions/*/function.json` and `host.json`, polls the trigger queues in Azurite,
//! delivers each message in the host's payload shape (queue text JSON-encoded a second time,
//! numbers as strings, quoted metadata), writes output bindings only when the answer is 2xx,
//! leaves a failed message to come back after `visibilityTimeout`, moves it to
//! `<queue>-poison` once it has failed `maxDequeueCount` times, and fires timers on their
//! NCRONTAB schedule. Messages of one poll are delivered concurrently, as the host does with
//! a batch.
//!
//! It is a library so that integration tests and binaries (the serverless demo, chaos and
//! performance runs) share one host. It knows nothing of kusto-copy: queues come in through
//! [`QueueService`], which the caller implements over Azurite (or anything else), so the
//! workspace has no dependency cycle.

use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Any error of the queue service; the harness treats it as a bug in the test setup.
pub type QueueError = Box<dyn std::error::Error + Send + Sync>;

/// How message text is stored in the queue (host.json `extensions.queues.messageEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEncoding {
    None,
    Base64,
}

/// A received message, its text already decoded with the queue's encoding.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub pop_receipt: String,
    pub dequeue_count: u32,
    pub text: String,
    pub insertion_time: Option<time::OffsetDateTime>,
    pub expiration_time: Option<time::OffsetDateTime>,
    pub next_visible: Option<time::OffsetDateTime>,
}

/// One queue, as the host uses it.
#[async_trait]
pub trait HostQueue: Send + Sync {
    fn name(&self) -> &str;
    /// Sends `text`, invisible for `delay`.
    async fn send(&self, text: &str, delay: Duration) -> Result<(), QueueError>;
    /// Receives up to `max` messages, hiding them for `visibility`.
    async fn receive(&self, max: u8, visibility: Duration) -> Result<Vec<Received>, QueueError>;
    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), QueueError>;
    /// Makes a received message visible again after `visibility`.
    async fn release(&self, id: &str, pop_receipt: &str, visibility: Duration) -> Result<(), QueueError>;
}

/// Opens queues by name, creating them if needed (the host creates its queues too).
#[async_trait]
pub trait QueueService: Send + Sync {
    async fn open(&self, name: &str, encoding: MessageEncoding) -> Result<Arc<dyn HostQueue>, QueueError>;
}

#[derive(Debug, Clone)]
pub enum Trigger {
    Queue { binding: String, queue: String },
    Timer { binding: String, schedule: String },
    Http { binding: String },
}

#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub trigger: Trigger,
    /// Queue output bindings: binding name → queue.
    pub queue_outputs: Vec<(String, String)>,
}

/// The `extensions.queues` settings of host.json that change delivery.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub encoding: MessageEncoding,
    pub visibility_timeout: Duration,
    pub max_dequeue_count: u32,
    pub batch_size: u8,
    /// A new batch is fetched when at most this many of a queue's messages are running
    /// (default: half the batch size).
    pub new_batch_threshold: usize,
    /// The longest wait between two looks at an empty queue.
    pub max_polling_interval: Duration,
}

/// What happened to one delivered message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded { function: String, outputs: usize },
    /// Non-2xx: the message comes back after the visibility timeout.
    Failed { function: String, status: u16, dequeue_count: u32 },
    /// Failed for the last allowed time: moved to the poison queue.
    Poisoned { function: String, queue: String },
}

pub struct Host {
    pub functions: Vec<Function>,
    pub settings: QueueSettings,
    /// Handler instances; invocations go to them in turn (scale-out).
    handlers: Vec<String>,
    http: reqwest::Client,
    service: Arc<dyn QueueService>,
    /// App settings for `%NAME%` binding expressions (the timer's schedule), as the host
    /// resolves them; starts as the process environment.
    pub app_settings: HashMap<String, String>,
    queues: tokio::sync::Mutex<HashMap<String, Arc<dyn HostQueue>>>,
    invocations: std::sync::atomic::AtomicU64,
    /// Per queue, what wakes its listener from an empty-queue wait: the host's shared queue
    /// watcher (see [`Host::listen`]).
    watchers: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
}

/// A host.json TimeSpan, `hh:mm:ss` with an optional fraction of a second.
fn duration(text: &str) -> Duration {
    let parts: Vec<f64> = text.split(':').map(|p| p.parse().expect("hh:mm:ss[.fff]")).collect();
    Duration::from_secs_f64(parts[0] * 3600.0 + parts[1] * 60.0 + parts[2])
}

impl Host {
    /// Reads the app at `root` (host.json and functions/) and drives the handler at `handler`.
    pub fn load(root: &Path, handler: &str, service: Arc<dyn QueueService>) -> Host {
        Host::load_many(root, &[handler], service)
    }

    /// The same, with several handler instances sharing the queues, as on a scaled-out app.
    pub fn load_many(root: &Path, handlers: &[&str], service: Arc<dyn QueueService>) -> Host {
        let host: Value = serde_json::from_str(&std::fs::read_to_string(root.join("host.json")).unwrap()).unwrap();
        let q = &host["extensions"]["queues"];
        let settings = QueueSettings {
            encoding: match q["messageEncoding"].as_str().unwrap_or("base64") {
                "none" => MessageEncoding::None,
                _ => MessageEncoding::Base64,
            },
            visibility_timeout: q["visibilityTimeout"].as_str().map(duration).unwrap_or(Duration::ZERO),
            max_dequeue_count: q["maxDequeueCount"].as_u64().unwrap_or(5) as u32,
            batch_size: q["batchSize"].as_u64().unwrap_or(16) as u8,
            new_batch_threshold: q["newBatchThreshold"].as_u64().unwrap_or(q["batchSize"].as_u64().unwrap_or(16) / 2) as usize,
            max_polling_interval: q["maxPollingInterval"].as_str().map(duration).unwrap_or(Duration::from_secs(60)),
        };
        let mut functions = Vec::new();
        for entry in std::fs::read_dir(root.join("functions")).unwrap() {
            let dir = entry.unwrap().path();
            let def: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("function.json")).unwrap()).unwrap();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let mut trigger = None;
            let mut queue_outputs = Vec::new();
            for b in def["bindings"].as_array().unwrap() {
                let binding = b["name"].as_str().unwrap().to_owned();
                match (b["type"].as_str().unwrap(), b["direction"].as_str().unwrap()) {
                    ("queueTrigger", "in") => trigger = Some(Trigger::Queue { binding, queue: b["queueName"].as_str().unwrap().into() }),
                    ("timerTrigger", "in") => trigger = Some(Trigger::Timer { binding, schedule: b["schedule"].as_str().unwrap().into() }),
                    ("httpTrigger", "in") => trigger = Some(Trigger::Http { binding }),
                    ("queue", "out") => queue_outputs.push((binding, b["queueName"].as_str().unwrap().into())),
                    _ => {}
                }
            }
            functions.push(Function { name, trigger: trigger.expect("every function has a trigger"), queue_outputs });
        }
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        Host {
            functions,
            settings,
            handlers: handlers.iter().map(|h| h.trim_end_matches('/').to_owned()).collect(),
            http: reqwest::Client::new(),
            service,
            app_settings: std::env::vars().collect(),
            queues: Default::default(),
            invocations: Default::default(),
            watchers: Default::default(),
        }
    }

    /// A queue with the host's encoding, created if needed (the host creates its queues too).
    pub async fn queue(&self, name: &str) -> Arc<dyn HostQueue> {
        let mut queues = self.queues.lock().await;
        if let Some(q) = queues.get(name) {
            return q.clone();
        }
        let q = self.service.open(name, self.settings.encoding).await.unwrap_or_else(|e| panic!("open queue {name}: {e}"));
        queues.insert(name.to_owned(), q.clone());
        q
    }

    /// The watcher of queue `name`: notified when an output binding of this host adds a
    /// message to it.
    fn watcher(&self, name: &str) -> Arc<tokio::sync::Notify> {
        self.watchers.lock().unwrap().entry(name.to_owned()).or_default().clone()
    }

    fn function(&self, name: &str) -> &Function {
        self.functions.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no function {name}"))
    }

    /// Polls every queue-triggered function once and delivers what it received, concurrently.
    pub async fn poll_once(self: &Arc<Self>) -> Vec<Outcome> {
        let mut tasks = Vec::new();
        for f in &self.functions {
            let Trigger::Queue { queue, .. } = &f.trigger else { continue };
            let q = self.queue(queue).await;
            // While a function runs the host keeps the message hidden; a long lease does that.
            let received = q.receive(self.settings.batch_size, Duration::from_secs(300)).await.unwrap();
            for message in received {
                let (host, function, q) = (self.clone(), f.name.clone(), q.clone());
                tasks.push(tokio::spawn(async move { host.deliver(&function, q.as_ref(), message).await }));
            }
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        outcomes
    }

    /// Delivers messages the way the host's queue listener does, until `stop` is set (then
    /// waits for the invocations in flight): per queue, a batch of `batchSize` is received
    /// whenever at most `newBatchThreshold` of its messages are running, so at most their
    /// sum run at once; after a look that found the queue empty the next waits 100 ms,
    /// doubling up to `maxPollingInterval`, and a look that found messages resets the wait
    /// (the queue trigger's polling algorithm: azure-functions/functions-bindings-storage-
    /// queue-trigger, "Polling algorithm" and "Concurrency"). That wait ends early when an
    /// output binding of this host adds a message to the queue: the queue extension's
    /// `QueueListener` registers with a `SharedQueueWatcher`, its output collectors call
    /// `Notify(queueName)` after each add, and `Notify` completes the task the listener's
    /// back-off waits on (Azure/azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.Storage
    /// queues, `QueueListener.Notify`, `CreateDelayWithNotificationTask`). Messages sent
    /// otherwise (the handler's own queue client, `kc submit`) wake nothing. Returns every
    /// outcome.
    pub async fn listen(self: &Arc<Self>, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<Outcome> {
        let mut listeners = Vec::new();
        for f in &self.functions {
            let Trigger::Queue { queue, .. } = &f.trigger else { continue };
            let (host, function, stop) = (self.clone(), f.name.clone(), stop.clone());
            let q = self.queue(queue).await;
            listeners.push(tokio::spawn(async move { host.listen_to(&function, q, stop).await }));
        }
        let mut all = Vec::new();
        for l in listeners {
            all.extend(l.await.unwrap());
        }
        all
    }

    async fn listen_to(self: Arc<Self>, function: &str, q: Arc<dyn HostQueue>, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<Outcome> {
        use std::sync::atomic::Ordering;
        const FIRST_WAIT: Duration = Duration::from_millis(100);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let finished = Arc::new(tokio::sync::Notify::new());
        let mut deliveries = tokio::task::JoinSet::new();
        let mut wait = FIRST_WAIT;
        let watcher = self.watcher(q.name());
        while !stop.load(Ordering::SeqCst) {
            if running.load(Ordering::SeqCst) > self.settings.new_batch_threshold {
                // Woken by a finished invocation; the timeout only re-checks `stop`.
                let _ = tokio::time::timeout(Duration::from_millis(100), finished.notified()).await;
                continue;
            }
            // The host's listener waits on a notification made anew for each look: one from
            // before this look is spent (the look sees that message anyway).
            let _ = tokio::time::timeout(Duration::ZERO, watcher.notified()).await;
            let received = q.receive(self.settings.batch_size, Duration::from_secs(300)).await.unwrap();
            if received.is_empty() {
                // A notification during the look ends the wait at once, as in the host.
                let _ = tokio::time::timeout(wait, watcher.notified()).await;
                wait = (wait * 2).min(self.settings.max_polling_interval.max(FIRST_WAIT));
                continue;
            }
            wait = FIRST_WAIT;
            for message in received {
                running.fetch_add(1, Ordering::SeqCst);
                let (host, function, q, running, finished) = (self.clone(), function.to_owned(), q.clone(), running.clone(), finished.clone());
                deliveries.spawn(async move {
                    let outcome = host.deliver(&function, q.as_ref(), message).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    finished.notify_one();
                    outcome
                });
            }
        }
        deliveries.join_all().await
    }

    /// Polls until `done` says so or `timeout` passes; returns every outcome seen.
    pub async fn run_until<F>(self: &Arc<Self>, timeout: Duration, mut done: F) -> Vec<Outcome>
    where
        F: FnMut(&[Outcome]) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut all = Vec::new();
        loop {
            let batch = self.poll_once().await;
            let idle = batch.is_empty();
            all.extend(batch);
            if done(&all) {
                return all;
            }
            assert!(tokio::time::Instant::now() < deadline, "harness timed out; outcomes so far: {all:?}");
            if idle {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn deliver(&self, function: &str, queue: &dyn HostQueue, message: Received) -> Outcome {
        let f = self.function(function).clone();
        let Trigger::Queue { binding, .. } = &f.trigger else { unreachable!() };
        let quote = |s: &str| format!("\"{s}\"");
        let time = |t: Option<time::OffsetDateTime>| {
            t.map(|t| quote(&t.format(&time::format_description::well_known::Rfc3339).unwrap())).unwrap_or_default()
        };
        let payload = json!({
            "Data": { binding.as_str(): serde_json::to_string(&message.text).unwrap() },
            "Metadata": {
                "DequeueCount": message.dequeue_count.to_string(),
                "Id": quote(&message.id),
                "PopReceipt": quote(&message.pop_receipt),
                "InsertionTime": time(message.insertion_time),
                "ExpirationTime": time(message.expiration_time),
                "NextVisibleTime": time(message.next_visible),
                "sys": self.sys(function),
            }
        });
        let (status, answer) = self.invoke(function, &payload).await;
        if (200..300).contains(&status) {
            let outputs = self.write_outputs(&f, &answer).await;
            queue.delete(&message.id, &message.pop_receipt).await.unwrap();
            Outcome::Succeeded { function: function.into(), outputs }
        } else if message.dequeue_count >= self.settings.max_dequeue_count {
            let poison = format!("{}-poison", queue.name());
            self.queue(&poison).await.send(&message.text, Duration::ZERO).await.unwrap();
            queue.delete(&message.id, &message.pop_receipt).await.unwrap();
            Outcome::Poisoned { function: function.into(), queue: poison }
        } else {
            // Released: visible again after the visibility timeout (at least a second: the
            // service's granularity).
            queue.release(&message.id, &message.pop_receipt, self.settings.visibility_timeout.max(Duration::from_secs(1))).await.unwrap();
            Outcome::Failed { function: function.into(), status, dequeue_count: message.dequeue_count }
        }
    }

    fn sys(&self, function: &str) -> Value {
        let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
        json!({"MethodName": function, "UtcNow": now, "RandGuid": uuid::Uuid::new_v4().to_string()})
    }

    async fn invoke(&self, function: &str, payload: &Value) -> (u16, Value) {
        let n = self.invocations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let response = self
            .http
            .post(format!("{}/{function}", self.handlers[n as usize % self.handlers.len()]))
            .header("X-Azure-Functions-InvocationId", format!("00000000-0000-4000-8000-{n:012}"))
            .json(payload)
            .send()
            .await;
        match response {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&body).unwrap_or(Value::Null))
            }
            // The handler is down (a restart under test): the invocation fails like a 500.
            Err(_) => (503, Value::Null),
        }
    }

    /// Writes queue outputs as the host does: an array is several messages, a string one
    /// message, an object one JSON message.
    async fn write_outputs(&self, f: &Function, answer: &Value) -> usize {
        let mut written = 0;
        for (binding, queue) in &f.queue_outputs {
            let Some(value) = answer.get("Outputs").and_then(|o| o.get(binding)) else { continue };
            let items: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                Value::Null => vec![],
                one => vec![one],
            };
            let q = self.queue(queue).await;
            let added = items.len();
            for item in items {
                let text = match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                q.send(&text, Duration::ZERO).await.unwrap();
                written += 1;
            }
            if added > 0 {
                self.watcher(queue).notify_one();
            }
        }
        written
    }

    /// Fires a timer-triggered function now, as the host does at a scheduled occurrence.
    pub async fn fire_timer(&self, function: &str, past_due: bool) -> Outcome {
        let f = self.function(function).clone();
        let Trigger::Timer { binding, .. } = &f.trigger else { panic!("{function} is not a timer") };
        let payload = json!({
            "Data": { binding.as_str(): {
                "Schedule": {"AdjustForDST": true},
                "ScheduleStatus": null,
                "IsPastDue": past_due
            }},
            "Metadata": {"sys": self.sys(function)}
        });
        let (status, answer) = self.invoke(function, &payload).await;
        if (200..300).contains(&status) {
            Outcome::Succeeded { function: function.into(), outputs: self.write_outputs(&f, &answer).await }
        } else {
            // The host does not retry a timer.
            Outcome::Failed { function: function.into(), status, dequeue_count: 0 }
        }
    }

    /// The next occurrences of a timer's NCRONTAB schedule (six fields, seconds first).
    pub fn timer_occurrences(&self, function: &str, after: chrono::DateTime<chrono::Utc>, count: usize) -> Vec<chrono::DateTime<chrono::Utc>> {
        let Trigger::Timer { schedule, .. } = &self.function(function).trigger else { panic!("{function} is not a timer") };
        // `%NAME%` is an app setting; the host refuses to load the function without it.
        let resolved = match schedule.strip_prefix('%').and_then(|s| s.strip_suffix('%')) {
            Some(name) => self.app_settings.get(name).cloned().unwrap_or_else(|| panic!("the host would not load {function}: app setting {name} is missing")),
            None => schedule.clone(),
        };
        let schedule = &resolved;
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse(schedule)
            .unwrap_or_else(|e| panic!("schedule '{schedule}' is not NCRONTAB: {e}"));
        cron.iter_after(after).take(count).collect()
    }

    /// Fires the timer at each of its occurrences during `window`, sleeping in between.
    pub async fn run_timer_for(&self, function: &str, window: Duration) -> Vec<Outcome> {
        let end = chrono::Utc::now() + chrono::Duration::from_std(window).unwrap();
        let mut outcomes = Vec::new();
        for at in self.timer_occurrences(function, chrono::Utc::now(), 1000) {
            if at > end {
                break;
            }
            let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            outcomes.push(self.fire_timer(function, false).await);
        }
        outcomes
    }

    /// `GET /api/<function>?<query>` through the HTTP trigger; (statusCode, parsed body).
    pub async fn http_get(&self, function: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let f = self.function(function).clone();
        let Trigger::Http { binding } = &f.trigger else { panic!("{function} is not HTTP") };
        let q: serde_json::Map<String, Value> = query.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let payload = json!({
            "Data": { binding.as_str(): {
                "Url": format!("http://localhost:7071/api/{function}"),
                "Method": "GET", "Query": q, "Headers": {}, "Params": {}, "Body": null
            }},
            "Metadata": {"sys": self.sys(function)}
        });
        let (status, answer) = self.invoke(function, &payload).await;
        assert_eq!(status, 200, "{answer}");
        let res = &answer["Outputs"]["res"];
        let body = res["body"].as_str().map(|b| serde_json::from_str(b).unwrap()).unwrap_or(Value::Null);
        (res["statusCode"].as_u64().unwrap_or(0) as u16, body)
    }
}

//! Webhook subscriptions against a real HTTP receiver: binary-mode requests, signatures, acks,
//! retries, dead letters and timeouts, on the embedded backend.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{STUDENT, marked, marked_data};
use edubus_core::{DeadLetterQueue, DeadReason, Envelope};
use edubus_http::webhook::{self, SIGNATURE_HEADER};
use edubus_http::{WebhookConfig, WebhookRetry};
use edubus_runtime::{Bus, Worker, WorkerStats};
use edubus_sqlite::{SqliteBackend, SqliteConfig};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// What the receiver answers, request by request; 200 once the script is used up.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16, &'static str),
    Hang,
}

/// One request the receiver got.
struct Seen {
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` header"))
            .to_str()
            .unwrap()
    }
}

#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    /// Serves on a free loopback port; returns the URL events are posted to.
    async fn start(&self) -> String {
        let app = axum::Router::new()
            .fallback(record)
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/attendance?token=query-secret",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn record(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    receiver.seen.lock().unwrap().push(Seen { headers, body });
    let answer = receiver.script.lock().unwrap().pop_front();
    match answer.unwrap_or(Answer::Status(200, "")) {
        Answer::Status(code, text) => (StatusCode::from_u16(code).unwrap(), text),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            (StatusCode::OK, "")
        }
    }
}

struct Fixture {
    bus: Bus<SqliteBackend>,
    receiver: Receiver,
    url: String,
    _dir: TempDir,
}

async fn fixture(script: &[Answer]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open(SqliteConfig::in_dir(dir.path()))
        .await
        .unwrap();
    let bus = Bus::new(backend, edubus_events::catalog(), "webhook-tests").unwrap();
    let receiver = Receiver::default();
    receiver
        .script
        .lock()
        .unwrap()
        .extend(script.iter().copied());
    let url = receiver.start().await;
    Fixture {
        bus,
        receiver,
        url,
        _dir: dir,
    }
}

/// A webhook for attendance events with fast retries.
fn hook(url: &str, attempts: u32) -> WebhookConfig {
    WebhookConfig::new("attendance-sync", &["attendance.marked"], url).with_retry(WebhookRetry {
        attempts,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
    })
}

/// Publishes an `attendance.marked` for [`STUDENT`] with an actor id that needs percent-encoding.
async fn publish(bus: &Bus<SqliteBackend>) -> String {
    let mut event = marked(STUDENT);
    event["actorid"] = "teacher 7é".into();
    let env: Envelope = serde_json::from_value(event).unwrap();
    bus.publish_envelope(env).await.unwrap().id
}

/// A running worker with the webhooks; stopped (and drained) by [`Running::stop`].
struct Running {
    stats: Arc<WorkerStats>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<edubus_core::Result<()>>,
}

impl Running {
    async fn start(bus: &Bus<SqliteBackend>, hooks: &[WebhookConfig]) -> Self {
        let builder = Worker::builder(bus.clone()).grace_period(Duration::from_secs(5));
        let worker = webhook::register(builder, edubus_events::catalog(), hooks)
            .unwrap()
            .build()
            .unwrap();
        let stats = worker.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        Self { stats, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Waits (at most 30 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    WorkerStats::get(counter)
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_binary_mode_signed_and_are_acked_once() {
    let f = fixture(&[]).await;
    let hooks = [
        WebhookConfig::new("attendance-sync", &["AttendanceMarked"], &f.url)
            .with_secret("whsec_test"),
    ];
    let first = publish(&f.bus).await;
    let worker = Running::start(&f.bus, &hooks).await;
    until("the event is handled", || count(&worker.stats.handled) == 1).await;
    worker.stop().await;
    {
        let seen = f.receiver.seen.lock().unwrap();
        let request = &seen[0];
        for (header, want) in [
            ("ce-specversion", "1.0"),
            ("ce-id", first.as_str()),
            ("ce-type", "attendance.marked"),
            ("ce-source", "attendance-api"),
            ("ce-time", "2025-09-01T08:00:00Z"),
            ("ce-subject", STUDENT),
            ("ce-partitionkey", STUDENT),
            ("ce-correlationid", first.as_str()),
            ("ce-schemaversion", "1"),
            ("ce-dataschema", "urn:edubus:schema:attendance.marked:v1"),
            ("ce-attempt", "1"),
            ("ce-actorid", "teacher%207%C3%A9"),
            ("content-type", "application/json"),
        ] {
            assert_eq!(request.header(header), want, "{header}");
        }
        assert!(request.headers.get("ce-data").is_none());
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body, marked_data(STUDENT));

        let signature = request.header(SIGNATURE_HEADER);
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .unwrap_or_else(|| panic!("malformed signature {signature}"));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(&request.body);
        mac.verify_slice(&hex_decode(v1))
            .expect("the signature verifies with the secret");
    }

    // A restarted worker delivers only the new event: the first one was acked.
    let second = publish(&f.bus).await;
    let worker = Running::start(&f.bus, &hooks).await;
    until("the second event is posted", || f.receiver.count() >= 2).await;
    until("the second event is handled", || {
        count(&worker.stats.handled) == 1
    })
    .await;
    worker.stop().await;
    let ids: Vec<String> = f.receiver.seen.lock().unwrap()[..2]
        .iter()
        .map(|s| s.header("ce-id").to_owned())
        .collect();
    assert_eq!(ids, [first, second]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_is_retried_until_the_service_answers_2xx() {
    let f = fixture(&[Answer::Status(500, "database down")]).await;
    let id = publish(&f.bus).await;
    let worker = Running::start(&f.bus, &[hook(&f.url, 5)]).await;
    until("the event is handled", || count(&worker.stats.handled) == 1).await;
    assert_eq!(count(&worker.stats.failed), 1);
    worker.stop().await;
    let attempts: Vec<(String, String)> = f
        .receiver
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s.header("ce-id").to_owned(),
                s.header("ce-attempt").to_owned(),
            )
        })
        .collect();
    assert_eq!(attempts, [(id.clone(), "1".into()), (id, "2".into())]);
    let dlq = f.bus.backend().list(None, 0, 10).await.unwrap();
    assert!(dlq.is_empty(), "{dlq:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_dead_letters_at_once_with_the_status() {
    let f = fixture(&[Answer::Status(400, "unknown student")]).await;
    let id = publish(&f.bus).await;
    let worker = Running::start(&f.bus, &[hook(&f.url, 5)]).await;
    until("the event is dead-lettered", || {
        count(&worker.stats.dead_lettered) == 1
    })
    .await;
    worker.stop().await;
    assert_eq!(f.receiver.count(), 1, "a 400 is not retried");
    let dlq = f
        .bus
        .backend()
        .list(Some("attendance-sync"), 0, 10)
        .await
        .unwrap();
    let letter = &dlq[0].letter;
    assert_eq!(letter.event_id, id);
    assert_eq!(letter.reason, DeadReason::Rejected);
    assert_eq!(letter.handler, "attendance-sync/attendance.marked.v1");
    assert!(
        letter.error.contains("400 Bad Request") && letter.error.contains("unknown student"),
        "{}",
        letter.error
    );
    assert!(
        !letter.error.contains("query-secret"),
        "the query is not printed: {}",
        letter.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_service_times_out_and_is_retried() {
    let f = fixture(&[Answer::Hang, Answer::Hang]).await;
    publish(&f.bus).await;
    let config = hook(&f.url, 2).with_timeout(Duration::from_millis(300));
    let worker = Running::start(&f.bus, &[config]).await;
    until("the event is dead-lettered", || {
        count(&worker.stats.dead_lettered) == 1
    })
    .await;
    worker.stop().await;
    assert_eq!(f.receiver.count(), 2, "the timed-out request was retried");
    let dlq = f.bus.backend().list(None, 0, 10).await.unwrap();
    let letter = &dlq[0].letter;
    assert_eq!(letter.reason, DeadReason::Exhausted);
    assert!(
        letter.error.contains("timed out after 300ms"),
        "{}",
        letter.error
    );
    assert_eq!(letter.attempts.len(), 2, "{:?}", letter.attempts);
}

#[tokio::test]
async fn unknown_types_and_unusable_urls_are_refused() {
    let catalog = edubus_events::catalog();
    let f = fixture(&[]).await;
    let refused = |hooks: Vec<WebhookConfig>| {
        let builder = Worker::builder(f.bus.clone());
        match webhook::register(builder, catalog, &hooks) {
            Ok(_) => panic!("{hooks:?} was accepted"),
            Err(e) => e.to_string(),
        }
    };
    let error = refused(vec![WebhookConfig::new(
        "sync",
        &["attendance.markd"],
        "http://127.0.0.1:1/",
    )]);
    assert!(
        error.contains("webhook `sync`")
            && error.contains("unknown event `attendance.markd`")
            && error.contains("nearest: attendance.marked"),
        "{error}"
    );
    let error = refused(vec![WebhookConfig::new("sync", &[], "http://127.0.0.1:1/")]);
    assert!(error.contains("lists no types"), "{error}");
    let error = refused(vec![WebhookConfig::new(
        "sync",
        &["attendance.marked"],
        "ftp://example.org/",
    )]);
    assert!(error.contains("unsupported scheme `ftp`"), "{error}");
    let twice = WebhookConfig::new("sync", &["attendance.marked"], "http://127.0.0.1:1/");
    let error = refused(vec![twice.clone(), twice]);
    assert!(
        error.contains("webhook `sync` is declared twice"),
        "{error}"
    );
}

#[test]
fn the_webhook_table_reads_durations_and_hides_the_secret() {
    let config: WebhookConfig = toml::from_str(
        r#"
name = "grades-sync"
types = ["grading.updated", "AttendanceMarked"]
url = "http://127.0.0.1:9000/events"
timeout = "2s"
secret = "whsec_hidden"
retry = { attempts = 3, base = "50ms" }
"#,
    )
    .unwrap();
    assert_eq!(config.timeout, Duration::from_secs(2));
    assert_eq!(
        config.retry,
        WebhookRetry {
            attempts: 3,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(30),
        }
    );
    assert!(config.ordered);
    assert!(!format!("{config:?}").contains("whsec_hidden"));
    let error = toml::from_str::<WebhookConfig>(
        "name = \"x\"\ntypes = []\nurl = \"http://h/\"\nheaders = {}\n",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("unknown field `headers`"),
        "{error}"
    );
    let error = toml::from_str::<WebhookConfig>(
        "name = \"x\"\ntypes = []\nurl = \"http://h/\"\ntimeout = \"soon\"\n",
    )
    .unwrap_err();
    assert!(error.to_string().contains("not a duration"), "{error}");
}

//! A gateway over a fresh embedded backend, served on a free loopback port.

#![allow(dead_code)]

use edubus_http::{Gateway, HttpConfig, TokenConfig, token};
use edubus_runtime::Bus;
use edubus_sqlite::{SqliteBackend, SqliteConfig};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A student id used as the partition key (a PII field of `attendance.marked`).
pub const STUDENT: &str = "6f1c2a4e-7b1d-4c55-9a0e-1c2d3e4f5a6b";
/// Any other UUID.
pub const SESSION: &str = "0b8e2a54-5f2e-4c1a-8a43-2f6a1b9c7d10";

/// Secrets of the tokens [`with_tokens`] configures, by scope set.
pub const ADMIN: &str = "admin-secret";
/// Publishes and reads attendance events, no PII.
pub const ATTENDANCE: &str = "attendance-secret";
/// Reads everything including PII.
pub const AUDITOR: &str = "auditor-secret";

/// A running gateway.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The backend behind it.
    pub bus: Bus<SqliteBackend>,
    /// An HTTP client.
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: TempDir,
}

impl Server {
    /// Starts a gateway with `config` (its listen address is ignored: port 0 is used).
    pub async fn start(config: HttpConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(SqliteConfig::in_dir(dir.path()))
            .await
            .unwrap();
        let bus = Bus::new(backend, edubus_events::catalog(), "http-tests").unwrap();
        let gateway = Gateway::new(bus.clone(), config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            bus,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// A gateway without tokens (authentication off).
    pub async fn open() -> Self {
        Self::start(HttpConfig::default()).await
    }

    /// `self.url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Posts one structured-mode event.
    pub async fn post_structured(&self, event: &Value) -> reqwest::Response {
        self.client
            .post(self.at("/v1/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A gateway with three tokens: [`ADMIN`], [`ATTENDANCE`] and [`AUDITOR`].
pub fn with_tokens() -> HttpConfig {
    HttpConfig::default()
        .with_token(TokenConfig::new("ops", token::hash(ADMIN), &["admin"]))
        .with_token(TokenConfig::new(
            "attendance-api",
            token::hash(ATTENDANCE),
            &[
                "publish:attendance.*",
                "read:attendance.*",
                "subscribe:attendance.*",
            ],
        ))
        .with_token(TokenConfig::new(
            "auditor",
            token::hash(AUDITOR),
            &["read:*", "pii:read"],
        ))
}

/// The data of an `attendance.marked` event for `student`.
pub fn marked_data(student: &str) -> Value {
    json!({
        "class_session_id": SESSION, "student_id": student, "status": "absent",
        "marked_by": SESSION, "marked_at": "2025-09-01T08:00:00Z",
    })
}

/// A structured-mode `attendance.marked` event with a fresh id.
pub fn marked(student: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": uuid::Uuid::now_v7().to_string(),
        "source": "attendance-api",
        "type": "attendance.marked",
        "time": "2025-09-01T08:00:00Z",
        "data": marked_data(student),
    })
}

/// The JSON body of a response, asserting its status.
pub async fn body(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

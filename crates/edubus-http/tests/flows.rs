//! The flows' read-model routes and the approval action over real HTTP, with the reference
//! flows running on the gateway's embedded backend: 200 and 404, scopes, PII redaction, and
//! an approval that provisions a student.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN, AUDITOR, Server, body, with_tokens};
use edubus_core::EventStore;
use edubus_events::EnrollmentSubmitted;
use edubus_flows::{FlowBackend, FlowConfig};
use edubus_http::redact::REDACTED;
use edubus_http::{TokenConfig, token};
use edubus_runtime::Worker;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

const APPLICATION: &str = "0190f0a0-0000-7000-8000-0000000000a2";
const TEMP_ID: &str = "0190f0a0-0000-7000-8000-0000000000b2";
const GUARDIAN: &str = "0190f0a0-0000-7000-8000-0000000000c2";
const STAFF: &str = "0190f0a0-0000-7000-8000-0000000000d2";
const UNKNOWN: &str = "0190f0a0-0000-7000-8000-0000000000ff";

/// Reads enrollment events, no PII.
const ENROLLMENT_READER: &str = "enrollment-reader-secret";
/// May publish approvals and nothing else.
const REGISTRAR: &str = "registrar-secret";
/// Reads every event type, no PII.
const READER: &str = "reader-secret";

/// The flows worker on the server's backend, until the sender is dropped or set.
struct Flows(watch::Sender<bool>);

impl Flows {
    async fn start(server: &Server) -> Self {
        server
            .bus
            .backend()
            .prepare()
            .await
            .expect("read-model tables");
        let worker =
            edubus_flows::register(Worker::builder(server.bus.clone()), &FlowConfig::default())
                .build()
                .expect("flows worker");
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(worker.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Self(stop)
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

fn tokens() -> edubus_http::HttpConfig {
    with_tokens()
        .with_token(TokenConfig::new(
            "enrollment-reader",
            token::hash(ENROLLMENT_READER),
            &["read:enrollment.*"],
        ))
        .with_token(TokenConfig::new(
            "registrar",
            token::hash(REGISTRAR),
            &["publish:enrollment.approved"],
        ))
        .with_token(TokenConfig::new("reader", token::hash(READER), &["read:*"]))
}

async fn get(server: &Server, secret: Option<&str>, path: &str) -> reqwest::Response {
    let mut request = server.client.get(server.at(path));
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    request.send().await.unwrap()
}

async fn approve(
    server: &Server,
    secret: Option<&str>,
    application: &str,
    payload: Option<Value>,
) -> reqwest::Response {
    let path = format!("/v1/flows/applications/{application}/approve");
    let mut request = server.client.post(server.at(&path));
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    if let Some(payload) = payload {
        request = request.json(&payload);
    }
    request.send().await.unwrap()
}

/// Publishes the application as a guardian's service would and returns its event id.
async fn submit(server: &Server) -> String {
    let event = EnrollmentSubmitted {
        application_id: APPLICATION.parse().unwrap(),
        student_temp_id: TEMP_ID.parse().unwrap(),
        guardian_id: GUARDIAN.parse().unwrap(),
        submitted_at: "2026-09-01T08:00:00Z".parse().unwrap(),
    };
    server.bus.publish(&event).await.unwrap().id
}

/// GETs `path` with `secret` until it answers 200 and `until` holds (up to 30 s).
async fn wait(
    server: &Server,
    secret: Option<&str>,
    path: &str,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = get(server, secret, path).await;
        let status = response.status().as_u16();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status == 200 && until(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "waited 30 s for {path}: {status} {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stored `enrollment.approved` events.
async fn approvals(server: &Server) -> usize {
    let query = edubus_core::ReadQuery {
        types: vec!["enrollment.approved".into()],
        limit: 100,
        ..Default::default()
    };
    server.bus.backend().read(query).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_over_http_provisions_a_student_the_read_routes_show() {
    let server = Server::open().await;
    let _flows = Flows::start(&server).await;
    let submitted = submit(&server).await;
    let path = format!("/v1/flows/applications/{APPLICATION}");
    let app = wait(&server, None, &path, |_| true).await;
    assert_eq!(app["status"], "submitted");
    assert_eq!(app["guardian_id"], GUARDIAN);

    let list = body(
        get(&server, None, "/v1/flows/applications?limit=10").await,
        200,
    )
    .await;
    assert_eq!(list["applications"][0]["application_id"], APPLICATION);

    let approved = approve(
        &server,
        None,
        APPLICATION,
        Some(json!({"approved_by": STAFF, "notes": "welcome"})),
    )
    .await;
    let approved = body(approved, 202).await;
    assert_eq!(approved["correlation_id"], submitted.as_str());
    assert_eq!(approved["causation_id"], submitted.as_str());
    let stored = server
        .bus
        .backend()
        .get(approved["id"].as_str().unwrap())
        .await
        .unwrap()
        .expect("the approval is stored");
    assert_eq!(stored.envelope.data["approved_by"], STAFF);
    assert_eq!(stored.envelope.data["notes"], "welcome");
    assert_eq!(stored.envelope.actorid.as_deref(), Some("token:anonymous"));

    let app = wait(&server, None, &path, |a| a["status"] == "provisioned").await;
    let student_id = app["student_id"].as_str().unwrap().to_owned();
    let student = body(
        get(&server, None, &format!("/v1/flows/students/{student_id}")).await,
        200,
    )
    .await;
    assert_eq!(student["student"]["application_id"], APPLICATION);
    assert!(
        student["student"]["student_code"]
            .as_str()
            .is_some_and(|c| c.starts_with("S-")),
        "{student}"
    );
    let upper = student_id.to_uppercase();
    let again = body(
        get(&server, None, &format!("/v1/flows/students/{upper}")).await,
        200,
    )
    .await;
    assert_eq!(
        again["student_id"],
        student_id.as_str(),
        "ids are canonical"
    );

    let refused = body(approve(&server, None, APPLICATION, None).await, 409).await;
    let detail = refused["detail"].as_str().unwrap();
    assert!(detail.contains("already provisioned"), "{detail}");
    assert_eq!(approvals(&server).await, 1, "the refusal published nothing");
    let counts = body(get(&server, None, "/v1/flows").await, 200).await;
    assert_eq!(counts["tables"]["students"], 1);
    assert_eq!(counts["tables"]["applications"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_documents_are_404_with_what_was_looked_for() {
    // No flows worker: the gateway creates the read-model tables itself.
    let server = Server::open().await;
    for (route, what) in [
        ("students", "no student"),
        ("applications", "no application"),
        ("access", "no access record"),
        ("orders", "no order"),
        ("batches", "no batch"),
    ] {
        let path = format!("/v1/flows/{route}/{UNKNOWN}");
        let error = body(get(&server, None, &path).await, 404).await;
        let detail = error["detail"].as_str().unwrap();
        assert!(
            detail.contains(what) && detail.contains(UNKNOWN),
            "{route}: {detail}"
        );
    }
    let error = body(approve(&server, None, UNKNOWN, None).await, 404).await;
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("enrollment application `{UNKNOWN}`")),
        "{error}"
    );
    let malformed = approve(&server, None, UNKNOWN, Some(json!({"approved_by": 7}))).await;
    body(malformed, 400).await;
    assert_eq!(approvals(&server).await, 0);
    let list = body(get(&server, None, "/v1/flows/applications").await, 200).await;
    assert_eq!(list["applications"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_need_read_scopes_and_hide_pii_without_pii_read() {
    let server = Server::start(tokens()).await;
    let _flows = Flows::start(&server).await;
    submit(&server).await;
    let path = format!("/v1/flows/applications/{APPLICATION}");
    let full = wait(&server, Some(AUDITOR), &path, |_| true).await;
    assert_eq!(full["guardian_id"], GUARDIAN);
    assert_eq!(full["student_temp_id"], TEMP_ID);

    body(get(&server, None, &path).await, 401).await;
    let forbidden = body(get(&server, Some(common::ATTENDANCE), &path).await, 403).await;
    let detail = forbidden["detail"].as_str().unwrap();
    assert!(
        detail.contains("attendance-api") && detail.contains("enrollment.submitted"),
        "{detail}"
    );

    let redacted = body(get(&server, Some(ENROLLMENT_READER), &path).await, 200).await;
    assert_eq!(redacted["guardian_id"], REDACTED);
    assert_eq!(redacted["student_temp_id"], REDACTED);
    assert_eq!(redacted["status"], "submitted", "non-personal fields stay");
    assert_eq!(redacted["application_id"], APPLICATION);
    let list = body(
        get(&server, Some(ENROLLMENT_READER), "/v1/flows/applications").await,
        200,
    )
    .await;
    assert_eq!(list["applications"][0]["guardian_id"], REDACTED);

    let reader_approves = approve(&server, Some(ENROLLMENT_READER), APPLICATION, None).await;
    let error = body(reader_approves, 403).await;
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .contains("publish:enrollment.approved"),
        "{error}"
    );
    assert_eq!(
        approvals(&server).await,
        0,
        "a forbidden approval publishes nothing"
    );
    body(
        approve(&server, Some(REGISTRAR), APPLICATION, None).await,
        202,
    )
    .await;

    let app = wait(&server, Some(ADMIN), &path, |a| {
        a["status"] == "provisioned"
    })
    .await;
    let student = format!("/v1/flows/students/{}", app["student_id"].as_str().unwrap());
    let forbidden = body(get(&server, Some(ENROLLMENT_READER), &student).await, 403).await;
    assert!(
        forbidden["detail"]
            .as_str()
            .unwrap()
            .contains("grading.updated"),
        "the student view also shows grades: {forbidden}"
    );
    let shown = body(get(&server, Some(AUDITOR), &student).await, 200).await;
    assert_eq!(shown["student"]["guardian_id"], GUARDIAN);
    assert!(
        shown["student"]["student_code"]
            .as_str()
            .is_some_and(|c| c.starts_with("S-")),
        "{shown}"
    );
    let hidden = body(get(&server, Some(READER), &student).await, 200).await;
    assert_eq!(hidden["student_id"], REDACTED);
    assert_eq!(hidden["student"]["student_id"], REDACTED);
    assert_eq!(hidden["student"]["student_code"], REDACTED);
    assert_eq!(hidden["student"]["guardian_id"], REDACTED);
    assert_eq!(hidden["student"]["application_id"], APPLICATION);
    assert!(Uuid::parse_str(hidden["student"]["homeroom_id"].as_str().unwrap()).is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_sent_at_once_publish_one_approved_event() {
    let server = Server::open().await;
    let _flows = Flows::start(&server).await;
    submit(&server).await;
    let path = format!("/v1/flows/applications/{APPLICATION}");
    wait(&server, None, &path, |_| true).await;
    let server = std::sync::Arc::new(server);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let server = std::sync::Arc::clone(&server);
            tokio::spawn(async move {
                approve(&server, None, APPLICATION, None)
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(approvals(&server).await, 1, "one approval in the log");
    let server = std::sync::Arc::into_inner(server).expect("every call is done");
    server.stop().await;
}

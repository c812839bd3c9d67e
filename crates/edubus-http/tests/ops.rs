//! Operations over real HTTP: subscriptions, dead letters, health, metrics, backpressure.

mod common;

use std::time::{Duration, Instant};

use common::{STUDENT, Server, body, marked};
use edubus_core::{StartFrom, SubscriptionSpec, Transport};
use edubus_events::AttendanceMarked;
use edubus_http::{HealthThresholds, HttpConfig};
use edubus_runtime::{HandlerError, SubscriptionOptions, Worker};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(server: &Server, path: &str) -> reqwest::Response {
    server.client.get(server.at(path)).send().await.unwrap()
}

async fn post(server: &Server, path: &str, json: Value) -> reqwest::Response {
    server
        .client
        .post(server.at(path))
        .json(&json)
        .send()
        .await
        .unwrap()
}

/// Runs a worker whose `attendance.marked` handler always rejects, until `stop` resolves.
fn rejecting_worker(server: &Server, name: &str) -> tokio::sync::oneshot::Sender<()> {
    let worker = Worker::builder(server.bus.clone())
        .subscription(name, SubscriptionOptions::default())
        .on::<AttendanceMarked, _, _>(|_e, _ctx| async move {
            Err(HandlerError::permanent("the roster service refused it"))
        })
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    stop
}

/// Waits until `name`'s dead-letter queue holds `depth` entries.
async fn dlq_depth(server: &Server, name: &str, depth: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = server.bus.backend().stats().await.unwrap();
        if stats
            .iter()
            .any(|s| s.subscription == name && s.dlq_depth == depth)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "DLQ of {name} never reached {depth}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn register(server: &Server, name: &str) {
    let spec = SubscriptionSpec {
        name: name.into(),
        types: vec!["attendance.marked".into()],
        ordered: true,
        start: StartFrom::Beginning,
    };
    server.bus.backend().register(&spec).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_degraded_when_the_dlq_grows_and_metrics_count_it() {
    let server = Server::open().await;
    register(&server, "rejecting").await;
    let health = body(get(&server, "/health/events").await, 200).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["thresholds"]["max_lag"], 1000);
    let stop = rejecting_worker(&server, "rejecting");
    let event = marked(STUDENT);
    body(server.post_structured(&event).await, 202).await;
    dlq_depth(&server, "rejecting", 1).await;
    let health = body(get(&server, "/health/events").await, 200).await;
    assert_eq!(health["status"], "degraded", "{health}");
    let sub = &health["subscriptions"][0];
    assert_eq!(sub["subscription"], "rejecting");
    assert_eq!(sub["dlq_depth"], 1);
    let reasons = sub["reasons"].to_string();
    assert!(
        reasons.contains("dead-letter queue grew from 0 to 1"),
        "{reasons}"
    );
    assert!(reasons.contains("failure ratio 1.000"), "{reasons}");
    for field in [
        "pending",
        "lag",
        "last_event_at",
        "consumers",
        "processing_rate",
    ] {
        assert!(sub.get(field).is_some(), "{field} in {sub}");
    }
    let stream = &health["streams"][0];
    assert_eq!(stream["stream"], "attendance.marked", "{health}");
    assert_eq!(stream["subscriptions"], json!(["rejecting"]));
    assert_eq!(stream["dlq_depth"], 1);
    let metrics = get(&server, "/metrics").await.text().await.unwrap();
    let labels = "event_type=\"attendance.marked\",subscription=\"rejecting\"";
    for line in [
        "eventbus_published_total{event_type=\"attendance.marked\"}".to_owned(),
        format!("eventbus_failed_total{{{labels}}} 1"),
        format!("eventbus_dlq_total{{{labels}}} 1"),
        format!("eventbus_processing_duration_seconds_count{{{labels}}} 1"),
        "eventbus_dlq_depth{subscription=\"rejecting\"} 1".to_owned(),
        "eventbus_consumer_lag{subscription=\"rejecting\"} 0".to_owned(),
    ] {
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
    let _ = stop.send(());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_replayed_and_purged() {
    let server = Server::open().await;
    let stop = rejecting_worker(&server, "dlq-flow");
    let event = marked(STUDENT);
    body(server.post_structured(&event).await, 202).await;
    dlq_depth(&server, "dlq-flow", 1).await;
    let _ = stop.send(());
    let subs = body(get(&server, "/v1/subscriptions").await, 200).await;
    assert_eq!(subs["subscriptions"][0]["name"], "dlq-flow");
    assert_eq!(subs["subscriptions"][0]["dlq_depth"], 1);
    let list = body(get(&server, "/v1/dlq?subscription=dlq-flow").await, 200).await;
    let entry = &list["entries"][0];
    assert_eq!(entry["event_id"], event["id"]);
    assert_eq!(entry["reason"], "rejected");
    let id = entry["id"].as_u64().unwrap();
    let shown = body(get(&server, &format!("/v1/dlq/{id}")).await, 200).await;
    assert_eq!(shown["error"], "the roster service refused it");
    assert_eq!(shown["event"]["event"]["id"], event["id"]);
    body(get(&server, "/v1/dlq/999").await, 404).await;
    let replayed = body(
        post(&server, "/v1/dlq/replay", json!({ "ids": [id] })).await,
        200,
    )
    .await;
    assert_eq!(replayed["affected"], 1);
    let list = body(get(&server, "/v1/dlq").await, 200).await;
    assert!(list["entries"][0]["replayed_at"].is_string(), "{list}");
    let purged = body(
        post(&server, "/v1/dlq/purge", json!({ "ids": [id] })).await,
        200,
    )
    .await;
    assert_eq!(purged["affected"], 1);
    let list = body(get(&server, "/v1/dlq").await, 200).await;
    assert_eq!(list["entries"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_readiness_answer() {
    let server = Server::open().await;
    assert_eq!(
        body(get(&server, "/healthz").await, 200).await["status"],
        "ok"
    );
    body(server.post_structured(&marked(STUDENT)).await, 202).await;
    let ready = body(get(&server, "/readyz").await, 200).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["head"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_capacity_requests_get_429_with_retry_after() {
    let server = Server::start(HttpConfig::default().with_max_in_flight(1)).await;
    let event = marked(STUDENT).to_string();
    let addr = server.url.trim_start_matches("http://").to_owned();
    // A publish whose body has not fully arrived holds the only slot.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/cloudevents+json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        event.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&event.as_bytes()[..10]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rejected = loop {
        let response = get(&server, "/healthz").await;
        if response.status() == 429 {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "the server never reported being at capacity"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rejected.headers()["retry-after"], "1");
    let out = body(rejected, 429).await;
    assert!(
        out["detail"].as_str().unwrap().contains("retry later"),
        "{out}"
    );
    slow.write_all(&event.as_bytes()[10..]).await.unwrap();
    let mut reply = String::new();
    slow.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    body(get(&server, "/healthz").await, 200).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscription_without_consumers_is_failing_by_the_configured_threshold() {
    let thresholds = HealthThresholds {
        max_lag: 1,
        ..HealthThresholds::default()
    };
    let server = Server::start(HttpConfig::default().with_health(thresholds)).await;
    register(&server, "idle").await;
    body(server.post_structured(&marked(STUDENT)).await, 202).await;
    let health = body(get(&server, "/health/events").await, 200).await;
    assert_eq!(
        health["status"], "ok",
        "lag 1 is within max_lag 1: {health}"
    );
    body(server.post_structured(&marked(STUDENT)).await, 202).await;
    let health = body(get(&server, "/health/events").await, 503).await;
    assert_eq!(health["status"], "failing", "{health}");
    let reasons = health["subscriptions"][0]["reasons"].to_string();
    assert!(
        reasons.contains("lag 2 > 1") && reasons.contains("no live consumer"),
        "{reasons}"
    );
    server.stop().await;
}

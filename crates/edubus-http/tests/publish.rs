//! `POST /v1/events` over real HTTP: every mode and every status code.

mod common;

use common::{STUDENT, Server, body, marked, marked_data};
use edubus_core::{EventStore, ReadQuery};
use edubus_http::HttpConfig;
use serde_json::{Value, json};

async fn stored(server: &Server) -> usize {
    server
        .bus
        .backend()
        .read(ReadQuery::default())
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_is_accepted_with_id_and_position() {
    let server = Server::open().await;
    let event = marked(STUDENT);
    let out = body(server.post_structured(&event).await, 202).await;
    assert_eq!(out["events"][0]["id"], event["id"]);
    assert_eq!(out["events"][0]["position"], 1);
    assert_eq!(out["events"][0]["duplicate"], false);
    let id = event["id"].as_str().unwrap();
    let stored = EventStore::get(server.bus.backend(), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.key, STUDENT,
        "the key comes from the catalog's key field"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_reads_ce_headers_and_the_json_body() {
    let server = Server::open().await;
    let response = server
        .client
        .post(server.at("/v1/events"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "binary-1")
        .header("ce-source", "attendance%20api")
        .header("ce-type", "AttendanceMarked")
        .header("ce-correlationid", "flow-7")
        .body(marked_data(STUDENT).to_string())
        .send()
        .await
        .unwrap();
    let out = body(response, 202).await;
    assert_eq!(out["events"][0]["id"], "binary-1");
    let stored = EventStore::get(server.bus.backend(), "binary-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.envelope.source, "attendance api", "percent-decoded");
    assert_eq!(
        stored.envelope.event_type, "attendance.marked",
        "alias resolved"
    );
    assert_eq!(stored.envelope.correlationid.as_deref(), Some("flow-7"));
    assert_eq!(stored.envelope.data, marked_data(STUDENT));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_appended_whole_and_one_bad_event_appends_nothing() {
    let server = Server::open().await;
    let post = |batch: Value| {
        server
            .client
            .post(server.at("/v1/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(batch.to_string())
            .send()
    };
    let good = json!([marked(STUDENT), marked(STUDENT), marked(STUDENT)]);
    let out = body(post(good).await.unwrap(), 202).await;
    let positions: Vec<u64> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [1, 2, 3]);
    let mut bad = marked(STUDENT);
    bad["data"]["status"] = "sleeping".into();
    let out = body(post(json!([marked(STUDENT), bad])).await.unwrap(), 422).await;
    assert_eq!(out["issues"][0]["pointer"], "/1/data/status", "{out}");
    assert_eq!(
        stored(&server).await,
        3,
        "nothing of the bad batch was appended"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_400_with_where() {
    let server = Server::open().await;
    let response = server
        .client
        .post(server.at("/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body("{\"specversion\": \"1.0\",")
        .send()
        .await
        .unwrap();
    let out = body(response, 400).await;
    assert!(
        out["issues"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{out}"
    );
    let mut event = marked(STUDENT);
    event["time"] = "yesterday".into();
    event.as_object_mut().unwrap().remove("source");
    let out = body(server.post_structured(&event).await, 400).await;
    let pointers: Vec<&str> = out["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/source", "/time"], "{out}");
    assert_eq!(stored(&server).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_type_is_404_with_the_nearest_names() {
    let server = Server::open().await;
    let mut event = marked(STUDENT);
    event["type"] = "attendance.markd".into();
    let out = body(server.post_structured(&event).await, 404).await;
    let nearest: Vec<&str> = out["nearest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(nearest.first(), Some(&"attendance.marked"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_is_idempotent_with_the_same_content_and_409_with_other_content() {
    let server = Server::open().await;
    let event = marked(STUDENT);
    body(server.post_structured(&event).await, 202).await;
    let again = body(server.post_structured(&event).await, 202).await;
    assert_eq!(again["events"][0]["duplicate"], true);
    assert_eq!(again["events"][0]["position"], 1);
    let mut changed = event.clone();
    changed["data"]["status"] = "late".into();
    let out = body(server.post_structured(&changed).await, 409).await;
    assert!(
        out["detail"].as_str().unwrap().contains("conflict"),
        "{out}"
    );
    assert_eq!(stored(&server).await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    let server = Server::start(HttpConfig::default().with_body_limit(512)).await;
    let mut event = marked(STUDENT);
    event["padding"] = "x".repeat(600).into();
    let out = body(server.post_structured(&event).await, 413).await;
    assert!(
        out["detail"].as_str().unwrap().contains("512 byte limit"),
        "{out}"
    );
    assert_eq!(stored(&server).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_content_type_is_415() {
    let server = Server::open().await;
    let response = server
        .client
        .post(server.at("/v1/events"))
        .header("content-type", "text/plain")
        .body(marked(STUDENT).to_string())
        .send()
        .await
        .unwrap();
    let out = body(response, 415).await;
    assert!(
        out["detail"].as_str().unwrap().contains("text/plain"),
        "{out}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_violation_is_422_with_pointer_and_reason() {
    let server = Server::open().await;
    let mut event = marked(STUDENT);
    event["data"]["student_id"] = 42.into();
    event["data"].as_object_mut().unwrap().remove("marked_by");
    let out = body(server.post_structured(&event).await, 422).await;
    let issues = out["issues"].as_array().unwrap();
    assert_eq!(issues[0]["pointer"], "/data/marked_by");
    assert_eq!(issues[0]["reason"], "required field is missing");
    assert_eq!(issues[1]["pointer"], "/data/student_id");
    assert!(
        issues[1]["reason"].as_str().unwrap().contains("UUID"),
        "{out}"
    );
    assert_eq!(stored(&server).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_traceparent_is_kept_on_the_event() {
    let server = Server::open().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let event = marked(STUDENT);
    let response = server
        .client
        .post(server.at("/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .header("traceparent", traceparent)
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    body(response, 202).await;
    let id = event["id"].as_str().unwrap();
    let stored = EventStore::get(server.bus.backend(), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.envelope.traceparent.as_deref(), Some(traceparent));
    server.stop().await;
}

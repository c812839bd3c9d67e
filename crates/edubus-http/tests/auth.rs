//! Tokens and scopes over real HTTP: 401, 403, scope patterns, PII redaction.

mod common;

use common::{ADMIN, ATTENDANCE, AUDITOR, STUDENT, Server, body, marked, with_tokens};
use edubus_http::redact::REDACTED;
use serde_json::{Value, json};

async fn publish(server: &Server, secret: &str, event: &Value) -> reqwest::Response {
    server
        .client
        .post(server.at("/v1/events"))
        .bearer_auth(secret)
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap()
}

async fn get(server: &Server, secret: Option<&str>, path: &str) -> reqwest::Response {
    let mut request = server.client.get(server.at(path));
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_healthz_needs_a_known_token() {
    let server = Server::start(with_tokens()).await;
    body(get(&server, None, "/healthz").await, 200).await;
    for path in [
        "/v1/events",
        "/v1/catalog",
        "/metrics",
        "/health/events",
        "/openapi.json",
    ] {
        let response = get(&server, None, path).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{path}");
        body(response, 401).await;
        body(get(&server, Some("not-a-token"), path).await, 401).await;
        let ok = get(&server, Some(ADMIN), path).await;
        assert_eq!(ok.status(), 200, "{path} with the admin token");
    }
    body(publish(&server, "wrong", &marked(STUDENT)).await, 401).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_a_matching_publish_scope() {
    let server = Server::start(with_tokens()).await;
    body(publish(&server, ATTENDANCE, &marked(STUDENT)).await, 202).await;
    let grade = json!({
        "specversion": "1.0", "id": "g-1", "source": "gradebook", "type": "grading.updated",
        "data": {},
    });
    let out = body(publish(&server, ATTENDANCE, &grade).await, 403).await;
    assert!(
        out["detail"]
            .as_str()
            .unwrap()
            .contains("publish:grading.updated"),
        "{out}"
    );
    let out = body(publish(&server, AUDITOR, &marked(STUDENT)).await, 403).await;
    assert!(out["detail"].as_str().unwrap().contains("auditor"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_limited_to_the_read_scope() {
    let server = Server::start(with_tokens()).await;
    let event = marked(STUDENT);
    body(publish(&server, ATTENDANCE, &event).await, 202).await;
    let id = event["id"].as_str().unwrap();
    let out = body(get(&server, Some(ATTENDANCE), "/v1/events").await, 200).await;
    assert_eq!(out["events"].as_array().unwrap().len(), 1);
    let out = body(
        get(&server, Some(ATTENDANCE), "/v1/events?type=grading.updated").await,
        403,
    )
    .await;
    assert!(
        out["detail"]
            .as_str()
            .unwrap()
            .contains("read:grading.updated"),
        "{out}"
    );
    body(
        get(&server, Some(AUDITOR), &format!("/v1/events/{id}")).await,
        200,
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_read_scope_cannot_read_an_event() {
    let config = edubus_http::HttpConfig::default().with_token(edubus_http::TokenConfig::new(
        "writer",
        edubus_http::token::hash("w"),
        &["publish:*"],
    ));
    let server = Server::start(config).await;
    let event = marked(STUDENT);
    body(publish(&server, "w", &event).await, 202).await;
    let id = event["id"].as_str().unwrap();
    let out = body(
        get(&server, Some("w"), &format!("/v1/events/{id}")).await,
        403,
    )
    .await;
    assert!(
        out["detail"]
            .as_str()
            .unwrap()
            .contains("read:attendance.marked"),
        "{out}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_is_redacted_without_pii_read_and_shown_with_it() {
    let server = Server::start(with_tokens()).await;
    let event = marked(STUDENT);
    body(publish(&server, ATTENDANCE, &event).await, 202).await;
    let id = event["id"].as_str().unwrap();
    let hidden = body(
        get(&server, Some(ATTENDANCE), &format!("/v1/events/{id}")).await,
        200,
    )
    .await;
    assert_eq!(hidden["data"]["student_id"], REDACTED);
    assert_eq!(hidden["subject"], REDACTED, "the key is the PII field");
    assert_eq!(hidden["data"]["status"], "absent", "other fields stay");
    let page = body(get(&server, Some(ATTENDANCE), "/v1/events").await, 200).await;
    assert_eq!(page["events"][0]["key"], REDACTED);
    assert_eq!(page["events"][0]["event"]["data"]["student_id"], REDACTED);
    let shown = body(
        get(&server, Some(AUDITOR), &format!("/v1/events/{id}")).await,
        200,
    )
    .await;
    assert_eq!(shown["data"]["student_id"], STUDENT);
    assert_eq!(shown["subject"], STUDENT);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_management_needs_admin() {
    let server = Server::start(with_tokens()).await;
    body(get(&server, Some(AUDITOR), "/v1/dlq").await, 403).await;
    let response = server
        .client
        .post(server.at("/v1/dlq/purge"))
        .bearer_auth(ATTENDANCE)
        .json(&json!({ "ids": [1] }))
        .send()
        .await
        .unwrap();
    body(response, 403).await;
    let out = body(get(&server, Some(ADMIN), "/v1/dlq").await, 200).await;
    assert_eq!(out["entries"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_needs_a_subscribe_scope_and_redacts_pii() {
    let server = Server::start(with_tokens()).await;
    body(get(&server, Some(AUDITOR), "/v1/stream").await, 403).await;
    let out = body(
        get(
            &server,
            Some(ATTENDANCE),
            "/v1/stream?types=grading.updated",
        )
        .await,
        403,
    )
    .await;
    assert!(
        out["detail"]
            .as_str()
            .unwrap()
            .contains("subscribe:grading.updated"),
        "{out}"
    );
    let mut response = get(
        &server,
        Some(ATTENDANCE),
        "/v1/stream?types=attendance.marked",
    )
    .await;
    assert_eq!(response.status(), 200);
    body(publish(&server, ATTENDANCE, &marked(STUDENT)).await, 202).await;
    let mut text = String::new();
    while !text.contains("data:") || !text.ends_with("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), response.chunk())
            .await
            .expect("an event arrives")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["data"]["student_id"], REDACTED, "{text}");
    assert!(!text.contains(STUDENT), "{text}");
    drop(response);
    server.stop().await;
}

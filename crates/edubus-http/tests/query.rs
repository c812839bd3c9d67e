//! Reading over real HTTP: the log, one event, the causation tree, the catalog, the OpenAPI
//! document and the live tail.

mod common;

use common::{STUDENT, Server, body, marked};
use serde_json::{Value, json};

const OTHER: &str = "9a7c1e5b-3d2f-4b6a-8c9d-0e1f2a3b4c5d";

async fn get(server: &Server, path: &str) -> reqwest::Response {
    server.client.get(server.at(path)).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_listed_by_filter_and_page() {
    let server = Server::open().await;
    for student in [STUDENT, OTHER, STUDENT] {
        body(server.post_structured(&marked(student)).await, 202).await;
    }
    let page = body(
        get(&server, &format!("/v1/events?key={STUDENT}")).await,
        200,
    )
    .await;
    let positions: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [1, 3]);
    let page = body(get(&server, "/v1/events?after=1&limit=1").await, 200).await;
    assert_eq!(page["events"][0]["position"], 2);
    assert_eq!(page["next_after"], 2);
    let page = body(get(&server, "/v1/events?type=AttendanceMarked").await, 200).await;
    assert_eq!(
        page["events"].as_array().unwrap().len(),
        3,
        "aliases resolve"
    );
    let page = body(get(&server, "/v1/events?type=grading.updated").await, 200).await;
    assert_eq!(page["events"], json!([]));
    let out = body(get(&server, "/v1/events?type=atendance.marked").await, 404).await;
    assert_eq!(out["nearest"][0], "attendance.marked");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_served_as_a_structured_cloudevent() {
    let server = Server::open().await;
    let event = marked(STUDENT);
    body(server.post_structured(&event).await, 202).await;
    let id = event["id"].as_str().unwrap();
    let response = get(&server, &format!("/v1/events/{id}")).await;
    assert_eq!(
        response.headers()["content-type"],
        "application/cloudevents+json"
    );
    assert_eq!(response.headers()["edubus-position"], "1");
    let got = body(response, 200).await;
    assert_eq!(got["id"], event["id"]);
    assert_eq!(got["data"], event["data"]);
    assert_eq!(got["dataschema"], "urn:edubus:schema:attendance.marked:v1");
    let out = body(get(&server, "/v1/events/nope").await, 404).await;
    assert_eq!(out["detail"], "event `nope` not found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_is_the_causation_tree() {
    let server = Server::open().await;
    let root = marked(STUDENT);
    let mut child = marked(STUDENT);
    child["correlationid"] = root["id"].clone();
    child["causationid"] = root["id"].clone();
    let mut unrelated = marked(OTHER);
    unrelated["correlationid"] = "elsewhere".into();
    for e in [&root, &child, &unrelated] {
        body(server.post_structured(e).await, 202).await;
    }
    let root_id = root["id"].as_str().unwrap();
    let tree = body(get(&server, &format!("/v1/trace/{root_id}")).await, 200).await;
    assert_eq!(tree["events"], 2);
    assert_eq!(tree["roots"][0]["id"], root["id"]);
    assert_eq!(tree["roots"][0]["caused"][0]["id"], child["id"]);
    body(get(&server, "/v1/trace/unknown-flow").await, 404).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_its_schemas_and_asyncapi_are_served() {
    let server = Server::open().await;
    let all = body(get(&server, "/v1/catalog").await, 200).await;
    let names: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"attendance.marked"));
    assert_eq!(names.len(), edubus_events::catalog().events().count());
    let one = body(get(&server, "/v1/catalog/AttendanceMarked").await, 200).await;
    assert_eq!(one["name"], "attendance.marked");
    assert_eq!(one["versions"][0]["key"], "student_id");
    let response = get(&server, "/v1/catalog/attendance.marked/schema").await;
    assert_eq!(
        response.headers()["content-type"],
        "application/schema+json"
    );
    let schema = body(response, 200).await;
    assert_eq!(schema["$id"], "urn:edubus:schema:attendance.marked:v1");
    assert_eq!(schema["properties"]["student_id"]["x-pii"], true);
    body(
        get(&server, "/v1/catalog/attendance.marked/schema?version=9").await,
        404,
    )
    .await;
    let out = body(get(&server, "/v1/catalog/attendance.markd").await, 404).await;
    assert_eq!(out["nearest"][0], "attendance.marked");
    let yaml = get(&server, "/asyncapi.yaml").await.text().await.unwrap();
    assert!(
        yaml.contains("asyncapi: 3.0.0"),
        "{}",
        &yaml[..200.min(yaml.len())]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let server = Server::open().await;
    let doc: Value = body(get(&server, "/openapi.json").await, 200).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/events",
        "/v1/events/{id}",
        "/v1/trace/{correlation_id}",
        "/v1/stream",
        "/v1/catalog",
        "/v1/catalog/{name}",
        "/v1/catalog/{name}/schema",
        "/asyncapi.yaml",
        "/v1/subscriptions",
        "/v1/dlq",
        "/v1/dlq/{id}",
        "/v1/dlq/replay",
        "/v1/dlq/purge",
        "/health/events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/flows",
        "/v1/flows/students/{id}",
        "/v1/flows/applications",
        "/v1/flows/applications/{id}",
        "/v1/flows/applications/{id}/approve",
        "/v1/flows/access/{id}",
        "/v1/flows/orders/{id}",
        "/v1/flows/batches/{id}",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} is missing from the OpenAPI document"
        );
    }
    let publish = &doc["paths"]["/v1/events"]["post"]["responses"];
    for status in [
        "202", "400", "401", "403", "404", "409", "413", "415", "422", "429",
    ] {
        assert!(
            publish.get(status).is_some(),
            "POST /v1/events documents {status}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_streams_new_events_as_server_sent_events() {
    let server = Server::open().await;
    body(server.post_structured(&marked(OTHER)).await, 202).await;
    let mut response = get(&server, "/v1/stream?types=attendance.marked").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let event = marked(STUDENT);
    body(server.post_structured(&event).await, 202).await;
    let mut text = String::new();
    while !text.contains("\n\n") || !text.contains("data:") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), response.chunk())
            .await
            .expect("an event arrives")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(
        text.contains("id: 2\n"),
        "only events after the head at connect: {text}"
    );
    assert!(text.contains("event: attendance.marked\n"), "{text}");
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let got: Value = serde_json::from_str(data).unwrap();
    assert_eq!(got["id"], event["id"]);
    drop(response);
    server.stop().await;
}

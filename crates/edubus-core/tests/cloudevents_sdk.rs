//! Interoperability with the CloudEvents Rust SDK, used as an oracle for the JSON format.

use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use edubus_core::Envelope;
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An envelope with every typed attribute, every typed extension and an unknown one.
fn full_envelope() -> Envelope {
    Envelope::new(
        "attendance.marked",
        2,
        json!({"student_id": "0190a6f2-6a43-7cc0-8e2b-5f1d1d7c3a11", "status": "late", "n": [1, 2.5]}),
    )
    .with_source("attendance-api")
    .with_key("0190a6f2-6a43-7cc0-8e2b-5f1d1d7c3a11")
    .with_correlation_id("corr-42")
    .with_causation_id("0190a6f2-0000-7000-8000-000000000001")
    .with_actor_id("teacher-7")
    .with_tenant_id("district-9")
    .with_aggregate_type("AttendanceRecord")
    .with_attempt(3)
    .with_replay(true)
    .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    .with_tracestate("congo=t61rcWkgMzE")
    .with_extension("comexampleflag", "on")
    .with_extension("comexamplecount", 7)
    .with_extension("comexampleok", false)
}

#[test]
fn our_json_survives_the_sdk() -> TestResult {
    let ours = full_envelope();
    ours.validate()?;
    let json = serde_json::to_vec(&ours)?;
    let sdk: Event = serde_json::from_slice(&json)?;
    assert_eq!(sdk.id(), ours.id);
    assert_eq!(sdk.ty(), "attendance.marked");
    // 11 typed extensions and 3 unknown ones.
    assert_eq!(sdk.iter_extensions().count(), 14);
    // Integers and booleans are JSON numbers and booleans, not strings.
    assert_eq!(
        sdk.extension("schemaversion"),
        Some(&ExtensionValue::Integer(2))
    );
    assert_eq!(sdk.extension("attempt"), Some(&ExtensionValue::Integer(3)));
    assert_eq!(
        sdk.extension("replay"),
        Some(&ExtensionValue::Boolean(true))
    );
    assert_eq!(
        sdk.extension("comexampleok"),
        Some(&ExtensionValue::Boolean(false))
    );
    let back = Envelope::from_json(&serde_json::to_vec(&sdk)?)?;
    assert_eq!(back, ours);
    Ok(())
}

#[test]
fn sdk_built_event_parses_as_envelope() -> TestResult {
    let sdk = EventBuilderV10::new()
        .id("evt-1")
        .source("https://school.example/enrollment")
        .ty("enrollment.approved")
        .subject("app-17")
        .time("2025-09-01T08:30:00+02:00")
        .data_with_schema(
            "application/json",
            "urn:edubus:schema:enrollment.approved:v1",
            json!({"application_id": "app-17"}),
        )
        .extension("correlationid", "corr-1")
        .extension("schemaversion", 1_i64)
        .extension("replay", false)
        .extension("attempt", 2_i64)
        .extension("partitionkey", "app-17")
        .extension("vendorext", "kept")
        .build()?;
    let env = Envelope::from_json(&serde_json::to_vec(&sdk)?)?;
    assert_eq!(env.id, "evt-1");
    assert_eq!(env.event_type, "enrollment.approved");
    assert_eq!(env.source, "https://school.example/enrollment");
    assert_eq!(
        env.time.map(|t| t.to_string()).as_deref(),
        Some("2025-09-01T06:30:00Z")
    );
    assert_eq!(
        env.dataschema.as_deref(),
        Some("urn:edubus:schema:enrollment.approved:v1")
    );
    assert_eq!(env.correlationid.as_deref(), Some("corr-1"));
    assert_eq!(
        (env.schemaversion, env.attempt, env.replay),
        (Some(1), Some(2), Some(false))
    );
    assert_eq!(env.key(), Some("app-17"));
    assert_eq!(env.extensions.get("vendorext"), Some(&json!("kept")));
    assert_eq!(env.data, json!({"application_id": "app-17"}));
    Ok(())
}

//! Envelope builder, JSON reading and structural validation.

use edubus_core::envelope::{is_well_formed_id, parse_schema_uri, schema_uri};
use edubus_core::{Envelope, EnvelopeError, Error, ErrorKind, Event, Issue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A hand-written stand-in for a generated event type.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StudentEnrolled {
    student_id: String,
    class_id: String,
}

impl Event for StudentEnrolled {
    const NAME: &'static str = "school.student.enrolled";
    const VERSION: u32 = 1;
    const TOPIC: &'static str = "school.student.enrolled";
    const KEY_FIELD: &'static str = "student_id";
    const AGGREGATE: Option<&'static str> = Some("Student");

    fn key(&self) -> String {
        self.student_id.clone()
    }
}

fn sample() -> Envelope {
    Envelope::new("school.student.enrolled", 1, json!({"student_id": "s-1"})).with_source("svc")
}

/// The pointers of an envelope error's issues.
fn pointers(err: &EnvelopeError) -> Vec<String> {
    err.issues().into_iter().map(|i| i.pointer).collect()
}

fn parse_err(json: Value) -> EnvelopeError {
    match Envelope::from_json(json.to_string().as_bytes()) {
        Ok(env) => panic!("expected an error, parsed {env:?}"),
        Err(e) => e,
    }
}

fn minimal() -> Value {
    json!({"specversion": "1.0", "id": "e-1", "source": "svc", "type": "a.b"})
}

#[test]
fn ids_are_time_ordered_uuid_v7() -> TestResult {
    let ids: Vec<Uuid> = (0..500)
        .map(|_| Uuid::parse_str(&sample().id))
        .collect::<Result<_, _>>()?;
    for id in &ids {
        assert_eq!(id.get_version_num(), 7, "{id}");
        assert_eq!(
            id.to_string().as_bytes()[14],
            b'7',
            "version nibble of {id}"
        );
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not strictly increasing"
    );
    Ok(())
}

#[test]
fn new_sets_cloudevents_defaults() {
    let env = sample();
    assert_eq!(env.specversion, "1.0");
    assert_eq!(env.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(env.schemaversion, Some(1));
    assert_eq!(
        env.dataschema.as_deref(),
        Some("urn:edubus:schema:school.student.enrolled:v1")
    );
    assert!(env.time.is_some());
    assert_eq!(env.correlationid.as_deref(), Some(env.id.as_str()));
    assert_eq!(env.causationid, None);
    assert!(env.validate().is_ok());
}

#[test]
fn from_event_fills_key_aggregate_and_schema() -> TestResult {
    let ev = StudentEnrolled {
        student_id: "s-9".into(),
        class_id: "c-1".into(),
    };
    let env = Envelope::from_event(&ev, "enrollment-api")?;
    assert_eq!(env.event_type, "school.student.enrolled");
    assert_eq!(env.source, "enrollment-api");
    assert_eq!(env.subject.as_deref(), Some("s-9"));
    assert_eq!(env.partitionkey.as_deref(), Some("s-9"));
    assert_eq!(env.aggregatetype.as_deref(), Some("Student"));
    assert_eq!(env.schemaversion, Some(1));
    assert_eq!(
        env.dataschema,
        Some(schema_uri("school.student.enrolled", 1))
    );
    assert_eq!(env.data, json!({"student_id": "s-9", "class_id": "c-1"}));
    Ok(())
}

#[test]
fn caused_by_inherits_correlation() {
    let root = sample().with_tenant_id("district-1");
    let child = sample().caused_by(&root);
    assert_eq!(child.correlationid.as_deref(), Some(root.id.as_str()));
    assert_eq!(child.causationid.as_deref(), Some(root.id.as_str()));
    assert_eq!(child.tenantid.as_deref(), Some("district-1"));
    let grandchild = sample().with_tenant_id("other").caused_by(&child);
    assert_eq!(grandchild.correlationid.as_deref(), Some(root.id.as_str()));
    assert_eq!(grandchild.causationid.as_deref(), Some(child.id.as_str()));
    assert_eq!(
        grandchild.tenantid.as_deref(),
        Some("other"),
        "own tenant kept"
    );
}

#[test]
fn caused_by_a_foreign_event_without_correlation_uses_its_id() {
    let mut foreign = sample().with_id("ext-1");
    foreign.correlationid = None;
    let child = sample().caused_by(&foreign);
    assert_eq!(child.correlationid.as_deref(), Some("ext-1"));
    assert_eq!(child.causationid.as_deref(), Some("ext-1"));
}

#[test]
fn with_id_moves_a_root_correlation_id() {
    let env = sample().with_id("fixed");
    assert_eq!(env.correlationid.as_deref(), Some("fixed"));
    let env = sample().with_correlation_id("flow").with_id("fixed");
    assert_eq!(env.correlationid.as_deref(), Some("flow"));
}

#[test]
fn json_round_trip_keeps_everything() -> TestResult {
    let env = sample()
        .with_key("k")
        .with_attempt(2)
        .with_replay(false)
        .with_extension("vendorext", json!("x"));
    let back = Envelope::from_json(&serde_json::to_vec(&env)?)?;
    assert_eq!(back, env);
    let via_serde: Envelope = serde_json::from_value(serde_json::to_value(&env)?)?;
    assert_eq!(via_serde, env);
    Ok(())
}

#[test]
fn extension_names_are_checked() {
    let env = sample()
        .with_extension("Upper", "x")
        .with_extension("with_underscore", "x")
        .with_extension("abcdefghijklmnopqrstu", "x")
        .with_extension("abcdefghijklmnopqrst", "x")
        .with_extension("correlationid", "x")
        .with_extension("nested", json!({"a": 1}))
        .with_extension("ok1", json!(1.5));
    let Err(err) = env.validate() else {
        panic!("expected errors")
    };
    assert_eq!(
        pointers(&err),
        [
            "/Upper",
            "/abcdefghijklmnopqrstu",
            "/correlationid",
            "/nested",
            "/ok1",
            "/with_underscore"
        ]
    );
    let issues = err.issues();
    assert!(
        issues[0].reason.contains("lower-case letters"),
        "{issues:?}"
    );
    assert!(issues[1].reason.contains("at most 20"), "{issues:?}");
    assert!(issues[2].reason.contains("typed attribute"), "{issues:?}");
}

#[test]
fn unknown_extensions_parse_and_bad_names_fail() {
    let mut good = minimal();
    good["vendorext"] = json!(true);
    let env = Envelope::from_json(good.to_string().as_bytes());
    assert_eq!(
        env.ok()
            .and_then(|e| e.extensions.get("vendorext").cloned()),
        Some(json!(true))
    );
    let mut bad = minimal();
    bad["Vendor-Ext"] = json!("x");
    assert_eq!(pointers(&parse_err(bad)), ["/Vendor-Ext"]);
}

#[test]
fn required_attributes_and_specversion() {
    let err = parse_err(json!({"specversion": "0.3", "type": ""}));
    assert_eq!(pointers(&err), ["/id", "/source", "/specversion", "/type"]);
    assert!(
        err.to_string()
            .contains("/specversion: unsupported CloudEvents version \"0.3\""),
        "{err}"
    );
    let err = parse_err(json!({"id": "x", "source": "s", "type": "t"}));
    assert_eq!(pointers(&err), ["/specversion"]);
}

#[test]
fn attribute_types_and_time_are_checked() {
    let mut v = minimal();
    v["time"] = json!("yesterday");
    v["schemaversion"] = json!(-1);
    v["replay"] = json!("maybe");
    v["subject"] = json!(7);
    v["data_base64"] = json!("AAAA");
    let err = parse_err(v);
    assert_eq!(
        pointers(&err),
        [
            "/data_base64",
            "/replay",
            "/schemaversion",
            "/subject",
            "/time"
        ]
    );
    let issues = err.issues();
    assert!(
        issues[3]
            .reason
            .contains("expected a string, found an integer"),
        "{issues:?}"
    );
    assert!(issues[4].reason.contains("RFC 3339"), "{issues:?}");
}

#[test]
fn canonical_string_forms_of_integers_and_booleans_are_read() -> TestResult {
    let mut v = minimal();
    v["schemaversion"] = json!("2");
    v["replay"] = json!("true");
    v["time"] = json!("2025-01-02T03:04:05.5+01:00");
    let env = Envelope::from_json(v.to_string().as_bytes())?;
    assert_eq!((env.schemaversion, env.replay), (Some(2), Some(true)));
    assert_eq!(
        env.time.map(|t| t.to_string()).as_deref(),
        Some("2025-01-02T02:04:05.5Z")
    );
    Ok(())
}

#[test]
fn correlation_ids_must_be_well_formed() {
    let mut v = minimal();
    v["correlationid"] = json!("has space");
    v["causationid"] = json!("");
    let err = parse_err(v);
    assert_eq!(pointers(&err), ["/causationid", "/correlationid"]);
    assert!(is_well_formed_id("0190a6f2-6a43-7cc0-8e2b-5f1d1d7c3a11"));
    assert!(!is_well_formed_id(&"x".repeat(129)));
}

#[test]
fn content_type_and_dataschema_are_checked() {
    let mut v = minimal();
    v["datacontenttype"] = json!("text/plain");
    v["dataschema"] = json!("schemas/x.json");
    assert_eq!(pointers(&parse_err(v)), ["/datacontenttype", "/dataschema"]);
    let mut v = minimal();
    v["datacontenttype"] = json!("application/cloudevents+json; charset=utf-8");
    assert!(Envelope::from_json(v.to_string().as_bytes()).is_ok());
}

#[test]
fn non_json_and_non_objects_are_rejected() {
    let err = Envelope::from_json(b"{nope");
    assert!(matches!(err, Err(EnvelopeError::Syntax(_))));
    let err = parse_err(json!([1]));
    assert_eq!(pointers(&err), [""]);
}

#[test]
fn schema_uris_parse_back() {
    let uri = schema_uri("school.grade.recorded", 2);
    assert_eq!(uri, "urn:edubus:schema:school.grade.recorded:v2");
    assert_eq!(parse_schema_uri(&uri), Some(("school.grade.recorded", 2)));
    assert_eq!(parse_schema_uri("urn:edubus:schema:x:v0"), None);
    assert_eq!(parse_schema_uri("https://example.com/x:v1"), None);
}

#[test]
fn envelope_errors_map_into_invalid_input() {
    let err: Error = parse_err(json!({})).into();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(!err.is_retryable());
    assert_eq!(
        err.issues().first(),
        Some(&Issue::new("/id", "required attribute is missing or empty"))
    );
    assert!(
        err.to_string()
            .contains("\n  - /source: required attribute"),
        "{err}"
    );
}

/// `serde_json::from_slice::<Envelope>` (the fetch path, which reads members without a map)
/// agrees with `Envelope::from_json` on extensions, `null`s, escaped and repeated member names,
/// and on what it rejects.
#[test]
fn deserializing_reads_members_like_from_json() -> TestResult {
    let text = r#"{"specversion": "1.0", "\u0069d": "e-1", "source": "svc", "type": "a.b",
        "subject": null, "vendorext": 3, "nullext": null, "type": "c.d",
        "schemaversion": "2", "data": {"b": 1, "a": [true]}}"#;
    let via_serde: Envelope = serde_json::from_str(text)?;
    let via_json = Envelope::from_json(text.as_bytes())?;
    assert_eq!(via_serde, via_json);
    assert_eq!(via_serde.id, "e-1", "an escaped name is still `id`");
    assert_eq!(
        via_serde.event_type, "c.d",
        "the last of a repeated member wins"
    );
    assert_eq!(via_serde.subject, None);
    assert_eq!(via_serde.schemaversion, Some(2));
    assert_eq!(
        via_serde.extensions.keys().collect::<Vec<_>>(),
        ["vendorext"]
    );
    let bad = r#"{"specversion": "1.0", "id": "e-1", "source": "svc", "type": "a.b",
        "subject": 7, "Vendor-Ext": "x"}"#;
    let err = serde_json::from_str::<Envelope>(bad).expect_err("invalid members");
    let expected = Envelope::from_json(bad.as_bytes()).expect_err("invalid members");
    assert_eq!(err.to_string(), expected.to_string());
    assert!(serde_json::from_str::<Envelope>("[1]").is_err());
    Ok(())
}

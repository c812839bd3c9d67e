//! Envelope validation against the fixture catalog and the real one, for every event version.

use std::path::{Path, PathBuf};

use edubus_catalog::ir::{Catalog, EventSpec, FieldType, Scalar};
use edubus_catalog::lint::lint;
use edubus_catalog::parse::load_dir;
use edubus_catalog::resolve::Via;
use edubus_catalog::sample::{example_payload, minimal_payload};
use edubus_catalog::validate::{ValidationError, Validator};
use edubus_core::Envelope;
use edubus_core::error::escape_pointer_token;
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> Result<Catalog, Box<dyn std::error::Error>> {
    Ok(load_dir(&manifest_dir().join("tests/fixtures/catalog"))?)
}

/// The repository's catalog; it must load and lint clean for its payloads to mean anything.
fn real() -> Result<Catalog, Box<dyn std::error::Error>> {
    let dir: PathBuf = manifest_dir().join("../../catalog");
    let catalog = load_dir(&dir)?;
    let problems = lint(&catalog);
    assert!(problems.is_empty(), "catalog/ does not lint: {problems:#?}");
    Ok(catalog)
}

/// An envelope for `event` carrying `data`, version named by `schemaversion`.
fn envelope(event: &EventSpec, data: Value) -> Envelope {
    Envelope::new(&event.name, event.version, data).with_source("tests")
}

/// The pointers of the issues `data` raises for `event`, or none when it passes.
fn data_pointers(v: &Validator, event: &EventSpec, data: Value) -> Vec<String> {
    match v.validate(&envelope(event, data)) {
        Ok(ok) => {
            assert_eq!(ok.event, event);
            vec![]
        }
        Err(ValidationError::Data { issues, .. }) => {
            issues.into_iter().map(|i| i.pointer).collect()
        }
        Err(other) => panic!("{}: expected a data error, got {other}", event.id()),
    }
}

/// The reasons of the issues `data` raises for `event`.
fn data_reasons(v: &Validator, event: &EventSpec, data: Value) -> Vec<String> {
    match v.validate(&envelope(event, data)) {
        Err(e) => e.issues().into_iter().map(|i| i.reason).collect(),
        Ok(_) => vec![],
    }
}

fn pointer(field: &str) -> String {
    format!("/data/{}", escape_pointer_token(field))
}

/// A value whose JSON type no schema of `ty` accepts (null is legal for optional fields).
fn wrong_type(ty: &FieldType) -> Value {
    match ty {
        FieldType::Scalar(Scalar::Int) => json!("forty-two"),
        FieldType::Scalar(Scalar::Bool) => json!("yes"),
        FieldType::Scalar(Scalar::Object) => json!([1, 2]),
        FieldType::List(_) => json!({"not": "a list"}),
        FieldType::Scalar(_) | FieldType::Enum(_) => json!(42),
    }
}

/// Every per-version property of the brief, for one event version.
fn check_event(v: &Validator, event: &EventSpec) {
    let id = event.id();
    let example = example_payload(event);
    assert_eq!(
        data_pointers(v, event, example.clone()),
        Vec::<String>::new(),
        "{id}: example"
    );
    assert_eq!(
        data_pointers(v, event, minimal_payload(event)),
        Vec::<String>::new(),
        "{id}: minimal"
    );
    for field in &event.fields {
        let at = pointer(&field.name);
        let with = |value: Value| {
            let mut data = example.clone();
            data[&field.name] = value;
            data
        };
        if !field.optional {
            let mut data = example.clone();
            data.as_object_mut().map(|m| m.shift_remove(&field.name));
            assert_eq!(
                data_pointers(v, event, data.clone()),
                [at.as_str()],
                "{id}: drop {at}"
            );
            assert_eq!(data_reasons(v, event, data), ["required field is missing"]);
        }
        assert_eq!(
            data_pointers(v, event, with(wrong_type(&field.ty))),
            [at.as_str()],
            "{id}: type of {at}"
        );
        let uuid_list = FieldType::List(Box::new(FieldType::Scalar(Scalar::Uuid)));
        let bad_uuid = match &field.ty {
            FieldType::Scalar(Scalar::Uuid) => Some((json!("not-a-uuid"), at.clone())),
            ty if *ty == uuid_list => Some((json!(["not-a-uuid"]), format!("{at}/0"))),
            _ => None,
        };
        if let Some((value, bad_at)) = bad_uuid {
            let reasons = data_reasons(v, event, with(value.clone()));
            assert_eq!(
                data_pointers(v, event, with(value)),
                [bad_at],
                "{id}: uuid {at}"
            );
            assert!(reasons[0].contains("uuid format"), "{id}: {reasons:?}");
        }
    }
    let mut extra = example.clone();
    extra["zz_not_in_catalog"] = json!(1);
    assert_eq!(
        data_pointers(v, event, extra),
        ["/data/zz_not_in_catalog"],
        "{id}: extra"
    );
}

fn check_catalog(catalog: &Catalog) -> TestResult {
    let v = Validator::new(catalog)?;
    let mut checked = 0;
    for event in catalog.events() {
        check_event(&v, event);
        checked += 1;
    }
    assert!(checked > 0, "no events");
    Ok(())
}

#[test]
fn every_fixture_event_version_validates_as_specified() -> TestResult {
    check_catalog(&fixture()?)
}

#[test]
fn every_real_event_version_validates_as_specified() -> TestResult {
    check_catalog(&real()?)
}

#[test]
fn issues_are_all_reported_and_sorted() -> TestResult {
    let catalog = fixture()?;
    let v = Validator::new(&catalog)?;
    let Some(event) = catalog.get("school.student.enrolled", 1) else {
        return Err("fixture event missing".into());
    };
    let mut data = example_payload(event);
    data["verified"] = json!("yes");
    data["status"] = json!("expelled");
    data["tuition"] = json!("12,50");
    data["start_date"] = json!("2026-02-30");
    data["enrolled_at"] = json!("yesterday");
    data["course_ids"] = json!(["nope"]);
    data["guardian_email"] = Value::Null;
    data.as_object_mut().map(|m| m.remove("class_id"));
    let Err(err) = v.validate(&envelope(event, data)) else {
        return Err("should fail".into());
    };
    let issues = err.issues();
    let got: Vec<(&str, &str)> = issues
        .iter()
        .map(|i| (i.pointer.as_str(), i.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("/data/class_id", "required field is missing"),
            (
                "/data/course_ids/0",
                "invalid uuid format: expected a UUID string (format uuid)"
            ),
            (
                "/data/enrolled_at",
                "invalid date-time format: expected an RFC 3339 date-time string (format date-time)"
            ),
            (
                "/data/start_date",
                "invalid date format: expected a YYYY-MM-DD date string (format date)"
            ),
            ("/data/status", "expected one of \"active\", \"waitlisted\""),
            (
                "/data/tuition",
                "expected a decimal as a string, such as \"87.50\""
            ),
            ("/data/verified", "expected a boolean, found a string"),
        ]
    );
    Ok(())
}

#[test]
fn unknown_type_names_the_nearest() -> TestResult {
    let catalog = fixture()?;
    let v = Validator::new(&catalog)?;
    let env = Envelope::new("school.student.enroled", 1, json!({})).with_source("t");
    let Err(ValidationError::UnknownType { nearest, total, .. }) = v.validate(&env) else {
        return Err("expected an unknown type".into());
    };
    assert_eq!(nearest.len(), 3);
    assert_eq!(nearest[0], "school.student.enrolled");
    assert_eq!(total, 4);
    Ok(())
}

/// Validates `data` as event type `ty` with the given `schemaversion` and `dataschema`.
fn check_as(
    v: &Validator,
    ty: &str,
    version: Option<u32>,
    dataschema: Option<&str>,
    data: Value,
) -> Result<(String, Via), ValidationError> {
    let mut env = Envelope::new(ty, 1, data).with_source("t");
    env.schemaversion = version;
    env.dataschema = dataschema.map(str::to_owned);
    v.validate(&env).map(|ok| (ok.event.id(), ok.via))
}

#[test]
fn aliases_and_topics_resolve() -> TestResult {
    let catalog = fixture()?;
    let v = Validator::new(&catalog)?;
    let enrolled = example_payload(catalog.get("school.student.enrolled", 1).ok_or("missing")?);
    let by_alias = check_as(&v, "StudentEnrolled", None, None, enrolled)?;
    assert_eq!(by_alias, ("school.student.enrolled.v1".into(), Via::Alias));
    let scan = catalog.get("pipeline.scan.completed", 1).ok_or("missing")?;
    let by_topic = check_as(&v, "acme.scans.done", None, None, example_payload(scan))?;
    assert_eq!(by_topic, ("pipeline.scan.completed.v1".into(), Via::Topic));
    let command = catalog
        .get("pipeline.scan.initiate.command", 1)
        .ok_or("missing")?;
    let templated = check_as(&v, &command.topic, None, None, example_payload(command))?;
    assert_eq!(
        templated,
        ("pipeline.scan.initiate.command.v1".into(), Via::Topic)
    );
    Ok(())
}

#[test]
fn versions_are_chosen_in_order_of_precedence() -> TestResult {
    let catalog = fixture()?;
    let v = Validator::new(&catalog)?;
    let v1 = example_payload(catalog.get("school.grade.recorded", 1).ok_or("missing")?);
    let v2 = example_payload(catalog.get("school.grade.recorded", 2).ok_or("missing")?);
    let name = "school.grade.recorded";
    // schemaversion wins, even over an alias that pins another version.
    assert_eq!(
        check_as(&v, name, Some(1), None, v1.clone())?.0,
        "school.grade.recorded.v1"
    );
    assert_eq!(
        check_as(&v, "school.grade.recorded.v2", Some(1), None, v1.clone())?.0,
        "school.grade.recorded.v1"
    );
    // Then the version in our dataschema URI.
    let uri2 = "urn:edubus:schema:school.grade.recorded:v2";
    assert_eq!(
        check_as(&v, name, None, Some(uri2), v2.clone())?.0,
        "school.grade.recorded.v2"
    );
    // Then the alias's pinned version; a foreign dataschema does not count.
    let foreign = Some("https://schemas.example/grade.json");
    assert_eq!(
        check_as(&v, "school.grade.recorded.v2", None, foreign, v2.clone())?.0,
        "school.grade.recorded.v2"
    );
    // A canonical name with several versions and nothing else is ambiguous.
    let err = check_as(&v, name, None, foreign, v2.clone()).err();
    let Some(ValidationError::AmbiguousVersion { versions, .. }) = &err else {
        return Err(format!("expected an ambiguous version, got {err:?}").into());
    };
    assert_eq!(versions, &[1, 2]);
    assert_eq!(
        err.map(|e| e.issues()[0].pointer.clone()).as_deref(),
        Some("/schemaversion")
    );
    // The only version needs nothing.
    let scan = example_payload(catalog.get("pipeline.scan.completed", 1).ok_or("missing")?);
    assert_eq!(
        check_as(&v, "pipeline.scan.completed", None, None, scan)?.0,
        "pipeline.scan.completed.v1"
    );
    Ok(())
}

#[test]
fn unknown_and_contradictory_versions_fail() -> TestResult {
    let catalog = fixture()?;
    let v = Validator::new(&catalog)?;
    let name = "school.grade.recorded";
    let err = check_as(&v, name, Some(7), None, json!({})).err();
    let Some(ValidationError::UnknownVersion { known, pointer, .. }) = err else {
        return Err(format!("expected an unknown version, got {err:?}").into());
    };
    assert_eq!((known, pointer.as_str()), (vec![1, 2], "/schemaversion"));
    let uri9 = Some("urn:edubus:schema:school.grade.recorded:v9");
    let err = check_as(&v, name, None, uri9, json!({})).err();
    assert!(
        matches!(err, Some(ValidationError::UnknownVersion { ref pointer, .. }) if pointer == "/dataschema"),
        "{err:?}"
    );
    let uri1 = Some("urn:edubus:schema:school.grade.recorded:v1");
    let err = check_as(&v, name, Some(2), uri1, json!({})).err();
    assert_eq!(
        err.map(|e| e.issues()[0].pointer.clone()).as_deref(),
        Some("/dataschema")
    );
    let other = Some("urn:edubus:schema:school.student.enrolled:v1");
    let err = check_as(&v, name, Some(2), other, json!({})).err();
    assert!(
        matches!(err, Some(ValidationError::Inconsistent(_))),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn structure_is_checked_first_and_data_must_be_an_object() -> TestResult {
    let catalog = fixture()?;
    let v = Validator::new(&catalog)?;
    let mut env = Envelope::new("no.such.event", 1, json!([])).with_source("");
    env.specversion = "0.3".into();
    let err = v.validate(&env).err();
    let Some(ValidationError::Envelope(issues)) = err else {
        return Err(format!("expected an envelope error, got {err:?}").into());
    };
    let pointers: Vec<_> = issues.iter().map(|i| i.pointer.as_str()).collect();
    assert_eq!(pointers, ["/source", "/specversion"]);
    let scan = catalog.get("pipeline.scan.completed", 1).ok_or("missing")?;
    assert_eq!(data_pointers(&v, scan, json!([1])), ["/data"]);
    assert_eq!(data_pointers(&v, scan, Value::Null), ["/data"]);
    let core: edubus_core::Error = ValidationError::Envelope(issues).into();
    assert_eq!(core.kind(), edubus_core::ErrorKind::Invalid);
    Ok(())
}

#[test]
fn validator_is_shareable_across_threads() -> TestResult {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let v = Validator::new(&fixture()?)?;
    assert_send_sync(&v);
    assert!(format!("{v:?}").contains("compiled_schemas: 5"), "{v:?}");
    Ok(())
}

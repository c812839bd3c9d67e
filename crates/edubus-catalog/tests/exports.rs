//! Exports: golden files of the fixture catalog, determinism, and every JSON Schema (fixture and
//! real catalog) checked against the Draft 2020-12 meta-schema and its own example payloads.
//!
//! Regenerate the golden files after an intended change with
//! `EDUBUS_BLESS=1 cargo test -p edubus-catalog --test exports`.

use std::path::{Path, PathBuf};

use edubus_catalog::emit::{asyncapi, json_schema};
use edubus_catalog::{Catalog, EventSpec, export, parse, sample};
use serde_json::Value;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(dir: &Path) -> Catalog {
    parse::load_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn fixture() -> Catalog {
    load(&manifest_dir().join("tests/fixtures/catalog"))
}

fn real() -> Catalog {
    load(&manifest_dir().join("../../catalog"))
}

fn golden_dir() -> PathBuf {
    manifest_dir().join("tests/golden/export")
}

/// Every file under `dir` as `(relative path with '/', content)`, sorted by path.
fn read_tree(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read golden dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(dir).expect("under dir");
            let relative = relative.to_string_lossy().replace('\\', "/");
            files.push((
                relative,
                std::fs::read_to_string(&path).expect("read golden"),
            ));
        }
    }
    files.sort();
    files
}

/// The first differing line of two texts with context, or `None` when they are equal.
fn first_difference(expected: &str, actual: &str) -> Option<String> {
    let (old, new): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let at = (0..old.len().max(new.len())).find(|&i| old.get(i) != new.get(i));
    let Some(at) = at else {
        return (expected != actual).then(|| "the trailing newline differs".to_owned());
    };
    let mut out = format!(
        "first difference at line {} (- golden, + exported):\n",
        at + 1
    );
    for (i, line) in old.iter().enumerate().take(at).skip(at.saturating_sub(2)) {
        out.push_str(&format!("  {:>4} | {line}\n", i + 1));
    }
    for (tag, lines) in [("-", &old), ("+", &new)] {
        for (i, line) in lines.iter().enumerate().skip(at).take(3) {
            out.push_str(&format!("{tag} {:>4} | {line}\n", i + 1));
        }
    }
    Some(out)
}

/// Compares `files` with the golden tree, or rewrites it when `EDUBUS_BLESS=1`.
fn assert_golden(files: &[(String, String)], dir: &Path) {
    if std::env::var("EDUBUS_BLESS").is_ok_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(dir);
        for (relative, content) in files {
            let path = dir.join(relative);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("create golden dir");
            std::fs::write(&path, content).expect("write golden");
        }
        return;
    }
    let golden = read_tree(dir);
    let paths = |f: &[(String, String)]| f.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    let hint = "run with EDUBUS_BLESS=1 to accept";
    assert_eq!(
        paths(&golden),
        paths(files),
        "exported paths differ ({hint})"
    );
    for ((path, expected), (_, actual)) in golden.iter().zip(files) {
        if let Some(diff) = first_difference(expected, actual) {
            panic!("{path} differs from its golden file ({hint}):\n{diff}");
        }
    }
}

#[test]
fn fixture_export_matches_golden_files() {
    assert_golden(&export::files(&fixture()), &golden_dir());
}

#[test]
fn export_is_deterministic() {
    assert_eq!(export::files(&fixture()), export::files(&fixture()));
    assert_eq!(export::files(&real()), export::files(&real()));
}

#[test]
fn write_creates_the_tree_and_skips_unchanged_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = fixture();
    let count = export::files(&catalog).len();
    assert_eq!(export::write(&catalog, dir.path()).expect("write"), count);
    assert_eq!(export::write(&catalog, dir.path()).expect("rewrite"), 0);
    assert_eq!(read_tree(dir.path()), export::files(&catalog));
}

/// Every problem of `schema` against the Draft 2020-12 meta-schema, plus compile errors.
fn schema_problems(schema: &Value) -> Vec<String> {
    let meta = jsonschema::draft202012::meta::validator();
    let mut problems: Vec<String> = meta.iter_errors(schema).map(|e| e.to_string()).collect();
    if let Err(e) = jsonschema::draft202012::options().build(schema) {
        problems.push(format!("does not compile: {e}"));
    }
    problems
}

/// Every validation error of `instance` against `schema`, formats asserted.
fn instance_problems(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Meta-validates the schema of every event and validates both sample payloads against it.
fn check_catalog(catalog: &Catalog) -> usize {
    let mut problems = Vec::new();
    for event in catalog.events() {
        let schema = json_schema::event_schema(event);
        let mut found = schema_problems(&schema);
        if found.is_empty() {
            found.extend(instance_problems(&schema, &sample::example_payload(event)));
            found.extend(instance_problems(&schema, &sample::minimal_payload(event)));
        }
        problems.extend(found.into_iter().map(|p| format!("{}: {p}", event.id())));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    catalog.events().count()
}

#[test]
fn fixture_schemas_and_samples_validate() {
    assert_eq!(check_catalog(&fixture()), 5);
}

#[test]
fn real_catalog_schemas_and_samples_validate() {
    assert!(check_catalog(&real()) > 0);
}

#[test]
fn meta_validation_rejects_a_broken_schema() {
    let broken = serde_json::json!({
        "$schema": json_schema::DRAFT_2020_12,
        "type": "strin",
        "required": "id",
    });
    assert_eq!(
        schema_problems(&broken).len(),
        3,
        "{:?}",
        schema_problems(&broken)
    );
}

#[test]
fn format_validation_is_on() {
    let catalog = fixture();
    let event = catalog
        .get("school.student.enrolled", 1)
        .expect("fixture event");
    let schema = json_schema::event_schema(event);
    let mut payload = sample::example_payload(event);
    payload["class_id"] = "not-a-uuid".into();
    payload["enrolled_at"] = "yesterday".into();
    payload["tuition"] = "87.5.0".into();
    payload["tags"] = Value::Null;
    assert_eq!(instance_problems(&schema, &payload).len(), 3);
}

fn check_asyncapi_payloads(catalog: &Catalog) {
    let yaml = asyncapi::document(catalog);
    let doc: Value = yaml_serde::from_str(&yaml).expect("the document is YAML");
    let messages = &doc["components"]["messages"];
    for event in catalog.events() {
        let message: &Value = &messages[event.id()];
        assert_eq!(
            message["payload"],
            json_schema::event_schema(event),
            "{}",
            event.id()
        );
        let channel = &message["x-edubus-topic"];
        assert_eq!(channel, &Value::from(event.topic.as_str()));
    }
}

#[test]
fn asyncapi_payloads_equal_the_exported_schemas() {
    check_asyncapi_payloads(&fixture());
    check_asyncapi_payloads(&real());
}

#[test]
fn fixture_covers_commands_versions_and_topic_overrides() {
    let catalog = fixture();
    let ids: Vec<String> = catalog.events().map(EventSpec::id).collect();
    assert!(ids.contains(&"pipeline.scan.initiate.command.v1".to_owned()));
    assert!(ids.contains(&"school.grade.recorded.v2".to_owned()));
    let doc = asyncapi::document_value(&catalog);
    assert_eq!(
        doc["channels"]["acme.scans.done"]["address"],
        "acme.scans.done"
    );
}

/// Exports the fixture and the real catalog for external checkers (`tools/asyncapi/check.mjs`):
/// into `$EDUBUS_EXPORT_DIR/{fixture,catalog}` when set, else into a temporary directory.
#[test]
fn export_both_catalogs_to_a_directory() {
    let temp = tempfile::tempdir().expect("tempdir");
    let root =
        std::env::var_os("EDUBUS_EXPORT_DIR").map_or(temp.path().to_path_buf(), PathBuf::from);
    for (name, catalog) in [("fixture", fixture()), ("catalog", real())] {
        let out = root.join(name);
        export::write(&catalog, &out).expect("export");
        assert_eq!(
            read_tree(&out).len(),
            export::files(&catalog).len(),
            "{name}"
        );
    }
}

//! The `edubus catalog` and `edubus envelope` commands, run as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn edubus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edubus"))
        .args(args)
        .env_remove("EDUBUS_CATALOG")
        .output()
        .expect("run edubus")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    repo().join("crates/edubus-catalog/tests/fixtures/catalog")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn show_resolves_canonical_names_aliases_and_topics() {
    for (name, expected) in [
        ("attendance.marked", "attendance.marked"),
        ("AttendanceMarked", "attendance.marked"),
        (
            "huleedu.cj_assessment.completed.v1",
            "cj_assessment.completed",
        ),
        (
            "batch.nlp.initiate.command.v2",
            "batch.nlp.initiate.command",
        ),
    ] {
        let out = edubus(&["catalog", "show", name, "--json"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["event"]["name"], expected, "{name}");
        assert_eq!(
            v["schema"]["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
    }
    let text = stdout(&edubus(&["catalog", "show", "GradeUpdated"]));
    assert!(text.contains("alias of grading.updated v1"), "{text}");
    assert!(text.contains("\"additionalProperties\": false"), "{text}");
}

#[test]
fn show_of_an_unknown_name_exits_2_with_the_nearest_names_and_the_count() {
    let out = edubus(&["catalog", "show", "attendance.markd"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("unknown event `attendance.markd`"), "{err}");
    let nearest = err.lines().find(|l| l.contains("did you mean")).unwrap();
    assert!(nearest.contains("attendance.marked"), "{nearest}");
    assert_eq!(nearest.matches(", ").count(), 2, "three names: {nearest}");
    let list: Value =
        serde_json::from_str(&stdout(&edubus(&["catalog", "list", "--json"]))).unwrap();
    let total = list.as_array().unwrap().len();
    assert!(
        err.contains(&format!("the catalog has {total} events")),
        "{err}"
    );
}

#[test]
fn list_filters_by_context_and_rejects_unknown_contexts() {
    let out = edubus(&["catalog", "list", "--context", "attendance", "--json"]);
    let rows: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"attendance.threshold_breached"),
        "{names:?}"
    );
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["context"] == "attendance")
    );
    let bad = edubus(&["catalog", "list", "--context", "atendance"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("attendance"), "{}", stderr(&bad));
}

#[test]
fn lint_passes_on_the_catalog_and_lists_every_problem_of_a_broken_one() {
    let ok = edubus(&["catalog", "lint", repo().join("catalog").to_str().unwrap()]);
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));

    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), dir.path());
    let school = dir.path().join("school.toml");
    let text = std::fs::read_to_string(&school)
        .unwrap()
        .replace(
            "name = \"school.grade.recorded\"\nversion = 2",
            "name = \"school.grade.recorded\"\nversion = 3",
        )
        .replace(
            "key = \"student_id\"\naggregate",
            "key = \"learner_id\"\naggregate",
        )
        .replace("grade_level = \"int\"", "grade_level = \"integer\"")
        .replace(
            "name = \"school.student.enrolled\"",
            "name = \"school.student.enroll\"",
        );
    std::fs::write(&school, text).unwrap();
    let out = edubus(&["catalog", "lint", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    // A bad type is a parse error of its file; the other problems come from the lint of the
    // remaining files, so fix the type and check that every lint problem is listed at once.
    assert!(
        report.contains("school.toml:") && report.contains("unknown type `integer`"),
        "{report}"
    );
    let text = std::fs::read_to_string(&school)
        .unwrap()
        .replace("\"integer\"", "\"int\"");
    std::fs::write(&school, text).unwrap();
    let report = stdout(&edubus(&["catalog", "lint", dir.path().to_str().unwrap()]));
    for expected in [
        "school.student.enroll` breaks the naming rules",
        "key `learner_id`",
        "not contiguous",
    ] {
        assert!(
            report.contains(expected),
            "missing `{expected}` in:\n{report}"
        );
    }
    assert!(
        report.lines().all(|l| l.contains("school.toml:")),
        "{report}"
    );
}

#[test]
fn export_writes_every_artifact_and_is_reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for dir in [a.path(), b.path()] {
        let out = edubus(&["catalog", "export", "--out", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for file in [
        "asyncapi.yaml",
        "docs/index.md",
        "docs/attendance.md",
        "schemas/attendance.marked.v1.json",
        "schemas/batch.nlp.initiate.command.v2.json",
    ] {
        let x = std::fs::read(a.path().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            x,
            std::fs::read(b.path().join(file)).unwrap(),
            "{file} differs between runs"
        );
    }
    let schemas = std::fs::read_dir(a.path().join("schemas")).unwrap().count();
    let list: Value =
        serde_json::from_str(&stdout(&edubus(&["catalog", "list", "--json"]))).unwrap();
    let versions: usize = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["versions"].as_array().unwrap().len())
        .sum();
    assert_eq!(schemas, versions);
}

#[test]
fn diff_fails_on_a_breaking_change_without_a_new_version() {
    let old = tempfile::tempdir().unwrap();
    let new = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), old.path());
    copy_dir(&fixture(), new.path());
    let same = edubus(&[
        "catalog",
        "diff",
        old.path().to_str().unwrap(),
        new.path().to_str().unwrap(),
    ]);
    assert!(same.status.success(), "{}", stdout(&same));

    let school = new.path().join("school.toml");
    let text = std::fs::read_to_string(&school).unwrap().replace(
        "verified = \"bool\"",
        "verified = \"bool\"\nhomeroom_id = \"uuid\"",
    );
    std::fs::write(&school, text).unwrap();
    let out = edubus(&[
        "catalog",
        "diff",
        old.path().to_str().unwrap(),
        new.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("homeroom_id"), "{}", stdout(&out));
}

#[test]
fn diff_reads_a_git_revision() {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    git(&["init", "-q"]);
    copy_dir(&fixture(), &repo.path().join("catalog"));
    git(&["add", "catalog"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "catalog",
    ]);
    let school = repo.path().join("catalog/school.toml");
    let text = std::fs::read_to_string(&school)
        .unwrap()
        .replace("verified = \"bool\"\n", "");
    std::fs::write(&school, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edubus"))
        .args(["catalog", "diff", "git:HEAD", "catalog"])
        .current_dir(repo.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("verified"), "{}", stdout(&out));
}

fn envelope(data: Value) -> Value {
    json!({
        "specversion": "1.0", "id": "0190b6a0-0000-7000-8000-000000000001", "source": "attendance-api",
        "type": "AttendanceMarked", "time": "2026-01-15T08:30:00Z", "datacontenttype": "application/json",
        "correlationid": "c-1", "data": data,
    })
}

fn attendance() -> Value {
    json!({
        "class_session_id": "0190b6a0-0000-7000-8000-000000000002",
        "student_id": "0190b6a0-0000-7000-8000-000000000003",
        "status": "absent", "marked_by": "0190b6a0-0000-7000-8000-000000000004",
        "marked_at": "2026-01-15T08:30:00Z",
    })
}

#[test]
fn envelope_validate_accepts_a_valid_event_and_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, envelope(attendance()).to_string()).unwrap();
    let out = edubus(&["envelope", "validate", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("attendance.marked.v1"),
        "{}",
        stdout(&out)
    );

    let mut data = attendance();
    data["student_id"] = json!("not-a-uuid");
    data["status"] = json!("asleep");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edubus"))
        .args(["envelope", "validate", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let body = serde_json::to_vec(&envelope(data)).unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &body).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pointers: Vec<_> = v[0]["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/data/status", "/data/student_id"]);
}

#[test]
fn envelope_validate_reports_malformed_json_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"id\": \"x\",\n  oops\n}").unwrap();
    let out = edubus(&["envelope", "validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.json:3:3"), "{}", stderr(&out));
}

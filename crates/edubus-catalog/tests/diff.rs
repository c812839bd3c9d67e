//! `catalog diff`: classification of every change under every compatibility mode, plus golden
//! text and JSON output. Set `EDUBUS_BLESS=1` to rewrite the golden files.

use std::path::PathBuf;

use edubus_catalog::diff::{self, Change, ChangeKind, Direction, Failure, Report, Verdict};
use edubus_catalog::{Catalog, Compatibility, parse};

const EVENT: &str = "school.grade.recorded";

/// One context file `catalog/school.toml` holding `events`.
fn catalog(events: &[String]) -> Catalog {
    catalog_files(&[("school", events.concat())])
}

/// Several context files, `(stem, events)`.
fn catalog_files(files: &[(&str, String)]) -> Catalog {
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(stem, events)| {
            let header = format!(
                "[context]\ntitle = \"{stem}\"\ndescription = \"Test context.\"\n\n{events}"
            );
            (format!("catalog/{stem}.toml"), header)
        })
        .collect();
    parse::load_sources(&sources).unwrap_or_else(|e| panic!("test catalog does not load: {e}"))
}

/// Version `version` of `school.grade.recorded` under `mode` with extra payload lines.
fn grade(version: u32, mode: Compatibility, payload: &str) -> String {
    format!(
        r#"
[[event]]
name = "{EVENT}"
version = {version}
summary = "A grade was recorded"
producer = "Gradebook"
consumers = []
key = "student_id"
compatibility = "{mode}"

[event.payload]
student_id = "uuid"
{payload}
"#
    )
}

/// `B`, `F`, `BF` for the failed directions, `-` when compatible.
fn code(failures: &[Failure]) -> String {
    let has = |d: Direction| failures.iter().any(|f| f.direction == d);
    match (has(Direction::Backward), has(Direction::Forward)) {
        (false, false) => "-".to_owned(),
        (b, f) => format!("{}{}", if b { "B" } else { "" }, if f { "F" } else { "" }),
    }
}

fn changes_of(report: &Report, kind: ChangeKind) -> Vec<&Change> {
    report.changes.iter().filter(|c| c.kind == kind).collect()
}

/// (case, payload before, payload after, the change kind it must produce).
const CASES: [(&str, &str, &str, ChangeKind); 6] = [
    (
        "removed required field",
        "score = \"int\"",
        "",
        ChangeKind::FieldRemoved,
    ),
    (
        "added required field",
        "",
        "score = \"int\"",
        ChangeKind::FieldAdded,
    ),
    (
        "added optional field",
        "",
        "score = \"int?\"",
        ChangeKind::FieldAdded,
    ),
    (
        "type change",
        "score = \"int\"",
        "score = \"string\"",
        ChangeKind::TypeChanged,
    ),
    (
        "enum value added",
        "status = { enum = [\"draft\", \"final\"] }",
        "status = { enum = [\"draft\", \"final\", \"revised\"] }",
        ChangeKind::EnumValuesAdded,
    ),
    (
        "enum value removed",
        "status = { enum = [\"draft\", \"final\", \"revised\"] }",
        "status = { enum = [\"draft\", \"final\"] }",
        ChangeKind::EnumValuesRemoved,
    ),
];

/// Expected failed directions per case, columns in `Compatibility::ALL` order:
/// BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE.
const EXPECTED: [(&str, [&str; 7]); 6] = [
    (
        "removed required field",
        ["-", "-", "F", "F", "F", "F", "-"],
    ),
    ("added required field", ["B", "B", "-", "-", "B", "B", "-"]),
    ("added optional field", ["-", "-", "-", "-", "-", "-", "-"]),
    ("type change", ["B", "B", "F", "F", "BF", "BF", "-"]),
    ("enum value added", ["-", "-", "F", "F", "F", "F", "-"]),
    ("enum value removed", ["B", "B", "-", "-", "B", "B", "-"]),
];

/// Classifies one case under one mode, in place (v1 edited) and as a new version (v2 added);
/// returns a description of every way the result differs from `want`.
fn check_case(case: usize, mode: Compatibility, want: &str) -> Vec<String> {
    let (name, before, after, kind) = CASES[case];
    let old = catalog(&[grade(1, mode, before)]);
    let in_place = diff::diff(&old, &catalog(&[grade(1, mode, after)]));
    let new_version = diff::diff(
        &old,
        &catalog(&[grade(1, mode, before), grade(2, mode, after)]),
    );
    let mut problems = Vec::new();
    for (scenario, report, fails) in [
        ("in place", &in_place, want != "-"),
        ("new version", &new_version, false),
    ] {
        let found = changes_of(report, kind);
        let got = found
            .first()
            .map_or("<no change>".to_owned(), |c| code(&c.failures));
        if found.len() != 1 || got != want || report.is_failure() != fails {
            problems.push(format!(
                "{name} / {mode} / {scenario}: want {want} (failure: {fails}), got {got} \
                 (failure: {}), report:\n{}",
                report.is_failure(),
                report.render_text()
            ));
        }
    }
    problems
}

#[test]
fn every_change_kind_is_classified_under_every_mode() {
    let mut problems = Vec::new();
    for (case, (name, row)) in EXPECTED.iter().enumerate() {
        assert_eq!(
            CASES[case].0, *name,
            "CASES and EXPECTED rows are out of step"
        );
        for (mode, want) in Compatibility::ALL.into_iter().zip(row) {
            problems.extend(check_case(case, mode, want));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn verdict_matches_failures_and_new_version_is_marked() {
    let old = catalog(&[grade(1, Compatibility::Full, "score = \"int\"")]);
    let new = catalog(&[
        grade(1, Compatibility::Full, "score = \"int\""),
        grade(2, Compatibility::Full, "score = \"string\""),
    ]);
    let report = diff::diff(&old, &new);
    for change in &report.changes {
        assert!(change.new_version, "{change:?}");
        assert_eq!(
            change.verdict == Verdict::Breaking,
            !change.failures.is_empty()
        );
    }
    let added = changes_of(&report, ChangeKind::VersionAdded);
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].verdict, Verdict::Breaking);
    assert!(!report.is_failure(), "{}", report.render_text());
}

/// v1 has a required int `score`, v2 drops it, v3 brings it back as an optional string:
/// compatible with v2, not with v1.
fn three_versions(mode: Compatibility, with_v3: bool, v3_score: bool) -> Catalog {
    let mut events = vec![grade(1, mode, "score = \"int\""), grade(2, mode, "")];
    if with_v3 {
        events.push(grade(
            3,
            mode,
            if v3_score { "score = \"string?\"" } else { "" },
        ));
    }
    catalog(&events)
}

#[test]
fn transitive_modes_check_every_earlier_version() {
    let back = |against| Failure {
        direction: Direction::Backward,
        against,
    };
    let fwd = |against| Failure {
        direction: Direction::Forward,
        against,
    };
    let cases = [
        (Compatibility::Backward, vec![]),
        (Compatibility::BackwardTransitive, vec![back(1)]),
        (Compatibility::Full, vec![]),
        (Compatibility::FullTransitive, vec![back(1), fwd(1)]),
    ];
    for (mode, want) in cases {
        // v3 as a new version: classified, never a failure.
        let report = diff::diff(
            &three_versions(mode, false, false),
            &three_versions(mode, true, true),
        );
        let added = changes_of(&report, ChangeKind::VersionAdded);
        assert_eq!(
            added[0].failures,
            want,
            "{mode} new v3:\n{}",
            report.render_text()
        );
        assert!(!report.is_failure(), "{mode}");
        // v3 edited in place to the same shape: breaking without a new version fails.
        let report = diff::diff(
            &three_versions(mode, true, false),
            &three_versions(mode, true, true),
        );
        let field = changes_of(&report, ChangeKind::FieldAdded);
        assert_eq!(
            field[0].failures,
            want,
            "{mode} in place:\n{}",
            report.render_text()
        );
        assert_eq!(report.is_failure(), !want.is_empty(), "{mode}");
    }
}

#[test]
fn in_place_change_is_checked_against_the_previous_version() {
    // v2 gains an optional string `score`: fine against v2's old shape, but BACKWARD requires
    // v2 readers to read v1 data, whose `score` is an int.
    let mode = Compatibility::Backward;
    let old = catalog(&[grade(1, mode, "score = \"int\""), grade(2, mode, "")]);
    let new = catalog(&[
        grade(1, mode, "score = \"int\""),
        grade(2, mode, "score = \"string?\""),
    ]);
    let report = diff::diff(&old, &new);
    let field = changes_of(&report, ChangeKind::FieldAdded);
    let want = [Failure {
        direction: Direction::Backward,
        against: 1,
    }];
    assert_eq!(field[0].failures, want, "{}", report.render_text());
    assert!(report.is_failure());
}

#[test]
fn new_version_with_breaking_change_is_not_a_failure() {
    let mode = Compatibility::FullTransitive;
    let old = catalog(&[grade(1, mode, "score = \"int\"")]);
    let new = catalog(&[
        grade(1, mode, "score = \"int\""),
        grade(2, mode, "score = \"string\""),
    ]);
    let report = diff::diff(&old, &new);
    let changed = changes_of(&report, ChangeKind::TypeChanged);
    assert_eq!(changed[0].version, 2);
    assert_eq!(changed[0].verdict, Verdict::Breaking);
    assert!(!report.is_failure(), "{}", report.render_text());
}

#[test]
fn in_place_breaking_change_is_a_failure() {
    let mode = Compatibility::FullTransitive;
    let old = catalog(&[grade(1, mode, "score = \"int\"")]);
    let new = catalog(&[grade(1, mode, "score = \"string\"")]);
    let report = diff::diff(&old, &new);
    let changed = changes_of(&report, ChangeKind::TypeChanged);
    assert_eq!(changed.len(), 1);
    assert!(changed[0].is_failure() && report.is_failure());
}

#[test]
fn removed_event_and_removed_version_are_failures() {
    let mode = Compatibility::None;
    let two = catalog(&[grade(1, mode, ""), grade(2, mode, "")]);
    let other = catalog_files(&[("school", enrolled(1, "student_id", "[]"))]);
    let report = diff::diff(&two, &other);
    assert_eq!(changes_of(&report, ChangeKind::EventRemoved).len(), 1);
    assert!(report.is_failure(), "{}", report.render_text());
    let report = diff::diff(&two, &catalog(&[grade(1, mode, "")]));
    assert_eq!(
        changes_of(&report, ChangeKind::VersionRemoved)[0].version,
        2
    );
    assert!(report.is_failure(), "{}", report.render_text());
}

#[test]
fn new_event_is_compatible() {
    let old = catalog(&[grade(1, Compatibility::FullTransitive, "")]);
    let mut events = vec![grade(1, Compatibility::FullTransitive, "")];
    events.push(enrolled(1, "student_id", "[]"));
    let report = diff::diff(&old, &catalog(&events));
    let added = changes_of(&report, ChangeKind::EventAdded);
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].verdict, Verdict::Compatible);
    assert!(!report.is_failure());
}

/// `school.student.enrolled` v1 with a key, a topic and aliases to vary.
fn enrolled(version: u32, key: &str, extra: &str) -> String {
    format!(
        r#"
[[event]]
name = "school.student.enrolled"
version = {version}
summary = "A student joined a class"
producer = "Enrollment API"
consumers = ["Roster sync"]
key = "{key}"
aliases = {extra}

[event.payload]
student_id = "uuid"
class_id = "uuid"
"#
    )
}

#[test]
fn key_change_is_a_failure_even_under_none() {
    let old = catalog(&[enrolled(1, "student_id", "[]")]);
    let new = catalog(&[enrolled(1, "class_id", "[]")]);
    let report = diff::diff(&old, &new);
    assert_eq!(changes_of(&report, ChangeKind::Key).len(), 1);
    assert!(report.is_failure(), "{}", report.render_text());
    let none = |text: String| text.replace("aliases", "compatibility = \"NONE\"\naliases");
    let old = catalog(&[none(enrolled(1, "student_id", "[]"))]);
    let report = diff::diff(&old, &catalog(&[none(enrolled(1, "class_id", "[]"))]));
    assert!(report.is_failure(), "{}", report.render_text());
}

#[test]
fn alias_removal_is_a_failure_and_alias_addition_is_not() {
    let old = catalog(&[enrolled(1, "student_id", "[\"StudentEnrolled\"]")]);
    let new = catalog(&[enrolled(1, "student_id", "[\"StudentJoined\"]")]);
    let report = diff::diff(&old, &new);
    let removed = changes_of(&report, ChangeKind::AliasRemoved);
    assert_eq!(removed[0].field.as_deref(), Some("StudentEnrolled"));
    assert!(report.is_failure());
    let report = diff::diff(
        &new,
        &catalog(&[enrolled(1, "student_id", "[\"StudentJoined\", \"X\"]")]),
    );
    assert_eq!(changes_of(&report, ChangeKind::AliasAdded).len(), 1);
    assert!(!report.is_failure(), "{}", report.render_text());
}

#[test]
fn topic_change_is_a_failure_and_summary_change_is_not() {
    let old = catalog(&[enrolled(1, "student_id", "[]")]);
    let moved =
        enrolled(1, "student_id", "[]").replace("aliases", "topic = \"school.v2\"\naliases");
    let report = diff::diff(&old, &catalog(&[moved]));
    assert_eq!(changes_of(&report, ChangeKind::Topic).len(), 1);
    assert!(report.is_failure(), "{}", report.render_text());
    let reworded = enrolled(1, "student_id", "[]").replace("joined a class", "enrolled");
    let report = diff::diff(&old, &catalog(&[reworded]));
    assert_eq!(
        changes_of(&report, ChangeKind::Metadata)[0]
            .field
            .as_deref(),
        Some("summary")
    );
    assert!(!report.is_failure(), "{}", report.render_text());
}

#[test]
fn identical_catalogs_have_no_changes() {
    let events = [
        grade(1, Compatibility::Full, "score = \"int\""),
        enrolled(1, "student_id", "[]"),
    ];
    let report = diff::diff(&catalog(&events), &catalog(&events));
    assert!(
        report.is_empty() && !report.is_failure(),
        "{}",
        report.render_text()
    );
}

// ---- golden output -------------------------------------------------------------------------

fn golden_old() -> Catalog {
    let mode = Compatibility::FullTransitive;
    let grades =
        grade(1, mode, GRADE_V1).replace("consumers", "aliases = [\"GradeRecorded\"]\nconsumers");
    catalog_files(&[(
        "school",
        [grades, enrolled_backward(""), cancelled()].concat(),
    )])
}

fn golden_new() -> Catalog {
    let mode = Compatibility::FullTransitive;
    let v1 = grade(
        1,
        mode,
        &GRADE_V1.replace("\"final\"]", "\"final\", \"revised\"]"),
    )
    .replace("A grade was recorded", "A grade was recorded for a student")
    .replace(
        "comment = \"string?\"",
        "comment = { type = \"string\", optional = true, pii = true }",
    );
    let v2 = grade(2, mode, GRADE_V2);
    let calendar = "\n[[event]]\nname = \"calendar.term.started\"\nversion = 1\nsummary = \"A term \
                    started\"\nproducer = \"Calendar\"\nconsumers = []\nkey = \"term_id\"\n\n\
                    [event.payload]\nterm_id = \"uuid\"\n";
    let moved = enrolled_backward("notes = \"string?\"\n")
        .replace("consumers", "topic = \"school.enrollment\"\nconsumers");
    catalog_files(&[
        ("calendar", calendar.to_owned()),
        ("school", [v1, v2, moved].concat()),
    ])
}

const GRADE_V1: &str =
    "score = \"int\"\nstatus = { enum = [\"draft\", \"final\"] }\ncomment = \"string?\"\n";
const GRADE_V2: &str = "score = \"decimal\"\nweight = \"decimal\"\nstatus = { enum = [\"draft\", \"final\", \"revised\"] }\ncomment = \"string?\"\n";

fn enrolled_backward(extra_payload: &str) -> String {
    enrolled(1, "student_id", "[]").replace("aliases", "compatibility = \"BACKWARD\"\naliases")
        + extra_payload
}

fn cancelled() -> String {
    "\n[[event]]\nname = \"school.class.cancelled\"\nversion = 1\nsummary = \"A class was \
     cancelled\"\nproducer = \"Scheduler\"\nconsumers = []\nkey = \"class_id\"\n\n\
     [event.payload]\nclass_id = \"uuid\"\n"
        .to_owned()
}

#[test]
fn render_text_matches_golden() {
    let report = diff::diff(&golden_old(), &golden_new());
    assert_golden("report.txt", &report.render_text());
}

#[test]
fn json_matches_golden() {
    let report = diff::diff(&golden_old(), &golden_new());
    let json = serde_json::to_string_pretty(&report).expect("a report serializes") + "\n";
    assert_golden("report.json", &json);
}

#[test]
fn report_order_is_event_version_field() {
    let report = diff::diff(&golden_old(), &golden_new());
    let keys: Vec<_> = report
        .changes
        .iter()
        .map(|c| (c.event.clone(), c.version, c.field.clone(), c.kind))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

/// Compares `actual` with `tests/golden/diff/<name>`; `EDUBUS_BLESS=1` rewrites the file.
fn assert_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/diff")
        .join(name);
    if std::env::var_os("EDUBUS_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("create golden dir");
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run with EDUBUS_BLESS=1 to create it",
            path.display()
        )
    });
    if let Some(diff) = first_difference(&expected, actual) {
        panic!(
            "{} differs from the output (EDUBUS_BLESS=1 rewrites it)\n{diff}",
            path.display()
        );
    }
}

/// The first differing line of two texts, or `None` when they are equal.
fn first_difference(expected: &str, actual: &str) -> Option<String> {
    if expected == actual {
        return None;
    }
    let (want, got): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    let line = (0..want.len().max(got.len()))
        .find(|&i| want.get(i) != got.get(i))
        .unwrap_or(want.len().min(got.len()));
    let show = |lines: &[&str]| {
        lines
            .get(line)
            .map_or("<end of file>".to_owned(), |l| format!("{l:?}"))
    };
    Some(format!(
        "first difference at line {}:\n  expected: {}\n  actual:   {}\n(expected {} lines, got {})",
        line + 1,
        show(&want),
        show(&got),
        want.len(),
        got.len()
    ))
}

#[test]
fn enum_to_string_reads_backward_only_and_list_enums_are_compared_by_value() {
    let check = |before: &str, after: &str, kind: ChangeKind| {
        let mode = Compatibility::Full;
        let report = diff::diff(
            &catalog(&[grade(1, mode, before)]),
            &catalog(&[grade(1, mode, after)]),
        );
        changes_of(&report, kind).first().map(|c| code(&c.failures))
    };
    let status = "status = { enum = [\"draft\", \"final\"] }";
    let as_string = check(status, "status = \"string\"", ChangeKind::TypeChanged);
    assert_eq!(as_string.as_deref(), Some("F"));
    let list = "tags = { enum = [\"a\"], list = true }";
    let longer = "tags = { enum = [\"a\", \"b\"], list = true }";
    assert_eq!(
        check(list, longer, ChangeKind::EnumValuesAdded).as_deref(),
        Some("F")
    );
    assert_eq!(
        check(longer, list, ChangeKind::EnumValuesRemoved).as_deref(),
        Some("B")
    );
}

#[test]
fn in_place_change_is_checked_against_the_next_version() {
    // v1 gains an optional string `score`; v2 readers, whose `score` is an int, read v1 data.
    let mode = Compatibility::Backward;
    let v2 = grade(2, mode, "score = \"int?\"");
    let old = catalog(&[grade(1, mode, ""), v2.clone()]);
    let new = catalog(&[grade(1, mode, "score = \"string?\""), v2]);
    let report = diff::diff(&old, &new);
    let field = changes_of(&report, ChangeKind::FieldAdded);
    let want = [Failure {
        direction: Direction::Backward,
        against: 2,
    }];
    assert_eq!(field[0].failures, want, "{}", report.render_text());
    assert!(report.is_failure());
}

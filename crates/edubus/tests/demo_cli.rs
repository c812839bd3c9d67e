//! `edubus demo`, run as a user runs it: the simulated school on a temporary data directory
//! (and once on PostgreSQL and Redis), its summary checked against what the store holds, read
//! back with other commands of the binary.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The flow subscriptions every demo runs.
const FLOWS: [&str; 8] = [
    "enrollment-provisioning",
    "comms-notifications",
    "attendance-threshold",
    "grading-averages",
    "course-access",
    "essay-lifecycle",
    "batch-orchestrator",
    "spellchecker",
];

/// The binary in `dir` on the embedded deployment of `dir/data`, with no configuration.
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edubus"));
    cmd.current_dir(dir)
        .arg("--data")
        .arg(dir.join("data"))
        .args(args)
        .env_remove("EDUBUS_DATA")
        .env_remove("EDUBUS_CATALOG")
        .env_remove("EDUBUS_CONFIG")
        .env_remove("EDUBUS_POSTGRES_URL")
        .env_remove("EDUBUS_REDIS_URL")
        .env_remove("EDUBUS_TOKEN")
        .env_remove("EDUBUS_LISTEN")
        .stdin(Stdio::null());
    cmd
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "exit {:?}: {err}\n{out}", o.status);
    out
}

/// Runs the demo to its summary and returns it.
fn demo(cmd: &mut Command, args: &[&str]) -> Value {
    let out = ok(cmd
        .args(["demo", "--listen", "127.0.0.1:0", "--exit", "--json"])
        .args(args)
        .output()
        .expect("run edubus demo"));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("the summary is not one JSON object ({e}): {out}"))
}

/// Stored events per type, counted from `edubus tail --json` over the whole log.
fn stored_per_type(cmd: &mut Command) -> (BTreeMap<String, u64>, u64) {
    let out = ok(cmd
        .args(["tail", "--json", "--from", "0", "--limit", "100000000"])
        .output()
        .expect("run edubus tail"));
    let mut per_type = BTreeMap::new();
    let mut by_school = 0;
    for line in out.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        *per_type
            .entry(event["type"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        by_school += u64::from(event["source"] == "edubus-demo");
    }
    (per_type, by_school)
}

fn dead_letters(cmd: &mut Command) -> Vec<Value> {
    let out = ok(cmd
        .args(["dlq", "list", "--json"])
        .output()
        .expect("run edubus dlq"));
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

/// The summary's per-type `stored` counts.
fn summary_per_type(summary: &Value) -> BTreeMap<String, u64> {
    summary["events"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(ty, c)| (ty.clone(), c["stored"].as_u64().unwrap()))
        .collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Checks what every run must show: the summary's counts are the store's, every flow ran and
/// nothing is lost.
fn check_against_store(summary: &Value, stored: &BTreeMap<String, u64>, by_school: u64) {
    assert_eq!(
        &summary_per_type(summary),
        stored,
        "events per type, summary against store"
    );
    assert_eq!(n(&summary["published"]), by_school);
    let total: u64 = stored.values().sum();
    assert_eq!(n(&summary["published"]) + n(&summary["caused"]), total);
    for sub in FLOWS {
        assert!(
            n(&summary["subscriptions"][sub]["handled"]) > 0,
            "{sub} handled nothing: {summary}"
        );
    }
    // Each of these types has exactly one flow subscription reading it.
    for (ty, sub) in [
        ("attendance.marked", "attendance-threshold"),
        ("grading.updated", "grading-averages"),
    ] {
        let s = &summary["subscriptions"][sub];
        assert_eq!(
            n(&s["handled"]) + n(&s["dead_lettered"]),
            stored[ty],
            "{sub} against {ty}"
        );
    }
    assert_eq!(n(&summary["lost"]), 0, "{summary}");
    assert_eq!(
        n(&summary["threshold_breaches"]),
        stored
            .get("attendance.threshold_breached")
            .copied()
            .unwrap_or(0)
    );
    assert!(n(&summary["latency"]["samples"]) > 0);
    assert!(
        summary["latency"]["p99_ms"].as_f64().unwrap()
            >= summary["latency"]["p50_ms"].as_f64().unwrap()
    );
}

#[test]
fn a_term_of_500_students_runs_every_flow_and_its_summary_matches_the_store() {
    let dir = TempDir::new().unwrap();
    let summary = demo(
        &mut command(dir.path(), &[]),
        &["--students", "500", "--days", "30"],
    );
    let (stored, by_school) = stored_per_type(&mut command(dir.path(), &[]));
    check_against_store(&summary, &stored, by_school);
    assert_eq!(n(&summary["provisioned_students"]), 500);
    assert_eq!(stored["enrollment.provisioned"], 500);
    assert_eq!(stored["attendance.marked"], 500 * 30);
    assert!(n(&summary["threshold_breaches"]) > 0, "{summary}");
    assert_eq!(n(&summary["dlq_depth"]), 0);
    assert_eq!(n(&summary["dead_lettered"]), 0);
    assert_eq!(n(&summary["retries"]), 0);
    assert!(dead_letters(&mut command(dir.path(), &[])).is_empty());
    assert!(summary.get("faults").is_none());
    let look = &summary["look"];
    let student = look["student_id"].as_str().unwrap();
    assert!(
        look["urls"][0]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/flows/students/{student}")),
        "{look}"
    );
    let trace = ok(command(
        dir.path(),
        &["trace", look["correlation_id"].as_str().unwrap()],
    )
    .output()
    .unwrap());
    for step in [
        "enrollment.submitted",
        "enrollment.approved",
        "enrollment.provisioned",
    ] {
        assert!(
            trace.contains(step),
            "the enrollment's trace lacks {step}:\n{trace}"
        );
    }
}

#[test]
fn faults_dead_letter_exactly_the_injected_failures_retry_the_rest_and_lose_nothing() {
    let dir = TempDir::new().unwrap();
    let summary = demo(
        &mut command(dir.path(), &[]),
        &["--students", "150", "--days", "12", "--faults"],
    );
    let (stored, by_school) = stored_per_type(&mut command(dir.path(), &[]));
    check_against_store(&summary, &stored, by_school);
    let faults = &summary["faults"];
    let injected = n(&faults["injected_permanent"]);
    assert!(injected > 0, "{summary}");
    assert_eq!(n(&faults["dead_lettered_injected"]), injected);
    assert_eq!(n(&faults["dead_lettered_other"]), 0, "{summary}");
    assert_eq!(n(&summary["dead_lettered"]), injected);
    assert_eq!(n(&summary["dlq_depth"]), injected);
    let letters = dead_letters(&mut command(dir.path(), &[]));
    assert_eq!(
        letters.len() as u64,
        injected,
        "dlq list against the summary"
    );
    for letter in &letters {
        let text = letter.to_string();
        assert!(
            text.contains("injected fault") && text.contains("always fails"),
            "{letter}"
        );
    }
    assert!(n(&summary["retries"]) > 0, "{summary}");
    let crash = &faults["crash"];
    assert!(
        crash["crashed"].is_string() && crash["crashed"] != crash["successor"],
        "{crash}"
    );
    assert_eq!(n(&crash["after_day"]), 6);
}

#[test]
fn a_busy_port_fails_with_a_hint_to_use_listen() {
    let dir = TempDir::new().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = command(
        dir.path(),
        &[
            "demo",
            "--students",
            "5",
            "--days",
            "1",
            "--exit",
            "--listen",
            &addr,
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("--listen"), "{err}");
}

#[test]
fn without_exit_the_demo_keeps_serving_until_sigterm() {
    let dir = TempDir::new().unwrap();
    let mut child = command(
        dir.path(),
        &[
            "demo",
            "--students",
            "20",
            "--days",
            "3",
            "--listen",
            "127.0.0.1:0",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut health = None;
    while let Some(Ok(line)) = lines.next() {
        if health.is_none() && line.trim_start().ends_with("/health/events") {
            health = Some(line.trim().to_owned());
        }
        if line.starts_with("serving at") {
            break;
        }
    }
    let health = health.expect("the demo names its health URL");
    let addr = health
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_owned();
    let (status, body) = edubus_testsupport::http_get(&addr, "/health/events");
    assert_eq!(status, 200, "{body}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_demo_runs_on_postgres_and_redis_when_configured() {
    let dir = TempDir::new().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let schema = runtime.block_on(edubus_testsupport::postgres().schema("demo_cli"));
    let prefix = edubus_testsupport::unique_prefix("demo_cli");
    let redis = edubus_testsupport::redis().url();
    let production = |args: &[&str]| {
        let mut cmd = command(dir.path(), args);
        cmd.env("EDUBUS_POSTGRES_URL", schema.url())
            .env("EDUBUS_REDIS_URL", &redis)
            .env("EDUBUS_REDIS_PREFIX", &prefix);
        cmd
    };
    let summary = demo(&mut production(&[]), &["--students", "40", "--days", "5"]);
    assert!(
        summary["deployment"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL"),
        "{summary}"
    );
    let (stored, by_school) = stored_per_type(&mut production(&[]));
    check_against_store(&summary, &stored, by_school);
    assert_eq!(n(&summary["provisioned_students"]), 40);
    let letters: Vec<String> = dead_letters(&mut production(&[]))
        .iter()
        .map(|l| format!("{} {}: {}", l["subscription"], l["event_type"], l["error"]))
        .collect();
    assert_eq!(
        n(&summary["dlq_depth"]),
        0,
        "dead letters without injected faults:\n{}",
        letters.join("\n")
    );
    assert!(
        !dir.path().join("data").exists(),
        "no embedded data is created"
    );
}

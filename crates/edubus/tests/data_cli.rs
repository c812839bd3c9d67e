//! The data commands (`publish`, `tail`, `trace`, `dlq`, `replay`, `serve`, `bench`), run as a
//! user runs them against a temporary `--data` directory. Workers that produce delivery
//! states and dead letters run in the test process on the same SQLite file.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use edubus_core::{StartFrom, SubscriptionStats, Transport};
use edubus_events::{AttendanceMarked, AttendanceThresholdBreached};
use edubus_runtime::{Bus, HandlerError, RetryPolicy, SubscriptionOptions, Worker};
use edubus_sqlite::{SqliteBackend, SqliteConfig};
use serde_json::Value;
use tempfile::TempDir;

const STUDENT: &str = "0190f0a0-0000-7000-8000-000000000001";
const OTHER_STUDENT: &str = "0190f0a0-0000-7000-8000-000000000002";

fn edubus(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().expect("run edubus")
}

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edubus"));
    cmd.arg("--data")
        .arg(dir)
        .args(args)
        .env_remove("EDUBUS_DATA")
        .env_remove("EDUBUS_CATALOG")
        .env_remove("EDUBUS_CONFIG")
        .env_remove("EDUBUS_POSTGRES_URL")
        .env_remove("EDUBUS_REDIS_URL")
        .env("EDUBUS_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    cmd
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(&o));
    stdout(&o)
}

fn json(o: Output) -> Value {
    let out = ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn json_lines(o: Output) -> Vec<Value> {
    ok(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn marked(student: &str) -> String {
    format!(
        r#"{{"class_session_id":"{STUDENT}","student_id":"{student}","status":"absent",
            "marked_by":"{STUDENT}","marked_at":"2025-09-01T08:00:00Z"}}"#
    )
}

fn breached(student: &str) -> String {
    format!(
        r#"{{"student_id":"{student}","days_absent":10,"threshold":10,
            "first_absent_at":"2025-09-01T08:00:00Z","last_absent_at":"2025-09-15T08:00:00Z"}}"#
    )
}

/// Publishes through the CLI and returns `(id, position)`.
fn publish(dir: &Path, ty: &str, data: &str, extra: &[&str]) -> (String, u64) {
    let mut args = vec!["publish", ty, "--data", data, "--json"];
    args.extend_from_slice(extra);
    let v = json(edubus(dir, &args));
    (
        v["id"].as_str().unwrap().to_owned(),
        v["position"].as_u64().unwrap(),
    )
}

fn tail_json(dir: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["tail", "--json"];
    all.extend_from_slice(args);
    json_lines(edubus(dir, &all))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn open(dir: &Path) -> (SqliteBackend, Bus<SqliteBackend>) {
    let backend = SqliteBackend::open(SqliteConfig::in_dir(dir))
        .await
        .unwrap();
    let bus = Bus::new(backend.clone(), edubus_events::catalog(), "test").unwrap();
    (backend, bus)
}

/// Runs `worker` until `done` holds for the subscription stats, then stops it.
async fn run_until(
    worker: Worker<SqliteBackend>,
    backend: &SqliteBackend,
    done: impl Fn(&[SubscriptionStats]) -> bool,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(worker.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = backend.stats().await.unwrap();
        if done(&stats) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// The subscription holds partitions and has settled everything it receives.
fn settled(stats: &[SubscriptionStats], name: &str) -> bool {
    stats
        .iter()
        .any(|s| s.subscription == name && s.leased_partitions > 0 && s.lag == 0 && s.pending == 0)
}

fn quick_retries() -> SubscriptionOptions {
    let retry =
        RetryPolicy::attempts(2).with_backoff(Duration::from_millis(1), Duration::from_millis(2));
    SubscriptionOptions::default().with_retry(retry)
}

#[test]
fn publish_prints_id_and_position_and_tail_shows_the_events() {
    let dir = TempDir::new().unwrap();
    let out = ok(edubus(
        dir.path(),
        &["publish", "AttendanceMarked", "--data", &marked(STUDENT)],
    ));
    assert!(out.contains("published attendance.marked "), "{out}");
    assert!(out.contains("position 1"), "{out}");
    let file = dir.path().join("event.json");
    std::fs::write(&file, marked(OTHER_STUDENT)).unwrap();
    let at_file = format!("@{}", file.display());
    let (id2, pos2) = publish(
        dir.path(),
        "attendance.marked",
        &at_file,
        &["--actor", "teacher-7"],
    );
    assert_eq!(pos2, 2);
    let (_, pos3) = publish(
        dir.path(),
        "attendance.threshold_breached",
        &breached(STUDENT),
        &[],
    );
    assert_eq!(pos3, 3);

    let all = tail_json(dir.path(), &[]);
    assert_eq!(all.len(), 3);
    assert_eq!(all[1]["position"], 2);
    assert_eq!(all[1]["id"], id2.as_str());
    assert_eq!(all[1]["actorid"], "teacher-7");
    assert_eq!(
        all[1]["partitionkey"], OTHER_STUDENT,
        "key from the payload"
    );
    assert_eq!(all[0]["data"]["status"], "absent");

    let text = ok(edubus(dir.path(), &["tail"]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("POSITION") && lines[0].contains("CORRELATION"),
        "{text}"
    );
    assert!(
        lines[2].contains(&id2) && lines[2].contains("attendance.marked"),
        "{text}"
    );
    assert!(lines[2].contains(OTHER_STUDENT), "{text}");
}

#[test]
fn tail_filters_by_type_key_position_and_limit() {
    let dir = TempDir::new().unwrap();
    publish(dir.path(), "attendance.marked", &marked(STUDENT), &[]);
    publish(dir.path(), "attendance.marked", &marked(OTHER_STUDENT), &[]);
    publish(
        dir.path(),
        "attendance.threshold_breached",
        &breached(STUDENT),
        &["--key", "k-9"],
    );
    let positions = |args: &[&str]| -> Vec<u64> {
        tail_json(dir.path(), args)
            .iter()
            .map(|v| v["position"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(positions(&["--type", "AttendanceMarked"]), [1, 2]);
    assert_eq!(positions(&["--key", OTHER_STUDENT]), [2]);
    assert_eq!(positions(&["--key", "k-9"]), [3]);
    assert_eq!(positions(&["--from", "2"]), [2, 3]);
    assert_eq!(positions(&["--from", "1", "--limit", "1"]), [1]);
    assert_eq!(positions(&["--limit", "2"]), [2, 3], "the last two");
    let unknown = edubus(dir.path(), &["tail", "--type", "attendance.markd"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("did you mean"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn rejected_publishes_exit_non_zero_and_append_nothing() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let unknown = edubus(&data, &["publish", "attendance.markd", "--data", "{}"]);
    assert_eq!(unknown.status.code(), Some(2));
    let err = stderr(&unknown);
    assert!(err.contains("unknown event `attendance.markd`"), "{err}");
    assert!(err.contains("attendance.marked"), "{err}");

    let malformed = edubus(
        &data,
        &[
            "publish",
            "AttendanceMarked",
            "--data",
            "{\"status\":\n  absent}",
        ],
    );
    assert_eq!(malformed.status.code(), Some(1));
    assert!(
        stderr(&malformed).contains("--data:2:3: not valid JSON"),
        "{}",
        stderr(&malformed)
    );

    let bad = r#"{"class_session_id":"nope","student_id":"0190f0a0-0000-7000-8000-000000000001",
        "status":"maybe","marked_by":"0190f0a0-0000-7000-8000-000000000001"}"#;
    let invalid = edubus(&data, &["publish", "AttendanceMarked", "--data", bad]);
    assert_eq!(invalid.status.code(), Some(1));
    let err = stderr(&invalid);
    for (pointer, reason) in [
        ("/data/class_session_id", "uuid"),
        ("/data/status", "expected one of"),
        ("/data/marked_at", "required"),
    ] {
        let line = err.lines().find(|l| l.trim_start().starts_with(pointer));
        assert!(line.is_some_and(|l| l.contains(reason)), "{pointer}: {err}");
    }
    let orphan = edubus(
        &data,
        &[
            "publish",
            "attendance.threshold_breached",
            "--data",
            &breached(STUDENT),
            "--causation-id",
            "no-such-event",
        ],
    );
    assert_eq!(orphan.status.code(), Some(2));
    assert!(
        stderr(&orphan).contains("`no-such-event` is not in the log"),
        "{}",
        stderr(&orphan)
    );
    assert!(
        !data.exists(),
        "a rejected publish creates no data directory"
    );
    assert!(tail_json(&data, &["--from", "1"]).is_empty());
}

#[test]
fn tail_follow_prints_new_events_until_interrupted() {
    let dir = TempDir::new().unwrap();
    publish(dir.path(), "attendance.marked", &marked(STUDENT), &[]);
    let mut child = command(dir.path(), &["tail", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_reader(&mut child);
    let first: Value =
        serde_json::from_str(&lines.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap();
    assert_eq!(first["position"], 1);
    let (id, _) = publish(dir.path(), "attendance.marked", &marked(OTHER_STUDENT), &[]);
    let next: Value =
        serde_json::from_str(&lines.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap();
    assert_eq!(next["id"], id.as_str());
    assert_eq!(terminate(child), Some(0));
}

/// Sends each line the child prints to a channel.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// SIGTERM, then the exit code (within 30 s).
fn terminate(mut child: Child) -> Option<i32> {
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("edubus did not stop within 30 s of SIGTERM");
}

#[test]
fn trace_shows_the_causation_tree_and_what_each_subscription_did() {
    let dir = TempDir::new().unwrap();
    let (root, _) = publish(dir.path(), "attendance.marked", &marked(STUDENT), &[]);
    let (child, _) = publish(
        dir.path(),
        "attendance.threshold_breached",
        &breached(STUDENT),
        &["--causation-id", &root],
    );
    publish(dir.path(), "attendance.marked", &marked(OTHER_STUDENT), &[]);
    runtime().block_on(async {
        let (backend, bus) = open(dir.path()).await;
        let worker = Worker::builder(bus)
            .subscription("audit", SubscriptionOptions::default())
            .on::<AttendanceMarked, _, _>(|_, _| async { Ok(()) })
            .subscription("escalation", quick_retries())
            .on::<AttendanceThresholdBreached, _, _>(|_, _| async {
                Err(HandlerError::permanent("no guardian contact on file"))
            })
            .build()
            .unwrap();
        run_until(worker, &backend, |s| {
            settled(s, "audit")
                && s.iter()
                    .any(|s| s.subscription == "escalation" && s.dlq_depth == 1)
        })
        .await;
        backend.close().await;
    });

    let text = ok(edubus(dir.path(), &["trace", &root]));
    assert!(
        text.starts_with(&format!("correlation {root}: 2 event(s), 1 root(s)")),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1].starts_with("#1 ") && lines[1].contains(&root),
        "{text}"
    );
    assert!(lines[2].contains("· audit: handled"), "{text}");
    assert!(
        lines[3].starts_with("└─ #2 ") && lines[3].contains(&child),
        "{text}"
    );
    assert!(
        lines[4].contains("· escalation: dead-lettered (DLQ #"),
        "{text}"
    );
    assert!(
        !text.contains("not_subscribed") && !text.contains("escalation: handled"),
        "{text}"
    );

    let tree = json(edubus(dir.path(), &["trace", &root, "--json"]));
    assert_eq!(tree["events"], 2);
    let node = &tree["roots"][0];
    assert_eq!(node["type"], "attendance.marked");
    let caused = &node["caused"][0];
    assert_eq!(caused["id"], child.as_str());
    assert_eq!(caused["causation_id"], root.as_str());
    let state = |n: &Value, sub: &str| {
        n["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subscription"] == sub)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(node, "audit"), "handled");
    assert_eq!(state(node, "escalation"), "not_subscribed");
    assert_eq!(state(caused, "escalation"), "dead_lettered");

    let unknown = edubus(dir.path(), &["trace", "no-such-correlation"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn dlq_list_show_replay_and_purge() {
    let dir = TempDir::new().unwrap();
    let (first, _) = publish(dir.path(), "attendance.marked", &marked(STUDENT), &[]);
    publish(dir.path(), "attendance.marked", &marked(OTHER_STUDENT), &[]);
    runtime().block_on(async {
        let (backend, bus) = open(dir.path()).await;
        let worker = Worker::builder(bus)
            .subscription("notify", quick_retries())
            .on::<AttendanceMarked, _, _>(|_, _| async {
                Err(HandlerError::transient("smtp down"))
            })
            .build()
            .unwrap();
        run_until(worker, &backend, |s| s.iter().any(|s| s.dlq_depth == 2)).await;
        backend.close().await;
    });

    let list = json(edubus(dir.path(), &["dlq", "list", "--json"]));
    let entries = list.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e["subscription"] == "notify"));
    let entry = entries.iter().find(|e| e["event_id"] == first.as_str());
    let id = entry.unwrap()["id"].as_u64().unwrap().to_string();
    let text = ok(edubus(dir.path(), &["dlq", "list"]));
    assert!(
        text.contains("2 dead letter(s)") && text.contains("smtp down"),
        "{text}"
    );

    let shown = json(edubus(dir.path(), &["dlq", "show", &id, "--json"]));
    assert_eq!(shown["error"], "smtp down");
    assert_eq!(shown["handler"], "notify/attendance.marked.v1");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(shown["envelope"]["id"], first.as_str());
    let text = ok(edubus(dir.path(), &["dlq", "show", &id]));
    for part in [
        "handler:   notify/attendance.marked.v1",
        "origin:    stream attendance.marked",
        "  #2 ",
        "\"specversion\": \"1.0\"",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert_eq!(
        edubus(dir.path(), &["dlq", "show", "999"]).status.code(),
        Some(2)
    );
    assert_eq!(
        edubus(dir.path(), &["dlq", "list", "--subscription", "nope"])
            .status
            .code(),
        Some(2)
    );

    let replayed = ok(edubus(dir.path(), &["dlq", "replay", &id]));
    assert!(
        replayed.contains("replayed 1 of 1 dead letter(s)"),
        "{replayed}"
    );
    runtime().block_on(async {
        let (backend, bus) = open(dir.path()).await;
        let replays = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = std::sync::Arc::clone(&replays);
        let worker = Worker::builder(bus)
            .subscription("notify", quick_retries())
            .on::<AttendanceMarked, _, _>(move |_, ctx| {
                let seen = std::sync::Arc::clone(&seen);
                async move {
                    assert!(ctx.is_replay() && ctx.envelope().replay == Some(true));
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                }
            })
            .build()
            .unwrap();
        run_until(worker, &backend, |s| settled(s, "notify")).await;
        assert_eq!(replays.load(std::sync::atomic::Ordering::SeqCst), 1);
        backend.close().await;
    });

    let purged = json(edubus(
        dir.path(),
        &[
            "dlq",
            "purge",
            "--all",
            "--subscription",
            "notify",
            "--yes",
            "--json",
        ],
    ));
    assert_eq!(purged["count"], 2);
    assert_eq!(
        json(edubus(dir.path(), &["dlq", "list", "--json"])),
        Value::Array(Vec::new())
    );
}

#[test]
fn replay_queues_settled_events_for_one_subscription() {
    let dir = TempDir::new().unwrap();
    for student in [STUDENT, OTHER_STUDENT, STUDENT] {
        publish(dir.path(), "attendance.marked", &marked(student), &[]);
    }
    runtime().block_on(async {
        let (backend, bus) = open(dir.path()).await;
        let options = SubscriptionOptions::default().with_start(StartFrom::Beginning);
        let worker = Worker::builder(bus)
            .subscription("reports", options)
            .on::<AttendanceMarked, _, _>(|_, _| async { Ok(()) })
            .build()
            .unwrap();
        run_until(worker, &backend, |s| settled(s, "reports")).await;
        backend.close().await;
    });
    let queued = |from: &str| {
        json(edubus(
            dir.path(),
            &[
                "replay",
                "--subscription",
                "reports",
                "--from",
                from,
                "--json",
            ],
        ))["queued"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(queued("2"), 2);
    assert_eq!(queued("2000-01-01T00:00:00Z"), 3);
    let text = ok(edubus(
        dir.path(),
        &["replay", "--subscription", "reports", "--from", "1"],
    ));
    assert!(
        text.contains("queued 3 event(s) for redelivery to reports"),
        "{text}"
    );
    let unknown = edubus(
        dir.path(),
        &["replay", "--subscription", "nope", "--from", "1"],
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("subscriptions: reports"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn serve_starts_and_exits_0_on_sigterm() {
    let dir = TempDir::new().unwrap();
    let mut child = command(dir.path(), &["serve", "--retention", "7d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_reader(&mut child);
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|l: &String| l.starts_with("ready")) {
        seen.push(
            lines
                .recv_timeout(Duration::from_secs(30))
                .expect("serve prints `ready`"),
        );
    }
    let banner = seen.join("\n");
    assert!(
        banner.contains("edubus-data") || banner.contains("edubus.db"),
        "{banner}"
    );
    assert!(
        banner.contains("retention: trim entries older than 7d"),
        "{banner}"
    );
    assert_eq!(terminate(child), Some(0));
    let rest: Vec<String> = lines.iter().collect();
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
    assert!(dir.path().join("edubus.db").exists());
}

#[test]
fn bench_emits_the_documented_json_keys() {
    let dir = TempDir::new().unwrap();
    for mode in ["publish", "e2e"] {
        let out = json(edubus(
            dir.path(),
            &["bench", "--events", "2000", "--mode", mode, "--json"],
        ));
        for key in ["events_per_s", "seconds", "p50_ms", "p99_ms", "max_ms"] {
            assert!(out[key].as_f64().is_some(), "{mode} {key}: {out}");
        }
        assert_eq!(out["events"], 2000, "{out}");
        assert_eq!(out["mode"], mode);
        assert_eq!(out["backend"], "sqlite");
    }
    assert!(
        !dir.path().join("edubus.db").exists(),
        "bench uses a temporary directory"
    );
}

#[test]
fn bench_leaves_the_warmup_out_of_its_figures() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().to_str().unwrap();
    let run = |mode: &str| {
        let args = [
            "bench", "--mode", mode, "--data", data, "--events", "300", "--warmup", "200",
            "--batch", "50", "--json",
        ];
        json(edubus(dir.path(), &args))
    };
    let e2e = run("e2e");
    assert_eq!((&e2e["events"], &e2e["warmup"]), (&300.into(), &200.into()));
    assert_eq!(
        e2e["deliveries"], 300,
        "the warm-up's are not counted: {e2e}"
    );
    let publish = run("publish");
    assert_eq!(publish["warmup"], 200, "{publish}");
    let stored = json_lines(edubus(dir.path(), &["tail", "--from", "0", "--json"]));
    assert_eq!(stored.len(), 1000, "both runs published warm-up and events");

    let relay = edubus(dir.path(), &["bench", "--mode", "relay", "--warmup", "5"]);
    assert!(!relay.status.success());
    assert!(String::from_utf8_lossy(&relay.stderr).contains("--warmup applies to"));
}

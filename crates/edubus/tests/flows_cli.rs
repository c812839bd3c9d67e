//! `edubus serve` running the reference flows and `edubus flows` reading their read models and
//! approving enrollments, run as a user runs them: on a temporary embedded `--data` directory,
//! and on the production deployment (PostgreSQL + Redis started by `edubus-testsupport`).

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

const APPLICATION: &str = "0190f0a0-0000-7000-8000-0000000000a1";
const TEMP_ID: &str = "0190f0a0-0000-7000-8000-0000000000b1";
const GUARDIAN: &str = "0190f0a0-0000-7000-8000-0000000000c1";
const STAFF: &str = "0190f0a0-0000-7000-8000-0000000000d1";

/// Where the commands run: an embedded data directory or a production deployment.
enum Deployment {
    Embedded(TempDir),
    Production {
        pg_url: String,
        redis_url: String,
        prefix: String,
        cwd: TempDir,
    },
}

impl Deployment {
    fn embedded() -> Self {
        Self::Embedded(TempDir::new().unwrap())
    }

    fn production(test: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let schema = runtime.block_on(edubus_testsupport::postgres().schema(test));
        Self::Production {
            pg_url: schema.url().to_owned(),
            redis_url: edubus_testsupport::redis().url(),
            prefix: edubus_testsupport::unique_prefix(test),
            cwd: TempDir::new().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edubus"));
        cmd.env_remove("EDUBUS_DATA")
            .env_remove("EDUBUS_CATALOG")
            .env_remove("EDUBUS_CONFIG")
            .env_remove("EDUBUS_FLOWS")
            .env("EDUBUS_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null());
        match self {
            Self::Embedded(dir) => {
                cmd.current_dir(dir.path())
                    .env_remove("EDUBUS_POSTGRES_URL")
                    .env_remove("EDUBUS_REDIS_URL")
                    .arg("--data")
                    .arg(data_dir(dir));
            }
            Self::Production {
                pg_url,
                redis_url,
                prefix,
                cwd,
            } => {
                cmd.current_dir(cwd.path())
                    .env("EDUBUS_POSTGRES_URL", pg_url)
                    .env("EDUBUS_REDIS_URL", redis_url)
                    .env("EDUBUS_REDIS_PREFIX", prefix);
            }
        }
        cmd.args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run edubus")
    }

    /// Runs a command that must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value {
        let out = ok(self.run(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// `edubus serve` with `extra` arguments, once it printed `ready`; and its banner.
    fn serve(&self, extra: &[&str]) -> (Server, String) {
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        start(self.command(&args))
    }

    /// Runs `args` until it succeeds (up to 60 s) and returns its JSON output.
    fn wait_json(&self, args: &[&str], until: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.run(args);
            if out.status.success() {
                let value: Value = serde_json::from_slice(&out.stdout).unwrap();
                if until(&value) {
                    return value;
                }
            }
            assert!(
                Instant::now() < deadline,
                "waited 60 s for `edubus {}`: exit {:?}, stdout {}, stderr {}",
                args.join(" "),
                out.status,
                text(&out.stdout),
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn data_dir(dir: &TempDir) -> PathBuf {
    dir.path().join("data")
}

/// A running `edubus serve`, killed if a test ends without stopping it.
struct Server(Option<Child>);

impl Server {
    /// SIGTERM, then the exit code (within 30 s); a server that does not stop is killed (on
    /// drop) and fails the test.
    fn stop(mut self) -> Option<i32> {
        let child = self.0.as_mut().expect("running");
        let pid = child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("edubus serve did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `serve` and waits for `ready`; returns the server and its banner.
fn start(mut serve: Command) -> (Server, String) {
    let mut child = serve
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_reader(&mut child);
    let server = Server(Some(child));
    let mut banner = Vec::new();
    while !banner
        .last()
        .is_some_and(|l: &String| l.starts_with("ready"))
    {
        banner.push(
            lines
                .recv_timeout(Duration::from_secs(60))
                .expect("serve prints `ready`"),
        );
    }
    (server, banner.join("\n"))
}

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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn submitted() -> String {
    format!(
        r#"{{"application_id":"{APPLICATION}","student_temp_id":"{TEMP_ID}",
            "guardian_id":"{GUARDIAN}","submitted_at":"2026-09-01T08:00:00Z"}}"#
    )
}

/// Publishes the application and waits until the enrollment flow recorded it; returns the
/// submitted event's id.
fn submit(d: &Deployment) -> String {
    let published = d.json(&[
        "publish",
        "enrollment.submitted",
        "--data",
        &submitted(),
        "--json",
    ]);
    let app = d.wait_json(&["flows", "application", APPLICATION, "--json"], |_| true);
    assert_eq!(app["status"], "submitted", "{app}");
    assert_eq!(app["guardian_id"], GUARDIAN, "{app}");
    assert_eq!(app["submitted_event_id"], published["id"], "{app}");
    published["id"].as_str().unwrap().to_owned()
}

/// The single child of a trace node, asserting there is exactly one.
fn only_child<'a>(node: &'a Value, ty: &str) -> &'a Value {
    let caused = node["caused"].as_array().expect("caused");
    assert_eq!(caused.len(), 1, "{node}");
    assert_eq!(caused[0]["type"], ty, "{node}");
    &caused[0]
}

/// submitted -> approve (CLI) -> provisioned -> welcome dispatched, checked through the read
/// models and the causation tree; a second approval is refused and publishes nothing.
fn enrollment_chain(d: &Deployment) {
    let (server, banner) = d.serve(&[]);
    assert!(
        banner.contains("enrollment-provisioning") && banner.contains("comms-notifications"),
        "{banner}"
    );
    assert!(banner.contains("flows: on"), "{banner}");
    let submitted_id = submit(d);

    let approved = d.json(&[
        "flows",
        "approve",
        APPLICATION,
        "--by",
        STAFF,
        "--notes",
        "welcome",
        "--json",
    ]);
    assert_eq!(approved["correlation_id"], submitted_id.as_str());
    assert_eq!(approved["causation_id"], submitted_id.as_str());
    let approved_id = approved["id"].as_str().unwrap().to_owned();

    let app = d.wait_json(&["flows", "application", APPLICATION, "--json"], |a| {
        a["status"] == "provisioned"
    });
    let student_id = app["student_id"].as_str().expect("student id").to_owned();
    let student = d.wait_json(&["flows", "student", &student_id, "--json"], |_| true);
    assert_eq!(student["student"]["student_id"], student_id.as_str());
    assert_eq!(student["student"]["guardian_id"], GUARDIAN);
    assert_eq!(student["student"]["application_id"], APPLICATION);
    assert!(
        student["student"]["student_code"]
            .as_str()
            .is_some_and(|c| c.starts_with("S-")),
        "{student}"
    );
    assert!(student["attendance"].is_null(), "{student}");
    assert_eq!(student["grades"], Value::Array(Vec::new()));

    let trace = d.wait_json(&["trace", &submitted_id, "--json"], |t| t["events"] == 4);
    let roots = trace["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "{trace}");
    assert_eq!(roots[0]["type"], "enrollment.submitted");
    let approval = only_child(&roots[0], "enrollment.approved");
    assert_eq!(approval["id"], approved_id.as_str());
    let provisioned = only_child(approval, "enrollment.provisioned");
    assert_eq!(provisioned["key"], student_id.as_str());
    let dispatched = only_child(provisioned, "comms.dispatched");
    assert_eq!(dispatched["caused"], Value::Array(Vec::new()));
    let positions: Vec<u64> = [&roots[0], approval, provisioned, dispatched]
        .iter()
        .map(|n| n["position"].as_u64().unwrap())
        .collect();
    assert!(positions.is_sorted(), "{positions:?}");

    let again = d.run(&["flows", "approve", APPLICATION]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("already provisioned"),
        "{}",
        text(&again.stderr)
    );
    let approvals = ok(d.run(&["tail", "--type", "enrollment.approved", "--json"]));
    assert_eq!(approvals.lines().count(), 1, "{approvals}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn serve_runs_the_enrollment_flow_and_flows_commands_follow_it() {
    enrollment_chain(&Deployment::embedded());
}

#[test]
fn the_enrollment_chain_runs_on_the_production_deployment() {
    enrollment_chain(&Deployment::production("flows_cli_chain"));
}

#[test]
fn a_second_approval_is_refused_while_provisioning_is_pending() {
    let d = Deployment::embedded();
    let (server, _) = d.serve(&[]);
    submit(&d);
    // Stopped, so the approval stays pending: nothing provisions it.
    assert_eq!(server.stop(), Some(0));
    ok(d.run(&["flows", "approve", APPLICATION]));
    let again = d.run(&["flows", "approve", APPLICATION]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = text(&again.stderr);
    assert!(
        stderr.contains("already approved") && stderr.contains("pending"),
        "{stderr}"
    );
    let approvals = ok(d.run(&["tail", "--type", "enrollment.approved", "--json"]));
    assert_eq!(approvals.lines().count(), 1, "{approvals}");
    let pending = ok(d.run(&["flows", "applications"]));
    assert!(
        pending.contains(APPLICATION) && pending.contains("1 waiting for approval"),
        "{pending}"
    );
}

#[test]
fn unknown_documents_are_reported_and_nothing_is_published() {
    let d = Deployment::embedded();
    let approve = d.run(&["flows", "approve", APPLICATION]);
    assert_eq!(approve.status.code(), Some(2));
    assert!(
        text(&approve.stderr).contains(&format!("enrollment application `{APPLICATION}`")),
        "{}",
        text(&approve.stderr)
    );
    assert_eq!(ok(d.run(&["tail", "--json"])), "", "nothing was published");
    for (command, what) in [
        ("student", "no student"),
        ("application", "no application"),
        ("access", "no access record"),
        ("order", "no order"),
        ("batch", "no batch"),
    ] {
        let out = d.run(&["flows", command, APPLICATION, "--json"]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(text(&out.stdout).is_empty(), "{command}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(what) && stderr.contains(APPLICATION),
            "{command}: {stderr}"
        );
    }
    assert_eq!(
        d.json(&["flows", "applications", "--json"]),
        Value::Array(Vec::new())
    );
    assert_eq!(d.json(&["flows", "counts", "--json"])["students"], 0);
}

#[test]
fn serve_runs_without_flows_when_asked() {
    let d = Deployment::embedded();
    let (server, banner) = d.serve(&["--no-flows", "--listen", "off"]);
    assert!(
        banner.contains("subscriptions: none registered"),
        "{banner}"
    );
    assert!(banner.contains("flows: off"), "{banner}");
    assert_eq!(server.stop(), Some(0));
    let mut disabled = d.command(&["serve", "--listen", "off"]);
    disabled.env("EDUBUS_FLOWS", "false");
    let (server, banner) = start(disabled);
    assert!(banner.contains("flows: off"), "{banner}");
    assert_eq!(server.stop(), Some(0));
}

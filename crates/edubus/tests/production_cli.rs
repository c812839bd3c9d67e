//! The data commands on the production deployment: with `postgres_url` and `redis_url`
//! configured (here through `EDUBUS_*`), they run on PostgreSQL and Redis, servers started by
//! `edubus-testsupport`.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Deployment {
    pg_url: String,
    redis_url: String,
    prefix: String,
}

fn deployment(test: &str) -> Deployment {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let schema = runtime.block_on(edubus_testsupport::postgres().schema(test));
    Deployment {
        pg_url: schema.url().to_owned(),
        redis_url: edubus_testsupport::redis().url(),
        prefix: edubus_testsupport::unique_prefix(test),
    }
}

impl Deployment {
    fn command(&self, args: &[&str]) -> Command {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edubus"));
        cmd.current_dir(dir.keep())
            .args(args)
            .env_remove("EDUBUS_CONFIG")
            .env_remove("EDUBUS_DATA")
            .env("EDUBUS_POSTGRES_URL", &self.pg_url)
            .env("EDUBUS_REDIS_URL", &self.redis_url)
            .env("EDUBUS_REDIS_PREFIX", &self.prefix)
            .env("EDUBUS_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const MARK: &str = r#"{"class_session_id":"5f0c7f3e-8d1a-4c55-9a43-1b2f3c4d5e6f","student_id":"0b9d5a3e-1f2a-4b3c-8d4e-5f6a7b8c9d0e","status":"absent","marked_by":"7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f","marked_at":"2026-11-20T08:00:00Z"}"#;

#[test]
fn publish_and_tail_use_postgres_when_configured() {
    let d = deployment("cli_publish");
    let migrate = d.run(&["migrate"]);
    assert!(migrate.status.success(), "{}", text(&migrate.stderr));
    assert!(
        text(&migrate.stdout).contains("PostgreSQL"),
        "{}",
        text(&migrate.stdout)
    );
    let published = d.run(&["publish", "attendance.marked", "--data", MARK, "--json"]);
    assert!(published.status.success(), "{}", text(&published.stderr));
    let published: Value = serde_json::from_slice(&published.stdout).unwrap();
    let tail = d.run(&["tail", "--json"]);
    assert!(tail.status.success(), "{}", text(&tail.stderr));
    let line: Value = serde_json::from_str(text(&tail.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        line["id"], published["id"],
        "the event is read back from PostgreSQL"
    );
    assert!(
        !std::path::Path::new("edubus-data").exists(),
        "no embedded data directory is created"
    );
}

#[test]
fn serve_runs_the_production_deployment_and_stops_on_sigterm() {
    let d = deployment("cli_serve");
    let mut child = d
        .command(&["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let ready = line.starts_with("ready");
        banner.push(line);
        if ready {
            break;
        }
    }
    let banner = banner.join("\n");
    assert!(
        banner.contains("PostgreSQL") && banner.contains("Redis"),
        "{banner}"
    );
    let addr = banner
        .lines()
        .find_map(|l| l.strip_prefix("http: http://"))
        .expect("the banner names the gateway's address");
    let (status, body) = edubus_testsupport::http_get(addr, "/health/events");
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert!(health.get("status").is_some(), "{health}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn half_a_production_configuration_is_refused() {
    let d = deployment("cli_half");
    let out = d
        .command(&["tail"])
        .env_remove("EDUBUS_REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("redis_url is not"),
        "{}",
        text(&out.stderr)
    );
}

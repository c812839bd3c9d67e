//! `edubus serve` with `[[webhook]]` subscriptions in `edubus.toml`: published events reach a
//! real HTTP receiver, and a webhook naming an unknown type stops start-up.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

const STUDENT: &str = "0190f0a0-0000-7000-8000-000000000001";

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edubus"));
    cmd.current_dir(dir)
        .arg("--config")
        .arg(dir.join("edubus.toml"))
        .arg("--data")
        .arg(dir.join("data"))
        .args(args)
        .env_remove("EDUBUS_DATA")
        .env_remove("EDUBUS_CATALOG")
        .env_remove("EDUBUS_LISTEN")
        .env_remove("EDUBUS_POSTGRES_URL")
        .env_remove("EDUBUS_REDIS_URL")
        .stdin(Stdio::null());
    cmd
}

fn write_config(dir: &Path, types: &str, url: &str) {
    let toml = format!(
        "[[webhook]]\nname = \"attendance-sync\"\ntypes = [{types}]\nurl = \"{url}\"\n\
         secret = \"whsec_cli\"\nretry = {{ attempts = 3, base = \"10ms\" }}\ntimeout = \"5s\"\n"
    );
    std::fs::write(dir.join("edubus.toml"), toml).unwrap();
}

/// Answers every request `200 OK` and sends its head (request line and headers) to the channel.
fn receiver() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>())
                })
                .and_then(Result::ok)
                .unwrap_or(0);
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx.send(head).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

/// The lines `serve` prints up to and including `ready`.
fn banner(child: &mut Child) -> String {
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    for line in out.lines().map_while(Result::ok) {
        let ready = line.starts_with("ready");
        seen.push(line);
        if ready {
            return seen.join("\n");
        }
    }
    panic!("serve ended before `ready`: {seen:?}");
}

/// SIGTERM, then the exit code (within 30 s).
fn terminate(mut child: Child) -> Option<i32> {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
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
fn serve_posts_published_events_to_the_configured_webhook() {
    let dir = TempDir::new().unwrap();
    let (url, requests) = receiver();
    write_config(dir.path(), "\"AttendanceMarked\"", &url);
    let mut child = command(dir.path(), &["serve", "--listen", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let banner = banner(&mut child);
    assert!(
        banner.contains("subscriptions: attendance-sync"),
        "{banner}"
    );
    let data = format!(
        r#"{{"class_session_id":"{STUDENT}","student_id":"{STUDENT}","status":"absent",
            "marked_by":"{STUDENT}","marked_at":"2025-09-01T08:00:00Z"}}"#
    );
    let published = command(
        dir.path(),
        &["publish", "attendance.marked", "--data", &data, "--json"],
    )
    .output()
    .unwrap();
    assert!(published.status.success(), "{published:?}");
    let id = serde_json::from_slice::<Value>(&published.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let head = requests
        .recv_timeout(Duration::from_secs(30))
        .expect("the event is posted to the webhook")
        .to_ascii_lowercase();
    assert!(head.starts_with("post /events "), "{head}");
    for header in [
        format!("ce-id: {id}"),
        "ce-type: attendance.marked".to_owned(),
        "content-type: application/json".to_owned(),
        "edubus-signature: t=".to_owned(),
    ] {
        assert!(head.contains(&header), "no `{header}` in {head}");
    }
    assert_eq!(terminate(child), Some(0));
}

#[test]
fn serve_refuses_a_webhook_with_an_unknown_type() {
    let dir = TempDir::new().unwrap();
    write_config(dir.path(), "\"attendance.markd\"", "http://127.0.0.1:9/");
    let out = command(dir.path(), &["serve", "--listen", "off"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("webhook `attendance-sync`")
            && stderr.contains("nearest: attendance.marked"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ready"),
        "nothing starts"
    );
}

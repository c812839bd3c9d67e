//! The shared servers are stopped and their directories removed when the test binary exits.
//!
//! The check runs this same test binary as a child process that starts both shared servers and
//! prints where they are, then watches them disappear after the child exits.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use edubus_testsupport::{postgres, redis};

const CHILD_ENV: &str = "EDUBUS_TESTSUPPORT_CLEANUP_CHILD";

#[test]
#[ignore = "the child half of `servers_stop_when_the_test_binary_exits`"]
fn child_starts_the_shared_servers() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    for (name, port, dir) in [
        ("redis", redis().port(), redis().dir()),
        ("postgres", postgres().port(), postgres().dir()),
    ] {
        println!("SERVER {name} {port} {}", dir.display());
    }
}

#[test]
fn servers_stop_when_the_test_binary_exits() {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new(exe)
        .args([
            "--exact",
            "child_starts_the_shared_servers",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let servers: Vec<(u16, PathBuf)> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("SERVER "))
        .map(|line| {
            let mut fields = line.splitn(3, ' ').skip(1);
            (
                fields.next().unwrap().parse().unwrap(),
                PathBuf::from(fields.next().unwrap()),
            )
        })
        .collect();
    assert_eq!(servers.len(), 2, "child output: {stdout}");
    let exited = Instant::now();
    for (port, dir) in servers {
        wait_until_gone(port, &dir);
    }
    eprintln!(
        "both servers gone {:?} after the child exited",
        exited.elapsed()
    );
}

fn wait_until_gone(port: u16, dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() || dir.exists() {
        assert!(
            Instant::now() < deadline,
            "server on port {port} in {} still there",
            dir.display()
        );
        sleep(Duration::from_millis(50));
    }
}

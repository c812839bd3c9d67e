//! The shared servers are stopped and their directories removed when the test binary exits.
//!
//! The check runs `edubus-testsupport-child`, a process that starts both shared servers and
//! prints where they are, then watches them disappear after it exits.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

#[test]
fn servers_stop_when_the_test_binary_exits() {
    let output = Command::new(env!("CARGO_BIN_EXE_edubus-testsupport-child"))
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

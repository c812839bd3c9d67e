//! A client nobody here wrote: the Python CloudEvents SDK with `requests` publishes in
//! structured and binary mode and parses the events it reads back (`tests/python/`).

mod common;

use std::process::Command;

use common::Server;
use edubus_core::{EventStore, ReadQuery};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_cloudevents_sdk_publishes_and_reads_back() {
    let server = Server::open().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/cloudevents_client.py"
    );
    let url = server.url.clone();
    let output =
        tokio::task::spawn_blocking(move || Command::new("python3").arg(script).arg(url).output())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("python3 is required for this test and could not run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed (install its packages with `pip install cloudevents requests`):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("published 2 events, read them back"),
        "{stdout}"
    );
    let stored = server
        .bus
        .backend()
        .read(ReadQuery::default())
        .await
        .unwrap();
    let sources: Vec<&str> = stored.iter().map(|e| e.envelope.source.as_str()).collect();
    assert_eq!(sources, ["python-sdk", "python-sdk"]);
    server.stop().await;
}

//! Tracing: each request's span carries the incoming `traceparent` and the correlation id of
//! what it publishes, and each handled event's span carries both too.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{STUDENT, Server, body, marked};
use edubus_events::AttendanceMarked;
use edubus_runtime::{SubscriptionOptions, Worker};

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_handler_spans_carry_the_correlation_id_and_traceparent() {
    let logs = Capture::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let server = Server::open().await;
    let worker = Worker::builder(server.bus.clone())
        .subscription("traced", SubscriptionOptions::default())
        .on::<AttendanceMarked, _, _>(|_e, _ctx| async move {
            tracing::info!("marking handled");
            Ok(())
        })
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut event = marked(STUDENT);
    event["correlationid"] = "flow-42".into();
    let response = server
        .client
        .post(server.at("/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .header("traceparent", traceparent)
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    body(response, 202).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logs.text().contains("marking handled") {
        assert!(
            Instant::now() < deadline,
            "the handler never ran:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    run.await.unwrap().unwrap();
    let text = logs.text();
    let request = text
        .lines()
        .find(|l| l.contains("http_request{") && l.contains("request handled"))
        .unwrap_or_else(|| panic!("no request line in:\n{text}"));
    assert!(
        request.contains(&format!("traceparent={traceparent}")),
        "{request}"
    );
    assert!(request.contains("correlation_id=flow-42"), "{request}");
    let handled = text
        .lines()
        .find(|l| l.contains("marking handled"))
        .unwrap();
    assert!(handled.contains("handle_event{"), "{handled}");
    assert!(handled.contains("correlation_id=flow-42"), "{handled}");
    assert!(
        handled.contains(&format!("traceparent={traceparent}")),
        "{handled}"
    );
    assert!(!text.contains(STUDENT), "no PII in the logs:\n{text}");
    server.stop().await;
}

//! Driver and pool failures map to the error kinds callers act on.

mod common;

use std::time::Duration;

use common::{append, store};
use edubus_core::{ErrorKind, EventStore};
use edubus_postgres::{PgConfig, PgStore};
use serde_json::json;

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = PgConfig::new(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .with_connect_timeout(Duration::from_secs(2));
    let err = PgStore::connect(config).await.expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_malformed_url_or_zero_partitions_is_invalid() {
    let err = PgStore::connect(PgConfig::new("postgres://host:notaport/db"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let err = PgStore::connect(PgConfig::default().with_partitions(0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

#[tokio::test]
async fn data_postgresql_refuses_is_invalid_and_stores_nothing() {
    let (_schema, store) = store("errors_invalid_data").await;
    // JSONB cannot hold the NUL character.
    let mut event = append("student-1", 0);
    event.envelope.data = json!({ "note": "a\u{0}b" });
    let err = store.append(vec![event.clone()]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(store.get(&event.envelope.id).await.unwrap().is_none());
}

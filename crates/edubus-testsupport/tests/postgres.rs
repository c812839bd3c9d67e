//! The PostgreSQL clusters: shared and private, per-test schemas and databases, restarts.

use std::time::Instant;

use edubus_testsupport::{PgOptions, PgServer, postgres};

#[tokio::test]
async fn the_shared_cluster_answers_select_1() {
    let started = Instant::now();
    let server = postgres();
    eprintln!(
        "shared PostgreSQL ready on port {} in {:?}",
        server.port(),
        started.elapsed()
    );
    assert_ne!(server.port(), 5432, "must never use the system PostgreSQL");
    let client = server.connect().await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[test]
fn the_shared_cluster_is_started_once_per_binary() {
    let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(postgres)).collect();
    for thread in threads {
        assert!(std::ptr::eq(thread.join().unwrap(), postgres()));
    }
    assert_eq!(postgres().url(), postgres().url());
}

#[tokio::test]
async fn per_test_schemas_are_isolated() {
    let first = postgres().schema("schemas_are_isolated").await;
    let second = postgres().schema("schemas_are_isolated").await;
    assert_ne!(first.name(), second.name());
    for (schema, value) in [(&first, "first"), (&second, "second")] {
        let client = schema.connect().await;
        client
            .batch_execute("CREATE TABLE items (value text)")
            .await
            .unwrap();
        client
            .execute("INSERT INTO items VALUES ($1)", &[&value])
            .await
            .unwrap();
    }
    for (schema, value) in [(&first, "first"), (&second, "second")] {
        let rows = schema
            .connect()
            .await
            .query("SELECT value FROM items", &[])
            .await
            .unwrap();
        let values: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(values, [value]);
    }
}

#[tokio::test]
async fn fresh_databases_are_empty_and_separate() {
    let database = postgres().fresh_database("fresh").await;
    let client = database.connect().await;
    let name: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, database.name());
    client
        .batch_execute("CREATE TABLE only_here (id int)")
        .await
        .unwrap();
    let other = postgres().connect().await;
    let found = other.query("SELECT 1 FROM pg_tables WHERE tablename = 'only_here'", &[]);
    assert!(found.await.unwrap().is_empty());
}

#[tokio::test]
async fn a_private_cluster_keeps_its_data_across_restart() {
    let started = Instant::now();
    let mut server = PgServer::start_with(PgOptions::default().with_fsync(true));
    eprintln!(
        "private PostgreSQL (fsync on) ready in {:?}",
        started.elapsed()
    );
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    drop(client);
    let port = server.port();

    let restarted = Instant::now();
    server.restart();
    eprintln!(
        "PostgreSQL restarted (immediate stop) in {:?}",
        restarted.elapsed()
    );
    assert_eq!(server.port(), port, "a restart keeps the port");
    let client = server.connect().await;
    let id: i32 = client
        .query_one("SELECT id FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 42);
}

#[test]
#[should_panic(expected = "Address already in use")]
fn a_failed_start_panics_with_the_server_log() {
    let mut server = PgServer::start();
    server.stop();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", server.port())).unwrap();
    server.restart();
}

//! The Redis servers: shared and private, PING, SET/GET, prefixes, AOF across restarts.

use std::time::Instant;

use edubus_testsupport::{RedisOptions, RedisServer, redis, unique_prefix};
use redis::AsyncCommands;

#[tokio::test]
async fn the_shared_server_answers_ping_and_set_get() {
    let started = Instant::now();
    let server = redis();
    eprintln!(
        "shared redis-server ready on port {} in {:?}",
        server.port(),
        started.elapsed()
    );
    let mut conn = server.connect().await;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    let key = format!("{}greeting", unique_prefix("set_get"));
    let () = conn.set(&key, "hello").await.unwrap();
    let value: String = conn.get(&key).await.unwrap();
    assert_eq!(value, "hello");
}

#[test]
fn the_shared_server_is_started_once_per_binary() {
    let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(redis)).collect();
    for thread in threads {
        assert!(std::ptr::eq(thread.join().unwrap(), redis()));
    }
    assert_eq!(redis().port(), redis().port());
    assert_ne!(redis().port(), 6379, "must never use the system Redis");
}

#[test]
fn tests_get_distinct_prefixes() {
    let first = unique_prefix("first_test");
    let second = unique_prefix("second_test");
    let again = unique_prefix("first_test");
    assert!(first.contains("first_test") && second.contains("second_test"));
    assert_ne!(first, second);
    assert_ne!(first, again, "the same name twice still gets two prefixes");
    assert!(!first.starts_with(&again) && !again.starts_with(&first));
}

#[tokio::test]
async fn an_append_only_server_keeps_a_key_across_restart() {
    let started = Instant::now();
    let mut server = RedisServer::start_with(RedisOptions::default().with_append_only(true));
    eprintln!("private AOF redis-server ready in {:?}", started.elapsed());
    let mut conn = server.connect().await;
    let () = conn.set("durable", "kept").await.unwrap();
    let (port, pid) = (server.port(), server.pid());

    let restarted = Instant::now();
    server.restart();
    eprintln!("AOF redis-server restarted in {:?}", restarted.elapsed());
    assert_eq!(server.port(), port, "a restart keeps the port");
    assert_ne!(server.pid(), pid, "a restart runs a new process");
    let mut conn = server.connect().await;
    let value: String = conn.get("durable").await.unwrap();
    assert_eq!(value, "kept");
}

#[tokio::test]
async fn a_killed_append_only_server_keeps_acknowledged_writes() {
    let mut server = RedisServer::start_with(RedisOptions::default().with_append_only(true));
    let mut conn = server.connect().await;
    let () = conn.set("acked", "1").await.unwrap();
    server.kill();
    assert_eq!(server.pid(), None);
    server.restart();
    let mut conn = server.connect().await;
    let value: String = conn.get("acked").await.unwrap();
    assert_eq!(value, "1");
}

#[test]
fn a_stopped_server_no_longer_answers() {
    let mut server = RedisServer::start();
    let address = ("127.0.0.1", server.port());
    assert!(std::net::TcpStream::connect(address).is_ok());
    server.stop();
    assert!(std::net::TcpStream::connect(address).is_err());
    let dir = server.dir().to_owned();
    drop(server);
    assert!(
        !dir.exists(),
        "dropping a private server removes its directory"
    );
}

#[test]
#[should_panic(expected = "Address already in use")]
fn a_failed_start_panics_with_the_server_log() {
    let mut server = RedisServer::start();
    server.stop();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", server.port())).unwrap();
    server.restart();
}

#[tokio::test]
async fn connections_allow_blocking_reads_past_the_driver_default_timeout() {
    let mut conn = redis().connect().await;
    let stream = format!("{}stream", unique_prefix("blocking_reads"));
    let reply: redis::Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(700)
        .arg("STREAMS")
        .arg(&stream)
        .arg("$")
        .query_async(&mut conn)
        .await
        .expect("a 700 ms BLOCK outlives redis-rs's 500 ms default response timeout");
    assert_eq!(reply, redis::Value::Nil);
}

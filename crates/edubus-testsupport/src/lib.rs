#![doc = include_str!("../README.md")]

mod pg_scope;
mod pg_server;
mod process;
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};

pub use pg_scope::{PgDatabase, PgSchema};
pub use pg_server::{PgOptions, PgServer, postgres};
pub use redis_server::{RedisOptions, RedisServer, redis};

/// A Redis key prefix no other test of this binary gets: `test:<test_name>:<n>:`.
pub fn unique_prefix(test_name: &str) -> String {
    format!("test:{test_name}:{}:", next_id())
}

/// A number unique in this process, to tell tests' keys, schemas and databases apart.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A plain HTTP/1.1 GET of `path` on `addr` (`host:port`): the status code and the body. Panics
/// when the server cannot be reached, as a test should.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP server");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

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

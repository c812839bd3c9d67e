//! Connection settings of the PostgreSQL backend.

use std::time::Duration;

/// How to reach the database and how the log is partitioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// A libpq-style URL or key-value string (`postgres://user@host:5432/db`).
    pub url: String,
    /// Most pooled connections (default 16).
    pub pool_size: usize,
    /// Partitions of every stream (default 16); must match the transport's.
    pub partitions: u32,
    /// Longest wait to open a connection or take one from the pool (default 10 s).
    pub connect_timeout: Duration,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            url: "postgres://localhost/edubus".into(),
            pool_size: 16,
            partitions: 16,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl PgConfig {
    /// Defaults with this URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self::default().with_url(url)
    }

    /// Sets the URL.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets the pool size.
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Sets the number of partitions.
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

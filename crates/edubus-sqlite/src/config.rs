//! Configuration of the embedded backend: a plain struct with `Default` and `with_*` builders.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edubus_core::{Error, Result};

/// File name of the database inside a data directory.
pub const DB_FILE_NAME: &str = "edubus.db";
/// Data directory used when nothing is configured.
pub const DEFAULT_DATA_DIR: &str = "edubus-data";

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = NORMAL` in WAL mode: survives a process crash; a power loss may lose
    /// the last commits.
    #[default]
    Normal,
    /// `synchronous = FULL`: survives power loss, at the cost of an fsync per group commit.
    Full,
}

impl Durability {
    /// The value of `PRAGMA synchronous` for this level.
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// Settings of a [`crate::SqliteBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file; its directory is created at open.
    pub path: PathBuf,
    /// Partitions per stream, fixed when the file is created; on an existing file the stored
    /// value wins.
    pub partitions: u32,
    /// Commit durability.
    pub durability: Durability,
    /// How often `wait` polls for commits of other processes.
    pub poll_interval: Duration,
    /// Most commands committed together in one transaction by the writer.
    pub group_commit_max: usize,
    /// Read-only connections in the reader pool.
    pub readers: usize,
    /// How long a connection waits for a lock held by another process before `Unavailable`.
    pub busy_timeout: Duration,
    /// WAL frames (pages) after which the writer finishes a checkpoint between two groups, so
    /// that the log starts over instead of growing while appends keep coming.
    pub wal_restart_frames: u32,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: Path::new(DEFAULT_DATA_DIR).join(DB_FILE_NAME),
            partitions: 16,
            durability: Durability::Normal,
            poll_interval: Duration::from_millis(5),
            group_commit_max: 4096,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            wal_restart_frames: 8192,
        }
    }
}

impl SqliteConfig {
    /// The defaults with the database at `<dir>/edubus.db`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        Self::default().with_path(dir.as_ref().join(DB_FILE_NAME))
    }

    /// Sets the database file.
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets the partition count used when the file is created.
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets the commit durability.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets how often `wait` polls for other processes' commits.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the most commands per group commit.
    pub fn with_group_commit_max(mut self, max: usize) -> Self {
        self.group_commit_max = max;
        self
    }

    /// Sets the size of the reader pool.
    pub fn with_readers(mut self, readers: usize) -> Self {
        self.readers = readers;
        self
    }

    /// Sets how long to wait for another process's lock.
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets the WAL size, in frames, at which the log is made to start over.
    pub fn with_wal_restart_frames(mut self, frames: u32) -> Self {
        self.wal_restart_frames = frames;
        self
    }

    /// Rejects settings the backend cannot run with.
    pub(crate) fn check(&self) -> Result<()> {
        let problem = if self.partitions == 0 {
            "partitions must be at least 1"
        } else if self.group_commit_max == 0 {
            "group_commit_max must be at least 1"
        } else if self.readers == 0 {
            "readers must be at least 1"
        } else if self.poll_interval.is_zero() {
            "poll_interval must be positive"
        } else if self.wal_restart_frames == 0 {
            "wal_restart_frames must be at least 1"
        } else {
            return Ok(());
        };
        Err(Error::invalid(format!(
            "invalid SQLite configuration: {problem}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_builders() {
        let config = SqliteConfig::default();
        assert_eq!(config.path, Path::new("edubus-data/edubus.db"));
        assert_eq!(config.partitions, 16);
        assert!(config.check().is_ok());
        let config = SqliteConfig::in_dir("/tmp/x")
            .with_partitions(4)
            .with_durability(Durability::Full);
        assert_eq!(config.path, Path::new("/tmp/x/edubus.db"));
        assert_eq!((config.partitions, config.durability.pragma()), (4, "FULL"));
        assert!(config.clone().with_partitions(0).check().is_err());
        let error = config.with_wal_restart_frames(0).check().unwrap_err();
        assert!(error.to_string().contains("wal_restart_frames"), "{error}");
    }
}

//! Mapping of PostgreSQL driver and pool errors into [`edubus_core::Error`], grouped by what
//! the caller should do: a lost connection, a deadlock or a full server is retried, a unique or
//! append-only violation is a conflict, bad data is invalid input, anything else is internal.

use deadpool_postgres::PoolError;
use edubus_core::Error;
use tokio_postgres::error::SqlState;

/// SQLSTATE the append-only trigger raises for an UPDATE, DELETE or TRUNCATE of a guarded table.
pub(crate) const APPEND_ONLY: &str = "EB001";

/// Maps a driver error into the edubus error a caller acts on.
pub fn from_pg(err: tokio_postgres::Error) -> Error {
    let Some(db) = err.as_db_error() else {
        // No server answer: the connection broke, timed out or was closed.
        if err.is_closed()
            || std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>())
        {
            return Error::unavailable(format!("PostgreSQL connection failed: {err}"), err);
        }
        return Error::internal(format!("PostgreSQL driver error: {err}"), err);
    };
    let code = db.code().code();
    let message = format!("PostgreSQL error {code}: {}", db.message());
    match code {
        APPEND_ONLY => Error::conflict(db.message().to_owned()),
        _ if code.starts_with("23") => Error::conflict(message),
        _ if code.starts_with("22") => Error::invalid(message),
        _ if is_transient(db.code()) => Error::unavailable(message, err),
        _ => Error::internal(message, err),
    }
}

/// Errors that retrying later may fix: connections, resources, shutdowns, lock contention.
fn is_transient(code: &SqlState) -> bool {
    let class = &code.code()[..2];
    matches!(class, "08" | "53" | "57")
        || [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
        ]
        .contains(code)
}

/// Maps a failure to get a pooled connection.
pub fn from_pool(err: PoolError) -> Error {
    match err {
        PoolError::Backend(e) => from_pg(e),
        PoolError::NoRuntimeSpecified => {
            Error::internal("the PostgreSQL pool has no async runtime", "no runtime")
        }
        other => Error::unavailable(
            format!("no PostgreSQL connection available: {other}"),
            other.to_string(),
        ),
    }
}

/// Maps driver results.
pub(crate) trait Db<T> {
    /// The value, or the mapped error.
    fn db(self) -> Result<T, Error>;
}

impl<T> Db<T> for Result<T, tokio_postgres::Error> {
    fn db(self) -> Result<T, Error> {
        self.map_err(from_pg)
    }
}

//! Mapping of SQLite driver errors into [`edubus_core::Error`], grouped by what the caller
//! should do: a busy or locked database is retried, a constraint is a conflict, corruption and
//! I/O failures are internal.

use edubus_core::Error;
use edubus_core::error::BoxError;
use rusqlite::ffi::ErrorCode;

/// Maps a driver error into the edubus error a caller acts on.
///
/// `SQLITE_BUSY`, `SQLITE_LOCKED`, a full disk or memory exhaustion are
/// [`Error::Unavailable`] (retry later); a constraint violation is [`Error::Conflict`]; anything
/// else (corruption, I/O, a file that is not a database, misuse) is [`Error::Internal`].
pub fn from_sqlite(err: rusqlite::Error) -> Error {
    let message = describe(&err);
    match class(&err) {
        Class::Retry => Error::unavailable(message, err),
        Class::Conflict => Error::conflict(message),
        Class::Internal => Error::internal(message, err),
    }
}

/// The same mapping for an error that is only borrowed (one commit failure answers several
/// commands); the source is kept as text.
pub(crate) fn from_sqlite_ref(err: &rusqlite::Error) -> Error {
    let message = describe(err);
    let source: BoxError = err.to_string().into();
    match class(err) {
        Class::Retry => Error::unavailable(message, source),
        Class::Conflict => Error::conflict(message),
        Class::Internal => Error::internal(message, source),
    }
}

/// What a caller should do about a driver error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Retry,
    Conflict,
    Internal,
}

fn class(err: &rusqlite::Error) -> Class {
    match err.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::OutOfMemory
            | ErrorCode::OperationInterrupted,
        ) => Class::Retry,
        Some(ErrorCode::ConstraintViolation) => Class::Conflict,
        _ => Class::Internal,
    }
}

fn describe(err: &rusqlite::Error) -> String {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            format!("the SQLite database is locked by another connection: {err}")
        }
        Some(ErrorCode::ConstraintViolation) => format!("SQLite constraint violated: {err}"),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            format!("the SQLite file is corrupt or not a database: {err}")
        }
        Some(_) => format!("SQLite error: {err}"),
        None => format!("SQLite driver error: {err}"),
    }
}

/// Maps a failed JSON (de)serialization of stored data: a broken invariant.
pub(crate) fn from_json(what: &str, err: serde_json::Error) -> Error {
    Error::internal(format!("stored {what} is not valid JSON"), err)
}

/// The error of a call made after [`crate::SqliteBackend::close`] or when the writer died.
pub(crate) fn closed() -> Error {
    Error::Unavailable {
        message: "the SQLite backend is closed".into(),
        source: None,
    }
}

/// `.db()` on driver results: maps the error with [`from_sqlite`].
pub(crate) trait Db<T> {
    /// The value, or the mapped error.
    fn db(self) -> edubus_core::Result<T>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> edubus_core::Result<T> {
        self.map_err(from_sqlite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edubus_core::ErrorKind;
    use rusqlite::ffi;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn codes_map_to_what_the_caller_does() {
        let cases = [
            (ffi::SQLITE_BUSY, ErrorKind::Unavailable),
            (ffi::SQLITE_LOCKED, ErrorKind::Unavailable),
            (ffi::SQLITE_FULL, ErrorKind::Unavailable),
            (ffi::SQLITE_CONSTRAINT_UNIQUE, ErrorKind::Conflict),
            (ffi::SQLITE_CORRUPT, ErrorKind::Internal),
            (ffi::SQLITE_IOERR, ErrorKind::Internal),
            (ffi::SQLITE_NOTADB, ErrorKind::Internal),
        ];
        for (code, kind) in cases {
            assert_eq!(from_sqlite(failure(code)).kind(), kind, "code {code}");
            assert_eq!(from_sqlite_ref(&failure(code)).kind(), kind, "code {code}");
        }
        assert!(from_sqlite(failure(ffi::SQLITE_BUSY)).is_retryable());
        let no_rows = from_sqlite(rusqlite::Error::QueryReturnedNoRows);
        assert_eq!(no_rows.kind(), ErrorKind::Internal);
    }
}

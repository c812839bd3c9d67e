//! The core error: kinds, retryability and mappings.

use edubus_core::error::escape_pointer_token;
use edubus_core::{EnvelopeError, Error, ErrorKind, Issue};

#[test]
fn kinds_tell_the_caller_what_to_do() {
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    let cases = [
        (Error::invalid("bad"), ErrorKind::Invalid, false),
        (
            Error::not_found("subscription", "grading"),
            ErrorKind::NotFound,
            false,
        ),
        (Error::conflict("duplicate id"), ErrorKind::Conflict, false),
        (
            Error::unavailable("redis down", io),
            ErrorKind::Unavailable,
            true,
        ),
        (
            Error::internal("bug", "broken invariant"),
            ErrorKind::Internal,
            false,
        ),
    ];
    for (err, kind, retry) in cases {
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(err.is_retryable(), retry, "{err}");
    }
}

#[test]
fn sources_and_messages_are_kept() {
    let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let err = Error::unavailable("postgres", io);
    assert_eq!(err.to_string(), "unavailable: postgres");
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("timed out"));
    let err = Error::not_found("subscription", "grading");
    assert_eq!(err.to_string(), "subscription `grading` not found");
}

#[test]
fn invalid_issues_are_sorted_and_rendered() {
    let err = Error::invalid_with(
        "invalid event",
        vec![Issue::new("/data/b", "x"), Issue::new("/data/a", "y")],
    );
    assert_eq!(err.issues()[0].pointer, "/data/a");
    assert_eq!(
        err.to_string(),
        "invalid event\n  - /data/a: y\n  - /data/b: x"
    );
}

#[test]
fn envelope_syntax_errors_point_at_the_document() {
    let syntax = serde_json::from_slice::<serde_json::Value>(b"{").map(|_| ());
    let Err(e) = syntax else {
        panic!("should not parse")
    };
    let err: Error = EnvelopeError::Syntax(e).into();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert_eq!(err.issues()[0].pointer, "");
}

#[test]
fn pointer_tokens_are_escaped() {
    assert_eq!(escape_pointer_token("a/b~c"), "a~1b~0c");
    assert_eq!(Issue::at_member("x/y", "r").pointer, "/x~1y");
}

//! Errors, grouped by what the caller should do about them.
//!
//! Every crate maps its failures into [`Error`]: bad input is fixed and never retried, a
//! missing item is reported, a conflict is re-read and decided, an unavailable dependency is
//! retried with backoff, an internal error is a bug to report.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::envelope::EnvelopeError;

/// A boxed error from a driver or another library, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem in a JSON document: where (a JSON pointer) and why.
///
/// The pointer addresses the envelope as a whole: `/time`, `/data/student_id`, `""` for the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Issue {
    /// RFC 6901 JSON pointer to the offending value (or to where a missing one belongs).
    pub pointer: String,
    /// Why it is wrong, in a few words.
    pub reason: String,
}

impl Issue {
    /// An issue at `pointer`.
    pub fn new(pointer: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            reason: reason.into(),
        }
    }

    /// An issue at the top-level member `name` of the document (`/name`, escaped).
    pub fn at_member(name: &str, reason: impl Into<String>) -> Self {
        Self::new(format!("/{}", escape_pointer_token(name)), reason)
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "(document)"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {}", self.reason)
    }
}

/// Escapes one JSON pointer reference token (RFC 6901: `~` as `~0`, `/` as `~1`).
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Renders issues one per line, each prefixed with `\n  - `.
pub(crate) fn render_issues(issues: &[Issue]) -> String {
    issues.iter().map(|i| format!("\n  - {i}")).collect()
}

/// What the caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Fix the input; retrying the same request fails again (HTTP 400).
    Invalid,
    /// The named item does not exist (HTTP 404).
    NotFound,
    /// The request conflicts with the current state; re-read and decide (HTTP 409).
    Conflict,
    /// A dependency is down or overloaded; retry with backoff (HTTP 503).
    Unavailable,
    /// A bug or a broken invariant; report it (HTTP 500).
    Internal,
}

/// The error of every edubus library crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is wrong: fix it, do not retry.
    #[error("{message}{}", render_issues(.issues))]
    Invalid {
        /// What was wrong, in one line.
        message: String,
        /// Each problem with its JSON pointer, sorted by pointer; may be empty.
        issues: Vec<Issue>,
    },
    /// The named item does not exist.
    #[error("{what} `{id}` not found")]
    NotFound {
        /// The kind of item (`event`, `subscription`, `dead letter`).
        what: &'static str,
        /// Its name or id.
        id: String,
    },
    /// The request conflicts with the current state (a duplicate, a lost race).
    #[error("conflict: {message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// A dependency is unavailable or overloaded; retry later.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What was unavailable.
        message: String,
        /// The driver error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A bug or a broken invariant; not the caller's fault and not fixed by retrying.
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Invalid input without pointer-level detail.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
            issues: Vec::new(),
        }
    }

    /// Invalid input with the problems found, sorted by pointer.
    pub fn invalid_with(message: impl Into<String>, mut issues: Vec<Issue>) -> Self {
        issues.sort();
        Self::Invalid {
            message: message.into(),
            issues,
        }
    }

    /// `what` named `id` does not exist.
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            id: id.into(),
        }
    }

    /// The request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict {
            message: message.into(),
        }
    }

    /// A dependency failed in a way that retrying may fix.
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A bug or broken invariant, with its cause.
    pub fn internal(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Internal {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What the caller should do.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { .. } => ErrorKind::Invalid,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// The pointer-level problems of an [`Error::Invalid`]; empty for other variants.
    pub fn issues(&self) -> &[Issue] {
        match self {
            Self::Invalid { issues, .. } => issues,
            _ => &[],
        }
    }
}

impl From<EnvelopeError> for Error {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Syntax(_) | EnvelopeError::Invalid(_) => Self::Invalid {
                message: "invalid CloudEvents envelope".into(),
                issues: e.issues(),
            },
            // Our own event type failed to serialize: a bug in the caller's type, not input.
            EnvelopeError::Payload(source) => {
                Self::internal("the event payload could not be serialized", source)
            }
        }
    }
}

//! Small helpers shared by the data commands: exit codes, durations, times, the actor.

use std::process::ExitCode;
use std::time::Duration;

use edubus_core::{Error, ErrorKind, Position};
use jiff::Timestamp;

/// Prints a library error and returns its exit code: 2 when something named does not exist,
/// 1 otherwise. Pointer-level problems are listed one per line.
pub fn fail(err: &Error) -> ExitCode {
    eprintln!("error: {err}");
    match err.kind() {
        ErrorKind::NotFound => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

/// Who did an administrative action from the command line: `cli:$USER`.
pub fn actor() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{user}")
}

pub use edubus_http::config::parse_duration;

/// A duration the way people read it: `7d`, `12h`, `90s`, `250ms`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Where a replay starts: a log position, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// This position and later ones.
    Position(Position),
    /// Events recorded at or after this time.
    Time(Timestamp),
}

/// Parses `--from`: a position (`1200`) or an RFC 3339 time (`2025-09-01T08:00:00Z`).
pub fn parse_from(text: &str) -> Result<Start, String> {
    if let Ok(position) = text.parse::<Position>() {
        return Ok(Start::Position(position));
    }
    text.parse::<Timestamp>().map(Start::Time).map_err(|e| {
        format!("`{text}` is neither a position nor an RFC 3339 time (2025-09-01T08:00:00Z): {e}")
    })
}

/// A timestamp with millisecond precision in UTC, for tables.
pub fn short_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("7 days").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(human_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(human_duration(Duration::from_secs(90)), "90s");
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn from_is_a_position_or_a_time() {
        assert_eq!(parse_from("12"), Ok(Start::Position(12)));
        assert!(matches!(
            parse_from("2025-09-01T08:00:00Z"),
            Ok(Start::Time(_))
        ));
        assert!(parse_from("yesterday").is_err());
    }
}

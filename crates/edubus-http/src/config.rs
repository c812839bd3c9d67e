//! The `[http]` table of `edubus.toml`: listen address, limits, tokens and health thresholds.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// Configuration of the HTTP gateway; every field has a default, unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the server listens on (default `127.0.0.1:7400`).
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (default 1 MiB); larger ones get `413`.
    pub body_limit: usize,
    /// Requests handled at once (default 256); past it the server answers `429`.
    pub max_in_flight: usize,
    /// Seconds a `429` asks the client to wait in `Retry-After` (default 1).
    pub retry_after_secs: u64,
    /// API tokens (`[[http.token]]`); with none configured, authentication is off.
    #[serde(rename = "token")]
    pub tokens: Vec<TokenConfig>,
    /// When `/health/events` reports `degraded` or `failing`.
    pub health: HealthThresholds,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            body_limit: 1024 * 1024,
            max_in_flight: 256,
            retry_after_secs: 1,
            tokens: Vec::new(),
            health: HealthThresholds::default(),
        }
    }
}

impl HttpConfig {
    /// Sets the listen address.
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// Sets the body size limit in bytes.
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets how many requests are handled at once.
    pub fn with_max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests;
        self
    }

    /// Adds an API token.
    pub fn with_token(mut self, token: TokenConfig) -> Self {
        self.tokens.push(token);
        self
    }

    /// Sets the health thresholds.
    pub fn with_health(mut self, health: HealthThresholds) -> Self {
        self.health = health;
        self
    }
}

/// One API token: a name for logs and audit records, the SHA-256 of the secret, its scopes.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (`attendance-api`); recorded as the actor of DLQ actions.
    pub name: String,
    /// `sha256:<64 hex digits>` of the secret, as made by [`crate::token::hash`].
    pub hash: String,
    /// `publish:<pattern>`, `read:<pattern>`, `subscribe:<pattern>`, `pii:read` or `admin`.
    pub scopes: Vec<String>,
}

impl TokenConfig {
    /// A token named `name` with the hash of its secret and its scopes.
    pub fn new(name: impl Into<String>, hash: impl Into<String>, scopes: &[&str]) -> Self {
        Self {
            name: name.into(),
            hash: hash.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

// The hash is not the secret, but there is no reason to print it either.
impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("hash", &"<hidden>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Thresholds of `/health/events`; the defaults are seed 002's alerting rules.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthThresholds {
    /// A subscription lagging by more events than this is degraded (default 1000).
    pub max_lag: u64,
    /// Failed attempts above this share of attempts is degraded (default 0.05, i.e. 5%).
    pub max_failure_ratio: f64,
    /// A mean processing time above this many seconds is degraded (default 5).
    pub max_processing_seconds: f64,
    /// Whether a dead-letter queue that grew within the window is degraded (default true).
    pub dlq_growth: bool,
    /// Seconds over which rates, failures and DLQ growth are measured (default 300).
    pub window_secs: u64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            max_lag: 1000,
            max_failure_ratio: 0.05,
            max_processing_seconds: 5.0,
            dlq_growth: true,
            window_secs: 300,
        }
    }
}

/// Parses `250ms`, `90s`, `15m`, `12h`, `7d`, `2w` (or plain seconds) into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 250ms, 90s, 15m, 12h or 7d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        other => return Err(format!("unknown unit `{other}`: use ms, s, m, h, d or w")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

/// Reads a duration written as text (`"100ms"`, `"30s"`) with [`parse_duration`].
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_milliseconds_to_weeks() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("7 days").is_err());
        assert!(parse_duration("ms").is_err());
    }
}

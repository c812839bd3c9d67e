//! API tokens and scopes: secrets are kept as SHA-256 hashes and compared in constant time.

use edubus_core::{Error, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::TokenConfig;

/// Prefix of a stored token hash.
const PREFIX: &str = "sha256:";

/// The hash to put in the configuration for `secret`: `sha256:<64 hex digits>`.
pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{hex}")
}

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Publish events whose canonical type matches the pattern.
    Publish(String),
    /// Read stored events whose type matches the pattern.
    Read(String),
    /// Follow the live stream of events whose type matches the pattern.
    Subscribe(String),
    /// See fields the catalog marks as personal data.
    PiiRead,
    /// Everything, including dead-letter management.
    Admin,
}

impl Scope {
    /// Parses `publish:<pattern>`, `read:<pattern>`, `subscribe:<pattern>`, `pii:read`, `admin`.
    pub fn parse(s: &str) -> Result<Self> {
        let scope = match s.split_once(':') {
            _ if s == "admin" => Self::Admin,
            _ if s == "pii:read" => Self::PiiRead,
            Some(("publish", p)) if !p.is_empty() => Self::Publish(p.to_owned()),
            Some(("read", p)) if !p.is_empty() => Self::Read(p.to_owned()),
            Some(("subscribe", p)) if !p.is_empty() => Self::Subscribe(p.to_owned()),
            _ => {
                return Err(Error::invalid(format!(
                    "unknown scope `{s}`: expected publish:<pattern>, read:<pattern>, \
                     subscribe:<pattern>, pii:read or admin"
                )));
            }
        };
        Ok(scope)
    }
}

/// An action on events of one type, checked against a caller's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST /v1/events`.
    Publish,
    /// Queries of stored events.
    Read,
    /// The live stream.
    Subscribe,
}

/// Who made a request, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`anonymous` when authentication is off).
    pub name: String,
    scopes: Vec<Scope>,
}

impl Caller {
    /// The caller when no token is configured: allowed everything.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            scopes: vec![Scope::Admin],
        }
    }

    /// Whether the caller may do `action` on events of type `event_type`.
    pub fn may(&self, action: Action, event_type: &str) -> bool {
        self.scopes.iter().any(|s| match (s, action) {
            (Scope::Admin, _) => true,
            (Scope::Publish(p), Action::Publish)
            | (Scope::Read(p), Action::Read)
            | (Scope::Subscribe(p), Action::Subscribe) => matches(p, event_type),
            _ => false,
        })
    }

    /// Whether the caller may do `action` on at least some event types.
    pub fn may_any(&self, action: Action) -> bool {
        self.scopes.iter().any(|s| {
            matches!(
                (s, action),
                (Scope::Admin, _)
                    | (Scope::Publish(_), Action::Publish)
                    | (Scope::Read(_), Action::Read)
                    | (Scope::Subscribe(_), Action::Subscribe)
            )
        })
    }

    /// Whether the caller sees personal data.
    pub fn sees_pii(&self) -> bool {
        self.is_admin() || self.scopes.contains(&Scope::PiiRead)
    }

    /// Whether the caller has the `admin` scope.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The configured tokens, parsed: digest and caller per token.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<([u8; 32], Caller)>,
}

impl Tokens {
    /// Parses the configured tokens; a malformed hash or scope is an [`Error::Invalid`].
    pub fn new(config: &[TokenConfig]) -> Result<Self> {
        let tokens = config
            .iter()
            .map(|t| {
                let digest = parse_hash(&t.hash).ok_or_else(|| {
                    Error::invalid(format!(
                        "token `{}`: hash must be `sha256:` followed by 64 hex digits",
                        t.name
                    ))
                })?;
                let scopes = t
                    .scopes
                    .iter()
                    .map(|s| Scope::parse(s))
                    .collect::<Result<_>>();
                let scopes =
                    scopes.map_err(|e| Error::invalid(format!("token `{}`: {e}", t.name)))?;
                Ok((
                    digest,
                    Caller {
                        name: t.name.clone(),
                        scopes,
                    },
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self { tokens })
    }

    /// Whether authentication is on (at least one token is configured).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The caller presenting `secret`, if it is a configured token. Every token is compared,
    /// in constant time, so the time taken says nothing about which one matched.
    pub fn authenticate(&self, secret: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for (stored, caller) in &self.tokens {
            if bool::from(stored.ct_eq(&digest)) && found.is_none() {
                found = Some(caller.clone());
            }
        }
        found
    }
}

fn parse_hash(hash: &str) -> Option<[u8; 32]> {
    let hex = hash.strip_prefix(PREFIX)?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_prefixes_suffixes_and_exact_names() {
        assert!(matches("*", "attendance.marked"));
        assert!(matches("attendance.*", "attendance.marked"));
        assert!(!matches("attendance.*", "grading.updated"));
        assert!(matches("attendance.marked", "attendance.marked"));
        assert!(!matches("attendance.marked", "attendance.marked.x"));
        assert!(matches("*.marked", "attendance.marked"));
        assert!(matches("a*c*e", "abcde"));
        assert!(!matches("a*c*e", "abcd"));
    }

    #[test]
    fn a_hashed_secret_authenticates_and_others_do_not() {
        let config = TokenConfig::new("svc", hash("s3cret"), &["read:*", "pii:read"]);
        let tokens = Tokens::new(&[config]).unwrap();
        let caller = tokens.authenticate("s3cret").expect("known secret");
        assert_eq!(caller.name, "svc");
        assert!(caller.may(Action::Read, "attendance.marked"));
        assert!(!caller.may(Action::Publish, "attendance.marked"));
        assert!(caller.sees_pii());
        assert!(tokens.authenticate("s3cret ").is_none());
    }

    #[test]
    fn malformed_hashes_and_scopes_are_refused() {
        let bad_hash = TokenConfig::new("a", "md5:00", &["admin"]);
        assert!(Tokens::new(&[bad_hash]).is_err());
        let bad_scope = TokenConfig::new("b", hash("x"), &["write:*"]);
        let err = Tokens::new(&[bad_scope]).unwrap_err().to_string();
        assert!(err.contains("unknown scope `write:*`"), "{err}");
    }
}

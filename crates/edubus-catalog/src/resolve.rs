//! Name resolution: a canonical name, an alias or a topic name to its catalog entry.

use std::fmt;

use crate::ir::{Catalog, EventSpec};

/// How a name was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The canonical name (gives the latest version).
    Canonical,
    /// An alias (pins the version it is declared on).
    Alias,
    /// The stream (topic) name.
    Topic,
}

/// A resolved name.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    /// The entry.
    pub event: &'a EventSpec,
    /// How the name matched.
    pub via: Via,
}

/// A name that resolves to no entry, or to several.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No entry has that name, alias or topic.
    #[error("unknown event `{name}`; nearest: {}; the catalog has {total} events", nearest.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
        /// The closest known names, best first.
        nearest: Vec<String>,
        /// How many distinct events the catalog holds.
        total: usize,
    },
    /// A topic shared by several events.
    #[error("topic `{name}` carries several events: {}", candidates.join(", "))]
    Ambiguous {
        /// The topic asked for.
        name: String,
        /// The events on it.
        candidates: Vec<String>,
    },
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Canonical => "canonical name",
            Self::Alias => "alias",
            Self::Topic => "topic",
        })
    }
}

/// Resolves `name`: canonical name first, then alias, then topic.
pub fn resolve<'a>(catalog: &'a Catalog, name: &str) -> Result<Resolved<'a>, ResolveError> {
    if let Some(event) = catalog.latest(name) {
        return Ok(Resolved {
            event,
            via: Via::Canonical,
        });
    }
    if let Some(event) = catalog
        .events()
        .find(|e| e.aliases.iter().any(|a| a == name))
    {
        return Ok(Resolved {
            event,
            via: Via::Alias,
        });
    }
    let on_topic: Vec<&EventSpec> = catalog.events().filter(|e| e.topic == name).collect();
    match on_topic.as_slice() {
        [] => Err(ResolveError::Unknown {
            name: name.to_string(),
            nearest: nearest(catalog, name, 3),
            total: catalog.names().len(),
        }),
        [one] => Ok(Resolved {
            event: one,
            via: Via::Topic,
        }),
        many if many.iter().all(|e| e.name == many[0].name) => Ok(Resolved {
            event: many
                .iter()
                .max_by_key(|e| e.version)
                .copied()
                .unwrap_or(many[0]),
            via: Via::Topic,
        }),
        many => Err(ResolveError::Ambiguous {
            name: name.to_string(),
            candidates: many.iter().map(|e| e.id()).collect(),
        }),
    }
}

/// The `n` known names (canonical names and aliases) closest to `name`, best first.
pub fn nearest(catalog: &Catalog, name: &str, n: usize) -> Vec<String> {
    let wanted = name.to_lowercase();
    let mut candidates: Vec<(usize, &str)> = catalog
        .events()
        .flat_map(|e| std::iter::once(e.name.as_str()).chain(e.aliases.iter().map(String::as_str)))
        .map(|c| (strsim::damerau_levenshtein(&wanted, &c.to_lowercase()), c))
        .collect();
    candidates.sort_unstable();
    candidates.dedup_by(|a, b| a.1 == b.1);
    candidates
        .into_iter()
        .take(n)
        .map(|(_, c)| c.to_string())
        .collect()
}

impl Catalog {
    /// The entry `name` resolves to (canonical name, alias or topic).
    pub fn resolve(&self, name: &str) -> Result<&EventSpec, ResolveError> {
        resolve(self, name).map(|r| r.event)
    }
}

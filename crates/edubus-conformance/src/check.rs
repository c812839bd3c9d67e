//! Polling with deadlines and the checks of ordering and exactly-once effects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use anyhow::bail;

use crate::events::{Published, key};
use crate::harness::Observation;

/// How often [`eventually`] probes.
const POLL: Duration = Duration::from_millis(20);

/// Probes every 20 ms until `probe` returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    eventually_every(what, timeout, POLL, probe).await
}

/// Probes every `every` until `probe` returns `Some`, failing with `what` after `timeout`.
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Sequence numbers per key, in the order given.
fn by_key<'a>(items: impl Iterator<Item = (&'a str, u64)>) -> BTreeMap<&'a str, Vec<u64>> {
    let mut map: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (k, seq) in items {
        map.entry(k).or_default().push(seq);
    }
    map
}

/// Checks that every published event was recorded exactly once and, per key, in publish order
/// (the order of each event's first record, so a duplicate is not also reported as disorder).
pub fn check_in_order(observations: &[Observation], published: &[Published]) -> anyhow::Result<()> {
    let mut published = published.to_vec();
    published.sort_by_key(|p| p.position);
    let keys: Vec<String> = published.iter().map(|p| key(p.key)).collect();
    let expected = by_key(
        keys.iter()
            .map(String::as_str)
            .zip(published.iter().map(|p| p.seq)),
    );
    let mut first = HashSet::new();
    let firsts = observations
        .iter()
        .filter(|o| first.insert(o.event_id.as_str()));
    let actual = by_key(firsts.map(|o| (o.key.as_str(), o.seq)));
    let disorder: Vec<_> = expected
        .iter()
        .map(|(k, want)| (k, want, actual.get(k).cloned().unwrap_or_default()))
        .filter(|(_, want, got)| got != *want)
        .collect();
    let once = check_exactly_once(observations, &published);
    match (disorder.first(), once) {
        (None, once) => once,
        (Some((k, want, got)), once) => bail!(
            "{} of {} keys recorded out of publish order; key {k}: recorded {got:?}, \
             published {want:?}{}",
            disorder.len(),
            expected.len(),
            once.err()
                .map(|e| format!("; also: {e}"))
                .unwrap_or_default()
        ),
    }
}

/// Checks that every published event was recorded exactly once, and nothing else was.
pub fn check_exactly_once(
    observations: &[Observation],
    published: &[Published],
) -> anyhow::Result<()> {
    let counts = counts(observations);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = published
        .iter()
        .filter(|p| !counts.contains_key(&p.id))
        .map(|p| (p.key, p.seq))
        .collect();
    let unknown = counts.len() + missing.len() - published.len();
    if twice.is_empty() && missing.is_empty() && unknown == 0 {
        return Ok(());
    }
    bail!(
        "{} events published, {} observations: {} events recorded more than once (e.g. {:?}), \
         {} never recorded (e.g. (key, seq) {:?}), {unknown} recorded but not published",
        published.len(),
        observations.len(),
        twice.len(),
        twice.first(),
        missing.len(),
        missing.first(),
    )
}

/// How many observations each event id has.
pub fn counts(observations: &[Observation]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for o in observations {
        *counts.entry(o.event_id.clone()).or_default() += 1;
    }
    counts
}

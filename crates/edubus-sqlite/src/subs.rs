//! Subscriptions as stored: registration and look-up, shared by every role.

use edubus_core::{Error, Result, StartFrom, SubscriptionSpec};
use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::clock::{int, now_micros, uint};
use crate::counts;
use crate::error::{Db, from_json};
use crate::store::head_position;

/// SQL matching the events (table `alias`) of a subscription receiving `types`, every type
/// when empty; the names are bound from `?first` on, see [`with_types`].
///
/// Plain comparisons: a `json_each` over the stored list set up a table-valued function (some
/// 30,000 instructions) on every run of a statement, i.e. on every fetch and settlement. The
/// unary `+` keeps the planner on the position indexes.
pub(crate) fn type_filter(alias: &str, first: usize, types: &[String]) -> String {
    if types.is_empty() {
        return "1".to_owned();
    }
    let terms: Vec<String> = (first..first + types.len())
        .map(|i| format!("+{alias}.type = ?{i}"))
        .collect();
    format!("({})", terms.join(" OR "))
}

/// `args` then `types`: the parameters of a statement whose [`type_filter`] starts right
/// after `args`.
pub(crate) fn with_types<'a>(args: &[&'a dyn ToSql], types: &'a [String]) -> Vec<&'a dyn ToSql> {
    let mut all = args.to_vec();
    all.extend(types.iter().map(|t| t as &dyn ToSql));
    all
}

/// A stored subscription.
#[derive(Debug, Clone)]
pub(crate) struct Sub {
    /// Row id, used by every other table.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Event types received (empty: all).
    pub types: Vec<String>,
    /// `types` as stored (a JSON array).
    pub types_json: String,
    /// Per-key ordering.
    pub ordered: bool,
    /// Where it started.
    pub start: StartFrom,
    /// Events at or below this position precede the subscription.
    pub start_position: u64,
}

impl Sub {
    /// Whether the subscription receives events of `event_type`.
    pub(crate) fn receives(&self, event_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == event_type)
    }

    /// The registration as the trait reports it.
    pub(crate) fn spec(&self) -> SubscriptionSpec {
        SubscriptionSpec {
            name: self.name.clone(),
            types: self.types.clone(),
            ordered: self.ordered,
            start: self.start,
        }
    }
}

const COLUMNS: &str = "id, name, types, ordered, start, start_position";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Sub> {
    let start: String = row.get(4)?;
    Ok(Sub {
        id: row.get(0)?,
        name: row.get(1)?,
        types: Vec::new(),
        types_json: row.get(2)?,
        ordered: row.get(3)?,
        start: if start == "end" {
            StartFrom::End
        } else {
            StartFrom::Beginning
        },
        start_position: uint(row.get(5)?),
    })
}

fn parse_types(mut sub: Sub) -> Result<Sub> {
    sub.types = serde_json::from_str(&sub.types_json).map_err(|e| from_json("types", e))?;
    Ok(sub)
}

/// The subscription named `name`, or `NotFound`.
pub(crate) fn load(conn: &Connection, name: &str) -> Result<Sub> {
    let sql = format!("SELECT {COLUMNS} FROM subscriptions WHERE name = ?1");
    let found = conn
        .prepare_cached(&sql)
        .and_then(|mut st| st.query_row([name], from_row).optional())
        .db()?;
    let sub = found.ok_or_else(|| Error::not_found("subscription", name))?;
    parse_types(sub)
}

/// Every subscription, by name.
pub(crate) fn load_all(conn: &Connection) -> Result<Vec<Sub>> {
    let sql = format!("SELECT {COLUMNS} FROM subscriptions ORDER BY name");
    let mut st = conn.prepare_cached(&sql).db()?;
    let rows = st.query_map([], from_row).db()?;
    let mut subs = Vec::new();
    for row in rows {
        subs.push(parse_types(row.db()?)?);
    }
    Ok(subs)
}

/// Creates the subscription with a cursor row per partition, or updates its types and
/// ordering. A new `StartFrom::End` subscription starts at the current head.
pub(crate) fn register(conn: &Connection, spec: &SubscriptionSpec, partitions: u32) -> Result<()> {
    if spec.name.trim().is_empty() {
        return Err(Error::invalid("a subscription needs a name"));
    }
    let types = serde_json::to_string(&spec.types).map_err(|e| from_json("types", e))?;
    let before = load(conn, &spec.name).ok().map(|sub| sub.types_json);
    let (start, start_position) = match spec.start {
        StartFrom::Beginning => ("beginning", 0),
        StartFrom::End => ("end", head_position(conn)?),
    };
    conn.prepare_cached(
        "INSERT INTO subscriptions (name, types, ordered, start, start_position, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET types = excluded.types, ordered = excluded.ordered",
    )
    .and_then(|mut st| {
        st.execute(params![
            spec.name,
            types,
            spec.ordered,
            start,
            int(start_position),
            now_micros()
        ])
    })
    .db()?;
    let sub = load(conn, &spec.name)?;
    let mut st = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO partitions (subscription_id, partition, cursor, fetched_upto)
             VALUES (?1, ?2, ?3, ?3)",
        )
        .db()?;
    for partition in 0..partitions {
        st.execute(params![sub.id, partition, int(sub.start_position)])
            .db()?;
    }
    if before.as_deref() != Some(types.as_str()) {
        counts::recount(conn, sub.id, &sub.types, sub.start_position)?;
    }
    Ok(())
}

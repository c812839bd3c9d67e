//! The audit trail: one append-only row per administrative action.

use edubus_core::{AuditEntry, Result};
use serde_json::Value;
use tokio_postgres::types::Type;

use crate::PgStore;
use crate::error::Db;
use crate::store::DEFAULT_READ_LIMIT;

impl PgStore {
    /// Records an action and returns its entry id.
    pub async fn record_audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        detail: Value,
    ) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_typed_one(
                "INSERT INTO audit (actor, action, subject, detail) VALUES ($1, $2, $3, $4)
                 RETURNING id",
                &[
                    (&actor, Type::TEXT),
                    (&action, Type::TEXT),
                    (&subject, Type::TEXT),
                    (&detail, Type::JSONB),
                ],
            )
            .await
            .db()?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Entries with an id above `after`, oldest first, at most `limit` (0: a default page).
    pub async fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let limit = if limit == 0 {
            DEFAULT_READ_LIMIT
        } else {
            limit
        };
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows = client
            .query_typed(
                "SELECT id, at, actor, action, subject, detail FROM audit
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[(&after, Type::INT8), (&limit, Type::INT8)],
            )
            .await
            .db()?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: u64::try_from(r.try_get::<_, i64>(0).db()?).unwrap_or(0),
                    at: r.try_get(1).db()?,
                    actor: r.try_get(2).db()?,
                    action: r.try_get(3).db()?,
                    subject: r.try_get(4).db()?,
                    detail: r.try_get(5).db()?,
                })
            })
            .collect()
    }
}

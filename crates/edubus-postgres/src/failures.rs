//! Failed delivery attempts, kept so a delivery's history and count survive crashes.

use edubus_core::{Attempt, Position, Result};
use tokio_postgres::types::Type;

use crate::PgStore;
use crate::error::Db;

fn pos(position: Position) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Records a failed attempt of delivering the event at `position` to `subscription`.
    pub async fn record_failure(
        &self,
        subscription: &str,
        position: Position,
        attempt: &Attempt,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .query_typed(
                "INSERT INTO failures (subscription, position, number, at, consumer, error)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    (&subscription, Type::TEXT),
                    (&pos(position), Type::INT8),
                    (&i64::from(attempt.number), Type::INT8),
                    (&attempt.at, Type::TIMESTAMPTZ),
                    (&attempt.consumer, Type::TEXT),
                    (&attempt.error, Type::TEXT),
                ],
            )
            .await
            .db()?;
        Ok(())
    }

    /// The failed attempts recorded for a delivery, oldest first.
    pub async fn failures(&self, subscription: &str, position: Position) -> Result<Vec<Attempt>> {
        let client = self.client().await?;
        let rows = client
            .query_typed(
                "SELECT number, at, consumer, error FROM failures
                 WHERE subscription = $1 AND position = $2 ORDER BY id",
                &[(&subscription, Type::TEXT), (&pos(position), Type::INT8)],
            )
            .await
            .db()?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    number: u32::try_from(r.try_get::<_, i64>(0).db()?).unwrap_or(u32::MAX),
                    at: r.try_get(1).db()?,
                    consumer: r.try_get(2).db()?,
                    error: r.try_get(3).db()?,
                })
            })
            .collect()
    }

    /// Forgets the failures of these deliveries (once settled); returns how many were removed.
    pub async fn clear_failures(&self, subscription: &str, positions: &[Position]) -> Result<u64> {
        let positions: Vec<i64> = positions.iter().copied().map(pos).collect();
        let client = self.client().await?;
        let rows = client
            .query_typed(
                "WITH gone AS (DELETE FROM failures
                     WHERE subscription = $1 AND position = ANY($2) RETURNING 1)
                 SELECT count(*) FROM gone",
                &[(&subscription, Type::TEXT), (&positions, Type::INT8_ARRAY)],
            )
            .await
            .db()?;
        Ok(rows
            .first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }
}

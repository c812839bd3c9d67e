//! Connections: the shared multiplexed one (with reconnects) and dedicated ones for blocking
//! reads, which must not share a connection nor have a response timeout.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use edubus_core::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Pipeline, RedisError, Value};

/// Replies of the shared connection must come within this; blocking reads have no limit.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared connection: multiplexed, reconnecting with backoff after a restart.
pub(crate) async fn manager(client: &Client) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(6)
        .set_max_delay(Duration::from_secs(2));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| error("connect", &e))
}

/// Connections for `XREADGROUP ... BLOCK`: one per concurrent blocking read, reused.
pub(crate) struct Blocking {
    client: Client,
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl Blocking {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            idle: Mutex::default(),
        }
    }

    /// An idle dedicated connection, or a new one.
    pub(crate) async fn take(&self) -> Result<MultiplexedConnection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| error("connect", &e))
    }

    /// Returns a connection whose last command completed; a failed one is dropped instead.
    pub(crate) fn give_back(&self, conn: MultiplexedConnection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

/// Runs a pipeline and returns each command's own result (an error reply fails only its
/// command), failing as a whole only when the connection does.
pub(crate) async fn each(
    conn: &mut ConnectionManager,
    mut pipe: Pipeline,
) -> Result<Vec<redis::RedisResult<Value>>> {
    pipe.ignore_errors()
        .query_async(conn)
        .await
        .map_err(|e| error("pipeline", &e))
}

/// A Redis failure as an edubus error: connection trouble is `Unavailable` (retry), a
/// refused command is `Internal`.
pub(crate) fn error(what: &str, e: &RedisError) -> Error {
    let message = format!("redis {what} failed");
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("LOADING" | "TRYAGAIN" | "BUSY" | "MASTERDOWN")
        )
    {
        Error::unavailable(message, e.to_string())
    } else {
        Error::internal(message, e.to_string())
    }
}

//! Per-test isolation on a shared cluster: a schema or a whole database for each test.

use tokio_postgres::{Client, NoTls};

use crate::PgServer;

/// A schema made for one test; its URL sets `search_path` to it, so unqualified names land there.
#[derive(Debug, Clone)]
pub struct PgSchema {
    name: String,
    url: String,
}

impl PgSchema {
    /// The schema's name: `t_<test name>_<n>`, lower case, at most 63 bytes.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL whose sessions use this schema (`options=-c search_path=<name>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a connection whose `search_path` is this schema.
    ///
    /// # Panics
    /// If the cluster refuses the connection.
    pub async fn connect(&self) -> Client {
        connect_url(&self.url).await
    }
}

/// A database made for one test, for code that needs a whole database (extensions, `public`).
#[derive(Debug, Clone)]
pub struct PgDatabase {
    name: String,
    url: String,
}

impl PgDatabase {
    /// The database's name: `t_<name>_<n>`, lower case, at most 63 bytes.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a connection to this database.
    ///
    /// # Panics
    /// If the cluster refuses the connection.
    pub async fn connect(&self) -> Client {
        connect_url(&self.url).await
    }
}

impl PgServer {
    /// Opens a connection to the `postgres` database as superuser; its driver task is spawned.
    ///
    /// # Panics
    /// If the cluster refuses the connection.
    pub async fn connect(&self) -> Client {
        connect_url(&self.url()).await
    }

    /// Creates a fresh schema for `test_name`, so tests sharing this cluster cannot collide.
    ///
    /// # Panics
    /// If the cluster refuses the connection or the `CREATE SCHEMA`.
    pub async fn schema(&self, test_name: &str) -> PgSchema {
        let name = unique_identifier(test_name);
        self.execute(&format!("CREATE SCHEMA \"{name}\"")).await;
        let url = format!("{}?options=-c%20search_path%3D{name}", self.url());
        PgSchema { name, url }
    }

    /// Creates a fresh, empty database named after `name`.
    ///
    /// # Panics
    /// If the cluster refuses the connection or the `CREATE DATABASE`.
    pub async fn fresh_database(&self, name: &str) -> PgDatabase {
        let name = unique_identifier(name);
        self.execute(&format!("CREATE DATABASE \"{name}\"")).await;
        PgDatabase {
            url: self.url_for(&name),
            name,
        }
    }

    async fn execute(&self, sql: &str) {
        let client = self.connect().await;
        if let Err(err) = client.batch_execute(sql).await {
            panic!(
                "`{sql}` failed on the test cluster at {}: {err}",
                self.url()
            );
        }
    }
}

/// Connects with tokio-postgres and spawns the connection's driver task on the current runtime.
async fn connect_url(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to the test PostgreSQL at {url}: {err}"));
    // The task ends when the client is dropped; an error there shows up in the client's calls.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// `t_<name>_<n>`: lower-case letters, digits and `_` only, unique in this process, short
/// enough for PostgreSQL's 63-byte identifiers.
fn unique_identifier(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("t_{cleaned}_{}", crate::next_id())
}

//! The conformance suite on the embedded SQLite backend.

use edubus_conformance::sqlite::SqliteHarness;

edubus_conformance::suite!(SqliteHarness::new(env!(
    "CARGO_BIN_EXE_edubus-conformance-worker"
)));

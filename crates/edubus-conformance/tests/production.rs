//! The conformance suite on the production deployment: PostgreSQL store and Redis Streams
//! transport, on real servers started by `edubus-testsupport`.

use edubus_conformance::production::ProductionHarness;

edubus_conformance::suite!(ProductionHarness::new(env!(
    "CARGO_BIN_EXE_edubus-conformance-worker"
)));

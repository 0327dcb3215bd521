//! Durability tests: many concurrent streams against tight caps, replayed through the engine; and a
//! real `claimsd` process killed with SIGKILL in the middle of a stream, then restarted. They run on
//! the backend `CLAIMS_TEST_BACKEND` names (SQLite by default, or PostgreSQL; see tests/common).
// A panic is a failed test; helpers outside `#[test]` functions may panic too. The shared harness
// has an eight-argument `claim(...)`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::too_many_arguments)]

#[path = "../common/mod.rs"]
mod common;

mod checkpoint;
mod concurrency;
mod crash;
mod drain;
mod migration;
mod support;

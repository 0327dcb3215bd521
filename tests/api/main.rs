//! gRPC API tests against a real server on loopback with a real database: SQLite, or PostgreSQL with
//! `CLAIMS_TEST_BACKEND=postgres` (see tests/common; `scripts/test` runs them on both).
// A panic is a failed test; harness helpers outside `#[test]` functions may panic too, and the shared
// harness has an eight-argument `claim(...)`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::too_many_arguments)]

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod bench;
mod cache;
mod examples;
mod health;
mod idempotency;
mod members;
mod reports;
mod smoke;
mod stream;
mod support;
mod terms;

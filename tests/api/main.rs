//! gRPC API tests against a real server on loopback with a real SQLite database.

#[path = "../common/mod.rs"]
mod common;

mod smoke;

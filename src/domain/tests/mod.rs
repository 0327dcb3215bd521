//! Fixed tests of the engine: the worked examples of ADJUDICATION.md to the fen, one test per reason
//! code, validation of terms and claims, and every example terms file.
//!
//! Test code may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod examples;
mod fixtures;
mod props;
mod validation;

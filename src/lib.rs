//! claims: one-stop settlement of health insurance claims for low-income households.
//!
//! `domain` is the pure adjudication engine; the service layers around it are built with the default
//! `server` feature.

pub mod domain;

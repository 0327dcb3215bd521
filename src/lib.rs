//! claims: one-stop settlement of health insurance claims for low-income households.
//!
//! `domain` is the pure adjudication engine; the service layers around it are built with the default
//! `server` feature.

pub mod domain;

/// Code generated from `proto/claims/v1/*.proto`.
#[cfg(feature = "server")]
#[allow(clippy::all, clippy::pedantic, missing_docs)] // Generated code is not ours to lint.
pub mod proto {
    tonic::include_proto!("claims.v1");

    /// The file descriptor set served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("claims_descriptor");
}

#[cfg(feature = "server")]
pub mod api;

#[cfg(feature = "server")]
pub mod store;

#[cfg(feature = "server")]
pub mod ledger;

#[cfg(feature = "server")]
pub mod startup;

#[cfg(feature = "server")]
pub mod telemetry;

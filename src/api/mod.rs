//! The gRPC edge: proto <-> domain conversion, error mapping and the tonic services.

pub mod bench;
pub mod convert;
pub mod error;
pub mod member;
pub mod report;
pub mod settlement;
pub mod terms;

//! The adjudication engine: terms, claims, members, accumulators and the settlement of one claim.
//!
//! Pure: no IO, no async, no clock. Depends on neither tokio, tonic nor sqlx, which
//! `cargo test --no-default-features --lib` proves by building this module alone.

pub mod accumulators;
pub mod claim;
pub mod error;
pub mod ids;
pub mod kinds;
pub mod member;
pub mod money;
pub mod report;
pub mod settle;
pub mod terms;

#[cfg(test)]
mod tests;

pub use accumulators::{AccumulatorChange, AccumulatorChanges, AccumulatorView, Accumulators, BenefitUsage};
pub use claim::{Claim, ClaimDraft, LineDraft, UpstreamDraft};
pub use error::{FieldError, FieldErrors};
pub use ids::{BenefitCode, ClaimId, HospitalId, MemberId, ProductCode};
pub use kinds::{
    Category, Cause, DeductibleBasis, ExpenseClass, OutpatientKind, ProductKind, Reason, UpstreamKind, VisitKind,
};
pub use member::{CategoryHistory, Member};
pub use money::{format_money, round_fen, Money, Ratio};
pub use report::LossRatio;
pub use settle::{layers_for, settle, settle_on, LayerResult, Settlement};
pub use terms::{format_date, parse_date, ApplyOutcome, Catalogue, Period, PeriodKey, Terms, VersionedTerms};

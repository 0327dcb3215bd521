//! Ledger and validation errors as gRPC statuses, decided in one exhaustive match.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::convert::violations;
use crate::domain::FieldErrors;
use crate::ledger::LedgerError;
use crate::proto;

/// The status of a request with bad fields: INVALID_ARGUMENT with a google.rpc.BadRequest naming
/// each field, and the same list in the message (one `field: problem` a line) for clients that do
/// not read details.
pub fn invalid(errors: &FieldErrors) -> Status {
    with_fields(Code::InvalidArgument, "invalid request", errors)
}

fn with_fields(code: Code, headline: &str, errors: &FieldErrors) -> Status {
    let mut details = ErrorDetails::new();
    for e in errors.iter() {
        details.add_bad_request_violation(e.field.clone(), e.message.clone());
    }
    Status::with_error_details(code, format!("{headline}:\n{errors}"), details)
}

/// The gRPC status of a ledger error.
pub fn status(e: &LedgerError) -> Status {
    match e {
        LedgerError::Invalid(errors) => invalid(errors),
        LedgerError::MemberNotFound => with_fields(
            Code::NotFound,
            "member not found",
            &FieldErrors::single(
                "member_id",
                "no member with this id is enrolled; import the roster first",
            ),
        ),
        LedgerError::Conflict { .. } => Status::already_exists(e.to_string()),
        LedgerError::NotFound(_) => Status::not_found(e.to_string()),
        LedgerError::AlreadyReversed { .. } => Status::failed_precondition(e.to_string()),
        LedgerError::Unavailable(_) => Status::unavailable(e.to_string()),
        LedgerError::Internal(_) => Status::internal(e.to_string()),
    }
}

/// The in-band error of a stream reply, with the same code and fields as the unary status.
pub fn detail(status: &Status) -> proto::ErrorDetail {
    let fields = status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| proto::FieldViolation {
                    field: v.field,
                    description: v.description,
                })
                .collect()
        })
        .unwrap_or_default();
    proto::ErrorDetail {
        code: status.code() as i32,
        message: status.message().to_owned(),
        violations: fields,
    }
}

pub fn detail_of_fields(errors: &FieldErrors) -> proto::ErrorDetail {
    proto::ErrorDetail {
        code: Code::InvalidArgument as i32,
        message: format!("invalid request:\n{errors}"),
        violations: violations(errors),
    }
}

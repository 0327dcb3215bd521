//! Proto messages <-> domain types. Proto types never reach the domain: claims become
//! [`ClaimDraft`]s (text fields) and go through the domain's one validation pass.

use rust_decimal::Decimal;

use crate::domain::{self, format_date, format_money, ClaimDraft, FieldErrors, LineDraft, UpstreamDraft};
use crate::proto;

/// The domain spelling of a proto enum value: its proto name without the type prefix, "" for
/// UNSPECIFIED (the domain applies its default or says the field is required), and a name that no
/// domain vocabulary holds for a number the proto does not define, so the domain reports it.
fn enum_name(proto_name: Option<&str>, prefix: &str, value: i32) -> String {
    match proto_name {
        Some(name) => {
            let bare = name.strip_prefix(prefix).unwrap_or(name);
            if bare == "UNSPECIFIED" {
                String::new()
            } else {
                bare.to_owned()
            }
        }
        None => format!("#{value}"),
    }
}

macro_rules! enum_text {
    ($fn_name:ident, $ty:ty, $prefix:literal) => {
        pub fn $fn_name(value: i32) -> String {
            enum_name(
                <$ty>::try_from(value).ok().map(|v| v.as_str_name()),
                $prefix,
                value,
            )
        }
    };
}

enum_text!(visit_kind_text, proto::VisitKind, "VISIT_KIND_");
enum_text!(outpatient_kind_text, proto::OutpatientKind, "OUTPATIENT_KIND_");
enum_text!(cause_text, proto::Cause, "CAUSE_");
enum_text!(expense_class_text, proto::ExpenseClass, "EXPENSE_CLASS_");
enum_text!(upstream_kind_text, proto::UpstreamKind, "UPSTREAM_KIND_");
enum_text!(category_text, proto::Category, "CATEGORY_");
enum_text!(reason_text, proto::Reason, "REASON_");
enum_text!(apply_outcome_text, proto::ApplyOutcome, "APPLY_OUTCOME_");

/// Looks a domain spelling up as a proto enum value.
macro_rules! enum_value {
    ($fn_name:ident, $ty:ty, $prefix:literal) => {
        pub fn $fn_name(text: &str) -> Option<i32> {
            if text.is_empty() {
                return Some(0);
            }
            <$ty>::from_str_name(&format!("{}{}", $prefix, text)).map(|v| v as i32)
        }
    };
}

enum_value!(visit_kind_value, proto::VisitKind, "VISIT_KIND_");
enum_value!(outpatient_kind_value, proto::OutpatientKind, "OUTPATIENT_KIND_");
enum_value!(cause_value, proto::Cause, "CAUSE_");
enum_value!(expense_class_value, proto::ExpenseClass, "EXPENSE_CLASS_");
enum_value!(upstream_kind_value, proto::UpstreamKind, "UPSTREAM_KIND_");
enum_value!(category_value, proto::Category, "CATEGORY_");
enum_value!(reason_value, proto::Reason, "REASON_");
enum_value!(product_kind_value, proto::ProductKind, "PRODUCT_KIND_");

pub fn draft_from_request(r: &proto::ClaimRequest) -> ClaimDraft {
    ClaimDraft {
        claim_id: r.claim_id.clone(),
        hospital_id: r.hospital_id.clone(),
        member_id: r.member_id.clone(),
        service_date: r.service_date.clone(),
        visit_kind: visit_kind_text(r.visit_kind),
        outpatient_kind: outpatient_kind_text(r.outpatient_kind),
        cause: cause_text(r.cause),
        lines: r
            .lines
            .iter()
            .map(|l| LineDraft {
                code: l.code.clone(),
                expense_class: expense_class_text(l.expense_class),
                amount: l.amount.clone(),
            })
            .collect(),
        upstream: r
            .upstream
            .iter()
            .map(|u| UpstreamDraft {
                kind: upstream_kind_text(u.kind),
                amount: u.amount.clone(),
            })
            .collect(),
    }
}

/// A draft (as read from a JSON Lines file) as a request; enum names no proto value holds are
/// reported by field, as the server would.
pub fn request_from_draft(d: &ClaimDraft) -> Result<proto::ClaimRequest, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut value = |field: String, text: &str, f: fn(&str) -> Option<i32>| match f(text) {
        Some(v) => v,
        None => {
            errors.push(field, format!("unknown value {text:?}"));
            0
        }
    };
    let request = proto::ClaimRequest {
        claim_id: d.claim_id.clone(),
        hospital_id: d.hospital_id.clone(),
        member_id: d.member_id.clone(),
        service_date: d.service_date.clone(),
        visit_kind: value("visit_kind".into(), &d.visit_kind, visit_kind_value),
        outpatient_kind: value("outpatient_kind".into(), &d.outpatient_kind, outpatient_kind_value),
        cause: value("cause".into(), &d.cause, cause_value),
        lines: d
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| proto::LineItem {
                code: l.code.clone(),
                expense_class: value(
                    format!("lines[{i}].expense_class"),
                    &l.expense_class,
                    expense_class_value,
                ),
                amount: l.amount.clone(),
            })
            .collect(),
        upstream: d
            .upstream
            .iter()
            .enumerate()
            .map(|(i, u)| proto::UpstreamPayment {
                kind: value(format!("upstream[{i}].kind"), &u.kind, upstream_kind_value),
                amount: u.amount.clone(),
            })
            .collect(),
    };
    errors.into_result(request)
}

fn money(d: Decimal) -> String {
    format_money(d)
}

pub fn settlement_to_proto(s: &domain::Settlement) -> proto::Settlement {
    proto::Settlement {
        claim_id: s.claim_id.to_string(),
        hospital_id: s.hospital_id.to_string(),
        member_id: s.member_id.to_string(),
        service_date: format_date(s.service_date),
        category: category_value(s.category.as_str()).unwrap_or_default(),
        total_cost: money(s.total_cost),
        upstream_total: money(s.upstream_total),
        payout_total: money(s.payout_total),
        out_of_pocket: money(s.out_of_pocket),
        layers: s
            .layers
            .iter()
            .map(|l| proto::LayerPayout {
                product_code: l.product.to_string(),
                period_start: format_date(l.period_start),
                period_end: format_date(l.period_end),
                terms_version: l.terms_version,
                layer_order: l.layer_order,
                benefit_code: l.benefit.as_ref().map(|b| b.to_string()).unwrap_or_default(),
                eligible: money(l.eligible),
                deductible_applied: money(l.deductible_applied),
                payout: money(l.payout),
                reasons: l
                    .reasons
                    .iter()
                    .map(|r| reason_value(r.as_str()).unwrap_or_default())
                    .collect(),
            })
            .collect(),
        reasons: s
            .reasons
            .iter()
            .map(|r| reason_value(r.as_str()).unwrap_or_default())
            .collect(),
    }
}

pub fn violations(errors: &FieldErrors) -> Vec<proto::FieldViolation> {
    errors
        .iter()
        .map(|e| proto::FieldViolation {
            field: e.field.clone(),
            description: e.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_round_trip_and_unknown_numbers_are_named() {
        assert_eq!(visit_kind_text(proto::VisitKind::Outpatient as i32), "OUTPATIENT");
        assert_eq!(visit_kind_text(0), "");
        assert_eq!(visit_kind_text(99), "#99");
        assert_eq!(
            visit_kind_value("NON_MEDICAL"),
            Some(proto::VisitKind::NonMedical as i32)
        );
        assert_eq!(
            category_value("DIBAO_MARGINAL"),
            Some(proto::Category::DibaoMarginal as i32)
        );
        assert_eq!(category_value("NOPE"), None);
        for r in domain::Reason::ALL {
            assert!(reason_value(r.as_str()).is_some_and(|v| v > 0), "{r}");
        }
        for c in domain::Category::ALL {
            assert!(category_value(c.as_str()).is_some_and(|v| v > 0), "{c}");
        }
        for k in domain::ProductKind::ALL {
            assert!(product_kind_value(k.as_str()).is_some_and(|v| v > 0), "{k}");
        }
    }
}

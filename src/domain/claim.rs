//! Claims as hospitals send them (`ClaimDraft`, all text) and as the engine sees them (`Claim`, typed).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::Date;

use super::error::FieldErrors;
use super::ids::{ClaimId, HospitalId, MemberId};
use super::kinds::{Cause, ExpenseClass, OutpatientKind, UpstreamKind, VisitKind};
use super::money::{format_money, Money, AMOUNT_MAX};
use super::terms::{format_date, parse_date};

/// The most line items one claim may carry. A long inpatient stay itemised by day stays well below.
pub const LINES_MAX: usize = 2_000;
/// The longest line item code.
pub const LINE_CODE_LEN_MAX: usize = 64;

/// A claim as received: every field is text, so that one validation pass can name every bad field,
/// whether the claim came over gRPC (enums spelled by name) or from a JSON Lines file.
/// An empty string means "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimDraft {
    pub claim_id: String,
    pub hospital_id: String,
    pub member_id: String,
    pub service_date: String,
    pub visit_kind: String,
    pub outpatient_kind: String,
    pub cause: String,
    pub lines: Vec<LineDraft>,
    pub upstream: Vec<UpstreamDraft>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineDraft {
    pub code: String,
    pub expense_class: String,
    pub amount: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamDraft {
    pub kind: String,
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line {
    pub code: String,
    pub class: ExpenseClass,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Upstream {
    pub kind: UpstreamKind,
    pub amount: Money,
}

/// A valid claim. Lines and upstream payments are kept in a canonical order, so that two claims with
/// the same content compare equal whatever order the hospital listed them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub claim_id: ClaimId,
    pub hospital_id: HospitalId,
    pub member_id: MemberId,
    pub service_date: Date,
    pub visit_kind: VisitKind,
    pub outpatient_kind: OutpatientKind,
    pub cause: Cause,
    pub lines: Vec<Line>,
    pub upstream: Vec<Upstream>,
}

impl Claim {
    /// Validates a draft; on failure every bad field is named.
    pub fn parse(draft: &ClaimDraft) -> Result<Claim, FieldErrors> {
        let mut e = FieldErrors::new();
        let claim_id = e.check("claim_id", required(&draft.claim_id).and_then(ClaimId::parse));
        let hospital_id = e.check("hospital_id", required(&draft.hospital_id).and_then(HospitalId::parse));
        let member_id = e.check("member_id", required(&draft.member_id).and_then(MemberId::parse));
        let service_date = e.check("service_date", required(&draft.service_date).and_then(parse_date));
        let visit_kind = e.check(
            "visit_kind",
            required(&draft.visit_kind).and_then(|s| s.parse::<VisitKind>()),
        );
        let outpatient_kind = if draft.outpatient_kind.is_empty() {
            Some(OutpatientKind::General)
        } else {
            let kind = e.check("outpatient_kind", draft.outpatient_kind.parse::<OutpatientKind>());
            if kind.is_some() && visit_kind.is_some_and(|v| v != VisitKind::Outpatient) {
                e.push("outpatient_kind", "is only for OUTPATIENT visits");
            }
            kind
        };
        let cause = if draft.cause.is_empty() {
            Some(Cause::Illness)
        } else {
            e.check("cause", draft.cause.parse::<Cause>())
        };
        let non_medical = visit_kind == Some(VisitKind::NonMedical);
        if cause == Some(Cause::Education) && visit_kind.is_some() && !non_medical {
            e.push("cause", "EDUCATION is only for NON_MEDICAL claims");
        }

        let mut lines = Vec::with_capacity(draft.lines.len().min(LINES_MAX));
        if draft.lines.is_empty() {
            e.push("lines", "a claim needs at least one line item");
        } else if draft.lines.len() > LINES_MAX {
            e.push(
                "lines",
                format!("{} line items, the limit is {LINES_MAX}", draft.lines.len()),
            );
        } else {
            for (i, l) in draft.lines.iter().enumerate() {
                let code = e.check_at(|| format!("lines[{i}].code"), line_code(&l.code));
                let class = e.check_at(
                    || format!("lines[{i}].expense_class"),
                    required(&l.expense_class).and_then(|s| s.parse::<ExpenseClass>()),
                );
                let amount = e.check_at(
                    || format!("lines[{i}].amount"),
                    required(&l.amount).and_then(Money::parse),
                );
                if let (Some(class), Some(_)) = (class, visit_kind) {
                    if non_medical && !matches!(class, ExpenseClass::OtherLoss | ExpenseClass::NonCompliant) {
                        e.push(
                            format!("lines[{i}].expense_class"),
                            format!("{class} is medical cost; NON_MEDICAL claims carry OTHER_LOSS or NON_COMPLIANT"),
                        );
                    } else if !non_medical && class == ExpenseClass::OtherLoss {
                        e.push(
                            format!("lines[{i}].expense_class"),
                            "OTHER_LOSS is only for NON_MEDICAL claims",
                        );
                    }
                }
                if let (Some(code), Some(class), Some(amount)) = (code, class, amount) {
                    lines.push(Line { code, class, amount });
                }
            }
        }

        let mut upstream: Vec<Upstream> = Vec::with_capacity(draft.upstream.len().min(2));
        if draft.upstream.len() > UpstreamKind::ALL.len() {
            e.push(
                "upstream",
                format!("{} payments, at most one per fund", draft.upstream.len()),
            );
        } else {
            for (i, u) in draft.upstream.iter().enumerate() {
                let kind = e.check_at(
                    || format!("upstream[{i}].kind"),
                    required(&u.kind).and_then(|s| s.parse::<UpstreamKind>()),
                );
                let amount = e.check_at(
                    || format!("upstream[{i}].amount"),
                    required(&u.amount).and_then(Money::parse),
                );
                if let Some(kind) = kind {
                    if upstream.iter().any(|x| x.kind == kind) {
                        e.push(format!("upstream[{i}].kind"), format!("{kind} is given twice"));
                    }
                }
                if non_medical {
                    e.push(
                        format!("upstream[{i}]"),
                        "NON_MEDICAL claims have no upstream medical payments",
                    );
                }
                if let (Some(kind), Some(amount)) = (kind, amount) {
                    upstream.push(Upstream { kind, amount });
                }
            }
        }

        // Checks on totals only make sense when every line and payment parsed.
        if e.is_empty() {
            let total: Decimal = lines.iter().map(|l| l.amount.decimal()).sum();
            if total > AMOUNT_MAX {
                e.push(
                    "lines",
                    format!("the claim's total cost {} is above 100000000.00", format_money(total)),
                );
            }
            let in_scope: Decimal = lines
                .iter()
                .filter(|l| l.class == ExpenseClass::InScope)
                .map(|l| l.amount.decimal())
                .sum();
            let paid: Decimal = upstream.iter().map(|u| u.amount.decimal()).sum();
            if paid > in_scope {
                e.push(
                    "upstream",
                    format!(
                        "upstream payments {} are above the IN_SCOPE total {}",
                        format_money(paid),
                        format_money(in_scope)
                    ),
                );
            }
        }

        lines.sort();
        upstream.sort();
        let claim = match (
            claim_id,
            hospital_id,
            member_id,
            service_date,
            visit_kind,
            outpatient_kind,
            cause,
        ) {
            (
                Some(claim_id),
                Some(hospital_id),
                Some(member_id),
                Some(service_date),
                Some(visit_kind),
                Some(outpatient_kind),
                Some(cause),
            ) => Some(Claim {
                claim_id,
                hospital_id,
                member_id,
                service_date,
                visit_kind,
                outpatient_kind,
                cause,
                lines,
                upstream,
            }),
            _ => None,
        };
        match claim {
            Some(claim) if e.is_empty() => Ok(claim),
            _ => Err(e),
        }
    }

    /// Total of each expense class, in `ExpenseClass::ALL` order.
    pub fn class_totals(&self) -> [Decimal; 5] {
        let mut totals = [Decimal::ZERO; 5];
        for line in &self.lines {
            totals[line.class as usize] += line.amount.decimal();
        }
        totals
    }

    pub fn upstream_total(&self) -> Decimal {
        self.upstream.iter().map(|u| u.amount.decimal()).sum()
    }

    pub fn total_cost(&self) -> Decimal {
        self.lines.iter().map(|l| l.amount.decimal()).sum()
    }

    /// The claim back as a draft in canonical form: what the store keeps and what resubmissions are
    /// compared by.
    pub fn to_draft(&self) -> ClaimDraft {
        ClaimDraft {
            claim_id: self.claim_id.to_string(),
            hospital_id: self.hospital_id.to_string(),
            member_id: self.member_id.to_string(),
            service_date: format_date(self.service_date),
            visit_kind: self.visit_kind.to_string(),
            outpatient_kind: if self.visit_kind == VisitKind::Outpatient {
                self.outpatient_kind.to_string()
            } else {
                String::new()
            },
            cause: self.cause.to_string(),
            lines: self
                .lines
                .iter()
                .map(|l| LineDraft {
                    code: l.code.clone(),
                    expense_class: l.class.to_string(),
                    amount: l.amount.to_string(),
                })
                .collect(),
            upstream: self
                .upstream
                .iter()
                .map(|u| UpstreamDraft {
                    kind: u.kind.to_string(),
                    amount: u.amount.to_string(),
                })
                .collect(),
        }
    }
}

fn required(text: &str) -> Result<&str, String> {
    if text.is_empty() {
        Err("is required".into())
    } else {
        Ok(text)
    }
}

fn line_code(text: &str) -> Result<String, String> {
    let text = required(text)?;
    if text.chars().count() > LINE_CODE_LEN_MAX {
        return Err(format!("is longer than {LINE_CODE_LEN_MAX} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(text.to_owned())
}

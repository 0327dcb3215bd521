//! Builders shared by the fixed tests.

use std::path::PathBuf;
use std::str::FromStr;

use rust_decimal::Decimal;
use time::Date;

use crate::domain::{
    parse_date, settle, Accumulators, Catalogue, Category, Claim, ClaimDraft, LineDraft, Member, MemberId, Settlement,
    Terms, UpstreamDraft,
};

pub fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

pub fn date(text: &str) -> Date {
    parse_date(text).unwrap()
}

pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join("terms")
}

/// Loads and validates one file of `examples/terms/`.
pub fn example_terms(file: &str) -> Terms {
    let path = examples_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    Terms::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn catalogue(files: &[&str]) -> Catalogue {
    let mut catalogue = Catalogue::new();
    for file in files {
        catalogue.apply(example_terms(file)).unwrap();
    }
    catalogue
}

/// A member enrolled in every period of `catalogue` at its premium, with one category from `since`.
pub fn member_in_all(id: &str, category: Category, since: &str, catalogue: &Catalogue) -> Member {
    let mut member = Member::new(MemberId::parse(id).unwrap());
    member.categories.set(date(since), category);
    for v in catalogue.iter() {
        member
            .enrollments
            .insert(v.terms.key(), v.terms.product.premium_per_member);
    }
    member
}

/// A claim draft: `visit` may be `OUTPATIENT/CHRONIC`; `lines` are (class, amount); `upstream`
/// (kind, amount).
pub fn draft(
    id: &str,
    member: &str,
    service_date: &str,
    visit: &str,
    cause: &str,
    lines: &[(&str, &str)],
    upstream: &[(&str, &str)],
) -> ClaimDraft {
    let (visit_kind, outpatient_kind) = visit.split_once('/').unwrap_or((visit, ""));
    ClaimDraft {
        claim_id: id.into(),
        hospital_id: "H1".into(),
        member_id: member.into(),
        service_date: service_date.into(),
        visit_kind: visit_kind.into(),
        outpatient_kind: outpatient_kind.into(),
        cause: cause.into(),
        lines: lines
            .iter()
            .enumerate()
            .map(|(i, (class, amount))| LineDraft {
                code: format!("item-{i}"),
                expense_class: (*class).into(),
                amount: (*amount).into(),
            })
            .collect(),
        upstream: upstream
            .iter()
            .map(|(kind, amount)| UpstreamDraft {
                kind: (*kind).into(),
                amount: (*amount).into(),
            })
            .collect(),
    }
}

pub fn parse(draft: &ClaimDraft) -> Claim {
    Claim::parse(draft).unwrap_or_else(|e| panic!("{e}"))
}

/// Settles and applies, as the ledger does.
pub fn settle_and_apply(catalogue: &Catalogue, member: &Member, claim: &Claim, acc: &mut Accumulators) -> Settlement {
    let s = settle(catalogue, member, claim, acc);
    acc.apply(&s.changes);
    s
}

/// (product code, eligible, deductible applied, payout, reasons) of each layer.
pub fn layer_rows(s: &Settlement) -> Vec<(String, Decimal, Decimal, Decimal, Vec<&'static str>)> {
    s.layers
        .iter()
        .map(|l| {
            (
                l.product.to_string(),
                l.eligible,
                l.deductible_applied,
                l.payout,
                l.reasons.iter().map(|r| r.as_str()).collect(),
            )
        })
        .collect()
}

//! How proto values are printed: enum names, gRPC codes, percentages, settlements and members.

use std::str::FromStr;

use claims::api::convert::category_text;
use claims::proto;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::table::{Align, Table};

/// The canonical name of a gRPC status code (`INVALID_ARGUMENT`), as google.rpc.Code spells it.
pub fn code_name(code: i32) -> String {
    let name = match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        other => return format!("CODE_{other}"),
    };
    name.to_owned()
}

/// `CODE: message` of a failed call. The server puts field violations into the message, one
/// `field: message` per line; a multi-line message is printed indented under the code.
pub fn status_text(status: &tonic::Status) -> String {
    let code = code_name(status.code() as i32);
    let message = status.message().trim();
    if message.is_empty() {
        code
    } else if message.contains('\n') {
        let lines: Vec<String> = message.lines().map(|l| format!("  {l}")).collect();
        format!("{code}\n{}", lines.join("\n"))
    } else {
        format!("{code}: {message}")
    }
}

pub use claims::api::convert::{apply_outcome_text as outcome_name, reason_text as reason_name};

pub fn reasons(values: &[i32]) -> String {
    values.iter().map(|r| reason_name(*r)).collect::<Vec<_>>().join(", ")
}

/// A loss ratio as a percentage with two decimals (`"1.1819"` -> `"118.19%"`), `n/a` when the server
/// sends none (no premium written). A value that is not a decimal is shown as received.
pub fn percent(ratio: &str) -> String {
    let text = ratio.trim();
    if text.is_empty() {
        return "n/a".to_owned();
    }
    match Decimal::from_str(text) {
        Ok(value) => {
            let mut pct =
                (value * Decimal::ONE_HUNDRED).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
            pct.rescale(2);
            format!("{pct}%")
        }
        Err(_) => text.to_owned(),
    }
}

/// A decimal string, or zero when empty or malformed.
pub fn amount(text: &str) -> Option<Decimal> {
    Decimal::from_str(text.trim()).ok()
}

/// Prints a settlement: what was claimed, one row per layer, and the totals.
pub fn print_settlement(s: &proto::Settlement) {
    let category = category_text(s.category);
    crate::outln!(
        "claim {} from hospital {}: member {}, service date {}, category {}",
        s.claim_id,
        s.hospital_id,
        s.member_id,
        s.service_date,
        if category.is_empty() { "-" } else { &category }
    );
    if s.layers.is_empty() {
        crate::outln!("no layer applies");
    } else {
        let mut t = Table::new(&[
            ("layer", Align::Right),
            ("product", Align::Left),
            ("period", Align::Left),
            ("terms", Align::Right),
            ("benefit", Align::Left),
            ("eligible", Align::Right),
            ("deductible", Align::Right),
            ("payout", Align::Right),
            ("reasons", Align::Left),
        ]);
        for l in &s.layers {
            t.row([
                l.layer_order.to_string(),
                l.product_code.clone(),
                format!("{}..{}", l.period_start, l.period_end),
                format!("v{}", l.terms_version),
                if l.benefit_code.is_empty() {
                    "-".to_owned()
                } else {
                    l.benefit_code.clone()
                },
                l.eligible.clone(),
                l.deductible_applied.clone(),
                l.payout.clone(),
                reasons(&l.reasons),
            ]);
        }
        t.print();
    }
    let mut totals = Table::new(&[("", Align::Left), ("", Align::Right)]);
    totals.row(["total cost", &s.total_cost]);
    totals.row(["upstream (basic + critical illness)", &s.upstream_total]);
    totals.row(["payout (all layers)", &s.payout_total]);
    totals.row(["out of pocket", &s.out_of_pocket]);
    // The header row of this two-column table is empty: skip it.
    for line in totals.render().lines().skip(1) {
        crate::outln!("{line}");
    }
    if !s.reasons.is_empty() {
        crate::outln!("reasons: {}", reasons(&s.reasons));
    }
}

/// Prints a stored settlement: its commit sequence, when, reversal state, then the settlement.
pub fn print_stored(s: &proto::StoredSettlement) {
    let mut status = format!("settlement #{} settled at {}", s.sequence, s.settled_at);
    if s.reversed {
        status.push_str(&format!(", REVERSED at {}", s.reversed_at));
    }
    crate::outln!("{status}");
    match &s.settlement {
        Some(settlement) => print_settlement(settlement),
        None => crate::outln!("(the server sent no settlement body)"),
    }
}

/// Prints a member: current category, category history, and per enrollment the caps and usage.
pub fn print_member(m: &proto::Member, as_of: Option<&str>) {
    let category = category_text(m.category);
    crate::outln!(
        "member {}: category {} on {}",
        m.member_id,
        if category.is_empty() { "none" } else { &category },
        as_of.unwrap_or("today")
    );
    crate::outln!();
    crate::outln!("categories:");
    if m.categories.is_empty() {
        crate::outln!("  none");
    } else {
        let mut t = Table::new(&[("from", Align::Left), ("category", Align::Left)]).indent(2);
        for c in &m.categories {
            t.row([c.effective_date.clone(), category_text(c.category)]);
        }
        t.print();
    }
    crate::outln!();
    crate::outln!("enrollments:");
    if m.enrollments.is_empty() {
        crate::outln!("  none");
        return;
    }
    let mut t = Table::new(&[
        ("product", Align::Left),
        ("period", Align::Left),
        ("premium", Align::Right),
        ("paid", Align::Right),
    ])
    .indent(2);
    for e in &m.enrollments {
        t.row([
            e.product_code.clone(),
            format!("{}..{}", e.period_start, e.period_end),
            e.premium.clone(),
            e.paid.clone(),
        ]);
    }
    t.print();
    for e in &m.enrollments {
        crate::outln!();
        crate::outln!(
            "  {} {}..{}: paid {}",
            e.product_code,
            e.period_start,
            e.period_end,
            e.paid
        );
        let mut caps = Table::new(&[
            ("applies to", Align::Left),
            ("cap", Align::Left),
            ("limit", Align::Right),
            ("used", Align::Right),
            ("room", Align::Right),
        ])
        .indent(4);
        for c in &e.caps {
            caps.row([
                "product".to_owned(),
                c.cap.clone(),
                c.limit.clone(),
                c.used.clone(),
                c.room.clone(),
            ]);
        }
        for b in &e.benefits {
            for c in &b.caps {
                caps.row([
                    format!("benefit {}", b.benefit_code),
                    c.cap.clone(),
                    c.limit.clone(),
                    c.used.clone(),
                    c.room.clone(),
                ]);
            }
        }
        if caps.is_empty() {
            crate::outln!("    no caps");
        } else {
            caps.print();
        }
        if e.benefits.is_empty() {
            crate::outln!("    no benefit used yet");
        } else {
            let mut usage = Table::new(&[
                ("benefit", Align::Left),
                ("deductible", Align::Right),
                ("deductible used", Align::Right),
                ("band position", Align::Right),
                ("paid", Align::Right),
            ])
            .indent(4);
            for b in &e.benefits {
                usage.row([
                    b.benefit_code.clone(),
                    b.deductible.clone(),
                    b.deductible_used.clone(),
                    b.band_position.clone(),
                    b.paid.clone(),
                ]);
            }
            usage.print();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_ratio_as_percentage() {
        assert_eq!(percent("1.1819"), "118.19%");
        assert_eq!(percent("1016.6667"), "101666.67%");
        assert_eq!(percent("0"), "0.00%");
        assert_eq!(percent("0.5"), "50.00%");
        assert_eq!(percent("0.00005"), "0.01%");
        assert_eq!(percent(""), "n/a");
        assert_eq!(percent("  "), "n/a");
        assert_eq!(percent("oops"), "oops");
    }

    #[test]
    fn names() {
        assert_eq!(code_name(3), "INVALID_ARGUMENT");
        assert_eq!(code_name(6), "ALREADY_EXISTS");
        assert_eq!(code_name(99), "CODE_99");
        assert_eq!(
            reason_name(proto::Reason::CapBenefitAnnual as i32),
            "CAP_BENEFIT_ANNUAL"
        );
        assert_eq!(reason_name(0), "");
        assert_eq!(reason_name(77), "#77");
        assert_eq!(outcome_name(proto::ApplyOutcome::NewPeriod as i32), "NEW_PERIOD");
        assert_eq!(
            reasons(&[proto::Reason::Deductible as i32, proto::Reason::CapBenefitAnnual as i32]),
            "DEDUCTIBLE, CAP_BENEFIT_ANNUAL"
        );
    }

    #[test]
    fn status_messages() {
        let s = tonic::Status::invalid_argument("product.code: bad\nbenefit[0].bands: empty");
        assert_eq!(
            status_text(&s),
            "INVALID_ARGUMENT\n  product.code: bad\n  benefit[0].bands: empty"
        );
        let s = tonic::Status::not_found("no such settlement");
        assert_eq!(status_text(&s), "NOT_FOUND: no such settlement");
    }
}

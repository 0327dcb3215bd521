//! ADJUDICATION.md's worked examples, to the fen, and one test per reason code.

use super::fixtures::*;
use crate::domain::{settle, AccumulatorView, Accumulators, Catalogue, Category, LossRatio, Reason, Terms};

const CIXI_2022: [&str; 4] = [
    "cixi-medical-assistance_2022-01-01.toml",
    "cixi-major-illness-topup_2022-01-01.toml",
    "cixi-tianyi-yongning-bao_2022-01-01.toml",
    "cixi-burden-stop-loss_2022-01-01.toml",
];

fn row(
    product: &str,
    eligible: &str,
    deductible: &str,
    payout: &str,
    reasons: &[&'static str],
) -> (
    String,
    rust_decimal::Decimal,
    rust_decimal::Decimal,
    rust_decimal::Decimal,
    Vec<&'static str>,
) {
    (
        product.to_string(),
        d(eligible),
        d(deductible),
        d(payout),
        reasons.to_vec(),
    )
}

#[test]
fn worked_example_a_one_stop_cascade() {
    let catalogue = catalogue(&CIXI_2022);
    let m1 = member_in_all("M1", Category::Dibao, "2022-01-01", &catalogue);
    let mut acc = Accumulators::new();

    // H1-0001, inpatient.
    let c1 = parse(&draft(
        "H1-0001",
        "M1",
        "2022-03-10",
        "INPATIENT",
        "",
        &[
            ("IN_SCOPE", "80000.00"),
            ("B_SELF_PAY", "6000.00"),
            ("OUT_OF_CATALOGUE", "30000.00"),
            ("NON_COMPLIANT", "500.00"),
        ],
        &[("BASIC", "48000.00"), ("CRITICAL_ILLNESS", "12000.00")],
    ));
    let s1 = settle_and_apply(&catalogue, &m1, &c1, &mut acc);
    assert_eq!(
        layer_rows(&s1),
        vec![
            row("cixi-medical-assistance", "20000.00", "0", "16000.00", &[]),
            row(
                "cixi-major-illness-topup",
                "4000.00",
                "4000.00",
                "0.00",
                &["DEDUCTIBLE"]
            ),
            row("cixi-tianyi-yongning-bao", "30000.00", "0", "9000.00", &[]),
            row("cixi-burden-stop-loss", "31000.00", "31000.00", "0.00", &["DEDUCTIBLE"]),
        ]
    );
    assert_eq!(s1.total_cost, d("116500.00"));
    assert_eq!(s1.upstream_total, d("60000.00"));
    assert_eq!(s1.payout_total, d("25000.00"));
    assert_eq!(s1.out_of_pocket, d("31500.00"));
    assert_eq!(s1.category, Category::Dibao);
    assert!(s1.reasons.is_empty());

    // H1-0002, outpatient CHRONIC.
    let c2 = parse(&draft(
        "H1-0002",
        "M1",
        "2022-04-02",
        "OUTPATIENT/CHRONIC",
        "",
        &[("IN_SCOPE", "30000.00")],
        &[("BASIC", "15000.00")],
    ));
    let s2 = settle_and_apply(&catalogue, &m1, &c2, &mut acc);
    assert_eq!(s2.layers[0].payout, d("12000.00"));
    assert_eq!(s2.layers[1].deductible_applied, d("3000.00"));
    assert_eq!(s2.out_of_pocket, d("3000.00"));

    // H1-0003, outpatient: the outpatient cap cuts medical assistance.
    let c3_draft = draft(
        "H1-0003",
        "M1",
        "2022-05-20",
        "OUTPATIENT",
        "",
        &[("IN_SCOPE", "20000.00"), ("OUT_OF_CATALOGUE", "1234.56")],
        &[("BASIC", "8000.00")],
    );
    let s3 = settle_and_apply(&catalogue, &m1, &parse(&c3_draft), &mut acc);
    assert_eq!(
        layer_rows(&s3)[0],
        row(
            "cixi-medical-assistance",
            "12000.00",
            "0",
            "8000.00",
            &["CAP_BENEFIT_ANNUAL"]
        )
    );
    assert_eq!(s3.layers[2].payout, d("617.28"));
    assert_eq!(s3.out_of_pocket, d("4617.28"));

    // Reverse H1-0002, then settle H1-0003's content again as H1-0004: the outpatient cap has room.
    acc.apply(&s2.changes.negated());
    let mut c4_draft = c3_draft.clone();
    c4_draft.claim_id = "H1-0004".into();
    let s4 = settle_and_apply(&catalogue, &m1, &parse(&c4_draft), &mut acc);
    assert_eq!(s4.layers[0].payout, d("9600.00"));
    assert!(s4.layers[0].reasons.is_empty());
    assert_eq!(s4.layers[2].payout, d("617.28"));
    assert_eq!(s4.out_of_pocket, d("3017.28"));
    for s in [&s1, &s2, &s3, &s4] {
        assert_eq!(s.total_cost, s.upstream_total + s.payout_total + s.out_of_pocket);
    }
}

#[test]
fn worked_example_b_anti_poverty() {
    let catalogue = catalogue(&["zhongning-anti-poverty_2020-04-26.toml"]);
    let m2 = member_in_all("M2", Category::AtRisk, "2020-01-01", &catalogue);
    let mut acc = Accumulators::new();
    let claims = [
        draft(
            "Z-1",
            "M2",
            "2020-06-01",
            "INPATIENT",
            "ACCIDENT",
            &[("IN_SCOPE", "60000"), ("OUT_OF_CATALOGUE", "9000")],
            &[("BASIC", "39000")],
        ),
        draft(
            "Z-2",
            "M2",
            "2020-08-01",
            "INPATIENT",
            "",
            &[("IN_SCOPE", "150000"), ("OUT_OF_CATALOGUE", "40000")],
            &[("BASIC", "90000"), ("CRITICAL_ILLNESS", "30000")],
        ),
        draft(
            "Z-3",
            "M2",
            "2020-09-01",
            "NON_MEDICAL",
            "EDUCATION",
            &[("OTHER_LOSS", "16000")],
            &[],
        ),
        draft(
            "Z-4",
            "M2",
            "2021-03-01",
            "NON_MEDICAL",
            "EDUCATION",
            &[("OTHER_LOSS", "8000")],
            &[],
        ),
    ];
    let expected = [
        row("zhongning-anti-poverty", "30000", "10000", "10000.00", &["DEDUCTIBLE"]),
        row("zhongning-anti-poverty", "70000", "0", "46000.00", &[]),
        row(
            "zhongning-anti-poverty",
            "16000",
            "3000",
            "5000.00",
            &["DEDUCTIBLE", "CAP_BENEFIT_ANNUAL"],
        ),
        row("zhongning-anti-poverty", "8000", "0", "0.00", &["CAP_BENEFIT_ANNUAL"]),
    ];
    let mut loss = LossRatio {
        written_premium: m2.enrollments.values().map(|p| p.decimal()).sum(),
        ..LossRatio::default()
    };
    for (draft, expected) in claims.iter().zip(expected) {
        let s = settle_and_apply(&catalogue, &m2, &parse(draft), &mut acc);
        assert_eq!(layer_rows(&s), vec![expected], "{}", draft.claim_id);
        loss.paid += s.payout_total;
        loss.paid_claims += u64::from(s.payout_total > d("0"));
    }
    // Z-4 paid nothing, so three paid claims.
    assert_eq!(loss.paid_claims, 3);
    let key = catalogue.iter().next().unwrap().terms.key();
    assert_eq!(acc.aggregate_paid(&key), d("61000.00"));
    assert_eq!(loss.paid, d("61000.00"));
    assert_eq!(loss.ratio(), Some(d("1016.6667")));
}

/// A small product built inline, so each reason test shows the rule it exercises.
fn product(extra_product: &str, benefit: &str) -> Terms {
    let text = format!(
        r#"
[product]
code = "test-product"
kind = "ANTI_POVERTY"
layer_order = 10
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "100.00"
eligible_categories = ["DIBAO", "AT_RISK"]
{extra_product}

[[benefit]]
code = "main"
covers = ["IN_SCOPE", "OUT_OF_CATALOGUE"]
{benefit}
"#
    );
    Terms::from_toml(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// Settles one inpatient claim of `in_scope` for a DIBAO member after `earlier` claims of the same
/// content (by other members when `others`), returning the reasons of the last.
fn reasons_after(
    terms: Terms,
    earlier: usize,
    others: bool,
    hospital: &str,
    visit: &str,
    in_scope: &str,
) -> (Vec<Reason>, rust_decimal::Decimal) {
    let mut catalogue = Catalogue::new();
    catalogue.apply(terms.clone()).unwrap();
    let mut acc = Accumulators::new();
    let mut last = None;
    for i in 0..=earlier {
        let member_id = if others && i < earlier {
            format!("M{i}")
        } else {
            "M".to_string()
        };
        let mut member = member_in_all(&member_id, Category::Dibao, "2024-01-01", &catalogue);
        member.categories.set(date("2024-01-01"), Category::Dibao);
        let mut dr = draft(
            &format!("C{i}"),
            &member_id,
            "2024-06-01",
            visit,
            "",
            &[("IN_SCOPE", in_scope)],
            &[],
        );
        dr.hospital_id = hospital.into();
        let s = settle_and_apply(&catalogue, &member, &parse(&dr), &mut acc);
        last = Some(s);
    }
    let s = last.unwrap();
    (s.layers[0].reasons.clone(), s.layers[0].payout)
}

const ALL_VISITS: &str = r#"visit_kinds = ["INPATIENT", "OUTPATIENT"]"#;

#[test]
fn reason_not_enrolled() {
    let catalogue = catalogue(&CIXI_2022);
    let mut member = member_in_all("M9", Category::Dibao, "2022-01-01", &catalogue);
    member.enrollments.clear();
    let c = parse(&draft(
        "N-1",
        "M9",
        "2022-03-01",
        "INPATIENT",
        "",
        &[("IN_SCOPE", "100")],
        &[],
    ));
    let s = settle(&catalogue, &member, &c, &Accumulators::new());
    assert_eq!(s.reasons, vec![Reason::NotEnrolled]);
    assert!(s.layers.is_empty());
    assert_eq!(s.out_of_pocket, d("100"));
    assert!(s.changes.entries.is_empty());

    // Enrolled, but the service date is outside every enrolled period: not enrolled either.
    let member = member_in_all("M9", Category::Dibao, "2022-01-01", &catalogue);
    let c = parse(&draft(
        "N-2",
        "M9",
        "2023-01-01",
        "INPATIENT",
        "",
        &[("IN_SCOPE", "100")],
        &[],
    ));
    assert_eq!(
        settle(&catalogue, &member, &c, &Accumulators::new()).reasons,
        vec![Reason::NotEnrolled]
    );
}

#[test]
fn reason_category_not_eligible_uses_the_category_on_the_service_date() {
    let catalogue = catalogue(&CIXI_2022);
    let mut member = member_in_all("M3", Category::Dibao, "2022-01-01", &catalogue);
    // Dynamic management: the member leaves dibao on 1 June (GENERAL is not eligible).
    member.categories.set(date("2022-06-01"), Category::General);
    let before = parse(&draft(
        "E-1",
        "M3",
        "2022-05-31",
        "INPATIENT",
        "",
        &[("IN_SCOPE", "1000")],
        &[],
    ));
    let after = parse(&draft(
        "E-2",
        "M3",
        "2022-06-01",
        "INPATIENT",
        "",
        &[("IN_SCOPE", "1000")],
        &[],
    ));
    let acc = Accumulators::new();
    let s = settle(&catalogue, &member, &before, &acc);
    assert_eq!(s.layers[0].payout, d("800.00"));
    let s = settle(&catalogue, &member, &after, &acc);
    assert_eq!(s.category, Category::General);
    assert!(s
        .layers
        .iter()
        .all(|l| l.reasons == vec![Reason::CategoryNotEligible] && l.payout.is_zero()));
    // A later change with the same effective date replaces the earlier one.
    member.categories.set(date("2022-06-01"), Category::Destitute);
    let s = settle(&catalogue, &member, &after, &acc);
    assert_eq!(s.layers[0].payout, d("1000.00"));
}

#[test]
fn reason_facility_not_designated() {
    let terms = product(
        r#"designated_hospitals = ["H-DESIGNATED"]"#,
        &format!("{ALL_VISITS}\nbands = [{{ from = \"0\", ratio = \"0.70\" }}]"),
    );
    assert_eq!(
        reasons_after(terms.clone(), 0, false, "H-OTHER", "INPATIENT", "1000"),
        (vec![Reason::FacilityNotDesignated], d("0"))
    );
    assert_eq!(
        reasons_after(terms, 0, false, "H-DESIGNATED", "INPATIENT", "1000"),
        (vec![], d("700.00"))
    );
}

#[test]
fn reason_no_matching_benefit() {
    let terms = product(
        "",
        r#"visit_kinds = ["OUTPATIENT"]
outpatient_kinds = ["CHRONIC"]
bands = [{ from = "0", ratio = "0.70" }]"#,
    );
    assert_eq!(
        reasons_after(terms.clone(), 0, false, "H1", "INPATIENT", "1000"),
        (vec![Reason::NoMatchingBenefit], d("0"))
    );
    assert_eq!(
        reasons_after(terms.clone(), 0, false, "H1", "OUTPATIENT/ACUTE", "1000"),
        (vec![Reason::NoMatchingBenefit], d("0"))
    );
    assert_eq!(
        reasons_after(terms, 0, false, "H1", "OUTPATIENT/CHRONIC", "1000"),
        (vec![], d("700.00"))
    );
}

#[test]
fn reason_deductible_year_and_claim_basis() {
    let year = product(
        "",
        &format!("{ALL_VISITS}\ndeductible = \"500.00\"\nbands = [{{ from = \"0\", ratio = \"0.50\" }}]"),
    );
    assert_eq!(
        reasons_after(year.clone(), 0, false, "H1", "INPATIENT", "400"),
        (vec![Reason::Deductible], d("0.00"))
    );
    // The second claim uses the 100.00 of deductible left.
    assert_eq!(
        reasons_after(year, 1, false, "H1", "INPATIENT", "400"),
        (vec![Reason::Deductible], d("150.00"))
    );
    let claim = product("", &format!("{ALL_VISITS}\ndeductible = \"500.00\"\ndeductible_basis = \"CLAIM\"\nbands = [{{ from = \"0\", ratio = \"0.50\" }}]"));
    // CLAIM basis: every claim pays its own deductible.
    assert_eq!(
        reasons_after(claim, 1, false, "H1", "INPATIENT", "600"),
        (vec![Reason::Deductible], d("50.00"))
    );
}

#[test]
fn reason_cap_per_claim() {
    let terms = product(
        "",
        &format!("{ALL_VISITS}\nper_claim_cap = \"300.00\"\nbands = [{{ from = \"0\", ratio = \"1\" }}]"),
    );
    assert_eq!(
        reasons_after(terms, 1, false, "H1", "INPATIENT", "400"),
        (vec![Reason::CapPerClaim], d("300.00"))
    );
}

#[test]
fn reason_cap_benefit_annual() {
    let terms = product(
        "",
        &format!("{ALL_VISITS}\nannual_cap = \"700.00\"\nbands = [{{ from = \"0\", ratio = \"1\" }}]"),
    );
    assert_eq!(
        reasons_after(terms.clone(), 1, false, "H1", "INPATIENT", "400"),
        (vec![Reason::CapBenefitAnnual], d("300.00"))
    );
    // Another member has their own benefit cap.
    assert_eq!(
        reasons_after(terms, 1, true, "H1", "INPATIENT", "400"),
        (vec![], d("400.00"))
    );
}

#[test]
fn reason_cap_product_annual() {
    let terms = product(
        r#"annual_cap = "500.00""#,
        &format!("{ALL_VISITS}\nbands = [{{ from = \"0\", ratio = \"1\" }}]"),
    );
    assert_eq!(
        reasons_after(terms, 1, false, "H1", "INPATIENT", "400"),
        (vec![Reason::CapProductAnnual], d("100.00"))
    );
}

#[test]
fn reason_cap_aggregate_spans_members() {
    let terms = product(
        r#"aggregate_cap = "1000.00""#,
        &format!("{ALL_VISITS}\nbands = [{{ from = \"0\", ratio = \"1\" }}]"),
    );
    assert_eq!(
        reasons_after(terms.clone(), 2, true, "H1", "INPATIENT", "400"),
        (vec![Reason::CapAggregate], d("200.00"))
    );
    // Once the aggregate is used up, the room is 0.
    assert_eq!(
        reasons_after(terms, 3, true, "H1", "INPATIENT", "400"),
        (vec![Reason::CapAggregate], d("0.00"))
    );
}

#[test]
fn equal_rooms_name_every_binding_cap() {
    let terms = product(
        r#"annual_cap = "300.00""#,
        &format!("{ALL_VISITS}\nper_claim_cap = \"300.00\"\nannual_cap = \"300.00\"\nbands = [{{ from = \"0\", ratio = \"1\" }}]"),
    );
    assert_eq!(
        reasons_after(terms, 0, false, "H1", "INPATIENT", "400"),
        (
            vec![Reason::CapPerClaim, Reason::CapBenefitAnnual, Reason::CapProductAnnual],
            d("300.00")
        )
    );
}

#[test]
fn a_cap_that_does_not_bind_gives_no_reason() {
    let terms = product(
        "",
        &format!("{ALL_VISITS}\nper_claim_cap = \"400.00\"\nbands = [{{ from = \"0\", ratio = \"1\" }}]"),
    );
    assert_eq!(
        reasons_after(terms, 0, false, "H1", "INPATIENT", "400"),
        (vec![], d("400.00"))
    );
}

#[test]
fn bands_stack_on_the_band_position_and_round_once() {
    // ADJUDICATION.md step 4: bands 0:50%, 20000:60%, position 15,000, amount 10,000 → 5,500.00.
    let terms = product(
        "",
        &format!(
            "{ALL_VISITS}\nbands = [{{ from = \"0\", ratio = \"0.5\" }}, {{ from = \"20000\", ratio = \"0.6\" }}]"
        ),
    );
    let mut catalogue = Catalogue::new();
    catalogue.apply(terms).unwrap();
    let member = member_in_all("M", Category::Dibao, "2024-01-01", &catalogue);
    let mut acc = Accumulators::new();
    let first = parse(&draft(
        "B-1",
        "M",
        "2024-02-01",
        "INPATIENT",
        "",
        &[("IN_SCOPE", "15000")],
        &[],
    ));
    assert_eq!(
        settle_and_apply(&catalogue, &member, &first, &mut acc).payout_total,
        d("7500.00")
    );
    let second = parse(&draft(
        "B-2",
        "M",
        "2024-03-01",
        "INPATIENT",
        "",
        &[("IN_SCOPE", "10000")],
        &[],
    ));
    assert_eq!(
        settle_and_apply(&catalogue, &member, &second, &mut acc).payout_total,
        d("5500.00")
    );

    // Half a fen rounds up, once per layer: 0.01 at 50% = 0.005 → 0.01.
    let terms = product(
        "",
        &format!("{ALL_VISITS}\nbands = [{{ from = \"0\", ratio = \"0.5\" }}]"),
    );
    assert_eq!(
        reasons_after(terms, 0, false, "H1", "INPATIENT", "0.01"),
        (vec![], d("0.01"))
    );
    // 0.03 at 0.3333 = 0.009999 → 0.01.
    let terms = product(
        "",
        &format!("{ALL_VISITS}\nbands = [{{ from = \"0\", ratio = \"0.3333\" }}]"),
    );
    assert_eq!(
        reasons_after(terms, 0, false, "H1", "INPATIENT", "0.03"),
        (vec![], d("0.01"))
    );
}

#[test]
fn payout_comes_off_classes_in_order() {
    // Stop-loss covers IN_SCOPE, B_SELF_PAY and OUT_OF_CATALOGUE; a later layer covering only
    // OUT_OF_CATALOGUE sees what is left of it after IN_SCOPE and B_SELF_PAY were used first.
    let first = product(
        "",
        r#"visit_kinds = ["INPATIENT"]
bands = [{ from = "0", ratio = "1" }]
per_claim_cap = "150.00""#,
    );
    let second_text = r#"
[product]
code = "second-layer"
kind = "INCLUSIVE_COMMERCIAL"
layer_order = 20
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "10.00"
eligible_categories = ["DIBAO"]

[[benefit]]
code = "ooc"
visit_kinds = ["INPATIENT"]
covers = ["OUT_OF_CATALOGUE"]
bands = [{ from = "0", ratio = "1" }]
"#;
    let mut catalogue = Catalogue::new();
    catalogue.apply(first).unwrap();
    catalogue.apply(Terms::from_toml(second_text).unwrap()).unwrap();
    let member = member_in_all("M", Category::Dibao, "2024-01-01", &catalogue);
    // First layer (IN_SCOPE + OUT_OF_CATALOGUE): 100 + 200 eligible, pays 150: 100 from IN_SCOPE, 50
    // from OUT_OF_CATALOGUE; the second layer gets the 150 of OUT_OF_CATALOGUE left.
    let c = parse(&draft(
        "P-1",
        "M",
        "2024-05-01",
        "INPATIENT",
        "",
        &[("OUT_OF_CATALOGUE", "200"), ("IN_SCOPE", "100")],
        &[],
    ));
    let s = settle(&catalogue, &member, &c, &Accumulators::new());
    assert_eq!(layer_rows(&s)[0].1, d("300"));
    assert_eq!(s.layers[0].payout, d("150.00"));
    assert_eq!(s.layers[1].eligible, d("150"));
    assert_eq!(s.layers[1].payout, d("150.00"));
    assert_eq!(s.out_of_pocket, d("0"));
}

#[test]
fn reversal_restores_room_and_later_settlements_keep_their_amounts() {
    let catalogue = catalogue(&CIXI_2022);
    let member = member_in_all("M1", Category::Dibao, "2022-01-01", &catalogue);
    let mut acc = Accumulators::new();
    let a = settle_and_apply(
        &catalogue,
        &member,
        &parse(&draft(
            "R-1",
            "M1",
            "2022-02-01",
            "OUTPATIENT",
            "",
            &[("IN_SCOPE", "15000")],
            &[],
        )),
        &mut acc,
    );
    let b = settle_and_apply(
        &catalogue,
        &member,
        &parse(&draft(
            "R-2",
            "M1",
            "2022-03-01",
            "OUTPATIENT",
            "",
            &[("IN_SCOPE", "15000")],
            &[],
        )),
        &mut acc,
    );
    assert_eq!(a.layers[0].payout, d("12000.00"));
    assert_eq!(b.layers[0].payout, d("8000.00"));
    let only_b = {
        let mut book = Accumulators::new();
        book.apply(&b.changes);
        book
    };
    acc.apply(&a.changes.negated());
    assert_eq!(acc, only_b);
}

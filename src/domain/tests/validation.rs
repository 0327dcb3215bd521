//! Terms and claims validation: every problem listed, each by its path.

use super::fixtures::*;
use crate::domain::{ApplyOutcome, Catalogue, Claim, ClaimDraft, FieldErrors, Terms};

const GOOD: &str = r#"
[product]
code = "zhongning-anti-poverty"
kind = "ANTI_POVERTY"
layer_order = 50
period_start = "2020-04-26"
period_end = "2021-04-25"
premium_per_member = "60.00"
eligible_categories = ["AT_RISK", "UNSTABLE_EXIT"]

[[benefit]]
code = "illness"
visit_kinds = ["INPATIENT", "OUTPATIENT", "PHARMACY"]
causes = ["ILLNESS", "ACCIDENT", "DISASTER"]
covers = ["IN_SCOPE", "B_SELF_PAY", "OUT_OF_CATALOGUE"]
deductible = "10000.00"
bands = [{ from = "0", ratio = "0.50" }, { from = "20000", ratio = "0.60" }, { from = "50000", ratio = "0.70" }]
annual_cap = "100000.00"
by_category.AT_RISK = { deductible = "0", bands = [{ from = "0", ratio = "1.00" }], annual_cap = "150000.00" }

[[benefit]]
code = "education"
visit_kinds = ["NON_MEDICAL"]
causes = ["EDUCATION"]
covers = ["OTHER_LOSS"]
deductible = "3000.00"
bands = [{ from = "0", ratio = "0.50" }]
annual_cap = "5000.00"
"#;

fn errors_of(text: &str) -> FieldErrors {
    match Terms::from_toml(text) {
        Ok(_) => panic!("terms should have been refused:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts that an error names `field` and that its message contains `needle`.
fn assert_error(errors: &FieldErrors, field: &str, needle: &str) {
    assert!(
        errors.iter().any(|e| e.field == field && e.message.contains(needle)),
        "expected {field}: …{needle}… in\n{errors}"
    );
}

#[test]
fn good_terms_parse_with_overrides_merged() {
    let terms = Terms::from_toml(GOOD).unwrap();
    assert_eq!(terms.benefits.len(), 2);
    let illness = &terms.benefits[0];
    let at_risk = illness.rule_for(crate::domain::Category::AtRisk);
    assert_eq!(at_risk.deductible.to_string(), "0.00");
    assert_eq!(at_risk.annual_cap.map(|m| m.to_string()), Some("150000.00".into()));
    let unstable = illness.rule_for(crate::domain::Category::UnstableExit);
    assert_eq!(unstable.bands.len(), 3);
    assert_eq!(unstable.deductible.to_string(), "10000.00");
}

#[test]
fn a_bad_file_is_refused_whole_with_every_problem_by_path() {
    let bad = GOOD
        .replace("kind = \"ANTI_POVERTY\"", "kind = \"ANTI_POVERTY\"\ncolour = \"blue\"")
        .replace("premium_per_member = \"60.00\"", "premium_per_member = \"60.001\"")
        .replace(
            "{ from = \"20000\", ratio = \"0.60\" }, { from = \"50000\", ratio = \"0.70\" }",
            "{ from = \"20000\", ratio = \"0.60\" }, { from = \"50000\", ratio = \"1.3\" }",
        )
        .replace("annual_cap = \"5000.00\"", "annual_cap = \"-5000.00\"")
        .replace("causes = [\"EDUCATION\"]", "causes = [\"SCHOOL\"]");
    let errors = errors_of(&bad);
    assert_error(&errors, "product.colour", "unknown field");
    assert_error(&errors, "product.premium_per_member", "more than two decimals");
    assert_error(&errors, "benefit[0].bands[2].ratio", "1.3 is above 1");
    assert_error(&errors, "benefit[1].annual_cap", "negative");
    assert_error(&errors, "benefit[1].causes[0]", "unknown value \"SCHOOL\"");
    assert_eq!(errors.len(), 5, "{errors}");
}

#[test]
fn each_rule_of_the_format_is_enforced() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (replace, with, field, message)
        (
            "kind = \"ANTI_POVERTY\"",
            "kind = \"CHARITY\"",
            "product.kind",
            "unknown value \"CHARITY\"",
        ),
        (
            "code = \"zhongning-anti-poverty\"",
            "code = \"Zhongning\"",
            "product.code",
            "[a-z0-9-]{1,64}",
        ),
        (
            "period_end = \"2021-04-25\"",
            "period_end = \"2020-04-25\"",
            "product.period_end",
            "is before period_start",
        ),
        (
            "period_end = \"2021-04-25\"",
            "period_end = \"2021-02-30\"",
            "product.period_end",
            "not a date",
        ),
        (
            "ratio = \"0.50\" }, { from = \"20000\"",
            "ratio = \"0.12345\" }, { from = \"20000\"",
            "benefit[0].bands[0].ratio",
            "more than four decimals",
        ),
        (
            "ratio = \"0.50\" }, { from = \"20000\"",
            "ratio = \"-0.5\" }, { from = \"20000\"",
            "benefit[0].bands[0].ratio",
            "below 0",
        ),
        (
            "bands = [{ from = \"0\", ratio = \"0.50\" }, { from = \"20000\"",
            "bands = [{ from = \"100\", ratio = \"0.50\" }, { from = \"20000\"",
            "benefit[0].bands[0].from",
            "must start at 0",
        ),
        (
            "{ from = \"50000\", ratio = \"0.70\" }",
            "{ from = \"20000\", ratio = \"0.70\" }",
            "benefit[0].bands[2].from",
            "not above the previous band",
        ),
        (
            "code = \"education\"",
            "code = \"illness\"",
            "benefit[1].code",
            "already the code of benefit[0]",
        ),
        (
            "visit_kinds = [\"NON_MEDICAL\"]",
            "visit_kinds = []",
            "benefit[1].visit_kinds",
            "must not be empty",
        ),
        (
            "covers = [\"OTHER_LOSS\"]",
            "covers = []",
            "benefit[1].covers",
            "must not be empty",
        ),
        (
            "covers = [\"OTHER_LOSS\"]",
            "covers = [\"NON_COMPLIANT\"]",
            "benefit[1].covers",
            "never paid",
        ),
        (
            "covers = [\"OTHER_LOSS\"]",
            "covers = [\"OTHER_LOSS\", \"OTHER_LOSS\"]",
            "benefit[1].covers[1]",
            "listed twice",
        ),
        (
            "by_category.AT_RISK",
            "by_category.RICH",
            "benefit[0].by_category.RICH",
            "unknown value \"RICH\"",
        ),
        (
            "by_category.AT_RISK",
            "by_category.DIBAO",
            "benefit[0].by_category.DIBAO",
            "not in product.eligible_categories",
        ),
        (
            "annual_cap = \"150000.00\" }",
            "annual_cap = \"150000.00\", ratio = \"1\" }",
            "benefit[0].by_category.AT_RISK.ratio",
            "unknown field",
        ),
        (
            "deductible = \"3000.00\"",
            "deductible = 3000.5",
            "benefit[1].deductible",
            "is a float",
        ),
        (
            "deductible = \"3000.00\"",
            "deductible_basis = \"MONTH\"",
            "benefit[1].deductible_basis",
            "unknown value \"MONTH\"",
        ),
        (
            "eligible_categories = [\"AT_RISK\", \"UNSTABLE_EXIT\"]",
            "eligible_categories = []",
            "product.eligible_categories",
            "must not be empty",
        ),
        (
            "layer_order = 50",
            "layer_order = \"50\"",
            "product.layer_order",
            "must be an integer",
        ),
        (
            "premium_per_member = \"60.00\"",
            "",
            "product.premium_per_member",
            "is required",
        ),
        (
            "bands = [{ from = \"0\", ratio = \"0.50\" }]",
            "",
            "benefit[1].bands",
            "is required",
        ),
        (
            "premium_per_member = \"60.00\"",
            "premium_per_member = \"1e3\"",
            "product.premium_per_member",
            "not a decimal",
        ),
        (
            "premium_per_member = \"60.00\"",
            "premium_per_member = \"1000000000000.01\"",
            "product.premium_per_member",
            "is above",
        ),
    ];
    for (from, to, field, message) in cases {
        assert!(GOOD.contains(from), "case text {from:?} not in GOOD");
        let errors = errors_of(&GOOD.replacen(from, to, 1));
        assert_error(&errors, field, message);
    }
}

#[test]
fn unknown_top_level_and_missing_sections() {
    assert_error(
        &errors_of(&format!("{GOOD}\n[extra]\na = 1\n")),
        "extra",
        "unknown field",
    );
    assert_error(&errors_of("[product]\ncode = \"x\"\n"), "benefit", "is required");
    assert_error(&errors_of("not toml at all ="), "", "not valid TOML");
    // Aggregate caps of whole schemes are above the 100,000,000.00 of a claim amount.
    let big = GOOD.replace(
        "premium_per_member = \"60.00\"",
        "premium_per_member = \"1.00\"\naggregate_cap = \"800000000.00\"",
    );
    assert!(Terms::from_toml(&big).is_ok());
}

#[test]
fn native_toml_dates_and_integer_money_are_accepted() {
    let text = GOOD
        .replace("period_start = \"2020-04-26\"", "period_start = 2020-04-26")
        .replace("premium_per_member = \"60.00\"", "premium_per_member = 60");
    let terms = Terms::from_toml(&text).unwrap();
    assert_eq!(terms.product.premium_per_member.to_string(), "60.00");
    assert_eq!(terms.product.period.start, date("2020-04-26"));
}

#[test]
fn catalogue_refuses_overlapping_periods_and_versions_the_same_period() {
    let mut catalogue = Catalogue::new();
    let first = Terms::from_toml(GOOD).unwrap();
    assert_eq!(catalogue.apply(first.clone()).unwrap(), ApplyOutcome::NewPeriod);
    assert_eq!(
        catalogue.apply(first.clone()).unwrap(),
        ApplyOutcome::Unchanged { version: 1 }
    );
    let changed = Terms::from_toml(&GOOD.replace("\"60.00\"", "\"61.00\"")).unwrap();
    assert_eq!(
        catalogue.apply(changed).unwrap(),
        ApplyOutcome::NewVersion { version: 2 }
    );

    let overlapping = Terms::from_toml(
        &GOOD
            .replace("period_start = \"2020-04-26\"", "period_start = \"2021-01-01\"")
            .replace("period_end = \"2021-04-25\"", "period_end = \"2021-12-31\""),
    )
    .unwrap();
    assert_error(
        &catalogue.apply(overlapping).unwrap_err(),
        "product.period_start",
        "overlaps period 2020-04-26..2021-04-25",
    );
    let moved_end =
        Terms::from_toml(&GOOD.replace("period_end = \"2021-04-25\"", "period_end = \"2021-05-25\"")).unwrap();
    assert_error(
        &catalogue.apply(moved_end).unwrap_err(),
        "product.period_end",
        "cannot change",
    );

    let next_year = Terms::from_toml(
        &GOOD
            .replace("period_start = \"2020-04-26\"", "period_start = \"2021-04-26\"")
            .replace("period_end = \"2021-04-25\"", "period_end = \"2022-04-25\""),
    )
    .unwrap();
    assert_eq!(catalogue.apply(next_year).unwrap(), ApplyOutcome::NewPeriod);
    assert_eq!(catalogue.len(), 2);
    let code = first.product.code.clone();
    assert_eq!(
        catalogue.period_on(&code, date("2021-04-25")).map(|v| v.version),
        Some(2)
    );
    assert_eq!(
        catalogue
            .period_on(&code, date("2021-04-26"))
            .map(|v| v.terms.product.period.start),
        Some(date("2021-04-26"))
    );
    assert!(catalogue.period_on(&code, date("2020-04-25")).is_none());
}

#[test]
fn every_example_terms_file_validates_and_the_catalogue_takes_them_all() {
    let mut files: Vec<_> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 13, "{} example terms files", files.len());
    let mut catalogue = Catalogue::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.starts_with('#') && text.contains("seeds/"),
            "{} must name its seed file",
            path.display()
        );
        let terms = Terms::from_toml(&text).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        assert_eq!(
            stem,
            format!(
                "{}_{}",
                terms.product.code,
                crate::domain::format_date(terms.product.period.start)
            )
        );
        catalogue
            .apply(terms)
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
    }
    // Seed figures that the issue names.
    let get = |file: &str| example_terms(file);
    assert_eq!(
        get("cixi-low-income-farmer-insurance_2020-08-15.toml")
            .product
            .premium_per_member
            .to_string(),
        "300.00"
    );
    assert_eq!(
        get("cixi-low-income-farmer-insurance_2021-08-15.toml")
            .product
            .premium_per_member
            .to_string(),
        "500.00"
    );
    let yinchuan = get("yinchuan-catastrophe_2019-12-01.toml");
    assert_eq!(
        yinchuan.product.aggregate_cap.map(|m| m.to_string()),
        Some("800000000.00".into())
    );
    assert_eq!(yinchuan.product.premium_per_member.to_string(), "1.00");
    assert!(yinchuan
        .benefits
        .iter()
        .all(|b| b.rule.per_claim_cap.map(|m| m.to_string()) == Some("50000.00".into())));
    let zhongning = get("zhongning-anti-poverty_2020-04-26.toml");
    let caps: Vec<_> = zhongning
        .benefits
        .iter()
        .map(|b| (b.code.to_string(), b.rule.annual_cap.map(|m| m.to_string())))
        .collect();
    assert_eq!(
        caps,
        vec![
            ("illness".into(), Some("100000.00".into())),
            ("education".into(), Some("5000.00".into())),
            ("disaster".into(), Some("30000.00".into()))
        ]
    );
    assert_eq!(
        get("chunan-supplementary-medical_2023-01-01.toml")
            .product
            .premium_per_member
            .to_string(),
        "150.00"
    );
    assert_eq!(
        get("shiyan-medical-assistance_2017-01-01.toml")
            .product
            .designated_hospitals
            .len(),
        9
    );
    let temp = get("chunan-temporary-assistance_2023-07-01.toml");
    let cap = |c| temp.benefits[0].rule_for(c).annual_cap.map(|m| m.to_string());
    assert_eq!(cap(crate::domain::Category::Dibao), Some("10000.00".into()));
    assert_eq!(cap(crate::domain::Category::DibaoMarginal), Some("8000.00".into()));
    assert_eq!(cap(crate::domain::Category::AtRisk), Some("6000.00".into()));
}

fn claim_errors(draft: &ClaimDraft) -> FieldErrors {
    match Claim::parse(draft) {
        Ok(c) => panic!("claim should have been refused: {c:?}"),
        Err(e) => e,
    }
}

fn good_claim() -> ClaimDraft {
    draft(
        "H1-0001",
        "M1",
        "2022-03-10",
        "INPATIENT",
        "",
        &[("IN_SCOPE", "80000.00"), ("OUT_OF_CATALOGUE", "30000.00")],
        &[("BASIC", "48000.00")],
    )
}

#[test]
fn claims_are_validated_field_by_field() {
    assert!(Claim::parse(&good_claim()).is_ok());
    type Mutation = fn(&mut ClaimDraft);
    let cases: &[(Mutation, &str, &str)] = &[
        (|c| c.claim_id.clear(), "claim_id", "is required"),
        (|c| c.claim_id = "x".repeat(65), "claim_id", "limit is 64"),
        (|c| c.hospital_id = "H 1".into(), "hospital_id", "may only hold"),
        (
            |c| c.member_id = "110105194912310020".into(),
            "member_id",
            "national ID",
        ),
        (|c| c.service_date = "2022-13-01".into(), "service_date", "not a date"),
        (|c| c.service_date.clear(), "service_date", "is required"),
        (|c| c.visit_kind = "HOME".into(), "visit_kind", "unknown value \"HOME\""),
        (
            |c| c.outpatient_kind = "CHRONIC".into(),
            "outpatient_kind",
            "only for OUTPATIENT",
        ),
        (|c| c.cause = "WAR".into(), "cause", "unknown value"),
        (|c| c.cause = "EDUCATION".into(), "cause", "only for NON_MEDICAL"),
        (|c| c.lines.clear(), "lines", "at least one line item"),
        (
            |c| c.lines[1].amount = "12.345".into(),
            "lines[1].amount",
            "more than two decimals",
        ),
        (|c| c.lines[1].amount = "-5.00".into(), "lines[1].amount", "negative"),
        (
            |c| c.lines[1].amount = "12,00".into(),
            "lines[1].amount",
            "not a decimal",
        ),
        (
            |c| c.lines[1].amount = "100000000.01".into(),
            "lines[1].amount",
            "is above 100000000.00",
        ),
        (
            |c| c.lines[0].expense_class = "GOLD".into(),
            "lines[0].expense_class",
            "unknown value",
        ),
        (
            |c| c.lines[0].expense_class = "OTHER_LOSS".into(),
            "lines[0].expense_class",
            "only for NON_MEDICAL",
        ),
        (|c| c.lines[0].code.clear(), "lines[0].code", "is required"),
        (
            |c| c.upstream[0].amount = "80000.01".into(),
            "upstream",
            "above the IN_SCOPE total 80000.00",
        ),
        (
            |c| c.upstream[0].kind = "PRIVATE".into(),
            "upstream[0].kind",
            "unknown value",
        ),
        (
            |c| c.upstream.push(c.upstream[0].clone()),
            "upstream[1].kind",
            "given twice",
        ),
        (
            |c| {
                c.lines[0].amount = "99999999.00".into();
                c.lines[1].amount = "99999999.00".into();
                c.upstream.clear();
            },
            "lines",
            "total cost",
        ),
        (
            |c| {
                c.visit_kind = "NON_MEDICAL".into();
                c.lines[0].expense_class = "OTHER_LOSS".into();
            },
            "lines[1].expense_class",
            "NON_MEDICAL claims carry",
        ),
    ];
    for (i, (mutate, field, message)) in cases.iter().enumerate() {
        let mut c = good_claim();
        mutate(&mut c);
        let errors = claim_errors(&c);
        assert!(
            errors.iter().any(|e| e.field == *field && e.message.contains(message)),
            "case {i}: expected {field}: …{message}… in\n{errors}"
        );
    }
}

#[test]
fn a_claim_lists_every_bad_field_at_once() {
    let mut c = good_claim();
    c.claim_id.clear();
    c.visit_kind = "X".into();
    c.lines[0].amount = "1.234".into();
    c.lines[1].expense_class = "Y".into();
    let errors = claim_errors(&c);
    for field in ["claim_id", "visit_kind", "lines[0].amount", "lines[1].expense_class"] {
        assert!(errors.has_field(field), "{field} missing in\n{errors}");
    }
}

#[test]
fn line_order_does_not_change_the_claim() {
    let a = good_claim();
    let mut b = a.clone();
    b.lines.reverse();
    b.lines[0].code = a.lines[1].code.clone();
    b.lines[1].code = a.lines[0].code.clone();
    assert_eq!(Claim::parse(&a).unwrap(), Claim::parse(&b).unwrap());
    let canonical = Claim::parse(&b).unwrap().to_draft();
    assert_eq!(Claim::parse(&canonical).unwrap(), Claim::parse(&a).unwrap());
}

#[test]
fn claim_drafts_deserialize_and_refuse_unknown_fields() {
    // claimsctl reads JSON Lines with the same serde derive; TOML exercises it without a JSON crate.
    let text = r#"
claim_id = "J-1"
hospital_id = "H1"
member_id = "M1"
service_date = "2022-03-10"
visit_kind = "OUTPATIENT"
outpatient_kind = "CHRONIC"
lines = [{ code = "x", expense_class = "IN_SCOPE", amount = "10.00" }]
"#;
    let draft: ClaimDraft = toml::from_str(text).unwrap();
    assert!(Claim::parse(&draft).is_ok());
    assert!(toml::from_str::<ClaimDraft>(&format!("{text}\nsurprise = 1\n")).is_err());
}

//! TermsService: versions, refusals with field paths, validation without storing, the catalogue.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use claims::proto::{self, ApplyOutcome, TermsText};
use tonic::Code;

use crate::common::*;
use crate::support::*;

fn example_terms(file: &str) -> String {
    let path = examples_dir().join("terms").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const MA_FILE: &str = "cixi-medical-assistance_2022-01-01.toml";
const DIBAO_80: &str = r#"by_category.DIBAO = { bands = [{ from = "0", ratio = "0.80" }] }"#;
const DIBAO_90: &str = r#"by_category.DIBAO = { bands = [{ from = "0", ratio = "0.90" }] }"#;

/// Medical assistance 2022 with DIBAO at 90% instead of 80%.
fn changed_ma_terms() -> String {
    let text = example_terms(MA_FILE);
    assert_eq!(
        text.matches(DIBAO_80).count(),
        1,
        "the example file holds the DIBAO inpatient rule"
    );
    text.replacen(DIBAO_80, DIBAO_90, 1)
}

/// A product with several problems in one file.
const BAD_TERMS: &str = r#"
[product]
code = "test-bad"
kind = "NOPE"
colour = "red"
layer_order = 5
period_start = "2022-01-01"
period_end = "2021-12-31"
premium_per_member = "10.00"
eligible_categories = ["DIBAO"]

[[benefit]]
code = "b"
visit_kinds = ["INPATIENT"]
covers = ["IN_SCOPE"]
bands = [{ from = "0", ratio = "1.50" }, { from = "10", ratio = "0.50" }]
"#;

const BAD_TERMS_FIELDS: [&str; 4] = [
    "product.kind",
    "product.colour",
    "product.period_end",
    "benefit[0].bands[0].ratio",
];

/// A new, valid product.
const NEW_TERMS: &str = r#"
[product]
code = "test-new"
kind = "SUPPLEMENTARY_MEDICAL"
layer_order = 5
period_start = "2030-01-01"
period_end = "2030-12-31"
premium_per_member = "10.00"
eligible_categories = ["DIBAO"]

[[benefit]]
code = "all"
visit_kinds = ["INPATIENT"]
covers = ["IN_SCOPE"]
bands = [{ from = "0", ratio = "0.50" }]
"#;

fn toml(text: impl Into<String>) -> TermsText {
    TermsText { toml: text.into() }
}

async fn get_product(app: &TestApp, code: &str, start: &str, version: u32) -> Result<proto::Product, tonic::Status> {
    app.terms()
        .await
        .get_product(proto::GetProductRequest {
            product_code: code.into(),
            period_start: start.into(),
            version,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn changed_terms_make_a_new_version_and_old_settlements_keep_theirs() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let (h1, _) = settle_one(&app, claim_a1("H1", "H1-0001")).await;
    assert!(inner(&h1).layers.iter().all(|l| l.terms_version == 1));

    let mut terms = app.terms().await;
    let applied = terms
        .apply_terms(toml(changed_ma_terms()))
        .await
        .expect("applies")
        .into_inner();
    assert_eq!(
        (
            applied.product_code.as_str(),
            applied.period_start.as_str(),
            applied.period_end.as_str(),
            applied.version,
            applied.outcome
        ),
        (MA, CIXI_START, "2022-12-31", 2, ApplyOutcome::NewVersion as i32)
    );

    // A new settlement uses version 2 (DIBAO inpatient 90%) and names it.
    let (h5, _) = settle_one(
        &app,
        claim(
            "H1",
            "H1-0005",
            "M1",
            "2022-06-01",
            "INPATIENT",
            "",
            &[("IN_SCOPE", "10000.00")],
            &[],
        ),
    )
    .await;
    let s = inner(&h5);
    assert_layer(s, MA, "inpatient", "10000.00", "0.00", "9000.00", &[]);
    let versions: Vec<(&str, u32)> = s
        .layers
        .iter()
        .map(|l| (l.product_code.as_str(), l.terms_version))
        .collect();
    assert_eq!(versions, [(MA, 2), (TOPUP, 1), (TIANYI, 1), (STOP_LOSS, 1)]);

    // The old settlement still names version 1 and keeps its amounts.
    let old = get_settlement(&app, "H1", "H1-0001").await.expect("stored");
    assert_eq!(layer(inner(&old), MA).terms_version, 1);
    assert_eq!(old, h1);

    // Both versions are kept; version 0 means the current one.
    let current = get_product(&app, MA, CIXI_START, 0).await.expect("current");
    assert_eq!(current.version, 2);
    assert!(current.toml.contains(DIBAO_90));
    let first = get_product(&app, MA, CIXI_START, 1).await.expect("version 1");
    assert_eq!(first.version, 1);
    assert!(first.toml.contains(DIBAO_80));
    let listed = terms
        .list_products(proto::ListProductsRequest {})
        .await
        .expect("lists")
        .into_inner()
        .products;
    let ma: Vec<_> = listed.iter().filter(|p| p.product_code == MA).collect();
    assert_eq!(ma.len(), 1, "one entry per period");
    assert_eq!(ma[0].version, 2, "ListProducts shows the current version");

    // Identical terms again: unchanged, nothing written.
    let before = app.db_fingerprint().await;
    let again = terms
        .apply_terms(toml(changed_ma_terms()))
        .await
        .expect("applies")
        .into_inner();
    assert_eq!((again.version, again.outcome), (2, ApplyOutcome::Unchanged as i32));
    assert_eq!(app.db_fingerprint().await, before, "unchanged terms write nothing");
    app.stop().await;
}

#[tokio::test]
async fn applying_the_example_terms_again_is_unchanged() {
    let app = spawn_app().await;
    let before = app.db_fingerprint().await;
    let mut terms = app.terms().await;
    let applied = terms
        .apply_terms(toml(example_terms(MA_FILE)))
        .await
        .expect("applies")
        .into_inner();
    assert_eq!((applied.version, applied.outcome), (1, ApplyOutcome::Unchanged as i32));
    assert_eq!(app.db_fingerprint().await, before);
    let applied = terms.apply_terms(toml(NEW_TERMS)).await.expect("applies").into_inner();
    assert_eq!(
        (applied.product_code.as_str(), applied.version, applied.outcome),
        ("test-new", 1, ApplyOutcome::NewPeriod as i32)
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_terms_are_refused_with_every_field_and_nothing_stored() {
    let app = spawn_app().await;
    let before = app.db_fingerprint().await;
    let status = app
        .terms()
        .await
        .apply_terms(toml(BAD_TERMS))
        .await
        .expect_err("bad terms are refused");
    for field in BAD_TERMS_FIELDS {
        assert_refused_with_field(&status, Code::InvalidArgument, field);
    }
    let status = app
        .terms()
        .await
        .apply_terms(toml("this is = not [toml"))
        .await
        .expect_err("not TOML");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(app.db_fingerprint().await, before, "refused terms write nothing");
    let status = get_product(&app, "test-bad", "", 0).await.expect_err("not stored");
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn an_overlapping_period_is_refused_naming_period_start() {
    let app = spawn_app().await;
    let before = app.db_fingerprint().await;
    let overlapping = example_terms(MA_FILE)
        .replacen(r#"period_start = "2022-01-01""#, r#"period_start = "2022-06-01""#, 1)
        .replacen(r#"period_end = "2022-12-31""#, r#"period_end = "2023-05-31""#, 1);
    assert!(overlapping.contains("2022-06-01") && overlapping.contains("2023-05-31"));
    let status = app
        .terms()
        .await
        .apply_terms(toml(overlapping.clone()))
        .await
        .expect_err("overlaps 2022");
    assert_refused_with_field(&status, Code::InvalidArgument, "product.period_start");
    assert_eq!(app.db_fingerprint().await, before);

    let validated = app
        .terms()
        .await
        .validate_terms(toml(overlapping))
        .await
        .expect("validates")
        .into_inner();
    assert!(!validated.valid);
    assert!(
        validated.violations.iter().any(|v| v.field == "product.period_start"),
        "{validated:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn validate_terms_reports_violations_and_stores_nothing() {
    let app = spawn_app().await;
    let before = app.db_fingerprint().await;
    let mut terms = app.terms().await;

    let bad = terms
        .validate_terms(toml(BAD_TERMS))
        .await
        .expect("validates")
        .into_inner();
    assert!(!bad.valid);
    let fields: Vec<&str> = bad.violations.iter().map(|v| v.field.as_str()).collect();
    for field in BAD_TERMS_FIELDS {
        assert!(fields.contains(&field), "{field} is listed in {fields:?}");
    }
    assert!(bad.violations.iter().all(|v| !v.description.is_empty()));

    let good = terms
        .validate_terms(toml(NEW_TERMS))
        .await
        .expect("validates")
        .into_inner();
    assert!(good.valid, "{good:?}");
    assert!(good.violations.is_empty());
    let changed = terms
        .validate_terms(toml(changed_ma_terms()))
        .await
        .expect("validates")
        .into_inner();
    assert!(changed.valid, "{changed:?}");

    assert_eq!(app.db_fingerprint().await, before, "validation stores nothing");
    let status = get_product(&app, "test-new", "", 0).await.expect_err("not stored");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(get_product(&app, MA, CIXI_START, 0).await.expect("MA").version, 1);
    app.stop().await;
}

#[tokio::test]
async fn list_products_and_get_product_show_the_example_terms() {
    let app = spawn_app().await;
    let mut files: Vec<(String, String)> = std::fs::read_dir(examples_dir().join("terms"))
        .expect("examples")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".toml")?;
            let (code, start) = stem.rsplit_once('_')?;
            Some((code.to_owned(), start.to_owned()))
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 13, "the example terms: {files:?}");

    let products = app
        .terms()
        .await
        .list_products(proto::ListProductsRequest {})
        .await
        .expect("lists")
        .into_inner()
        .products;
    let mut listed: Vec<(String, String)> = products
        .iter()
        .map(|p| (p.product_code.clone(), p.period_start.clone()))
        .collect();
    listed.sort();
    assert_eq!(listed, files, "every example product period, once");
    assert!(products.iter().all(|p| p.version == 1 && !p.applied_at.is_empty()));

    let zn = get_product(&app, ZN, ZN_START, 0).await.expect("zhongning");
    assert_eq!(
        (
            zn.kind,
            zn.layer_order,
            zn.period_end.as_str(),
            zn.premium_per_member.as_str(),
            zn.version
        ),
        (proto::ProductKind::AntiPoverty as i32, 50, "2021-04-25", "60.00", 1)
    );
    let mut eligible: Vec<String> = zn.eligible_categories.iter().map(|c| category_name(*c)).collect();
    eligible.sort();
    assert_eq!(eligible, ["AT_RISK", "UNSTABLE_EXIT"]);
    assert_eq!(zn.benefit_codes, ["illness", "education", "disaster"]);
    assert_eq!(zn.toml, example_terms("zhongning-anti-poverty_2020-04-26.toml"));
    assert!(zn.name.contains("Zhongning"));

    let farmer = "cixi-low-income-farmer-insurance";
    let y1 = get_product(&app, farmer, "2020-08-15", 0).await.expect("year 1");
    assert_eq!(
        (y1.premium_per_member.as_str(), y1.period_end.as_str()),
        ("300.00", "2021-08-14")
    );
    let y2 = get_product(&app, farmer, "2021-08-15", 0).await.expect("year 2");
    assert_eq!(y2.premium_per_member, "500.00");
    let latest = get_product(&app, farmer, "", 0).await.expect("latest");
    assert_eq!(
        latest.period_start, "2021-08-15",
        "no period in force today: the latest"
    );

    let status = get_product(&app, "no-such-product", "", 0).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = get_product(&app, ZN, ZN_START, 2).await.expect_err("no version 2");
    assert_eq!(status.code(), Code::NotFound);
    let status = get_product(&app, ZN, "2020-04-27", 0)
        .await
        .expect_err("no such period");
    assert_eq!(status.code(), Code::NotFound);
    let status = get_product(&app, ZN, "26/04/2020", 0).await.expect_err("bad date");
    assert_refused_with_field(&status, Code::InvalidArgument, "period_start");
    app.stop().await;
}

#[tokio::test]
async fn every_band_problem_is_listed_even_after_a_bad_band() {
    // ADJUDICATION.md: a bad file is refused whole "with every problem listed by its path". The second
    // band does not start above the first (both from 0), whatever is wrong with the first band's ratio.
    let text = BAD_TERMS.replacen(r#"from = "10", ratio"#, r#"from = "0", ratio"#, 1);
    assert!(text.contains(r#"{ from = "0", ratio = "0.50" }"#));
    let app = spawn_app().await;
    let validated = app
        .terms()
        .await
        .validate_terms(toml(text.clone()))
        .await
        .expect("validates")
        .into_inner();
    let fields: Vec<&str> = validated.violations.iter().map(|v| v.field.as_str()).collect();
    for field in ["benefit[0].bands[0].ratio", "benefit[0].bands[1].from"] {
        assert!(fields.contains(&field), "ValidateTerms lists {field}: {fields:?}");
    }
    let status = app.terms().await.apply_terms(toml(text)).await.expect_err("refused");
    for field in ["benefit[0].bands[0].ratio", "benefit[0].bands[1].from"] {
        assert_refused_with_field(&status, Code::InvalidArgument, field);
    }
    app.stop().await;
}

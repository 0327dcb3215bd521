//! MemberService: roster import with per-row errors, category changes by date, the member view.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use claims::proto::{self, EnrollmentRow, Member};
use tonic::Code;

use crate::common::*;
use crate::support::*;

fn enrollment<'m>(member: &'m Member, product: &str) -> &'m proto::EnrollmentView {
    member
        .enrollments
        .iter()
        .find(|e| e.product_code == product)
        .unwrap_or_else(|| panic!("{} is not shown enrolled in {product}: {member:?}", member.member_id))
}

fn benefit<'e>(e: &'e proto::EnrollmentView, code: &str) -> &'e proto::BenefitUsage {
    e.benefits
        .iter()
        .find(|b| b.benefit_code == code)
        .unwrap_or_else(|| panic!("no benefit {code} in {e:?}"))
}

fn cap<'c>(caps: &'c [proto::CapRoom], name: &str) -> (&'c str, &'c str, &'c str) {
    let c = caps
        .iter()
        .find(|c| c.cap == name)
        .unwrap_or_else(|| panic!("no cap {name} in {caps:?}"));
    (c.limit.as_str(), c.used.as_str(), c.room.as_str())
}

fn fields_of(summary: &proto::EnrollSummary, row: u64) -> Vec<String> {
    summary
        .errors
        .iter()
        .find(|e| e.row == row)
        .map(|e| e.violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn enroll_reports_bad_rows_by_number_and_imports_the_rest() {
    let app = spawn_app().await;
    let rows: Vec<EnrollmentRow> = vec![
        // 1: good, category and enrollment.
        row("M10", "DIBAO", "2022-01-01", MA, CIXI_START),
        // 2: unknown category number.
        EnrollmentRow {
            category: 42,
            ..row("M12", "", "2022-01-01", MA, CIXI_START)
        },
        // 3: bad date.
        row("M13", "DIBAO", "2022-13-01", MA, CIXI_START),
        // 4: a product period that does not exist.
        row("M14", "DIBAO", "2022-01-01", MA, "2019-01-01"),
        // 5: no member id.
        row("", "DIBAO", "2022-01-01", MA, CIXI_START),
        // 6: good, enrollment only.
        row("M11", "", "", TIANYI, CIXI_START),
        // 7: good, a second enrollment of M10, with its own premium.
        EnrollmentRow {
            premium: "45.50".into(),
            ..row("M10", "", "", TIANYI, CIXI_START)
        },
        // 8: good, a category change only.
        row("M11", "DIBAO_MARGINAL", "2022-03-01", "", ""),
    ];
    let summary = enroll(&app, rows).await;
    assert_eq!(
        (
            summary.rows,
            summary.rows_accepted,
            summary.enrollments,
            summary.category_changes
        ),
        (8, 4, 3, 2),
        "{summary:?}"
    );
    let bad_rows: Vec<u64> = summary.errors.iter().map(|e| e.row).collect();
    assert_eq!(bad_rows, [2, 3, 4, 5], "bad rows by 1-based number: {summary:?}");
    assert!(fields_of(&summary, 2).contains(&"category".to_owned()), "{summary:?}");
    assert!(
        fields_of(&summary, 3).contains(&"effective_date".to_owned()),
        "{summary:?}"
    );
    let row4 = fields_of(&summary, 4);
    assert!(
        row4.iter().any(|f| f == "product_code" || f == "period_start"),
        "the missing product period is named: {row4:?}"
    );
    assert!(fields_of(&summary, 5).contains(&"member_id".to_owned()), "{summary:?}");
    assert!(summary
        .errors
        .iter()
        .all(|e| e.violations.iter().all(|v| !v.description.is_empty())));

    // Good rows are stored, bad rows not at all.
    let m10 = get_member(&app, "M10", "2022-06-01").await.expect("M10 imported");
    assert_eq!(category_name(m10.category), "DIBAO");
    assert_eq!(enrollment(&m10, MA).premium, "0.00");
    assert_eq!(enrollment(&m10, TIANYI).premium, "45.50");
    let m11 = get_member(&app, "M11", "2022-06-01").await.expect("M11 imported");
    assert_eq!(category_name(m11.category), "DIBAO_MARGINAL");
    assert_eq!(enrollment(&m11, TIANYI).premium, "50.00");
    for bad in ["M12", "M13", "M14"] {
        let status = get_member(&app, bad, "").await.expect_err("a bad row imports nothing");
        assert_refused_with_field(&status, Code::NotFound, "member_id");
    }
    let lr = loss_ratio(&app, TIANYI, CIXI_START).await;
    assert_eq!(
        (lr.written_premium.as_str(), lr.enrolled_members),
        ("95.50", 2),
        "written premium of the accepted rows"
    );

    // Enrolling again in the same period replaces the premium; the member counts once.
    let summary = enroll(
        &app,
        vec![EnrollmentRow {
            premium: "60.00".into(),
            ..row("M10", "", "", TIANYI, CIXI_START)
        }],
    )
    .await;
    assert!(summary.errors.is_empty(), "{summary:?}");
    let lr = loss_ratio(&app, TIANYI, CIXI_START).await;
    assert_eq!((lr.written_premium.as_str(), lr.enrolled_members), ("110.00", 2));
    app.stop().await;
}

#[tokio::test]
async fn a_category_change_applies_to_claims_by_service_date() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    change_category(&app, "M1", "GENERAL", "2022-07-01")
        .await
        .expect("sets");

    let inpatient =
        |id: &str, date: &str| claim("H1", id, "M1", date, "INPATIENT", "", &[("IN_SCOPE", "1000.00")], &[]);
    let (before, _) = settle_one(&app, inpatient("K-1", "2022-06-30")).await;
    assert_eq!(category_name(inner(&before).category), "DIBAO");
    assert_layer(inner(&before), MA, "inpatient", "1000.00", "0.00", "800.00", &[]);

    let (after, _) = settle_one(&app, inpatient("K-2", "2022-07-01")).await;
    let s = inner(&after);
    assert_eq!(category_name(s.category), "GENERAL");
    for product in CIXI_2022 {
        assert_layer(s, product, "", "0.00", "0.00", "0.00", &["CATEGORY_NOT_ELIGIBLE"]);
    }
    assert_totals(s, "1000.00", "0.00", "0.00", "1000.00");

    // A later change with the same effective date replaces the earlier one.
    change_category(&app, "M1", "DESTITUTE", "2022-07-01")
        .await
        .expect("sets");
    let (replaced, _) = settle_one(&app, inpatient("K-3", "2022-07-02")).await;
    assert_eq!(category_name(inner(&replaced).category), "DESTITUTE");
    assert_layer(inner(&replaced), MA, "inpatient", "1000.00", "0.00", "1000.00", &[]);
    // The earlier settlement keeps the category it was settled under.
    let k2 = get_settlement(&app, "H1", "K-2").await.expect("K-2");
    assert_eq!(category_name(inner(&k2).category), "GENERAL");

    let m = get_member(&app, "M1", "2022-06-30").await.expect("M1");
    assert_eq!(category_name(m.category), "DIBAO");
    let history: Vec<(String, String)> = m
        .categories
        .iter()
        .map(|c| (c.effective_date.clone(), category_name(c.category)))
        .collect();
    assert_eq!(
        history,
        [
            ("2022-01-01".to_owned(), "DIBAO".to_owned()),
            ("2022-07-01".to_owned(), "DESTITUTE".to_owned())
        ]
    );
    let m = get_member(&app, "M1", "2022-07-01").await.expect("M1");
    assert_eq!(category_name(m.category), "DESTITUTE");

    // Refusals.
    let before = app.db_fingerprint().await;
    let status = change_category(&app, "M404", "DIBAO", "2022-01-01")
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = change_category(&app, "M1", "", "2022-01-01")
        .await
        .expect_err("no category");
    assert_refused_with_field(&status, Code::InvalidArgument, "category");
    let status = change_category(&app, "M1", "DIBAO", "2022-02-30")
        .await
        .expect_err("bad date");
    assert_refused_with_field(&status, Code::InvalidArgument, "effective_date");
    assert_eq!(app.db_fingerprint().await, before);
    app.stop().await;
}

#[tokio::test]
async fn get_member_shows_categories_enrollments_paid_and_room() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    settle_one(&app, claim_a1("H1", "H1-0001")).await;
    settle_one(&app, claim_a3("H1", "H1-0003")).await;

    let m = get_member(&app, "M1", "2022-06-01").await.expect("M1");
    assert_eq!(m.member_id, "M1");
    assert_eq!(category_name(m.category), "DIBAO");
    assert_eq!(m.categories.len(), 1);
    let mut products: Vec<&str> = m.enrollments.iter().map(|e| e.product_code.as_str()).collect();
    products.sort_unstable();
    let mut expected = CIXI_2022.to_vec();
    expected.sort_unstable();
    assert_eq!(products, expected);

    let ma = enrollment(&m, MA);
    assert_eq!(
        (ma.period_start.as_str(), ma.period_end.as_str(), ma.paid.as_str()),
        ("2022-01-01", "2022-12-31", "25600.00")
    );
    assert_eq!(cap(&ma.caps, "product_annual"), ("100000.00", "25600.00", "74400.00"));
    let inpatient = benefit(ma, "inpatient");
    assert_eq!(
        (inpatient.paid.as_str(), inpatient.band_position.as_str()),
        ("16000.00", "20000.00")
    );
    let outpatient = benefit(ma, "outpatient");
    assert_eq!(outpatient.paid, "9600.00");
    assert_eq!(
        cap(&outpatient.caps, "benefit_annual"),
        ("20000.00", "9600.00", "10400.00")
    );

    let topup = benefit(enrollment(&m, TOPUP), "topup");
    assert_eq!(
        (
            topup.deductible.as_str(),
            topup.deductible_used.as_str(),
            topup.paid.as_str()
        ),
        ("30000.00", "6400.00", "0.00")
    );
    let tianyi = enrollment(&m, TIANYI);
    assert_eq!((tianyi.premium.as_str(), tianyi.paid.as_str()), ("50.00", "9617.28"));
    let ooc = benefit(tianyi, "out-of-catalogue");
    assert_eq!((ooc.band_position.as_str(), ooc.paid.as_str()), ("31234.56", "9617.28"));
    let stop_loss = benefit(enrollment(&m, STOP_LOSS), "stop-loss");
    assert_eq!(stop_loss.deductible_used, "34017.28");

    let status = get_member(&app, "M404", "").await.expect_err("unknown member");
    assert_refused_with_field(&status, Code::NotFound, "member_id");
    let status = get_member(&app, "M1", "2022-13-01").await.expect_err("bad as_of");
    assert_refused_with_field(&status, Code::InvalidArgument, "as_of");
    app.stop().await;
}

#[tokio::test]
async fn a_roster_refused_by_the_transport_writes_nothing() {
    // SERVICE.md: "Nothing is written for a refused request." A roster whose last message is above
    // the 1 MiB limit is refused (OUT_OF_RANGE), so none of its rows may be stored, not even the
    // first 1,000 that the server may already have handed to the ledger.
    let app = spawn_app().await;
    let before = app.db_fingerprint().await;
    let mut rows: Vec<EnrollmentRow> = (0..1001)
        .map(|i| row(&format!("R{i}"), "DIBAO", "2022-01-01", MA, CIXI_START))
        .collect();
    rows.push(EnrollmentRow {
        member_id: "x".repeat(1024 * 1024 + 10),
        ..row("", "DIBAO", "2022-01-01", "", "")
    });
    let status = app
        .members()
        .await
        .enroll(tokio_stream::iter(rows))
        .await
        .expect_err("the roster is refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(
        app.db_fingerprint().await.len(),
        before.len(),
        "a refused roster imports no row"
    );
    let status = get_member(&app, "R0", "").await.expect_err("R0 not imported");
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

/// Rows of one roster chunk that repeat an enrollment or a category date apply one after another,
/// as if each were imported alone: the last premium and category stand, and the running figures
/// count the member once with the last premium. The roster is stored in chunks of 1,000 rows, so
/// the repeats here share a chunk, and a statement of the import that changed a row twice would
/// fail.
#[tokio::test]
async fn repeated_rows_in_one_roster_apply_in_order() {
    let app = spawn_app().await;
    let premium = |p: &str, r: EnrollmentRow| EnrollmentRow { premium: p.into(), ..r };
    let rows = vec![
        premium("10.00", row("M20", "DIBAO", "2022-01-01", TIANYI, CIXI_START)),
        row("M21", "DIBAO", "2022-01-01", TIANYI, CIXI_START),
        premium("20.00", row("M20", "DESTITUTE", "2022-01-01", TIANYI, CIXI_START)),
        row("M20", "DIBAO_MARGINAL", "2022-03-01", MA, CIXI_START),
        premium("35.00", row("M20", "", "", TIANYI, CIXI_START)),
        premium("1.00", row("M21", "", "", MA, CIXI_START)),
        premium("2.00", row("M21", "", "", MA, CIXI_START)),
    ];
    let summary = enroll(&app, rows).await;
    assert!(summary.errors.is_empty(), "{summary:?}");
    assert_eq!((summary.rows_accepted, summary.enrollments), (7, 7), "{summary:?}");

    let m20 = get_member(&app, "M20", "2022-02-01").await.expect("M20");
    assert_eq!(
        category_name(m20.category),
        "DESTITUTE",
        "the later row for 2022-01-01 stands"
    );
    assert_eq!(enrollment(&m20, TIANYI).premium, "35.00");
    assert_eq!(enrollment(&m20, MA).premium, "0.00");
    let m20_later = get_member(&app, "M20", "2022-06-01").await.expect("M20");
    assert_eq!(category_name(m20_later.category), "DIBAO_MARGINAL");
    let m21 = get_member(&app, "M21", "2022-02-01").await.expect("M21");
    assert_eq!(enrollment(&m21, TIANYI).premium, "50.00", "the product's premium");
    assert_eq!(enrollment(&m21, MA).premium, "2.00");

    let lr = loss_ratio(&app, TIANYI, CIXI_START).await;
    assert_eq!((lr.written_premium.as_str(), lr.enrolled_members), ("85.00", 2));
    let lr = loss_ratio(&app, MA, CIXI_START).await;
    assert_eq!((lr.written_premium.as_str(), lr.enrolled_members), ("2.00", 2));
    app.stop().await;
}

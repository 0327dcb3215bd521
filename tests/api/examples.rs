//! Worked examples A and B of ADJUDICATION.md through the API, to the fen.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use claims::proto::Settlement;

use crate::common::*;
use crate::support::*;

fn assert_layer_meta(s: &Settlement, expected: &[(&str, i64)], start: &str, end: &str) {
    let got: Vec<(&str, i64, &str, &str, u32)> = s
        .layers
        .iter()
        .map(|l| {
            (
                l.product_code.as_str(),
                l.layer_order,
                l.period_start.as_str(),
                l.period_end.as_str(),
                l.terms_version,
            )
        })
        .collect();
    let want: Vec<(&str, i64, &str, &str, u32)> = expected.iter().map(|(p, o)| (*p, *o, start, end, 1)).collect();
    assert_eq!(got, want, "layers of claim {} in cascade order", s.claim_id);
}

const CIXI_LAYERS: [(&str, i64); 4] = [(MA, 10), (TOPUP, 20), (TIANYI, 30), (STOP_LOSS, 40)];

fn assert_h1_0001(s: &Settlement) {
    assert_eq!(
        (s.claim_id.as_str(), s.hospital_id.as_str(), s.member_id.as_str()),
        ("H1-0001", "H1", "M1")
    );
    assert_eq!(s.service_date, "2022-03-10");
    assert_eq!(category_name(s.category), "DIBAO");
    assert_layer_meta(s, &CIXI_LAYERS, "2022-01-01", "2022-12-31");
    assert_layer(s, MA, "inpatient", "20000.00", "0.00", "16000.00", &[]);
    assert_layer(s, TOPUP, "topup", "4000.00", "4000.00", "0.00", &["DEDUCTIBLE"]);
    assert_layer(s, TIANYI, "out-of-catalogue", "30000.00", "0.00", "9000.00", &[]);
    assert_layer(
        s,
        STOP_LOSS,
        "stop-loss",
        "31000.00",
        "31000.00",
        "0.00",
        &["DEDUCTIBLE"],
    );
    assert_totals(s, "116500.00", "60000.00", "25000.00", "31500.00");
    assert!(s.reasons.is_empty(), "no claim-wide reasons: {:?}", s.reasons);
}

fn assert_h1_0002(s: &Settlement) {
    assert_eq!(s.claim_id, "H1-0002");
    assert_layer_meta(s, &CIXI_LAYERS, "2022-01-01", "2022-12-31");
    assert_layer(s, MA, "outpatient", "15000.00", "0.00", "12000.00", &[]);
    assert_layer(s, TOPUP, "topup", "3000.00", "3000.00", "0.00", &["DEDUCTIBLE"]);
    assert_layer(s, TIANYI, "out-of-catalogue", "0.00", "0.00", "0.00", &[]);
    assert_layer(s, STOP_LOSS, "stop-loss", "3000.00", "3000.00", "0.00", &["DEDUCTIBLE"]);
    assert_totals(s, "30000.00", "15000.00", "12000.00", "3000.00");
}

fn assert_h1_0003(s: &Settlement) {
    assert_eq!(s.claim_id, "H1-0003");
    assert_layer(
        s,
        MA,
        "outpatient",
        "12000.00",
        "0.00",
        "8000.00",
        &["CAP_BENEFIT_ANNUAL"],
    );
    assert_layer(s, TOPUP, "topup", "4000.00", "4000.00", "0.00", &["DEDUCTIBLE"]);
    assert_layer(s, TIANYI, "out-of-catalogue", "1234.56", "0.00", "617.28", &[]);
    assert_layer(s, STOP_LOSS, "stop-loss", "4617.28", "4617.28", "0.00", &["DEDUCTIBLE"]);
    assert_totals(s, "21234.56", "8000.00", "8617.28", "4617.28");
}

#[tokio::test]
async fn worked_example_a_through_the_settle_stream_to_the_fen() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;

    // H1-0001..H1-0003 over one Settle stream: one reply per request, in order, each with its claim id.
    let replies = settle_stream(
        &app,
        vec![
            claim_a1("H1", "H1-0001"),
            claim_a2("H1", "H1-0002"),
            claim_a3("H1", "H1-0003"),
        ],
    )
    .await;
    let ids: Vec<&str> = replies.iter().map(|r| r.claim_id.as_str()).collect();
    assert_eq!(ids, ["H1-0001", "H1-0002", "H1-0003"]);
    assert!(replies.iter().all(|r| !r.replay), "first submissions are not replays");
    let stored: Vec<_> = replies.iter().map(reply_settlement).collect();
    assert!(
        stored.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "claims of one member in one stream settle in stream order: {:?}",
        stored.iter().map(|s| s.sequence).collect::<Vec<_>>()
    );
    assert!(stored.iter().all(|s| !s.reversed && !s.settled_at.is_empty()));
    assert_h1_0001(inner(stored[0]));
    assert_h1_0002(inner(stored[1]));
    assert_h1_0003(inner(stored[2]));

    // Reverse H1-0002: the outpatient cap of medical assistance has room again.
    let reversed = reverse(&app, "H1", "H1-0002").await.expect("H1-0002 reverses");
    assert!(reversed.reversed, "the reversal returns the settlement marked reversed");
    assert!(!reversed.reversed_at.is_empty(), "reversed_at is set");
    assert_eq!(reversed.sequence, stored[1].sequence);
    assert_h1_0002(inner(&reversed));

    // H1-0004 with H1-0003's content, through SettleOne.
    let (h4, replay) = settle_one(&app, claim_a3("H1", "H1-0004")).await;
    assert!(!replay);
    let s = inner(&h4);
    assert_eq!(s.claim_id, "H1-0004");
    assert_layer(s, MA, "outpatient", "12000.00", "0.00", "9600.00", &[]);
    assert_layer(s, TOPUP, "topup", "2400.00", "2400.00", "0.00", &["DEDUCTIBLE"]);
    assert_layer(s, TIANYI, "out-of-catalogue", "1234.56", "0.00", "617.28", &[]);
    assert_layer(s, STOP_LOSS, "stop-loss", "3017.28", "3017.28", "0.00", &["DEDUCTIBLE"]);
    assert_totals(s, "21234.56", "8000.00", "10217.28", "3017.28");

    // Settlements are final: the reversal changed none of the others.
    let h1 = get_settlement(&app, "H1", "H1-0001").await.expect("H1-0001 is stored");
    assert_eq!(h1, *stored[0], "H1-0001 is unchanged");
    let h3 = get_settlement(&app, "H1", "H1-0003").await.expect("H1-0003 is stored");
    assert_eq!(
        h3, *stored[2],
        "H1-0003 keeps its amounts after the reversal of H1-0002"
    );
    let h2 = get_settlement(&app, "H1", "H1-0002").await.expect("H1-0002 is stored");
    assert!(h2.reversed, "GetSettlement shows H1-0002 reversed");
    assert_eq!(h2.reversed_at, reversed.reversed_at);
    assert_h1_0002(inner(&h2));
    app.stop().await;
}

#[tokio::test]
async fn worked_example_a_through_settle_one_matches_the_stream() {
    // The same example one claim at a time, so that the unary path gives the same figures.
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let (h1, _) = settle_one(&app, claim_a1("H1", "H1-0001")).await;
    assert_h1_0001(inner(&h1));
    let (h2, _) = settle_one(&app, claim_a2("H1", "H1-0002")).await;
    assert_h1_0002(inner(&h2));
    let (h3, _) = settle_one(&app, claim_a3("H1", "H1-0003")).await;
    assert_h1_0003(inner(&h3));
    app.stop().await;
}

#[tokio::test]
async fn worked_example_b_and_its_loss_ratio() {
    let app = spawn_app().await;
    enroll_zhongning(&app, "M2").await;

    let (z1, _) = settle_one(&app, claim_z1("ZH", "Z-1")).await;
    let s = inner(&z1);
    assert_eq!(category_name(s.category), "AT_RISK");
    assert_eq!(s.layers.len(), 1, "M2 is enrolled in one product: {:?}", s.layers);
    assert_eq!(
        (
            s.layers[0].period_start.as_str(),
            s.layers[0].period_end.as_str(),
            s.layers[0].layer_order
        ),
        ("2020-04-26", "2021-04-25", 50)
    );
    assert_layer(s, ZN, "illness", "30000.00", "10000.00", "10000.00", &["DEDUCTIBLE"]);
    assert_totals(s, "69000.00", "39000.00", "10000.00", "20000.00");

    let (z2, _) = settle_one(&app, claim_z2("ZH", "Z-2")).await;
    let s = inner(&z2);
    assert_layer(s, ZN, "illness", "70000.00", "0.00", "46000.00", &[]);
    assert_totals(s, "190000.00", "120000.00", "46000.00", "24000.00");

    let (z3, _) = settle_one(&app, claim_education("ZH", "Z-3", "2020-09-01", "16000.00")).await;
    let s = inner(&z3);
    assert_layer(
        s,
        ZN,
        "education",
        "16000.00",
        "3000.00",
        "5000.00",
        &["DEDUCTIBLE", "CAP_BENEFIT_ANNUAL"],
    );
    assert_totals(s, "16000.00", "0.00", "5000.00", "11000.00");

    let (z4, _) = settle_one(&app, claim_education("ZH", "Z-4", "2020-10-01", "8000.00")).await;
    let s = inner(&z4);
    assert_layer(s, ZN, "education", "8000.00", "0.00", "0.00", &["CAP_BENEFIT_ANNUAL"]);
    assert_totals(s, "8000.00", "0.00", "0.00", "8000.00");

    let lr = loss_ratio(&app, ZN, ZN_START).await;
    assert_eq!(
        (
            lr.product_code.as_str(),
            lr.period_start.as_str(),
            lr.period_end.as_str(),
            lr.written_premium.as_str(),
            lr.paid.as_str(),
            lr.paid_claims,
            lr.enrolled_members,
            lr.loss_ratio.as_str()
        ),
        (ZN, ZN_START, "2021-04-25", "60.00", "61000.00", 3, 1, "1016.6667")
    );
    app.stop().await;
}

#[tokio::test]
async fn rounding_is_half_up_for_payouts_and_the_loss_ratio() {
    let app = spawn_app().await;
    let summary = enroll(
        &app,
        vec![claims::proto::EnrollmentRow {
            premium: "32.00".into(),
            ..row("M2", "AT_RISK", ZN_START, ZN, ZN_START)
        }],
    )
    .await;
    assert!(summary.errors.is_empty(), "{summary:?}");
    // 0.01 above the 3,000 education deductible at 50% = 0.005, half-up to 0.01.
    let (e1, _) = settle_one(&app, claim_education("ZH", "R-1", "2020-09-01", "3000.01")).await;
    assert_layer(
        inner(&e1),
        ZN,
        "education",
        "3000.01",
        "3000.00",
        "0.01",
        &["DEDUCTIBLE"],
    );
    // 1.98 at 50% = 0.99; paid 1.00 in all over a premium of 32.00 = 0.03125, half-up to 0.0313.
    let (e2, _) = settle_one(&app, claim_education("ZH", "R-2", "2020-09-02", "1.98")).await;
    assert_layer(inner(&e2), ZN, "education", "1.98", "0.00", "0.99", &[]);
    let lr = loss_ratio(&app, ZN, ZN_START).await;
    assert_eq!(
        (
            lr.written_premium.as_str(),
            lr.paid.as_str(),
            lr.paid_claims,
            lr.loss_ratio.as_str()
        ),
        ("32.00", "1.00", 2, "0.0313")
    );
    app.stop().await;
}

#[tokio::test]
async fn layers_that_do_not_pay_say_why() {
    let app = spawn_app().await;
    let summary = enroll(
        &app,
        vec![
            row("M5", "DIBAO", "2017-01-01", "shiyan-medical-assistance", "2017-01-01"),
            row("M2", "AT_RISK", ZN_START, ZN, ZN_START),
        ],
    )
    .await;
    assert!(summary.errors.is_empty(), "{summary:?}");
    let shiyan = "shiyan-medical-assistance";
    let inpatient = |hospital: &str, id: &str| {
        claim(
            hospital,
            id,
            "M5",
            "2017-05-01",
            "INPATIENT",
            "",
            &[("IN_SCOPE", "1000.00")],
            &[],
        )
    };
    let (paid, _) = settle_one(&app, inpatient("shiyan-taihe-hospital", "Y-1")).await;
    assert_layer(inner(&paid), shiyan, "inpatient", "1000.00", "0.00", "700.00", &[]);
    let (elsewhere, _) = settle_one(&app, inpatient("other-hospital", "Y-2")).await;
    assert_layer(
        inner(&elsewhere),
        shiyan,
        "",
        "0.00",
        "0.00",
        "0.00",
        &["FACILITY_NOT_DESIGNATED"],
    );
    assert_totals(inner(&elsewhere), "1000.00", "0.00", "0.00", "1000.00");
    let general = claim(
        "shiyan-taihe-hospital",
        "Y-3",
        "M5",
        "2017-05-02",
        "OUTPATIENT",
        "",
        &[("IN_SCOPE", "100.00")],
        &[],
    );
    let (general, _) = settle_one(&app, general).await;
    assert_layer(
        inner(&general),
        shiyan,
        "",
        "0.00",
        "0.00",
        "0.00",
        &["NO_MATCHING_BENEFIT"],
    );

    // No product period of the member contains the service date: settled, nothing paid, NOT_ENROLLED.
    let (outside, _) = settle_one(
        &app,
        claim(
            "shiyan-taihe-hospital",
            "Y-4",
            "M5",
            "2018-01-02",
            "INPATIENT",
            "",
            &[("IN_SCOPE", "1000.00"), ("NON_COMPLIANT", "10.00")],
            &[("BASIC", "600.00")],
        ),
    )
    .await;
    let s = inner(&outside);
    assert!(s.layers.is_empty(), "{:?}", s.layers);
    assert_eq!(reason_names(&s.reasons), ["NOT_ENROLLED"]);
    assert_totals(s, "1010.00", "600.00", "0.00", "410.00");
    app.stop().await;
}

//! ReportService: watched loss ratios, paged and filtered listings, export.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use claims::proto::{self, ListSettlementsRequest, ListSettlementsResponse, StoredSettlement};
use rust_decimal::Decimal;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::*;
use crate::support::*;

/// Five settlements: M1 (Cixi) at H1 and H2 in 2022, M2 (Zhongning) at H3 in 2020, in this order.
async fn five_settlements(app: &TestApp) -> Vec<StoredSettlement> {
    enroll_cixi(app, "M1", "DIBAO").await;
    enroll_zhongning(app, "M2").await;
    let mut out = Vec::new();
    for request in [
        claim_a1("H1", "H1-0001"),
        claim_a2("H1", "H1-0002"),
        claim_a3("H2", "H2-0001"),
        claim(
            "H2",
            "H2-0002",
            "M1",
            "2022-08-01",
            "PHARMACY",
            "",
            &[("IN_SCOPE", "500.00")],
            &[],
        ),
        claim_z1("H3", "Z-1"),
    ] {
        out.push(settle_one(app, request).await.0);
    }
    out
}

async fn list(app: &TestApp, request: ListSettlementsRequest) -> ListSettlementsResponse {
    app.reports()
        .await
        .list_settlements(request)
        .await
        .expect("ListSettlements")
        .into_inner()
}

/// Every page of a listing, following its page tokens from the first page; fewer than `most`.
async fn list_pages(app: &TestApp, first: ListSettlementsRequest, most: usize) -> Vec<ListSettlementsResponse> {
    let mut pages = Vec::new();
    let mut page_token = first.page_token.clone();
    loop {
        let page = list(
            app,
            ListSettlementsRequest {
                page_token,
                ..first.clone()
            },
        )
        .await;
        page_token = page.next_page_token.clone();
        pages.push(page);
        if page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() < most, "paging ends");
    }
}

fn ids(settlements: &[StoredSettlement]) -> Vec<String> {
    settlements.iter().map(|s| inner(s).claim_id.clone()).collect()
}

fn sum(settlements: &[&StoredSettlement], field: impl Fn(&proto::Settlement) -> &str) -> String {
    money(settlements.iter().map(|s| dec(field(inner(s)))).sum::<Decimal>())
}

/// Checks the totals of a listing against the settlements that should match.
fn assert_totals_of(response: &ListSettlementsResponse, matching: &[&StoredSettlement]) {
    let totals = response.totals.as_ref().expect("totals");
    assert_eq!(
        (
            totals.count,
            totals.total_cost.clone(),
            totals.upstream_total.clone(),
            totals.payout_total.clone(),
            totals.out_of_pocket.clone()
        ),
        (
            matching.len() as u64,
            sum(matching, |s| &s.total_cost),
            sum(matching, |s| &s.upstream_total),
            sum(matching, |s| &s.payout_total),
            sum(matching, |s| &s.out_of_pocket)
        ),
        "totals over every match"
    );
}

#[tokio::test]
async fn list_settlements_pages_with_totals_over_every_match() {
    let app = spawn_app().await;
    let all = five_settlements(&app).await;
    let every: Vec<&StoredSettlement> = all.iter().collect();

    let pages = list_pages(
        &app,
        ListSettlementsRequest {
            page_size: 2,
            ..Default::default()
        },
        10,
    )
    .await;
    for page in &pages {
        assert_totals_of(page, &every);
    }
    let page_ids: Vec<Vec<String>> = pages.iter().map(|p| ids(&p.settlements)).collect();
    assert_eq!(
        page_ids,
        [vec!["H1-0001", "H1-0002"], vec!["H2-0001", "H2-0002"], vec!["Z-1"]]
    );
    let listed: Vec<StoredSettlement> = pages.into_iter().flat_map(|p| p.settlements).collect();
    assert_eq!(listed, all, "listed exactly as settled");

    // page_size 0 is the default (100): everything on one page.
    let one = list(&app, ListSettlementsRequest::default()).await;
    assert_eq!(one.settlements, all);
    assert!(one.next_page_token.is_empty());

    // Bad requests name their field.
    let mut client = app.reports().await;
    for (request, field) in [
        (
            ListSettlementsRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListSettlementsRequest {
                from_date: "2022-1-1".into(),
                ..Default::default()
            },
            "from_date",
        ),
        (
            ListSettlementsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let status = client.list_settlements(request).await.expect_err("refused");
        assert_refused_with_field(&status, Code::InvalidArgument, field);
    }
    app.stop().await;
}

#[tokio::test]
async fn list_settlements_filters_by_dates_hospital_and_product() {
    let app = spawn_app().await;
    let all = five_settlements(&app).await;
    let pick = |idx: &[usize]| -> Vec<&StoredSettlement> { idx.iter().map(|&i| &all[i]).collect() };

    let r = list(
        &app,
        ListSettlementsRequest {
            from_date: "2022-04-01".into(),
            to_date: "2022-06-30".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r.settlements), ["H1-0002", "H2-0001"]);
    assert_totals_of(&r, &pick(&[1, 2]));

    let r = list(
        &app,
        ListSettlementsRequest {
            from_date: "2022-05-03".into(),
            to_date: "2022-05-03".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r.settlements), ["H2-0001"], "both ends are inclusive");

    let r = list(
        &app,
        ListSettlementsRequest {
            to_date: "2021-12-31".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r.settlements), ["Z-1"]);

    let r = list(
        &app,
        ListSettlementsRequest {
            hospital_id: "H2".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r.settlements), ["H2-0001", "H2-0002"]);
    assert_totals_of(&r, &pick(&[2, 3]));

    let r = list(
        &app,
        ListSettlementsRequest {
            product_code: ZN.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r.settlements), ["Z-1"]);
    assert_totals_of(&r, &pick(&[4]));
    assert_eq!(r.totals.as_ref().expect("totals").product_payout, "10000.00");

    let r = list(
        &app,
        ListSettlementsRequest {
            product_code: TIANYI.into(),
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r.settlements), ["H1-0001", "H1-0002", "H2-0001"]);
    assert!(!r.next_page_token.is_empty());
    assert_totals_of(&r, &pick(&[0, 1, 2, 3]));
    let tianyi_paid: Decimal = all[..4].iter().map(|s| dec(&layer(inner(s), TIANYI).payout)).sum();
    assert_eq!(money(tianyi_paid), "9617.28");
    assert_eq!(r.totals.as_ref().expect("totals").product_payout, "9617.28");

    let r = list(
        &app,
        ListSettlementsRequest {
            hospital_id: "H1".into(),
            product_code: MA.into(),
            to_date: "2022-03-31".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r.settlements), ["H1-0001"], "filters combine");
    assert_eq!(r.totals.as_ref().expect("totals").product_payout, "16000.00");

    let r = list(
        &app,
        ListSettlementsRequest {
            hospital_id: "H9".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(r.settlements.is_empty());
    assert_eq!(r.totals.as_ref().expect("totals").count, 0);

    // Reversed settlements are left out unless asked for.
    reverse(&app, "H1", "H1-0002").await.expect("reverses");
    let r = list(&app, ListSettlementsRequest::default()).await;
    assert_eq!(ids(&r.settlements), ["H1-0001", "H2-0001", "H2-0002", "Z-1"]);
    assert_totals_of(&r, &pick(&[0, 2, 3, 4]));
    let r = list(
        &app,
        ListSettlementsRequest {
            include_reversed: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.settlements.len(), 5);
    let reversed: Vec<bool> = r.settlements.iter().map(|s| s.reversed).collect();
    assert_eq!(reversed, [false, true, false, false, false]);
    assert_eq!(r.totals.as_ref().expect("totals").count, 5);
    app.stop().await;
}

async fn export(app: &TestApp, request: ListSettlementsRequest) -> Vec<StoredSettlement> {
    let mut stream = app
        .reports()
        .await
        .export_settlements(request)
        .await
        .expect("ExportSettlements")
        .into_inner();
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(STREAM_WAIT, stream.next())
            .await
            .expect("an export message in time");
        match next {
            Some(item) => out.push(item.expect("no export error")),
            None => return out,
        }
    }
}

#[tokio::test]
async fn export_settlements_streams_every_match() {
    let app = spawn_app().await;
    let all = five_settlements(&app).await;
    assert_eq!(export(&app, ListSettlementsRequest::default()).await, all);
    let h2 = export(
        &app,
        ListSettlementsRequest {
            hospital_id: "H2".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&h2), ["H2-0001", "H2-0002"]);
    let zn = export(
        &app,
        ListSettlementsRequest {
            product_code: ZN.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&zn), ["Z-1"]);
    let status = app
        .reports()
        .await
        .export_settlements(ListSettlementsRequest {
            to_date: "yesterday".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad date");
    assert_refused_with_field(&status, Code::InvalidArgument, "to_date");

    // More settlements than one export read (500): all of them, once, in order.
    let many: Vec<_> = (0..620)
        .map(|i| claim_education("H4", &format!("E-{i:04}"), "2020-09-01", "10.00"))
        .collect();
    let replies = settle_stream(&app, many).await;
    assert!(replies
        .iter()
        .all(|r| matches!(r.result, Some(proto::settlement_reply::Result::Settlement(_)))));
    let exported = export(
        &app,
        ListSettlementsRequest {
            hospital_id: "H4".into(),
            ..Default::default()
        },
    )
    .await;
    let expected: Vec<String> = (0..620).map(|i| format!("E-{i:04}")).collect();
    assert_eq!(ids(&exported), expected);
    assert_eq!(export(&app, ListSettlementsRequest::default()).await.len(), 625);
    app.stop().await;
}

async fn next_figure(watch: &mut tonic::Streaming<proto::LossRatio>) -> proto::LossRatio {
    tokio::time::timeout(STREAM_WAIT, watch.message())
        .await
        .expect("a loss-ratio message within 10 s")
        .expect("no stream error")
        .expect("the stream stays open")
}

#[tokio::test]
async fn watch_loss_ratio_sends_the_current_figures_then_every_change() {
    let app = spawn_app().await;
    enroll_zhongning(&app, "M2").await;
    let mut watch = app
        .reports()
        .await
        .watch_loss_ratio(proto::LossRatioRequest {
            product_code: ZN.into(),
            period_start: ZN_START.into(),
            ..Default::default()
        })
        .await
        .expect("WatchLossRatio")
        .into_inner();
    let figures = |lr: &proto::LossRatio| {
        (
            lr.product_code.clone(),
            lr.period_start.clone(),
            lr.written_premium.clone(),
            lr.paid.clone(),
            lr.paid_claims,
            lr.enrolled_members,
            lr.loss_ratio.clone(),
        )
    };
    let expect = |paid: &str, claims: u64, ratio: &str| {
        (
            ZN.to_owned(),
            ZN_START.to_owned(),
            "60.00".to_owned(),
            paid.to_owned(),
            claims,
            1,
            ratio.to_owned(),
        )
    };

    assert_eq!(
        figures(&next_figure(&mut watch).await),
        expect("0.00", 0, "0.0000"),
        "the current figures"
    );
    // A settlement of another product does not show up in this watch.
    enroll_cixi(&app, "M1", "DIBAO").await;
    settle_one(&app, claim_a1("H1", "H1-0001")).await;
    settle_one(&app, claim_z1("H1", "Z-1")).await;
    assert_eq!(
        figures(&next_figure(&mut watch).await),
        expect("10000.00", 1, "166.6667")
    );
    settle_one(&app, claim_z2("H1", "Z-2")).await;
    assert_eq!(
        figures(&next_figure(&mut watch).await),
        expect("56000.00", 2, "933.3333")
    );
    reverse(&app, "H1", "Z-1").await.expect("reverses");
    assert_eq!(
        figures(&next_figure(&mut watch).await),
        expect("46000.00", 1, "766.6667")
    );
    // Closing the watch lets the server stop without waiting for its drain timeout.
    drop(watch);
    app.stop().await;
}

#[tokio::test]
async fn get_loss_ratio_lists_every_product_period() {
    let app = spawn_app().await;
    let ratios = app
        .reports()
        .await
        .get_loss_ratio(proto::LossRatioRequest::default())
        .await
        .expect("GetLossRatio")
        .into_inner()
        .ratios;
    assert_eq!(ratios.len(), 13, "every example product period: {ratios:?}");
    assert!(
        ratios
            .iter()
            .all(|r| r.loss_ratio.is_empty() && r.written_premium == "0.00"),
        "no premium written yet: no ratio"
    );
    let farmer = app
        .reports()
        .await
        .get_loss_ratio(proto::LossRatioRequest {
            product_code: "cixi-low-income-farmer-insurance".into(),
            period_start: String::new(),
            ..Default::default()
        })
        .await
        .expect("GetLossRatio")
        .into_inner()
        .ratios;
    let periods: Vec<&str> = farmer.iter().map(|r| r.period_start.as_str()).collect();
    assert_eq!(periods, ["2020-08-15", "2021-08-15"]);
    let status = app
        .reports()
        .await
        .get_loss_ratio(proto::LossRatioRequest {
            product_code: "Not A Code".into(),
            period_start: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("bad code");
    assert_refused_with_field(&status, Code::InvalidArgument, "product_code");
    app.stop().await;
}

#[tokio::test]
async fn watch_with_an_alert_threshold_sends_only_crossings() {
    let app = spawn_app().await;
    enroll_zhongning(&app, "M2").await;
    let mut watch = app
        .reports()
        .await
        .watch_loss_ratio(proto::LossRatioRequest {
            product_code: ZN.into(),
            period_start: ZN_START.into(),
            alert_above: "200.0000".into(),
        })
        .await
        .expect("WatchLossRatio")
        .into_inner();
    let first = next_figure(&mut watch).await;
    assert_eq!((first.loss_ratio.as_str(), first.above_threshold), ("0.0000", false));
    // Z-1: 10,000 / 60 = 166.67, still below 200: no message. Z-2 takes it to 933.33: an alert.
    settle_one(&app, claim_z1("H1", "Z-1")).await;
    settle_one(&app, claim_z2("H1", "Z-2")).await;
    let alert = next_figure(&mut watch).await;
    assert_eq!(
        (alert.paid.as_str(), alert.above_threshold),
        ("56000.00", true),
        "{alert:?}"
    );
    // Reversing Z-1 leaves 766.67, still above: no message. Reversing Z-2 falls to 0: back below.
    reverse(&app, "H1", "Z-1").await.expect("reverses");
    reverse(&app, "H1", "Z-2").await.expect("reverses");
    let below = next_figure(&mut watch).await;
    assert_eq!(
        (below.paid.as_str(), below.above_threshold),
        ("0.00", false),
        "{below:?}"
    );

    let status = app
        .reports()
        .await
        .watch_loss_ratio(proto::LossRatioRequest {
            alert_above: "lots".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad threshold is refused");
    assert_refused_with_field(&status, tonic::Code::InvalidArgument, "alert_above");
    // Closing the watch lets the server stop without waiting for its drain timeout.
    drop(watch);
    app.stop().await;
}

#[tokio::test]
async fn a_watch_ends_with_unavailable_when_the_server_drains() {
    let app = spawn_app().await;
    let mut watch = app
        .reports()
        .await
        .watch_loss_ratio(proto::LossRatioRequest::default())
        .await
        .expect("WatchLossRatio")
        .into_inner();
    // The current figures of every example product period come first.
    next_figure(&mut watch).await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(app.stop());
    let end = loop {
        match tokio::time::timeout(STREAM_WAIT, watch.message())
            .await
            .expect("the watch ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(status) => break Some(status.code()),
        }
    };
    assert_eq!(end, Some(tonic::Code::Unavailable), "the watcher is told to come back");
    stopping.await.expect("server stops");
    // Well before the 5 s drain timeout of the test harness.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// A listing between two dates is read a month at a time on SQLite (`store::SettlementPages`):
/// settlements of several months, interleaved as they were settled, still come out in the order
/// they were settled, each once, in an export (more than one read of 500 in a month) and page by
/// page.
#[tokio::test]
async fn listings_between_dates_keep_the_settled_order_across_months() {
    let app = spawn_app().await;
    enroll_zhongning(&app, "M2").await;
    let date = |i: usize| match i % 5 {
        0 => "2020-06-01",
        1 => "2020-06-15",
        2 => "2020-06-30",
        3 => "2020-07-31",
        _ => "2020-05-31",
    };
    let hospital = |i: usize| if i % 4 == 0 { "H6" } else { "H5" };
    let claims: Vec<_> = (0..1500)
        .map(|i| claim_education(hospital(i), &format!("M-{i:04}"), date(i), "10.00"))
        .collect();
    let replies = settle_stream(&app, claims).await;
    assert!(replies
        .iter()
        .all(|r| matches!(r.result, Some(proto::settlement_reply::Result::Settlement(_)))));
    let matching = |from: &str, to: &str, h: Option<&str>| -> Vec<String> {
        (0..1500)
            .filter(|&i| (from..=to).contains(&date(i)) && h.is_none_or(|h| hospital(i) == h))
            .map(|i| format!("M-{i:04}"))
            .collect()
    };
    let request = |from: &str, to: &str, h: Option<&str>| ListSettlementsRequest {
        from_date: from.into(),
        to_date: to.into(),
        hospital_id: h.unwrap_or_default().into(),
        ..Default::default()
    };
    for (from, to, h) in [
        ("2020-06-01", "2020-07-31", Some("H5")),
        ("2020-05-01", "2020-07-31", None),
        ("2020-06-02", "2020-07-31", Some("H6")),
        ("2020-06-15", "2020-06-15", None),
        ("2020-04-26", "2021-04-25", Some("H5")),
        ("2020-08-01", "2020-07-31", None),
    ] {
        let expected = matching(from, to, h);
        let exported = export(&app, request(from, to, h)).await;
        assert_eq!(ids(&exported), expected, "export {from}..{to} {h:?}");

        let pages = list_pages(
            &app,
            ListSettlementsRequest {
                page_size: 97,
                ..request(from, to, h)
            },
            100,
        )
        .await;
        let mut listed = Vec::new();
        for r in &pages {
            assert_eq!(r.totals.as_ref().expect("totals").count, expected.len() as u64);
            assert!(r.settlements.len() <= 97);
            listed.extend(ids(&r.settlements));
        }
        assert_eq!(listed, expected, "pages {from}..{to} {h:?}");
    }
    assert_eq!(matching("2020-06-01", "2020-07-31", Some("H5")).len(), 900);
    app.stop().await;
}

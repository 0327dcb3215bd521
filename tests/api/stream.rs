//! Settle stream semantics: one reply per request, in order, in-band errors, the stream goes on.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use claims::proto::ClaimRequest;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::*;
use crate::support::*;

fn outpatient(id: &str, member: &str, in_scope: &str) -> ClaimRequest {
    claim(
        "H1",
        id,
        member,
        "2022-02-01",
        "OUTPATIENT",
        "",
        &[("IN_SCOPE", in_scope)],
        &[],
    )
}

#[tokio::test]
async fn a_bad_claim_mid_stream_gets_an_in_band_error_and_the_stream_goes_on() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let requests = vec![
        outpatient("S-1", "M1", "10000.00"),
        outpatient("S-2", "M1", "12,00"),
        outpatient("S-3", "M1", "10000.00"),
        outpatient("S-4", "NOBODY", "10000.00"),
        outpatient("S-5", "M1", "10000.00"),
        outpatient("S-1", "M1", "10000.00"),
        outpatient("S-3", "M1", "99.00"),
        outpatient("S-6", "M1", "10000.00").tap(|c| c.visit_kind = 99),
    ];
    let replies = settle_stream(&app, requests).await;
    let ids: Vec<&str> = replies.iter().map(|r| r.claim_id.as_str()).collect();
    assert_eq!(ids, ["S-1", "S-2", "S-3", "S-4", "S-5", "S-1", "S-3", "S-6"]);

    let e = reply_error(&replies[1]);
    assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
    assert!(
        e.violations.iter().any(|v| v.field == "lines[0].amount"),
        "the bad field is named: {e:?}"
    );
    let e = reply_error(&replies[3]);
    assert_eq!(e.code, Code::NotFound as i32, "{e:?}");
    assert!(e.violations.iter().any(|v| v.field == "member_id"), "{e:?}");
    let e = reply_error(&replies[6]);
    assert_eq!(e.code, Code::AlreadyExists as i32, "a conflict in the stream: {e:?}");
    let e = reply_error(&replies[7]);
    assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
    assert!(e.violations.iter().any(|v| v.field == "visit_kind"), "{e:?}");

    // The good claims settled in stream order: 8,000 + 8,000 then the 20,000 outpatient cap leaves 4,000.
    let s1 = reply_settlement(&replies[0]);
    let s3 = reply_settlement(&replies[2]);
    let s5 = reply_settlement(&replies[4]);
    assert!(!replies[0].replay && !replies[2].replay && !replies[4].replay);
    assert!(s1.sequence < s3.sequence && s3.sequence < s5.sequence);
    assert_eq!(layer(inner(s1), MA).payout, "8000.00");
    assert_eq!(layer(inner(s3), MA).payout, "8000.00");
    assert_layer(
        inner(s5),
        MA,
        "outpatient",
        "10000.00",
        "0.00",
        "4000.00",
        &["CAP_BENEFIT_ANNUAL"],
    );
    // The repeated S-1 is a replay of the first.
    assert!(replies[5].replay);
    assert_eq!(reply_settlement(&replies[5]), s1);

    // What the errors refused is not stored.
    for id in ["S-2", "S-4", "S-6"] {
        let status = get_settlement(&app, "H1", id).await.expect_err("not stored");
        assert_eq!(status.code(), Code::NotFound, "{id}");
    }
    assert_eq!(
        get_settlement(&app, "H1", "S-3").await.expect("S-3 stored"),
        *s3,
        "the conflict did not change S-3"
    );
    app.stop().await;
}

#[tokio::test]
async fn replies_arrive_while_the_client_keeps_the_stream_open() {
    // A HIS sends a claim, waits for its reply, then sends the next one, on one open stream.
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<ClaimRequest>(4);
    let mut client = app.settlements().await;
    let mut replies = client
        .settle(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("opens")
        .into_inner();
    for (i, amount) in ["10000.00", "1,0", "10000.00"].iter().enumerate() {
        let id = format!("I-{i}");
        tx.send(outpatient(&id, "M1", amount)).await.expect("sends");
        let reply = tokio::time::timeout(STREAM_WAIT, replies.message())
            .await
            .expect("a reply before the stream ends")
            .expect("no stream error")
            .expect("a reply");
        assert_eq!(reply.claim_id, id);
        if i == 1 {
            assert_eq!(reply_error(&reply).code, Code::InvalidArgument as i32);
        } else {
            reply_settlement(&reply);
        }
    }
    drop(tx);
    let end = tokio::time::timeout(STREAM_WAIT, replies.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "no reply after the last: {end:?}");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_streams_give_a_one_at_a_time_result() {
    // Four streams of 25 outpatient claims of one member at once: 800.00 each from medical assistance
    // until its 20,000 outpatient cap is used up. Whatever the interleaving, exactly 25 claims are paid
    // and the cap is never passed.
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let mut tasks = Vec::new();
    for s in 0..4 {
        let requests: Vec<ClaimRequest> = (0..25)
            .map(|i| outpatient(&format!("P-{s}-{i:02}"), "M1", "1000.00"))
            .collect();
        let url = app.url();
        tasks.push(tokio::spawn(async move {
            let mut client = claims::proto::settlement_service_client::SettlementServiceClient::connect(url)
                .await
                .expect("connects");
            let mut replies = client
                .settle(tokio_stream::iter(requests))
                .await
                .expect("opens")
                .into_inner();
            let mut out = Vec::new();
            while let Some(reply) = tokio::time::timeout(STREAM_WAIT, replies.message())
                .await
                .expect("a reply in time")
                .expect("no stream error")
            {
                out.push(reply);
            }
            out
        }));
    }
    let mut settled = Vec::new();
    for (s, task) in tasks.into_iter().enumerate() {
        let replies = task.await.expect("the stream task");
        assert_eq!(replies.len(), 25);
        let ids: Vec<String> = replies.iter().map(|r| r.claim_id.clone()).collect();
        let expected: Vec<String> = (0..25).map(|i| format!("P-{s}-{i:02}")).collect();
        assert_eq!(ids, expected, "stream {s} answers in order");
        let stored: Vec<_> = replies.iter().map(|r| reply_settlement(r).clone()).collect();
        assert!(
            stored.windows(2).all(|w| w[0].sequence < w[1].sequence),
            "stream {s} settles in stream order"
        );
        settled.extend(stored);
    }
    settled.sort_by_key(|s| s.sequence);
    let payouts: Vec<String> = settled.iter().map(|s| layer(inner(s), MA).payout.clone()).collect();
    let expected: Vec<String> = (0..100)
        .map(|i| if i < 25 { "800.00" } else { "0.00" }.to_owned())
        .collect();
    assert_eq!(payouts, expected, "in commit order: 25 paid, then the cap");
    for s in &settled[25..] {
        assert_eq!(reason_names(&layer(inner(s), MA).reasons), ["CAP_BENEFIT_ANNUAL"]);
    }
    let lr = loss_ratio(&app, MA, CIXI_START).await;
    assert_eq!((lr.paid.as_str(), lr.paid_claims), ("20000.00", 25));
    app.stop().await;
}

#[tokio::test]
async fn the_same_claims_on_two_streams_at_once_settle_once() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let requests: Vec<ClaimRequest> = (0..20)
        .map(|i| outpatient(&format!("D-{i:02}"), "M1", "100.00"))
        .collect();
    let (a, b) = tokio::join!(
        settle_stream(&app, requests.clone()),
        settle_stream(&app, requests.clone())
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.claim_id, y.claim_id);
        assert_eq!(
            reply_settlement(x),
            reply_settlement(y),
            "both streams get the one settlement of {}",
            x.claim_id
        );
        assert!(
            x.replay != y.replay,
            "exactly one of the two is a replay: {}",
            x.claim_id
        );
    }
    let lr = loss_ratio(&app, MA, CIXI_START).await;
    assert_eq!(
        (lr.paid.as_str(), lr.paid_claims),
        ("1600.00", 20),
        "each claim paid once"
    );
    app.stop().await;
}

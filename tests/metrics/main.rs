//! Prometheus metrics: served over HTTP, counting settlements by outcome, with loss-ratio gauges
//! and no member ids. A test binary of its own: the recorder is process-wide, and other tests
//! settling at the same time would change the counts.
// A panic is a failed test; the shared harness has an eight-argument `claim(...)`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::too_many_arguments)]

#[path = "../common/mod.rs"]
mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("response");
    body
}

/// The value of the first line of `text` that starts with `needle`.
fn metric(text: &str, needle: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{needle} not in\n{text}"))
}

#[tokio::test]
async fn metrics_count_settlements_and_show_loss_ratios_without_member_ids() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let app = spawn_app_with(|s| s.metrics_listen = Some(format!("127.0.0.1:{port}").parse().expect("addr"))).await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let mut client = app.settlements().await;
    client.settle_one(claim_a1("H1", "H1-0001")).await.expect("settles");
    client.settle_one(claim_a1("H1", "H1-0001")).await.expect("replays");
    let mut bad = claim_a1("H1", "H1-BAD");
    bad.lines.clear();
    let _ = app.settlements().await.settle_one(bad).await.expect_err("refused");

    let text = scrape(port).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let value = |needle: &str| metric(&text, needle);
    assert_eq!(
        value(r#"claims_settle_requests_total{rpc="SettleOne",outcome="settled"}"#),
        1.0
    );
    assert_eq!(
        value(r#"claims_settle_requests_total{rpc="SettleOne",outcome="replayed"}"#),
        1.0
    );
    assert_eq!(
        value(r#"claims_settle_requests_total{rpc="SettleOne",outcome="invalid_argument"}"#),
        1.0
    );
    assert!(text.contains("claims_settle_seconds_bucket"), "latency histogram");
    assert!(text.contains("claims_ledger_batch_commands"), "batch sizes");
    assert_eq!(
        value(r#"claims_paid_yuan{product="cixi-tianyi-yongning-bao",period_start="2022-01-01"}"#),
        9000.0
    );
    assert_eq!(
        value(r#"claims_paid_yuan{product="cixi-medical-assistance",period_start="2022-01-01"}"#),
        16000.0
    );
    // Written premium 50.00 for one member: 9,000 / 50 = 180.
    assert_eq!(
        value(r#"claims_loss_ratio{product="cixi-tianyi-yongning-bao",period_start="2022-01-01"}"#),
        180.0
    );
    assert!(!text.contains("M1"), "no member id in metrics");

    if backend() == Backend::Sqlite {
        // One caller at a time: the writer syncs the WAL itself. Streams of claims sent at once
        // leave dozens waiting after a commit, and then the sync thread syncs (from 32 waiting,
        // `HAND_OFF_FROM`). How many wait depends on how fast the claims arrive, which this test
        // does not control: a single stream of 600 once left fewer than 32 after every commit on a
        // busy machine. So four streams at once, and up to five rounds of them.
        assert!(value(r#"claims_ledger_wal_syncs_total{on="writer"}"#) >= 1.0);
        let mut handed_off = false;
        for round in 0..5 {
            let streams = (0..4).map(|s| {
                let app = &app;
                async move {
                    let claims: Vec<_> = (0..300)
                        .map(|i| claim_a1("H2", &format!("H2-{round}-{s}-{i:04}")))
                        .collect();
                    let mut replies = app
                        .settlements()
                        .await
                        .settle(tokio_stream::iter(claims))
                        .await
                        .expect("stream opens")
                        .into_inner();
                    let mut settled = 0;
                    while let Some(reply) = replies.message().await.expect("stream ok") {
                        if matches!(
                            reply.result,
                            Some(claims::proto::settlement_reply::Result::Settlement(_))
                        ) {
                            settled += 1;
                        }
                    }
                    settled
                }
            });
            let settled: Vec<usize> = futures::future::join_all(streams).await;
            assert_eq!(settled, [300; 4], "round {round}");
            let text = scrape(port).await;
            if text.contains(r#"claims_ledger_wal_syncs_total{on="sync_thread"}"#) {
                assert!(metric(&text, r#"claims_ledger_wal_syncs_total{on="sync_thread"}"#) >= 1.0);
                handed_off = true;
                break;
            }
        }
        assert!(handed_off, "no sync on the sync thread in five rounds of four streams");
    }
    app.stop().await;
}

//! Bad input: the right gRPC code, the field named in google.rpc.BadRequest, nothing written.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use claims::proto::{ClaimRequest, LineItem};
use tonic::Code;

use crate::common::*;
use crate::support::*;

/// A valid outpatient claim of M1.
fn good() -> ClaimRequest {
    claim(
        "H1",
        "B-1",
        "M1",
        "2022-02-01",
        "OUTPATIENT",
        "",
        &[("IN_SCOPE", "1000.00"), ("OUT_OF_CATALOGUE", "200.00")],
        &[("BASIC", "500.00")],
    )
}

/// Sends `request` with SettleOne and checks the refusal: `code`, each of `fields` named, and the
/// database unchanged. Then checks the good claim still settles (the refusal broke nothing).
async fn assert_refused(request: ClaimRequest, code: Code, fields: &[&str]) {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let before = app.db_fingerprint().await;
    let status = app
        .settlements()
        .await
        .settle_one(request)
        .await
        .expect_err("the claim is refused");
    for field in fields {
        assert_refused_with_field(&status, code, field);
    }
    assert_eq!(app.db_fingerprint().await, before, "a refused claim writes nothing");
    let (_, replay) = settle_one(&app, good()).await;
    assert!(!replay);
    app.stop().await;
}

#[tokio::test]
async fn the_good_claim_of_these_tests_settles() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let (s, _) = settle_one(&app, good()).await;
    assert_eq!(layer(inner(&s), MA).payout, "400.00");
    app.stop().await;
}

#[tokio::test]
async fn a_decimal_comma_is_invalid() {
    assert_refused(
        good().tap(|c| c.lines[0].amount = "12,00".into()),
        Code::InvalidArgument,
        &["lines[0].amount"],
    )
    .await;
}

#[tokio::test]
async fn three_decimals_are_invalid() {
    assert_refused(
        good().tap(|c| c.lines[1].amount = "1.234".into()),
        Code::InvalidArgument,
        &["lines[1].amount"],
    )
    .await;
    assert_refused(
        good().tap(|c| c.upstream[0].amount = "500.001".into()),
        Code::InvalidArgument,
        &["upstream[0].amount"],
    )
    .await;
}

#[tokio::test]
async fn a_negative_amount_is_invalid() {
    assert_refused(
        good().tap(|c| c.lines[1].amount = "-200.00".into()),
        Code::InvalidArgument,
        &["lines[1].amount"],
    )
    .await;
}

#[tokio::test]
async fn an_amount_above_one_hundred_million_is_invalid() {
    assert_refused(
        good().tap(|c| c.lines[1].amount = "100000000.01".into()),
        Code::InvalidArgument,
        &["lines[1].amount"],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_enum_number_is_invalid() {
    assert_refused(
        good().tap(|c| c.visit_kind = 99),
        Code::InvalidArgument,
        &["visit_kind"],
    )
    .await;
    assert_refused(
        good().tap(|c| c.lines[0].expense_class = 42),
        Code::InvalidArgument,
        &["lines[0].expense_class"],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_member_is_not_found() {
    assert_refused(
        good().tap(|c| c.member_id = "M404".into()),
        Code::NotFound,
        &["member_id"],
    )
    .await;
}

#[tokio::test]
async fn a_claim_without_lines_is_invalid() {
    assert_refused(
        good().tap(|c| {
            c.lines.clear();
            c.upstream.clear();
        }),
        Code::InvalidArgument,
        &["lines"],
    )
    .await;
}

#[tokio::test]
async fn upstream_above_in_scope_is_invalid() {
    assert_refused(
        good().tap(|c| c.upstream[0].amount = "1000.01".into()),
        Code::InvalidArgument,
        &["upstream"],
    )
    .await;
}

#[tokio::test]
async fn a_claim_id_of_65_characters_is_invalid() {
    let long = "C".repeat(65);
    assert_refused(good().tap(|c| c.claim_id = long), Code::InvalidArgument, &["claim_id"]).await;
}

#[tokio::test]
async fn a_claim_id_of_64_characters_is_valid() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let id = "C".repeat(64);
    let (s, _) = settle_one(&app, good().tap(|c| c.claim_id = id.clone())).await;
    assert_eq!(inner(&s).claim_id, id);
    app.stop().await;
}

#[tokio::test]
async fn missing_fields_are_each_named() {
    assert_refused(good().tap(|c| c.claim_id.clear()), Code::InvalidArgument, &["claim_id"]).await;
    assert_refused(
        good().tap(|c| c.service_date.clear()),
        Code::InvalidArgument,
        &["service_date"],
    )
    .await;
    assert_refused(good().tap(|c| c.visit_kind = 0), Code::InvalidArgument, &["visit_kind"]).await;
    assert_refused(
        good().tap(|c| {
            c.claim_id.clear();
            c.hospital_id.clear();
            c.service_date.clear();
            c.visit_kind = 0;
        }),
        Code::InvalidArgument,
        &["claim_id", "hospital_id", "service_date", "visit_kind"],
    )
    .await;
}

#[tokio::test]
async fn a_bad_date_is_invalid() {
    assert_refused(
        good().tap(|c| c.service_date = "2022-02-30".into()),
        Code::InvalidArgument,
        &["service_date"],
    )
    .await;
}

#[tokio::test]
async fn too_many_lines_are_invalid() {
    let many: Vec<LineItem> = (0..2001)
        .map(|i| LineItem {
            code: format!("l{i}"),
            expense_class: 1,
            amount: "1.00".into(),
        })
        .collect();
    assert_refused(good().tap(|c| c.lines = many), Code::InvalidArgument, &["lines"]).await;
}

/// A claim whose encoding is larger than the server's 1 MiB limit.
fn oversized() -> ClaimRequest {
    good().tap(|c| c.lines[0].code = "x".repeat(1024 * 1024 + 10))
}

#[tokio::test]
async fn an_oversized_message_is_out_of_range_and_writes_nothing() {
    // tonic 0.14 refuses a message above max_decoding_message_size with OUT_OF_RANGE.
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let before = app.db_fingerprint().await;
    let status = app
        .settlements()
        .await
        .settle_one(oversized())
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(app.db_fingerprint().await, before);
    // The server still serves.
    settle_one(&app, good()).await;
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_message_ends_a_settle_stream_with_out_of_range() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let before = app.db_fingerprint().await;
    let mut client = app.settlements().await;
    let outcome = client.settle(tokio_stream::iter(vec![oversized()])).await;
    let status = match outcome {
        Err(status) => status,
        Ok(response) => {
            let mut replies = response.into_inner();
            let next = tokio::time::timeout(STREAM_WAIT, replies.message())
                .await
                .expect("the stream answers");
            next.expect_err("the stream ends with an error")
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(app.db_fingerprint().await, before);
    app.stop().await;
}

#[tokio::test]
async fn bad_claims_in_a_settle_stream_get_in_band_errors_and_write_nothing() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let before = app.db_fingerprint().await;
    let cases: Vec<(ClaimRequest, i32, &str)> = vec![
        (
            good()
                .tap(|c| c.claim_id = "X-1".into())
                .tap(|c| c.lines[0].amount = "12,00".into()),
            3,
            "lines[0].amount",
        ),
        (
            good()
                .tap(|c| c.claim_id = "X-2".into())
                .tap(|c| c.lines[0].amount = "1.234".into()),
            3,
            "lines[0].amount",
        ),
        (
            good()
                .tap(|c| c.claim_id = "X-3".into())
                .tap(|c| c.lines[1].amount = "-1.00".into()),
            3,
            "lines[1].amount",
        ),
        (
            good().tap(|c| c.claim_id = "X-4".into()).tap(|c| c.visit_kind = 99),
            3,
            "visit_kind",
        ),
        (
            good()
                .tap(|c| c.claim_id = "X-5".into())
                .tap(|c| c.member_id = "M404".into()),
            5,
            "member_id",
        ),
        (
            good().tap(|c| c.claim_id = "X-6".into()).tap(|c| c.lines.clear()),
            3,
            "lines",
        ),
        (
            good()
                .tap(|c| c.claim_id = "X-7".into())
                .tap(|c| c.upstream[0].amount = "9999.00".into()),
            3,
            "upstream",
        ),
        (good().tap(|c| c.claim_id = "C".repeat(65)), 3, "claim_id"),
        (
            good()
                .tap(|c| c.claim_id = "X-9".into())
                .tap(|c| c.service_date.clear()),
            3,
            "service_date",
        ),
        (
            good().tap(|c| c.claim_id = "X-10".into()).tap(|c| c.visit_kind = 0),
            3,
            "visit_kind",
        ),
        (good().tap(|c| c.claim_id.clear()), 3, "claim_id"),
    ];
    let requests: Vec<ClaimRequest> = cases.iter().map(|(r, _, _)| r.clone()).collect();
    let replies = settle_stream(&app, requests).await;
    for ((request, code, field), reply) in cases.iter().zip(&replies) {
        assert_eq!(
            reply.claim_id, request.claim_id,
            "replies carry the request's claim id, in order"
        );
        let e = reply_error(reply);
        assert_eq!(e.code, *code, "{}: {e:?}", request.claim_id);
        assert!(
            e.violations.iter().any(|v| v.field == *field),
            "{}: {field} is named in {e:?}",
            request.claim_id
        );
        assert!(!reply.replay);
    }
    assert_eq!(app.db_fingerprint().await, before, "refused claims write nothing");
    app.stop().await;
}

#[tokio::test]
async fn claims_before_an_oversized_message_still_get_their_replies_first() {
    // The transport error ends the stream, but only after the replies of the claims sent before it:
    // one reply per request, in request order.
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let mut client = app.settlements().await;
    let response = client
        .settle(tokio_stream::iter(vec![good(), oversized()]))
        .await
        .expect("the stream opens");
    let mut replies = response.into_inner();
    let first = tokio::time::timeout(STREAM_WAIT, replies.message())
        .await
        .expect("the stream answers");
    let first = match first {
        Ok(Some(reply)) => reply,
        other => panic!("the first message is the reply of B-1, got {other:?}"),
    };
    assert_eq!(first.claim_id, "B-1");
    let stored = reply_settlement(&first);
    let end = tokio::time::timeout(STREAM_WAIT, replies.message())
        .await
        .expect("the stream ends");
    let status = end.expect_err("then the stream ends with the transport's error");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(get_settlement(&app, "H1", "B-1").await.expect("B-1 stored"), *stored);
    app.stop().await;
}

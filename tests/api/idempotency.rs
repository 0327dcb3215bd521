//! Resubmission, conflicts, reversal and preview.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use claims::proto::settlement_reply;
use tonic::Code;

use crate::common::*;
use crate::support::*;

#[tokio::test]
async fn identical_resubmission_returns_the_original_and_writes_nothing() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let (original, replay) = settle_one(&app, claim_a1("H1", "H1-0001")).await;
    assert!(!replay, "a first submission is not a replay");
    let before = app.db_fingerprint().await;

    let (again, replay) = settle_one(&app, claim_a1("H1", "H1-0001")).await;
    assert!(replay, "an identical resubmission is a replay");
    assert_eq!(
        again, original,
        "the original settlement: same sequence, settled_at, amounts"
    );
    assert_eq!(app.db_fingerprint().await, before, "a replay writes nothing");

    // The same lines and upstream payments listed in another order are the same claim.
    let mut reordered = claim_a1("H1", "H1-0001");
    reordered.lines.reverse();
    reordered.upstream.reverse();
    assert_ne!(reordered, claim_a1("H1", "H1-0001"), "the request really is reordered");
    let (again, replay) = settle_one(&app, reordered.clone()).await;
    assert!(replay, "a reordered resubmission is a replay");
    assert_eq!(again, original);
    assert_eq!(app.db_fingerprint().await, before, "a reordered replay writes nothing");

    // Enum defaults spelled out and amounts without decimals are the same claim too.
    let mut spelled = claim_a1("H1", "H1-0001");
    spelled.cause = claims::proto::Cause::Illness as i32;
    spelled.lines[0].amount = "80000".into();
    let (again, replay) = settle_one(&app, spelled).await;
    assert!(replay, "the same content spelled differently is a replay");
    assert_eq!(again, original);
    assert_eq!(app.db_fingerprint().await, before);

    // Over the stream too.
    let replies = settle_stream(&app, vec![claim_a1("H1", "H1-0001"), reordered]).await;
    for reply in &replies {
        assert_eq!(reply.claim_id, "H1-0001");
        assert!(reply.replay, "a stream resubmission is a replay");
        assert_eq!(*reply_settlement(reply), original);
    }
    assert_eq!(app.db_fingerprint().await, before, "stream replays write nothing");
    app.stop().await;
}

#[tokio::test]
async fn same_key_with_different_content_is_already_exists_and_writes_nothing() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let (original, _) = settle_one(&app, claim_a1("H1", "H1-0001")).await;
    let before = app.db_fingerprint().await;

    let mut amount = claim_a1("H1", "H1-0001");
    amount.lines[0].amount = "80000.01".into();
    let mut date = claim_a1("H1", "H1-0001");
    date.service_date = "2022-03-11".into();
    let mut code = claim_a1("H1", "H1-0001");
    code.lines[3].code = "another-item".into();
    let mut upstream = claim_a1("H1", "H1-0001");
    upstream.upstream.pop();
    let other_content = claim_a2("H1", "H1-0001");
    let mut client = app.settlements().await;
    for (what, request) in [
        ("an amount", amount),
        ("the service date", date),
        ("a line code", code),
        ("the upstream payments", upstream),
        ("everything", other_content),
    ] {
        let status = client
            .settle_one(request)
            .await
            .expect_err("a conflicting resubmission is refused");
        assert_eq!(status.code(), Code::AlreadyExists, "changed {what}: {status:?}");
        assert_eq!(app.db_fingerprint().await, before, "changed {what}: nothing written");
    }
    // The original stays in force.
    let stored = get_settlement(&app, "H1", "H1-0001").await.expect("stored");
    assert_eq!(stored, original);

    // In a stream the conflict is an in-band ALREADY_EXISTS.
    let mut changed = claim_a1("H1", "H1-0001");
    changed.lines[0].amount = "80000.02".into();
    let replies = settle_stream(&app, vec![changed]).await;
    assert_eq!(replies[0].claim_id, "H1-0001");
    assert_eq!(reply_error(&replies[0]).code, Code::AlreadyExists as i32);
    assert_eq!(app.db_fingerprint().await, before);
    app.stop().await;
}

#[tokio::test]
async fn the_same_claim_id_from_another_hospital_is_a_different_claim() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let (first, _) = settle_one(&app, claim_a2("H1", "C-1")).await;
    let (second, replay) = settle_one(&app, claim_a2("H2", "C-1")).await;
    assert!(!replay, "another hospital's claim C-1 is not a replay of H1's");
    assert_ne!(first.sequence, second.sequence);
    assert_eq!(inner(&second).hospital_id, "H2");
    assert_eq!(layer(inner(&first), MA).payout, "12000.00");
    // Settled on top of the first: the outpatient cap (20,000) leaves 8,000.
    assert_layer(
        inner(&second),
        MA,
        "outpatient",
        "15000.00",
        "0.00",
        "8000.00",
        &["CAP_BENEFIT_ANNUAL"],
    );
    assert_eq!(get_settlement(&app, "H1", "C-1").await.expect("H1's"), first);
    assert_eq!(get_settlement(&app, "H2", "C-1").await.expect("H2's"), second);
    let status = get_settlement(&app, "H3", "C-1")
        .await
        .expect_err("no such claim at H3");
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn reversal_restores_room_and_loss_ratio_and_is_final() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    settle_one(&app, claim_a1("H1", "H1-0001")).await;
    let (h2, _) = settle_one(&app, claim_a2("H1", "H1-0002")).await;

    let member = get_member(&app, "M1", "2022-06-01").await.expect("M1");
    let ma = member
        .enrollments
        .iter()
        .find(|e| e.product_code == MA)
        .expect("enrolled in medical assistance");
    assert_eq!(ma.paid, "28000.00");
    let outpatient = ma
        .benefits
        .iter()
        .find(|b| b.benefit_code == "outpatient")
        .expect("outpatient");
    assert_eq!(outpatient.paid, "12000.00");
    let cap = outpatient
        .caps
        .iter()
        .find(|c| c.cap == "benefit_annual")
        .expect("outpatient annual cap");
    assert_eq!(
        (cap.limit.as_str(), cap.used.as_str(), cap.room.as_str()),
        ("20000.00", "12000.00", "8000.00")
    );
    let lr = loss_ratio(&app, MA, CIXI_START).await;
    assert_eq!((lr.paid.as_str(), lr.paid_claims), ("28000.00", 2));

    let reversed = reverse(&app, "H1", "H1-0002").await.expect("reverses");
    assert!(reversed.reversed && !reversed.reversed_at.is_empty());
    assert_eq!(reversed.sequence, h2.sequence);
    assert_eq!(
        reversed.settlement, h2.settlement,
        "the reversal returns the settlement unchanged"
    );

    let member = get_member(&app, "M1", "2022-06-01").await.expect("M1");
    let ma = member.enrollments.iter().find(|e| e.product_code == MA).expect("MA");
    assert_eq!(ma.paid, "16000.00", "the reversed payout no longer counts");
    let product_cap = ma.caps.iter().find(|c| c.cap == "product_annual").expect("product cap");
    assert_eq!(
        (product_cap.used.as_str(), product_cap.room.as_str()),
        ("16000.00", "84000.00")
    );
    let outpatient = ma
        .benefits
        .iter()
        .find(|b| b.benefit_code == "outpatient")
        .expect("outpatient");
    assert_eq!(
        (outpatient.paid.as_str(), outpatient.band_position.as_str()),
        ("0.00", "0.00")
    );
    let cap = outpatient.caps.iter().find(|c| c.cap == "benefit_annual").expect("cap");
    assert_eq!((cap.used.as_str(), cap.room.as_str()), ("0.00", "20000.00"));
    let topup = member
        .enrollments
        .iter()
        .find(|e| e.product_code == TOPUP)
        .expect("top-up");
    assert_eq!(
        topup.benefits[0].deductible_used, "4000.00",
        "the top-up deductible H1-0002 used is given back"
    );
    let lr = loss_ratio(&app, MA, CIXI_START).await;
    assert_eq!(
        (lr.paid.as_str(), lr.paid_claims),
        ("16000.00", 1),
        "loss ratio paid goes back down"
    );

    // A second reversal, an unknown claim, a new claim under the reversed id: refused, nothing written.
    let before = app.db_fingerprint().await;
    let status = reverse(&app, "H1", "H1-0002").await.expect_err("already reversed");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(app.db_fingerprint().await, before);
    let status = reverse(&app, "H1", "H1-9999").await.expect_err("unknown claim");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = reverse(&app, "H2", "H1-0001")
        .await
        .expect_err("H1-0001 is H1's, not H2's");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.db_fingerprint().await, before);
    let status = app
        .settlements()
        .await
        .settle_one(claim_a3("H1", "H1-0002"))
        .await
        .expect_err("a reversed claim id cannot be used again");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(app.db_fingerprint().await, before);

    let status = reverse(&app, "H1", "").await.expect_err("no claim id");
    assert_refused_with_field(&status, Code::InvalidArgument, "claim_id");
    let status = get_settlement(&app, "", "H1-0001").await.expect_err("no hospital id");
    assert_refused_with_field(&status, Code::InvalidArgument, "hospital_id");
    assert_eq!(app.db_fingerprint().await, before);

    // Identical resubmission of the reversed claim: the original, marked reversed, nothing paid again.
    let (again, replay) = settle_one(&app, claim_a2("H1", "H1-0002")).await;
    assert!(replay);
    assert_eq!(again, reversed, "the original settlement, marked reversed");
    assert_eq!(app.db_fingerprint().await, before);
    let replies = settle_stream(&app, vec![claim_a2("H1", "H1-0002")]).await;
    assert!(replies[0].replay);
    assert!(matches!(
        &replies[0].result,
        Some(settlement_reply::Result::Settlement(s)) if s.reversed
    ));
    assert_eq!(app.db_fingerprint().await, before);

    // Reversing H1-0001 brings a premium-bearing product's loss ratio back to zero.
    let lr = loss_ratio(&app, TIANYI, CIXI_START).await;
    assert_eq!(
        (
            lr.written_premium.as_str(),
            lr.paid.as_str(),
            lr.paid_claims,
            lr.loss_ratio.as_str()
        ),
        ("50.00", "9000.00", 1, "180.0000")
    );
    reverse(&app, "H1", "H1-0001").await.expect("H1-0001 reverses");
    let lr = loss_ratio(&app, TIANYI, CIXI_START).await;
    assert_eq!(
        (lr.paid.as_str(), lr.paid_claims, lr.loss_ratio.as_str()),
        ("0.00", 0, "0.0000")
    );
    app.stop().await;
}

#[tokio::test]
async fn preview_equals_what_settle_one_returns_and_writes_nothing() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    settle_one(&app, claim_a1("H1", "H1-0001")).await;
    settle_one(&app, claim_a2("H1", "H1-0002")).await;
    let before = app.db_fingerprint().await;

    let mut client = app.settlements().await;
    let preview = client
        .preview(claim_a3("H1", "H1-0003"))
        .await
        .expect("previews")
        .into_inner()
        .settlement
        .expect("a preview carries a settlement");
    assert_eq!(app.db_fingerprint().await, before, "a preview writes nothing");
    // Computed against the current accumulators: the outpatient cap cuts it.
    assert_layer(
        &preview,
        MA,
        "outpatient",
        "12000.00",
        "0.00",
        "8000.00",
        &["CAP_BENEFIT_ANNUAL"],
    );
    let status = get_settlement(&app, "H1", "H1-0003").await.expect_err("not stored");
    assert_eq!(status.code(), Code::NotFound);

    let again = client
        .preview(claim_a3("H1", "H1-0003"))
        .await
        .expect("previews again")
        .into_inner()
        .settlement
        .expect("settlement");
    assert_eq!(again, preview, "a second preview sees the same accumulators");
    assert_eq!(app.db_fingerprint().await, before);

    let (settled, replay) = settle_one(&app, claim_a3("H1", "H1-0003")).await;
    assert!(!replay, "the preview did not settle the claim");
    assert_eq!(
        *inner(&settled),
        preview,
        "SettleOne returns exactly what Preview showed"
    );

    // A preview of an unknown member or a bad claim is refused like the settlement would be.
    let status = client
        .preview(claim_a3("H1", "H1-0005").tap(|c| c.member_id = "NOBODY".into()))
        .await
        .expect_err("unknown member");
    assert_refused_with_field(&status, Code::NotFound, "member_id");
    let status = client
        .preview(claim_a3("H1", "H1-0005").tap(|c| c.lines[0].amount = "1.234".into()))
        .await
        .expect_err("bad amount");
    assert_refused_with_field(&status, Code::InvalidArgument, "lines[0].amount");
    app.stop().await;
}

/// PostgreSQL's writer sends a batch's statements in one message, with the values written into the
/// text as literals: a line code may hold quotes, backslashes, `$1`, `;` and SQL, all of which must
/// be stored byte for byte (and not run). Both backends.
#[tokio::test]
async fn line_codes_with_quotes_backslashes_and_sql_are_stored_as_sent() {
    use sqlx::Row;
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let codes = [
        r"x'); DROP TABLE settlements; --",
        r"back\slash \\ \' $1 $2::text E'' '' 医保 ☃",
        r"\",
    ];
    let mut request = claim_a1("H1", "H1-QUOTE");
    for (line, code) in request.lines.iter_mut().zip(codes) {
        line.code = code.to_owned();
    }
    let (original, replay) = settle_one(&app, request.clone()).await;
    assert!(!replay);

    // Stored as sent: the claim kept equals the canonical form of what was sent, so the same claim
    // again is a replay, and one that differs by a single backslash is another claim.
    let (again, replay) = settle_one(&app, request.clone()).await;
    assert!(
        replay,
        "the same claim again is a replay: its stored text equals what was sent"
    );
    assert_eq!(again, original);
    let mut one_backslash_less = request.clone();
    one_backslash_less.lines[1].code = r"back\slash \ \' $1 $2::text E'' '' 医保 ☃".to_owned();
    let err = app
        .settlements()
        .await
        .settle_one(one_backslash_less)
        .await
        .expect_err("a different claim under the same key");
    assert_eq!(err.code(), Code::AlreadyExists);

    let mut db = connect_any(&app.database_url).await;
    let row = sqlx::query("SELECT claim_json FROM settlements WHERE hospital_id = 'H1' AND claim_id = 'H1-QUOTE'")
        .fetch_one(&mut db)
        .await
        .expect("the settlement row");
    let stored: serde_json::Value = serde_json::from_str(&row.get::<String, _>("claim_json")).expect("stored json");
    let mut stored_codes: Vec<String> = stored["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["code"].as_str().expect("code").to_owned())
        .collect();
    let mut sent: Vec<String> = request.lines.iter().map(|l| l.code.clone()).collect();
    stored_codes.sort();
    sent.sort();
    assert_eq!(stored_codes, sent, "every code stored byte for byte");

    // Nothing of the codes ran: the tables are all there and the next claim settles.
    let (next, _) = settle_one(&app, claim_a2("H1", "H1-AFTER")).await;
    assert!(next.sequence > original.sequence);
    app.stop().await;
}

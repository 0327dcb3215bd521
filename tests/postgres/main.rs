//! The service on PostgreSQL: the same semantics as on SQLite, several server processes (here: two
//! servers in one test process) on one database, and a restart. The database server comes from
//! `CLAIMS_TEST_POSTGRES_URL` (set by `scripts/test`, which starts one if none runs); without a
//! server these tests fail, they never skip.
// A panic is a failed test; harness helpers outside `#[test]` functions may panic too, and the shared
// harness has an eight-argument `claim(...)`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::too_many_arguments)]

#[path = "../common/mod.rs"]
mod common;
mod multiprocess;

use std::collections::HashMap;

use claims::api::convert::draft_from_request;
use claims::domain::{settle, Accumulators, Catalogue, Category, Claim, Member, MemberId, Terms};
use claims::proto::{
    settlement_reply, ClaimRequest, GetMemberRequest, GetSettlementRequest, ListSettlementsRequest, LossRatioRequest,
    ReverseRequest,
};
use common::*;
use sqlx::{Connection, Row};
use tokio_stream::StreamExt;
use tonic::Code;

// `fresh_database()` (a new, empty database on the test server; its URL) is in tests/common.

async fn spawn_pg_app(url: &str) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(move |s| s.database_url = url).await
}

async fn settle_stream(app: &TestApp, claims: Vec<ClaimRequest>) -> Vec<claims::proto::SettlementReply> {
    let mut client = app.settlements().await;
    let replies = client
        .settle(tokio_stream::iter(claims))
        .await
        .expect("stream")
        .into_inner();
    replies.map(|r| r.expect("reply")).collect().await
}

/// `GetLossRatio` of `cixi-medical-assistance`, every period.
async fn cixi_loss_ratio(app: &TestApp) -> Result<tonic::Response<claims::proto::LossRatioResponse>, tonic::Status> {
    app.reports()
        .await
        .get_loss_ratio(LossRatioRequest {
            product_code: "cixi-medical-assistance".into(),
            ..Default::default()
        })
        .await
}

fn settled(reply: &claims::proto::SettlementReply) -> &claims::proto::Settlement {
    match &reply.result {
        Some(settlement_reply::Result::Settlement(s)) => s.settlement.as_ref().expect("settlement"),
        other => panic!("claim {} not settled: {other:?}", reply.claim_id),
    }
}

#[tokio::test]
async fn worked_example_a_idempotency_and_reversal_on_postgres() {
    let url = fresh_database().await;
    let app = spawn_pg_app(&url).await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let c1 = claim_a1("H1", "H1-0001");
    let c2 = claim_a2("H1", "H1-0002");
    let c3 = claim_a3("H1", "H1-0003");
    let replies = settle_stream(&app, vec![c1.clone(), c2, c3.clone()]).await;
    let ids: Vec<&str> = replies.iter().map(|r| r.claim_id.as_str()).collect();
    assert_eq!(ids, ["H1-0001", "H1-0002", "H1-0003"]);
    let payouts = |s: &claims::proto::Settlement| s.layers.iter().map(|l| l.payout.clone()).collect::<Vec<_>>();
    assert_eq!(payouts(settled(&replies[0])), ["16000.00", "0.00", "9000.00", "0.00"]);
    assert_eq!(settled(&replies[0]).out_of_pocket, "31500.00");
    assert_eq!(settled(&replies[1]).layers[0].payout, "12000.00");
    assert_eq!(settled(&replies[2]).layers[0].payout, "8000.00");
    assert_eq!(settled(&replies[2]).out_of_pocket, "4617.28");

    let mut client = app.settlements().await;
    let replay = client.settle_one(c1.clone()).await.expect("replay").into_inner();
    assert!(replay.replay);
    let mut changed = c1.clone();
    changed.lines[0].amount = "80000.01".into();
    let conflict = client.settle_one(changed).await.expect_err("conflict");
    assert_eq!(conflict.code(), Code::AlreadyExists);

    client
        .reverse(ReverseRequest {
            hospital_id: "H1".into(),
            claim_id: "H1-0002".into(),
        })
        .await
        .expect("reverse");
    let again = client
        .reverse(ReverseRequest {
            hospital_id: "H1".into(),
            claim_id: "H1-0002".into(),
        })
        .await
        .expect_err("second reversal");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let mut c4 = c3;
    c4.claim_id = "H1-0004".into();
    let s4 = client.settle_one(c4).await.expect("H1-0004").into_inner();
    let s4 = s4.settlement.and_then(|s| s.settlement).expect("settlement");
    assert_eq!(s4.layers[0].payout, "9600.00");
    assert_eq!(s4.layers[2].payout, "617.28");
    assert_eq!(s4.out_of_pocket, "3017.28");
    app.stop().await;

    // A restart on the same database finds everything.
    let app = spawn_pg_app(&url).await;
    let ratios = cixi_loss_ratio(&app).await.expect("loss ratio").into_inner().ratios;
    assert_eq!(ratios.len(), 1);
    // 16,000 + 8,000 + 9,600 (H1-0002 reversed).
    assert_eq!(ratios[0].paid, "33600.00");
    assert_eq!(ratios[0].paid_claims, 3);
    app.stop().await;
}

const TIGHT_TERMS: &str = r#"
[product]
code = "pg-tight"
kind = "ANTI_POVERTY"
layer_order = 10
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "100.00"
eligible_categories = ["AT_RISK"]
annual_cap = "9000.00"
aggregate_cap = "120000.00"

[[benefit]]
code = "illness"
visit_kinds = ["INPATIENT", "OUTPATIENT"]
covers = ["IN_SCOPE", "OUT_OF_CATALOGUE"]
deductible = "500.00"
bands = [{ from = "0", ratio = "0.5" }, { from = "4000", ratio = "0.8" }]
per_claim_cap = "3000.00"
annual_cap = "7000.00"
"#;

#[tokio::test]
async fn two_servers_on_one_database_give_a_one_at_a_time_result() {
    let url = fresh_database().await;
    let a = spawn_pg_app(&url).await;
    let b = spawn_pg_app(&url).await;
    let mut terms = a.terms().await;
    terms
        .apply_terms(claims::proto::TermsText {
            toml: TIGHT_TERMS.into(),
        })
        .await
        .expect("terms");
    let members: Vec<String> = (0..20).map(|i| format!("T{i:02}")).collect();
    let summary = enroll(
        &a,
        members
            .iter()
            .map(|m| row(m, "AT_RISK", "2024-01-01", "pg-tight", "2024-01-01"))
            .collect(),
    )
    .await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);

    // 8 streams, alternately on the two servers, 30 claims each over the same 20 members.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut requests: HashMap<String, ClaimRequest> = HashMap::new();
    let mut streams = Vec::new();
    for s in 0..8 {
        let batch: Vec<ClaimRequest> = (0..30)
            .map(|i| {
                let member = &members[(next() % 20) as usize];
                let amount = 500 + next() % 6_000;
                claim(
                    "HP",
                    &format!("P{s}-{i}"),
                    member,
                    "2024-05-01",
                    "INPATIENT",
                    "",
                    &[
                        ("IN_SCOPE", &format!("{amount}.00")),
                        ("OUT_OF_CATALOGUE", &format!("{}.50", amount / 3)),
                    ],
                    &[],
                )
            })
            .collect();
        for r in &batch {
            requests.insert(r.claim_id.clone(), r.clone());
        }
        streams.push(batch);
    }
    let (a_url, b_url) = (a.url(), b.url());
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(s, batch)| {
            let url = if s % 2 == 0 { a_url.clone() } else { b_url.clone() };
            tokio::spawn(async move {
                let mut client = claims::proto::settlement_service_client::SettlementServiceClient::connect(url)
                    .await
                    .expect("connect");
                let replies = client
                    .settle(tokio_stream::iter(batch.clone()))
                    .await
                    .expect("stream")
                    .into_inner();
                let replies: Vec<_> = replies.map(|r| r.expect("reply")).collect().await;
                let sent: Vec<String> = batch.iter().map(|r| r.claim_id.clone()).collect();
                let got: Vec<String> = replies.iter().map(|r| r.claim_id.clone()).collect();
                assert_eq!(sent, got, "replies in stream order");
                replies
            })
        })
        .collect();
    let mut stored_by_id = HashMap::new();
    for t in tasks {
        for reply in t.await.expect("stream task") {
            stored_by_id.insert(reply.claim_id.clone(), settled(&reply).clone());
        }
    }
    assert_eq!(stored_by_id.len(), 240);

    // Replay in commit order through the engine: every settlement must be what a one-at-a-time
    // order gives, and no cap may be exceeded.
    let mut catalogue = Catalogue::new();
    catalogue
        .apply(Terms::from_toml(TIGHT_TERMS).expect("terms"))
        .expect("catalogue");
    let key = catalogue.iter().next().expect("period").terms.key();
    let mut book = Accumulators::new();
    let mut export = a
        .reports()
        .await
        .export_settlements(ListSettlementsRequest {
            hospital_id: "HP".into(),
            ..Default::default()
        })
        .await
        .expect("export")
        .into_inner();
    let mut replayed = 0;
    let mut total_paid = rust_decimal::Decimal::ZERO;
    let mut last_seq = 0;
    while let Some(stored) = export.next().await {
        let stored = stored.expect("row");
        assert!(stored.sequence > last_seq, "export is in commit order");
        last_seq = stored.sequence;
        let s = stored.settlement.expect("settlement");
        let request = &requests[&s.claim_id];
        let claim = Claim::parse(&draft_from_request(request)).expect("claim");
        let mut member = Member::new(MemberId::parse(&request.member_id).expect("member"));
        member.categories.set(
            claims::domain::parse_date("2024-01-01").expect("date"),
            Category::AtRisk,
        );
        member.enrollments.insert(key.clone(), claims::domain::Money::ZERO);
        let expected = settle(&catalogue, &member, &claim, &book);
        book.apply(&expected.changes);
        let expected = claims::api::convert::settlement_to_proto(&expected);
        assert_eq!(s.layers, expected.layers, "claim {}", s.claim_id);
        assert_eq!(s.out_of_pocket, expected.out_of_pocket);
        assert_eq!(stored_by_id[&s.claim_id].layers, s.layers, "reply and store agree");
        for l in &s.layers {
            let payout: rust_decimal::Decimal = l.payout.parse().expect("decimal");
            assert!(payout <= rust_decimal::Decimal::from(3000));
            total_paid += payout;
        }
        replayed += 1;
    }
    assert_eq!(replayed, 240);
    assert!(
        total_paid <= rust_decimal::Decimal::from(120_000),
        "aggregate cap: {total_paid}"
    );
    for m in &members {
        let paid = claims::domain::AccumulatorView::member_paid(&book, &MemberId::parse(m).expect("id"), &key);
        assert!(paid <= rust_decimal::Decimal::from(7000), "{m} paid {paid}");
    }
    let ratio = a
        .reports()
        .await
        .get_loss_ratio(LossRatioRequest {
            product_code: "pg-tight".into(),
            period_start: String::new(),
            ..Default::default()
        })
        .await
        .expect("loss ratio")
        .into_inner()
        .ratios;
    assert_eq!(ratio[0].paid, claims::domain::format_money(total_paid));
    a.stop().await;
    b.stop().await;
}

/// Whether `table` has been analyzed by an `ANALYZE` (not autovacuum's) since the database was made.
async fn analyzed(db: &mut sqlx::PgConnection, table: &str) -> bool {
    sqlx::query("SELECT last_analyze IS NOT NULL AS done FROM pg_stat_user_tables WHERE relname = $1")
        .bind(table)
        .fetch_one(db)
        .await
        .expect("table statistics")
        .get("done")
}

/// Waits until every one of `tables` is analyzed; fails when one is not 30 s later (`after` says
/// after what).
async fn wait_analyzed(db: &mut sqlx::PgConnection, tables: &[&str], after: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for table in tables {
        while !analyzed(db, table).await {
            assert!(
                std::time::Instant::now() < deadline,
                "{table} not analyzed 30 s after {after}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// A roster import of 10,000 rows or more refreshes PostgreSQL's planner statistics of the member
/// tables (`Store::refresh_statistics`), in the background once the import is committed; a small
/// one leaves them alone.
#[tokio::test]
async fn a_large_roster_import_refreshes_the_planner_statistics() {
    let url = fresh_database().await;
    let app = spawn_pg_app(&url).await;
    let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");

    let small: Vec<_> = (0..100)
        .map(|i| row(&format!("S{i:05}"), "DIBAO", "2022-01-01", CIXI_2022[0], "2022-01-01"))
        .collect();
    assert_eq!(enroll(&app, small).await.rows_accepted, 100);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !analyzed(&mut db, "enrollments").await,
        "a 100-row import analyzed the tables"
    );

    let large: Vec<_> = (0..2_500)
        .flat_map(|i| {
            let id = format!("L{i:05}");
            CIXI_2022
                .iter()
                .enumerate()
                .map(move |(p, product)| {
                    let (category, since) = if p == 0 { ("DIBAO", "2022-01-01") } else { ("", "") };
                    row(&id, category, since, product, "2022-01-01")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(enroll(&app, large).await.rows_accepted, 10_000);
    wait_analyzed(&mut db, &["members", "member_categories", "enrollments"], "the import").await;
    app.stop().await;
}

/// Settling grows `settlements` and `member_usage` from nothing; where autovacuum is off (as here),
/// only the ledger's own `ANALYZE` after 2,048 settlements (`ledger::statistics`) keeps the writers'
/// prepared statements from running on plans made for empty tables.
/// `n` DIBAO members `<prefix>0000`, ... enrolled in Cixi's medical assistance 2022.
async fn enroll_in_medical_assistance(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let members: Vec<String> = (0..n).map(|i| format!("{prefix}{i:04}")).collect();
    let summary = enroll(
        app,
        members
            .iter()
            .map(|m| row(m, "DIBAO", "2022-01-01", CIXI_2022[0], "2022-01-01"))
            .collect(),
    )
    .await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    members
}

/// Outpatient claims `<prefix>-<i>` of 120.00 at `hospital` for each `i` of `numbers`, dealt to
/// `members` in turn.
fn outpatient_claims(
    hospital: &str,
    prefix: &str,
    members: &[String],
    numbers: std::ops::Range<usize>,
) -> Vec<ClaimRequest> {
    numbers
        .map(|i| {
            claim(
                hospital,
                &format!("{prefix}-{i}"),
                &members[i % members.len()],
                "2022-06-01",
                "OUTPATIENT",
                "",
                &[("IN_SCOPE", "120.00")],
                &[],
            )
        })
        .collect()
}

#[tokio::test]
async fn settling_refreshes_the_planner_statistics_of_the_settlement_tables() {
    let url = fresh_database().await;
    let app = spawn_pg_app(&url).await;
    let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
    let members = enroll_in_medical_assistance(&app, "G", 200).await;
    let claims_of = |from: usize, to: usize| outpatient_claims("HG", "G", &members, from..to);

    let replies = settle_stream(&app, claims_of(0, 1_000)).await;
    assert_eq!(replies.len(), 1_000);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !analyzed(&mut db, "settlements").await,
        "1,000 settlements analyzed the settlement tables"
    );

    let replies = settle_stream(&app, claims_of(1_000, 2_100)).await;
    assert!(replies.iter().all(|r| !settled(r).layers.is_empty()));
    wait_analyzed(
        &mut db,
        &["settlements", "member_usage", "product_total_shards"],
        "2,100 settlements",
    )
    .await;
    // Statistics of the columns queries filter on, none of the wide ones nothing filters on
    // (migrations/postgres/0008).
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT tablename || '.' || attname FROM pg_stats WHERE schemaname = current_schema() \
         AND tablename IN ('settlements', 'member_usage') ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .expect("pg_stats");
    for kept in [
        "settlements.hospital_id",
        "settlements.service_date",
        "member_usage.member_id",
    ] {
        assert!(columns.iter().any(|c| c == kept), "{kept} in {columns:?}");
    }
    for left in [
        "settlements.claim_json",
        "settlements.layers",
        "settlements.reasons",
        "settlements.settled_at",
        "member_usage.usage",
    ] {
        assert!(!columns.iter().any(|c| c == left), "{left} in {columns:?}");
    }
    app.stop().await;
}

/// A writer keeps the members it read from one transaction to the next (src/store/cache.rs) and
/// checks the roster's version after its first locks. A member it locks only later in a
/// transaction may have changed between that check and its lock: it must read that member again,
/// not use the one it holds. Here another connection (standing for another process) changes the
/// category of a member the writer holds, after the writer's transaction began and before it locks
/// the member.
#[tokio::test]
async fn a_member_locked_after_the_roster_check_is_read_again() {
    use claims::store::{LockKey, Prefetch, Store, TxMode};
    let url = fresh_database().await;
    let store = Store::connect(&url, 4).await.expect("store");
    let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
    for sql in [
        "INSERT INTO members (member_id, created_at) VALUES ('R1', '2022-01-01T00:00:00Z')",
        "INSERT INTO member_categories (member_id, effective_date, category) VALUES ('R1', '2022-01-01', 'DIBAO')",
        "INSERT INTO enrollments (member_id, product_code, period_start, premium_fen) \
         VALUES ('R1', 'cixi-medical-assistance', '2022-01-01', 0)",
    ] {
        sqlx::query(sql).execute(&mut db).await.expect(sql);
    }
    let r1 = MemberId::parse("R1").expect("member id");
    let date = time::macros::date!(2022 - 06 - 01);
    let mut writer = store.writer().await.expect("writer");

    // R1 locked first and read after the roster's version, as a batch of claims does.
    let claimant = |member| Prefetch {
        locks: [LockKey::member(member)].into_iter().collect(),
        members: vec![member],
        ..Prefetch::default()
    };

    // First transaction: R1 read and held.
    writer
        .begin_prefetching(TxMode::Shared, claimant(&r1))
        .await
        .expect("begin");
    let held = writer.members(&[&r1]).await.expect("members");
    assert_eq!(held[&r1].categories.on(date), Category::Dibao);
    writer.commit().await.expect("commit");

    // Second transaction: begun (roster version read, unchanged), R1 not locked yet.
    writer.begin(TxMode::Shared).await.expect("begin");
    sqlx::query("UPDATE member_categories SET category = 'DESTITUTE' WHERE member_id = 'R1'")
        .execute(&mut db)
        .await
        .expect("change R1's category");
    writer.lock([LockKey::member(&r1)]).await.expect("lock R1");
    let read = writer.members(&[&r1]).await.expect("members");
    assert_eq!(
        read[&r1].categories.on(date),
        Category::Destitute,
        "R1 as stored when its lock was taken, not as held"
    );
    writer.commit().await.expect("commit");

    // Third transaction: R1 locked first; the roster's version moved, so R1 held is not used either.
    sqlx::query("UPDATE member_categories SET category = 'DIBAO_MARGINAL' WHERE member_id = 'R1'")
        .execute(&mut db)
        .await
        .expect("change R1's category again");
    writer
        .begin_prefetching(TxMode::Shared, claimant(&r1))
        .await
        .expect("begin");
    let read = writer.members(&[&r1]).await.expect("members");
    assert_eq!(read[&r1].categories.on(date), Category::DibaoMarginal);
    writer.commit().await.expect("commit");
    db.close().await.expect("close");
}

/// Connections the database server closed while they sat idle (a restart, an idle timeout on the
/// way), the pool's and those of the short reads (`store::db::PgReaders`), are pinged before they
/// are used again and replaced: the reads after it succeed, every kind of short read among them.
/// Connections in steady use are not pinged (`store::PING_IDLE_AFTER`).
#[tokio::test]
async fn reads_after_the_server_closed_idle_connections_succeed() {
    let url = fresh_database().await;
    let app = spawn_pg_app(&url).await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    settle_stream(&app, vec![claim_a1("H1", "H1-0001")]).await;
    let read = || cixi_loss_ratio(&app);
    let short_reads = || async {
        let member = app
            .members()
            .await
            .get_member(GetMemberRequest {
                member_id: "M1".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let stored = app
            .settlements()
            .await
            .get_settlement(GetSettlementRequest {
                hospital_id: "H1".into(),
                claim_id: "H1-0001".into(),
            })
            .await?
            .into_inner();
        let preview = app
            .settlements()
            .await
            .preview(claim_a2("H1", "H1-0002"))
            .await?
            .into_inner();
        Ok::<_, tonic::Status>((member, stored, preview))
    };
    read().await.expect("a read before");
    let before = short_reads().await.expect("short reads before");
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("admin connection");
    let closed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    assert!(closed >= 1, "the service held connections");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    for i in 0..4 {
        let figures = read()
            .await
            .unwrap_or_else(|s| panic!("read {i} after the close: {s:?}"));
        assert!(!figures.into_inner().ratios.is_empty());
    }
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("admin connection");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .expect("terminate");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    for i in 0..4 {
        let after = short_reads()
            .await
            .unwrap_or_else(|s| panic!("short reads {i} after the close: {s:?}"));
        assert_eq!(after, before, "the same answers as before the close");
    }
    app.stop().await;
}

/// The short reads' connections are part of `--db-connections`, with the pool's: 64 callers at
/// once leave the service holding no more than that and the writers' own.
#[tokio::test]
async fn concurrent_short_reads_hold_a_bounded_number_of_connections() {
    let url = fresh_database().await;
    let app = spawn_pg_app(&url).await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let calls = (0..64).map(|_| cixi_loss_ratio(&app));
    for result in futures::future::join_all(calls).await {
        result.expect("GetLossRatio");
    }
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("admin connection");
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .expect("count");
    let settings = claims::startup::Settings::default();
    let most = i64::from(settings.db_connections_max) + i64::try_from(settings.ledger.writers).unwrap_or(0);
    assert!(held > 0 && held <= most, "{held} connections (at most {most})");
    app.stop().await;
}

/// A PostgreSQL export reads its settlements in one query on a pooled connection, held while it
/// streams. One its caller abandons gives the connection up: more abandoned exports than the pool
/// has connections leave every other read served.
#[tokio::test]
async fn abandoned_exports_give_their_connections_back() {
    let url = fresh_database().await;
    let app = spawn_pg_app(&url).await;
    let members = enroll_in_medical_assistance(&app, "X", 50).await;
    let replies = settle_stream(&app, outpatient_claims("HX", "X", &members, 0..1_500)).await;
    assert_eq!(replies.len(), 1_500);
    for _ in 0..12 {
        let mut export = app
            .reports()
            .await
            .export_settlements(ListSettlementsRequest::default())
            .await
            .expect("ExportSettlements")
            .into_inner();
        let first = export.next().await;
        assert!(matches!(first, Some(Ok(_))), "{first:?}");
        drop(export);
    }
    let listed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        app.reports().await.list_settlements(ListSettlementsRequest {
            page_size: 10,
            ..Default::default()
        }),
    )
    .await
    .expect("a listing in time")
    .expect("ListSettlements")
    .into_inner();
    assert_eq!(listed.settlements.len(), 10);
    assert_eq!(listed.totals.expect("totals").count, 1_500);
    app.stop().await;
}

/// A batch of claims commits in the same message as its writes (`Writer::insert_settlements`).
/// Should one of those writes fail after another succeeded, PostgreSQL runs nothing after it,
/// `COMMIT` included: the claim is answered UNAVAILABLE and nothing of it is stored, not even its
/// settlement row, written before the failure. Here a trigger refuses one member's usage row (the
/// statement after the settlements' insert); once it is gone, the same claim settles once.
#[tokio::test]
async fn a_write_that_fails_in_the_committing_message_stores_nothing() {
    let url = fresh_database().await;
    let app = spawn_pg_app(&url).await;
    let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
    let members = enroll_in_medical_assistance(&app, "F", 2).await;
    let claims = outpatient_claims("HF", "F", &members, 0..2);
    let mut client = app.settlements().await;
    client.settle_one(claims[1].clone()).await.expect("F0001's claim");
    for sql in [
        "CREATE FUNCTION refuse_usage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.member_id = 'F0000' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_usage BEFORE INSERT OR UPDATE ON member_usage \
         FOR EACH ROW EXECUTE FUNCTION refuse_usage()",
    ] {
        sqlx::query(sql).execute(&mut db).await.expect(sql);
    }
    let before = stored_counts(&mut db).await;
    assert_eq!(before.0, 1);

    let refused = client.settle_one(claims[0].clone()).await.expect_err("refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(stored_counts(&mut db).await, before, "a refused batch left rows behind");

    sqlx::query("DROP TRIGGER refuse_usage ON member_usage")
        .execute(&mut db)
        .await
        .expect("drop trigger");
    let reply = client
        .settle_one(claims[0].clone())
        .await
        .expect("settled")
        .into_inner();
    assert!(!reply.replay, "the refused claim had been stored");
    assert_eq!(stored_counts(&mut db).await, (2, before.1 + 1));
    app.stop().await;
}

/// The settlements stored and the claims counted in the running totals.
async fn stored_counts(db: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query_as::<_, (i64, i64)>(
        "SELECT (SELECT COUNT(*) FROM settlements), \
         (SELECT CAST(COALESCE(SUM(paid_claims), 0) AS BIGINT) FROM product_total_shards)",
    )
    .fetch_one(db)
    .await
    .expect("counts")
}

//! Migration 0004 moves every settlement's layers from rows of `settlement_layers` into the
//! settlement's own `layers` column (`settlement_layers` becomes a view) and, on SQLite, rebuilds
//! `accumulators`, `member_categories` and `enrollments` WITHOUT ROWID; migration 0005 then moves
//! each member's accumulators into one `member_usage` row (`accumulators` becomes a view), and 0006
//! indexes settlements by the month of their service date instead of the date. A
//! database written under migrations 0001-0003 must come back from them with every settlement,
//! layer and running figure as it was. Runs on the backend `CLAIMS_TEST_BACKEND` names (see tests/common).

use std::collections::BTreeMap;
use std::str::FromStr;

use claims::api::convert::{draft_from_request, settlement_to_proto};
use claims::domain::{self, format_date, parse_date, Accumulators, Category, Claim, Member, MemberId, Terms};
use claims::proto::{self, ClaimRequest, ListSettlementsRequest, StoredSettlement};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use sqlx::{AnyConnection, Connection, Row};

use crate::common::replay::{accumulator_rows, catalogue_with, period, AccKey};
use crate::common::{
    backend, claim, claim_a1, claim_a2, claim_a3, connect_any, db_fingerprint, drop_test_database, examples_dir,
    fresh_database_url, spawn_app_with, Backend, TestApp,
};

const CIXI: &str = "2022-01-01";
const MA: &str = "cixi-medical-assistance";
const TOPUP: &str = "cixi-major-illness-topup";
const TIANYI: &str = "cixi-tianyi-yongning-bao";
const STOP_LOSS: &str = "cixi-burden-stop-loss";
const FARMER: &str = "cixi-low-income-farmer-insurance";
const FARMER_START: &str = "2021-08-15";

fn fen(amount: Decimal) -> i64 {
    (amount * Decimal::ONE_HUNDRED)
        .to_i64()
        .unwrap_or_else(|| panic!("{amount} in fen"))
}

fn reasons_text(reasons: &[domain::Reason]) -> String {
    reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
}

/// The example terms, as the service stored them at its first start (every file, version 1).
fn example_terms() -> Vec<(Terms, String)> {
    let mut files: Vec<_> = std::fs::read_dir(examples_dir().join("terms"))
        .expect("examples/terms")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("terms file");
            (Terms::from_toml(&text).expect("terms parse"), text)
        })
        .collect()
}

/// The members: (id, category changes, enrollments (product, period start)).
type MemberSpec = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [(&'static str, &'static str)],
);

const MEMBERS: [MemberSpec; 2] = [
    // M1: the four Cixi 2022 layers and the farmer insurance of 2021/22 (layer 35, until
    // 2022-08-14); GENERAL, eligible for none of them, from October.
    (
        "M1",
        &[("2022-01-01", "DIBAO"), ("2022-10-01", "GENERAL")],
        &[
            (MA, CIXI),
            (TOPUP, CIXI),
            (TIANYI, CIXI),
            (STOP_LOSS, CIXI),
            (FARMER, FARMER_START),
        ],
    ),
    ("M2", &[("2022-01-01", "DESTITUTE")], &[(MA, CIXI), (TIANYI, CIXI)]),
];

/// What the old service did, in order.
enum Old {
    Settle(ClaimRequest),
    /// Reverses the settlement of this claim id.
    Reverse(&'static str),
}

fn old_events() -> Vec<Old> {
    vec![
        // Worked example A's H1-0001: five layers (the farmer insurance between Tianyi and the stop-loss).
        Old::Settle(claim_a1("H1", "OLD-1")),
        // A non-medical loss: the medical layers match no benefit (a NULL benefit_code), the
        // farmer insurance's accident-loss benefit pays.
        Old::Settle(claim(
            "H1",
            "OLD-2",
            "M1",
            "2022-04-01",
            "NON_MEDICAL",
            "ACCIDENT",
            &[("OTHER_LOSS", "3000.00")],
            &[],
        )),
        // Worked example A's H1-0003, for M2.
        Old::Settle(ClaimRequest {
            member_id: "M2".into(),
            ..claim_a3("H2", "OLD-3")
        }),
        // Worked example A's H1-0002.
        Old::Settle(claim_a2("H1", "OLD-4")),
        Old::Reverse("OLD-4"),
        // M1 is GENERAL by then: every layer CATEGORY_NOT_ELIGIBLE, without a benefit.
        Old::Settle(claim(
            "H2",
            "OLD-5",
            "M1",
            "2022-10-15",
            "INPATIENT",
            "",
            &[("IN_SCOPE", "10000.00")],
            &[("BASIC", "5000.00")],
        )),
        Old::Settle(claim(
            "H3",
            "OLD-6",
            "M2",
            "2022-06-01",
            "PHARMACY",
            "",
            &[("IN_SCOPE", "500.00")],
            &[],
        )),
    ]
}

/// Runs `sql` with text and whole-number arguments; returns the first column of the first row
/// when it returns one.
async fn run(db: &mut AnyConnection, sql: &str, args: &[Arg<'_>]) -> Option<i64> {
    let mut query = sqlx::query(sql);
    for a in args {
        query = match a {
            Arg::Text(t) => query.bind(*t),
            Arg::OptText(t) => query.bind(*t),
            Arg::Int(i) => query.bind(*i),
        };
    }
    let rows = query.fetch_all(db).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.first().map(|r| r.get::<i64, _>(0))
}

enum Arg<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
}

/// The lines of `table` in a [`db_fingerprint`].
fn lines_of(fingerprint: &[String], table: &str) -> Vec<String> {
    let prefix = format!("{table}: ");
    fingerprint.iter().filter(|l| l.starts_with(&prefix)).cloned().collect()
}

/// A database migrated to 0003 holds two members, six settlements (two to five layers each,
/// written as `settlement_layers` rows out of layer order, some layers without a benefit), a
/// reversal and the running figures, as the service wrote them before 0004. The service started on
/// it migrates it. Proves that GetSettlement, ListSettlements (also filtered by a product, through
/// the new `settlement_layers` view) and a resubmission give back every settlement with exactly its
/// layers, in layer order, field for field; that the `settlement_layers` view reads the rows that
/// were inserted; that settlements, reversals, members, categories, enrollments, accumulators and
/// period totals are unchanged; and that a new claim settles against the old accumulators.
#[tokio::test]
async fn settlements_stored_before_migration_0004_keep_their_layers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database_url(dir.path()).await;

    // Migrations 0001-0003 only.
    let mut migrator = match backend() {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 4)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    assert_eq!(versions, [1, 2, 3], "the migrations before 0004");
    let mut db = match backend() {
        Backend::Sqlite => connect_any(&format!("{url}?mode=rwc")).await,
        Backend::Postgres => connect_any(&url).await,
    };
    migrator.run(&mut db).await.expect("migrations 0001-0003");

    // What the old service stored: terms, members, settlements with their layer rows, a reversal,
    // accumulators and period totals.
    let terms = example_terms();
    for (t, text) in &terms {
        run(
            &mut db,
            "INSERT INTO terms (product_code, period_start, version, period_end, toml, applied_at) \
             VALUES ($1, $2, 1, $3, $4, $5)",
            &[
                Arg::Text(t.product.code.as_str()),
                Arg::Text(&format_date(t.product.period.start)),
                Arg::Text(&format_date(t.product.period.end)),
                Arg::Text(text),
                Arg::Text("2022-01-01T00:00:00Z"),
            ],
        )
        .await;
    }
    let premium_of = |code: &str, start: &str| -> i64 {
        let (t, _) = terms
            .iter()
            .find(|(t, _)| t.product.code.as_str() == code && format_date(t.product.period.start) == start)
            .unwrap_or_else(|| panic!("no terms {code}@{start}"));
        fen(t.product.premium_per_member.decimal())
    };
    let mut members: BTreeMap<&str, Member> = BTreeMap::new();
    // Per period: (written premium, enrolled members, paid, paid claims) in fen.
    let mut totals: BTreeMap<(String, String), (i64, i64, i64, i64)> = terms
        .iter()
        .map(|(t, _)| {
            (
                (t.product.code.to_string(), format_date(t.product.period.start)),
                (0, 0, 0, 0),
            )
        })
        .collect();
    for (id, categories, enrollments) in MEMBERS {
        let mut m = Member::new(MemberId::parse(id).expect("member id"));
        run(
            &mut db,
            "INSERT INTO members (member_id, created_at) VALUES ($1, $2)",
            &[Arg::Text(id), Arg::Text("2022-01-01T00:00:00Z")],
        )
        .await;
        for (date, category) in categories {
            m.categories.set(
                parse_date(date).expect("date"),
                Category::from_str(category).expect("category"),
            );
            run(
                &mut db,
                "INSERT INTO member_categories (member_id, effective_date, category) VALUES ($1, $2, $3)",
                &[Arg::Text(id), Arg::Text(date), Arg::Text(category)],
            )
            .await;
        }
        for (product, start) in enrollments {
            let premium = premium_of(product, start);
            m.enrollments.insert(
                period(product, start),
                domain::Money::parse(&format!("{}", Decimal::new(premium, 2))).expect("premium"),
            );
            run(
                &mut db,
                "INSERT INTO enrollments (member_id, product_code, period_start, premium_fen) VALUES ($1, $2, $3, $4)",
                &[Arg::Text(id), Arg::Text(product), Arg::Text(start), Arg::Int(premium)],
            )
            .await;
            let t = totals
                .get_mut(&((*product).to_owned(), (*start).to_owned()))
                .expect("a terms period");
            t.0 += premium;
            t.1 += 1;
        }
        members.insert(id, m);
    }

    let catalogue = catalogue_with(&[]);
    let mut acc = Accumulators::new();
    // Accumulator rows as the old service's upserts left them: a row taken back to zero stays.
    let mut acc_rows: BTreeMap<AccKey, (i64, i64, i64)> = BTreeMap::new();
    let mut settled: Vec<(ClaimRequest, domain::Settlement, StoredSettlement)> = Vec::new();
    let mut max_seq = 0;
    for (n, event) in old_events().into_iter().enumerate() {
        match event {
            Old::Settle(request) => {
                let claim = Claim::parse(&draft_from_request(&request)).expect("a valid claim");
                let member = &members[request.member_id.as_str()];
                let s = domain::settle(&catalogue, member, &claim, &acc);
                acc.apply(&s.changes);
                let settled_at = format!("2022-11-01T08:00:{n:02}Z");
                let claim_json = serde_json::to_string(&claim.to_draft()).expect("claim json");
                let seq = run(
                    &mut db,
                    "INSERT INTO settlements (hospital_id, claim_id, member_id, service_date, category, claim_json, \
                     total_cost_fen, upstream_fen, payout_fen, out_of_pocket_fen, reasons, settled_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING seq",
                    &[
                        Arg::Text(&request.hospital_id),
                        Arg::Text(&request.claim_id),
                        Arg::Text(&request.member_id),
                        Arg::Text(&request.service_date),
                        Arg::Text(s.category.as_str()),
                        Arg::Text(&claim_json),
                        Arg::Int(fen(s.total_cost)),
                        Arg::Int(fen(s.upstream_total)),
                        Arg::Int(fen(s.payout_total)),
                        Arg::Int(fen(s.out_of_pocket)),
                        Arg::Text(&reasons_text(&s.reasons)),
                        Arg::Text(&settled_at),
                    ],
                )
                .await
                .expect("the new settlement's seq");
                max_seq = max_seq.max(seq);
                // The layer rows out of order: backwards, or rotated by one.
                let mut order: Vec<usize> = (0..s.layers.len()).collect();
                if n % 2 == 0 {
                    order.reverse();
                } else {
                    order.rotate_left(1);
                }
                for i in order {
                    let l = &s.layers[i];
                    run(
                        &mut db,
                        "INSERT INTO settlement_layers (seq, layer_index, product_code, period_start, period_end, \
                         terms_version, layer_order, benefit_code, eligible_fen, deductible_fen, payout_fen, reasons) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                        &[
                            Arg::Int(seq),
                            Arg::Int(i as i64),
                            Arg::Text(l.product.as_str()),
                            Arg::Text(&format_date(l.period_start)),
                            Arg::Text(&format_date(l.period_end)),
                            Arg::Int(i64::from(l.terms_version)),
                            Arg::Int(l.layer_order),
                            Arg::OptText(l.benefit.as_ref().map(|b| b.as_str())),
                            Arg::Int(fen(l.eligible)),
                            Arg::Int(fen(l.deductible_applied)),
                            Arg::Int(fen(l.payout)),
                            Arg::Text(&reasons_text(&l.reasons)),
                        ],
                    )
                    .await;
                }
                let stored = StoredSettlement {
                    settlement: Some(settlement_to_proto(&s)),
                    sequence: u64::try_from(seq).expect("seq"),
                    settled_at,
                    reversed: false,
                    reversed_at: String::new(),
                };
                settled.push((request, s, stored));
            }
            Old::Reverse(claim_id) => {
                let (_, s, stored) = settled
                    .iter_mut()
                    .find(|(r, _, _)| r.claim_id == claim_id)
                    .expect("a settled claim");
                acc.apply(&s.changes.negated());
                stored.reversed = true;
                stored.reversed_at = "2022-11-02T09:30:00Z".into();
                let seq = run(
                    &mut db,
                    "INSERT INTO reversals (settlement_seq, reversed_at) VALUES ($1, $2) RETURNING seq",
                    &[
                        Arg::Int(i64::try_from(stored.sequence).expect("seq")),
                        Arg::Text(&stored.reversed_at),
                    ],
                )
                .await
                .expect("the reversal's seq");
                max_seq = max_seq.max(seq);
            }
        }
    }
    for (_, s, stored) in &settled {
        for c in &s.changes.entries {
            let row = acc_rows
                .entry((
                    s.member_id.to_string(),
                    c.period.product.to_string(),
                    format_date(c.period.start),
                    c.benefit.to_string(),
                ))
                .or_default();
            row.0 += fen(c.delta.deductible_used);
            row.1 += fen(c.delta.band_position);
            row.2 += fen(c.delta.paid);
        }
        if stored.reversed {
            // Added, then taken back by the reversal.
            for c in &s.changes.entries {
                let row = acc_rows
                    .get_mut(&(
                        s.member_id.to_string(),
                        c.period.product.to_string(),
                        format_date(c.period.start),
                        c.benefit.to_string(),
                    ))
                    .expect("added above");
                row.0 -= fen(c.delta.deductible_used);
                row.1 -= fen(c.delta.band_position);
                row.2 -= fen(c.delta.paid);
            }
        }
        if stored.reversed {
            continue;
        }
        for l in s.layers.iter().filter(|l| !l.payout.is_zero()) {
            let t = totals
                .get_mut(&(l.product.to_string(), format_date(l.period_start)))
                .expect("a terms period");
            t.2 += fen(l.payout);
            t.3 += 1;
        }
    }
    for ((member, product, start, benefit), (deductible, band, paid)) in &acc_rows {
        run(
            &mut db,
            "INSERT INTO accumulators (member_id, product_code, period_start, benefit_code, deductible_used_fen, \
             band_position_fen, paid_fen) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                Arg::Text(member),
                Arg::Text(product),
                Arg::Text(start),
                Arg::Text(benefit),
                Arg::Int(*deductible),
                Arg::Int(*band),
                Arg::Int(*paid),
            ],
        )
        .await;
    }
    for ((product, start), (premium, enrolled, paid, claims)) in &totals {
        run(
            &mut db,
            "INSERT INTO product_total_shards (product_code, period_start, shard, written_premium_fen, \
             enrolled_members, paid_fen, paid_claims) VALUES ($1, $2, 0, $3, $4, $5, $6)",
            &[
                Arg::Text(product),
                Arg::Text(start),
                Arg::Int(*premium),
                Arg::Int(*enrolled),
                Arg::Int(*paid),
                Arg::Int(*claims),
            ],
        )
        .await;
    }
    db.close().await.expect("close db");

    // The data is what the test means it to be.
    let layer_counts: Vec<usize> = settled.iter().map(|(_, s, _)| s.layers.len()).collect();
    assert_eq!(layer_counts, [5, 5, 2, 5, 4, 2], "layers per settlement");
    assert!(
        settled
            .iter()
            .any(|(_, s, _)| s.layers.iter().any(|l| l.benefit.is_none())
                && s.layers.iter().any(|l| !l.payout.is_zero())),
        "a settlement mixes layers without a benefit and paying layers"
    );
    assert_eq!(
        acc_rows.values().filter(|v| **v == (0, 0, 0)).count(),
        1,
        "the reversal left a zero row"
    );
    let before = db_fingerprint(&url).await;

    // The service migrates the database at start.
    let app = spawn_app_with(|s| s.database_url = url.clone()).await;
    let mut db = connect_any(&url).await;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut db)
        .await
        .expect("_sqlx_migrations")
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect();
    // 0007 (PostgreSQL only): the roster's version, which writers check before using the members
    // they hold. 0008 (PostgreSQL only): no planner statistics for the wide columns.
    let expected: &[i64] = match backend() {
        Backend::Sqlite => &[1, 2, 3, 4, 5, 6],
        Backend::Postgres => &[1, 2, 3, 4, 5, 6, 7, 8],
    };
    assert_eq!(applied, expected, "the service applied 0004 to the last");
    if backend() == Backend::Postgres {
        let target: i64 = sqlx::query(
            "SELECT CAST(attstattarget AS BIGINT) FROM pg_attribute \
             WHERE attrelid = CAST('settlements' AS regclass) AND attname = 'claim_json'",
        )
        .fetch_one(&mut db)
        .await
        .expect("pg_attribute")
        .get(0);
        assert_eq!(target, 0, "0008 keeps no statistics of the canonical claims");
    }
    // 0006: settlements are found by the month of their service date.
    let index_sql = match backend() {
        Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'settlements'",
        Backend::Postgres => "SELECT CAST(indexname AS TEXT) AS name FROM pg_indexes WHERE tablename = 'settlements'",
    };
    let indexes: Vec<String> = sqlx::query(index_sql)
        .fetch_all(&mut db)
        .await
        .expect("indexes")
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    assert!(indexes.iter().any(|n| n == "settlements_service_month"), "{indexes:?}");
    assert!(!indexes.iter().any(|n| n == "settlements_service_date"), "{indexes:?}");
    if backend() == Backend::Sqlite {
        for table in ["member_usage", "member_categories", "enrollments"] {
            let sql: String = sqlx::query("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = $1")
                .bind(table)
                .fetch_one(&mut db)
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"))
                .get(0);
            assert!(sql.contains("WITHOUT ROWID"), "{table} rebuilt WITHOUT ROWID: {sql}");
        }
    }
    db.close().await.expect("close db");

    // Every row as it was. `settlement_layers` is a view over `settlements.layers` now and reads
    // the rows inserted; `settlements` has the `layers` column more.
    let after = db_fingerprint(&url).await;
    for table in [
        "members",
        "member_categories",
        "enrollments",
        "accumulators",
        "reversals",
        "product_total_shards",
        "product_totals",
        "terms",
        "settlement_layers",
    ] {
        let was = lines_of(&before, table);
        assert!(!was.is_empty(), "{table} has rows");
        assert_eq!(lines_of(&after, table), was, "{table} after migration 0004");
    }
    let mut settlements_now: Vec<String> = lines_of(&after, "settlements")
        .iter()
        .map(|l| {
            let (rest, layers) = l.rsplit_once('|').expect("a layers column");
            assert!(layers.starts_with('[') && layers.ends_with(']'), "layers: {layers}");
            rest.to_owned()
        })
        .collect();
    settlements_now.sort();
    assert_eq!(
        settlements_now,
        lines_of(&before, "settlements"),
        "the settlements' other columns"
    );

    // Through the API: every settlement, with exactly its layers in layer order.
    let mut client = app.settlements().await;
    for (request, _, stored) in &settled {
        let got = client
            .get_settlement(proto::GetSettlementRequest {
                hospital_id: request.hospital_id.clone(),
                claim_id: request.claim_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetSettlement {}: {e:?}", request.claim_id))
            .into_inner();
        assert_eq!(&got, stored, "GetSettlement {}", request.claim_id);
    }
    let everything: Vec<StoredSettlement> = settled.iter().map(|(_, _, s)| s.clone()).collect();
    assert_eq!(
        list(
            &app,
            ListSettlementsRequest {
                include_reversed: true,
                ..Default::default()
            }
        )
        .await,
        everything,
        "ListSettlements, reversed included, in sequence order"
    );
    let in_force: Vec<StoredSettlement> = everything.iter().filter(|s| !s.reversed).cloned().collect();
    assert_eq!(
        list(&app, ListSettlementsRequest::default()).await,
        in_force,
        "ListSettlements"
    );
    let with_farmer: Vec<StoredSettlement> = settled
        .iter()
        .filter(|(_, s, _)| s.layers.iter().any(|l| l.product.as_str() == FARMER))
        .map(|(_, _, s)| s.clone())
        .collect();
    assert_eq!(
        with_farmer.len(),
        3,
        "OLD-1, OLD-2 and OLD-4 have a farmer insurance layer"
    );
    assert_eq!(
        list(
            &app,
            ListSettlementsRequest {
                product_code: FARMER.into(),
                include_reversed: true,
                ..Default::default()
            }
        )
        .await,
        with_farmer,
        "ListSettlements of one product (through the settlement_layers view)"
    );

    // An identical resubmission of an old claim is a replay of the stored settlement.
    let (request, _, stored) = &settled[0];
    let reply = client
        .settle_one(request.clone())
        .await
        .expect("resubmission")
        .into_inner();
    assert!(reply.replay, "an old claim resubmitted is a replay");
    assert_eq!(reply.settlement.as_ref(), Some(stored), "the old settlement");

    // A new claim of M1 settles against the old accumulators: the farmer insurance's deductible
    // is used up, Tianyi's band position is 30,000.00 (50%, not 20%).
    let new = claim(
        "H1",
        "NEW-1",
        "M1",
        "2022-06-01",
        "OUTPATIENT",
        "",
        &[("IN_SCOPE", "20000.00"), ("OUT_OF_CATALOGUE", "1234.56")],
        &[("BASIC", "8000.00")],
    );
    let new_claim = Claim::parse(&draft_from_request(&new)).expect("a valid claim");
    let expected = domain::settle(&catalogue, &members["M1"], &new_claim, &acc);
    let on_nothing = domain::settle(&catalogue, &members["M1"], &new_claim, &Accumulators::new());
    assert_ne!(
        settlement_to_proto(&expected),
        settlement_to_proto(&on_nothing),
        "the new claim depends on the old accumulators"
    );
    let reply = client.settle_one(new).await.expect("NEW-1 settles").into_inner();
    assert!(!reply.replay);
    let got = reply.settlement.expect("a settlement");
    assert_eq!(
        got.settlement,
        Some(settlement_to_proto(&expected)),
        "NEW-1 against the old accumulators"
    );
    assert!(
        got.sequence > u64::try_from(max_seq).expect("seq"),
        "numbered after the old events"
    );

    // The accumulators: the old ones plus the new claim's changes.
    acc.apply(&expected.changes);
    let mut rows_now: BTreeMap<AccKey, (i64, i64, i64)> = BTreeMap::new();
    for (m, p, b, u) in acc.benefit_entries() {
        rows_now.insert(
            (
                m.to_string(),
                p.product.to_string(),
                format_date(p.start),
                b.to_string(),
            ),
            (fen(u.deductible_used), fen(u.band_position), fen(u.paid)),
        );
    }
    assert_eq!(accumulator_rows(&url).await, rows_now, "accumulators after NEW-1");

    app.stop().await;
    drop_test_database(&url).await;
}

/// Every page of ListSettlements.
async fn list(app: &TestApp, request: ListSettlementsRequest) -> Vec<StoredSettlement> {
    let mut reports = app.reports().await;
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = reports
            .list_settlements(ListSettlementsRequest {
                page_token: page_token.clone(),
                page_size: 2,
                ..request.clone()
            })
            .await
            .expect("ListSettlements")
            .into_inner();
        out.extend(page.settlements);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

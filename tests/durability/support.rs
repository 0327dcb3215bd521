//! What the durability tests share beyond tests/common (which holds the seeded RNG and the replay of
//! committed settlements through the engine): consistency checks read straight from the database
//! (SQLite or PostgreSQL).

use std::collections::{BTreeMap, BTreeSet};

use claims::domain::Category;
use sqlx::{Connection, Row};

use crate::common::connect_any;
use crate::common::replay::{accumulator_rows, AccKey};

/// One settlement as found in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSettlement {
    pub seq: i64,
    pub member_id: String,
    pub layers: usize,
    pub payout_fen: i64,
}

/// Reads the database at `database_url` directly (SQLite or PostgreSQL) and checks that nothing is
/// half-written and every running figure equals the sum over the append-only rows:
/// - on SQLite, the file passes `PRAGMA integrity_check` and `PRAGMA foreign_key_check`; on both
///   backends, every foreign key (reversals to settlements, categories and enrollments to
///   members) finds its row (PostgreSQL enforces them, SQLite only with `foreign_keys` on);
/// - every settlement's `layers` column holds an array, with exactly `expected_layers` layers (read
///   through the `settlement_layers` view) numbered 0..n, and its payout equal to the sum of its
///   layers;
/// - total cost = upstream + payout + out of pocket for every settlement;
/// - accumulators = per (member, product period, benefit) sums of the layers of settlements in force;
/// - product_totals: paid and paid claims = sums of layer payouts, written premium and members =
///   sums over enrollments.
///
/// Returns the settlements by (hospital, claim id).
pub async fn check_db(database_url: &str, expected_layers: usize) -> BTreeMap<(String, String), DbSettlement> {
    let mut conn = connect_any(database_url).await;

    if database_url.starts_with("sqlite") {
        let integrity: String = sqlx::query("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .expect("integrity_check")
            .get(0);
        assert_eq!(integrity, "ok", "SQLite integrity check");
        let fk = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&mut conn)
            .await
            .expect("foreign_key_check");
        assert!(fk.is_empty(), "{} foreign key violations", fk.len());
    }
    for (what, query) in [
        (
            "settlements without a layers array",
            "SELECT COUNT(*) FROM settlements WHERE layers NOT LIKE '[%]'",
        ),
        (
            "reversals without their settlements row",
            "SELECT COUNT(*) FROM reversals r WHERE NOT EXISTS \
             (SELECT 1 FROM settlements s WHERE s.seq = r.settlement_seq)",
        ),
        (
            "member_categories rows without their members row",
            "SELECT COUNT(*) FROM member_categories c WHERE NOT EXISTS \
             (SELECT 1 FROM members m WHERE m.member_id = c.member_id)",
        ),
        (
            "enrollments without their members row",
            "SELECT COUNT(*) FROM enrollments e WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.member_id = e.member_id)",
        ),
    ] {
        let orphans: i64 = sqlx::query(query)
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .get(0);
        assert_eq!(orphans, 0, "{what}");
    }

    let reversed: BTreeSet<i64> = sqlx::query("SELECT settlement_seq FROM reversals")
        .fetch_all(&mut conn)
        .await
        .expect("reversals")
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect();

    let mut by_seq: BTreeMap<i64, ((String, String), DbSettlement)> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT seq, hospital_id, claim_id, member_id, total_cost_fen, upstream_fen, payout_fen, out_of_pocket_fen \
         FROM settlements ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .expect("settlements");
    for row in &rows {
        let seq: i64 = row.get("seq");
        let (total, upstream, payout, oop): (i64, i64, i64, i64) = (
            row.get("total_cost_fen"),
            row.get("upstream_fen"),
            row.get("payout_fen"),
            row.get("out_of_pocket_fen"),
        );
        assert_eq!(
            total,
            upstream + payout + oop,
            "settlement {seq}: total cost != upstream + payout + out of pocket"
        );
        let key: (String, String) = (row.get("hospital_id"), row.get("claim_id"));
        by_seq.insert(
            seq,
            (
                key,
                DbSettlement {
                    seq,
                    member_id: row.get("member_id"),
                    layers: 0,
                    payout_fen: payout,
                },
            ),
        );
    }

    let mut acc_sums: BTreeMap<AccKey, (i64, i64, i64)> = BTreeMap::new();
    let mut period_sums: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    let mut layer_payouts: BTreeMap<i64, i64> = BTreeMap::new();
    let layers = sqlx::query(
        "SELECT seq, layer_index, product_code, period_start, benefit_code, eligible_fen, deductible_fen, payout_fen \
         FROM settlement_layers ORDER BY seq, layer_index",
    )
    .fetch_all(&mut conn)
    .await
    .expect("layers");
    for row in &layers {
        let seq: i64 = row.get("seq");
        let index: i64 = row.get("layer_index");
        let (_, s) = by_seq
            .get_mut(&seq)
            .unwrap_or_else(|| panic!("layer of missing settlement {seq}"));
        assert_eq!(index, s.layers as i64, "settlement {seq}: layer indexes not 0..n");
        s.layers += 1;
        let member = s.member_id.clone();
        let product: String = row.get("product_code");
        let start: String = row.get("period_start");
        let benefit: Option<String> = row.get("benefit_code");
        let (eligible, deductible, payout): (i64, i64, i64) = (
            row.get("eligible_fen"),
            row.get("deductible_fen"),
            row.get("payout_fen"),
        );
        assert!(
            (0..=eligible).contains(&deductible) && (0..=eligible - deductible).contains(&payout),
            "settlement {seq} layer {index}: eligible {eligible}, deductible {deductible}, payout {payout}"
        );
        *layer_payouts.entry(seq).or_default() += payout;
        if reversed.contains(&seq) {
            continue;
        }
        let p = period_sums.entry((product.clone(), start.clone())).or_default();
        p.0 += payout;
        p.1 += i64::from(payout > 0);
        if let Some(benefit) = benefit {
            let a = acc_sums.entry((member, product, start, benefit)).or_default();
            a.0 += deductible;
            a.1 += eligible - deductible;
            a.2 += payout;
        }
    }
    for (seq, (key, s)) in &by_seq {
        assert_eq!(
            s.layers, expected_layers,
            "settlement {seq} {key:?} has {} layer rows, expected {expected_layers}",
            s.layers
        );
        assert_eq!(
            layer_payouts.get(seq).copied().unwrap_or_default(),
            s.payout_fen,
            "settlement {seq}: payout is not the sum of its layers"
        );
    }

    acc_sums.retain(|_, v| *v != (0, 0, 0));
    let stored_acc = accumulator_rows(database_url).await;
    if stored_acc != acc_sums {
        let keys: BTreeSet<&AccKey> = stored_acc.keys().chain(acc_sums.keys()).collect();
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| stored_acc.get(*k) != acc_sums.get(*k))
            .take(10)
            .map(|k| {
                format!(
                    "{k:?}: table {:?}, sum of layers {:?}",
                    stored_acc.get(k),
                    acc_sums.get(k)
                )
            })
            .collect();
        panic!(
            "accumulators differ from the sums of the stored layers (deductible, band, paid):\n{}",
            diffs.join("\n")
        );
    }

    let mut premiums: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for row in sqlx::query("SELECT product_code, period_start, premium_fen FROM enrollments")
        .fetch_all(&mut conn)
        .await
        .expect("enrollments")
    {
        let p = premiums
            .entry((row.get("product_code"), row.get("period_start")))
            .or_default();
        p.0 += row.get::<i64, _>("premium_fen");
        p.1 += 1;
    }
    let totals = sqlx::query(
        "SELECT product_code, period_start, written_premium_fen, enrolled_members, paid_fen, paid_claims \
         FROM product_totals",
    )
    .fetch_all(&mut conn)
    .await
    .expect("product_totals");
    let mut seen = BTreeSet::new();
    for row in &totals {
        let key: (String, String) = (row.get("product_code"), row.get("period_start"));
        let paid = period_sums.get(&key).copied().unwrap_or_default();
        assert_eq!(
            (row.get::<i64, _>("paid_fen"), row.get::<i64, _>("paid_claims")),
            paid,
            "product_totals {key:?}: (paid, paid claims) != sums over the layers"
        );
        let written = premiums.get(&key).copied().unwrap_or_default();
        assert_eq!(
            (
                row.get::<i64, _>("written_premium_fen"),
                row.get::<i64, _>("enrolled_members")
            ),
            written,
            "product_totals {key:?}: (written premium, members) != sums over enrollments"
        );
        seen.insert(key);
    }
    for key in period_sums.keys() {
        assert!(
            seen.contains(key),
            "payouts in {key:?}, which has no product_totals row"
        );
    }
    conn.close().await.expect("close db");
    by_seq.into_values().collect()
}

/// `SELECT COUNT(*) FROM settlements WHERE hospital_id = $1 AND claim_id = $2` for each key, in the
/// database at `database_url` (SQLite or PostgreSQL).
pub async fn stored_counts(database_url: &str, keys: &[(String, String)]) -> Vec<i64> {
    let mut conn = connect_any(database_url).await;
    let mut out = Vec::with_capacity(keys.len());
    for (hospital, claim) in keys {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM settlements WHERE hospital_id = $1 AND claim_id = $2")
            .bind(hospital)
            .bind(claim)
            .fetch_one(&mut conn)
            .await
            .expect("count")
            .get(0);
        out.push(n);
    }
    conn.close().await.expect("close db");
    out
}

/// The domain category of a proto category value.
pub fn category_of(value: i32) -> Category {
    claims::api::convert::category_text(value)
        .parse()
        .unwrap_or_else(|e| panic!("category {value}: {e}"))
}

//! What both durability tests share: a seeded RNG, the replay of committed settlements through the
//! engine, and consistency checks read straight from the database (SQLite or PostgreSQL).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use claims::api::convert::{draft_from_request, settlement_to_proto};
use claims::domain::{self, parse_date, Accumulators, Catalogue, Category, Claim, Member, MemberId, Money, PeriodKey};
use claims::domain::{ProductCode, Terms};
use claims::proto::report_service_client::ReportServiceClient;
use claims::proto::{ClaimRequest, ListSettlementsRequest, StoredSettlement};
use rust_decimal::Decimal;
use sqlx::{Connection, Row};
use tonic::transport::Channel;

use crate::common::{connect_any, examples_dir};

/// xorshift64: a few lines instead of a dependency; the same seed gives the same claims.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// In `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Whole fen as an amount on the wire: 123456 -> "1234.56".
pub fn fen_text(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not an amount: {e}"))
}

/// The idempotency key of a request.
pub fn key_of(r: &ClaimRequest) -> (String, String) {
    (r.hospital_id.clone(), r.claim_id.clone())
}

/// A random date of `year` (days 1-28, so every month is valid).
pub fn date_in(rng: &mut XorShift, year: u32) -> String {
    format!("{year}-{:02}-{:02}", rng.between(1, 12), rng.between(1, 28))
}

/// What the server's catalogue holds on a fresh database: every example terms file in name order
/// (as `--terms-dir` applies them), then `extra` as applied through `ApplyTerms`, all at version 1.
pub fn catalogue_with(extra: &[&str]) -> Catalogue {
    let dir = examples_dir().join("terms");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/terms")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut texts: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("terms file"))
        .collect();
    texts.extend(extra.iter().map(|t| (*t).to_owned()));
    let mut catalogue = Catalogue::new();
    for text in texts {
        let terms = Terms::from_toml(&text).expect("terms parse");
        let outcome = catalogue.apply(terms).expect("terms join the catalogue");
        assert_eq!(outcome.version(), 1);
    }
    catalogue
}

pub fn period(product: &str, start: &str) -> PeriodKey {
    PeriodKey {
        product: ProductCode::parse(product).expect("product code"),
        start: parse_date(start).expect("date"),
    }
}

/// A domain member: category changes (effective date, category) and enrollments (product, period
/// start) at `premium`.
pub fn member(id: &str, categories: &[(&str, Category)], enrollments: &[(&str, &str)], premium: &str) -> Member {
    let mut m = Member::new(MemberId::parse(id).expect("member id"));
    for (date, category) in categories {
        m.categories.set(parse_date(date).expect("date"), *category);
    }
    for (product, start) in enrollments {
        m.enrollments
            .insert(period(product, start), Money::parse(premium).expect("premium"));
    }
    m
}

/// Every settlement in force, in commit (sequence) order.
pub async fn export_all(channel: Channel) -> Vec<StoredSettlement> {
    let mut reports = ReportServiceClient::new(channel);
    let mut stream = reports
        .export_settlements(ListSettlementsRequest::default())
        .await
        .expect("export")
        .into_inner();
    let mut out = Vec::new();
    while let Some(s) = stream.message().await.expect("export stream") {
        out.push(s);
    }
    out
}

/// Runs the engine over the stored settlements in sequence order, starting from empty
/// accumulators, and asserts that every stored settlement is exactly what the engine gives at its
/// place in that order. Returns the accumulators the replay ends with.
pub fn replay(
    catalogue: &Catalogue,
    members: &HashMap<String, Member>,
    requests: &HashMap<(String, String), ClaimRequest>,
    stored: &[StoredSettlement],
) -> Accumulators {
    let mut acc = Accumulators::new();
    let mut last_sequence = 0;
    for s in stored {
        assert!(
            s.sequence > last_sequence,
            "export not in sequence order: {} after {last_sequence}",
            s.sequence
        );
        last_sequence = s.sequence;
        assert!(!s.reversed, "nothing is reversed in these tests");
        let settlement = s.settlement.as_ref().expect("settlement");
        let key = (settlement.hospital_id.clone(), settlement.claim_id.clone());
        let request = requests
            .get(&key)
            .unwrap_or_else(|| panic!("stored settlement {key:?} (sequence {}) was never sent", s.sequence));
        let claim = Claim::parse(&draft_from_request(request)).expect("the sent claim is valid");
        let member = members
            .get(&request.member_id)
            .unwrap_or_else(|| panic!("unknown member {}", request.member_id));
        let replayed = domain::settle(catalogue, member, &claim, &acc);
        assert_eq!(
            settlement_to_proto(&replayed),
            *settlement,
            "sequence {} ({key:?}): the stored settlement differs from the engine's replay in commit order",
            s.sequence
        );
        acc.apply(&replayed.changes);
    }
    acc
}

/// One settlement as found in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSettlement {
    pub seq: i64,
    pub member_id: String,
    pub layers: usize,
    pub payout_fen: i64,
}

/// Accumulator key: member, product, period start, benefit.
type AccKey = (String, String, String, String);

/// Reads the database at `database_url` directly (SQLite or PostgreSQL) and checks that nothing is
/// half-written and every running figure equals the sum over the append-only rows:
/// - on SQLite, the file passes `PRAGMA integrity_check` and `PRAGMA foreign_key_check`; on both
///   backends, every foreign key (layers and reversals to settlements, categories and enrollments to
///   members) finds its row (PostgreSQL enforces them, SQLite only with `foreign_keys` on);
/// - no layer row without its settlement, every settlement with exactly `expected_layers` layer rows
///   numbered 0..n, and its payout equal to the sum of its layers;
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
            "settlement_layers rows without their settlements row",
            "SELECT COUNT(*) FROM settlement_layers l WHERE NOT EXISTS (SELECT 1 FROM settlements s WHERE s.seq = l.seq)",
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
    let mut stored_acc: BTreeMap<AccKey, (i64, i64, i64)> = BTreeMap::new();
    for row in sqlx::query(
        "SELECT member_id, product_code, period_start, benefit_code, deductible_used_fen, band_position_fen, paid_fen \
         FROM accumulators",
    )
    .fetch_all(&mut conn)
    .await
    .expect("accumulators")
    {
        let v: (i64, i64, i64) = (
            row.get("deductible_used_fen"),
            row.get("band_position_fen"),
            row.get("paid_fen"),
        );
        if v != (0, 0, 0) {
            stored_acc.insert(
                (
                    row.get("member_id"),
                    row.get("product_code"),
                    row.get("period_start"),
                    row.get("benefit_code"),
                ),
                v,
            );
        }
    }
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

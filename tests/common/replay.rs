//! Settlements read back and replayed: exports, the engine's replay of stored settlements through
//! `claims::domain::settle`, the engine's members and catalogue, and rows read straight from the
//! database (SQLite or PostgreSQL).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use claims::api::convert::{draft_from_request, settlement_to_proto};
use claims::domain::{
    self, format_date, parse_date, AccumulatorChanges, Accumulators, Catalogue, Category, Claim, Member, MemberId,
    Money, PeriodKey,
};
use claims::domain::{ProductCode, Terms};
use claims::proto::report_service_client::ReportServiceClient;
use claims::proto::settlement_reply::Result as ReplyResult;
use claims::proto::{ClaimRequest, ListSettlementsRequest, Settlement, SettlementReply, StoredSettlement};
use rust_decimal::Decimal;
use sqlx::{Connection, Row};
use tonic::transport::Channel;

use super::{connect_any, examples_dir};

/// The idempotency key of a request or settlement: (hospital, claim id).
pub type Key = (String, String);

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not an amount: {e}"))
}

/// The idempotency key of a request.
pub fn key_of(r: &ClaimRequest) -> Key {
    (r.hospital_id.clone(), r.claim_id.clone())
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

/// The stored settlement a reply carries; panics on an error reply.
pub fn settlement_of(reply: &SettlementReply) -> &StoredSettlement {
    match &reply.result {
        Some(ReplyResult::Settlement(s)) => s,
        other => panic!("claim {}: expected a settlement, got {other:?}", reply.claim_id),
    }
}

/// The settlement proper of a stored settlement.
pub fn body(s: &StoredSettlement) -> &Settlement {
    s.settlement.as_ref().expect("settlement body")
}

/// ExportSettlements through `channel` (reversed ones too when `include_reversed`), as sent:
/// in commit (sequence) order.
pub async fn export_settlements(
    channel: Channel,
    include_reversed: bool,
) -> Result<Vec<StoredSettlement>, tonic::Status> {
    let mut reports = ReportServiceClient::new(channel);
    let mut stream = reports
        .export_settlements(ListSettlementsRequest {
            include_reversed,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(s) = stream.message().await.expect("export stream") {
        out.push(s);
    }
    Ok(out)
}

/// Every settlement in force, in commit (sequence) order.
pub async fn export_all(channel: Channel) -> Vec<StoredSettlement> {
    export_settlements(channel, false).await.expect("export")
}

/// Settles `claim` of `member` through the engine on `acc` and asserts that the result is
/// `stored`, the settlement stored at sequence `sequence` under `key`. Returns the engine's
/// settlement (its accumulator changes not applied).
pub fn replay_one(
    catalogue: &Catalogue,
    member: &Member,
    claim: &Claim,
    acc: &Accumulators,
    stored: Option<&Settlement>,
    sequence: impl std::fmt::Display,
    key: &Key,
) -> domain::Settlement {
    let replayed = domain::settle(catalogue, member, claim, acc);
    assert_eq!(
        Some(&settlement_to_proto(&replayed)),
        stored,
        "sequence {sequence} ({key:?}): the stored settlement differs from the engine's replay in commit order"
    );
    replayed
}

/// Runs the engine over the stored settlements in sequence order, starting from empty
/// accumulators, and asserts that every stored settlement is exactly what the engine gives at its
/// place in that order. Returns the accumulators the replay ends with.
pub fn replay(
    catalogue: &Catalogue,
    members: &HashMap<String, Member>,
    requests: &HashMap<Key, ClaimRequest>,
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
        let replayed = replay_one(catalogue, member, &claim, &acc, Some(settlement), s.sequence, &key);
        acc.apply(&replayed.changes);
    }
    acc
}

/// Accumulator key: member, product, period start, benefit.
pub type AccKey = (String, String, String, String);

/// Accumulators by (member, product, period start, benefit): (deductible used, band position, paid),
/// in money.
pub type AccumulatorMoney = BTreeMap<AccKey, (Decimal, Decimal, Decimal)>;

/// [`accumulator_rows`] of the database at `database_url`, in money.
pub async fn accumulator_money(database_url: &str) -> AccumulatorMoney {
    accumulator_rows(database_url)
        .await
        .into_iter()
        .map(|(k, (deductible, band, paid))| {
            (
                k,
                (
                    Decimal::new(deductible, 2),
                    Decimal::new(band, 2),
                    Decimal::new(paid, 2),
                ),
            )
        })
        .collect()
}

/// The benefit accumulators of `acc`, as [`accumulator_money`] reads them from the database.
pub fn accumulators_money(acc: &Accumulators) -> AccumulatorMoney {
    acc.benefit_entries()
        .map(|(m, p, b, u)| {
            (
                (
                    m.to_string(),
                    p.product.to_string(),
                    format_date(p.start),
                    b.to_string(),
                ),
                (u.deductible_used, u.band_position, u.paid),
            )
        })
        .collect()
}

/// The events of a test (settlements and reversals) replayed in order on fresh accumulators: each
/// settlement through the engine ([`replay_one`]), its changes applied; a reversal takes back the
/// changes of its settlement.
pub struct EventReplay<'a> {
    catalogue: &'a Catalogue,
    /// The accumulators after the events replayed so far.
    pub acc: Accumulators,
    changes: HashMap<Key, AccumulatorChanges>,
}

impl<'a> EventReplay<'a> {
    pub fn new(catalogue: &'a Catalogue) -> Self {
        Self {
            catalogue,
            acc: Accumulators::new(),
            changes: HashMap::new(),
        }
    }

    /// Settles `claim` of `member` through the engine on the accumulators as they are and asserts
    /// that the result is `stored`; hands the engine's settlement and the accumulators before it to
    /// `before_apply`, then applies the settlement's changes. Returns the engine's settlement.
    pub fn settle(
        &mut self,
        member: &Member,
        claim: &Claim,
        stored: &StoredSettlement,
        before_apply: impl FnOnce(&domain::Settlement, &Accumulators),
    ) -> domain::Settlement {
        let body = body(stored);
        let key = (body.hospital_id.clone(), body.claim_id.clone());
        let replayed = replay_one(
            self.catalogue,
            member,
            claim,
            &self.acc,
            Some(body),
            stored.sequence,
            &key,
        );
        before_apply(&replayed, &self.acc);
        self.acc.apply(&replayed.changes);
        self.changes.insert(key, replayed.changes.clone());
        replayed
    }

    /// Takes back the changes of the settlement of `key`; false when it was not replayed.
    #[must_use]
    pub fn reverse(&mut self, key: &Key) -> bool {
        match self.changes.get(key) {
            Some(changes) => {
                self.acc.apply(&changes.negated());
                true
            }
            None => false,
        }
    }
}

/// The rows of the accumulators table of the database at `database_url` that are not all zero:
/// (deductible used, band position, paid) in fen.
pub async fn accumulator_rows(database_url: &str) -> BTreeMap<AccKey, (i64, i64, i64)> {
    let mut conn = connect_any(database_url).await;
    let mut out = BTreeMap::new();
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
            out.insert(
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
    conn.close().await.expect("close db");
    out
}

//! The writer's cache of members and accumulators (src/store/cache.rs). SQLite's single writer keeps
//! members and their usage from one transaction to the next: it must drop them when another
//! connection commits to the file (`PRAGMA data_version`) and keep them equal to the database
//! through its own settlements, reversals and roster changes. PostgreSQL's writers keep members for
//! one transaction only. Both tests run on either backend.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use claims::api::convert::{category_text, draft_from_request};
use claims::domain::{AccumulatorView, Category, Claim, Member, MemberId, Money};
use claims::proto::{ClaimRequest, EnrollmentRow, Reason, StoredSettlement};
use rust_decimal::Decimal;
use sqlx::Connection;

use crate::common::products::{products_2024, AggregateCaps};
use crate::common::random::{random_claim_2024, MedicalAmounts, Odds, XorShift};
use crate::common::replay::{
    accumulator_money, accumulator_rows, accumulators_money, catalogue_with, export_settlements, key_of, period,
    EventReplay, Key,
};
use crate::common::*;
use crate::support::*;

/// Runs `sql` with `binds` (text or whole numbers) on `db` and returns the rows it changed.
async fn execute(db: &mut sqlx::AnyConnection, sql: &str, binds: &[Bind<'_>]) -> u64 {
    let mut query = sqlx::query(sql);
    for b in binds {
        query = match b {
            Bind::Text(t) => query.bind(*t),
            Bind::Int(i) => query.bind(*i),
        };
    }
    query
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected()
}

enum Bind<'a> {
    Text(&'a str),
    Int(i64),
}

/// Medical assistance (Cixi 2022) alone, for member C1 (DIBAO, 80%): its outpatient benefit has an
/// annual cap of 20,000.00 and the product one of 100,000.00, so what a claim pays depends on what
/// the member was paid before. Between two claims another connection (standing for another process
/// on the same database, or a repair by hand) commits new figures for C1, then a new category and
/// enrollment. Proves that the writer settles the next claim on what the database holds, not on what
/// it remembered of the earlier claim: its cache is dropped when another connection committed.
#[tokio::test]
async fn a_change_committed_by_another_connection_is_seen_by_the_next_claim() {
    let app = spawn_app().await;
    let summary = enroll(&app, vec![row("C1", "DIBAO", CIXI_START, MA, CIXI_START)]).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let outpatient =
        |id: &str, date: &str| claim("H1", id, "C1", date, "OUTPATIENT", "", &[("IN_SCOPE", "5000.00")], &[]);

    // The writer reads C1 and C1's usage for this claim (SQLite's writer keeps both afterwards).
    let (first, _) = settle_one(&app, outpatient("C-1", "2022-03-01")).await;
    assert_layer(inner(&first), MA, "outpatient", "5000.00", "0.00", "4000.00", &[]);

    // Another connection commits: C1's outpatient benefit has paid 18,500.00 (not 4,000.00); the
    // period's total paid moves with it, as the service keeps it.
    let mut db = connect_any(&app.database_url).await;
    // A member's usage is one `member_usage` row (the `accumulators` view reads it): deductible
    // used, band position and paid, in fen.
    let stored: String = sqlx::query_scalar("SELECT usage FROM member_usage WHERE member_id = 'C1'")
        .fetch_one(&mut db)
        .await
        .expect("C1's usage");
    assert_eq!(
        stored,
        format!(r#"[["{MA}","{CIXI_START}","outpatient",0,500000,400000]]"#)
    );
    let changed = execute(
        &mut db,
        "UPDATE member_usage SET usage = $1 WHERE member_id = $2",
        &[
            Bind::Text(&format!(r#"[["{MA}","{CIXI_START}","outpatient",0,500000,1850000]]"#)),
            Bind::Text("C1"),
        ],
    )
    .await;
    assert_eq!(changed, 1, "C1's usage row exists");
    let changed = execute(
        &mut db,
        "UPDATE product_total_shards SET paid_fen = paid_fen + $1 WHERE product_code = $2 AND period_start = $3 \
         AND shard = 0",
        &[Bind::Int(1_450_000), Bind::Text(MA), Bind::Text(CIXI_START)],
    )
    .await;
    assert_eq!(changed, 1, "the period's shard 0 row exists");

    // 5,000.00 at 80% = 4,000.00, cut to the room the database leaves: 20,000.00 - 18,500.00 =
    // 1,500.00. A writer settling on its remembered 4,000.00 paid would pay 4,000.00, uncut.
    let (second, _) = settle_one(&app, outpatient("C-2", "2022-04-01")).await;
    assert_layer(
        inner(&second),
        MA,
        "outpatient",
        "5000.00",
        "0.00",
        "1500.00",
        &["CAP_BENEFIT_ANNUAL"],
    );

    // Another connection commits a new category (DESTITUTE instead of DIBAO, from the same date)
    // and an enrollment in Tianyi Yongning Bao, with the running figures the service keeps for it.
    let changed = execute(
        &mut db,
        "UPDATE member_categories SET category = $1 WHERE member_id = $2",
        &[Bind::Text("DESTITUTE"), Bind::Text("C1")],
    )
    .await;
    assert_eq!(changed, 1, "C1 has one category row");
    execute(
        &mut db,
        "INSERT INTO enrollments (member_id, product_code, period_start, premium_fen) VALUES ($1, $2, $3, $4)",
        &[
            Bind::Text("C1"),
            Bind::Text(TIANYI),
            Bind::Text(CIXI_START),
            Bind::Int(5_000),
        ],
    )
    .await;
    let changed = execute(
        &mut db,
        "UPDATE product_total_shards SET written_premium_fen = written_premium_fen + $1, \
         enrolled_members = enrolled_members + 1 WHERE product_code = $2 AND period_start = $3 AND shard = 0",
        &[Bind::Int(5_000), Bind::Text(TIANYI), Bind::Text(CIXI_START)],
    )
    .await;
    assert_eq!(changed, 1);
    db.close().await.expect("close db");

    // As stored now: DESTITUTE pays 100% of IN_SCOPE (10,000.00; the product cap leaves 80,000.00),
    // and Tianyi pays 20% of OUT_OF_CATALOGUE (200.00). The member as remembered (DIBAO, no Tianyi)
    // would give one layer paying 8,000.00.
    let (third, _) = settle_one(
        &app,
        claim(
            "H1",
            "C-3",
            "C1",
            "2022-05-01",
            "INPATIENT",
            "",
            &[("IN_SCOPE", "10000.00"), ("OUT_OF_CATALOGUE", "1000.00")],
            &[],
        ),
    )
    .await;
    let s = inner(&third);
    assert_eq!(
        category_name(s.category),
        "DESTITUTE",
        "the category committed elsewhere"
    );
    let products: Vec<&str> = s.layers.iter().map(|l| l.product_code.as_str()).collect();
    assert_eq!(products, [MA, TIANYI], "the enrollment committed elsewhere");
    assert_layer(s, MA, "inpatient", "10000.00", "0.00", "10000.00", &[]);
    assert_layer(s, TIANYI, "out-of-catalogue", "1000.00", "0.00", "200.00", &[]);
    assert_totals(s, "11000.00", "0.00", "10200.00", "800.00");

    // The writer added to the rows as the other connection left them.
    let rows = accumulator_rows(&app.database_url).await;
    let acc_key = |product: &str, benefit: &str| {
        (
            "C1".to_owned(),
            product.to_owned(),
            CIXI_START.to_owned(),
            benefit.to_owned(),
        )
    };
    let expected = BTreeMap::from([
        (acc_key(MA, "outpatient"), (0, 1_000_000, 2_000_000)),
        (acc_key(MA, "inpatient"), (0, 1_000_000, 1_000_000)),
        (acc_key(TIANYI, "out-of-catalogue"), (0, 100_000, 20_000)),
    ]);
    assert_eq!(
        rows, expected,
        "accumulators (deductible used, band position, paid) in fen"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Settlements, reversals and roster changes, replayed.

const START: &str = "2024-01-01";

/// The 2024 test products but the stop-loss, applied through ApplyTerms, in this order, after the
/// example terms.
fn extra_terms() -> [String; 4] {
    let products = products_2024(
        "cache",
        "cache test",
        AggregateCaps {
            topup: "15000.00",
            yongning: "12000.00",
            anti_poverty: "12000.00",
        },
    );
    [
        products.assistance,
        products.topup,
        products.yongning,
        products.anti_poverty,
    ]
}
const C_ASSISTANCE: &str = "cache-assistance";
const C_TOPUP: &str = "cache-topup";
const C_YONGNING: &str = "cache-yongning";
const C_ANTI_POVERTY: &str = "cache-anti-poverty";
const CODES: [&str; 4] = [C_ASSISTANCE, C_TOPUP, C_YONGNING, C_ANTI_POVERTY];

const MEMBERS: u64 = 12;
/// Members CC00..CC03 get about two thirds of the claims: their caps bind early.
const HOT_MEMBERS: u64 = 4;
const PHASES: usize = 3;
const STREAMS: usize = 3;
const CLAIMS_PER_STREAM: usize = 36;
const SETTLE_ONE_PER_PHASE: usize = 12;
const REVERSALS_PER_PHASE: usize = 8;

fn member_id(i: u64) -> String {
    format!("CC{i:02}")
}

/// The first roster of member `i`: a category from the start of the year and one to three layers.
fn first_roster(i: u64) -> Vec<EnrollmentRow> {
    let (category, products): (&str, &[&str]) = match i % 4 {
        0 => ("DIBAO", &[C_ASSISTANCE, C_TOPUP, C_YONGNING]),
        1 => ("DESTITUTE", &[C_ASSISTANCE, C_YONGNING]),
        2 => ("DIBAO_MARGINAL", &[C_ASSISTANCE]),
        _ => ("AT_RISK", &[C_ANTI_POVERTY, C_TOPUP]),
    };
    let id = member_id(i);
    products
        .iter()
        .enumerate()
        .map(|(n, p)| {
            if n == 0 {
                row(&id, category, START, p, START)
            } else {
                row(&id, "", "", p, START)
            }
        })
        .collect()
}

/// The members as the engine sees them, kept in step with every roster row and category change
/// the test sends. (Premiums do not take part in a settlement and are left at zero.)
#[derive(Debug, Clone, Default)]
struct Roster(HashMap<String, Member>);

impl Roster {
    fn member(&mut self, id: &str) -> &mut Member {
        self.0
            .entry(id.to_owned())
            .or_insert_with(|| Member::new(MemberId::parse(id).expect("member id")))
    }

    fn set_category(&mut self, id: &str, category: &str, date: &str) {
        let category = Category::from_str(category).expect("category");
        let date = claims::domain::parse_date(date).expect("date");
        self.member(id).categories.set(date, category);
    }

    fn apply(&mut self, rows: &[EnrollmentRow]) {
        for r in rows {
            if r.category != 0 {
                self.set_category(&r.member_id, &category_text(r.category), &r.effective_date);
            }
            if !r.product_code.is_empty() {
                self.member(&r.member_id)
                    .enrollments
                    .insert(period(&r.product_code, &r.period_start), Money::ZERO);
            }
        }
    }
}

/// Enrolls `rows` on the server and in `roster`.
async fn enroll_rows(app: &TestApp, roster: &mut Roster, rows: Vec<EnrollmentRow>) {
    roster.apply(&rows);
    let summary = enroll(app, rows).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
}

/// Sets a category on the server and in `roster`.
async fn set_category(app: &TestApp, roster: &mut Roster, member: &str, category: &str, date: &str) {
    change_category(app, member, category, date)
        .await
        .unwrap_or_else(|e| panic!("{member} becomes {category} from {date}: {e:?}"));
    roster.set_category(member, category, date);
}

/// Before phase `phase` (1, 2): roster changes of members who already have settlements.
async fn change_roster(app: &TestApp, roster: &mut Roster, phase: usize) {
    if phase == 1 {
        // CC02 (assistance only) joins two more layers; CC00 becomes AT_RISK in July and joins the
        // anti-poverty layer; CC01 is DIBAO instead of DESTITUTE all year.
        enroll_rows(
            app,
            roster,
            vec![
                row("CC02", "", "", C_TOPUP, START),
                row("CC02", "", "", C_YONGNING, START),
                row("CC00", "AT_RISK", "2024-07-01", C_ANTI_POVERTY, START),
            ],
        )
        .await;
        set_category(app, roster, "CC01", "DIBAO", START).await;
    } else {
        // CC03 is DIBAO instead of AT_RISK all year (eligible for the top-up, no longer for the
        // anti-poverty layer); CC01 is DESTITUTE from September; CC04's premium changes.
        set_category(app, roster, "CC03", "DIBAO", START).await;
        enroll_rows(
            app,
            roster,
            vec![
                row("CC01", "DESTITUTE", "2024-09-01", "", ""),
                EnrollmentRow {
                    premium: "45.00".into(),
                    ..row("CC04", "", "", C_TOPUP, START)
                },
            ],
        )
        .await;
    }
}

/// The amounts of [`random_claim`]'s medical claims: those of a county hospital.
const AMOUNTS: MedicalAmounts = MedicalAmounts {
    in_scope_inpatient: 80_000..=1_200_000,
    in_scope_other: 10_000..=200_000,
    basic_pct: 30..=70,
    critical: (Odds::OneIn(4), 0..=40),
    b_self_pay: (Odds::AllButOneIn(3), 5_000..=150_000),
    out_of_catalogue: (Odds::OneIn(2), 5_000..=300_000),
    non_compliant: (Odds::OneIn(5), 100..=20_000),
};

/// A random claim of 2024 ([`random_claim_2024`]), two thirds of them for the hot members.
fn random_claim(rng: &mut XorShift, id: &str) -> ClaimRequest {
    let member = if rng.below(3) < 2 {
        member_id(rng.below(HOT_MEMBERS))
    } else {
        member_id(rng.below(MEMBERS))
    };
    random_claim_2024(rng, id, &member, &AMOUNTS)
}

/// What the test did, in order: the events replayed.
enum Event {
    /// The claims of one phase (keys), all settled between the events before and after.
    Settled {
        phase: usize,
        keys: BTreeSet<Key>,
    },
    Reversed(Key),
}

fn stored_key(s: &StoredSettlement) -> Key {
    let b = inner(s);
    (b.hospital_id.clone(), b.claim_id.clone())
}

/// Twelve members in one to four layers of four product periods with tight per-claim, benefit,
/// product and aggregate caps. Three phases of 120 claims each (three concurrent Settle streams and
/// SettleOne calls beside them), two thirds for four members; after each phase eight settlements
/// are reversed, and before the second and third phase members who already have settlements change
/// category and enrollments. Proves that every stored settlement is what the engine gives when
/// every event (settlements in sequence order within their phase, reversals in the order made) is
/// replayed on fresh accumulators with the members as they were at the time, that the accumulators
/// table and the loss ratios equal the replay's, and that every kind of cap cut something. A writer
/// that kept a member or a usage past a change of its own (reversal, category, enrollment) would
/// settle a later claim of that member differently from the replay.
#[tokio::test]
async fn settlements_after_reversals_and_enrollment_changes_equal_a_replay() {
    let app = spawn_app().await;
    let extra_terms = extra_terms();
    for toml in &extra_terms {
        let applied = apply_terms_text(&app, toml).await;
        assert_eq!(applied.version, 1, "{}", applied.product_code);
    }
    let mut roster = Roster::default();
    for i in 0..MEMBERS {
        enroll_rows(&app, &mut roster, first_roster(i)).await;
    }

    let mut rng = XorShift::new(0x00CA_C4E5);
    let mut snapshots: Vec<Roster> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut requests: HashMap<Key, ClaimRequest> = HashMap::new();
    let mut answers: BTreeMap<Key, StoredSettlement> = BTreeMap::new();
    let mut reversed: BTreeMap<Key, StoredSettlement> = BTreeMap::new();
    for phase in 0..PHASES {
        if phase > 0 {
            change_roster(&app, &mut roster, phase).await;
        }
        snapshots.push(roster.clone());
        let streams: Vec<Vec<ClaimRequest>> = (0..STREAMS)
            .map(|s| {
                (0..CLAIMS_PER_STREAM)
                    .map(|n| random_claim(&mut rng, &format!("P{phase}-S{s}-{n:03}")))
                    .collect()
            })
            .collect();
        let ones: Vec<ClaimRequest> = (0..SETTLE_ONE_PER_PHASE)
            .map(|n| random_claim(&mut rng, &format!("P{phase}-ONE-{n:03}")))
            .collect();
        let mut keys = BTreeSet::new();
        for r in streams.iter().flatten().chain(&ones) {
            keys.insert(key_of(r));
            assert!(requests.insert(key_of(r), r.clone()).is_none(), "keys are unique");
        }

        // The streams and the SettleOne calls at once: the writer's batches mix them.
        let (stream_replies, one_replies) = tokio::join!(
            futures::future::join_all(streams.into_iter().map(|s| settle_stream(&app, s))),
            async {
                let mut out = Vec::new();
                for r in ones {
                    out.push(settle_one(&app, r).await);
                }
                out
            }
        );
        for reply in stream_replies.iter().flatten() {
            assert!(!reply.replay, "{}: a first submission", reply.claim_id);
            let s = reply_settlement(reply);
            answers.insert(stored_key(s), s.clone());
        }
        for (s, replay) in one_replies {
            assert!(!replay, "a first submission");
            answers.insert(stored_key(&s), s);
        }
        events.push(Event::Settled { phase, keys });

        // Reverse some settlements that paid something, of this phase or an earlier one.
        for _ in 0..REVERSALS_PER_PHASE {
            let candidates: Vec<&Key> = answers
                .iter()
                .filter(|(k, s)| !reversed.contains_key(*k) && dec(&inner(s).payout_total) > Decimal::ZERO)
                .map(|(k, _)| k)
                .collect();
            assert!(!candidates.is_empty(), "settlements that paid something");
            let key = (*rng.pick(&candidates)).clone();
            let got = reverse(&app, &key.0, &key.1)
                .await
                .unwrap_or_else(|e| panic!("{key:?} reverses: {e:?}"));
            assert!(got.reversed && !got.reversed_at.is_empty(), "{key:?}: marked reversed");
            reversed.insert(key.clone(), got);
            events.push(Event::Reversed(key));
        }
    }

    // Every settlement as stored, in sequence order; every answer was the stored settlement.
    let stored = export_settlements(app.channel().await, true).await.expect("export");
    assert_eq!(stored.len(), requests.len(), "one stored settlement per claim");
    let by_key: HashMap<Key, &StoredSettlement> = stored.iter().map(|s| (stored_key(s), s)).collect();
    for (key, answer) in &answers {
        let s = by_key
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} was answered but is not stored"));
        assert_eq!(
            (&answer.settlement, answer.sequence, &answer.settled_at),
            (&s.settlement, s.sequence, &s.settled_at),
            "{key:?}: the answer is the stored settlement"
        );
        match reversed.get(key) {
            Some(r) => {
                assert!(s.reversed, "{key:?}: stored as reversed");
                assert_eq!((r.sequence, &r.reversed_at), (s.sequence, &s.reversed_at), "{key:?}");
            }
            None => assert!(!s.reversed, "{key:?} is not reversed"),
        }
    }

    // Replay every event on fresh accumulators.
    let extra_terms: Vec<&str> = extra_terms.iter().map(String::as_str).collect();
    let catalogue = catalogue_with(&extra_terms);
    let mut replay = EventReplay::new(&catalogue);
    let mut cuts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut last_phase_seq = 0;
    for event in &events {
        match event {
            Event::Settled { phase, keys } => {
                let members = &snapshots[*phase];
                let mut settled = 0;
                let mut phase_seq = last_phase_seq;
                for s in stored.iter().filter(|s| keys.contains(&stored_key(s))) {
                    assert!(
                        s.sequence > last_phase_seq,
                        "phase {phase}: sequence {} is not after the earlier phases' ({last_phase_seq})",
                        s.sequence
                    );
                    phase_seq = phase_seq.max(s.sequence);
                    let request = &requests[&stored_key(s)];
                    let claim = Claim::parse(&draft_from_request(request)).expect("the sent claim is valid");
                    let member = members
                        .0
                        .get(&request.member_id)
                        .unwrap_or_else(|| panic!("unknown member {}", request.member_id));
                    let replayed = replay.settle(member, &claim, s, |_, _| {});
                    for r in replayed.layers.iter().flat_map(|l| &l.reasons) {
                        if r.as_str().starts_with("CAP_") {
                            *cuts.entry(r.as_str()).or_default() += 1;
                        }
                    }
                    settled += 1;
                }
                assert_eq!(settled, keys.len(), "phase {phase}: every claim stored");
                last_phase_seq = phase_seq;
            }
            Event::Reversed(key) => {
                assert!(replay.reverse(key), "{key:?} reversed before it was settled");
            }
        }
    }
    for cap in [
        "CAP_PER_CLAIM",
        "CAP_BENEFIT_ANNUAL",
        "CAP_PRODUCT_ANNUAL",
        "CAP_AGGREGATE",
    ] {
        assert!(
            cuts.get(cap).copied().unwrap_or_default() > 0,
            "no payout was cut by {cap}: the caps are not tight enough ({cuts:?})"
        );
    }

    // The accumulators table and the loss ratios are the replay's.
    let acc = &replay.acc;
    assert_eq!(
        accumulator_money(&app.database_url).await,
        accumulators_money(acc),
        "accumulators (deductible used, band position, paid): table and replay"
    );
    for code in CODES {
        let ratio = loss_ratio(&app, code, START).await;
        assert_eq!(
            dec(&ratio.paid),
            acc.aggregate_paid(&period(code, START)),
            "{code}: paid in the loss ratio and in the replay"
        );
    }
    println!(
        "cache replay: {} claims, {} reversals, cuts {cuts:?}",
        requests.len(),
        reversed.len()
    );

    // A preview reads what all members together have been paid in each period, which the
    // aggregate caps have bound by now: a new claim of each member previews as SettleOne then
    // settles it.
    let mut client = app.settlements().await;
    let mut aggregate_cuts = 0;
    for i in 0..MEMBERS {
        let request = random_claim_2024(&mut rng, &format!("END-{i:03}"), &member_id(i), &AMOUNTS);
        let preview = client
            .preview(request.clone())
            .await
            .expect("previews")
            .into_inner()
            .settlement
            .expect("a preview carries a settlement");
        aggregate_cuts += preview
            .layers
            .iter()
            .flat_map(|l| &l.reasons)
            .filter(|r| **r == Reason::CapAggregate as i32)
            .count();
        let (settled, replayed) = settle_one(&app, request).await;
        assert!(!replayed);
        assert_eq!(
            *inner(&settled),
            preview,
            "{}: SettleOne returns what Preview showed",
            member_id(i)
        );
    }
    assert!(aggregate_cuts > 0, "no preview was cut by an aggregate cap");
    app.stop().await;
}

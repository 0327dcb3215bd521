//! 16 concurrent Settle streams, each on its own connection, settling claims of the same 50 members
//! against tight caps. Checks that no cap was exceeded, that the committed settlements are exactly
//! what the engine gives when replayed one at a time in commit order, that the running figures
//! (GetMember, GetLossRatio, the accumulator tables) equal that replay, and that every stream got its
//! replies in request order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use claims::api::convert::reason_value;
use claims::domain::{format_money, AccumulatorView, BenefitCode, Category, Member, MemberId, Terms};
use claims::proto::{
    ApplyOutcome, ClaimRequest, GetMemberRequest, LossRatioRequest, SettlementReply, StoredSettlement, TermsText,
};
use rust_decimal::Decimal;
use tokio_stream::wrappers::ReceiverStream;

use crate::common::random::{date_in, fen_text, medical_claim, send_in_bursts, MedicalAmounts, Odds, XorShift};
use crate::common::replay::{body, catalogue_with, dec, export_all, key_of, member, period, replay, settlement_of};
use crate::common::{claim, enroll, row, spawn_app};
use crate::support::{category_of, check_db};

const STREAMS: usize = 16;
const MEMBERS: usize = 50;

/// The first layer: every cap binds. 50 members could draw up to 50 x 6,000 = 300,000, so the
/// aggregate cap of 240,000 binds across members.
const TIGHT_CAP: &str = r#"
[product]
code = "tight-cap"
name = "Tight caps (concurrency test)"
kind = "SUPPLEMENTARY_MEDICAL"
layer_order = 10
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "100.00"
eligible_categories = ["DESTITUTE", "DIBAO", "DIBAO_MARGINAL"]
annual_cap = "6000.00"
aggregate_cap = "240000.00"

[[benefit]]
code = "inpatient"
visit_kinds = ["INPATIENT"]
covers = ["IN_SCOPE", "B_SELF_PAY"]
deductible = "800.00"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "0.50" }, { from = "1500", ratio = "0.70" }, { from = "4000", ratio = "0.90" }]
per_claim_cap = "1000.00"
annual_cap = "4500.00"
by_category.DESTITUTE = { deductible = "0", bands = [{ from = "0", ratio = "0.85" }, { from = "5000", ratio = "1.00" }], annual_cap = "5200.00" }

[[benefit]]
code = "outpatient"
visit_kinds = ["OUTPATIENT", "PHARMACY"]
outpatient_kinds = ["GENERAL", "CHRONIC"]
covers = ["IN_SCOPE"]
deductible = "150.00"
deductible_basis = "CLAIM"
bands = [{ from = "0", ratio = "0.60" }]
per_claim_cap = "400.00"
annual_cap = "1800.00"
"#;

/// The second layer: what the first leaves of B_SELF_PAY and OUT_OF_CATALOGUE, two designated
/// hospitals only, DIBAO and DESTITUTE only; its product cap is below its benefit cap.
const TIGHT_LAYER: &str = r#"
[product]
code = "tight-layer"
name = "Tight second layer (concurrency test)"
kind = "INCLUSIVE_COMMERCIAL"
layer_order = 20
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "60.00"
eligible_categories = ["DESTITUTE", "DIBAO"]
designated_hospitals = ["H1", "H2"]
annual_cap = "2800.00"
aggregate_cap = "75000.00"

[[benefit]]
code = "beyond"
visit_kinds = ["INPATIENT", "OUTPATIENT", "PHARMACY"]
covers = ["B_SELF_PAY", "OUT_OF_CATALOGUE"]
deductible = "500.00"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "0.40" }, { from = "2000", ratio = "0.60" }, { from = "6000", ratio = "0.80" }]
per_claim_cap = "1200.00"
annual_cap = "3000.00"
"#;

const PRODUCTS: [(&str, &str); 2] = [("tight-cap", TIGHT_CAP), ("tight-layer", TIGHT_LAYER)];
const START: &str = "2024-01-01";

fn member_id(i: usize) -> String {
    format!("TM{i:02}")
}

/// Category changes of member `i`: DIBAO, DESTITUTE or DIBAO_MARGINAL all year, or DIBAO that
/// becomes DESTITUTE on 2024-07-01 (caps only grow with that change).
fn categories(i: usize) -> Vec<(&'static str, Category)> {
    match i % 5 {
        0 | 1 => vec![(START, Category::Dibao)],
        2 => vec![(START, Category::Destitute)],
        3 => vec![(START, Category::DibaoMarginal)],
        _ => vec![(START, Category::Dibao), ("2024-07-01", Category::Destitute)],
    }
}

/// The amounts of [`random_claim`]'s medical claims.
const AMOUNTS: MedicalAmounts = MedicalAmounts {
    in_scope_inpatient: 20_000..=800_000,
    in_scope_other: 5_000..=400_000,
    basic_pct: 30..=70,
    critical: (Odds::OneIn(4), 0..=50),
    b_self_pay: (Odds::AllButOneIn(3), 1_000..=150_000),
    out_of_catalogue: (Odds::OneIn(2), 1_000..=600_000),
    non_compliant: (Odds::OneIn(5), 100..=50_000),
};

fn random_claim(rng: &mut XorShift, id: &str, member: &str) -> ClaimRequest {
    let hospital = *rng.pick(&["H1", "H2", "H3"]);
    let date = date_in(rng, 2024);
    let roll = rng.below(100);
    if roll >= 95 {
        // No benefit of either product matches a non-medical loss.
        let loss = fen_text(rng.between(10_000, 500_000));
        return claim(
            hospital,
            id,
            member,
            &date,
            "NON_MEDICAL",
            "DISASTER",
            &[("OTHER_LOSS", &loss)],
            &[],
        );
    }
    medical_claim(rng, hospital, id, member, &date, roll, &AMOUNTS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_streams_on_shared_members_keep_every_cap_and_equal_a_serial_replay() {
    let app = spawn_app().await;

    let mut terms_client = app.terms().await;
    for (code, text) in PRODUCTS {
        let applied = terms_client
            .apply_terms(TermsText { toml: text.into() })
            .await
            .expect("terms apply")
            .into_inner();
        assert_eq!(applied.product_code, code);
        assert_eq!(applied.version, 1);
        assert_eq!(applied.outcome, ApplyOutcome::NewPeriod as i32);
    }
    let terms: HashMap<&str, Terms> = PRODUCTS
        .iter()
        .map(|(code, text)| (*code, Terms::from_toml(text).expect("terms parse")))
        .collect();

    // Members: a roster over one Enroll stream, and the same members for the engine.
    let mut rows = Vec::new();
    let mut members: HashMap<String, Member> = HashMap::new();
    for i in 0..MEMBERS {
        let id = member_id(i);
        let cats = categories(i);
        rows.push(row(&id, cats[0].1.as_str(), cats[0].0, "tight-cap", START));
        rows.push(row(&id, "", "", "tight-layer", START));
        for (date, category) in &cats[1..] {
            rows.push(row(&id, category.as_str(), date, "", ""));
        }
        members.insert(
            id.clone(),
            member(&id, &cats, &[("tight-cap", START), ("tight-layer", START)], "100.00"),
        );
    }
    let summary = enroll(&app, rows).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.enrollments, 2 * MEMBERS as u64);

    // Claims: 40-60 per stream, random members among the same 50, distinct claim ids.
    let mut streams: Vec<Vec<ClaimRequest>> = Vec::new();
    let mut requests: HashMap<(String, String), ClaimRequest> = HashMap::new();
    let mut stream_of: HashMap<(String, String), usize> = HashMap::new();
    for s in 0..STREAMS {
        let mut rng = XorShift::new(0x5eed_2024_0000 + s as u64 * 7919);
        let n = rng.between(40, 60) as usize;
        let claims: Vec<ClaimRequest> = (0..n)
            .map(|i| {
                let m = member_id(rng.below(MEMBERS as u64) as usize);
                random_claim(&mut rng, &format!("T{s:02}-{i:03}"), &m)
            })
            .collect();
        for c in &claims {
            assert!(
                requests.insert(key_of(c), c.clone()).is_none(),
                "claim ids are distinct"
            );
            stream_of.insert(key_of(c), s);
        }
        streams.push(claims);
    }
    let total: usize = streams.iter().map(Vec::len).sum();

    // 16 streams, each on its own connection, released together. Each sends its claims in bursts
    // of 1-8 with pauses of 0-2 ms, so that the streams overlap for the whole run and the writer's
    // batches mix them, rather than one stream's claims filling a batch alone.
    let barrier = Arc::new(tokio::sync::Barrier::new(STREAMS));
    let mut tasks = Vec::new();
    for (s, claims) in streams.iter().enumerate() {
        let mut client = app.settlements().await;
        let claims = claims.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            barrier.wait().await;
            let sender = tokio::spawn(send_in_bursts(XorShift::new(0xb0a7 + s as u64), claims, tx));
            let mut replies = client
                .settle(ReceiverStream::new(rx))
                .await
                .expect("settle stream opens")
                .into_inner();
            let mut out = Vec::new();
            while let Some(reply) = replies.message().await.expect("reply stream") {
                out.push(reply);
            }
            sender.await.expect("sender");
            out
        }));
    }
    let started = Instant::now();
    let mut replies: Vec<Vec<SettlementReply>> = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("stream task"));
    }
    let elapsed = started.elapsed();

    // (c) Every stream: one reply per request, in request order, each a new settlement; claims of
    // one member in one stream committed in stream order.
    let mut reply_by_key: HashMap<(String, String), StoredSettlement> = HashMap::new();
    for (s, (claims, got)) in streams.iter().zip(&replies).enumerate() {
        assert_eq!(got.len(), claims.len(), "stream {s}: one reply per request");
        let mut last_seq_of_member: HashMap<&str, u64> = HashMap::new();
        for (request, reply) in claims.iter().zip(got) {
            assert_eq!(reply.claim_id, request.claim_id, "stream {s}: replies in request order");
            assert!(!reply.replay, "{}: a first submission is no replay", request.claim_id);
            let stored = settlement_of(reply);
            let b = body(stored);
            assert_eq!(
                (b.claim_id.as_str(), b.hospital_id.as_str(), b.member_id.as_str()),
                (
                    request.claim_id.as_str(),
                    request.hospital_id.as_str(),
                    request.member_id.as_str()
                )
            );
            let last = last_seq_of_member.entry(request.member_id.as_str()).or_default();
            assert!(
                stored.sequence > *last,
                "stream {s}: claim {} of member {} committed at {} before an earlier claim of the stream ({})",
                request.claim_id,
                request.member_id,
                stored.sequence,
                last
            );
            *last = stored.sequence;
            reply_by_key.insert(key_of(request), stored.clone());
        }
    }

    // Every settlement in force, in commit order: exactly the acknowledged ones, as acknowledged.
    let exported = export_all(app.channel().await).await;
    assert_eq!(exported.len(), total, "one stored settlement per claim");
    for s in &exported {
        let b = body(s);
        let key = (b.hospital_id.clone(), b.claim_id.clone());
        let replied = reply_by_key
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} stored but not acknowledged"));
        assert_eq!(s, replied, "{key:?}: stored settlement differs from its reply");
    }
    let switches = exported
        .windows(2)
        .filter(|w| {
            let k = |s: &StoredSettlement| (body(s).hospital_id.clone(), body(s).claim_id.clone());
            stream_of[&k(&w[0])] != stream_of[&k(&w[1])]
        })
        .count();
    assert!(
        switches > 2 * STREAMS,
        "only {switches} changes of stream in commit order: the streams did not overlap, nothing was tested"
    );

    // (a) No cap exceeded, checked as the settlements committed, one after another.
    let mut benefit_paid: HashMap<(String, String, String), Decimal> = HashMap::new();
    let mut product_paid: HashMap<(String, String), Decimal> = HashMap::new();
    let mut aggregate_paid: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut paid_claims: BTreeMap<String, u64> = BTreeMap::new();
    let mut reasons: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for s in &exported {
        let b = body(s);
        let category = category_of(b.category);
        let mut sum = Decimal::ZERO;
        for layer in &b.layers {
            let t = &terms[layer.product_code.as_str()];
            let payout = dec(&layer.payout);
            sum += payout;
            for r in &layer.reasons {
                *reasons.entry((layer.product_code.clone(), *r)).or_default() += 1;
            }
            if payout > Decimal::ZERO {
                *paid_claims.entry(layer.product_code.clone()).or_default() += 1;
            }
            let aggregate = aggregate_paid.entry(layer.product_code.clone()).or_default();
            *aggregate += payout;
            if let Some(cap) = t.product.aggregate_cap {
                assert!(
                    *aggregate <= cap.decimal(),
                    "{}: aggregate cap exceeded",
                    layer.product_code
                );
            }
            let member_total = product_paid
                .entry((b.member_id.clone(), layer.product_code.clone()))
                .or_default();
            *member_total += payout;
            if let Some(cap) = t.product.annual_cap {
                assert!(
                    *member_total <= cap.decimal(),
                    "{} in {}: product annual cap exceeded at sequence {}",
                    b.member_id,
                    layer.product_code,
                    s.sequence
                );
            }
            if layer.benefit_code.is_empty() {
                assert_eq!(payout, Decimal::ZERO, "a layer without a benefit pays nothing");
                continue;
            }
            let benefit = t
                .benefits
                .iter()
                .find(|x| x.code.as_str() == layer.benefit_code)
                .expect("benefit of the terms");
            let rule = benefit.rule_for(category);
            if let Some(cap) = rule.per_claim_cap {
                assert!(
                    payout <= cap.decimal(),
                    "sequence {}: per-claim cap exceeded",
                    s.sequence
                );
            }
            let used = benefit_paid
                .entry((
                    b.member_id.clone(),
                    layer.product_code.clone(),
                    layer.benefit_code.clone(),
                ))
                .or_default();
            // The cap is the one of the category on the service date; a member whose category
            // changed may have used more than a lower cap before (claims do not come in date
            // order), and then has no room: payout <= max(0, cap - paid before).
            if let Some(cap) = rule.annual_cap {
                assert!(
                    payout <= (cap.decimal() - *used).max(Decimal::ZERO),
                    "{} {}/{}: benefit annual cap {cap} exceeded at sequence {}: paid {} before, {payout} now",
                    b.member_id,
                    layer.product_code,
                    layer.benefit_code,
                    s.sequence,
                    used
                );
            }
            *used += payout;
            let largest = t
                .product
                .eligible_categories
                .iter()
                .filter_map(|c| benefit.rule_for(*c).annual_cap)
                .max();
            if let Some(cap) = largest {
                assert!(
                    *used <= cap.decimal(),
                    "{}: above every benefit annual cap",
                    b.member_id
                );
            }
        }
        assert_eq!(dec(&b.payout_total), sum, "payout total = sum of the layers");
        assert_eq!(
            dec(&b.total_cost),
            dec(&b.upstream_total) + sum + dec(&b.out_of_pocket),
            "total cost = upstream + payouts + out of pocket"
        );
    }
    // The caps are tight: each of them cut some payout, and the aggregate cap is used up exactly.
    for reason in [
        "CAP_PER_CLAIM",
        "CAP_BENEFIT_ANNUAL",
        "CAP_PRODUCT_ANNUAL",
        "CAP_AGGREGATE",
    ] {
        let r = reason_value(reason).expect("reason");
        assert!(
            reasons.get(&("tight-cap".to_owned(), r)).copied().unwrap_or_default() > 0,
            "no tight-cap payout was cut by {reason}: the caps are not tight enough to test anything"
        );
    }
    assert_eq!(aggregate_paid["tight-cap"], dec("240000.00"), "the aggregate cap binds");

    // (b) Replay in commit order through the engine.
    let catalogue = catalogue_with(&[TIGHT_CAP, TIGHT_LAYER]);
    let acc = replay(&catalogue, &members, &requests, &exported);

    // The running figures equal the replay's accumulators.
    let mut member_client = app.members().await;
    for i in 0..MEMBERS {
        let id = member_id(i);
        let view = member_client
            .get_member(GetMemberRequest {
                member_id: id.clone(),
                as_of: "2024-12-31".into(),
            })
            .await
            .expect("get member")
            .into_inner();
        let mid = MemberId::parse(&id).expect("member id");
        assert_eq!(view.enrollments.len(), 2, "{id}: two enrollments");
        for e in &view.enrollments {
            let key = period(&e.product_code, &e.period_start);
            assert_eq!(e.paid, format_money(acc.member_paid(&mid, &key)), "{id} {key}: paid");
            let from_replies = product_paid
                .get(&(id.clone(), e.product_code.clone()))
                .copied()
                .unwrap_or_default();
            assert_eq!(dec(&e.paid), from_replies, "{id} {key}: paid = sum of its payouts");
            let aggregate = e
                .caps
                .iter()
                .find(|c| c.cap == "aggregate")
                .expect("aggregate cap room");
            assert_eq!(
                aggregate.used,
                format_money(acc.aggregate_paid(&key)),
                "{key}: aggregate used"
            );
            for usage in &e.benefits {
                let benefit = BenefitCode::parse(&usage.benefit_code).expect("benefit code");
                let expected = acc.benefit_usage(&mid, &key, &benefit);
                assert_eq!(
                    (
                        usage.deductible_used.as_str(),
                        usage.band_position.as_str(),
                        usage.paid.as_str()
                    ),
                    (
                        format_money(expected.deductible_used).as_str(),
                        format_money(expected.band_position).as_str(),
                        format_money(expected.paid).as_str()
                    ),
                    "{id} {key} {benefit}: (deductible used, band position, paid)"
                );
            }
        }
    }
    let mut reports = app.reports().await;
    for (code, _) in PRODUCTS {
        let ratios = reports
            .get_loss_ratio(LossRatioRequest {
                product_code: code.into(),
                period_start: START.into(),
                ..Default::default()
            })
            .await
            .expect("loss ratio")
            .into_inner()
            .ratios;
        assert_eq!(ratios.len(), 1, "{code}: one period");
        let lr = &ratios[0];
        assert_eq!(
            lr.paid,
            format_money(acc.aggregate_paid(&period(code, START))),
            "{code}: paid"
        );
        assert_eq!(
            dec(&lr.paid),
            aggregate_paid[code],
            "{code}: paid = sum of the layer payouts"
        );
        assert_eq!(
            lr.paid_claims,
            paid_claims.get(code).copied().unwrap_or_default(),
            "{code}: paid claims"
        );
        assert_eq!(lr.enrolled_members, MEMBERS as u64, "{code}: members");
    }

    // The tables agree with themselves too.
    let stored = check_db(&app.database_url, 2).await;
    assert_eq!(stored.len(), total);

    let aggregate_reason = reason_value("CAP_AGGREGATE").expect("reason");
    let aggregate_reached = exported
        .iter()
        .position(|s| {
            body(s)
                .layers
                .iter()
                .any(|l| l.product_code == "tight-cap" && l.reasons.contains(&aggregate_reason))
        })
        .unwrap_or(total);
    let cut = |code: &str, reason: &str| {
        reasons
            .get(&(code.to_owned(), reason_value(reason).expect("reason")))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "concurrency: {total} claims over {STREAMS} streams for {MEMBERS} members settled in {:.2?} \
         ({:.0} claims/s); {switches} stream switches in commit order; tight-cap paid {} \
         (aggregate cap reached at commit #{aggregate_reached}; cuts: per-claim {}, benefit {}, product {}, aggregate {}); tight-layer paid {} \
         (cuts: per-claim {}, benefit {}, product {}, aggregate {}; not designated {}, not eligible {})",
        elapsed,
        total as f64 / elapsed.as_secs_f64(),
        aggregate_paid["tight-cap"],
        cut("tight-cap", "CAP_PER_CLAIM"),
        cut("tight-cap", "CAP_BENEFIT_ANNUAL"),
        cut("tight-cap", "CAP_PRODUCT_ANNUAL"),
        cut("tight-cap", "CAP_AGGREGATE"),
        aggregate_paid["tight-layer"],
        cut("tight-layer", "CAP_PER_CLAIM"),
        cut("tight-layer", "CAP_BENEFIT_ANNUAL"),
        cut("tight-layer", "CAP_PRODUCT_ANNUAL"),
        cut("tight-layer", "CAP_AGGREGATE"),
        cut("tight-layer", "FACILITY_NOT_DESIGNATED"),
        cut("tight-layer", "CATEGORY_NOT_ELIGIBLE"),
    );
    app.stop().await;
}

//! Property tests of the engine: the invariants of ADJUDICATION.md over random terms, members and
//! claim sequences.
//!
//! Scenarios are generated as plain specs (`Scenario`), turned into terms TOML (parsed with
//! `Terms::from_toml`, so the parser is exercised too), members and claim drafts (parsed with
//! `Claim::parse`), then settled one claim at a time, applying each settlement's changes as the
//! ledger does. Several members share one catalogue so that aggregate caps bind across members.
//!
//! Test code may panic: a panic is a failed test (and a generator that builds invalid input is a bug
//! of this file, reported as such).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use proptest::sample::{subsequence, Index};
use proptest::test_runner::TestCaseError;
use rust_decimal::Decimal;
use time::{Date, Duration, Month};

use crate::domain::settle::banded_amount;
use crate::domain::terms::Band;
use crate::domain::{
    format_date, format_money, round_fen, settle, AccumulatorView, Accumulators, BenefitCode, Catalogue, Category,
    Cause, Claim, ClaimDraft, DeductibleBasis, ExpenseClass, LineDraft, Member, MemberId, Money, OutpatientKind,
    PeriodKey, ProductKind, Ratio, Reason, Settlement, Terms, UpstreamDraft, VisitKind,
};

// ---------------------------------------------------------------------------------------------
// Specs: what the strategies generate. Amounts are whole fen, ratios basis points (1/10000).
// ---------------------------------------------------------------------------------------------

/// The categories members and products draw from: small, so that eligibility matches often.
const POOL: [Category; 5] = [
    Category::Destitute,
    Category::Dibao,
    Category::AtRisk,
    Category::General,
    Category::Orphan,
];
const HOSPITALS: [&str; 4] = ["H1", "H2", "H3", "H4"];
const MEDICAL_CAUSES: [Cause; 3] = [Cause::Illness, Cause::Accident, Cause::Disaster];
const MEDICAL_CLASSES: [ExpenseClass; 4] = [
    ExpenseClass::InScope,
    ExpenseClass::BSelfPay,
    ExpenseClass::OutOfCatalogue,
    ExpenseClass::NonCompliant,
];
const NON_MEDICAL_CLASSES: [ExpenseClass; 2] = [ExpenseClass::OtherLoss, ExpenseClass::NonCompliant];
/// Products a member may be enrolled in, at most.
const PRODUCTS_MAX: usize = 4;

/// (from in fen, ratio in basis points).
type BandsSpec = Vec<(i64, i64)>;

#[derive(Debug, Clone)]
struct OverrideSpec {
    /// Picks a category among the product's eligible ones.
    category: Index,
    deductible: Option<i64>,
    bands: Option<BandsSpec>,
    per_claim_cap: Option<i64>,
    annual_cap: Option<i64>,
}

#[derive(Debug, Clone)]
struct BenefitSpec {
    visit_kinds: Vec<VisitKind>,
    outpatient_kinds: Option<Vec<OutpatientKind>>,
    causes: Option<Vec<Cause>>,
    covers: Vec<ExpenseClass>,
    /// `None`: left out of the file (default 0).
    deductible: Option<i64>,
    /// `None`: left out of the file (default YEAR).
    basis: Option<DeductibleBasis>,
    bands: BandsSpec,
    per_claim_cap: Option<i64>,
    annual_cap: Option<i64>,
    overrides: Vec<OverrideSpec>,
}

#[derive(Debug, Clone)]
struct ProductSpec {
    kind: ProductKind,
    layer_order: i64,
    /// Days after 2022-01-01.
    start_offset: i64,
    /// Days before 2022-12-31.
    end_offset: i64,
    premium: i64,
    eligible: Vec<Category>,
    designated: Option<Vec<&'static str>>,
    annual_cap: Option<i64>,
    aggregate_cap: Option<i64>,
    benefits: Vec<BenefitSpec>,
}

#[derive(Debug, Clone)]
struct MemberSpec {
    /// Enrolled in product i when `enrolled[i]` (and product i exists).
    enrolled: Vec<bool>,
    /// Own premium instead of the product's.
    premium: Option<i64>,
    /// (days after 2022-01-01, category), in the order they are recorded.
    categories: Vec<(i64, Category)>,
}

#[derive(Debug, Clone)]
struct LineSpec {
    class: usize,
    fen: i64,
    code: u8,
}

#[derive(Debug, Clone)]
struct ClaimSpec {
    member: Index,
    hospital: usize,
    /// Days after 2022-01-01.
    day: i64,
    visit: VisitKind,
    outpatient: Option<OutpatientKind>,
    cause: Option<usize>,
    lines: Vec<LineSpec>,
    /// Share of IN_SCOPE paid by BASIC, then share of the rest paid by CRITICAL_ILLNESS, in basis
    /// points (10000 = all of it, the boundary the validation allows).
    basic: Option<i64>,
    critical: Option<i64>,
    upstream_critical_first: bool,
}

#[derive(Debug, Clone)]
struct Scenario {
    products: Vec<ProductSpec>,
    members: Vec<MemberSpec>,
    claims: Vec<ClaimSpec>,
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn ratio_bp() -> impl Strategy<Value = i64> {
    prop_oneof![(0i64..=20).prop_map(|x| x * 500), 0i64..=10_000]
}

/// 1-4 bands starting at 0, strictly increasing.
fn bands() -> impl Strategy<Value = BandsSpec> {
    (
        ratio_bp(),
        prop::collection::vec((prop_oneof![1i64..=100_000, 1i64..=5_000_000], ratio_bp()), 0..=3),
    )
        .prop_map(|(first, rest)| {
            let mut from = 0;
            let mut bands = vec![(0, first)];
            for (step, ratio) in rest {
                from += step;
                bands.push((from, ratio));
            }
            bands
        })
}

/// Caps from 0.00 up, often small so that they bind.
fn cap() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 0i64..=100_000, 0i64..=2_000_000, 0i64..=50_000_000]
}

fn opt_cap() -> impl Strategy<Value = Option<i64>> {
    prop::option::of(cap())
}

/// Deductibles 0..20000.00.
fn deductible() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 0i64..=100_000, 0i64..=2_000_000]
}

fn override_spec() -> impl Strategy<Value = OverrideSpec> {
    (
        any::<Index>(),
        prop::option::of(deductible()),
        prop::option::of(bands()),
        opt_cap(),
        opt_cap(),
    )
        .prop_map(
            |(category, deductible, bands, per_claim_cap, annual_cap)| OverrideSpec {
                category,
                deductible,
                bands,
                per_claim_cap,
                annual_cap,
            },
        )
}

fn benefit_spec() -> impl Strategy<Value = BenefitSpec> {
    (
        prop_oneof![
            Just(VisitKind::ALL.to_vec()),
            subsequence(VisitKind::ALL, 1..=VisitKind::ALL.len())
        ],
        prop::option::of(subsequence(OutpatientKind::ALL, 1..=OutpatientKind::ALL.len())),
        prop::option::of(subsequence(Cause::ALL, 1..=Cause::ALL.len())),
        subsequence(ExpenseClass::COVERABLE.to_vec(), 1..=ExpenseClass::COVERABLE.len()),
        prop::option::of(deductible()),
        prop::option::of(prop_oneof![Just(DeductibleBasis::Year), Just(DeductibleBasis::Claim)]),
        bands(),
        opt_cap(),
        opt_cap(),
        prop::collection::vec(override_spec(), 0..=2),
    )
        .prop_map(
            |(
                visit_kinds,
                outpatient_kinds,
                causes,
                covers,
                deductible,
                basis,
                bands,
                per_claim_cap,
                annual_cap,
                overrides,
            )| {
                BenefitSpec {
                    visit_kinds,
                    outpatient_kinds,
                    causes,
                    covers,
                    deductible,
                    basis,
                    bands,
                    per_claim_cap,
                    annual_cap,
                    overrides,
                }
            },
        )
}

fn product_spec() -> impl Strategy<Value = ProductSpec> {
    (
        prop::sample::select(ProductKind::ALL),
        0i64..=4,
        prop_oneof![Just(0i64), 0i64..=40],
        prop_oneof![Just(0i64), 0i64..=40],
        0i64..=100_000,
        prop_oneof![Just(POOL.to_vec()), subsequence(POOL.to_vec(), 1..=POOL.len())],
        prop::option::weighted(0.25, subsequence(HOSPITALS[..3].to_vec(), 1..=3)),
        opt_cap(),
        opt_cap(),
        prop::collection::vec(benefit_spec(), 1..=3),
    )
        .prop_map(
            |(
                kind,
                layer_order,
                start_offset,
                end_offset,
                premium,
                eligible,
                designated,
                annual_cap,
                aggregate_cap,
                benefits,
            )| {
                ProductSpec {
                    kind,
                    layer_order,
                    start_offset,
                    end_offset,
                    premium,
                    eligible,
                    designated,
                    annual_cap,
                    aggregate_cap,
                    benefits,
                }
            },
        )
}

fn member_spec() -> impl Strategy<Value = MemberSpec> {
    (
        prop::collection::vec(prop::bool::weighted(0.8), PRODUCTS_MAX),
        prop::option::of(0i64..=100_000),
        prop::collection::vec(
            (
                prop_oneof![Just(-10i64), -30i64..365],
                prop::sample::select(POOL.to_vec()),
            ),
            1..=3,
        ),
    )
        .prop_map(|(enrolled, premium, categories)| MemberSpec {
            enrolled,
            premium,
            categories,
        })
}

/// Line amounts 0..200000.00, often small.
fn line_fen() -> impl Strategy<Value = i64> {
    prop_oneof![1 => Just(0i64), 3 => 0i64..=100_000, 3 => 0i64..=2_000_000, 3 => 0i64..=20_000_000]
}

fn share_bp() -> impl Strategy<Value = i64> {
    prop_oneof![Just(10_000i64), 0i64..=10_000]
}

fn claim_spec() -> impl Strategy<Value = ClaimSpec> {
    (
        any::<Index>(),
        prop_oneof![Just(0usize), 0usize..HOSPITALS.len()],
        0i64..365,
        prop::sample::select(VisitKind::ALL),
        prop::option::of(prop::sample::select(OutpatientKind::ALL)),
        prop::option::of(0usize..12),
        prop::collection::vec(
            (0usize..12, line_fen(), 0u8..8).prop_map(|(class, fen, code)| LineSpec { class, fen, code }),
            1..=6,
        ),
        prop::option::of(share_bp()),
        prop::option::of(share_bp()),
        any::<bool>(),
    )
        .prop_map(
            |(member, hospital, day, visit, outpatient, cause, lines, basic, critical, upstream_critical_first)| {
                ClaimSpec {
                    member,
                    hospital,
                    day,
                    visit,
                    outpatient,
                    cause,
                    lines,
                    basic,
                    critical,
                    upstream_critical_first,
                }
            },
        )
}

fn scenario_with(claims: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(product_spec(), 1..=PRODUCTS_MAX),
        prop::collection::vec(member_spec(), 1..=3),
        prop::collection::vec(claim_spec(), claims),
    )
        .prop_map(|(products, members, claims)| Scenario {
            products,
            members,
            claims,
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    scenario_with(1..=20)
}

// ---------------------------------------------------------------------------------------------
// Building terms, members and claims from specs
// ---------------------------------------------------------------------------------------------

fn year_start() -> Date {
    Date::from_calendar_date(2022, Month::January, 1).unwrap()
}

fn year_end() -> Date {
    Date::from_calendar_date(2022, Month::December, 31).unwrap()
}

fn fen(fen: i64) -> Decimal {
    Decimal::new(fen, 2)
}

fn money_text(amount: i64) -> String {
    format_money(fen(amount))
}

fn ratio_text(bp: i64) -> String {
    Decimal::new(bp, 4).normalize().to_string()
}

fn quoted_list<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

fn bands_text(bands: &BandsSpec) -> String {
    let items: Vec<String> = bands
        .iter()
        .map(|(from, ratio)| {
            format!(
                "{{ from = \"{}\", ratio = \"{}\" }}",
                money_text(*from),
                ratio_text(*ratio)
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The categories of a benefit's overrides: the first override of each category wins, as only one
/// key per category may appear in the file.
fn overrides_by_category<'s>(p: &ProductSpec, b: &'s BenefitSpec) -> BTreeMap<Category, &'s OverrideSpec> {
    let mut map = BTreeMap::new();
    for o in &b.overrides {
        map.entry(p.eligible[o.category.index(p.eligible.len())]).or_insert(o);
    }
    map
}

fn terms_toml(i: usize, p: &ProductSpec) -> String {
    let mut t: Vec<String> = Vec::new();
    t.push("[product]".into());
    t.push(format!("code = \"p{i}\""));
    t.push(format!("kind = \"{}\"", p.kind));
    t.push(format!("layer_order = {}", p.layer_order));
    t.push(format!(
        "period_start = \"{}\"",
        format_date(year_start() + Duration::days(p.start_offset))
    ));
    t.push(format!(
        "period_end = \"{}\"",
        format_date(year_end() - Duration::days(p.end_offset))
    ));
    t.push(format!("premium_per_member = \"{}\"", money_text(p.premium)));
    t.push(format!("eligible_categories = {}", quoted_list(&p.eligible)));
    if let Some(h) = &p.designated {
        t.push(format!("designated_hospitals = {}", quoted_list(h)));
    }
    if let Some(c) = p.annual_cap {
        t.push(format!("annual_cap = \"{}\"", money_text(c)));
    }
    if let Some(c) = p.aggregate_cap {
        t.push(format!("aggregate_cap = \"{}\"", money_text(c)));
    }
    for (j, b) in p.benefits.iter().enumerate() {
        t.push(String::new());
        t.push("[[benefit]]".into());
        t.push(format!("code = \"b{j}\""));
        t.push(format!("visit_kinds = {}", quoted_list(&b.visit_kinds)));
        if let Some(k) = &b.outpatient_kinds {
            t.push(format!("outpatient_kinds = {}", quoted_list(k)));
        }
        if let Some(c) = &b.causes {
            t.push(format!("causes = {}", quoted_list(c)));
        }
        t.push(format!("covers = {}", quoted_list(&b.covers)));
        if let Some(d) = b.deductible {
            t.push(format!("deductible = \"{}\"", money_text(d)));
        }
        if let Some(basis) = b.basis {
            t.push(format!("deductible_basis = \"{basis}\""));
        }
        t.push(format!("bands = {}", bands_text(&b.bands)));
        if let Some(c) = b.per_claim_cap {
            t.push(format!("per_claim_cap = \"{}\"", money_text(c)));
        }
        if let Some(c) = b.annual_cap {
            t.push(format!("annual_cap = \"{}\"", money_text(c)));
        }
        for (category, o) in overrides_by_category(p, b) {
            let mut fields = Vec::new();
            if let Some(d) = o.deductible {
                fields.push(format!("deductible = \"{}\"", money_text(d)));
            }
            if let Some(bands) = &o.bands {
                fields.push(format!("bands = {}", bands_text(bands)));
            }
            if let Some(c) = o.per_claim_cap {
                fields.push(format!("per_claim_cap = \"{}\"", money_text(c)));
            }
            if let Some(c) = o.annual_cap {
                fields.push(format!("annual_cap = \"{}\"", money_text(c)));
            }
            t.push(format!("by_category.{category} = {{ {} }}", fields.join(", ")));
        }
    }
    t.push(String::new());
    t.join("\n")
}

/// Everything a run needs, built from a scenario.
#[derive(Debug, Clone)]
struct World {
    catalogue: Catalogue,
    terms: Vec<Terms>,
    members: Vec<Member>,
    drafts: Vec<ClaimDraft>,
    claims: Vec<Claim>,
    /// Index into `members` of each claim's member.
    claim_member: Vec<usize>,
}

fn claim_draft(i: usize, c: &ClaimSpec, member_count: usize) -> (ClaimDraft, usize) {
    let member = c.member.index(member_count);
    let non_medical = c.visit == VisitKind::NonMedical;
    let classes: &[ExpenseClass] = if non_medical {
        &NON_MEDICAL_CLASSES
    } else {
        &MEDICAL_CLASSES
    };
    let lines: Vec<(ExpenseClass, &LineSpec)> = c.lines.iter().map(|l| (classes[l.class % classes.len()], l)).collect();
    let in_scope: i64 = lines
        .iter()
        .filter(|(class, _)| *class == ExpenseClass::InScope)
        .map(|(_, l)| l.fen)
        .sum();
    let mut upstream = Vec::new();
    if !non_medical {
        let basic = c.basic.map(|bp| in_scope * bp / 10_000);
        let critical = c.critical.map(|bp| (in_scope - basic.unwrap_or(0)) * bp / 10_000);
        if let Some(b) = basic {
            upstream.push(UpstreamDraft {
                kind: "BASIC".into(),
                amount: money_text(b),
            });
        }
        if let Some(b) = critical {
            upstream.push(UpstreamDraft {
                kind: "CRITICAL_ILLNESS".into(),
                amount: money_text(b),
            });
        }
        if c.upstream_critical_first {
            upstream.reverse();
        }
    }
    let cause = match c.cause {
        None => String::new(),
        Some(s) if non_medical => Cause::ALL[s % Cause::ALL.len()].to_string(),
        Some(s) => MEDICAL_CAUSES[s % MEDICAL_CAUSES.len()].to_string(),
    };
    let outpatient_kind = match (c.visit, c.outpatient) {
        (VisitKind::Outpatient, Some(k)) => k.to_string(),
        _ => String::new(),
    };
    let draft = ClaimDraft {
        claim_id: format!("C{i}"),
        hospital_id: HOSPITALS[c.hospital].into(),
        member_id: format!("M{member}"),
        service_date: format_date(year_start() + Duration::days(c.day)),
        visit_kind: c.visit.to_string(),
        outpatient_kind,
        cause,
        lines: lines
            .iter()
            .map(|(class, l)| LineDraft {
                code: format!("L{}", l.code),
                expense_class: class.to_string(),
                amount: money_text(l.fen),
            })
            .collect(),
        upstream,
    };
    (draft, member)
}

fn build(s: &Scenario) -> World {
    let mut catalogue = Catalogue::new();
    let mut terms = Vec::new();
    for (i, p) in s.products.iter().enumerate() {
        let text = terms_toml(i, p);
        let t = Terms::from_toml(&text).unwrap_or_else(|e| panic!("generated terms refused: {e}\n{text}"));
        catalogue
            .apply(t.clone())
            .unwrap_or_else(|e| panic!("generated terms refused by the catalogue: {e}"));
        terms.push(t);
    }
    let members = s
        .members
        .iter()
        .enumerate()
        .map(|(k, m)| {
            let mut member = Member::new(MemberId::parse(&format!("M{k}")).unwrap());
            for (day, category) in &m.categories {
                member.categories.set(year_start() + Duration::days(*day), *category);
            }
            for (t, enrolled) in terms.iter().zip(&m.enrolled) {
                if *enrolled {
                    let premium = m
                        .premium
                        .map(|p| Money::from_fen(p).unwrap())
                        .unwrap_or(t.product.premium_per_member);
                    member.enrollments.insert(t.key(), premium);
                }
            }
            member
        })
        .collect::<Vec<_>>();
    let mut drafts = Vec::new();
    let mut claims = Vec::new();
    let mut claim_member = Vec::new();
    for (i, c) in s.claims.iter().enumerate() {
        let (draft, member) = claim_draft(i, c, members.len());
        let claim = Claim::parse(&draft).unwrap_or_else(|e| panic!("generated claim refused: {e}\n{draft:?}"));
        drafts.push(draft);
        claims.push(claim);
        claim_member.push(member);
    }
    World {
        catalogue,
        terms,
        members,
        drafts,
        claims,
        claim_member,
    }
}

/// One step of a run: the settlement, the accumulators before it and after its changes.
struct Step<'a> {
    index: usize,
    settlement: &'a Settlement,
    before: &'a Accumulators,
    after: &'a Accumulators,
}

/// Settles every claim in order, applying each settlement, and calls `check` after each.
fn run(
    world: &World,
    mut check: impl FnMut(Step<'_>) -> Result<(), TestCaseError>,
) -> Result<(Vec<Settlement>, Accumulators), TestCaseError> {
    let mut acc = Accumulators::new();
    let mut settlements = Vec::new();
    for (index, claim) in world.claims.iter().enumerate() {
        let member = &world.members[world.claim_member[index]];
        let settlement = settle(&world.catalogue, member, claim, &acc);
        let before = acc.clone();
        acc.apply(&settlement.changes);
        check(Step {
            index,
            settlement: &settlement,
            before: &before,
            after: &acc,
        })?;
        settlements.push(settlement);
    }
    Ok((settlements, acc))
}

fn settle_all(world: &World) -> (Vec<Settlement>, Accumulators) {
    run(world, |_| Ok(())).unwrap()
}

fn terms_of<'w>(world: &'w World, key: &PeriodKey) -> &'w Terms {
    &world.catalogue.get(key).unwrap().terms
}

fn class_total(claim: &Claim, class: ExpenseClass) -> Decimal {
    claim
        .lines
        .iter()
        .filter(|l| l.class == class)
        .map(|l| l.amount.decimal())
        .sum()
}

fn has_at_most_two_decimals(value: Decimal) -> bool {
    value.normalize().scale() <= 2
}

/// Shuffles in place with a small xorshift generator, so that the order is part of the case.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = usize::try_from(state % (i as u64 + 1)).unwrap();
        items.swap(i, j);
    }
}

// ---------------------------------------------------------------------------------------------
// A reference model: ADJUDICATION.md read again, in whole fen and integer arithmetic, straight from
// the specs (not from the parsed terms).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelLayer {
    product: String,
    benefit: Option<String>,
    eligible: i64,
    deductible: i64,
    payout: i64,
    reasons: Vec<Reason>,
}

#[derive(Debug, Default)]
struct Model {
    /// (member, product, benefit) → (deductible used, band position, paid).
    usage: HashMap<(usize, usize, usize), (i64, i64, i64)>,
    member_paid: HashMap<(usize, usize), i64>,
    aggregate: HashMap<usize, i64>,
}

struct ModelRule {
    deductible: i64,
    bands: BandsSpec,
    per_claim_cap: Option<i64>,
    annual_cap: Option<i64>,
}

fn model_category(m: &MemberSpec, day: i64) -> Category {
    let mut by_day: BTreeMap<i64, Category> = BTreeMap::new();
    for (d, c) in &m.categories {
        by_day.insert(*d, *c);
    }
    by_day
        .range(..=day)
        .next_back()
        .map(|(_, c)| *c)
        .unwrap_or(Category::General)
}

/// Banded payout in fen: each slice in fen times its ratio in basis points, summed, then rounded
/// half-up once.
fn model_banded(bands: &BandsSpec, position: i64, amount: i64) -> i64 {
    let end = position + amount;
    let mut units: i128 = 0;
    for (i, (from, ratio)) in bands.iter().enumerate() {
        let upto = bands.get(i + 1).map_or(i64::MAX, |b| b.0);
        let lo = position.max(*from);
        let hi = end.min(upto);
        if hi > lo {
            units += i128::from(hi - lo) * i128::from(*ratio);
        }
    }
    i64::try_from((units + 5_000) / 10_000).unwrap()
}

impl Model {
    fn settle(&mut self, s: &Scenario, world: &World, index: usize) -> (Vec<ModelLayer>, i64) {
        let c = &s.claims[index];
        let claim = &world.claims[index];
        let member_index = world.claim_member[index];
        let m = &s.members[member_index];
        let category = model_category(m, c.day);
        let outpatient = claim.outpatient_kind;
        let cause = claim.cause;
        let visit = c.visit;
        let hospital = HOSPITALS[c.hospital];

        let amount_of = |class: ExpenseClass| -> i64 {
            claim
                .lines
                .iter()
                .filter(|l| l.class == class)
                .map(|l| crate::domain::money::to_fen(l.amount.decimal()).unwrap())
                .sum()
        };
        let upstream: i64 = claim
            .upstream
            .iter()
            .map(|u| crate::domain::money::to_fen(u.amount.decimal()).unwrap())
            .sum();
        let mut burden: BTreeMap<ExpenseClass, i64> = ExpenseClass::COVERABLE
            .iter()
            .map(|class| (*class, amount_of(*class)))
            .collect();
        *burden.get_mut(&ExpenseClass::InScope).unwrap() -= upstream;

        let mut order: Vec<usize> = (0..s.products.len())
            .filter(|&p| m.enrolled.get(p).copied().unwrap_or(false))
            .filter(|&p| {
                let pr = &s.products[p];
                c.day >= pr.start_offset && c.day <= 364 - pr.end_offset
            })
            .collect();
        order.sort_by(|a, b| {
            (s.products[*a].layer_order, format!("p{a}")).cmp(&(s.products[*b].layer_order, format!("p{b}")))
        });

        let mut layers = Vec::new();
        for p in order {
            let pr = &s.products[p];
            let mut layer = ModelLayer {
                product: format!("p{p}"),
                benefit: None,
                eligible: 0,
                deductible: 0,
                payout: 0,
                reasons: Vec::new(),
            };
            if !pr.eligible.contains(&category) {
                layer.reasons.push(Reason::CategoryNotEligible);
                layers.push(layer);
                continue;
            }
            if pr.designated.as_ref().is_some_and(|h| !h.contains(&hospital)) {
                layer.reasons.push(Reason::FacilityNotDesignated);
                layers.push(layer);
                continue;
            }
            let found = pr.benefits.iter().enumerate().find(|(_, b)| {
                b.visit_kinds.contains(&visit)
                    && (visit != VisitKind::Outpatient
                        || b.outpatient_kinds.as_ref().is_none_or(|k| k.contains(&outpatient)))
                    && b.causes.as_ref().is_none_or(|k| k.contains(&cause))
            });
            let Some((bi, b)) = found else {
                layer.reasons.push(Reason::NoMatchingBenefit);
                layers.push(layer);
                continue;
            };
            layer.benefit = Some(format!("b{bi}"));
            let base = ModelRule {
                deductible: b.deductible.unwrap_or(0),
                bands: b.bands.clone(),
                per_claim_cap: b.per_claim_cap,
                annual_cap: b.annual_cap,
            };
            let rule = match overrides_by_category(pr, b).get(&category) {
                None => base,
                Some(o) => ModelRule {
                    deductible: o.deductible.unwrap_or(base.deductible),
                    bands: o.bands.clone().unwrap_or(base.bands),
                    per_claim_cap: o.per_claim_cap.or(base.per_claim_cap),
                    annual_cap: o.annual_cap.or(base.annual_cap),
                },
            };
            let (ded_used, position, paid) = self.usage.get(&(member_index, p, bi)).copied().unwrap_or_default();
            let eligible: i64 = b.covers.iter().map(|class| burden[class]).sum();
            let room = match b.basis.unwrap_or(DeductibleBasis::Year) {
                DeductibleBasis::Year => (rule.deductible - ded_used).max(0),
                DeductibleBasis::Claim => rule.deductible,
            };
            let deductible = eligible.min(room);
            let after = eligible - deductible;
            if deductible > 0 {
                layer.reasons.push(Reason::Deductible);
            }
            let banded = model_banded(&rule.bands, position, after);
            let member_paid = self.member_paid.get(&(member_index, p)).copied().unwrap_or(0);
            let aggregate = self.aggregate.get(&p).copied().unwrap_or(0);
            let rooms = [
                (Reason::CapPerClaim, rule.per_claim_cap),
                (Reason::CapBenefitAnnual, rule.annual_cap.map(|c| (c - paid).max(0))),
                (
                    Reason::CapProductAnnual,
                    pr.annual_cap.map(|c| (c - member_paid).max(0)),
                ),
                (Reason::CapAggregate, pr.aggregate_cap.map(|c| (c - aggregate).max(0))),
            ];
            let smallest = rooms.iter().filter_map(|(_, r)| *r).min();
            let payout = match smallest {
                Some(smallest) if banded > smallest => {
                    for (reason, r) in rooms {
                        if r == Some(smallest) {
                            layer.reasons.push(reason);
                        }
                    }
                    smallest
                }
                _ => banded,
            };
            let mut left = payout;
            for class in ExpenseClass::COVERABLE {
                if b.covers.contains(&class) {
                    let slot = burden.get_mut(&class).unwrap();
                    let take = left.min(*slot);
                    *slot -= take;
                    left -= take;
                }
            }
            assert_eq!(left, 0, "the model's payout exceeds the covered burden");
            let u = self.usage.entry((member_index, p, bi)).or_default();
            u.0 += deductible;
            u.1 += after;
            u.2 += payout;
            *self.member_paid.entry((member_index, p)).or_default() += payout;
            *self.aggregate.entry(p).or_default() += payout;
            layer.eligible = eligible;
            layer.deductible = deductible;
            layer.payout = payout;
            layers.push(layer);
        }
        let out_of_pocket = burden.values().sum::<i64>() + amount_of(ExpenseClass::NonCompliant);
        (layers, out_of_pocket)
    }
}

fn engine_layers(s: &Settlement) -> Vec<ModelLayer> {
    s.layers
        .iter()
        .map(|l| {
            let mut reasons = l.reasons.clone();
            reasons.sort();
            ModelLayer {
                product: l.product.to_string(),
                benefit: l.benefit.as_ref().map(BenefitCode::to_string),
                eligible: crate::domain::money::to_fen(l.eligible).unwrap(),
                deductible: crate::domain::money::to_fen(l.deductible_applied).unwrap(),
                payout: crate::domain::money::to_fen(l.payout).unwrap(),
                reasons,
            }
        })
        .collect()
}

/// `cases` per property, unless `PROPTEST_CASES` asks for another number (for a longer hunt).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Failing cases are printed, not written under proptest-regressions/.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Caps of a benefit's rule for the member's category: (per-claim cap, annual cap).
fn rule_caps(terms: &Terms, benefit: &BenefitCode, category: Category) -> (Option<Decimal>, Option<Decimal>) {
    let b = terms.benefits.iter().find(|b| &b.code == benefit).unwrap();
    let rule = b.rule_for(category);
    (
        rule.per_claim_cap.map(Money::decimal),
        rule.annual_cap.map(Money::decimal),
    )
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// 1. total cost = upstream + payouts + out of pocket, exactly; payout_total = sum of the layers.
    #[test]
    fn conservation(s in scenario()) {
        let world = build(&s);
        run(&world, |step| {
            let st = step.settlement;
            prop_assert_eq!(
                st.total_cost,
                st.upstream_total + st.payout_total + st.out_of_pocket,
                "claim {}: total != upstream + payout + out of pocket", step.index
            );
            let layers: Decimal = st.layers.iter().map(|l| l.payout).sum();
            prop_assert_eq!(st.payout_total, layers, "claim {}: payout_total != sum of layer payouts", step.index);
            let claim = &world.claims[step.index];
            prop_assert_eq!(st.total_cost, claim.total_cost(), "claim {}: total cost", step.index);
            prop_assert_eq!(st.upstream_total, claim.upstream_total(), "claim {}: upstream", step.index);
            prop_assert!(st.out_of_pocket >= class_total(claim, ExpenseClass::NonCompliant),
                "claim {}: out of pocket {} below NON_COMPLIANT", step.index, st.out_of_pocket);
            prop_assert_eq!(st.reasons.contains(&Reason::NotEnrolled), st.layers.is_empty(),
                "claim {}: NOT_ENROLLED iff no layer", step.index);
            Ok(())
        })?;
    }

    /// 2. Payouts within [0, eligible], at most two decimals, within every cap; accumulators never
    /// above a cap after any applied settlement.
    #[test]
    fn payouts_respect_caps(s in scenario()) {
        let world = build(&s);
        // (member, period, benefit) → the largest annual cap of the rules it was paid under
        // (None: some rule had no cap). A member's category may change within the period, and
        // with it the rule, so the bound on the accumulator is the loosest rule used.
        let mut annual_bound: HashMap<(MemberId, PeriodKey, BenefitCode), Option<Decimal>> = HashMap::new();
        run(&world, |step| {
            let st = step.settlement;
            for l in &st.layers {
                prop_assert!(l.payout >= Decimal::ZERO, "claim {}: {} pays {} < 0", step.index, l.product, l.payout);
                prop_assert!(l.payout <= l.eligible, "claim {}: {} pays {} above eligible {}",
                    step.index, l.product, l.payout, l.eligible);
                prop_assert!(has_at_most_two_decimals(l.payout), "claim {}: {} pays {}", step.index, l.product, l.payout);
                prop_assert!(l.deductible_applied >= Decimal::ZERO && l.deductible_applied <= l.eligible,
                    "claim {}: {} deductible {} outside [0, eligible {}]", step.index, l.product, l.deductible_applied, l.eligible);
                let Some(benefit) = &l.benefit else {
                    prop_assert!(l.payout.is_zero(), "claim {}: {} pays without a benefit", step.index, l.product);
                    continue;
                };
                let key = l.key();
                let (per_claim, annual) = rule_caps(terms_of(&world, &key), benefit, st.category);
                if let Some(cap) = per_claim {
                    prop_assert!(l.payout <= cap, "claim {}: {} pays {} above per_claim_cap {}",
                        step.index, l.product, l.payout, cap);
                }
                let paid = step.after.benefit_usage(&st.member_id, &key, benefit).paid;
                if let (Some(cap), true) = (annual, l.payout > Decimal::ZERO) {
                    prop_assert!(paid <= cap, "claim {}: {}/{} paid {} above its annual_cap {}",
                        step.index, l.product, benefit, paid, cap);
                }
                let bound = annual_bound.entry((st.member_id.clone(), key, benefit.clone())).or_insert(annual);
                *bound = match (*bound, annual) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            for (m, p, b, u) in step.after.benefit_entries() {
                prop_assert!(u.paid >= Decimal::ZERO && u.deductible_used >= Decimal::ZERO && u.band_position >= Decimal::ZERO,
                    "claim {}: negative usage {:?} for {:?} {} {}", step.index, u, m, p, b);
                if let Some(Some(cap)) = annual_bound.get(&(m.clone(), p.clone(), b.clone())) {
                    prop_assert!(u.paid <= *cap, "claim {}: {:?} {} {} paid {} above annual cap {}",
                        step.index, m, p, b, u.paid, cap);
                }
            }
            for t in &world.terms {
                let key = t.key();
                let mut sum_members = Decimal::ZERO;
                for member in &world.members {
                    let paid = step.after.member_paid(&member.id, &key);
                    sum_members += paid;
                    if let Some(cap) = t.product.annual_cap {
                        prop_assert!(paid <= cap.decimal(), "claim {}: {:?} paid {} in {} above product annual_cap {}",
                            step.index, member.id, paid, key, cap);
                    }
                    let benefits: Decimal = t.benefits.iter()
                        .map(|b| step.after.benefit_usage(&member.id, &key, &b.code).paid)
                        .sum();
                    prop_assert_eq!(paid, benefits, "claim {}: member paid != sum of benefit paid", step.index);
                }
                let aggregate = step.after.aggregate_paid(&key);
                prop_assert_eq!(aggregate, sum_members, "claim {}: aggregate of {} != sum over members", step.index, key);
                if let Some(cap) = t.product.aggregate_cap {
                    prop_assert!(aggregate <= cap.decimal(), "claim {}: {} aggregate {} above aggregate_cap {}",
                        step.index, key, aggregate, cap);
                }
            }
            Ok(())
        })?;
    }

    /// 3. Preview equals settle: settling twice on the same state gives the same settlement and
    /// changes no accumulator.
    #[test]
    fn preview_equals_settle(s in scenario()) {
        let world = build(&s);
        let mut acc = Accumulators::new();
        for (i, claim) in world.claims.iter().enumerate() {
            let member = &world.members[world.claim_member[i]];
            let snapshot = acc.clone();
            let preview = settle(&world.catalogue, member, claim, &acc);
            prop_assert_eq!(&acc, &snapshot, "claim {}: preview changed the accumulators", i);
            let settled = settle(&world.catalogue, member, claim, &acc);
            prop_assert_eq!(&acc, &snapshot, "claim {}: settle changed the accumulators", i);
            prop_assert_eq!(&preview, &settled, "claim {}: preview != settle", i);
            acc.apply(&settled.changes);
        }
    }

    /// 4a. Applying a settlement and then its reversal restores every accumulator exactly.
    #[test]
    fn reversal_restores(s in scenario()) {
        let world = build(&s);
        run(&world, |step| {
            let mut acc = step.after.clone();
            acc.apply(&step.settlement.changes.negated());
            prop_assert_eq!(&acc, step.before, "claim {}: apply + reverse != before", step.index);
            Ok(())
        })?;
    }

    /// 4b. Settling a sequence and reversing one of it leaves the others' contributions: the book
    /// equals one built from the other settlements' changes only (A, B, C, reverse B ⇒ A + C).
    #[test]
    fn reversal_keeps_later_settlements(s in scenario_with(3..=12), pick in any::<Index>()) {
        let world = build(&s);
        let (settlements, mut acc) = settle_all(&world);
        let reversed = pick.index(settlements.len());
        acc.apply(&settlements[reversed].changes.negated());
        let mut others = Accumulators::new();
        for (i, st) in settlements.iter().enumerate() {
            if i != reversed {
                others.apply(&st.changes);
            }
        }
        prop_assert_eq!(&acc, &others, "reversing claim {} of {}", reversed, settlements.len());
        // Settling after a reversal gives plain zeros, never "-0.00".
        for (i, claim) in world.claims.iter().enumerate() {
            let member = &world.members[world.claim_member[i]];
            let after = settle(&world.catalogue, member, claim, &acc);
            let amounts = after
                .layers
                .iter()
                .flat_map(|l| [l.eligible, l.deductible_applied, l.payout])
                .chain([after.total_cost, after.upstream_total, after.payout_total, after.out_of_pocket]);
            for amount in amounts {
                prop_assert!(
                    !(amount.is_zero() && amount.is_sign_negative()),
                    "claim {} after reversing claim {}: a negative zero", i, reversed
                );
            }
        }
    }

    /// 5. The order of line items and upstream payments does not matter.
    #[test]
    fn line_order_is_irrelevant(s in scenario(), seed in any::<u64>()) {
        let world = build(&s);
        let (settlements, acc) = settle_all(&world);
        let mut shuffled = world.clone();
        for (i, draft) in shuffled.drafts.iter_mut().enumerate() {
            shuffle(&mut draft.lines, seed.wrapping_add(i as u64));
            shuffle(&mut draft.upstream, seed.rotate_left(17).wrapping_add(i as u64));
            shuffled.claims[i] = Claim::parse(draft).unwrap();
        }
        let (again, acc_again) = settle_all(&shuffled);
        for (i, (a, b)) in settlements.iter().zip(&again).enumerate() {
            prop_assert_eq!(a, b, "claim {}: shuffled lines settle differently", i);
        }
        prop_assert_eq!(acc, acc_again);
    }

    /// 6. The same inputs give the same settlements: two runs from scratch agree.
    #[test]
    fn deterministic(s in scenario()) {
        let (first, acc_first) = settle_all(&build(&s));
        let (second, acc_second) = settle_all(&build(&s));
        prop_assert_eq!(first, second);
        prop_assert_eq!(acc_first, acc_second);
    }

    /// 7. The cascade works on what earlier layers left: every layer's eligible is within the
    /// burden left, and all payouts together never exceed total − upstream − NON_COMPLIANT.
    #[test]
    fn cascade_uses_the_burden(s in scenario()) {
        let world = build(&s);
        run(&world, |step| {
            let st = step.settlement;
            let claim = &world.claims[step.index];
            let payable = st.total_cost - st.upstream_total - class_total(claim, ExpenseClass::NonCompliant);
            let mut paid_before = Decimal::ZERO;
            for l in &st.layers {
                prop_assert!(l.eligible <= payable - paid_before,
                    "claim {}: {} eligible {} above the burden left {}", step.index, l.product, l.eligible, payable - paid_before);
                paid_before += l.payout;
            }
            prop_assert!(st.payout_total <= payable,
                "claim {}: payouts {} above payable {}", step.index, st.payout_total, payable);
            Ok(())
        })?;
    }

    /// 8. `banded_amount` is additive over a split of the amount, and monotone in the amount.
    #[test]
    fn banded_is_additive_and_monotone(
        spec in bands(),
        position in prop_oneof![0i64..=100_000, 0i64..=20_000_000],
        a in prop_oneof![0i64..=100_000, 0i64..=20_000_000],
        b in prop_oneof![0i64..=100_000, 0i64..=20_000_000],
    ) {
        let bands: Vec<Band> = spec
            .iter()
            .map(|(from, ratio)| Band {
                from: Money::from_fen(*from).unwrap(),
                ratio: Ratio::try_from_decimal(Decimal::new(*ratio, 4)).unwrap(),
            })
            .collect();
        let (p, a, b) = (fen(position), fen(a), fen(b));
        let whole = banded_amount(&bands, p, a + b);
        let first = banded_amount(&bands, p, a);
        let second = banded_amount(&bands, p + a, b);
        prop_assert_eq!(whole, first + second, "banded({}, {}+{}) != banded({}, {}) + banded({}, {})", p, a, b, p, a, p + a, b);
        prop_assert!(first <= whole, "not monotone: banded({}, {}) = {} > banded({}, {}) = {}", p, a, first, p, a + b, whole);
        prop_assert!(first >= Decimal::ZERO && first <= a, "banded({}, {}) = {} outside [0, amount]", p, a, first);
        prop_assert!(round_fen(whole) <= a + b, "rounded banded above the amount");
    }

    /// 9. (Beyond the brief.) Every layer and total equals an independent integer re-reading of
    /// ADJUDICATION.md computed from the specs, with reasons compared as sets.
    #[test]
    fn matches_reference_model(s in scenario()) {
        let world = build(&s);
        let mut model = Model::default();
        run(&world, |step| {
            let (layers, out_of_pocket) = model.settle(&s, &world, step.index);
            let mut expected = layers;
            for l in &mut expected {
                l.reasons.sort();
            }
            prop_assert_eq!(engine_layers(step.settlement), expected, "claim {}", step.index);
            prop_assert_eq!(
                crate::domain::money::to_fen(step.settlement.out_of_pocket).unwrap(),
                out_of_pocket,
                "claim {}: out of pocket", step.index
            );
            Ok(())
        })?;
    }
}

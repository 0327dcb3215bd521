//! Settling one claim through every layer the member is covered by (ADJUDICATION.md, steps 1-7).
//!
//! `settle` is pure: it reads the terms, the member and the accumulators it is given and returns the
//! settlement with the exact accumulator changes; whoever calls it decides whether to apply them
//! (settle) or not (preview).

use std::sync::Arc;

use rust_decimal::Decimal;
use time::Date;

use super::accumulators::{AccumulatorChange, AccumulatorChanges, AccumulatorView, BenefitUsage};
use super::claim::Claim;
use super::ids::{BenefitCode, ClaimId, HospitalId, MemberId, ProductCode};
use super::kinds::{Category, DeductibleBasis, ExpenseClass, Reason};
use super::member::Member;
use super::money::{round_fen, Money};
use super::terms::{Band, Catalogue, PeriodKey, VersionedTerms};

/// What one layer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerResult {
    pub product: ProductCode,
    pub period_start: Date,
    pub period_end: Date,
    pub terms_version: u32,
    pub layer_order: i64,
    /// The benefit that matched; `None` when the layer stopped before choosing one.
    pub benefit: Option<BenefitCode>,
    pub eligible: Decimal,
    pub deductible_applied: Decimal,
    pub payout: Decimal,
    pub reasons: Vec<Reason>,
}

impl LayerResult {
    pub fn key(&self) -> PeriodKey {
        PeriodKey {
            product: self.product.clone(),
            start: self.period_start,
        }
    }

    /// What this layer adds to the accumulators: the deductible applied, the after-deductible
    /// amount (band position) and the payout. `None` when the layer chose no benefit or changed
    /// nothing. A stored settlement's changes are rebuilt from its layers with this.
    pub fn change(&self) -> Option<AccumulatorChange> {
        let benefit = self.benefit.as_ref()?;
        let delta = BenefitUsage {
            deductible_used: self.deductible_applied,
            band_position: self.eligible - self.deductible_applied,
            paid: self.payout,
        };
        (!delta.is_zero()).then(|| AccumulatorChange {
            period: self.key(),
            benefit: benefit.clone(),
            delta,
        })
    }
}

impl Settlement {
    /// The product periods this settlement paid something in: whose loss ratio it moves.
    pub fn paying_periods(&self) -> impl Iterator<Item = PeriodKey> + '_ {
        self.layers.iter().filter(|l| !l.payout.is_zero()).map(LayerResult::key)
    }

    /// The accumulator changes of these layers, as `settle` computes them.
    pub fn changes_of(member: &MemberId, layers: &[LayerResult]) -> AccumulatorChanges {
        AccumulatorChanges {
            member: member.clone(),
            entries: layers.iter().filter_map(LayerResult::change).collect(),
        }
    }
}

/// The decision on one claim. Final and immutable once stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub claim_id: ClaimId,
    pub hospital_id: HospitalId,
    pub member_id: MemberId,
    pub service_date: Date,
    /// The member's category on the service date.
    pub category: Category,
    pub total_cost: Decimal,
    pub upstream_total: Decimal,
    pub payout_total: Decimal,
    pub out_of_pocket: Decimal,
    /// In cascade order.
    pub layers: Vec<LayerResult>,
    /// Reasons about the claim as a whole (`NOT_ENROLLED`).
    pub reasons: Vec<Reason>,
    /// What the settlement adds to the accumulators; a reversal subtracts exactly this.
    pub changes: AccumulatorChanges,
}

/// The product periods that apply to a claim: those containing the service date in which the member
/// is enrolled, in layer order (ties by product code).
pub fn layers_for<'c>(catalogue: &'c Catalogue, member: &Member, service_date: Date) -> Vec<&'c Arc<VersionedTerms>> {
    let mut layers: Vec<&Arc<VersionedTerms>> = member
        .enrollments
        .keys()
        .filter_map(|key| catalogue.get(key))
        .filter(|v| v.terms.product.period.contains(service_date))
        .collect();
    layers.sort_by(|a, b| {
        (a.terms.product.layer_order, &a.terms.product.code).cmp(&(b.terms.product.layer_order, &b.terms.product.code))
    });
    layers
}

/// Settles `claim` for `member` against the accumulators in `acc`. Changes nothing.
pub fn settle(catalogue: &Catalogue, member: &Member, claim: &Claim, acc: &impl AccumulatorView) -> Settlement {
    settle_on(&layers_for(catalogue, member, claim.service_date), member, claim, acc)
}

/// [`settle`] with the claim's layers already found: `layers` must be
/// `layers_for(catalogue, member, claim.service_date)`, for a caller that needed them before (the
/// ledger locks and reads their periods first).
pub fn settle_on(
    layers: &[&Arc<VersionedTerms>],
    member: &Member,
    claim: &Claim,
    acc: &impl AccumulatorView,
) -> Settlement {
    debug_assert_eq!(
        member.id, claim.member_id,
        "the caller looks the member up by the claim's member id"
    );
    let category = member.categories.on(claim.service_date);

    // Step 1: the burden per coverable class, IN_SCOPE net of upstream payments.
    let totals = claim.class_totals();
    let upstream_total = claim.upstream_total();
    let mut burden = [Decimal::ZERO; 4];
    for class in ExpenseClass::COVERABLE {
        if let Some(i) = class.coverable_index() {
            burden[i] = totals[class as usize];
        }
    }
    burden[0] -= upstream_total;
    debug_assert!(burden[0] >= Decimal::ZERO, "validation keeps upstream within IN_SCOPE");

    let results: Vec<LayerResult> = layers
        .iter()
        .map(|layer| settle_layer(layer, category, claim, &mut burden, acc))
        .collect();

    let payout_total: Decimal = results.iter().map(|r| r.payout).sum();
    let out_of_pocket = burden.iter().copied().sum::<Decimal>() + totals[ExpenseClass::NonCompliant as usize];
    let total_cost = claim.total_cost();
    debug_assert_eq!(total_cost, upstream_total + payout_total + out_of_pocket);
    Settlement {
        claim_id: claim.claim_id.clone(),
        hospital_id: claim.hospital_id.clone(),
        member_id: claim.member_id.clone(),
        service_date: claim.service_date,
        category,
        total_cost,
        upstream_total,
        payout_total,
        out_of_pocket,
        reasons: if results.is_empty() {
            vec![Reason::NotEnrolled]
        } else {
            Vec::new()
        },
        changes: Settlement::changes_of(&claim.member_id, &results),
        layers: results,
    }
}

/// Steps 2-6 for one layer; takes the payout off `burden`.
fn settle_layer(
    layer: &VersionedTerms,
    category: Category,
    claim: &Claim,
    burden: &mut [Decimal; 4],
    acc: &impl AccumulatorView,
) -> LayerResult {
    let product = &layer.terms.product;
    let mut result = LayerResult {
        product: product.code.clone(),
        period_start: product.period.start,
        period_end: product.period.end,
        terms_version: layer.version,
        layer_order: product.layer_order,
        benefit: None,
        eligible: Decimal::ZERO,
        deductible_applied: Decimal::ZERO,
        payout: Decimal::ZERO,
        reasons: Vec::new(),
    };
    if !product.eligible_categories.contains(&category) {
        result.reasons.push(Reason::CategoryNotEligible);
        return result;
    }
    if !product.designated_hospitals.is_empty() && !product.designated_hospitals.contains(&claim.hospital_id) {
        result.reasons.push(Reason::FacilityNotDesignated);
        return result;
    }
    let Some(benefit) = layer
        .terms
        .benefit_for(claim.visit_kind, claim.outpatient_kind, claim.cause)
    else {
        result.reasons.push(Reason::NoMatchingBenefit);
        return result;
    };
    result.benefit = Some(benefit.code.clone());
    let rule = benefit.rule_for(category);
    let key = layer.terms.key();
    let usage = acc.benefit_usage(&claim.member_id, &key, &benefit.code);

    // Step 3: eligible amount and deductible.
    let covered: Vec<usize> = benefit.covers.iter().filter_map(|c| c.coverable_index()).collect();
    let eligible: Decimal = covered.iter().map(|&i| burden[i]).sum();
    let deductible_room = match benefit.deductible_basis {
        DeductibleBasis::Year => (rule.deductible.decimal() - usage.deductible_used).max(Decimal::ZERO),
        DeductibleBasis::Claim => rule.deductible.decimal(),
    };
    let deductible_applied = eligible.min(deductible_room);
    let after_deductible = eligible - deductible_applied;
    if deductible_applied > Decimal::ZERO {
        result.reasons.push(Reason::Deductible);
    }

    // Step 4: banded payout from the benefit's band position, rounded once.
    let banded = round_fen(banded_amount(&rule.bands, usage.band_position, after_deductible));

    // Step 5: the smallest room under any cap.
    let room = |cap: Option<Money>, used: Decimal| cap.map(|c| (c.decimal() - used).max(Decimal::ZERO));
    let rooms = [
        (Reason::CapPerClaim, room(rule.per_claim_cap, Decimal::ZERO)),
        (Reason::CapBenefitAnnual, room(rule.annual_cap, usage.paid)),
        (
            Reason::CapProductAnnual,
            room(product.annual_cap, acc.member_paid(&claim.member_id, &key)),
        ),
        (
            Reason::CapAggregate,
            room(product.aggregate_cap, acc.aggregate_paid(&key)),
        ),
    ];
    let smallest = rooms.iter().filter_map(|(_, r)| *r).min();
    let payout = match smallest {
        Some(smallest) if banded > smallest => {
            for (reason, r) in &rooms {
                if *r == Some(smallest) {
                    result.reasons.push(*reason);
                }
            }
            smallest
        }
        _ => banded,
    };
    debug_assert!(payout >= Decimal::ZERO && payout <= eligible);
    debug_assert!(rooms.iter().all(|(_, r)| r.is_none_or(|r| payout <= r)));

    // Step 6: the payout comes off the covered classes in class order.
    let mut left = payout;
    for &i in &covered {
        let take = left.min(burden[i]);
        burden[i] -= take;
        left -= take;
    }
    debug_assert!(left.is_zero());

    result.eligible = eligible;
    result.deductible_applied = deductible_applied;
    result.payout = payout;
    result
}

/// The unrounded sum of `amount` stacked on the bands from `position`, each slice at its band's ratio.
/// Example: bands 0:50%, 20000:60%, position 15,000, amount 10,000 → 5,000×0.5 + 5,000×0.6 = 5,500.
pub fn banded_amount(bands: &[Band], position: Decimal, amount: Decimal) -> Decimal {
    let start = position;
    let end = position + amount;
    let mut total = Decimal::ZERO;
    for (i, band) in bands.iter().enumerate() {
        let band_start = band.from.decimal();
        let slice_start = start.max(band_start);
        let slice_end = match bands.get(i + 1) {
            Some(next) => end.min(next.from.decimal()),
            None => end,
        };
        if slice_end > slice_start {
            total += (slice_end - slice_start) * band.ratio.decimal();
        }
    }
    total
}

//! Accumulators: what earlier claims used of deductibles, bands and caps.
//!
//! The engine reads them through [`AccumulatorView`], so the ledger can hand it its cache without
//! copying, and returns the exact [`AccumulatorChanges`] a settlement makes; a reversal applies the
//! negation.

use foldhash::HashMap;

use rust_decimal::Decimal;

use super::ids::{BenefitCode, MemberId};
use super::terms::PeriodKey;

/// Per member, product period and benefit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BenefitUsage {
    /// Deductible applied so far this period.
    pub deductible_used: Decimal,
    /// Sum of after-deductible amounts so far: where the next claim starts on the bands.
    pub band_position: Decimal,
    /// Paid by this benefit so far.
    pub paid: Decimal,
}

impl BenefitUsage {
    pub fn is_zero(&self) -> bool {
        self.deductible_used.is_zero() && self.band_position.is_zero() && self.paid.is_zero()
    }

    pub fn add(&mut self, other: &BenefitUsage) {
        self.deductible_used = unsigned_zero(self.deductible_used + other.deductible_used);
        self.band_position = unsigned_zero(self.band_position + other.band_position);
        self.paid = unsigned_zero(self.paid + other.paid);
    }

    pub fn negated(&self) -> BenefitUsage {
        BenefitUsage {
            deductible_used: unsigned_zero(-self.deductible_used),
            band_position: unsigned_zero(-self.band_position),
            paid: unsigned_zero(-self.paid),
        }
    }
}

/// `rust_decimal` keeps the sign of a zero (`-Decimal::ZERO` is "-0"), and a negative zero in an
/// accumulator would come out of the next settlement as "-0.00". Every zero here is plain 0.
fn unsigned_zero(value: Decimal) -> Decimal {
    if value.is_zero() {
        Decimal::ZERO
    } else {
        value
    }
}

/// Read access to the accumulators a settlement needs.
pub trait AccumulatorView {
    fn benefit_usage(&self, member: &MemberId, period: &PeriodKey, benefit: &BenefitCode) -> BenefitUsage;
    /// Paid to this member by every benefit of the product period.
    fn member_paid(&self, member: &MemberId, period: &PeriodKey) -> Decimal;
    /// Paid to all members by the product period.
    fn aggregate_paid(&self, period: &PeriodKey) -> Decimal;
}

/// One layer's change: the benefit's usage grows by `delta`; the member's and the period's paid grow
/// by `delta.paid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccumulatorChange {
    pub period: PeriodKey,
    pub benefit: BenefitCode,
    pub delta: BenefitUsage,
}

/// Every accumulator change of one settlement (or, negated, of its reversal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccumulatorChanges {
    pub member: MemberId,
    pub entries: Vec<AccumulatorChange>,
}

impl AccumulatorChanges {
    /// The changes a reversal makes: exactly the opposite.
    pub fn negated(&self) -> AccumulatorChanges {
        AccumulatorChanges {
            member: self.member.clone(),
            entries: self
                .entries
                .iter()
                .map(|c| AccumulatorChange {
                    period: c.period.clone(),
                    benefit: c.benefit.clone(),
                    delta: c.delta.negated(),
                })
                .collect(),
        }
    }
}

/// Accumulators in memory: the engine's reference implementation and the ledger's cache. Entries
/// that return to zero are dropped, so that two books with the same figures compare equal. Maps are
/// nested so that reads borrow their keys instead of cloning them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accumulators {
    members: HashMap<MemberId, HashMap<PeriodKey, MemberPeriod>>,
    periods: HashMap<PeriodKey, Decimal>,
}

/// One member in one product period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberPeriod {
    pub paid: Decimal,
    pub benefits: HashMap<BenefitCode, BenefitUsage>,
}

impl Accumulators {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&mut self, changes: &AccumulatorChanges) {
        for c in &changes.entries {
            self.add(&changes.member, &c.period, &c.benefit, &c.delta);
        }
    }

    /// Adds to one benefit usage (and the member's and period's paid): how changes are applied and
    /// how the store's rows are loaded.
    pub fn add(&mut self, member: &MemberId, period: &PeriodKey, benefit: &BenefitCode, delta: &BenefitUsage) {
        if delta.is_zero() {
            return;
        }
        let periods = self.members.entry(member.clone()).or_default();
        let mp = periods.entry(period.clone()).or_default();
        mp.paid = unsigned_zero(mp.paid + delta.paid);
        let usage = mp.benefits.entry(benefit.clone()).or_default();
        usage.add(delta);
        if usage.is_zero() {
            mp.benefits.remove(benefit);
        }
        if mp.paid.is_zero() && mp.benefits.is_empty() {
            periods.remove(period);
        }
        if periods.is_empty() {
            self.members.remove(member);
        }
        let total = self.periods.entry(period.clone()).or_default();
        *total += delta.paid;
        if total.is_zero() {
            self.periods.remove(period);
        }
    }

    /// Adds to a period's total paid alone: other members' payouts, as loaded from the store for
    /// the aggregate cap.
    pub fn add_period_paid(&mut self, period: &PeriodKey, amount: Decimal) {
        let total = self.periods.entry(period.clone()).or_default();
        *total += amount;
        if total.is_zero() {
            self.periods.remove(period);
        }
    }

    /// Every (member, period, benefit) usage held.
    pub fn benefit_entries(&self) -> impl Iterator<Item = (&MemberId, &PeriodKey, &BenefitCode, &BenefitUsage)> {
        self.members.iter().flat_map(|(m, periods)| {
            periods
                .iter()
                .flat_map(move |(p, mp)| mp.benefits.iter().map(move |(b, u)| (m, p, b, u)))
        })
    }
}

impl AccumulatorView for Accumulators {
    fn benefit_usage(&self, member: &MemberId, period: &PeriodKey, benefit: &BenefitCode) -> BenefitUsage {
        self.members
            .get(member)
            .and_then(|p| p.get(period))
            .and_then(|mp| mp.benefits.get(benefit))
            .copied()
            .unwrap_or_default()
    }

    fn member_paid(&self, member: &MemberId, period: &PeriodKey) -> Decimal {
        self.members
            .get(member)
            .and_then(|p| p.get(period))
            .map(|mp| mp.paid)
            .unwrap_or_default()
    }

    fn aggregate_paid(&self, period: &PeriodKey) -> Decimal {
        self.periods.get(period).copied().unwrap_or_default()
    }
}

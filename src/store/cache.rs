//! What a writer remembers of what it read and wrote, so that it need not read it again.
//!
//! - **Members** (categories, enrollments): kept across transactions. A PostgreSQL writer uses a
//!   member it holds only while the roster's version (`roster_version`, which every committed
//!   roster change moves on) stands where it stood when the member was read, and only for members
//!   locked before that version was read in the transaction ([`WriterCache::roster_seen`]);
//!   SQLite's single writer, while no other connection committed.
//! - **Accumulators**: the usage of every member it has read, in every period, which the writer
//!   needs whole to rewrite the member's `member_usage` row; SQLite's writer keeps them across
//!   transactions, PostgreSQL's for one (its member locks keep them from changing meanwhile).
//! - **Period totals** (SQLite only): each period's total paid by all members.
//!
//! The cache always equals the database as the writer's own transaction sees it:
//! - every write of the writer updates it (usage, totals, members' categories and enrollments, the
//!   members it creates), at once, so a later statement of the same transaction reads its own
//!   changes here too;
//! - a rollback drops everything, since the writes it undoes were already applied here;
//! - SQLite's `data_version` tells, at the start of each transaction, whether another connection
//!   committed since (another process on the same file, or a repair by hand): then everything is
//!   dropped. On PostgreSQL, where several writers and processes share the tables, only members are
//!   kept from one transaction to the next, as above.
//! - It holds at most [`CACHED_MEMBERS_MAX`] members (SQLite) or [`CACHED_MEMBERS_MAX_CONCURRENT`]
//!   (each PostgreSQL writer); past that it starts empty again.

use foldhash::{HashMap, HashMapExt, HashSet};
use std::sync::Arc;

use rust_decimal::Decimal;

use time::Date;

use crate::domain::{
    AccumulatorChanges, AccumulatorView, Accumulators, BenefitCode, BenefitUsage, Category, Member, MemberId, Money,
    PeriodKey,
};

/// Every stored usage of some members, as read from `accumulators`.
pub(super) type StoredUsage = Vec<(MemberId, Vec<(PeriodKey, BenefitCode, BenefitUsage)>)>;

/// Members (with their usage) a SQLite writer keeps at most: about 2 KiB each, so at most about
/// 128 MiB.
pub(super) const CACHED_MEMBERS_MAX: usize = 65_536;

/// Members a PostgreSQL writer keeps at most (without their usage, which it reads in each
/// transaction): a quarter of SQLite's single writer's, for the four writers a process has by
/// default. With 100,000 members the four writers' caches filled to it and claimsd's peak RSS went
/// from 76 to 117 MiB (docs/benchmarks.md): about 650 bytes a member held.
pub(super) const CACHED_MEMBERS_MAX_CONCURRENT: usize = 16_384;

pub(super) struct WriterCache {
    /// Kept from one transaction to the next (SQLite's single writer).
    lasting: bool,
    /// SQLite's `PRAGMA data_version` at the start of the current transaction.
    data_version: Option<i64>,
    /// Shared with the runs that read them: a run's lookup copies no categories or enrollments.
    members: HashMap<MemberId, Arc<Member>>,
    /// PostgreSQL: the roster's version when the members held were read or last found unchanged.
    roster_version: Option<i64>,
    /// PostgreSQL: the members held that this transaction may use (locked before it read the
    /// roster's version, or read or created by it); the others are read again. `None` on SQLite:
    /// every member held.
    usable: Option<HashSet<MemberId>>,
    /// Every stored usage of each member held (an empty map: none stored).
    usage: HashMap<MemberId, HashMap<(PeriodKey, BenefitCode), BenefitUsage>>,
    /// Each period's total paid by all members.
    period_paid: HashMap<PeriodKey, Decimal>,
}

impl WriterCache {
    pub(super) fn new(lasting: bool) -> Self {
        Self {
            lasting,
            data_version: None,
            members: HashMap::new(),
            roster_version: None,
            usable: (!lasting).then(HashSet::default),
            usage: HashMap::new(),
            period_paid: HashMap::new(),
        }
    }

    pub(super) fn lasting(&self) -> bool {
        self.lasting
    }

    fn clear(&mut self) {
        self.members.clear();
        self.roster_version = None;
        self.clear_but_members();
    }

    /// Everything but the members themselves: what a PostgreSQL writer holds for one transaction
    /// (the usage, the totals, which members it may use).
    fn clear_but_members(&mut self) {
        if let Some(usable) = &mut self.usable {
            usable.clear();
        }
        self.usage.clear();
        self.period_paid.clear();
    }

    /// PostgreSQL: `id` may be used for the rest of this transaction (SQLite: every member held is).
    fn mark_usable(&mut self, id: &MemberId) {
        if let Some(usable) = &mut self.usable {
            usable.insert(id.clone());
        }
    }

    /// At the start of a transaction, with SQLite's `data_version` (None on PostgreSQL). Returns
    /// whether another connection may have committed since this writer's last transaction.
    pub(super) fn begin(&mut self, data_version: Option<i64>) -> bool {
        let changed_elsewhere = data_version.is_none() || data_version != self.data_version;
        let members_max = if self.lasting {
            CACHED_MEMBERS_MAX
        } else {
            CACHED_MEMBERS_MAX_CONCURRENT
        };
        if self.members.len() > members_max || self.usage.len() > CACHED_MEMBERS_MAX {
            self.clear();
        } else if !self.lasting {
            // The members stay, none usable until `roster_seen`.
            self.clear_but_members();
        } else if changed_elsewhere {
            self.clear();
        }
        self.data_version = data_version;
        changed_elsewhere
    }

    /// PostgreSQL, at the start of each transaction, once the locks of `locked` are held: the
    /// roster's version. If it moved since the members held were read, a roster change committed
    /// meanwhile, and they are all dropped. Of those held, this transaction uses only `locked`:
    /// a member locked later may have changed between this read and its lock, and is read again
    /// (then usable, like the members this transaction reads or creates).
    pub(super) fn roster_seen<'a>(&mut self, version: i64, locked: impl IntoIterator<Item = &'a MemberId>) {
        if self.roster_version != Some(version) {
            self.members.clear();
            self.roster_version = Some(version);
        }
        if let Some(usable) = &mut self.usable {
            usable.clear();
            usable.extend(locked.into_iter().cloned());
        }
    }

    fn usable(&self, id: &MemberId) -> Option<&Arc<Member>> {
        match &self.usable {
            Some(usable) if !usable.contains(id) => None,
            _ => self.members.get(id),
        }
    }

    /// The transaction was rolled back (or its commit failed): what it wrote here is undone by
    /// dropping everything.
    pub(super) fn rolled_back(&mut self) {
        self.clear();
        self.data_version = None;
    }

    /// The members held; the others must be read.
    pub(super) fn members<'a>(
        &self,
        ids: &[&'a MemberId],
        found: &mut HashMap<MemberId, Arc<Member>>,
    ) -> Vec<&'a MemberId> {
        let mut missing = Vec::new();
        for id in ids {
            match self.usable(id) {
                Some(m) => {
                    found.insert((*id).clone(), Arc::clone(m));
                }
                None => missing.push(*id),
            }
        }
        missing
    }

    pub(super) fn keep_members<'a>(&mut self, members: impl IntoIterator<Item = &'a Arc<Member>>) {
        for m in members {
            self.members.insert(m.id.clone(), Arc::clone(m));
            self.mark_usable(&m.id);
        }
    }

    /// Of `ids`, those not held at all (usable or not).
    pub(super) fn members_not_held<'a>(&self, ids: &[&'a MemberId]) -> Vec<&'a MemberId> {
        ids.iter()
            .copied()
            .filter(|id| !self.members.contains_key(*id))
            .collect()
    }

    /// Members this transaction stored for the first time: without categories, enrollments or
    /// usage, until the writes that follow (which change them here too).
    pub(super) fn keep_new_members<'a>(&mut self, ids: impl IntoIterator<Item = &'a MemberId>) {
        for id in ids {
            self.members.insert(id.clone(), Arc::new(Member::new(id.clone())));
            self.usage.entry(id.clone()).or_default();
            self.mark_usable(id);
        }
    }

    /// A member's category from `effective` on was set (a held member changes here too).
    pub(super) fn set_category(&mut self, id: &MemberId, effective: Date, category: Category) {
        if let Some(m) = self.members.get_mut(id) {
            Arc::make_mut(m).categories.set(effective, category);
        }
    }

    /// A member's enrollment was stored with its premium in fen (a held member changes here too).
    pub(super) fn set_enrollment(&mut self, id: &MemberId, key: &PeriodKey, premium_fen: i64) {
        match Money::from_fen(premium_fen) {
            Ok(premium) => {
                if let Some(m) = self.members.get_mut(id) {
                    Arc::make_mut(m).enrollments.insert(key.clone(), premium);
                }
            }
            // Read back, the row fails as corrupt: so does the member, from the database.
            Err(_) => {
                self.members.remove(id);
            }
        }
    }

    /// Of `members` and `keys`, those whose usage or total is not held.
    pub(super) fn missing_usage<'a>(
        &self,
        members: &[&'a MemberId],
        keys: &'a [PeriodKey],
    ) -> (Vec<&'a MemberId>, Vec<&'a PeriodKey>) {
        let keys = keys.iter().filter(|k| !self.period_paid.contains_key(*k)).collect();
        (self.missing_members_usage(members), keys)
    }

    /// Keeps what was read for `members` (all their stored usage; absent members have none) and
    /// `keys` (absent periods have paid nothing).
    pub(super) fn keep_usage(
        &mut self,
        members: &[&MemberId],
        usage: StoredUsage,
        keys: &[&PeriodKey],
        totals: Vec<(PeriodKey, Decimal)>,
    ) {
        for m in members {
            self.usage.entry((*m).clone()).or_default();
        }
        for (member, entries) in usage {
            let held = self.usage.entry(member).or_default();
            for (key, benefit, u) in entries {
                held.insert((key, benefit), u);
            }
        }
        for k in keys {
            self.period_paid.entry((*k).clone()).or_default();
        }
        for (key, total) in totals {
            self.period_paid.insert(key, total);
        }
    }

    /// Of `members`, those whose usage is not held.
    pub(super) fn missing_members_usage<'a>(&self, members: &[&'a MemberId]) -> Vec<&'a MemberId> {
        members
            .iter()
            .filter(|m| !self.usage.contains_key(**m))
            .copied()
            .collect()
    }

    /// A held member's whole usage.
    pub(super) fn usage_of(
        &self,
        member: &MemberId,
    ) -> Option<impl Iterator<Item = (&PeriodKey, &BenefitCode, &BenefitUsage)>> {
        self.usage
            .get(member)
            .map(|held| held.iter().map(|((k, b), u)| (k, b, u)))
    }

    /// Drops the period totals held (PostgreSQL, before each read: see `Writer::accumulators`).
    pub(super) fn forget_totals(&mut self) {
        self.period_paid.clear();
    }

    /// The book the engine reads for `members` in `keys`, as a copy; every one of them must be
    /// held. The writer reads through [`WriterCache::view`] instead, which copies nothing.
    pub(super) fn book(&self, members: &[&MemberId], keys: &[PeriodKey]) -> Accumulators {
        let mut acc = Accumulators::new();
        for m in members {
            if let Some(held) = self.usage.get(*m) {
                for ((key, benefit), u) in held {
                    if keys.contains(key) {
                        acc.add(m, key, benefit, u);
                    }
                }
            }
        }
        for key in keys {
            let total = self.period_paid.get(key).copied().unwrap_or_default();
            // Other members' payouts count towards aggregate caps: the period's total less the
            // part of the members in the book.
            let loaded = acc.aggregate_paid(key);
            if total != loaded {
                acc.add_period_paid(key, total - loaded);
            }
        }
        acc
    }

    /// The book the engine reads: what is held, under the changes of the claims settled since
    /// (`Book::apply`). The members and periods it is asked about must be held.
    pub(super) fn view(&self) -> Book<'_> {
        Book {
            held: self,
            run: Accumulators::new(),
        }
    }

    /// The writer added `delta` to a member's usage (a held member only; the others are read
    /// from the database, which has it).
    pub(super) fn add_usage(
        &mut self,
        member: &MemberId,
        key: &PeriodKey,
        benefit: &BenefitCode,
        delta: &BenefitUsage,
    ) {
        if let Some(held) = self.usage.get_mut(member) {
            let entry = held.entry((key.clone(), benefit.clone())).or_default();
            entry.add(delta);
            if entry.is_zero() {
                held.remove(&(key.clone(), benefit.clone()));
            }
        }
    }

    /// The writer added `paid` to a period's total paid.
    pub(super) fn add_period_paid(&mut self, key: &PeriodKey, paid: Decimal) {
        if let Some(total) = self.period_paid.get_mut(key) {
            *total += paid;
        }
    }
}

/// The writer's book for a run of claims: the cache as held when the run began, plus the changes
/// of the run's claims settled so far. It answers as [`WriterCache::book`]'s copy with those
/// changes applied would (`view_answers_as_the_copy` below), without copying the members' usage:
/// a member holds a few usages, which a lookup scans.
pub struct Book<'a> {
    held: &'a WriterCache,
    run: Accumulators,
}

impl Book<'_> {
    /// A settlement of the run: the claims after it see its changes.
    pub fn apply(&mut self, changes: &AccumulatorChanges) {
        self.run.apply(changes);
    }

    fn held_usages<'s>(
        &'s self,
        member: &MemberId,
    ) -> impl Iterator<Item = (&'s (PeriodKey, BenefitCode), &'s BenefitUsage)> {
        self.held.usage.get(member).into_iter().flatten()
    }
}

impl AccumulatorView for Book<'_> {
    fn benefit_usage(&self, member: &MemberId, period: &PeriodKey, benefit: &BenefitCode) -> BenefitUsage {
        let mut usage = self
            .held_usages(member)
            .find(|((k, b), _)| k == period && b == benefit)
            .map(|(_, u)| *u)
            .unwrap_or_default();
        usage.add(&self.run.benefit_usage(member, period, benefit));
        usage
    }

    fn member_paid(&self, member: &MemberId, period: &PeriodKey) -> Decimal {
        let held: Decimal = self
            .held_usages(member)
            .filter(|((k, _), _)| k == period)
            .map(|(_, u)| u.paid)
            .sum();
        held + self.run.member_paid(member, period)
    }

    fn aggregate_paid(&self, period: &PeriodKey) -> Decimal {
        self.held.period_paid.get(period).copied().unwrap_or_default() + self.run.aggregate_paid(period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccumulatorChange, ProductCode};
    use proptest::prelude::*;

    fn member(i: u8) -> MemberId {
        MemberId::parse(&format!("M{i}")).unwrap()
    }

    fn period(i: u8) -> PeriodKey {
        PeriodKey {
            product: ProductCode::parse(&format!("p{}", i % 2)).unwrap(),
            start: time::Date::from_calendar_date(2022 + i32::from(i / 2), time::Month::January, 1).unwrap(),
        }
    }

    fn benefit(i: u8) -> BenefitCode {
        BenefitCode::parse(&format!("b{i}")).unwrap()
    }

    fn fen(n: u32) -> Decimal {
        Decimal::new(i64::from(n), 2)
    }

    /// (member, period, benefit, deductible, band, paid), small indexes so that entries meet.
    fn usage_entry() -> impl Strategy<Value = (u8, u8, u8, u32, u32, u32)> {
        (0u8..3, 0u8..3, 0u8..3, 0u32..5_000, 0u32..50_000, 0u32..20_000)
    }

    fn usage((_, _, _, d, b, p): (u8, u8, u8, u32, u32, u32)) -> BenefitUsage {
        BenefitUsage {
            deductible_used: fen(d),
            band_position: fen(b),
            paid: fen(p),
        }
    }

    proptest! {
        /// The writer's view of its cache answers every question exactly as a copy of the book,
        /// with the same run of changes applied to it, does.
        #[test]
        fn added_usage_is_the_sum_of_what_was_added_without_zeros(
            held in proptest::collection::vec(usage_entry(), 0..12),
            added in proptest::collection::vec(usage_entry(), 0..24),
            cancelled in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
        ) {
            let mut cache = WriterCache::new(true);
            let m = member(0);
            let mut model: std::collections::BTreeMap<(PeriodKey, BenefitCode), BenefitUsage> =
                std::collections::BTreeMap::new();
            for e in &held {
                model.insert((period(e.1), benefit(e.2)), usage(*e));
            }
            let stored = model.iter().map(|((k, b), u)| (k.clone(), b.clone(), *u)).collect();
            cache.keep_usage(&[&m], vec![(m.clone(), stored)], &[], Vec::new());
            // Some additions, then some usages taken back whole (they come to zero).
            let mut deltas: Vec<(PeriodKey, BenefitCode, BenefitUsage)> =
                added.iter().map(|e| (period(e.1), benefit(e.2), usage(*e))).collect();
            let after_added = |model: &std::collections::BTreeMap<_, BenefitUsage>, deltas: &[(PeriodKey, BenefitCode, BenefitUsage)]| {
                let mut sum = model.clone();
                for (k, b, d) in deltas {
                    sum.entry((k.clone(), b.clone())).or_default().add(d);
                }
                sum
            };
            let summed = after_added(&model, &deltas);
            let entries: Vec<_> = summed.iter().collect();
            for index in &cancelled {
                if !entries.is_empty() {
                    let ((k, b), u) = entries[index.index(entries.len())];
                    deltas.push((k.clone(), b.clone(), u.negated()));
                }
            }
            for (k, b, d) in &deltas {
                cache.add_usage(&m, k, b, d);
                let entry = model.entry((k.clone(), b.clone())).or_default();
                entry.add(d);
                if entry.is_zero() {
                    model.remove(&(k.clone(), b.clone()));
                }
            }
            let mut got: Vec<((PeriodKey, BenefitCode), BenefitUsage)> = cache
                .usage_of(&m)
                .into_iter()
                .flatten()
                .map(|(k, b, u)| ((k.clone(), b.clone()), *u))
                .collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            let want: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn view_answers_as_the_copy(
            held in proptest::collection::vec(usage_entry(), 0..20),
            totals in proptest::collection::vec((0u8..3, 0u32..1_000_000), 0..4),
            runs in proptest::collection::vec(proptest::collection::vec(usage_entry(), 1..4), 0..6),
        ) {
            let mut cache = WriterCache::new(true);
            let members: Vec<MemberId> = (0..3).map(member).collect();
            let keys: Vec<PeriodKey> = (0..3).map(period).collect();
            let member_refs: Vec<&MemberId> = members.iter().collect();
            let key_refs: Vec<&PeriodKey> = keys.iter().collect();
            let mut stored: StoredUsage = Vec::new();
            for m in 0..3u8 {
                let mut entries: HashMap<(PeriodKey, BenefitCode), BenefitUsage> = HashMap::new();
                for e in held.iter().filter(|e| e.0 == m) {
                    entries.insert((period(e.1), benefit(e.2)), usage(*e));
                }
                stored.push((member(m), entries.into_iter().map(|((k, b), u)| (k, b, u)).collect()));
            }
            // A period's total covers its members' payouts and others'.
            let mut paid: HashMap<PeriodKey, Decimal> = HashMap::new();
            for (_, entries) in &stored {
                for (k, _, u) in entries {
                    *paid.entry(k.clone()).or_default() += u.paid;
                }
            }
            for (k, extra) in &totals {
                *paid.entry(period(*k)).or_default() += fen(*extra);
            }
            cache.keep_usage(&member_refs, stored, &key_refs, paid.into_iter().collect());

            let mut copy = cache.book(&member_refs, &keys);
            let mut view = cache.view();
            for run in &runs {
                let changes = AccumulatorChanges {
                    member: member(run[0].0),
                    entries: run
                        .iter()
                        .map(|e| AccumulatorChange { period: period(e.1), benefit: benefit(e.2), delta: usage(*e) })
                        .collect(),
                };
                copy.apply(&changes);
                view.apply(&changes);
                for m in &members {
                    for k in &keys {
                        prop_assert_eq!(view.member_paid(m, k), copy.member_paid(m, k));
                        for b in (0..3).map(benefit) {
                            prop_assert_eq!(view.benefit_usage(m, k, &b), copy.benefit_usage(m, k, &b));
                        }
                    }
                }
                for k in &keys {
                    prop_assert_eq!(view.aggregate_paid(k), copy.aggregate_paid(k));
                }
            }
        }
    }
}

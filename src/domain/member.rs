//! What the engine needs to know of a member: category over time and enrollments.

use std::collections::BTreeMap;

use time::Date;

use super::ids::MemberId;
use super::kinds::Category;
use super::money::Money;
use super::terms::PeriodKey;

/// A member's category changes (dynamic management), by effective date.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CategoryHistory(BTreeMap<Date, Category>);

impl CategoryHistory {
    /// Records a change; a later change with the same effective date replaces the earlier one.
    pub fn set(&mut self, effective: Date, category: Category) {
        self.0.insert(effective, category);
    }

    /// The category in effect on `date`: the latest change effective on or before it. A member with
    /// no change in effect yet is `GENERAL`, which low-income schemes do not list as eligible, so the
    /// service never pays on a category it was not told of.
    pub fn on(&self, date: Date) -> Category {
        self.0
            .range(..=date)
            .next_back()
            .map(|(_, c)| *c)
            .unwrap_or(Category::General)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Date, Category)> + '_ {
        self.0.iter().map(|(d, c)| (*d, *c))
    }
}

/// A member with categories and enrollments (product period → premium paid for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: MemberId,
    pub categories: CategoryHistory,
    pub enrollments: BTreeMap<PeriodKey, Money>,
}

impl Member {
    pub fn new(id: MemberId) -> Self {
        Self {
            id,
            categories: CategoryHistory::default(),
            enrollments: BTreeMap::new(),
        }
    }
}

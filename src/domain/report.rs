//! Loss ratio per product period (ADJUDICATION.md, "Loss ratio").

use rust_decimal::Decimal;

use super::money::round_ratio;

/// Running figures of one product period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossRatio {
    /// Sum of the enrollments' premiums.
    pub written_premium: Decimal,
    /// Sum of this product's payouts in settlements not reversed.
    pub paid: Decimal,
    /// Settlements not reversed in which this product paid more than 0.
    pub paid_claims: u64,
}

impl LossRatio {
    /// paid / written premium, four decimals, half-up; `None` while no premium is written (public
    /// assistance funds have none, and a ratio over zero means nothing).
    pub fn ratio(&self) -> Option<Decimal> {
        if self.written_premium.is_zero() {
            None
        } else {
            self.paid.checked_div(self.written_premium).map(round_ratio)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap_or_default()
    }

    #[test]
    fn cixi_2020_loss_ratio() {
        let lr = LossRatio {
            written_premium: d("4125000.00"),
            paid: d("4875423.54"),
            paid_claims: 4875,
        };
        assert_eq!(lr.ratio(), Some(d("1.1819")));
    }

    #[test]
    fn example_b_loss_ratio() {
        let lr = LossRatio {
            written_premium: d("60.00"),
            paid: d("61000.00"),
            paid_claims: 3,
        };
        assert_eq!(lr.ratio(), Some(d("1016.6667")));
        assert_eq!(LossRatio::default().ratio(), None);
    }
}

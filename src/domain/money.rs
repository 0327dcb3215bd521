//! Money and ratios: exact decimals, parsed strictly, rounded in one place.

use rust_decimal::{Decimal, RoundingStrategy};
use std::fmt;
use std::str::FromStr;

/// The largest amount a claim's line item or upstream payment (or a claim's total) may carry:
/// CNY 100,000,000.00, as ADJUDICATION.md says.
pub const AMOUNT_MAX: Decimal = Decimal::from_parts(1_410_065_408, 2, 0, false, 2); // 10_000_000_000 fen
/// The largest money figure in terms (caps, premiums). Aggregate caps of whole schemes exceed
/// `AMOUNT_MAX` (Yinchuan: 800,000,000.00), so terms get a wider, still bounded, range: CNY 10^12,
/// which is 10^14 fen and fits an i64 column with room to add.
pub const TERMS_MONEY_MAX: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0); // 10^12

/// A non-negative amount of CNY with at most two decimals and at most [`AMOUNT_MAX`].
///
/// Input amounts (line items, upstream payments, terms) are `Money`; the engine computes with plain
/// `Decimal` and rounds once per layer with [`round_fen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Parses a claim amount such as `"1234.56"`: no sign, no exponent, at most two decimals, at
    /// most [`AMOUNT_MAX`].
    pub fn parse(text: &str) -> Result<Money, String> {
        Money::within(parse_plain_decimal(text)?, AMOUNT_MAX)
    }

    /// Parses a money figure of terms: the same rules up to [`TERMS_MONEY_MAX`].
    pub fn parse_terms(text: &str) -> Result<Money, String> {
        Money::within(parse_plain_decimal(text)?, TERMS_MONEY_MAX)
    }

    /// Checks an exact decimal against the money rules with the given ceiling.
    pub fn within(value: Decimal, max: Decimal) -> Result<Money, String> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(format!("{value} is negative"));
        }
        if value.normalize().scale() > 2 {
            return Err(format!("{value} has more than two decimals"));
        }
        if value > max {
            return Err(format!("{value} is above {}", format_money(max)));
        }
        Ok(Money(value.abs().round_dp(2)))
    }

    /// Whole fen, as stored in the database.
    pub fn from_fen(fen: i64) -> Result<Money, String> {
        Money::within(Decimal::new(fen, 2), TERMS_MONEY_MAX)
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format_money(self.0))
    }
}

/// A ratio in [0, 1] with at most four decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ratio(Decimal);

impl Ratio {
    pub const ONE: Ratio = Ratio(Decimal::ONE);

    pub fn parse(text: &str) -> Result<Ratio, String> {
        Ratio::try_from_decimal(parse_plain_decimal(text)?)
    }

    pub fn try_from_decimal(value: Decimal) -> Result<Ratio, String> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(format!("{value} is below 0"));
        }
        if value > Decimal::ONE {
            return Err(format!("{value} is above 1"));
        }
        if value.normalize().scale() > 4 {
            return Err(format!("{value} has more than four decimals"));
        }
        Ok(Ratio(value.abs()))
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Parses `123`, `123.4`, `0.0001`; refuses signs other than a leading `-` (reported by the callers as
/// negative), exponents, separators, spaces and empty text.
fn parse_plain_decimal(text: &str) -> Result<Decimal, String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let mut parts = digits.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    let well_formed = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    if !well_formed {
        return Err(format!("{text:?} is not a decimal number"));
    }
    if whole.len() > 15 || frac.is_some_and(|f| f.len() > 12) {
        return Err(format!("{text:?} has too many digits"));
    }
    Decimal::from_str(text).map_err(|_| format!("{text:?} is not a decimal number"))
}

/// The one rounding of the engine: half-up (away from zero) to the fen.
pub fn round_fen(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Rounds a ratio to four decimals, half-up, as loss ratios are reported.
pub fn round_ratio(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
}

/// Formats an amount with exactly two decimals (`"1234.50"`), the wire and report format: the
/// text `Decimal`'s `Display` gives after rounding to the fen and rescaling to two decimals (a
/// negative zero keeps its sign), written digit by digit. Every settlement formats a few dozen
/// amounts (its stored claim and its reply): `Decimal`'s `Display` through `to_string` was 13% of
/// the API threads' samples in a one-stream profile (docs/benchmarks.md).
pub fn format_money(value: Decimal) -> String {
    let mut v = round_fen(value);
    v.rescale(2);
    let fen = match u64::try_from(v.mantissa().unsigned_abs()) {
        Ok(fen) if v.scale() == 2 => fen,
        // Beyond 10^17 fen, or too many digits to hold two decimals: as `Decimal` writes it.
        _ => return v.to_string(),
    };
    // At most 20 digits, a point and a sign.
    let mut buf = [0u8; 24];
    let mut at = buf.len();
    let mut rest = fen;
    let mut digits = 0;
    while rest > 0 || digits < 3 {
        if digits == 2 {
            at -= 1;
            buf[at] = b'.';
        }
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        digits += 1;
    }
    if v.is_sign_negative() {
        at -= 1;
        buf[at] = b'-';
    }
    std::str::from_utf8(&buf[at..]).map_or_else(|_| v.to_string(), str::to_owned)
}

/// Converts an amount already in fen precision to whole fen for storage; `None` when it has
/// sub-fen digits or does not fit.
pub fn to_fen(value: Decimal) -> Option<i64> {
    let scaled = value.checked_mul(Decimal::ONE_HUNDRED)?;
    if scaled.fract() != Decimal::ZERO {
        return None;
    }
    i64::try_from(scaled).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_max_is_one_hundred_million() {
        assert_eq!(AMOUNT_MAX, Decimal::from_str("100000000.00").unwrap_or_default());
        assert_eq!(TERMS_MONEY_MAX, Decimal::from_str("1000000000000").unwrap_or_default());
        assert!(Money::parse("800000000.00").is_err());
        assert!(Money::parse_terms("800000000.00").is_ok());
    }

    #[test]
    fn money_parsing_is_strict() {
        assert_eq!(Money::parse("1234.56").map(|m| m.to_string()), Ok("1234.56".into()));
        assert_eq!(Money::parse("7").map(|m| m.to_string()), Ok("7.00".into()));
        assert!(Money::parse("1.234").unwrap_err().contains("more than two decimals"));
        assert!(Money::parse("-1.00").unwrap_err().contains("negative"));
        assert!(Money::parse("100000000.01").unwrap_err().contains("above"));
        assert!(Money::parse("100000000.00").is_ok());
        for bad in ["", "1e3", "+1", " 1", "1,000", "1.", ".5", "abc", "NaN", "1.2.3"] {
            assert!(Money::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(Money::parse("-0").map(|m| m.to_string()), Ok("0.00".into()));
    }

    #[test]
    fn ratio_parsing() {
        assert!(Ratio::parse("1.3").unwrap_err().contains("above 1"));
        assert!(Ratio::parse("0.12345").unwrap_err().contains("four decimals"));
        assert!(Ratio::parse("-0.1").unwrap_err().contains("below 0"));
        assert!(Ratio::parse("0.7").is_ok());
        assert!(Ratio::parse("1.0000").is_ok());
    }

    #[test]
    fn rounding_is_half_up_once() {
        let d = |s: &str| Decimal::from_str(s).unwrap_or_default();
        assert_eq!(round_fen(d("0.005")), d("0.01"));
        assert_eq!(round_fen(d("0.0049999")), d("0.00"));
        assert_eq!(round_fen(d("2.675")), d("2.68"));
        assert_eq!(round_ratio(d("1016.66666")), d("1016.6667"));
        assert_eq!(format_money(d("5")), "5.00");
        assert_eq!(to_fen(d("12.34")), Some(1234));
        assert_eq!(to_fen(d("12.345")), None);
    }

    /// What `format_money` wrote before it wrote digits itself: `Decimal`'s `Display`.
    fn displayed(value: Decimal) -> String {
        let mut v = round_fen(value);
        v.rescale(2);
        v.to_string()
    }

    #[test]
    fn money_text_at_the_edges() {
        let d = |s: &str| Decimal::from_str(s).unwrap_or_default();
        for (value, text) in [
            (d("0"), "0.00"),
            (d("0.004"), "0.00"),
            (d("0.005"), "0.01"),
            (d("0.05"), "0.05"),
            (d("0.5"), "0.50"),
            (d("-0.07"), "-0.07"),
            (d("-12.345"), "-12.35"),
            (d("100000000"), "100000000.00"),
            (Decimal::NEGATIVE_ONE, "-1.00"),
        ] {
            assert_eq!(format_money(value), text);
            assert_eq!(displayed(value), text);
        }
        // A negative zero keeps its sign, as `Display` writes it.
        let negative_zero = -Decimal::new(0, 2);
        assert_eq!(format_money(negative_zero), displayed(negative_zero));
        // Too large for two decimals: as `Display` writes it.
        for value in [Decimal::MAX, Decimal::MIN, Decimal::MAX / Decimal::TEN] {
            assert_eq!(format_money(value), displayed(value));
        }
    }

    proptest::proptest! {
        #[test]
        fn money_text_is_display_text(
            mantissa in -(1i128 << 96) + 1..(1i128 << 96),
            small in -1_000_000_000_000i64..1_000_000_000_000,
            scale in 0u32..=28,
        ) {
            for m in [mantissa, i128::from(small)] {
                let value = Decimal::from_i128_with_scale(m, scale);
                proptest::prop_assert_eq!(format_money(value), displayed(value));
            }
        }
    }
}

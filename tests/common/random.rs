//! Seeded random load: a small RNG, random dates and amounts of medical claims, and a sender that
//! feeds a Settle stream in bursts. The same seed gives the same claims and the same timing.

use std::ops::RangeInclusive;
use std::time::Duration;

use claims::proto::ClaimRequest;
use tokio::sync::mpsc;

use super::claim;

/// xorshift64: a few lines instead of a dependency; the same seed gives the same claims.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// In `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// In `range` (as [`XorShift::between`]).
    pub fn in_range(&mut self, range: &RangeInclusive<u64>) -> u64 {
        self.between(*range.start(), *range.end())
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Whole fen as an amount on the wire: 123456 -> "1234.56".
pub fn fen_text(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// A random date of `year` (days 1-28, so every month is valid).
pub fn date_in(rng: &mut XorShift, year: u32) -> String {
    format!("{year}-{:02}-{:02}", rng.between(1, 12), rng.between(1, 28))
}

/// How often something is drawn, from one roll of `below(n)`.
#[derive(Debug, Clone, Copy)]
pub enum Odds {
    /// When `below(n)` is 0.
    OneIn(u64),
    /// When `below(n)` is not 0.
    AllButOneIn(u64),
}

impl Odds {
    pub fn roll(self, rng: &mut XorShift) -> bool {
        match self {
            Odds::OneIn(n) => rng.below(n) == 0,
            Odds::AllButOneIn(n) => rng.below(n) != 0,
        }
    }
}

/// Lines or upstream payments: (class or kind in domain spelling, amount on the wire).
pub type Amounts = Vec<(&'static str, String)>;

/// The amounts of a random medical claim, in fen (percentages for the upstream shares).
pub struct MedicalAmounts {
    pub in_scope_inpatient: RangeInclusive<u64>,
    pub in_scope_other: RangeInclusive<u64>,
    /// BASIC pays this percentage of IN_SCOPE.
    pub basic_pct: RangeInclusive<u64>,
    /// CRITICAL_ILLNESS, when drawn, pays this percentage of what BASIC leaves of IN_SCOPE.
    pub critical: (Odds, RangeInclusive<u64>),
    pub b_self_pay: (Odds, RangeInclusive<u64>),
    pub out_of_catalogue: (Odds, RangeInclusive<u64>),
    pub non_compliant: (Odds, RangeInclusive<u64>),
}

/// Random lines and upstream payments of a medical claim, drawn in a fixed order: IN_SCOPE, the
/// BASIC share, CRITICAL_ILLNESS, then the B_SELF_PAY, OUT_OF_CATALOGUE and NON_COMPLIANT lines.
/// For [`crate::common::claim`].
pub fn medical_amounts(rng: &mut XorShift, inpatient: bool, amounts: &MedicalAmounts) -> (Amounts, Amounts) {
    let in_scope = if inpatient {
        rng.in_range(&amounts.in_scope_inpatient)
    } else {
        rng.in_range(&amounts.in_scope_other)
    };
    let basic = in_scope * rng.in_range(&amounts.basic_pct) / 100;
    let (odds, pct) = &amounts.critical;
    let critical = if odds.roll(rng) {
        (in_scope - basic) * rng.in_range(pct) / 100
    } else {
        0
    };
    let mut lines = vec![("IN_SCOPE", fen_text(in_scope))];
    for (class, (odds, range)) in [
        ("B_SELF_PAY", &amounts.b_self_pay),
        ("OUT_OF_CATALOGUE", &amounts.out_of_catalogue),
        ("NON_COMPLIANT", &amounts.non_compliant),
    ] {
        if odds.roll(rng) {
            lines.push((class, fen_text(rng.in_range(range))));
        }
    }
    let mut upstream = vec![("BASIC", fen_text(basic))];
    if critical > 0 {
        upstream.push(("CRITICAL_ILLNESS", fen_text(critical)));
    }
    (lines, upstream)
}

/// A random claim of 2024 for the 2024 test products ([`crate::common::products`]) of `member`:
/// mostly inpatient, some outpatient and pharmacy, a few non-medical losses (education, disaster)
/// for the anti-poverty layer; the medical amounts from `amounts`.
pub fn random_claim_2024(rng: &mut XorShift, id: &str, member: &str, amounts: &MedicalAmounts) -> ClaimRequest {
    let hospital = *rng.pick(&["H1", "H2", "H3"]);
    let date = date_in(rng, 2024);
    let roll = rng.below(100);
    if roll < 8 {
        let cause = if roll < 4 {
            "EDUCATION"
        } else {
            *rng.pick(&["DISASTER", "ACCIDENT"])
        };
        let loss = fen_text(rng.between(50_000, 800_000));
        return claim(
            hospital,
            id,
            member,
            &date,
            "NON_MEDICAL",
            cause,
            &[("OTHER_LOSS", loss)],
            &[],
        );
    }
    medical_claim(rng, hospital, id, member, &date, roll, amounts)
}

/// A medical claim, chosen by `roll` (0 to 99): inpatient below 60, outpatient (general, chronic
/// or acute) up to 84, else pharmacy; of any cause but a non-medical one; the amounts from
/// `amounts`.
pub fn medical_claim(
    rng: &mut XorShift,
    hospital: &str,
    id: &str,
    member: &str,
    date: &str,
    roll: u64,
    amounts: &MedicalAmounts,
) -> ClaimRequest {
    let inpatient = roll < 60;
    let visit = match roll {
        0..=59 => "INPATIENT",
        60..=84 => *rng.pick(&["OUTPATIENT/GENERAL", "OUTPATIENT/CHRONIC", "OUTPATIENT/ACUTE"]),
        _ => "PHARMACY",
    };
    let cause = *rng.pick(&["", "ILLNESS", "ACCIDENT"]);
    let (lines, upstream) = medical_amounts(rng, inpatient, amounts);
    claim(hospital, id, member, date, visit, cause, &lines, &upstream)
}

/// Sends `claims` into a Settle stream in bursts of 1-8 with pauses of 0-2 ms drawn from `rng`, so
/// that concurrent streams overlap for the whole run and the writer's batches mix them.
pub async fn send_in_bursts(mut rng: XorShift, claims: Vec<ClaimRequest>, tx: mpsc::Sender<ClaimRequest>) {
    let mut burst = 0;
    for c in claims {
        if burst == 0 {
            burst = rng.between(1, 8);
            tokio::time::sleep(Duration::from_micros(rng.below(2_000))).await;
        }
        burst -= 1;
        tx.send(c).await.expect("the stream takes the claim");
    }
}

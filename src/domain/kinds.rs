//! The closed vocabularies of ADJUDICATION.md, spelled as there (`DIBAO`, `IN_SCOPE`, ...).

use std::fmt;
use std::str::FromStr;

/// Declares a fieldless enum with its canonical spellings, `as_str`, `ALL`, `Display` and `FromStr`.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The accepted spellings, for error messages.
            pub fn expected() -> String {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                names.join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("unknown value {text:?}, expected one of {}", Self::expected())),
                }
            }
        }
    };
}

vocabulary! {
    /// What kind of scheme a product is.
    ProductKind {
        SupplementaryMedical => "SUPPLEMENTARY_MEDICAL",
        AntiPoverty => "ANTI_POVERTY",
        MedicalAssistance => "MEDICAL_ASSISTANCE",
        InclusiveCommercial => "INCLUSIVE_COMMERCIAL",
        Catastrophe => "CATASTROPHE",
        TemporaryAssistance => "TEMPORARY_ASSISTANCE",
    }
}

vocabulary! {
    /// A member's assistance category (dynamic management: it may change during the year).
    Category {
        Destitute => "DESTITUTE",
        Dibao => "DIBAO",
        DibaoMarginal => "DIBAO_MARGINAL",
        Orphan => "ORPHAN",
        SevereDisability => "SEVERE_DISABILITY",
        UnstableExit => "UNSTABLE_EXIT",
        AtRisk => "AT_RISK",
        SuddenHardship => "SUDDEN_HARDSHIP",
        General => "GENERAL",
    }
}

vocabulary! {
    VisitKind {
        Inpatient => "INPATIENT",
        Outpatient => "OUTPATIENT",
        Pharmacy => "PHARMACY",
        NonMedical => "NON_MEDICAL",
    }
}

vocabulary! {
    OutpatientKind {
        General => "GENERAL",
        Acute => "ACUTE",
        Chronic => "CHRONIC",
        Specified => "SPECIFIED",
        Accident => "ACCIDENT",
    }
}

vocabulary! {
    Cause {
        Illness => "ILLNESS",
        Accident => "ACCIDENT",
        Disaster => "DISASTER",
        Education => "EDUCATION",
    }
}

vocabulary! {
    /// The class of a line item's cost. The order of the variants is the order in which a layer's
    /// payout comes off the burden (step 6 of ADJUDICATION.md).
    ExpenseClass {
        InScope => "IN_SCOPE",
        BSelfPay => "B_SELF_PAY",
        OutOfCatalogue => "OUT_OF_CATALOGUE",
        OtherLoss => "OTHER_LOSS",
        NonCompliant => "NON_COMPLIANT",
    }
}

impl ExpenseClass {
    /// The classes a benefit may cover; `NON_COMPLIANT` is paid by no layer.
    pub const COVERABLE: [ExpenseClass; 4] = [
        ExpenseClass::InScope,
        ExpenseClass::BSelfPay,
        ExpenseClass::OutOfCatalogue,
        ExpenseClass::OtherLoss,
    ];

    /// Index into per-class arrays of the coverable classes.
    pub fn coverable_index(self) -> Option<usize> {
        match self {
            ExpenseClass::InScope => Some(0),
            ExpenseClass::BSelfPay => Some(1),
            ExpenseClass::OutOfCatalogue => Some(2),
            ExpenseClass::OtherLoss => Some(3),
            ExpenseClass::NonCompliant => None,
        }
    }
}

vocabulary! {
    DeductibleBasis {
        Year => "YEAR",
        Claim => "CLAIM",
    }
}

vocabulary! {
    /// Funds outside this service that paid before it, as settled by the national platform.
    UpstreamKind {
        Basic => "BASIC",
        CriticalIllness => "CRITICAL_ILLNESS",
    }
}

vocabulary! {
    /// Why a layer paid what it paid (or nothing).
    Reason {
        NotEnrolled => "NOT_ENROLLED",
        CategoryNotEligible => "CATEGORY_NOT_ELIGIBLE",
        FacilityNotDesignated => "FACILITY_NOT_DESIGNATED",
        NoMatchingBenefit => "NO_MATCHING_BENEFIT",
        Deductible => "DEDUCTIBLE",
        CapPerClaim => "CAP_PER_CLAIM",
        CapBenefitAnnual => "CAP_BENEFIT_ANNUAL",
        CapProductAnnual => "CAP_PRODUCT_ANNUAL",
        CapAggregate => "CAP_AGGREGATE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for c in Category::ALL {
            assert_eq!(c.as_str().parse::<Category>(), Ok(*c));
        }
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(*r));
        }
        let err = "dibao".parse::<Category>().unwrap_err();
        assert!(err.contains("unknown value \"dibao\"") && err.contains("DIBAO_MARGINAL"));
    }

    #[test]
    fn coverable_order_is_the_payout_order() {
        let idx: Vec<_> = ExpenseClass::COVERABLE
            .iter()
            .filter_map(|c| c.coverable_index())
            .collect();
        assert_eq!(idx, vec![0, 1, 2, 3]);
    }
}

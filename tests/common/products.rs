//! The 2024 test products: the Cixi 2022 cascade of examples/terms (medical assistance,
//! major-illness top-up, Tianyi Yongning Bao, burden stop-loss) and Zhongning's anti-poverty
//! insurance, moved to 2024 and given tight caps: per claim, per benefit and per product for each
//! member, and aggregate caps. A test names its own copies (a product code prefix and a name) and
//! chooses the aggregate caps.

/// The aggregate caps of the products that have one.
#[derive(Debug, Clone, Copy)]
pub struct AggregateCaps<'a> {
    pub topup: &'a str,
    pub yongning: &'a str,
    pub anti_poverty: &'a str,
}

/// The TOML texts of the 2024 test products.
#[derive(Debug, Clone)]
pub struct Products2024 {
    pub assistance: String,
    pub topup: String,
    pub yongning: String,
    pub stop_loss: String,
    pub anti_poverty: String,
}

/// The 2024 test products with codes `<prefix>-assistance`, `<prefix>-topup`, `<prefix>-yongning`,
/// `<prefix>-stop-loss` and `<prefix>-anti-poverty`, named "... (`<test>`)", with these aggregate
/// caps.
pub fn products_2024(prefix: &str, test: &str, aggregate_caps: AggregateCaps<'_>) -> Products2024 {
    let render = |template: &str, aggregate_cap: &str| {
        template
            .replace("$prefix", prefix)
            .replace("$test", test)
            .replace("$aggregate_cap", aggregate_cap)
    };
    Products2024 {
        assistance: render(ASSISTANCE, ""),
        topup: render(TOPUP, aggregate_caps.topup),
        yongning: render(YONGNING, aggregate_caps.yongning),
        stop_loss: render(STOP_LOSS, ""),
        anti_poverty: render(ANTI_POVERTY, aggregate_caps.anti_poverty),
    }
}

/// examples/terms/cixi-medical-assistance_2022-01-01.toml moved to 2024, with a per-claim cap per
/// benefit, an inpatient annual cap and a product annual cap below the sum of the benefit caps.
const ASSISTANCE: &str = r#"
[product]
code = "$prefix-assistance"
name = "Medical assistance ($test)"
kind = "MEDICAL_ASSISTANCE"
layer_order = 10
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "0.00"
eligible_categories = ["DESTITUTE", "DIBAO", "DIBAO_MARGINAL"]
annual_cap = "5000.00"

[[benefit]]
code = "inpatient"
visit_kinds = ["INPATIENT"]
covers = ["IN_SCOPE"]
deductible = "0"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "0.70" }]
per_claim_cap = "1500.00"
annual_cap = "4000.00"
by_category.DIBAO = { bands = [{ from = "0", ratio = "0.80" }] }
by_category.DESTITUTE = { bands = [{ from = "0", ratio = "1.00" }], annual_cap = "4500.00" }

[[benefit]]
code = "outpatient"
visit_kinds = ["OUTPATIENT", "PHARMACY"]
covers = ["IN_SCOPE"]
deductible = "0"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "0.70" }]
per_claim_cap = "300.00"
annual_cap = "1200.00"
by_category.DESTITUTE = { bands = [{ from = "0", ratio = "1.00" }] }
"#;

/// examples/terms/cixi-major-illness-topup_2022-01-01.toml moved to 2024, with a lower yearly
/// deductible, caps, a premium and an aggregate cap.
const TOPUP: &str = r#"
[product]
code = "$prefix-topup"
name = "Major-illness top-up ($test)"
kind = "SUPPLEMENTARY_MEDICAL"
layer_order = 20
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "30.00"
eligible_categories = ["DESTITUTE", "DIBAO", "DIBAO_MARGINAL"]
aggregate_cap = "$aggregate_cap"

[[benefit]]
code = "topup"
visit_kinds = ["INPATIENT", "OUTPATIENT", "PHARMACY"]
covers = ["IN_SCOPE"]
deductible = "2000.00"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "1.00" }]
per_claim_cap = "2000.00"
annual_cap = "6000.00"
"#;

/// examples/terms/cixi-tianyi-yongning-bao_2022-01-01.toml moved to 2024, also covering B_SELF_PAY,
/// two designated hospitals only, bands in the thousands, a product annual cap below the benefit's
/// and an aggregate cap.
const YONGNING: &str = r#"
[product]
code = "$prefix-yongning"
name = "Inclusive commercial supplement ($test)"
kind = "INCLUSIVE_COMMERCIAL"
layer_order = 30
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "50.00"
eligible_categories = ["DESTITUTE", "DIBAO", "DIBAO_MARGINAL"]
designated_hospitals = ["H1", "H2"]
annual_cap = "2800.00"
aggregate_cap = "$aggregate_cap"

[[benefit]]
code = "beyond-catalogue"
visit_kinds = ["INPATIENT", "OUTPATIENT", "PHARMACY"]
covers = ["B_SELF_PAY", "OUT_OF_CATALOGUE"]
deductible = "0"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "0.20" }, { from = "2000.00", ratio = "0.50" }, { from = "5000.00", ratio = "0.80" }]
per_claim_cap = "800.00"
annual_cap = "3000.00"
"#;

/// examples/terms/cixi-burden-stop-loss_2022-01-01.toml moved to 2024, with a lower deductible and
/// caps.
const STOP_LOSS: &str = r#"
[product]
code = "$prefix-stop-loss"
name = "Burden stop-loss ($test)"
kind = "MEDICAL_ASSISTANCE"
layer_order = 40
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "0.00"
eligible_categories = ["DESTITUTE", "DIBAO"]

[[benefit]]
code = "stop-loss"
visit_kinds = ["INPATIENT", "OUTPATIENT", "PHARMACY"]
covers = ["IN_SCOPE", "B_SELF_PAY", "OUT_OF_CATALOGUE"]
deductible = "20000.00"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "1.00" }]
per_claim_cap = "3000.00"
annual_cap = "5000.00"
"#;

/// examples/terms/zhongning-anti-poverty_2020-04-26.toml moved to 2024, with smaller deductibles,
/// per-claim and annual caps and an aggregate cap.
const ANTI_POVERTY: &str = r#"
[product]
code = "$prefix-anti-poverty"
name = "Anti-poverty insurance ($test)"
kind = "ANTI_POVERTY"
layer_order = 50
period_start = "2024-01-01"
period_end = "2024-12-31"
premium_per_member = "60.00"
eligible_categories = ["AT_RISK", "UNSTABLE_EXIT"]
aggregate_cap = "$aggregate_cap"

[[benefit]]
code = "illness"
visit_kinds = ["INPATIENT", "OUTPATIENT", "PHARMACY"]
causes = ["ILLNESS", "ACCIDENT", "DISASTER"]
covers = ["IN_SCOPE", "B_SELF_PAY", "OUT_OF_CATALOGUE"]
deductible = "3000.00"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "0.50" }, { from = "5000.00", ratio = "0.60" }, { from = "10000.00", ratio = "0.70" }]
per_claim_cap = "2500.00"
annual_cap = "8000.00"

[[benefit]]
code = "education"
visit_kinds = ["NON_MEDICAL"]
causes = ["EDUCATION"]
covers = ["OTHER_LOSS"]
deductible = "1000.00"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "0.50" }]
annual_cap = "1500.00"

[[benefit]]
code = "disaster"
visit_kinds = ["NON_MEDICAL"]
causes = ["DISASTER", "ACCIDENT"]
covers = ["OTHER_LOSS"]
deductible = "2000.00"
deductible_basis = "YEAR"
bands = [{ from = "0", ratio = "0.60" }]
annual_cap = "6000.00"
"#;

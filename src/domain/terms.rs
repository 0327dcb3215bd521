//! Product terms: the TOML format of ADJUDICATION.md, parsed into types that cannot be wrong.
//!
//! Parsing walks the TOML tree by hand instead of deriving `Deserialize`, because serde stops at the
//! first problem while a scheme office fixing a file wants every problem, each with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use time::Date;
use toml::{Table, Value};

use super::error::FieldErrors;
use super::ids::{BenefitCode, HospitalId, ProductCode};
use super::kinds::{Category, Cause, DeductibleBasis, ExpenseClass, OutpatientKind, ProductKind, VisitKind};
use super::money::{Money, Ratio};

/// The longest terms file accepted, in bytes. Real files are a few kilobytes.
pub const TERMS_BYTES_MAX: usize = 256 * 1024;
/// Limits that keep one file's cost bounded.
pub const BENEFITS_MAX: usize = 64;
pub const BANDS_MAX: usize = 32;
pub const HOSPITALS_MAX: usize = 10_000;
pub const TEXT_LEN_MAX: usize = 256;

/// Inclusive range of dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub start: Date,
    pub end: Date,
}

impl Period {
    pub fn contains(&self, date: Date) -> bool {
        self.start <= date && date <= self.end
    }

    pub fn overlaps(&self, other: &Period) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", format_date(self.start), format_date(self.end))
    }
}

/// One product period: the key of every accumulator and loss-ratio figure.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeriodKey {
    pub product: ProductCode,
    pub start: Date,
}

impl fmt::Display for PeriodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.product, format_date(self.start))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    pub from: Money,
    pub ratio: Ratio,
}

/// The money rules of a benefit, for one category (the base rule with any `by_category` override
/// already merged in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenefitRule {
    pub deductible: Money,
    /// Non-empty, starting at 0, strictly increasing `from`.
    pub bands: Vec<Band>,
    pub per_claim_cap: Option<Money>,
    pub annual_cap: Option<Money>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Benefit {
    pub code: BenefitCode,
    pub visit_kinds: BTreeSet<VisitKind>,
    /// `None`: every outpatient kind.
    pub outpatient_kinds: Option<BTreeSet<OutpatientKind>>,
    /// `None`: every cause.
    pub causes: Option<BTreeSet<Cause>>,
    pub covers: BTreeSet<ExpenseClass>,
    pub deductible_basis: DeductibleBasis,
    pub rule: BenefitRule,
    pub by_category: BTreeMap<Category, BenefitRule>,
}

impl Benefit {
    /// The rule that applies to a member of `category`.
    pub fn rule_for(&self, category: Category) -> &BenefitRule {
        self.by_category.get(&category).unwrap_or(&self.rule)
    }

    pub fn matches(&self, visit: VisitKind, outpatient: OutpatientKind, cause: Cause) -> bool {
        self.visit_kinds.contains(&visit)
            && (visit != VisitKind::Outpatient
                || self.outpatient_kinds.as_ref().is_none_or(|k| k.contains(&outpatient)))
            && self.causes.as_ref().is_none_or(|c| c.contains(&cause))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub code: ProductCode,
    pub name: Option<String>,
    pub kind: ProductKind,
    pub insurer: Option<String>,
    pub layer_order: i64,
    pub period: Period,
    pub premium_per_member: Money,
    pub eligible_categories: BTreeSet<Category>,
    /// Empty: every hospital.
    pub designated_hospitals: BTreeSet<HospitalId>,
    pub annual_cap: Option<Money>,
    pub aggregate_cap: Option<Money>,
}

/// One product period's terms, valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub product: Product,
    pub benefits: Vec<Benefit>,
}

impl Terms {
    /// Parses and validates a terms file; on failure lists every problem by its path.
    pub fn from_toml(text: &str) -> Result<Terms, FieldErrors> {
        if text.len() > TERMS_BYTES_MAX {
            return Err(FieldErrors::single(
                "",
                format!("the file is {} bytes, the limit is {TERMS_BYTES_MAX}", text.len()),
            ));
        }
        let table: Table = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            FieldErrors::single("", format!("not valid TOML{at}: {}", e.message()))
        })?;
        let mut errors = FieldErrors::new();
        let mut r = Reader { errors: &mut errors };
        let terms = r.terms(&table);
        match terms {
            Some(terms) if errors.is_empty() => Ok(terms),
            _ => Err(errors),
        }
    }

    pub fn key(&self) -> PeriodKey {
        PeriodKey {
            product: self.product.code.clone(),
            start: self.product.period.start,
        }
    }

    /// The first benefit, in terms order, that matches the claim.
    pub fn benefit_for(&self, visit: VisitKind, outpatient: OutpatientKind, cause: Cause) -> Option<&Benefit> {
        self.benefits.iter().find(|b| b.matches(visit, outpatient, cause))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

pub fn parse_date(text: &str) -> Result<Date, String> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    if text.len() != 10 {
        return Err(format!("{text:?} is not a date YYYY-MM-DD"));
    }
    Date::parse(text, &format).map_err(|_| format!("{text:?} is not a date YYYY-MM-DD"))
}

/// `YYYY-MM-DD`, as `time`'s `[year]-[month]-[day]` writes it. Written digit by digit for the
/// years 0 to 9999: the store formats a few dozen dates a claim (service dates, layers' periods,
/// usage keys), and `time`'s general formatter cost several times as much.
pub fn format_date(date: Date) -> String {
    match u32::try_from(date.year()) {
        Ok(year) if year <= 9999 => {
            let digit = |d: u32| char::from_digit(d % 10, 10).unwrap_or('0');
            let (month, day) = (u32::from(u8::from(date.month())), u32::from(date.day()));
            let mut text = String::with_capacity(10);
            text.extend([year / 1000, year / 100, year / 10, year].map(digit));
            text.push('-');
            text.extend([month / 10, month].map(digit));
            text.push('-');
            text.extend([day / 10, day].map(digit));
            text
        }
        _ => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            date.format(&format).unwrap_or_else(|_| date.to_string())
        }
    }
}

/// Collects errors while reading one file.
struct Reader<'e> {
    errors: &'e mut FieldErrors,
}

impl Reader<'_> {
    fn unknown_fields(&mut self, table: &Table, path: &str, allowed: &[&str]) {
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                self.errors.push(
                    join(path, key),
                    format!("unknown field, expected one of {}", allowed.join(", ")),
                );
            }
        }
    }

    fn required<'t>(&mut self, table: &'t Table, path: &str, key: &str) -> Option<&'t Value> {
        let value = table.get(key);
        if value.is_none() {
            self.errors.push(join(path, key), "is required");
        }
        value
    }

    fn string(&mut self, value: &Value, field: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.errors
                    .push(field, format!("must be a string, not {}", type_name(other)));
                None
            }
        }
    }

    fn text(&mut self, table: &Table, path: &str, key: &str) -> Option<String> {
        let field = join(path, key);
        let text = self.string(table.get(key)?, &field)?;
        if text.chars().count() > TEXT_LEN_MAX {
            self.errors
                .push(field, format!("is longer than {TEXT_LEN_MAX} characters"));
            return None;
        }
        Some(text)
    }

    fn parsed<T>(&mut self, value: &Value, field: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let text = self.string(value, field)?;
        self.errors.check(field, parse(&text))
    }

    /// Money as a decimal string or a TOML integer; floats are refused because they are inexact.
    fn money(&mut self, value: &Value, field: &str) -> Option<Money> {
        match value {
            Value::Integer(i) => self.errors.check(field, Money::parse_terms(&i.to_string())),
            Value::Float(f) => {
                self.errors.push(
                    field,
                    format!("{f} is a float; write money as a decimal string such as \"{f:.2}\""),
                );
                None
            }
            other => self.parsed(other, field, Money::parse_terms),
        }
    }

    fn ratio(&mut self, value: &Value, field: &str) -> Option<Ratio> {
        match value {
            Value::Integer(i) => self.errors.check(field, Ratio::parse(&i.to_string())),
            Value::Float(f) => {
                self.errors.push(
                    field,
                    format!("{f} is a float; write ratios as a decimal string such as \"0.70\""),
                );
                None
            }
            other => self.parsed(other, field, Ratio::parse),
        }
    }

    fn opt_money(&mut self, table: &Table, path: &str, key: &str) -> Option<Option<Money>> {
        match table.get(key) {
            None => Some(None),
            Some(v) => self.money(v, &join(path, key)).map(Some),
        }
    }

    /// Dates as `"YYYY-MM-DD"` strings or TOML local dates.
    fn date(&mut self, table: &Table, path: &str, key: &str) -> Option<Date> {
        let field = join(path, key);
        match self.required(table, path, key)? {
            Value::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => {
                let d = dt.date?;
                self.errors
                    .check(field, parse_date(&format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)))
            }
            other => self.parsed(other, &field, parse_date),
        }
    }

    /// A list of distinct enum values.
    fn set<T: std::str::FromStr<Err = String> + Ord>(
        &mut self,
        value: &Value,
        field: &str,
        allow_empty: bool,
    ) -> Option<BTreeSet<T>> {
        let Value::Array(items) = value else {
            self.errors
                .push(field, format!("must be an array, not {}", type_name(value)));
            return None;
        };
        if items.is_empty() && !allow_empty {
            self.errors.push(field, "must not be empty");
            return None;
        }
        let mut set = BTreeSet::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            match self.parsed(item, &item_field, |s| s.parse::<T>()) {
                Some(v) => {
                    if !set.insert(v) {
                        self.errors.push(item_field, "is listed twice");
                        ok = false;
                    }
                }
                None => ok = false,
            }
        }
        ok.then_some(set)
    }

    fn terms(&mut self, table: &Table) -> Option<Terms> {
        self.unknown_fields(table, "", &["product", "benefit"]);
        let product = match self.required(table, "", "product") {
            Some(Value::Table(t)) => self.product(t),
            Some(other) => {
                self.errors
                    .push("product", format!("must be a table, not {}", type_name(other)));
                None
            }
            None => None,
        };
        let benefits = match self.required(table, "", "benefit") {
            Some(Value::Array(items)) => self.benefits(items, product.as_ref()),
            Some(other) => {
                self.errors.push(
                    "benefit",
                    format!("must be an array of tables ([[benefit]]), not {}", type_name(other)),
                );
                None
            }
            None => None,
        };
        Some(Terms {
            product: product?,
            benefits: benefits?,
        })
    }

    fn product(&mut self, t: &Table) -> Option<Product> {
        let p = "product";
        self.unknown_fields(
            t,
            p,
            &[
                "code",
                "name",
                "kind",
                "insurer",
                "layer_order",
                "period_start",
                "period_end",
                "premium_per_member",
                "eligible_categories",
                "designated_hospitals",
                "annual_cap",
                "aggregate_cap",
            ],
        );
        let code = self
            .required(t, p, "code")
            .and_then(|v| self.parsed(v, "product.code", ProductCode::parse));
        let name = self.text(t, p, "name");
        let insurer = self.text(t, p, "insurer");
        let kind = self
            .required(t, p, "kind")
            .and_then(|v| self.parsed(v, "product.kind", |s| s.parse::<ProductKind>()));
        let layer_order = match self.required(t, p, "layer_order") {
            Some(Value::Integer(i)) if (0..=1_000_000).contains(i) => Some(*i),
            Some(Value::Integer(i)) => {
                self.errors
                    .push("product.layer_order", format!("{i} is outside 0..=1000000"));
                None
            }
            Some(other) => {
                self.errors.push(
                    "product.layer_order",
                    format!("must be an integer, not {}", type_name(other)),
                );
                None
            }
            None => None,
        };
        let start = self.date(t, p, "period_start");
        let end = self.date(t, p, "period_end");
        let period = match (start, end) {
            (Some(start), Some(end)) if end < start => {
                self.errors.push(
                    "product.period_end",
                    format!("{} is before period_start {}", format_date(end), format_date(start)),
                );
                None
            }
            (Some(start), Some(end)) => Some(Period { start, end }),
            _ => None,
        };
        let premium = self
            .required(t, p, "premium_per_member")
            .and_then(|v| self.money(v, "product.premium_per_member"));
        let eligible = self
            .required(t, p, "eligible_categories")
            .and_then(|v| self.set::<Category>(v, "product.eligible_categories", false));
        let hospitals = match t.get("designated_hospitals") {
            None => Some(BTreeSet::new()),
            Some(Value::Array(items)) if items.len() > HOSPITALS_MAX => {
                self.errors.push(
                    "product.designated_hospitals",
                    format!("more than {HOSPITALS_MAX} hospitals"),
                );
                None
            }
            Some(v) => self.hospitals(v),
        };
        let annual_cap = self.opt_money(t, p, "annual_cap");
        let aggregate_cap = self.opt_money(t, p, "aggregate_cap");
        Some(Product {
            code: code?,
            name,
            kind: kind?,
            insurer,
            layer_order: layer_order?,
            period: period?,
            premium_per_member: premium?,
            eligible_categories: eligible?,
            designated_hospitals: hospitals?,
            annual_cap: annual_cap?,
            aggregate_cap: aggregate_cap?,
        })
    }

    fn hospitals(&mut self, value: &Value) -> Option<BTreeSet<HospitalId>> {
        let field = "product.designated_hospitals";
        let Value::Array(items) = value else {
            self.errors
                .push(field, format!("must be an array, not {}", type_name(value)));
            return None;
        };
        let mut set = BTreeSet::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            match self.parsed(item, &item_field, HospitalId::parse) {
                Some(h) if !set.insert(h.clone()) => {
                    self.errors.push(item_field, format!("{h} is listed twice"));
                    ok = false;
                }
                Some(_) => {}
                None => ok = false,
            }
        }
        ok.then_some(set)
    }

    fn benefits(&mut self, items: &[Value], product: Option<&Product>) -> Option<Vec<Benefit>> {
        if items.is_empty() {
            self.errors.push("benefit", "at least one benefit is required");
            return None;
        }
        if items.len() > BENEFITS_MAX {
            self.errors
                .push("benefit", format!("more than {BENEFITS_MAX} benefits"));
            return None;
        }
        let mut benefits = Vec::with_capacity(items.len());
        let mut codes: BTreeMap<BenefitCode, usize> = BTreeMap::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("benefit[{i}]");
            let Value::Table(t) = item else {
                self.errors
                    .push(path, format!("must be a table, not {}", type_name(item)));
                ok = false;
                continue;
            };
            match self.benefit(t, &path, product) {
                Some(b) => {
                    if let Some(first) = codes.insert(b.code.clone(), i) {
                        self.errors.push(
                            format!("{path}.code"),
                            format!("{} is already the code of benefit[{first}]", b.code),
                        );
                        ok = false;
                    }
                    benefits.push(b);
                }
                None => ok = false,
            }
        }
        ok.then_some(benefits)
    }

    fn benefit(&mut self, t: &Table, path: &str, product: Option<&Product>) -> Option<Benefit> {
        self.unknown_fields(
            t,
            path,
            &[
                "code",
                "visit_kinds",
                "outpatient_kinds",
                "causes",
                "covers",
                "deductible",
                "deductible_basis",
                "bands",
                "per_claim_cap",
                "annual_cap",
                "by_category",
            ],
        );
        let code = self
            .required(t, path, "code")
            .and_then(|v| self.parsed(v, &join(path, "code"), BenefitCode::parse));
        let visit_kinds = self
            .required(t, path, "visit_kinds")
            .and_then(|v| self.set::<VisitKind>(v, &join(path, "visit_kinds"), false));
        let outpatient_kinds = match t.get("outpatient_kinds") {
            None => Some(None),
            Some(v) => self
                .set::<OutpatientKind>(v, &join(path, "outpatient_kinds"), false)
                .map(Some),
        };
        let causes = match t.get("causes") {
            None => Some(None),
            Some(v) => self.set::<Cause>(v, &join(path, "causes"), false).map(Some),
        };
        let covers = self
            .required(t, path, "covers")
            .and_then(|v| self.set::<ExpenseClass>(v, &join(path, "covers"), false));
        if let Some(covers) = &covers {
            if covers.contains(&ExpenseClass::NonCompliant) {
                self.errors
                    .push(join(path, "covers"), "NON_COMPLIANT cost is never paid by any layer");
            }
        }
        let basis = match t.get("deductible_basis") {
            None => Some(DeductibleBasis::Year),
            Some(v) => self.parsed(v, &join(path, "deductible_basis"), |s| s.parse::<DeductibleBasis>()),
        };
        let rule = self.rule(t, path, None);
        let by_category = match t.get("by_category") {
            None => Some(BTreeMap::new()),
            Some(Value::Table(cats)) => self.overrides(cats, path, rule.as_ref(), product),
            Some(other) => {
                self.errors.push(
                    join(path, "by_category"),
                    format!("must be a table, not {}", type_name(other)),
                );
                None
            }
        };
        Some(Benefit {
            code: code?,
            visit_kinds: visit_kinds?,
            outpatient_kinds: outpatient_kinds?,
            causes: causes?,
            covers: covers?,
            deductible_basis: basis?,
            rule: rule?,
            by_category: by_category?,
        })
    }

    fn overrides(
        &mut self,
        cats: &Table,
        path: &str,
        base: Option<&BenefitRule>,
        product: Option<&Product>,
    ) -> Option<BTreeMap<Category, BenefitRule>> {
        let mut map = BTreeMap::new();
        let mut ok = true;
        for (name, value) in cats {
            let field = format!("{path}.by_category.{name}");
            let Some(category) = self.errors.check(&field, name.parse::<Category>()) else {
                ok = false;
                continue;
            };
            if let Some(product) = product {
                if !product.eligible_categories.contains(&category) {
                    self.errors.push(
                        &field,
                        format!("{category} is not in product.eligible_categories, so this override never applies"),
                    );
                    ok = false;
                }
            }
            let Value::Table(t) = value else {
                self.errors
                    .push(&field, format!("must be a table, not {}", type_name(value)));
                ok = false;
                continue;
            };
            self.unknown_fields(t, &field, &["deductible", "bands", "per_claim_cap", "annual_cap"]);
            match self.rule(t, &field, base) {
                Some(rule) => {
                    map.insert(category, rule);
                }
                None => ok = false,
            }
        }
        ok.then_some(map)
    }

    /// Reads the money rule of a benefit (`base` = None) or of an override, whose missing fields are
    /// taken from `base`.
    fn rule(&mut self, t: &Table, path: &str, base: Option<&BenefitRule>) -> Option<BenefitRule> {
        let deductible = match (t.get("deductible"), base) {
            (Some(v), _) => self.money(v, &join(path, "deductible")),
            (None, Some(b)) => Some(b.deductible),
            (None, None) => Some(Money::ZERO),
        };
        let bands = match (t.get("bands"), base) {
            (Some(v), _) => self.bands(v, &join(path, "bands")),
            (None, Some(b)) => Some(b.bands.clone()),
            (None, None) => self.required(t, path, "bands").and(None),
        };
        let per_claim_cap = match (t.get("per_claim_cap"), base) {
            (Some(v), _) => self.money(v, &join(path, "per_claim_cap")).map(Some),
            (None, b) => Some(b.and_then(|b| b.per_claim_cap)),
        };
        let annual_cap = match (t.get("annual_cap"), base) {
            (Some(v), _) => self.money(v, &join(path, "annual_cap")).map(Some),
            (None, b) => Some(b.and_then(|b| b.annual_cap)),
        };
        Some(BenefitRule {
            deductible: deductible?,
            bands: bands?,
            per_claim_cap: per_claim_cap?,
            annual_cap: annual_cap?,
        })
    }

    fn bands(&mut self, value: &Value, field: &str) -> Option<Vec<Band>> {
        let Value::Array(items) = value else {
            self.errors
                .push(field, format!("must be an array, not {}", type_name(value)));
            return None;
        };
        if items.is_empty() {
            self.errors.push(field, "must not be empty");
            return None;
        }
        if items.len() > BANDS_MAX {
            self.errors.push(field, format!("more than {BANDS_MAX} bands"));
            return None;
        }
        let mut bands: Vec<Band> = Vec::with_capacity(items.len());
        // The previous band's start, kept even when its ratio is bad, so every problem is listed.
        let mut previous_from: Option<Money> = None;
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("{field}[{i}]");
            let Value::Table(t) = item else {
                self.errors.push(
                    path,
                    format!("must be a table {{ from, ratio }}, not {}", type_name(item)),
                );
                ok = false;
                continue;
            };
            self.unknown_fields(t, &path, &["from", "ratio"]);
            let from = self
                .required(t, &path, "from")
                .and_then(|v| self.money(v, &join(&path, "from")));
            let ratio = self
                .required(t, &path, "ratio")
                .and_then(|v| self.ratio(v, &join(&path, "ratio")));
            if let Some(from) = from {
                if i == 0 && from != Money::ZERO {
                    self.errors
                        .push(join(&path, "from"), format!("{from}: the first band must start at 0"));
                    ok = false;
                }
                if let Some(prev) = previous_from {
                    if from <= prev {
                        self.errors.push(
                            join(&path, "from"),
                            format!("{from} is not above the previous band's from {prev}"),
                        );
                        ok = false;
                    }
                }
                previous_from = Some(from);
            }
            match (from, ratio) {
                (Some(from), Some(ratio)) => bands.push(Band { from, ratio }),
                _ => ok = false,
            }
        }
        ok.then_some(bands)
    }
}

/// Every product period known, each at its current terms version.
///
/// A product code may have several periods, which must not overlap. Applying terms for an existing
/// period makes a new version (the store keeps the old ones so that settlements can name theirs).
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    periods: BTreeMap<PeriodKey, Arc<VersionedTerms>>,
}

/// Terms with the version number the store gave them (1, 2, ... per product period).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedTerms {
    pub terms: Terms,
    pub version: u32,
}

/// What applying terms to a catalogue would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A period not seen before: version 1.
    NewPeriod,
    /// The period exists with other terms: the next version.
    NewVersion { version: u32 },
    /// The period exists with exactly these terms: nothing changes.
    Unchanged { version: u32 },
}

impl ApplyOutcome {
    pub fn version(self) -> u32 {
        match self {
            ApplyOutcome::NewPeriod => 1,
            ApplyOutcome::NewVersion { version } | ApplyOutcome::Unchanged { version } => version,
        }
    }
}

impl Catalogue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks that `terms` may join the catalogue and says what applying them would do, without
    /// changing anything. Refuses a period that overlaps another period of the same product code.
    pub fn check(&self, terms: &Terms) -> Result<ApplyOutcome, FieldErrors> {
        let key = terms.key();
        let mut errors = FieldErrors::new();
        for (other_key, other) in self.periods.range(
            PeriodKey {
                product: key.product.clone(),
                start: Date::MIN,
            }..,
        ) {
            if other_key.product != key.product {
                break;
            }
            let other_period = other.terms.product.period;
            if other_key.start == key.start && other_period.end != terms.product.period.end {
                errors.push(
                    "product.period_end",
                    format!(
                        "{} already has a period starting {} that ends {}; a period's dates cannot change",
                        key.product,
                        format_date(key.start),
                        format_date(other_period.end)
                    ),
                );
            } else if other_key.start != key.start && other_period.overlaps(&terms.product.period) {
                errors.push(
                    "product.period_start",
                    format!(
                        "{} overlaps period {} of {}",
                        terms.product.period, other_period, key.product
                    ),
                );
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(match self.periods.get(&key) {
            None => ApplyOutcome::NewPeriod,
            Some(current) if current.terms == *terms => ApplyOutcome::Unchanged {
                version: current.version,
            },
            Some(current) => ApplyOutcome::NewVersion {
                version: current.version + 1,
            },
        })
    }

    /// Checks and inserts terms as the period's current version.
    pub fn apply(&mut self, terms: Terms) -> Result<ApplyOutcome, FieldErrors> {
        let outcome = self.check(&terms)?;
        if !matches!(outcome, ApplyOutcome::Unchanged { .. }) {
            self.insert_version(terms, outcome.version());
        }
        Ok(outcome)
    }

    /// Inserts terms at a known version (as loaded from the store), replacing an older version.
    pub fn insert_version(&mut self, terms: Terms, version: u32) {
        self.periods
            .insert(terms.key(), Arc::new(VersionedTerms { terms, version }));
    }

    pub fn get(&self, key: &PeriodKey) -> Option<&Arc<VersionedTerms>> {
        self.periods.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<VersionedTerms>> {
        self.periods.values()
    }

    pub fn len(&self) -> usize {
        self.periods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.periods.is_empty()
    }

    /// The product period of `product` that contains `date`, if any.
    pub fn period_on(&self, product: &ProductCode, date: Date) -> Option<&Arc<VersionedTerms>> {
        self.periods
            .range(
                PeriodKey {
                    product: product.clone(),
                    start: Date::MIN,
                }..=PeriodKey {
                    product: product.clone(),
                    start: date,
                },
            )
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.terms.product.period.contains(date))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The hand-written format is `time`'s, for every date `time` holds (years -9999 to 9999),
        /// and reads back as the same date.
        #[test]
        fn format_date_writes_as_time_does(day in Date::MIN.to_julian_day()..=Date::MAX.to_julian_day()) {
            let date = Date::from_julian_day(day).unwrap();
            let format = time::macros::format_description!("[year]-[month]-[day]");
            prop_assert_eq!(format_date(date), date.format(&format).unwrap());
            if (0..=9999).contains(&date.year()) {
                prop_assert_eq!(parse_date(&format_date(date)), Ok(date));
            }
        }
    }
}

//! Reading settlements, terms and running totals back.

use std::str::FromStr;

use rust_decimal::Decimal;
use sqlx::{AnyPool, Row};

use super::db::{Cols, Db, Val};
use super::{corrupt, date_col, from_fen, layers_from_json, parse_reasons, period_key, Backend, Result};
use crate::domain::{Category, ClaimId, HospitalId, LossRatio, MemberId, PeriodKey, Settlement};

/// A settlement as stored, with its sequence number and reversal, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSettlement {
    pub settlement: Settlement,
    pub seq: i64,
    pub settled_at: String,
    pub reversed_at: Option<String>,
    /// The canonical claim (JSON of the claim draft) it settled.
    pub claim_json: String,
}

/// One stored terms version.
#[derive(Debug, Clone)]
pub struct TermsRow {
    pub product_code: String,
    pub period_start: String,
    pub version: u32,
    pub toml: String,
    pub applied_at: String,
}

/// Filters of `ListSettlements` and `ExportSettlements`.
#[derive(Debug, Clone, Default)]
pub struct SettlementFilter {
    pub from_date: Option<String>,
    pub to_date: Option<String>,
    pub hospital_id: Option<String>,
    pub product_code: Option<String>,
    pub include_reversed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettlementTotals {
    pub count: u64,
    pub total_cost: Decimal,
    pub upstream_total: Decimal,
    pub payout_total: Decimal,
    pub out_of_pocket: Decimal,
    pub product_payout: Decimal,
}

const SETTLEMENT_COLUMNS: &str = "s.seq AS seq, s.hospital_id AS hospital_id, s.claim_id AS claim_id, \
     s.member_id AS member_id, s.service_date AS service_date, s.category AS category, s.claim_json AS claim_json, \
     s.total_cost_fen AS total_cost_fen, s.upstream_fen AS upstream_fen, s.payout_fen AS payout_fen, \
     s.out_of_pocket_fen AS out_of_pocket_fen, s.reasons AS reasons, s.settled_at AS settled_at, \
     s.layers AS layers, r.reversed_at AS reversed_at";

fn settlement_row(row: &dyn Cols) -> Result<StoredSettlement> {
    let t = "settlements";
    let member_id = MemberId::parse(&row.text("member_id")?).map_err(|e| corrupt(t, e))?;
    let layers = layers_from_json(&row.text("layers")?)?;
    Ok(StoredSettlement {
        settlement: Settlement {
            claim_id: ClaimId::parse(&row.text("claim_id")?).map_err(|e| corrupt(t, e))?,
            hospital_id: HospitalId::parse(&row.text("hospital_id")?).map_err(|e| corrupt(t, e))?,
            changes: Settlement::changes_of(&member_id, &layers),
            member_id,
            service_date: date_col(&row.text("service_date")?, t)?,
            category: Category::from_str(&row.text("category")?).map_err(|e| corrupt(t, e))?,
            total_cost: from_fen(row.int("total_cost_fen")?),
            upstream_total: from_fen(row.int("upstream_fen")?),
            payout_total: from_fen(row.int("payout_fen")?),
            out_of_pocket: from_fen(row.int("out_of_pocket_fen")?),
            layers,
            reasons: parse_reasons(&row.text("reasons")?, t)?,
        },
        seq: row.int("seq")?,
        settled_at: row.text("settled_at")?,
        reversed_at: row.opt_text("reversed_at")?,
        claim_json: row.text("claim_json")?,
    })
}

pub(super) async fn settlement_by_key(
    db: &mut impl Db,
    hospital: &str,
    claim: &str,
) -> Result<Option<StoredSettlement>> {
    let sql = format!(
        "SELECT {SETTLEMENT_COLUMNS} FROM settlements s LEFT JOIN reversals r ON r.settlement_seq = s.seq \
         WHERE s.hospital_id = $1 AND s.claim_id = $2"
    );
    let stored = db
        .rows(&sql, vec![Val::Str(hospital), Val::Str(claim)], settlement_row)
        .await?;
    Ok(stored.into_iter().next())
}

/// The WHERE clause of a filter with its bound values, in order.
fn filter_sql(filter: &SettlementFilter, first_param: usize) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    let mut param = first_param;
    let mut push = |clause: &str, value: &str| {
        clauses.push(clause.replace('?', &format!("${param}")));
        values.push(value.to_owned());
        param += 1;
    };
    // Each date condition also names its month, which it implies (a text that is not less than
    // another has a 7-character prefix that is not less than the other's): the index is on the
    // month (migrations 0006).
    if let Some(v) = &filter.from_date {
        push("s.service_date >= ?", v);
        push("substr(s.service_date, 1, 7) >= substr(?, 1, 7)", v);
    }
    if let Some(v) = &filter.to_date {
        push("s.service_date <= ?", v);
        push("substr(s.service_date, 1, 7) <= substr(?, 1, 7)", v);
    }
    if let Some(v) = &filter.hospital_id {
        push("s.hospital_id = ?", v);
    }
    if let Some(v) = &filter.product_code {
        push(
            "EXISTS (SELECT 1 FROM settlement_layers l WHERE l.seq = s.seq AND l.product_code = ?)",
            v,
        );
    }
    if !filter.include_reversed {
        clauses.push("r.reversed_at IS NULL".into());
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" AND {}", clauses.join(" AND "))
    };
    (sql, values)
}

/// Every settlement matching `filter`, in number order, in one query on one connection: each goes
/// to `each` as it arrives, until `each` answers false (PostgreSQL's export, [`super::Store::export`]).
/// The query reads one snapshot, and PostgreSQL sorts its matches once. Stopped early, the
/// connection is closed rather than handed back with the rest of the rows unread.
pub(super) async fn each_settlement<F, Fut>(pool: &AnyPool, filter: &SettlementFilter, mut each: F) -> Result<()>
where
    F: FnMut(StoredSettlement) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use futures::TryStreamExt;
    let (where_sql, values) = filter_sql(filter, 1);
    let sql = format!(
        "SELECT {SETTLEMENT_COLUMNS} FROM settlements s LEFT JOIN reversals r ON r.settlement_seq = s.seq \
         WHERE 1 = 1{where_sql} ORDER BY s.seq"
    );
    let mut conn = pool.acquire().await?;
    let mut query = sqlx::query(&sql);
    for v in &values {
        query = query.bind(v.clone());
    }
    let mut stopped = false;
    {
        let mut rows = query.fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            if !each(settlement_row(&row)?).await {
                stopped = true;
                break;
            }
        }
    }
    if stopped {
        let _ = conn.close().await;
    }
    Ok(())
}

/// The most months of service dates a listing walks one by one ([`SettlementPages`]); a wider
/// range is read in one query.
const MONTHS_MAX: usize = 60;

/// The fewest settlements a month's read asks for ([`SettlementPages`]).
const MONTH_FETCH_MIN: usize = 16;

/// The months `YYYY-MM` from `from`'s to `to`'s (dates `YYYY-MM-DD`), in order; `None` when there
/// are more than [`MONTHS_MAX`] or a date is not of that form.
fn months(from: &str, to: &str) -> Option<Vec<String>> {
    let year_month = |date: &str| -> Option<(u32, u32)> {
        let year = date.get(0..4)?.parse().ok()?;
        let month = date.get(5..7)?.parse().ok()?;
        (1..=12).contains(&month).then_some((year, month))
    };
    let (mut year, mut month) = year_month(from)?;
    let last = year_month(to)?;
    let mut out = Vec::new();
    while (year, month) <= last {
        if out.len() == MONTHS_MAX {
            return None;
        }
        out.push(format!("{year:04}-{month:02}"));
        (year, month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    }
    Some(out)
}

/// Pages of a settlement listing, in sequence-number order, each read when asked for.
///
/// On SQLite, a listing between two dates is read a month of service dates at a time and the
/// months merged: the month index (migrations 0006) holds a month's settlements in sequence order,
/// so each month is a range read from where it stopped, the hospital and other conditions tested
/// on its rows. Read as one query, SQLite's planner took the settlements key index for a hospital
/// (every settlement of it, of any date) or the month index's whole range, and sorted what it
/// found by number again for every page: 30 to 40 s to export one hospital's month from 10,000,000
/// settlements (docs/benchmarks.md). Without both dates, on PostgreSQL, or over more than
/// [`MONTHS_MAX`] months, each page is one query from the last number on.
///
/// A month that returned fewer rows than asked is not read again: a settlement of it committed
/// later is left out, as it would be once the listing had passed its number. SQLite's one writer
/// commits in number order, so a month read again never returns a number below one already given.
#[derive(Debug)]
pub struct SettlementPages {
    query: PageQuery,
    plan: Plan,
}

/// The statement that reads a page of a listing, built once: [`list_sql`], or [`month_page_sql`]
/// for the month plan.
#[derive(Debug)]
struct PageQuery {
    pool: AnyPool,
    sql: String,
    /// The filter's values, bound after the month (month plan) and the number.
    values: Vec<String>,
}

impl PageQuery {
    /// Up to `limit` settlements after number `after` (of `month`, for the month plan), in number
    /// order.
    async fn run(&self, month: Option<&str>, after: i64, limit: usize) -> Result<Vec<StoredSettlement>> {
        let mut query = sqlx::query(&self.sql);
        if let Some(month) = month {
            query = query.bind(month.to_owned());
        }
        query = query.bind(after);
        for v in &self.values {
            query = query.bind(v.clone());
        }
        let rows = query
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| settlement_row(r)).collect()
    }
}

#[derive(Debug)]
enum Plan {
    /// One query a page, after this number.
    BySeq(i64),
    /// One cursor a month, merged.
    ByMonth(Vec<MonthCursor>),
}

#[derive(Debug)]
struct MonthCursor {
    /// `YYYY-MM`.
    month: String,
    /// The last number read of this month.
    after: i64,
    /// Read and not yet given out, in order.
    rows: std::collections::VecDeque<StoredSettlement>,
    /// Its last read returned fewer rows than asked.
    done: bool,
}

impl SettlementPages {
    pub(super) fn new(pool: AnyPool, backend: Backend, filter: &SettlementFilter, after_seq: i64) -> Self {
        let months = match (backend, &filter.from_date, &filter.to_date) {
            (Backend::Sqlite, Some(from), Some(to)) => months(from, to),
            _ => None,
        };
        let plan = match months {
            Some(months) => Plan::ByMonth(
                months
                    .into_iter()
                    .map(|month| MonthCursor {
                        month,
                        after: after_seq,
                        rows: Default::default(),
                        done: false,
                    })
                    .collect(),
            ),
            None => Plan::BySeq(after_seq),
        };
        let (sql, values) = match plan {
            Plan::BySeq(_) => list_sql(filter),
            Plan::ByMonth(_) => month_page_sql(filter),
        };
        SettlementPages {
            query: PageQuery { pool, sql, values },
            plan,
        }
    }

    /// The next `limit` settlements (fewer at the end; none after it).
    pub async fn next(&mut self, limit: i64) -> Result<Vec<StoredSettlement>> {
        let want = usize::try_from(limit).unwrap_or_default();
        match &mut self.plan {
            Plan::BySeq(after) => {
                let rows = self.query.run(None, *after, want).await?;
                if let Some(last) = rows.last() {
                    *after = last.seq;
                }
                Ok(rows)
            }
            Plan::ByMonth(cursors) => {
                // Each month's share of the page, so that a page over many months does not read
                // a whole page of each; a month that runs out is read again.
                let fetch = (want / cursors.len().max(1)).max(MONTH_FETCH_MIN).min(want);
                let mut out = Vec::with_capacity(want);
                while out.len() < want {
                    for cursor in cursors.iter_mut().filter(|c| c.rows.is_empty() && !c.done) {
                        let rows = self.query.run(Some(&cursor.month), cursor.after, fetch).await?;
                        cursor.done = rows.len() < fetch;
                        if let Some(last) = rows.last() {
                            cursor.after = last.seq;
                        }
                        cursor.rows.extend(rows);
                    }
                    let next = cursors
                        .iter_mut()
                        .filter_map(|c| Some((c.rows.front()?.seq, c)))
                        .min_by_key(|(seq, _)| *seq);
                    match next.and_then(|(_, c)| c.rows.pop_front()) {
                        Some(row) => out.push(row),
                        None => break,
                    }
                }
                Ok(out)
            }
        }
    }
}

/// A page of one month's settlements: the month `$1`, after number `$2`, the filter's values from
/// `$3`, then the limit.
fn month_page_sql(filter: &SettlementFilter) -> (String, Vec<String>) {
    let (where_sql, values) = filter_sql(filter, 3);
    let limit_param = values.len() + 3;
    let sql = format!(
        "SELECT {SETTLEMENT_COLUMNS} FROM settlements s INDEXED BY settlements_service_month \
         LEFT JOIN reversals r ON r.settlement_seq = s.seq \
         WHERE substr(s.service_date, 1, 7) = $1 AND s.seq > $2{where_sql} ORDER BY s.seq LIMIT ${limit_param}"
    );
    (sql, values)
}

/// A page of settlements after sequence number `$1`, the filter's values from `$2`, then the limit.
fn list_sql(filter: &SettlementFilter) -> (String, Vec<String>) {
    let (where_sql, values) = filter_sql(filter, 2);
    let limit_param = values.len() + 2;
    let sql = format!(
        "SELECT {SETTLEMENT_COLUMNS} FROM settlements s LEFT JOIN reversals r ON r.settlement_seq = s.seq \
         WHERE s.seq > $1{where_sql} ORDER BY s.seq LIMIT ${limit_param}"
    );
    (sql, values)
}

/// The filter's totals, its values from `$1`.
fn totals_sql(filter: &SettlementFilter) -> (String, Vec<String>) {
    let (where_sql, values) = filter_sql(filter, 1);
    let sql = format!(
        // PostgreSQL sums BIGINT as NUMERIC, which the Any driver does not read: hence the casts.
        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(s.total_cost_fen), 0) AS BIGINT) AS cost, \
         CAST(COALESCE(SUM(s.upstream_fen), 0) AS BIGINT) AS up, \
         CAST(COALESCE(SUM(s.payout_fen), 0) AS BIGINT) AS paid, \
         CAST(COALESCE(SUM(s.out_of_pocket_fen), 0) AS BIGINT) AS oop \
         FROM settlements s LEFT JOIN reversals r ON r.settlement_seq = s.seq WHERE 1 = 1{where_sql}"
    );
    (sql, values)
}

pub(super) async fn settlement_totals(pool: &AnyPool, filter: &SettlementFilter) -> Result<SettlementTotals> {
    let (sql, values) = totals_sql(filter);
    let mut query = sqlx::query(&sql);
    for v in &values {
        query = query.bind(v.clone());
    }
    let row = query.fetch_one(pool).await?;
    let mut totals = SettlementTotals {
        count: u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or_default(),
        total_cost: from_fen(row.try_get("cost")?),
        upstream_total: from_fen(row.try_get("up")?),
        payout_total: from_fen(row.try_get("paid")?),
        out_of_pocket: from_fen(row.try_get("oop")?),
        product_payout: Decimal::ZERO,
    };
    if let Some(code) = &filter.product_code {
        let (where_sql, values) = filter_sql(filter, 2);
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(l.payout_fen), 0) AS BIGINT) AS paid FROM settlement_layers l \
             JOIN settlements s ON s.seq = l.seq LEFT JOIN reversals r ON r.settlement_seq = s.seq \
             WHERE l.product_code = $1{where_sql}"
        );
        let mut query = sqlx::query(&sql).bind(code.clone());
        for v in &values {
            query = query.bind(v.clone());
        }
        totals.product_payout = from_fen(query.fetch_one(pool).await?.try_get("paid")?);
    }
    Ok(totals)
}

fn loss_ratio_row(row: &dyn Cols) -> Result<(PeriodKey, LossRatio, i64)> {
    let key = period_key(&row.text("product_code")?, &row.text("period_start")?, "product_totals")?;
    let figures = LossRatio {
        written_premium: from_fen(row.int("written_premium_fen")?),
        paid: from_fen(row.int("paid_fen")?),
        paid_claims: u64::try_from(row.int("paid_claims")?).map_err(|e| corrupt("product_totals", e.to_string()))?,
    };
    Ok((key, figures, row.int("enrolled_members")?))
}

const TOTALS_COLUMNS: &str = "product_code, period_start, written_premium_fen, enrolled_members, paid_fen, paid_claims";

pub(super) async fn loss_ratios(
    db: &mut impl Db,
    code: Option<&str>,
    start: Option<&str>,
) -> Result<Vec<(PeriodKey, LossRatio, i64)>> {
    let sql = format!(
        "SELECT {TOTALS_COLUMNS} FROM product_totals WHERE ($1 = '' OR product_code = $1) \
         AND ($2 = '' OR period_start = $2) ORDER BY product_code, period_start"
    );
    let values = vec![Val::Str(code.unwrap_or_default()), Val::Str(start.unwrap_or_default())];
    db.rows(&sql, values, loss_ratio_row).await
}

/// The running figures of the given product periods, in one query.
pub(super) async fn loss_ratios_of(
    db: &mut impl Db,
    backend: Backend,
    keys: &[&PeriodKey],
) -> Result<Vec<(PeriodKey, LossRatio, i64)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (sql, values) = super::product_totals_statement(backend, TOTALS_COLUMNS, keys);
    db.rows(&sql, values, loss_ratio_row).await
}

pub(super) async fn terms_rows(db: &mut impl Db, code: Option<&str>) -> Result<Vec<TermsRow>> {
    db.rows(
        "SELECT product_code, period_start, version, toml, applied_at FROM terms \
         WHERE ($1 = '' OR product_code = $1) ORDER BY product_code, period_start, version",
        vec![Val::Str(code.unwrap_or_default())],
        |row| {
            Ok(TermsRow {
                product_code: row.text("product_code")?,
                period_start: row.text("period_start")?,
                version: u32::try_from(row.int("version")?).map_err(|e| corrupt("terms", e.to_string()))?,
                toml: row.text("toml")?,
                applied_at: row.text("applied_at")?,
            })
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::{list_sql, month_page_sql, months, totals_sql, SettlementFilter, MONTHS_MAX};
    use sqlx::Row;

    #[test]
    fn months_run_from_the_first_dates_month_to_the_last_dates() {
        assert_eq!(months("2022-03-05", "2022-03-05").unwrap(), ["2022-03"]);
        assert_eq!(
            months("2021-11-30", "2022-02-01").unwrap(),
            ["2021-11", "2021-12", "2022-01", "2022-02"]
        );
        assert!(months("2022-04-01", "2022-03-31").unwrap().is_empty());
        assert_eq!(months("2020-01-01", "2024-12-31").unwrap().len(), MONTHS_MAX);
        assert_eq!(
            months("2020-01-01", "2025-01-01"),
            None,
            "one month more than walked one by one"
        );
        assert_eq!(months("2022-13-01", "2023-01-01"), None);
    }

    /// A value bound to a statement whose plan is asked for.
    enum Bind {
        Int(i64),
        Text(String),
    }

    /// SQLite's plan of `sql` (`EXPLAIN QUERY PLAN`), one line a step.
    async fn plan_of(pool: &sqlx::AnyPool, sql: &str, binds: Vec<Bind>) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query(&explain);
        for bind in binds {
            query = match bind {
                Bind::Int(v) => query.bind(v),
                Bind::Text(v) => query.bind(v),
            };
        }
        query
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>("detail").unwrap())
            .collect()
    }

    /// SQLite plans settlement lists and totals filtered by service dates through the month index
    /// (migrations 0006), not through a scan of every settlement. (A list from a date on, with no
    /// end, walks the sequence numbers from the page's start instead, as it did with the date
    /// index.)
    #[tokio::test]
    async fn date_filters_use_the_month_index() {
        let dir = std::env::temp_dir().join(format!("claims-rows-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = super::super::Store::connect(&format!("sqlite://{}/claims.db", dir.display()), 2)
            .await
            .unwrap();
        let dates = |from: Option<&str>, to: Option<&str>| SettlementFilter {
            from_date: from.map(Into::into),
            to_date: to.map(Into::into),
            ..Default::default()
        };
        let both = dates(Some("2022-04-01"), Some("2022-06-30"));
        let cases = [
            (list_sql(&both), true),
            (totals_sql(&both), false),
            (totals_sql(&dates(Some("2022-04-01"), None)), false),
            (totals_sql(&dates(None, Some("2021-12-31"))), false),
        ];
        for ((sql, values), paged) in cases {
            let values = values.into_iter().map(Bind::Text);
            let binds: Vec<Bind> = if paged {
                std::iter::once(Bind::Int(0))
                    .chain(values)
                    .chain([Bind::Int(100)])
                    .collect()
            } else {
                values.collect()
            };
            let plan = plan_of(&store.pool, &sql, binds).await;
            assert!(
                plan.iter().any(|d| d.contains("USING INDEX settlements_service_month")),
                "{sql}: {plan:?}"
            );
        }
        // A month's page is a range of the month index in number order, with no sort, whatever
        // else the filter names (a hospital alone would have SQLite take the key index).
        let filter = SettlementFilter {
            hospital_id: Some("H1".into()),
            product_code: Some("p".into()),
            ..dates(Some("2022-04-02"), Some("2022-04-30"))
        };
        let (sql, values) = month_page_sql(&filter);
        let binds = [Bind::Text("2022-04".into()), Bind::Int(0)]
            .into_iter()
            .chain(values.into_iter().map(Bind::Text))
            .chain([Bind::Int(100)])
            .collect();
        let plan = plan_of(&store.pool, &sql, binds).await;
        assert!(
            plan.iter()
                .any(|d| d.contains("USING INDEX settlements_service_month (<expr>=? AND rowid>?)")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|d| d.contains("TEMP B-TREE")), "{plan:?}");
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `MemberService`: roster import, category changes, member view with used amounts and room.

use std::str::FromStr;

use rust_decimal::Decimal;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{category_text, category_value, violations};
use super::error::{invalid, status};
use crate::domain::{
    format_date, format_money, parse_date, AccumulatorView, Category, FieldErrors, MemberId, Money, PeriodKey,
    ProductCode,
};
use crate::ledger::{EnrollRow, Ledger};
use crate::proto::{self, member_service_server::MemberService};

/// Roster rows sent to the ledger together: one transaction each.
const ENROLL_CHUNK_ROWS: usize = 1000;
/// The most rows one Enroll stream may carry (held in memory until the stream ends: ~200 bytes a
/// row).
const ENROLL_ROWS_MAX: u64 = 5_000_000;

/// Accepted roster rows from which an import refreshes the planner statistics of the member
/// tables (PostgreSQL; see `Store::refresh_statistics`).
const STATISTICS_AFTER_ROWS: u64 = 10_000;

pub struct MemberApi {
    ledger: Ledger,
}

impl MemberApi {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

fn parse_category(value: i32, field: &str, errors: &mut FieldErrors) -> Option<Category> {
    let text = category_text(value);
    if text.is_empty() {
        errors.push(field, "is required");
        return None;
    }
    errors.check(field, Category::from_str(&text))
}

/// Validates one roster row.
fn parse_row(row: &proto::EnrollmentRow) -> Result<EnrollRow, FieldErrors> {
    let mut e = FieldErrors::new();
    let member_id = e.check("member_id", MemberId::parse(&row.member_id));
    let category = match (row.category, row.effective_date.is_empty()) {
        (0, true) => None,
        (_, true) => {
            e.push("effective_date", "is required with a category");
            None
        }
        (_, false) => {
            let category = parse_category(row.category, "category", &mut e);
            let date = e.check("effective_date", parse_date(&row.effective_date));
            category.zip(date)
        }
    };
    let enrollment = match (row.product_code.is_empty(), row.period_start.is_empty()) {
        (true, true) => {
            if !row.premium.is_empty() {
                e.push("premium", "is only for a row that enrolls (product_code, period_start)");
            }
            None
        }
        (false, true) => {
            e.push("period_start", "is required with a product_code");
            None
        }
        (true, false) => {
            e.push("product_code", "is required with a period_start");
            None
        }
        (false, false) => {
            let product = e.check("product_code", ProductCode::parse(&row.product_code));
            let start = e.check("period_start", parse_date(&row.period_start));
            let premium = if row.premium.is_empty() {
                Some(None)
            } else {
                e.check("premium", Money::parse(&row.premium)).map(Some)
            };
            match (product, start, premium) {
                (Some(product), Some(start), Some(premium)) => Some((PeriodKey { product, start }, premium)),
                _ => None,
            }
        }
    };
    match member_id {
        Some(member_id) if e.is_empty() => Ok(EnrollRow {
            member_id,
            category,
            enrollment,
        }),
        _ => Err(e),
    }
}

fn row_error(row: u64, errors: &FieldErrors) -> proto::RowError {
    proto::RowError {
        row,
        violations: violations(errors),
    }
}

fn cap(name: &str, limit: Option<Money>, used: Decimal) -> Option<proto::CapRoom> {
    limit.map(|limit| proto::CapRoom {
        cap: name.to_owned(),
        limit: limit.to_string(),
        used: format_money(used),
        room: format_money((limit.decimal() - used).max(Decimal::ZERO)),
    })
}

#[tonic::async_trait]
impl MemberService for MemberApi {
    #[tracing::instrument(skip_all)]
    async fn enroll(
        &self,
        request: Request<Streaming<proto::EnrollmentRow>>,
    ) -> Result<Response<proto::EnrollSummary>, Status> {
        let mut incoming = request.into_inner();
        let mut summary = proto::EnrollSummary::default();
        // The whole roster is read before anything is written, so a stream that breaks (a refused
        // message, a cancelled import) writes nothing. Then it is stored in chunks, each one
        // transaction, so that claims settle between chunks of a large roster.
        let mut parsed_rows: Vec<(u64, EnrollRow)> = Vec::new();
        let mut row_number = 0u64;
        while let Some(next) = incoming.next().await {
            let row = next?;
            row_number += 1;
            if row_number > ENROLL_ROWS_MAX {
                return Err(Status::resource_exhausted(format!(
                    "a roster stream holds at most {ENROLL_ROWS_MAX} rows; split the file"
                )));
            }
            match parse_row(&row) {
                Ok(parsed) => parsed_rows.push((row_number, parsed)),
                Err(errors) => summary.errors.push(row_error(row_number, &errors)),
            }
        }
        let mut rows = parsed_rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<(u64, EnrollRow)> = rows.by_ref().take(ENROLL_CHUNK_ROWS).collect();
            let (numbers, parsed): (Vec<u64>, Vec<EnrollRow>) = chunk.into_iter().unzip();
            let counts: Vec<(bool, bool)> = parsed
                .iter()
                .map(|r| (r.enrollment.is_some(), r.category.is_some()))
                .collect();
            let results = self.ledger.enroll(parsed).await.map_err(|e| status(&e))?;
            for ((number, result), (enrolls, categorises)) in numbers.into_iter().zip(results).zip(counts) {
                match result {
                    Ok(()) => {
                        summary.rows_accepted += 1;
                        summary.enrollments += u64::from(enrolls);
                        summary.category_changes += u64::from(categorises);
                    }
                    Err(errors) => summary.errors.push(row_error(number, &errors)),
                }
            }
        }
        summary.rows = row_number;
        summary.errors.sort_by_key(|e| e.row);
        tracing::info!(rows = summary.rows, accepted = summary.rows_accepted, "roster imported");
        if summary.rows_accepted >= STATISTICS_AFTER_ROWS {
            // A large import changes the tables the writer reads for every claim; their planner
            // statistics are refreshed now rather than whenever autovacuum gets to it (or never,
            // where it is off), in the background: the import is committed already.
            self.ledger
                .store()
                .refresh_statistics_in_background(crate::store::StatisticsOf::Members);
        }
        Ok(Response::new(summary))
    }

    async fn set_category(
        &self,
        request: Request<proto::SetCategoryRequest>,
    ) -> Result<Response<proto::SetCategoryResponse>, Status> {
        let r = request.into_inner();
        let mut e = FieldErrors::new();
        let member = e.check("member_id", MemberId::parse(&r.member_id));
        let category = parse_category(r.category, "category", &mut e);
        let date = e.check("effective_date", parse_date(&r.effective_date));
        let (Some(member), Some(category), Some(date)) = (member, category, date) else {
            return Err(invalid(&e));
        };
        self.ledger
            .set_category(member, date, category)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(proto::SetCategoryResponse {}))
    }

    async fn get_member(&self, request: Request<proto::GetMemberRequest>) -> Result<Response<proto::Member>, Status> {
        let r = request.into_inner();
        let mut e = FieldErrors::new();
        let member_id = e.check("member_id", MemberId::parse(&r.member_id));
        let as_of = if r.as_of.is_empty() {
            Some(time::OffsetDateTime::now_utc().date())
        } else {
            e.check("as_of", parse_date(&r.as_of))
        };
        let (Some(member_id), Some(as_of)) = (member_id, as_of) else {
            return Err(invalid(&e));
        };
        let Some((member, acc)) = self
            .ledger
            .store()
            .member_snapshot(&member_id)
            .await
            .map_err(|e| status(&e.into()))?
        else {
            return Err(status(&crate::ledger::LedgerError::MemberNotFound));
        };
        let catalogue = self.ledger.catalogue();
        let category = member.categories.on(as_of);
        let mut enrollments = Vec::new();
        for (key, premium) in &member.enrollments {
            let Some(v) = catalogue.get(key) else { continue };
            let product = &v.terms.product;
            let paid = acc.member_paid(&member_id, key);
            let aggregate = acc.aggregate_paid(key);
            let caps = [
                cap("product_annual", product.annual_cap, paid),
                cap("aggregate", product.aggregate_cap, aggregate),
            ]
            .into_iter()
            .flatten()
            .collect();
            let benefits = v
                .terms
                .benefits
                .iter()
                .map(|b| {
                    let rule = b.rule_for(category);
                    let usage = acc.benefit_usage(&member_id, key, &b.code);
                    proto::BenefitUsage {
                        benefit_code: b.code.to_string(),
                        deductible: rule.deductible.to_string(),
                        deductible_used: format_money(usage.deductible_used),
                        band_position: format_money(usage.band_position),
                        paid: format_money(usage.paid),
                        caps: [
                            cap("per_claim", rule.per_claim_cap, Decimal::ZERO),
                            cap("benefit_annual", rule.annual_cap, usage.paid),
                        ]
                        .into_iter()
                        .flatten()
                        .collect(),
                    }
                })
                .collect();
            enrollments.push(proto::EnrollmentView {
                product_code: key.product.to_string(),
                period_start: format_date(key.start),
                period_end: format_date(product.period.end),
                premium: premium.to_string(),
                paid: format_money(paid),
                caps,
                benefits,
            });
        }
        Ok(Response::new(proto::Member {
            member_id: member_id.to_string(),
            category: category_value(category.as_str()).unwrap_or_default(),
            categories: member
                .categories
                .iter()
                .map(|(date, c)| proto::CategoryChange {
                    effective_date: format_date(date),
                    category: category_value(c.as_str()).unwrap_or_default(),
                })
                .collect(),
            enrollments,
        }))
    }
}

//! `TermsService`: apply, validate, list and get product terms.

use tonic::{Request, Response, Status};

use super::convert::{category_value, product_kind_value, violations};
use super::error::{invalid, status};
use crate::domain::{format_date, parse_date, ApplyOutcome, FieldErrors, Terms};
use crate::ledger::Ledger;
use crate::proto::{self, terms_service_server::TermsService};
use crate::store::TermsRow;

pub struct TermsApi {
    ledger: Ledger,
}

impl TermsApi {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

fn product_of(terms: &Terms, version: u32, applied_at: &str, toml: &str) -> proto::Product {
    let p = &terms.product;
    proto::Product {
        product_code: p.code.to_string(),
        name: p.name.clone().unwrap_or_default(),
        kind: product_kind_value(p.kind.as_str()).unwrap_or_default(),
        insurer: p.insurer.clone().unwrap_or_default(),
        layer_order: p.layer_order,
        period_start: format_date(p.period.start),
        period_end: format_date(p.period.end),
        version,
        premium_per_member: p.premium_per_member.to_string(),
        eligible_categories: p
            .eligible_categories
            .iter()
            .map(|c| category_value(c.as_str()).unwrap_or_default())
            .collect(),
        benefit_codes: terms.benefits.iter().map(|b| b.code.to_string()).collect(),
        applied_at: applied_at.to_owned(),
        toml: toml.to_owned(),
    }
}

fn product_of_row(row: &TermsRow) -> Result<proto::Product, Status> {
    let terms = Terms::from_toml(&row.toml).map_err(|e| Status::internal(format!("stored terms do not parse: {e}")))?;
    Ok(product_of(&terms, row.version, &row.applied_at, &row.toml))
}

#[tonic::async_trait]
impl TermsService for TermsApi {
    #[tracing::instrument(skip_all)]
    async fn apply_terms(
        &self,
        request: Request<proto::TermsText>,
    ) -> Result<Response<proto::ApplyTermsResponse>, Status> {
        let toml = request.into_inner().toml;
        let terms = Terms::from_toml(&toml).map_err(|e| invalid(&e))?;
        let (code, start, end) = (
            terms.product.code.to_string(),
            format_date(terms.product.period.start),
            format_date(terms.product.period.end),
        );
        let outcome = self.ledger.apply_terms(terms, toml).await.map_err(|e| status(&e))?;
        tracing::info!(product = %code, period_start = %start, version = outcome.version(), "terms applied");
        Ok(Response::new(proto::ApplyTermsResponse {
            product_code: code,
            period_start: start,
            period_end: end,
            version: outcome.version(),
            outcome: match outcome {
                ApplyOutcome::NewPeriod => proto::ApplyOutcome::NewPeriod,
                ApplyOutcome::NewVersion { .. } => proto::ApplyOutcome::NewVersion,
                ApplyOutcome::Unchanged { .. } => proto::ApplyOutcome::Unchanged,
            } as i32,
        }))
    }

    async fn validate_terms(
        &self,
        request: Request<proto::TermsText>,
    ) -> Result<Response<proto::ValidateTermsResponse>, Status> {
        let result = Terms::from_toml(&request.into_inner().toml)
            .and_then(|terms| self.ledger.catalogue().check(&terms).map(|_| ()));
        Ok(Response::new(match result {
            Ok(()) => proto::ValidateTermsResponse {
                valid: true,
                violations: Vec::new(),
            },
            Err(errors) => proto::ValidateTermsResponse {
                valid: false,
                violations: violations(&errors),
            },
        }))
    }

    async fn list_products(
        &self,
        _request: Request<proto::ListProductsRequest>,
    ) -> Result<Response<proto::ListProductsResponse>, Status> {
        let rows = self
            .ledger
            .store()
            .terms_rows(None)
            .await
            .map_err(|e| status(&e.into()))?;
        // The current (highest) version of each period, in code and period order.
        let mut products: Vec<proto::Product> = Vec::new();
        for row in &rows {
            let product = product_of_row(row)?;
            match products.last_mut() {
                Some(last)
                    if last.product_code == product.product_code && last.period_start == product.period_start =>
                {
                    *last = product
                }
                _ => products.push(product),
            }
        }
        Ok(Response::new(proto::ListProductsResponse { products }))
    }

    async fn get_product(
        &self,
        request: Request<proto::GetProductRequest>,
    ) -> Result<Response<proto::Product>, Status> {
        let r = request.into_inner();
        if !r.period_start.is_empty() {
            parse_date(&r.period_start).map_err(|e| invalid(&FieldErrors::single("period_start", e)))?;
        }
        let rows = self
            .ledger
            .store()
            .terms_rows(Some(&r.product_code))
            .await
            .map_err(|e| status(&e.into()))?;
        let today = format_date(time::OffsetDateTime::now_utc().date());
        let in_period = |row: &&TermsRow| {
            if r.period_start.is_empty() {
                true
            } else {
                row.period_start == r.period_start
            }
        };
        let mut candidates: Vec<&TermsRow> = rows.iter().filter(in_period).collect();
        if r.period_start.is_empty() {
            // The period in force today if any, or else the latest period.
            let current_start = candidates
                .iter()
                .filter(|row| row.period_start <= today)
                .map(|row| row.period_start.clone())
                .max()
                .or_else(|| candidates.iter().map(|row| row.period_start.clone()).max());
            candidates.retain(|row| Some(&row.period_start) == current_start.as_ref());
        }
        let chosen = if r.version == 0 {
            candidates.iter().max_by_key(|row| row.version)
        } else {
            candidates.iter().find(|row| row.version == r.version)
        };
        match chosen {
            Some(row) => Ok(Response::new(product_of_row(row)?)),
            None => Err(Status::not_found(format!("no terms for product {:?}", r.product_code))),
        }
    }
}

//! `ReportService`: loss ratios (read and watched) and settlement listings for reconciliation.

use std::collections::HashMap;
use std::pin::Pin;
use std::str::FromStr;

use futures::Stream;
use rust_decimal::Decimal;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::error::{invalid, status};
use super::settlement::stored_to_proto;
use crate::domain::{format_date, format_money, parse_date, FieldErrors, LossRatio, PeriodKey, ProductCode};
use crate::ledger::{Ledger, LossRatioEvent};
use crate::proto::{self, report_service_server::ReportService};
use crate::store::SettlementFilter;

const PAGE_SIZE_DEFAULT: u32 = 100;
const PAGE_SIZE_MAX: u32 = 1000;
/// Settlements an export holds ready for its caller.
const EXPORT_BUFFER: usize = 500;

pub struct ReportApi {
    ledger: Ledger,
    /// Becomes true when the server starts draining: open watches end then, so that a SIGTERM does
    /// not wait for streams that never finish on their own.
    draining: watch::Receiver<bool>,
}

impl ReportApi {
    pub fn new(ledger: Ledger, draining: watch::Receiver<bool>) -> Self {
        Self { ledger, draining }
    }

    fn loss_ratio_proto(
        &self,
        key: &PeriodKey,
        figures: &LossRatio,
        members: i64,
        threshold: Option<Decimal>,
    ) -> proto::LossRatio {
        let period_end = self
            .ledger
            .catalogue()
            .get(key)
            .map(|v| format_date(v.terms.product.period.end))
            .unwrap_or_default();
        proto::LossRatio {
            product_code: key.product.to_string(),
            period_start: format_date(key.start),
            period_end,
            written_premium: format_money(figures.written_premium),
            paid: format_money(figures.paid),
            paid_claims: figures.paid_claims,
            enrolled_members: u64::try_from(members).unwrap_or_default(),
            loss_ratio: figures.ratio().map(|r| format!("{r:.4}")).unwrap_or_default(),
            above_threshold: threshold.is_some_and(|t| is_above(figures, t)),
        }
    }

    async fn current(
        &self,
        r: &proto::LossRatioRequest,
        threshold: Option<Decimal>,
    ) -> Result<Vec<(PeriodKey, bool, proto::LossRatio)>, Status> {
        let rows = self
            .ledger
            .store()
            .loss_ratios(non_empty(&r.product_code), non_empty(&r.period_start))
            .await
            .map_err(|e| status(&e.into()))?;
        Ok(rows
            .iter()
            .map(|(k, f, m)| {
                let above = threshold.is_some_and(|t| is_above(f, t));
                (k.clone(), above, self.loss_ratio_proto(k, f, *m, threshold))
            })
            .collect())
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The alert threshold of a request: a non-negative loss ratio with at most four decimals.
fn alert_threshold(r: &proto::LossRatioRequest) -> Result<Option<Decimal>, Status> {
    if r.alert_above.is_empty() {
        return Ok(None);
    }
    match Decimal::from_str(&r.alert_above) {
        Ok(d) if d >= Decimal::ZERO && d.scale() <= 4 => Ok(Some(d)),
        _ => Err(invalid(&FieldErrors::single(
            "alert_above",
            format!("{:?} is not a loss ratio such as \"1.0000\" (100%)", r.alert_above),
        ))),
    }
}

/// Whether figures are at or above the threshold; a period without premium never is.
fn is_above(figures: &LossRatio, threshold: Decimal) -> bool {
    figures.ratio().is_some_and(|r| r >= threshold)
}

fn check_loss_ratio_request(r: &proto::LossRatioRequest) -> Result<(), Status> {
    let mut e = FieldErrors::new();
    if !r.product_code.is_empty() {
        e.check("product_code", ProductCode::parse(&r.product_code));
    }
    if !r.period_start.is_empty() {
        e.check("period_start", parse_date(&r.period_start));
    }
    e.into_result(()).map_err(|e| invalid(&e))
}

fn filter_of(r: &proto::ListSettlementsRequest) -> Result<SettlementFilter, Status> {
    let mut e = FieldErrors::new();
    let mut date = |field: &str, text: &str| {
        if text.is_empty() {
            None
        } else {
            e.check(field, parse_date(text)).map(format_date)
        }
    };
    let from_date = date("from_date", &r.from_date);
    let to_date = date("to_date", &r.to_date);
    if !r.product_code.is_empty() {
        e.check("product_code", ProductCode::parse(&r.product_code));
    }
    if r.page_size > PAGE_SIZE_MAX {
        e.push("page_size", format!("{} is above {PAGE_SIZE_MAX}", r.page_size));
    }
    e.into_result(SettlementFilter {
        from_date,
        to_date,
        hospital_id: non_empty(&r.hospital_id).map(str::to_owned),
        product_code: non_empty(&r.product_code).map(str::to_owned),
        include_reversed: r.include_reversed,
    })
    .map_err(|e| invalid(&e))
}

type LossRatioStream = Pin<Box<dyn Stream<Item = Result<proto::LossRatio, Status>> + Send>>;
type ExportStream = Pin<Box<dyn Stream<Item = Result<proto::StoredSettlement, Status>> + Send>>;

#[tonic::async_trait]
impl ReportService for ReportApi {
    type WatchLossRatioStream = LossRatioStream;
    type ExportSettlementsStream = ExportStream;

    async fn get_loss_ratio(
        &self,
        request: Request<proto::LossRatioRequest>,
    ) -> Result<Response<proto::LossRatioResponse>, Status> {
        let r = request.into_inner();
        check_loss_ratio_request(&r)?;
        let threshold = alert_threshold(&r)?;
        Ok(Response::new(proto::LossRatioResponse {
            ratios: self
                .current(&r, threshold)
                .await?
                .into_iter()
                .map(|(_, _, f)| f)
                .collect(),
        }))
    }

    async fn watch_loss_ratio(
        &self,
        request: Request<proto::LossRatioRequest>,
    ) -> Result<Response<LossRatioStream>, Status> {
        let r = request.into_inner();
        check_loss_ratio_request(&r)?;
        let threshold = alert_threshold(&r)?;
        // Subscribe before reading the current figures, so no change falls between the two.
        let mut events = self.ledger.watch_loss_ratio();
        let initial = self.current(&r, threshold).await?;
        let (tx, rx) = mpsc::channel(256);
        let api = ReportApi::new(self.ledger.clone(), self.draining.clone());
        let mut draining = self.draining.clone();
        tokio::spawn(async move {
            // With a threshold, only crossings are sent after the initial figures.
            let mut above: HashMap<PeriodKey, bool> = HashMap::new();
            for (key, is_above_now, figure) in initial {
                above.insert(key, is_above_now);
                if tx.send(Ok(figure)).await.is_err() {
                    return;
                }
            }
            let wanted = |e: &LossRatioEvent| {
                (r.product_code.is_empty() || e.key.product.as_str() == r.product_code)
                    && (r.period_start.is_empty() || format_date(e.key.start) == r.period_start)
            };
            loop {
                let received = tokio::select! {
                    received = events.recv() => received,
                    // The client went away: stop holding the ledger.
                    () = tx.closed() => return,
                    // Any change is the start of the drain (the only change ever sent); an error means
                    // the server is gone altogether.
                    _ = draining.changed() => {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down; watch again"))).await;
                        return;
                    }
                };
                let figures = match received {
                    Ok(event) if wanted(&event) => {
                        let now_above = threshold.is_some_and(|t| is_above(&event.figures, t));
                        let was_above = above.insert(event.key.clone(), now_above).unwrap_or(false);
                        if threshold.is_some() && now_above == was_above {
                            continue;
                        }
                        vec![api.loss_ratio_proto(&event.key, &event.figures, event.enrolled_members, threshold)]
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // This subscriber fell behind: send every current figure again.
                        match api.current(&r, threshold).await {
                            Ok(all) => all
                                .into_iter()
                                .map(|(key, now_above, figure)| {
                                    above.insert(key, now_above);
                                    figure
                                })
                                .collect(),
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for figure in figures {
                    if tx.send(Ok(figure)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_settlements(
        &self,
        request: Request<proto::ListSettlementsRequest>,
    ) -> Result<Response<proto::ListSettlementsResponse>, Status> {
        let r = request.into_inner();
        let filter = filter_of(&r)?;
        let after_seq: i64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| invalid(&FieldErrors::single("page_token", "is not a token this service gave")))?
        };
        let page_size = if r.page_size == 0 {
            PAGE_SIZE_DEFAULT
        } else {
            r.page_size
        };
        let store = self.ledger.store();
        // One row more than asked tells whether another page follows.
        let mut rows = store
            .list_settlements(&filter, after_seq, i64::from(page_size) + 1)
            .await
            .map_err(|e| status(&e.into()))?;
        let more = rows.len() > page_size as usize;
        rows.truncate(page_size as usize);
        let next_page_token = if more {
            rows.last().map(|s| s.seq.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let totals = store.settlement_totals(&filter).await.map_err(|e| status(&e.into()))?;
        Ok(Response::new(proto::ListSettlementsResponse {
            settlements: rows.iter().map(stored_to_proto).collect(),
            next_page_token,
            totals: Some(proto::SettlementTotals {
                count: totals.count,
                total_cost: format_money(totals.total_cost),
                upstream_total: format_money(totals.upstream_total),
                payout_total: format_money(totals.payout_total),
                out_of_pocket: format_money(totals.out_of_pocket),
                product_payout: format_money(totals.product_payout),
            }),
        }))
    }

    async fn export_settlements(
        &self,
        request: Request<proto::ListSettlementsRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let filter = filter_of(request.get_ref())?;
        let store = self.ledger.store().clone();
        let (tx, rx) = mpsc::channel(EXPORT_BUFFER);
        tokio::spawn(async move {
            let sent = store
                .export(&filter, |s| {
                    let tx = &tx;
                    async move { tx.send(Ok(stored_to_proto(&s))).await.is_ok() }
                })
                .await;
            if let Err(e) = sent {
                let _ = tx.send(Err(status(&e.into()))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

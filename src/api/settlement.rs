//! `SettlementService`: settle (stream and unary), preview, reverse, get.

use std::pin::Pin;
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{draft_from_request, settlement_to_proto};
use super::error::{detail, detail_of_fields, invalid, status};
use crate::domain::{Claim, ClaimId, FieldErrors, HospitalId};
use crate::ledger::{wait, Ledger, Pending, Response as LedgerResponse, Settled};
use crate::proto::{self, settlement_service_server::SettlementService};
use crate::store::StoredSettlement;

/// Claims of one stream queued at the ledger and not yet answered. Bounds the memory one stream can
/// hold; the reader stops taking requests while the replies lag this far behind.
const STREAM_IN_FLIGHT_MAX: usize = 1024;

pub struct SettlementApi {
    ledger: Ledger,
}

impl SettlementApi {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

pub fn stored_to_proto(s: &StoredSettlement) -> proto::StoredSettlement {
    proto::StoredSettlement {
        settlement: Some(settlement_to_proto(&s.settlement)),
        sequence: u64::try_from(s.seq).unwrap_or_default(),
        settled_at: s.settled_at.clone(),
        reversed: s.reversed_at.is_some(),
        reversed_at: s.reversed_at.clone().unwrap_or_default(),
    }
}

/// Parses a claim request into a valid claim, or the fields that are wrong. A service date after
/// tomorrow (UTC; the hospitals are at UTC+8) is refused: nobody is discharged in the future.
pub fn parse_claim(request: &proto::ClaimRequest) -> Result<Claim, FieldErrors> {
    let claim = Claim::parse(&draft_from_request(request))?;
    let tomorrow = time::OffsetDateTime::now_utc().date().next_day();
    if tomorrow.is_some_and(|t| claim.service_date > t) {
        return Err(FieldErrors::single("service_date", "is in the future"));
    }
    Ok(claim)
}

fn key(hospital_id: &str, claim_id: &str) -> Result<(HospitalId, ClaimId), Status> {
    let mut errors = FieldErrors::new();
    let hospital = errors.check("hospital_id", HospitalId::parse(hospital_id));
    let claim = errors.check("claim_id", ClaimId::parse(claim_id));
    match (hospital, claim) {
        (Some(h), Some(c)) if errors.is_empty() => Ok((h, c)),
        _ => Err(invalid(&errors)),
    }
}

/// One stream entry waiting for its reply, in request order.
enum InFlight {
    /// The request stream failed (a message the transport refused): sent after every earlier reply,
    /// and it ends the stream.
    Failed(Status),
    /// Boxed: a reply is far larger than a queued entry, and most entries are queued.
    Ready(Box<proto::SettlementReply>),
    Queued(String, Pending, Instant),
}

/// Counts a settle request by outcome and records how long it took, receipt to reply.
fn record(rpc: &'static str, outcome: &Result<Settled, Status>, received: Instant) {
    let outcome = match outcome {
        Ok(s) if s.replay => "replayed",
        Ok(_) => "settled",
        Err(status) => code_label(status.code()),
    };
    metrics::counter!("claims_settle_requests_total", "rpc" => rpc, "outcome" => outcome).increment(1);
    metrics::histogram!("claims_settle_seconds", "rpc" => rpc).record(received.elapsed().as_secs_f64());
}

fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Unavailable => "unavailable",
        _ => "other_error",
    }
}

fn reply_of(claim_id: String, answer: Result<Settled, Status>) -> proto::SettlementReply {
    match answer {
        Ok(settled) => proto::SettlementReply {
            claim_id,
            result: Some(proto::settlement_reply::Result::Settlement(stored_to_proto(
                &settled.stored,
            ))),
            replay: settled.replay,
        },
        Err(status) => proto::SettlementReply {
            claim_id,
            result: Some(proto::settlement_reply::Result::Error(detail(&status))),
            replay: false,
        },
    }
}

async fn settled(pending: Pending) -> Result<Settled, Status> {
    match wait(pending).await {
        Ok(LedgerResponse::Settled(s)) => Ok(s),
        Ok(_) => Err(Status::internal("the ledger answered a different request")),
        Err(e) => Err(status(&e)),
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<proto::SettlementReply, Status>> + Send>>;

#[tonic::async_trait]
impl SettlementService for SettlementApi {
    type SettleStream = ReplyStream;

    #[tracing::instrument(skip_all)]
    async fn settle(&self, request: Request<Streaming<proto::ClaimRequest>>) -> Result<Response<ReplyStream>, Status> {
        let mut incoming = request.into_inner();
        let (in_flight_tx, mut in_flight_rx) = mpsc::channel::<InFlight>(STREAM_IN_FLIGHT_MAX);
        let (out_tx, out_rx) = mpsc::channel(STREAM_IN_FLIGHT_MAX);
        let ledger = self.ledger.clone();

        // Reader: validates each claim and queues it at the ledger in stream order, without waiting
        // for earlier replies, so one stream keeps the writer's batches full.
        tokio::spawn(async move {
            while let Some(next) = incoming.next().await {
                let request = match next {
                    Ok(r) => r,
                    Err(status) => {
                        // A message the transport refused (too large, malformed) ends the stream,
                        // after the replies of the claims before it.
                        let _ = in_flight_tx.send(InFlight::Failed(status)).await;
                        break;
                    }
                };
                let received = Instant::now();
                let entry = match parse_claim(&request) {
                    Err(errors) => {
                        record("Settle", &Err(invalid(&errors)), received);
                        InFlight::Ready(Box::new(proto::SettlementReply {
                            claim_id: request.claim_id.clone(),
                            result: Some(proto::settlement_reply::Result::Error(detail_of_fields(&errors))),
                            replay: false,
                        }))
                    }
                    Ok(claim) => match ledger.enqueue_settle(claim).await {
                        Ok(pending) => InFlight::Queued(request.claim_id.clone(), pending, received),
                        Err(e) => {
                            let answer = Err(status(&e));
                            record("Settle", &answer, received);
                            InFlight::Ready(Box::new(reply_of(request.claim_id.clone(), answer)))
                        }
                    },
                };
                if in_flight_tx.send(entry).await.is_err() {
                    break;
                }
            }
        });

        // Replier: answers in request order as the ledger commits.
        tokio::spawn(async move {
            while let Some(entry) = in_flight_rx.recv().await {
                let reply = match entry {
                    InFlight::Failed(status) => {
                        let _ = out_tx.send(Err(status)).await;
                        break;
                    }
                    InFlight::Ready(reply) => *reply,
                    InFlight::Queued(claim_id, pending, received) => {
                        let answer = settled(pending).await;
                        record("Settle", &answer, received);
                        reply_of(claim_id, answer)
                    }
                };
                if out_tx.send(Ok(reply)).await.is_err() {
                    // The client went away; what was committed stays committed and replays on resubmission.
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    #[tracing::instrument(skip_all, fields(hospital_id = %request.get_ref().hospital_id, claim_id = %request.get_ref().claim_id))]
    async fn settle_one(
        &self,
        request: Request<proto::ClaimRequest>,
    ) -> Result<Response<proto::SettleResponse>, Status> {
        let received = Instant::now();
        let answer = match parse_claim(request.get_ref()) {
            Ok(claim) => self.ledger.settle(claim).await.map_err(|e| status(&e)),
            Err(errors) => Err(invalid(&errors)),
        };
        record("SettleOne", &answer, received);
        let settled = answer?;
        Ok(Response::new(proto::SettleResponse {
            settlement: Some(stored_to_proto(&settled.stored)),
            replay: settled.replay,
        }))
    }

    #[tracing::instrument(skip_all, fields(hospital_id = %request.get_ref().hospital_id, claim_id = %request.get_ref().claim_id))]
    async fn preview(&self, request: Request<proto::ClaimRequest>) -> Result<Response<proto::PreviewResponse>, Status> {
        let claim = parse_claim(request.get_ref()).map_err(|e| invalid(&e))?;
        let settlement = self.ledger.preview(&claim).await.map_err(|e| status(&e))?;
        Ok(Response::new(proto::PreviewResponse {
            settlement: Some(settlement_to_proto(&settlement)),
        }))
    }

    #[tracing::instrument(skip_all, fields(hospital_id = %request.get_ref().hospital_id, claim_id = %request.get_ref().claim_id))]
    async fn reverse(
        &self,
        request: Request<proto::ReverseRequest>,
    ) -> Result<Response<proto::ReverseResponse>, Status> {
        let r = request.into_inner();
        let (hospital, claim) = key(&r.hospital_id, &r.claim_id)?;
        let stored = self.ledger.reverse(hospital, claim).await.map_err(|e| status(&e))?;
        Ok(Response::new(proto::ReverseResponse {
            settlement: Some(stored_to_proto(&stored)),
        }))
    }

    #[tracing::instrument(skip_all, fields(hospital_id = %request.get_ref().hospital_id, claim_id = %request.get_ref().claim_id))]
    async fn get_settlement(
        &self,
        request: Request<proto::GetSettlementRequest>,
    ) -> Result<Response<proto::StoredSettlement>, Status> {
        let r = request.into_inner();
        let (hospital, claim) = key(&r.hospital_id, &r.claim_id)?;
        let stored = self
            .ledger
            .store()
            .get_settlement(hospital.as_str(), claim.as_str())
            .await
            .map_err(|e| status(&e.into()))?
            .ok_or_else(|| Status::not_found(format!("no settlement of claim {claim} of hospital {hospital}")))?;
        Ok(Response::new(stored_to_proto(&stored)))
    }
}

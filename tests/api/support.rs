//! Helpers of the API tests: reading replies, streams and error details, and the claims of the
//! worked examples of ADJUDICATION.md.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::time::Duration;

use claims::proto::{self, settlement_reply, ClaimRequest, LayerPayout, Settlement, SettlementReply, StoredSettlement};
use rust_decimal::Decimal;
use tokio_stream::StreamExt;
use tonic::{Code, Status};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_types::StatusExt;

use crate::common::*;

/// How long a test waits for any one message of a stream.
pub const STREAM_WAIT: Duration = Duration::from_secs(10);

/// The domain spelling of a reason number ("DEDUCTIBLE").
pub fn reason_name(value: i32) -> String {
    let reason = proto::Reason::try_from(value).unwrap_or_else(|_| panic!("unknown reason number {value}"));
    reason.as_str_name().trim_start_matches("REASON_").to_owned()
}

pub fn reason_names(values: &[i32]) -> Vec<String> {
    values.iter().map(|v| reason_name(*v)).collect()
}

pub fn category_name(value: i32) -> String {
    let category = proto::Category::try_from(value).unwrap_or_else(|_| panic!("unknown category number {value}"));
    category.as_str_name().trim_start_matches("CATEGORY_").to_owned()
}

/// The settlement of a stored settlement.
pub fn inner(stored: &StoredSettlement) -> &Settlement {
    stored
        .settlement
        .as_ref()
        .expect("a stored settlement carries its settlement")
}

/// The layer of `product` in a settlement.
pub fn layer<'s>(s: &'s Settlement, product: &str) -> &'s LayerPayout {
    s.layers
        .iter()
        .find(|l| l.product_code == product)
        .unwrap_or_else(|| panic!("no layer {product} in {:?}", s.layers))
}

/// Checks one layer: benefit, eligible, deductible applied, payout and reasons.
pub fn assert_layer(
    s: &Settlement,
    product: &str,
    benefit: &str,
    eligible: &str,
    deductible: &str,
    payout: &str,
    reasons: &[&str],
) {
    let l = layer(s, product);
    let got = (
        l.benefit_code.as_str(),
        l.eligible.as_str(),
        l.deductible_applied.as_str(),
        l.payout.as_str(),
        reason_names(&l.reasons),
    );
    let want = (
        benefit,
        eligible,
        deductible,
        payout,
        reasons.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>(),
    );
    assert_eq!(got, want, "claim {} layer {product}", s.claim_id);
}

/// Checks the totals of a settlement and that total = upstream + payouts + out of pocket.
pub fn assert_totals(s: &Settlement, total: &str, upstream: &str, payout: &str, out_of_pocket: &str) {
    assert_eq!(
        (
            s.total_cost.as_str(),
            s.upstream_total.as_str(),
            s.payout_total.as_str(),
            s.out_of_pocket.as_str()
        ),
        (total, upstream, payout, out_of_pocket),
        "totals of claim {}",
        s.claim_id
    );
    let layers: Decimal = s.layers.iter().map(|l| dec(&l.payout)).sum();
    assert_eq!(layers, dec(&s.payout_total), "layer payouts add up to the payout total");
    assert_eq!(
        dec(&s.total_cost),
        dec(&s.upstream_total) + dec(&s.payout_total) + dec(&s.out_of_pocket),
        "total cost = upstream + payouts + out of pocket"
    );
}

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not a decimal: {e}"))
}

/// Formats a decimal as the service does: two decimals.
pub fn money(d: Decimal) -> String {
    format!("{:.2}", d)
}

/// The fields named in the google.rpc.BadRequest of a status.
pub fn bad_request_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Checks that a call was refused with `code` and a BadRequest naming `field`.
pub fn assert_refused_with_field(status: &Status, code: Code, field: &str) {
    assert_eq!(status.code(), code, "code of {status:?}");
    let fields = bad_request_fields(status);
    assert!(
        fields.iter().any(|f| f == field),
        "the BadRequest names {field:?}; it names {fields:?} ({status:?})"
    );
}

/// Settles one claim with SettleOne; panics on an error.
pub async fn settle_one(app: &TestApp, request: ClaimRequest) -> (StoredSettlement, bool) {
    let id = request.claim_id.clone();
    let reply = app
        .settlements()
        .await
        .settle_one(request)
        .await
        .unwrap_or_else(|e| panic!("claim {id} settles: {e:?}"))
        .into_inner();
    (reply.settlement.expect("a reply carries the settlement"), reply.replay)
}

/// Sends `requests` over one Settle stream (all of them before reading) and reads every reply.
pub async fn settle_stream(app: &TestApp, requests: Vec<ClaimRequest>) -> Vec<SettlementReply> {
    let expected = requests.len();
    let mut client = app.settlements().await;
    let mut replies = client
        .settle(tokio_stream::iter(requests))
        .await
        .expect("the Settle stream opens")
        .into_inner();
    let mut out = Vec::with_capacity(expected);
    loop {
        let next = tokio::time::timeout(STREAM_WAIT, replies.message())
            .await
            .expect("a Settle reply in time");
        match next.expect("the Settle stream does not fail") {
            Some(reply) => out.push(reply),
            None => break,
        }
    }
    assert_eq!(out.len(), expected, "one reply per request");
    out
}

/// The settlement of a stream reply; panics on an in-band error.
pub fn reply_settlement(reply: &SettlementReply) -> &StoredSettlement {
    match &reply.result {
        Some(settlement_reply::Result::Settlement(s)) => s,
        other => panic!("claim {} did not settle: {other:?}", reply.claim_id),
    }
}

/// The in-band error of a stream reply; panics on a settlement.
pub fn reply_error(reply: &SettlementReply) -> &proto::ErrorDetail {
    match &reply.result {
        Some(settlement_reply::Result::Error(e)) => e,
        other => panic!("claim {} was expected to fail: {other:?}", reply.claim_id),
    }
}

/// GetSettlement by key.
pub async fn get_settlement(app: &TestApp, hospital: &str, claim_id: &str) -> Result<StoredSettlement, Status> {
    app.settlements()
        .await
        .get_settlement(proto::GetSettlementRequest {
            hospital_id: hospital.into(),
            claim_id: claim_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Reverse by key.
pub async fn reverse(app: &TestApp, hospital: &str, claim_id: &str) -> Result<StoredSettlement, Status> {
    app.settlements()
        .await
        .reverse(proto::ReverseRequest {
            hospital_id: hospital.into(),
            claim_id: claim_id.into(),
        })
        .await
        .map(|r| r.into_inner().settlement.expect("a reversal returns the settlement"))
}

/// GetMember as of a date.
pub async fn get_member(app: &TestApp, member: &str, as_of: &str) -> Result<proto::Member, Status> {
    app.members()
        .await
        .get_member(proto::GetMemberRequest {
            member_id: member.into(),
            as_of: as_of.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// SetCategory: `member` is `category` (domain spelling) from `date` on.
pub async fn change_category(app: &TestApp, member: &str, category: &str, date: &str) -> Result<(), Status> {
    app.members()
        .await
        .set_category(proto::SetCategoryRequest {
            member_id: member.into(),
            category: claims::api::convert::category_value(category).expect("category"),
            effective_date: date.into(),
        })
        .await
        .map(|_| ())
}

/// ApplyTerms of a TOML text; panics when the terms are refused.
pub async fn apply_terms_text(app: &TestApp, toml: &str) -> proto::ApplyTermsResponse {
    app.terms()
        .await
        .apply_terms(proto::TermsText { toml: toml.into() })
        .await
        .unwrap_or_else(|e| panic!("the terms apply: {e:?}"))
        .into_inner()
}

/// The loss ratio of one product period.
pub async fn loss_ratio(app: &TestApp, product: &str, period_start: &str) -> proto::LossRatio {
    let ratios = app
        .reports()
        .await
        .get_loss_ratio(proto::LossRatioRequest {
            product_code: product.into(),
            period_start: period_start.into(),
            ..Default::default()
        })
        .await
        .expect("GetLossRatio")
        .into_inner()
        .ratios;
    assert_eq!(ratios.len(), 1, "one product period: {ratios:?}");
    ratios.into_iter().next().expect("one ratio")
}

// Worked example A (Cixi 2022), member M1 enrolled DIBAO in the four products.

pub const MA: &str = "cixi-medical-assistance";
pub const TOPUP: &str = "cixi-major-illness-topup";
pub const TIANYI: &str = "cixi-tianyi-yongning-bao";
pub const STOP_LOSS: &str = "cixi-burden-stop-loss";
pub const CIXI_START: &str = "2022-01-01";

pub const ZN: &str = "zhongning-anti-poverty";
pub const ZN_START: &str = "2020-04-26";

pub async fn enroll_zhongning(app: &TestApp, member: &str) {
    let summary = enroll(app, vec![row(member, "AT_RISK", ZN_START, ZN, ZN_START)]).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!((summary.rows_accepted, summary.enrollments), (1, 1));
}

pub fn claim_z1(hospital: &str, id: &str) -> ClaimRequest {
    claim(
        hospital,
        id,
        "M2",
        "2020-06-01",
        "INPATIENT",
        "ACCIDENT",
        &[("IN_SCOPE", "60000.00"), ("OUT_OF_CATALOGUE", "9000.00")],
        &[("BASIC", "39000.00")],
    )
}

pub fn claim_z2(hospital: &str, id: &str) -> ClaimRequest {
    claim(
        hospital,
        id,
        "M2",
        "2020-08-01",
        "INPATIENT",
        "",
        &[("IN_SCOPE", "150000.00"), ("OUT_OF_CATALOGUE", "40000.00")],
        &[("BASIC", "90000.00"), ("CRITICAL_ILLNESS", "30000.00")],
    )
}

pub fn claim_education(hospital: &str, id: &str, date: &str, amount: &str) -> ClaimRequest {
    claim(
        hospital,
        id,
        "M2",
        date,
        "NON_MEDICAL",
        "EDUCATION",
        &[("OTHER_LOSS", amount)],
        &[],
    )
}

/// Changes a value in place and returns it.
pub trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

impl<T> Tap for T {}

/// The services that server reflection (v1) lists.
pub async fn reflected_services(app: &TestApp) -> Vec<String> {
    let mut reflection = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let response = tokio::time::timeout(STREAM_WAIT, responses.next())
        .await
        .expect("a reflection answer in time")
        .expect("an answer")
        .expect("no error");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

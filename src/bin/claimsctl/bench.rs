//! `bench`: drives a running `claimsd` and measures it. Loads a synthetic roster (members in the four
//! Cixi 2022 layers and the Zhongning 2020 anti-poverty product), generates a realistic claim mix from a
//! seed, and runs the Settle stream, `SettleOne`, `Preview` and, on a server started with `--bench`,
//! echo baselines of the same messages through `BenchService`, with the server's CPU time and peak
//! memory around every mode. On request (`--modes loss-ratio`, not in the default) it also measures
//! `ReportService.GetLossRatio` reads of one product period.
//!
//! The stream modes use [`crate::load::pipeline`], the closed loop of `claimsctl load`.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use claims::api::bench::{process_figures, CLOCK_TICKS_PER_SECOND};
use claims::domain::ClaimId;
use claims::proto::bench_service_client::BenchServiceClient;
use claims::proto::member_service_client::MemberServiceClient;
use claims::proto::report_service_client::ReportServiceClient;
use claims::proto::settlement_reply::Result as ReplyResult;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::terms_service_client::TermsServiceClient;
use claims::proto::{
    Category, Cause, ClaimRequest, EchoReply, EchoRequest, EnrollmentRow, ExpenseClass, LineItem, ListProductsRequest,
    LossRatioRequest, LossRatioResponse, OutpatientKind, ProcessStats, ProcessStatsRequest, Reason, SettleResponse,
    Settlement, SettlementReply, StoredSettlement, UpstreamKind, UpstreamPayment, VisitKind,
};
use indicatif::{ProgressBar, ProgressStyle};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use time::macros::date;
use time::Date;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::load::{check_in_order, percentile, pipeline};
use crate::show::{amount, code_name, status_text};
use crate::table::{Align, Table};
use crate::{chain, fail, rpc_error, Result, Server};

/// The products every bench member is enrolled in, as (code, period start), as in `examples/terms`.
pub const ZHONGNING: (&str, &str) = ("zhongning-anti-poverty", "2020-04-26");
pub const CIXI: [(&str, &str); 4] = [
    ("cixi-medical-assistance", "2022-01-01"),
    ("cixi-major-illness-topup", "2022-01-01"),
    ("cixi-tianyi-yongning-bao", "2022-01-01"),
    ("cixi-burden-stop-loss", "2022-01-01"),
];
/// The product period the loss-ratio mode reads: the layer most bench claims are settled against (four
/// medical claims in five fall in 2022), so that its figures move while the settling modes run.
pub const LOSS_RATIO_PERIOD: (&str, &str) = CIXI[0];
/// First days of the two periods; both are 365 days long.
const CIXI_START: Date = date!(2022 - 01 - 01);
const ZHONGNING_START: Date = date!(2020 - 04 - 26);
const PERIOD_DAYS: u64 = 365;

/// The heavy members (the first ones of the roster) and the share of all claims that are theirs, in
/// percent: with 20,000 claims a mode, each has about 40 claims a mode, so that caps bind.
const HEAVY_MEMBERS: u32 = 10;
const HEAVY_SHARE_PERCENT: u64 = 2;
/// Members per Enroll stream while loading the roster (five rows each).
const ROSTER_CHUNK_MEMBERS: u32 = 10_000;
/// Claims previewed to estimate reply sizes when an echo runs without its real mode.
const CALIBRATION_CLAIMS: usize = 200;
/// Roster rows are generated from this seed, not from `--seed`, so that `--skip-roster` fits any seed.
const ROSTER_SEED: u64 = 0x5EED_0FC1_C1C1;

/// What a bench run does (the command-line options, checked).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub members: u32,
    /// Claims per mode run.
    pub claims: u64,
    /// One stream mode run per value.
    pub streams: Vec<u32>,
    /// Connections per mode run; `None`: one per stream or concurrent caller.
    pub connections: Option<u32>,
    pub window: u32,
    /// One unary (and preview, and loss-ratio) mode run per value.
    pub concurrency: Vec<u32>,
    pub stream: bool,
    pub unary: bool,
    pub preview: bool,
    pub echo: bool,
    /// GetLossRatio calls (no claims; no echo baseline).
    pub loss_ratio: bool,
    pub seed: u64,
    pub skip_roster: bool,
    pub run_id: String,
    pub json: bool,
    pub quiet: bool,
}

// ---------------------------------------------------------------------------------------------------
// The synthetic workload.

/// SplitMix64: small, fast, and the same sequence for a seed on every machine.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// A generator for one item of a sequence, independent of every other item.
    fn for_item(seed: u64, salt: u64, item: u64) -> Self {
        let mut r = Rng(seed ^ salt.rotate_left(17));
        let base = r.next();
        Rng(base ^ item.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` when `hi < lo`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let span = hi.saturating_sub(lo).saturating_add(1);
        lo + self.next() % span
    }

    /// True with a chance of `percent` in 100.
    fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len().max(1) as u64) as usize]
    }
}

/// FNV-1a of a text: the salt of a claim set.
fn salt(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

pub fn member_id(index: u32) -> String {
    format!("BM{index:06}")
}

/// The five roster rows of member `index`: AT_RISK or UNSTABLE_EXIT from the start of the Zhongning
/// period and enrolled in it; DIBAO (60%), DIBAO_MARGINAL (25%) or DESTITUTE (15%) from 2022 and
/// enrolled in the four Cixi layers.
pub fn roster_rows(index: u32) -> [EnrollmentRow; 5] {
    let mut rng = Rng::for_item(ROSTER_SEED, 0, u64::from(index));
    let before = if rng.percent(50) {
        Category::AtRisk
    } else {
        Category::UnstableExit
    };
    let from_2022 = match rng.range(0, 99) {
        0..=59 => Category::Dibao,
        60..=84 => Category::DibaoMarginal,
        _ => Category::Destitute,
    };
    let row = |category: Option<(Category, &str)>, (product, start): (&str, &str)| EnrollmentRow {
        member_id: member_id(index),
        category: category.map_or(0, |(c, _)| c as i32),
        effective_date: category.map_or(String::new(), |(_, d)| d.to_owned()),
        product_code: product.to_owned(),
        period_start: start.to_owned(),
        premium: String::new(),
    };
    [
        row(Some((before, ZHONGNING.1)), ZHONGNING),
        row(Some((from_2022, CIXI[0].1)), CIXI[0]),
        row(None, CIXI[1]),
        row(None, CIXI[2]),
        row(None, CIXI[3]),
    ]
}

fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

fn day(start: Date, rng: &mut Rng) -> String {
    let d = start.saturating_add(time::Duration::days(rng.range(0, PERIOD_DAYS - 1) as i64));
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The claim mix: deterministic in the seed, the claim set's tag and the claim's position.
#[derive(Debug, Clone)]
pub struct Mix {
    pub seed: u64,
    pub members: u32,
    pub run_id: String,
}

impl Mix {
    /// The id of claim `k` of set `tag`: the run id keeps runs apart, the tag keeps modes apart.
    pub fn claim_id(&self, tag: &str, k: u64) -> String {
        format!("{}-{tag}-{k}", self.run_id)
    }

    /// Claim `k` of the set `tag`: 70% outpatient with 1 to 5 lines, 25% inpatient with 5 to 30 lines,
    /// 5% non-medical (education, disaster or accident loss). Medical claims fall in 2022 (the Cixi
    /// layers) four times in five, else in the Zhongning period; non-medical ones in the Zhongning period
    /// (only it has non-medical benefits). 2% of the claims are of the heavy members.
    pub fn claim(&self, tag: &str, k: u64) -> ClaimRequest {
        let mut rng = Rng::for_item(self.seed, salt(tag), k);
        let members = self.members.max(1);
        let heavy = HEAVY_MEMBERS.min(members);
        let member = if members <= heavy || rng.percent(HEAVY_SHARE_PERCENT) {
            rng.range(0, u64::from(heavy) - 1)
        } else {
            rng.range(u64::from(heavy), u64::from(members) - 1)
        };
        let mut claim = ClaimRequest {
            claim_id: self.claim_id(tag, k),
            hospital_id: format!("H-BENCH-{:02}", rng.range(1, 20)),
            member_id: member_id(u32::try_from(member).unwrap_or(0)),
            ..ClaimRequest::default()
        };
        let roll = rng.range(0, 99);
        if roll >= 95 {
            non_medical(&mut claim, &mut rng);
            return claim;
        }
        let start = if rng.percent(80) { CIXI_START } else { ZHONGNING_START };
        claim.service_date = day(start, &mut rng);
        if roll < 70 {
            outpatient(&mut claim, &mut rng);
        } else {
            inpatient(&mut claim, &mut rng);
        }
        claim
    }
}

fn line(class: ExpenseClass, code: &str, fen: u64) -> LineItem {
    LineItem {
        code: code.to_owned(),
        expense_class: class as i32,
        amount: yuan(fen),
    }
}

/// A medical line after the first: IN_SCOPE, B_SELF_PAY, OUT_OF_CATALOGUE or NON_COMPLIANT, with its
/// amount (in fen) scaled by `scale` percent; and the amount if the line is IN_SCOPE.
fn medical_line(rng: &mut Rng, scale: u64) -> (LineItem, u64) {
    let roll = rng.range(0, 99);
    let (class, codes, lo, hi): (_, &[&str], u64, u64) = match roll {
        0..=54 => (
            ExpenseClass::InScope,
            &["nursing", "exam", "lab", "surgery", "imaging", "drug-a"],
            2_000,
            150_000,
        ),
        55..=69 => (ExpenseClass::BSelfPay, &["drug-b", "device-b"], 500, 60_000),
        70..=89 => (
            ExpenseClass::OutOfCatalogue,
            &["drug-c", "implant", "device-c"],
            1_000,
            120_000,
        ),
        _ => (ExpenseClass::NonCompliant, &["misc", "meal"], 500, 10_000),
    };
    let code = rng.pick(codes);
    let fen = rng.range(lo, hi) * scale / 100;
    (
        line(class, code, fen),
        if class == ExpenseClass::InScope { fen } else { 0 },
    )
}

/// Adds the medical lines after the first; returns their IN_SCOPE total (fen).
fn medical_lines(claim: &mut ClaimRequest, rng: &mut Rng, lines: u64, scale: u64) -> u64 {
    let mut in_scope = 0;
    for _ in 1..lines {
        let (line, fen) = medical_line(rng, scale);
        claim.lines.push(line);
        in_scope += fen;
    }
    in_scope
}

/// Basic insurance (and, for some inpatient claims, critical-illness insurance) paid part of the
/// IN_SCOPE total: at most 75% of it, so never more than it.
fn upstream(claim: &mut ClaimRequest, rng: &mut Rng, in_scope: u64, basic_percent: (u64, u64), critical: bool) {
    if in_scope == 0 {
        return;
    }
    let basic = in_scope * rng.range(basic_percent.0, basic_percent.1) / 100;
    claim.upstream.push(UpstreamPayment {
        kind: UpstreamKind::Basic as i32,
        amount: yuan(basic),
    });
    if critical {
        claim.upstream.push(UpstreamPayment {
            kind: UpstreamKind::CriticalIllness as i32,
            amount: yuan(in_scope * rng.range(5, 15) / 100),
        });
    }
}

fn outpatient(claim: &mut ClaimRequest, rng: &mut Rng) {
    claim.visit_kind = VisitKind::Outpatient as i32;
    claim.outpatient_kind = match rng.range(0, 99) {
        0..=69 => 0,
        70..=84 => OutpatientKind::Chronic as i32,
        85..=94 => OutpatientKind::Acute as i32,
        _ => OutpatientKind::Specified as i32,
    };
    if rng.percent(5) {
        claim.cause = Cause::Accident as i32;
    }
    let lines = rng.range(1, 5);
    let first = rng.range(2_000, 150_000);
    claim.lines.push(line(ExpenseClass::InScope, "consultation", first));
    let in_scope = first + medical_lines(claim, rng, lines, 100);
    upstream(claim, rng, in_scope, (40, 60), false);
}

fn inpatient(claim: &mut ClaimRequest, rng: &mut Rng) {
    claim.visit_kind = VisitKind::Inpatient as i32;
    claim.cause = match rng.range(0, 99) {
        0..=89 => 0,
        90..=96 => Cause::Accident as i32,
        _ => Cause::Disaster as i32,
    };
    let lines = rng.range(5, 30);
    let first = rng.range(50_000, 1_500_000);
    claim.lines.push(line(ExpenseClass::InScope, "bed", first));
    let in_scope = first + medical_lines(claim, rng, lines, 500);
    let critical = rng.percent(40);
    upstream(claim, rng, in_scope, (45, 60), critical);
}

fn non_medical(claim: &mut ClaimRequest, rng: &mut Rng) {
    claim.visit_kind = VisitKind::NonMedical as i32;
    claim.service_date = day(ZHONGNING_START, rng);
    let (cause, codes): (_, &[&str]) = match rng.range(0, 99) {
        0..=39 => (Cause::Education, &["tuition", "boarding"]),
        40..=79 => (Cause::Disaster, &["housing", "crops", "livestock"]),
        _ => (Cause::Accident, &["housing", "vehicle"]),
    };
    claim.cause = cause as i32;
    for i in 0..rng.range(1, 3) {
        if i > 0 && rng.percent(10) {
            claim
                .lines
                .push(line(ExpenseClass::NonCompliant, "misc", rng.range(1_000, 50_000)));
        } else {
            let code = rng.pick(codes);
            claim
                .lines
                .push(line(ExpenseClass::OtherLoss, code, rng.range(100_000, 2_000_000)));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Measuring.

/// What the replies of a mode said.
#[derive(Debug, Default, Clone)]
struct Counts {
    /// Settled (or previewed, or echoed) for the first time.
    ok: u64,
    replayed: u64,
    /// Of `ok`: some layer paid.
    paid: u64,
    /// Of `ok`: some layer was cut by a cap.
    capped: u64,
    /// Per gRPC code: count and the first message.
    refused: BTreeMap<String, (u64, String)>,
}

impl Counts {
    fn settlement(&mut self, settlement: Option<&Settlement>, replay: bool) {
        if replay {
            self.replayed += 1;
            return;
        }
        self.ok += 1;
        let Some(s) = settlement else {
            return;
        };
        if amount(&s.payout_total).is_some_and(|p| p > Decimal::ZERO) {
            self.paid += 1;
        }
        let caps = [
            Reason::CapPerClaim,
            Reason::CapBenefitAnnual,
            Reason::CapProductAnnual,
            Reason::CapAggregate,
        ]
        .map(|r| r as i32);
        if s.layers.iter().any(|l| l.reasons.iter().any(|r| caps.contains(r))) {
            self.capped += 1;
        }
    }

    fn reply(&mut self, reply: &SettlementReply) {
        match &reply.result {
            Some(ReplyResult::Settlement(stored)) => self.settlement(stored.settlement.as_ref(), reply.replay),
            Some(ReplyResult::Error(e)) => self.refuse(code_name(e.code), format!("{}: {}", reply.claim_id, e.message)),
            None => self.refuse("NO_RESULT".to_owned(), format!("{}: empty reply", reply.claim_id)),
        }
    }

    fn refuse(&mut self, code: String, message: String) {
        let entry = self.refused.entry(code).or_insert((0, message));
        entry.0 += 1;
    }

    fn refused_total(&self) -> u64 {
        self.refused.values().map(|(n, _)| n).sum()
    }

    fn merge(&mut self, other: Counts) {
        self.ok += other.ok;
        self.replayed += other.replayed;
        self.paid += other.paid;
        self.capped += other.capped;
        for (code, (n, message)) in other.refused {
            self.refused.entry(code).or_insert((0, message)).0 += n;
        }
    }
}

/// What one stream or one concurrent caller did.
#[derive(Debug, Default)]
struct Part {
    sent: u64,
    latencies: Vec<Duration>,
    counts: Counts,
    /// Encoded size of every reply, in order (0 for a refused unary call).
    reply_sizes: Vec<u32>,
    failure: Option<String>,
}

fn encoded(message: &impl prost::Message) -> u32 {
    u32::try_from(message.encoded_len()).unwrap_or(u32::MAX)
}

/// Codes that mean the call did not reach the service or the connection broke: the caller stops.
fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal | Code::DeadlineExceeded
    )
}

/// One concurrent unary caller: its requests one after the other, each timed from call to reply.
async fn unary_caller<Req, Rep, Call, Fut>(
    requests: Vec<Req>,
    mut call: Call,
    mut on_reply: impl FnMut(Rep, &mut Part),
    bar: ProgressBar,
    rpc: &'static str,
) -> Part
where
    Call: FnMut(Req) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<Rep>, Status>>,
{
    let mut part = Part {
        latencies: Vec::with_capacity(requests.len()),
        reply_sizes: Vec::with_capacity(requests.len()),
        ..Part::default()
    };
    for request in requests {
        let started = Instant::now();
        let result = call(request).await;
        let latency = started.elapsed();
        part.sent += 1;
        match result {
            Ok(response) => {
                part.latencies.push(latency);
                on_reply(response.into_inner(), &mut part);
            }
            Err(status) if is_transport_failure(&status) => {
                part.failure = Some(format!("{rpc}: {}", status_text(&status)));
                break;
            }
            Err(status) => {
                part.latencies.push(latency);
                part.reply_sizes.push(0);
                part.counts
                    .refuse(code_name(status.code() as i32), status.message().to_owned());
            }
        }
        bar.inc(1);
    }
    part
}

/// The shape of a mode: streams or concurrent unary callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Stream {
        streams: u32,
        connections: u32,
        window: u32,
    },
    Unary {
        concurrency: u32,
        connections: u32,
    },
}

impl Shape {
    fn label(&self) -> String {
        match self {
            Shape::Stream {
                streams,
                connections,
                window,
            } => format!("S={streams} C={connections} W={window}"),
            Shape::Unary {
                concurrency,
                connections,
            } => format!("K={concurrency} C={connections}"),
        }
    }

    /// Streams or callers: how the claims are dealt.
    fn parts(&self) -> usize {
        match self {
            Shape::Stream { streams, .. } => *streams as usize,
            Shape::Unary { concurrency, .. } => *concurrency as usize,
        }
    }

    fn connections(&self) -> usize {
        match self {
            Shape::Stream { connections, .. } | Shape::Unary { connections, .. } => *connections as usize,
        }
    }
}

/// The server's figures around a mode.
#[derive(Debug, Clone, Copy)]
struct ServerFigures {
    cpu_seconds: f64,
    /// CPU seconds of the ledger's own writer thread (SQLite's); `None` where it has none.
    writer_cpu_seconds: Option<f64>,
    peak_rss_bytes: u64,
    rss_bytes: u64,
    /// False: the peak is the peak since the server started.
    peak_since_mode: bool,
}

/// One mode run, measured.
#[derive(Debug)]
struct ModeResult {
    /// `stream`, `unary`, `preview`, `echo-stream`, `echo-unary` or `loss-ratio`.
    mode: &'static str,
    shape: Shape,
    /// The index in the results of the echo this mode is compared with.
    baseline: Option<usize>,
    sent: u64,
    replies: u64,
    counts: Counts,
    elapsed: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
    /// Per stream or caller.
    reply_sizes: Vec<Vec<u32>>,
    request_bytes_mean: f64,
    server: Option<ServerFigures>,
    client_cpu_seconds: Option<f64>,
    failures: Vec<String>,
}

impl ModeResult {
    fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.replies as f64 / secs
        } else {
            0.0
        }
    }

    fn quantile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies, p).map(|d| d.as_secs_f64() * 1e3)
    }

    fn reply_bytes_mean(&self) -> f64 {
        let (sum, n) = self
            .reply_sizes
            .iter()
            .flatten()
            .fold((0u64, 0u64), |(s, n), b| (s + u64::from(*b), n + 1));
        if n == 0 {
            0.0
        } else {
            sum as f64 / n as f64
        }
    }

    fn cpu_us_per_claim(&self) -> Option<f64> {
        self.us_per_claim(self.server.map(|s| s.cpu_seconds))
    }

    fn writer_cpu_us_per_claim(&self) -> Option<f64> {
        self.us_per_claim(self.server.and_then(|s| s.writer_cpu_seconds))
    }

    /// `seconds` spread over the replies, in microseconds.
    fn us_per_claim(&self, seconds: Option<f64>) -> Option<f64> {
        let seconds = seconds?;
        (self.replies > 0).then(|| seconds * 1e6 / self.replies as f64)
    }
}

/// The quantiles reported, with their names.
const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

/// Deals claims to `n` streams or callers in turn.
fn deal<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let n = n.max(1);
    let mut parts: Vec<Vec<T>> = (0..n).map(|_| Vec::with_capacity(items.len() / n + 1)).collect();
    for (i, item) in items.into_iter().enumerate() {
        parts[i % n].push(item);
    }
    parts
}

fn mode_bar(total: u64, label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>28} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})")
    {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The server's process figures, through BenchService (absent without `--bench`).
struct Probe {
    client: Option<BenchServiceClient<Channel>>,
}

impl Probe {
    async fn stats(&mut self, reset_peak_rss: bool) -> Result<Option<ProcessStats>> {
        let Some(client) = self.client.as_mut() else {
            return Ok(None);
        };
        match client.process_stats(ProcessStatsRequest { reset_peak_rss }).await {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(status) => Err(rpc_error("BenchService.ProcessStats", &status)),
        }
    }
}

/// The claims of one mode run, with their mean encoded size.
#[derive(Clone)]
struct ClaimSet {
    claims: Vec<ClaimRequest>,
    request_bytes_mean: f64,
}

impl ClaimSet {
    fn new(mix: &Mix, tag: &str, n: u64) -> Self {
        let claims: Vec<ClaimRequest> = (0..n).map(|k| mix.claim(tag, k)).collect();
        let bytes: u64 = claims.iter().map(|c| u64::from(encoded(c))).sum();
        ClaimSet {
            request_bytes_mean: bytes as f64 / claims.len().max(1) as f64,
            claims,
        }
    }
}

/// Runs one mode: opens its connections, takes the server's figures (resetting its peak memory), starts
/// one task per stream or caller, waits for all of them and takes the figures again.
async fn measure<F, Fut>(
    server: &Server,
    probe: &mut Probe,
    mode: &'static str,
    shape: Shape,
    request_bytes_mean: f64,
    start: F,
) -> Result<ModeResult>
where
    F: FnOnce(Vec<Channel>) -> Fut,
    Fut: Future<Output = Vec<std::result::Result<Part, tokio::task::JoinError>>>,
{
    let mut channels = Vec::with_capacity(shape.connections());
    for _ in 0..shape.connections().max(1) {
        channels.push(server.connect().await?);
    }
    let before = probe.stats(true).await?;
    let client_before = process_figures().ok();
    let started = Instant::now();
    let parts = start(channels).await;
    let elapsed = started.elapsed();
    let client_after = process_figures().ok();
    let after = probe.stats(false).await?;

    let mut result = ModeResult {
        mode,
        shape,
        baseline: None,
        sent: 0,
        replies: 0,
        counts: Counts::default(),
        elapsed,
        latencies: Vec::new(),
        reply_sizes: Vec::new(),
        request_bytes_mean,
        server: None,
        client_cpu_seconds: None,
        failures: Vec::new(),
    };
    for (i, part) in parts.into_iter().enumerate() {
        match part {
            Ok(part) => {
                result.sent += part.sent;
                result.replies += part.latencies.len() as u64;
                result.latencies.extend(part.latencies);
                result.counts.merge(part.counts);
                result.reply_sizes.push(part.reply_sizes);
                if let Some(f) = part.failure {
                    result
                        .failures
                        .push(format!("{mode} {} #{}: {f}", shape.label(), i + 1));
                }
            }
            Err(e) => {
                result.reply_sizes.push(Vec::new());
                result
                    .failures
                    .push(format!("{mode} {} #{}: the task ended: {e}", shape.label(), i + 1));
            }
        }
    }
    result.latencies.sort_unstable();
    if let (Some(b), Some(a)) = (before, after) {
        result.server = Some(ServerFigures {
            cpu_seconds: cpu_delta(&b, &a),
            // The same writer threads at both readings, or the difference means nothing.
            writer_cpu_seconds: (a.writer_threads > 0 && a.writer_threads == b.writer_threads)
                .then(|| ticks_delta(b.writer_cpu_seconds, a.writer_cpu_seconds)),
            peak_rss_bytes: a.peak_rss_bytes,
            rss_bytes: a.rss_bytes,
            peak_since_mode: b.peak_rss_reset,
        });
    }
    if let (Some(b), Some(a)) = (client_before, client_after) {
        let figures = |f: claims::api::bench::ProcessFigures| ProcessStats {
            cpu_user_seconds: f.cpu_user_seconds,
            cpu_system_seconds: f.cpu_system_seconds,
            ..ProcessStats::default()
        };
        result.client_cpu_seconds = Some(cpu_delta(&figures(b), &figures(a)));
    }
    Ok(result)
}

/// User and system CPU seconds between two readings, rounded to the clock tick (1/100 s) they count in.
fn cpu_delta(before: &ProcessStats, after: &ProcessStats) -> f64 {
    let total = |s: &ProcessStats| s.cpu_user_seconds + s.cpu_system_seconds;
    ticks_delta(total(before), total(after))
}

/// `after - before` in seconds, rounded to the clock tick (1/100 s) both count in.
fn ticks_delta(before: f64, after: f64) -> f64 {
    ((after - before) * CLOCK_TICKS_PER_SECOND).round() / CLOCK_TICKS_PER_SECOND
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Part>>) -> Vec<std::result::Result<Part, tokio::task::JoinError>> {
    let mut parts = Vec::with_capacity(tasks.len());
    for task in tasks {
        parts.push(task.await);
    }
    parts
}

/// Stream mode: the claims dealt to the streams, each pipelined over its connection.
async fn stream_mode(
    server: &Server,
    probe: &mut Probe,
    set: ClaimSet,
    shape: Shape,
    window: usize,
    quiet: bool,
) -> Result<ModeResult> {
    let bar = mode_bar(set.claims.len() as u64, &format!("stream {}", shape.label()), quiet);
    let parts = deal(set.claims, shape.parts());
    let progress = bar.clone();
    let result = measure(
        server,
        probe,
        "stream",
        shape,
        set.request_bytes_mean,
        move |channels| async move {
            let tasks = parts
                .into_iter()
                .enumerate()
                .map(|(i, claims)| {
                    let channel = channels[i % channels.len()].clone();
                    let bar = progress.clone();
                    tokio::spawn(async move {
                        let planned = claims.len() as u64;
                        let mut part = Part {
                            reply_sizes: Vec::with_capacity(claims.len()),
                            ..Part::default()
                        };
                        let mut client = SettlementServiceClient::new(channel);
                        let (counts, sizes) = (&mut part.counts, &mut part.reply_sizes);
                        let outcome = pipeline(
                            claims.into_iter(),
                            planned,
                            window,
                            |c: &ClaimRequest| c.claim_id.clone(),
                            move |rx| async move { client.settle(rx).await },
                            |due: String, reply: &SettlementReply| {
                                check_in_order(&due, reply)?;
                                sizes.push(encoded(reply));
                                counts.reply(reply);
                                bar.inc(1);
                                Ok(())
                            },
                            "Settle",
                        )
                        .await;
                        part.sent = outcome.sent;
                        part.latencies = outcome.latencies;
                        part.failure = outcome.failure.map(|e| chain(e.as_ref()));
                        part
                    })
                })
                .collect();
            join_all(tasks).await
        },
    )
    .await;
    bar.finish_and_clear();
    result
}

/// Echo of the stream shape: the same claims through EchoStream, each answered with as many bytes as
/// its real reply had (`sizes`, per stream), or `fallback` bytes where no size was measured.
async fn echo_stream_mode(
    server: &Server,
    probe: &mut Probe,
    set: ClaimSet,
    shape: Shape,
    window: usize,
    (sizes, fallback): (&[Vec<u32>], u32),
    quiet: bool,
) -> Result<ModeResult> {
    let bar = mode_bar(
        set.claims.len() as u64,
        &format!("echo-stream {}", shape.label()),
        quiet,
    );
    let parts: Vec<Vec<EchoRequest>> = deal(set.claims, shape.parts())
        .into_iter()
        .enumerate()
        .map(|(i, claims)| echo_requests(claims, sizes.get(i), fallback))
        .collect();
    let progress = bar.clone();
    let result = measure(
        server,
        probe,
        "echo-stream",
        shape,
        set.request_bytes_mean,
        move |channels| async move {
            let tasks = parts
                .into_iter()
                .enumerate()
                .map(|(i, requests)| {
                    let channel = channels[i % channels.len()].clone();
                    let bar = progress.clone();
                    tokio::spawn(async move {
                        let planned = requests.len() as u64;
                        let mut part = Part {
                            reply_sizes: Vec::with_capacity(requests.len()),
                            ..Part::default()
                        };
                        let mut client = BenchServiceClient::new(channel);
                        let (counts, sizes) = (&mut part.counts, &mut part.reply_sizes);
                        let outcome = pipeline(
                            requests.into_iter(),
                            planned,
                            window,
                            |_: &EchoRequest| (),
                            move |rx| async move { client.echo_stream(rx).await },
                            |(), reply: &EchoReply| {
                                sizes.push(encoded(reply));
                                counts.ok += 1;
                                bar.inc(1);
                                Ok(())
                            },
                            "EchoStream",
                        )
                        .await;
                        part.sent = outcome.sent;
                        part.latencies = outcome.latencies;
                        part.failure = outcome.failure.map(|e| chain(e.as_ref()));
                        part
                    })
                })
                .collect();
            join_all(tasks).await
        },
    )
    .await;
    bar.finish_and_clear();
    result
}

fn echo_requests(claims: Vec<ClaimRequest>, sizes: Option<&Vec<u32>>, fallback: u32) -> Vec<EchoRequest> {
    claims
        .into_iter()
        .enumerate()
        .map(|(j, claim)| EchoRequest {
            claim: Some(claim),
            reply_bytes: sizes.and_then(|s| s.get(j)).copied().unwrap_or(fallback),
        })
        .collect()
}

/// The unary modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unary {
    SettleOne,
    Preview,
    Echo,
    /// `ReportService.GetLossRatio` of one product period ([`LOSS_RATIO_PERIOD`]): a read of the
    /// running figures, no claims. Its figures count calls where the others count claims (the claims/s
    /// column is calls/s, CPU us/claim is per call, and `settled` in the JSON is the calls answered);
    /// it has no echo baseline.
    LossRatio,
}

/// What the callers of a unary mode send, dealt among them in turn.
enum Calls {
    /// One call per claim of the set (SettleOne, Preview, Echo).
    Claims(ClaimSet),
    /// This many calls of the same request (LossRatio): no claims are generated.
    LossRatio(LossRatioRequest, u64),
}

impl Calls {
    fn len(&self) -> u64 {
        match self {
            Calls::Claims(set) => set.claims.len() as u64,
            Calls::LossRatio(_, n) => *n,
        }
    }

    fn request_bytes_mean(&self) -> f64 {
        match self {
            Calls::Claims(set) => set.request_bytes_mean,
            Calls::LossRatio(request, _) => f64::from(encoded(request)),
        }
    }
}

/// The GetLossRatio request of the loss-ratio mode: one product period the roster enrolls every member in.
fn loss_ratio_request() -> LossRatioRequest {
    LossRatioRequest {
        product_code: LOSS_RATIO_PERIOD.0.to_owned(),
        period_start: LOSS_RATIO_PERIOD.1.to_owned(),
        alert_above: String::new(),
    }
}

/// Unary mode: the calls dealt to `K` concurrent callers, each making one call after the other (one
/// claim per call, except for [`Unary::LossRatio`]). The callers of `rpc` take their requests from
/// `calls` of the matching kind; with the other kind they have nothing to send.
async fn unary_mode(
    server: &Server,
    probe: &mut Probe,
    calls: Calls,
    shape: Shape,
    rpc: Unary,
    echo_sizes: (&[Vec<u32>], u32),
    quiet: bool,
) -> Result<ModeResult> {
    let mode = match rpc {
        Unary::SettleOne => "unary",
        Unary::Preview => "preview",
        Unary::Echo => "echo-unary",
        Unary::LossRatio => "loss-ratio",
    };
    let bar = mode_bar(calls.len(), &format!("{mode} {}", shape.label()), quiet);
    let request_bytes_mean = calls.request_bytes_mean();
    let (parts, ratio_parts) = match calls {
        Calls::Claims(set) => (deal(set.claims, shape.parts()), Vec::new()),
        Calls::LossRatio(request, n) => {
            let requests = (0..n).map(|_| request.clone()).collect();
            (deal(Vec::new(), shape.parts()), deal(requests, shape.parts()))
        }
    };
    let (sizes, fallback) = echo_sizes;
    let echo_parts: Vec<Vec<EchoRequest>> = if rpc == Unary::Echo {
        parts
            .iter()
            .enumerate()
            .map(|(i, claims)| echo_requests(claims.clone(), sizes.get(i), fallback))
            .collect()
    } else {
        Vec::new()
    };
    let progress = bar.clone();
    let result = measure(
        server,
        probe,
        mode,
        shape,
        request_bytes_mean,
        move |channels| async move {
            let mut tasks = Vec::with_capacity(parts.len());
            let mut echo_parts = echo_parts.into_iter();
            let mut ratio_parts = ratio_parts.into_iter();
            for (i, claims) in parts.into_iter().enumerate() {
                let channel = channels[i % channels.len()].clone();
                let bar = progress.clone();
                let task = match rpc {
                    Unary::SettleOne => {
                        let client = SettlementServiceClient::new(channel);
                        tokio::spawn(unary_caller(
                            claims,
                            move |c| {
                                let mut client = client.clone();
                                async move { client.settle_one(c).await }
                            },
                            |r: SettleResponse, part| {
                                part.reply_sizes.push(encoded(&r));
                                part.counts
                                    .settlement(r.settlement.as_ref().and_then(|s| s.settlement.as_ref()), r.replay);
                            },
                            bar,
                            "SettleOne",
                        ))
                    }
                    Unary::Preview => {
                        let client = SettlementServiceClient::new(channel);
                        tokio::spawn(unary_caller(
                            claims,
                            move |c| {
                                let mut client = client.clone();
                                async move { client.preview(c).await }
                            },
                            |r: claims::proto::PreviewResponse, part| {
                                part.reply_sizes.push(encoded(&r));
                                part.counts.settlement(r.settlement.as_ref(), false);
                            },
                            bar,
                            "Preview",
                        ))
                    }
                    Unary::Echo => {
                        drop(claims);
                        let requests = echo_parts.next().unwrap_or_default();
                        let client = BenchServiceClient::new(channel);
                        tokio::spawn(unary_caller(
                            requests,
                            move |r| {
                                let mut client = client.clone();
                                async move { client.echo(r).await }
                            },
                            |r: EchoReply, part| {
                                part.reply_sizes.push(encoded(&r));
                                part.counts.ok += 1;
                            },
                            bar,
                            "Echo",
                        ))
                    }
                    Unary::LossRatio => {
                        drop(claims);
                        let requests = ratio_parts.next().unwrap_or_default();
                        let client = ReportServiceClient::new(channel);
                        tokio::spawn(unary_caller(
                            requests,
                            move |r| {
                                let mut client = client.clone();
                                async move { client.get_loss_ratio(r).await }
                            },
                            |r: LossRatioResponse, part| {
                                part.reply_sizes.push(encoded(&r));
                                part.counts.ok += 1;
                            },
                            bar,
                            "GetLossRatio",
                        ))
                    }
                };
                tasks.push(task);
            }
            join_all(tasks).await
        },
    )
    .await;
    bar.finish_and_clear();
    result
}

/// The mean encoded size of the real replies to some claims of a set, estimated by previewing them
/// (nothing is written) and wrapping each previewed settlement as the stream or unary reply would.
async fn calibrate(server: &Server, claims: &[ClaimRequest], stream: bool) -> Result<u32> {
    let mut client = SettlementServiceClient::new(server.connect().await?);
    let now = time::OffsetDateTime::now_utc();
    let settled_at = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    let (mut sum, mut n) = (0u64, 0u64);
    for (k, claim) in claims.iter().take(CALIBRATION_CLAIMS).enumerate() {
        let settlement = match client.preview(claim.clone()).await {
            Ok(r) => r.into_inner().settlement,
            Err(status) => return Err(rpc_error("Preview (estimating reply sizes for the echo)", &status)),
        };
        let stored = StoredSettlement {
            settlement,
            sequence: 1_000_000 + k as u64,
            settled_at: settled_at.clone(),
            reversed: false,
            reversed_at: String::new(),
        };
        sum += u64::from(if stream {
            encoded(&SettlementReply {
                claim_id: claim.claim_id.clone(),
                result: Some(ReplyResult::Settlement(stored)),
                replay: false,
            })
        } else {
            encoded(&SettleResponse {
                settlement: Some(stored),
                replay: false,
            })
        });
        n += 1;
    }
    Ok(u32::try_from(sum / n.max(1)).unwrap_or(u32::MAX))
}

/// The echo reply sizes for a set: the real mode's, when it ran, else an estimate for every claim.
async fn echo_sizes(
    server: &Server,
    real: Option<&ModeResult>,
    set: &ClaimSet,
    stream: bool,
) -> Result<(Vec<Vec<u32>>, u32)> {
    match real {
        Some(r) if r.replies > 0 => Ok((r.reply_sizes.clone(), r.reply_bytes_mean().round() as u32)),
        _ => Ok((Vec::new(), calibrate(server, &set.claims, stream).await?)),
    }
}

// ---------------------------------------------------------------------------------------------------
// Roster and preflight.

/// Checks that the server has the product periods the roster enrolls members in.
async fn check_products(channel: Channel) -> Result<()> {
    let products = TermsServiceClient::new(channel)
        .list_products(ListProductsRequest {})
        .await
        .map_err(|s| rpc_error("ListProducts", &s))?
        .into_inner()
        .products;
    let missing: Vec<String> = std::iter::once(ZHONGNING)
        .chain(CIXI)
        .filter(|(code, start)| {
            !products
                .iter()
                .any(|p| p.product_code == *code && p.period_start == *start)
        })
        .map(|(code, start)| format!("{code} {start}"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(fail(format!(
            "the server has no terms for {}; start claimsd with --terms-dir examples/terms",
            missing.join(", ")
        )))
    }
}

/// Checks that the loss-ratio mode's request is answered, and warns when it is answered without figures
/// (nobody enrolled in the period yet: the calls then measure an empty read).
async fn check_loss_ratio_period(channel: Channel) -> Result<()> {
    let ratios = ReportServiceClient::new(channel)
        .get_loss_ratio(loss_ratio_request())
        .await
        .map_err(|s| rpc_error("GetLossRatio (the loss-ratio mode's request)", &s))?
        .into_inner()
        .ratios;
    if ratios.is_empty() {
        eprintln!(
            "claimsctl: warning: the server has no loss-ratio figures for {} {} (no roster loaded?); the \
             loss-ratio mode measures an empty read",
            LOSS_RATIO_PERIOD.0, LOSS_RATIO_PERIOD.1
        );
    }
    Ok(())
}

/// How long the roster took.
#[derive(Debug, Clone, Copy)]
struct RosterFigures {
    rows: u64,
    elapsed: Duration,
}

/// Enrolls `members` members (five rows each) in Enroll streams of [`ROSTER_CHUNK_MEMBERS`] members.
async fn load_roster(channel: Channel, members: u32, quiet: bool) -> Result<RosterFigures> {
    let total = u64::from(members) * 5;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>28} [{elapsed_precise}] {wide_bar} {pos}/{len} rows ({per_sec})")
        {
            bar.set_style(style);
        }
        bar.set_prefix("roster");
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };
    let mut client = MemberServiceClient::new(channel);
    let started = Instant::now();
    let mut rows = 0u64;
    let mut from = 0u32;
    while from < members {
        let to = from.saturating_add(ROSTER_CHUNK_MEMBERS).min(members);
        let progress = bar.clone();
        let stream = tokio_stream::iter((from..to).flat_map(roster_rows).inspect(move |_| progress.inc(1)));
        let summary = client
            .enroll(stream)
            .await
            .map_err(|s| rpc_error("Enroll (the bench roster)", &s))?
            .into_inner();
        if let Some(e) = summary.errors.first() {
            let problems: Vec<String> = e
                .violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect();
            return Err(fail(format!(
                "the server refused {} roster rows; the first, row {} of members {} to {}: {}",
                summary.errors.len(),
                e.row,
                member_id(from),
                member_id(to - 1),
                problems.join("; ")
            )));
        }
        rows += summary.rows_accepted;
        from = to;
    }
    bar.finish_and_clear();
    Ok(RosterFigures {
        rows,
        elapsed: started.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------------------
// The run.

fn dedup(values: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(v) {
            out.push(*v);
        }
    }
    out
}

/// Checks, before anything is sent, that the longest claim id of the run is a valid claim id.
fn check_claim_ids(mix: &Mix, options: &BenchOptions) -> Result<()> {
    let widest = options
        .streams
        .iter()
        .chain(&options.concurrency)
        .max()
        .copied()
        .unwrap_or(1);
    let id = mix.claim_id(&format!("u{widest}"), options.claims.saturating_sub(1));
    ClaimId::parse(&id)
        .map(|_| ())
        .map_err(|e| fail(format!("the claim id {id:?} {e}; use a shorter --run-id")))
}

pub async fn run(server: &Server, options: BenchOptions) -> Result<ExitCode> {
    let mix = Mix {
        seed: options.seed,
        members: options.members,
        run_id: options.run_id.clone(),
    };
    check_claim_ids(&mix, &options)?;
    let control = server.connect().await?;
    let mut probe = Probe {
        client: Some(BenchServiceClient::new(control.clone())),
    };
    let served = BenchServiceClient::new(control.clone())
        .process_stats(ProcessStatsRequest { reset_peak_rss: false })
        .await;
    match served {
        Ok(_) => {}
        Err(status) if status.code() != Code::Unimplemented => {
            return Err(rpc_error("BenchService.ProcessStats", &status));
        }
        Err(_) if options.echo => {
            return Err(fail(
                "the server does not serve claims.v1.BenchService: start claimsd with --bench (CLAIMS_BENCH=1) \
                 for the echo baselines and the server's CPU and memory figures, or leave echo out of --modes",
            ))
        }
        Err(_) => {
            eprintln!(
                "claimsctl: warning: the server does not serve claims.v1.BenchService, so its CPU and memory \
                 figures are missing; start claimsd with --bench for them"
            );
            probe.client = None;
        }
    }
    check_products(control.clone()).await?;
    let roster = if options.skip_roster {
        None
    } else {
        Some(load_roster(control.clone(), options.members, options.quiet).await?)
    };
    if options.loss_ratio {
        check_loss_ratio_period(control.clone()).await?;
    }

    // Echo baselines for the shapes that run; both when echo runs alone.
    let alone = !(options.stream || options.unary || options.preview);
    let echo_stream = options.echo && (options.stream || alone);
    let echo_unary = options.echo && (options.unary || options.preview || alone);
    let window = options.window.max(1);
    let mut results: Vec<ModeResult> = Vec::new();
    let failed = |results: &[ModeResult]| results.last().is_some_and(|r| !r.failures.is_empty());

    'runs: {
        if options.stream || echo_stream {
            for s in dedup(&options.streams) {
                let s = s.clamp(1, u32::try_from(options.claims).unwrap_or(u32::MAX).max(1));
                let shape = Shape::Stream {
                    streams: s,
                    connections: options.connections.unwrap_or(s).clamp(1, s),
                    window,
                };
                let set = ClaimSet::new(&mix, &format!("s{s}"), options.claims);
                let echo_set = echo_stream.then(|| set.clone());
                let mut real = None;
                if options.stream {
                    results.push(stream_mode(server, &mut probe, set, shape, window as usize, options.quiet).await?);
                    if failed(&results) {
                        break 'runs;
                    }
                    real = Some(results.len() - 1);
                }
                if let Some(echo_set) = echo_set {
                    let (sizes, fallback) = echo_sizes(server, real.map(|i| &results[i]), &echo_set, true).await?;
                    let result = echo_stream_mode(
                        server,
                        &mut probe,
                        echo_set,
                        shape,
                        window as usize,
                        (&sizes, fallback),
                        options.quiet,
                    )
                    .await?;
                    results.push(result);
                    let echo = results.len() - 1;
                    if let Some(i) = real {
                        results[i].baseline = Some(echo);
                    }
                    if failed(&results) {
                        break 'runs;
                    }
                }
            }
        }
        if options.unary || options.preview || echo_unary || options.loss_ratio {
            for k in dedup(&options.concurrency) {
                let k = k.clamp(1, u32::try_from(options.claims).unwrap_or(u32::MAX).max(1));
                let shape = Shape::Unary {
                    concurrency: k,
                    connections: options.connections.unwrap_or(k).clamp(1, k),
                };
                // Only the modes that send these claims generate them.
                let set = (options.unary || echo_unary).then(|| ClaimSet::new(&mix, &format!("u{k}"), options.claims));
                let echo_set = if echo_unary { set.clone() } else { None };
                let mut compared = Vec::new();
                let mut real = None;
                if let Some(set) = set.filter(|_| options.unary) {
                    let result = unary_mode(
                        server,
                        &mut probe,
                        Calls::Claims(set),
                        shape,
                        Unary::SettleOne,
                        (&[], 0),
                        options.quiet,
                    );
                    results.push(result.await?);
                    if failed(&results) {
                        break 'runs;
                    }
                    real = Some(results.len() - 1);
                    compared.push(results.len() - 1);
                }
                if let Some(echo_set) = echo_set {
                    let (sizes, fallback) = echo_sizes(server, real.map(|i| &results[i]), &echo_set, false).await?;
                    let result = unary_mode(
                        server,
                        &mut probe,
                        Calls::Claims(echo_set),
                        shape,
                        Unary::Echo,
                        (&sizes, fallback),
                        options.quiet,
                    );
                    results.push(result.await?);
                    if failed(&results) {
                        break 'runs;
                    }
                }
                if options.preview {
                    let set = ClaimSet::new(&mix, &format!("p{k}"), options.claims);
                    let calls = Calls::Claims(set);
                    let result = unary_mode(
                        server,
                        &mut probe,
                        calls,
                        shape,
                        Unary::Preview,
                        (&[], 0),
                        options.quiet,
                    );
                    results.push(result.await?);
                    compared.push(results.len() - 1);
                    if failed(&results) {
                        break 'runs;
                    }
                }
                if echo_unary {
                    let echo = results.iter().rposition(|r| r.mode == "echo-unary");
                    for i in compared {
                        results[i].baseline = echo;
                    }
                }
                if options.loss_ratio {
                    let calls = Calls::LossRatio(loss_ratio_request(), options.claims);
                    let result = unary_mode(
                        server,
                        &mut probe,
                        calls,
                        shape,
                        Unary::LossRatio,
                        (&[], 0),
                        options.quiet,
                    );
                    results.push(result.await?);
                    if failed(&results) {
                        break 'runs;
                    }
                }
            }
        }
    }

    let failures: Vec<String> = results.iter().flat_map(|r| r.failures.clone()).collect();
    if options.json {
        let document = json_report(server, &options, roster.as_ref(), &results);
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_else(|_| document.to_string())
        );
    } else {
        print_report(server, &options, roster.as_ref(), &results);
    }
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for f in &failures {
        eprintln!("claimsctl: {f}");
    }
    Err(fail(format!(
        "{} stream(s) or caller(s) failed; the run stopped",
        failures.len()
    )))
}

// ---------------------------------------------------------------------------------------------------
// Reports.

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v < 10.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.1}"),
        None => "-".to_owned(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn ratio(real: Option<f64>, echo: Option<f64>) -> Option<f64> {
    match (real, echo) {
        (Some(r), Some(e)) if e > 0.0 => Some(r / e),
        _ => None,
    }
}

fn ratio_text(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.2}"))
}

/// Each figure of a mode divided by the same figure of its echo baseline.
fn ratios(real: &ModeResult, echo: &ModeResult) -> Vec<(&'static str, Option<f64>)> {
    let mut out = vec![("claims_per_s", ratio(Some(real.rate()), Some(echo.rate())))];
    for (name, p) in QUANTILES {
        out.push((name, ratio(real.quantile_ms(p), echo.quantile_ms(p))));
    }
    out.push((
        "server_cpu_s",
        ratio(real.server.map(|s| s.cpu_seconds), echo.server.map(|s| s.cpu_seconds)),
    ));
    out.push((
        "server_cpu_us_per_claim",
        ratio(real.cpu_us_per_claim(), echo.cpu_us_per_claim()),
    ));
    out.push((
        "server_peak_rss",
        ratio(
            real.server.map(|s| s.peak_rss_bytes as f64),
            echo.server.map(|s| s.peak_rss_bytes as f64),
        ),
    ));
    out
}

fn print_report(server: &Server, options: &BenchOptions, roster: Option<&RosterFigures>, results: &[ModeResult]) {
    crate::outln!(
        "bench run {} against {}: {} members, seed {}, {} claims a mode, window {}",
        options.run_id,
        server.url(),
        options.members,
        options.seed,
        options.claims,
        options.window
    );
    match roster {
        Some(r) => {
            let secs = r.elapsed.as_secs_f64();
            crate::outln!(
                "roster: {} rows ({} members x 5 enrollments) in {secs:.1} s, {:.0} rows/s",
                r.rows,
                options.members,
                if secs > 0.0 { r.rows as f64 / secs } else { 0.0 }
            );
        }
        None => crate::outln!("roster: not loaded (--skip-roster)"),
    }
    crate::outln!();
    let mut t = Table::new(&[
        ("mode", Align::Left),
        ("shape", Align::Left),
        ("claims", Align::Right),
        ("claims/s", Align::Right),
        ("p50 ms", Align::Right),
        ("p90 ms", Align::Right),
        ("p99 ms", Align::Right),
        ("p99.9 ms", Align::Right),
        ("max ms", Align::Right),
        ("srv CPU s", Align::Right),
        ("CPU us/claim", Align::Right),
        ("writer us/claim", Align::Right),
        ("srv peak RSS MiB", Align::Right),
        ("client CPU s", Align::Right),
        ("reply B", Align::Right),
        ("refused", Align::Right),
    ]);
    for r in results {
        let mut row = vec![
            r.mode.to_owned(),
            r.shape.label(),
            r.replies.to_string(),
            format!("{:.0}", r.rate()),
        ];
        row.extend(QUANTILES.iter().map(|(_, p)| ms(r.quantile_ms(*p))));
        row.push(ms(r.quantile_ms(1.0)));
        row.push(r.server.map_or("-".to_owned(), |s| format!("{:.2}", s.cpu_seconds)));
        row.push(r.cpu_us_per_claim().map_or("-".to_owned(), |v| format!("{v:.0}")));
        row.push(
            r.writer_cpu_us_per_claim()
                .map_or("-".to_owned(), |v| format!("{v:.0}")),
        );
        row.push(r.server.map_or("-".to_owned(), |s| {
            format!("{}{}", mib(s.peak_rss_bytes), if s.peak_since_mode { "" } else { "*" })
        }));
        row.push(r.client_cpu_seconds.map_or("-".to_owned(), |c| format!("{c:.2}")));
        row.push(format!("{:.0}", r.reply_bytes_mean()));
        row.push(r.counts.refused_total().to_string());
        t.row(row);
    }
    t.print();
    if results.iter().any(|r| r.server.is_some_and(|s| !s.peak_since_mode)) {
        crate::outln!("* peak since the server started (the peak could not be reset)");
    }

    let compared: Vec<&ModeResult> = results.iter().filter(|r| r.baseline.is_some()).collect();
    if !compared.is_empty() {
        crate::outln!();
        crate::outln!("ratio to the echo baseline of the same shape and messages (real / echo):");
        let mut t = Table::new(&[
            ("mode", Align::Left),
            ("shape", Align::Left),
            ("claims/s", Align::Right),
            ("p50", Align::Right),
            ("p90", Align::Right),
            ("p99", Align::Right),
            ("p99.9", Align::Right),
            ("srv CPU", Align::Right),
            ("srv peak RSS", Align::Right),
        ]);
        for r in compared {
            let Some(echo) = r.baseline.and_then(|i| results.get(i)) else {
                continue;
            };
            let figures: BTreeMap<&str, Option<f64>> = ratios(r, echo).into_iter().collect();
            let get = |name: &str| ratio_text(figures.get(name).copied().flatten());
            t.row([
                format!("{} / {}", r.mode, echo.mode),
                r.shape.label(),
                get("claims_per_s"),
                get("p50"),
                get("p90"),
                get("p99"),
                get("p99.9"),
                get("server_cpu_s"),
                get("server_peak_rss"),
            ]);
        }
        t.print();
    }

    crate::outln!();
    for r in results.iter().filter(|r| !r.mode.starts_with("echo")) {
        if r.mode == "loss-ratio" {
            crate::outln!(
                "{} {}: {} GetLossRatio calls of {} {} answered, {} refused",
                r.mode,
                r.shape.label(),
                r.counts.ok,
                LOSS_RATIO_PERIOD.0,
                LOSS_RATIO_PERIOD.1,
                r.counts.refused_total()
            );
        } else {
            crate::outln!(
                "{} {}: {} settled{}, {} paid, {} cut by a cap, {} replayed, {} refused",
                r.mode,
                r.shape.label(),
                r.counts.ok,
                if r.mode == "preview" { " (previewed)" } else { "" },
                r.counts.paid,
                r.counts.capped,
                r.counts.replayed,
                r.counts.refused_total()
            );
        }
        for (code, (n, first)) in &r.counts.refused {
            crate::outln!("  {code}: {n} (first: {first})");
        }
    }
}

fn json_report(
    server: &Server,
    options: &BenchOptions,
    roster: Option<&RosterFigures>,
    results: &[ModeResult],
) -> Value {
    let modes: Vec<Value> = results
        .iter()
        .map(|r| {
            let (streams, concurrency, window) = match r.shape {
                Shape::Stream { streams, window, .. } => (Some(streams), None, Some(window)),
                Shape::Unary { concurrency, .. } => (None, Some(concurrency), None),
            };
            let mut latency: serde_json::Map<String, Value> = QUANTILES
                .iter()
                .map(|(name, p)| (name.replace('.', "_"), json!(r.quantile_ms(*p))))
                .collect();
            latency.insert("max".into(), json!(r.quantile_ms(1.0)));
            let baseline = r.baseline.and_then(|i| results.get(i));
            let ratio_to_echo = baseline.map(|echo| {
                ratios(r, echo)
                    .into_iter()
                    .map(|(name, v)| (name.replace('.', "_"), json!(v)))
                    .collect::<serde_json::Map<String, Value>>()
            });
            let refused: serde_json::Map<String, Value> = r
                .counts
                .refused
                .iter()
                .map(|(code, (n, _))| (code.clone(), json!(n)))
                .collect();
            json!({
                "mode": r.mode,
                "shape": r.shape.label(),
                "streams": streams,
                "concurrency": concurrency,
                "connections": r.shape.connections(),
                "window": window,
                "claims_sent": r.sent,
                "replies": r.replies,
                "settled": r.counts.ok,
                "paid": r.counts.paid,
                "capped": r.counts.capped,
                "replayed": r.counts.replayed,
                "refused": refused,
                "elapsed_s": r.elapsed.as_secs_f64(),
                "claims_per_s": r.rate(),
                "latency_ms": latency,
                "server_cpu_s": r.server.map(|s| s.cpu_seconds),
                "server_cpu_us_per_claim": r.cpu_us_per_claim(),
                "server_writer_cpu_s": r.server.and_then(|s| s.writer_cpu_seconds),
                "server_writer_cpu_us_per_claim": r.writer_cpu_us_per_claim(),
                "server_peak_rss_bytes": r.server.map(|s| s.peak_rss_bytes),
                "server_peak_rss_since_mode_start": r.server.map(|s| s.peak_since_mode),
                "server_rss_bytes": r.server.map(|s| s.rss_bytes),
                "client_cpu_s": r.client_cpu_seconds,
                "request_bytes_mean": r.request_bytes_mean,
                "reply_bytes_mean": r.reply_bytes_mean(),
                "echo_baseline": baseline.map(|e| format!("{} {}", e.mode, e.shape.label())),
                "ratio_to_echo": ratio_to_echo,
                "failures": r.failures,
            })
        })
        .collect();
    let roster = roster.map(|r| {
        let secs = r.elapsed.as_secs_f64();
        let rate = if secs > 0.0 { r.rows as f64 / secs } else { 0.0 };
        json!({ "rows": r.rows, "elapsed_s": secs, "rows_per_s": rate })
    });
    json!({
        "run_id": options.run_id,
        "server": server.url(),
        "members": options.members,
        "seed": options.seed,
        "claims_per_mode": options.claims,
        "window": options.window,
        "loss_ratio_period": options
            .loss_ratio
            .then(|| format!("{} {}", LOSS_RATIO_PERIOD.0, LOSS_RATIO_PERIOD.1)),
        "roster": roster,
        "modes": modes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn mix(members: u32) -> Mix {
        Mix {
            seed: 7,
            members,
            run_id: "20250612T101530.123".into(),
        }
    }

    #[test]
    fn claims_are_deterministic_and_differ_by_set_and_seed() {
        let m = mix(1000);
        assert_eq!(m.claim("s1", 5), m.claim("s1", 5));
        assert_ne!(m.claim("s1", 5).lines, m.claim("u1", 5).lines);
        let other = Mix { seed: 8, ..m.clone() };
        assert_ne!(m.claim("s1", 5).lines, other.claim("s1", 5).lines);
        assert_eq!(m.claim("s4", 12).claim_id, "20250612T101530.123-s4-12");
    }

    #[test]
    fn every_generated_claim_is_valid() {
        let m = mix(100_000);
        for k in 0..3_000 {
            let claim = m.claim("u64", k);
            if let Err(e) = claims::api::settlement::parse_claim(&claim) {
                panic!("claim {k} is invalid: {e:?}\n{claim:?}");
            }
        }
    }

    #[test]
    fn the_mix_has_the_shares_asked_for() {
        let m = mix(100_000);
        let n = 20_000u64;
        let (mut outpatient, mut inpatient, mut non_medical, mut heavy, mut cixi) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut members = BTreeSet::new();
        for k in 0..n {
            let c = m.claim("s1", k);
            let lines = c.lines.len();
            match c.visit_kind {
                v if v == VisitKind::Outpatient as i32 => {
                    outpatient += 1;
                    assert!((1..=5).contains(&lines));
                }
                v if v == VisitKind::Inpatient as i32 => {
                    inpatient += 1;
                    assert!((5..=30).contains(&lines));
                }
                _ => non_medical += 1,
            }
            if c.member_id.as_str() < member_id(HEAVY_MEMBERS).as_str() {
                heavy += 1;
            }
            if c.service_date.starts_with("2022") {
                cixi += 1;
            }
            members.insert(c.member_id);
        }
        let share = |x: u64| x as f64 / n as f64;
        assert!((0.67..0.73).contains(&share(outpatient)), "{outpatient}");
        assert!((0.22..0.28).contains(&share(inpatient)), "{inpatient}");
        assert!((0.03..0.07).contains(&share(non_medical)), "{non_medical}");
        assert!((0.01..0.03).contains(&share(heavy)), "{heavy}");
        assert!((0.70..0.80).contains(&share(cixi)), "{cixi}");
        assert!(members.len() > 15_000);
    }

    #[test]
    fn roster_rows_enroll_in_all_five_products() {
        let rows = roster_rows(42);
        assert!(rows.iter().all(|r| r.member_id == "BM000042"));
        let products: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.product_code.as_str(), r.period_start.as_str()))
            .collect();
        assert_eq!(products[0], ZHONGNING);
        assert_eq!(&products[1..], &CIXI);
        assert!([Category::AtRisk as i32, Category::UnstableExit as i32].contains(&rows[0].category));
        assert_eq!(rows[0].effective_date, "2020-04-26");
        assert!([Category::Dibao, Category::DibaoMarginal, Category::Destitute]
            .map(|c| c as i32)
            .contains(&rows[1].category));
        assert_eq!(rows[1].effective_date, "2022-01-01");
        assert!(rows[2..].iter().all(|r| r.category == 0 && r.effective_date.is_empty()));
        assert_eq!(roster_rows(42), rows);
    }

    #[test]
    fn claims_are_dealt_in_turn() {
        assert_eq!(deal((0..7).collect(), 3), vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        assert_eq!(deal(vec![1], 0), vec![vec![1]]);
    }

    #[test]
    fn long_run_ids_are_refused_before_sending() {
        let options = BenchOptions {
            members: 10,
            claims: 1_000_000,
            streams: vec![1, 4],
            connections: None,
            window: 32,
            concurrency: vec![1, 64],
            stream: true,
            unary: true,
            preview: true,
            echo: true,
            loss_ratio: true,
            seed: 1,
            skip_roster: false,
            run_id: "x".repeat(50),
            json: false,
            quiet: true,
        };
        assert!(check_claim_ids(&mix(10), &options).is_ok());
        let long = Mix {
            run_id: "x".repeat(60),
            ..mix(10)
        };
        assert!(check_claim_ids(&long, &options).is_err());
    }
}

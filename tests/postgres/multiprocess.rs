//! Three real `claimsd` processes on one PostgreSQL database (GitHub issue 4, point 4).
//!
//! 100 members are enrolled in five product periods (a cascade of five layers with tight per-claim,
//! benefit, product and aggregate caps); 32 Settle streams, spread round-robin over the three
//! processes, settle a few hundred claims each for random members among the same 100. While they
//! run:
//! - some claims are sent on two streams of two different processes at once (racing duplicates);
//! - once a claim is acknowledged, some are sent again, identical, to a different process (a replay
//!   with the same settlement and sequence) and some with different content (ALREADY_EXISTS);
//! - some acknowledged claims are reversed on a different process, some on both other processes at
//!   once (exactly one reversal succeeds, the other is FAILED_PRECONDITION).
//!
//! Afterwards, from the replies, the RPCs of all three processes and the database itself: no cap
//! was exceeded, no claim was stored twice, every reply equals the stored settlement, and replaying
//! the stored events (settlements and reversals, merged by their common sequence) through the engine
//! gives every stored settlement, the accumulators table and every process's loss ratios.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use claims::api::convert::{category_value, draft_from_request, reason_value};
use claims::domain::{
    format_money, parse_date, AccumulatorView, Catalogue, Category, Claim, ClaimDraft, Member, MemberId, Terms,
};
use claims::proto::member_service_client::MemberServiceClient;
use claims::proto::report_service_client::ReportServiceClient;
use claims::proto::settlement_reply::Result as ReplyResult;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::terms_service_client::TermsServiceClient;
use claims::proto::{
    ClaimRequest, EnrollmentRow, GetSettlementRequest, LayerPayout, ListProductsRequest, LossRatio, LossRatioRequest,
    ReverseRequest, Settlement, SettlementReply, StoredSettlement,
};
use rust_decimal::{Decimal, RoundingStrategy};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::common::products::{products_2024, AggregateCaps};
use crate::common::random::{random_claim_2024, send_in_bursts, MedicalAmounts, Odds, XorShift};
use crate::common::replay::{
    accumulator_money, accumulators_money, body, dec, export_settlements, key_of, period, settlement_of, EventReplay,
    Key,
};
use crate::common::{free_port, Server};

const PROCESSES: usize = 3;
const STREAMS: usize = 32;
const MEMBERS: usize = 100;
const CLAIMS_PER_STREAM: usize = 200;
const START: &str = "2024-01-01";
const END: &str = "2024-12-31";
/// Percent of a stream's claims also sent, at the same place, on the next stream (another process).
const RACING_DUPLICATE_PCT: u64 = 3;
/// Percent of acknowledged claims sent again, identical, to another process.
const RESUBMIT_PCT: u64 = 8;
/// Percent of acknowledged claims sent again with a different content to another process.
const CONFLICT_PCT: u64 = 3;
/// Percent of acknowledged claims reversed on one other process / on both other processes at once.
const REVERSE_PCT: u64 = 3;
const DOUBLE_REVERSE_PCT: u64 = 2;
/// `--batch-max` of each process: the default, and smaller batches (fewer members locked by each
/// transaction) so that the processes' transactions also run side by side.
const BATCH_MAX: [usize; PROCESSES] = [256, 32, 8];
/// The load takes 12-30 s on a busy two-core machine (debug build).
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// (file name, text) of the 2024 test products, applied by every process from its `--terms-dir`.
fn terms_files() -> [(&'static str, String); 5] {
    let products = products_2024(
        "mp",
        "multi-process test",
        AggregateCaps {
            topup: "300000.00",
            yongning: "180000.00",
            anti_poverty: "150000.00",
        },
    );
    [
        ("10-mp-assistance.toml", products.assistance),
        ("20-mp-topup.toml", products.topup),
        ("30-mp-yongning.toml", products.yongning),
        ("40-mp-stop-loss.toml", products.stop_loss),
        ("50-mp-anti-poverty.toml", products.anti_poverty),
    ]
}

/// The caps the load must have cut by, per product: each of them binds.
const MUST_BIND: [(&str, &[&str]); 5] = [
    (
        "mp-assistance",
        &["CAP_PER_CLAIM", "CAP_BENEFIT_ANNUAL", "CAP_PRODUCT_ANNUAL"],
    ),
    ("mp-topup", &["CAP_PER_CLAIM", "CAP_BENEFIT_ANNUAL", "CAP_AGGREGATE"]),
    ("mp-yongning", &["CAP_PER_CLAIM", "CAP_PRODUCT_ANNUAL", "CAP_AGGREGATE"]),
    ("mp-stop-loss", &["CAP_PER_CLAIM", "CAP_BENEFIT_ANNUAL"]),
    (
        "mp-anti-poverty",
        &["CAP_PER_CLAIM", "CAP_BENEFIT_ANNUAL", "CAP_AGGREGATE"],
    ),
];

fn fen_money(fen: i64) -> String {
    format_money(Decimal::new(fen, 2))
}

// ---------------------------------------------------------------------------------------------
// Harness: a fresh database and three claimsd processes.

/// The three server processes; killed when dropped, so that a failed assertion leaves none behind.
/// When dropped by a panic, the end of each server's log is printed.
struct Cluster {
    servers: Vec<Server>,
    dir: tempfile::TempDir,
    database_url: String,
}

impl Cluster {
    /// Writes the terms files and starts the processes at once on `database_url`, then waits until
    /// each answers gRPC health with SERVING.
    async fn start(database_url: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let terms_dir = dir.path().join("terms");
        std::fs::create_dir(&terms_dir).expect("terms dir");
        for (name, text) in terms_files() {
            std::fs::write(terms_dir.join(name), text).expect("write terms");
        }
        let mut cluster = Cluster {
            servers: Vec::new(),
            dir,
            database_url: database_url.to_owned(),
        };
        for i in 0..PROCESSES {
            let server = cluster.spawn(i, 0);
            cluster.servers.push(server);
        }
        for i in 0..PROCESSES {
            cluster.wait_serving(i).await;
        }
        cluster
    }

    /// Starts process `i` on a free port (bound and released here; the server binds it right after).
    fn spawn(&self, i: usize, attempt: usize) -> Server {
        let port = free_port();
        let log = self.dir.path().join(format!("claimsd-{i}-{attempt}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_claimsd"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(&self.database_url)
            .arg("--terms-dir")
            .arg(self.dir.path().join("terms"))
            .arg("--db-connections")
            .arg("4")
            .arg("--batch-max")
            .arg(BATCH_MAX[i].to_string())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("CLAIMS_METRICS_LISTEN")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("claimsd starts");
        Server {
            child,
            port,
            stderr: log,
        }
    }

    async fn channel(&self, i: usize) -> Channel {
        Channel::from_shared(self.servers[i].url())
            .expect("url")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("claimsd {i} does not accept connections: {e}"))
    }

    /// Waits until process `i` answers health with SERVING and lists exactly this test's products
    /// (so that it is not some other server that took the port). A process that could not bind its
    /// port (taken since it was chosen) is started again on another.
    async fn wait_serving(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut attempt = 0;
        let mut ours: Vec<String> = terms_files()
            .iter()
            .map(|(_, t)| Terms::from_toml(t).expect("terms").product.code.to_string())
            .collect();
        ours.sort();
        loop {
            if let Some(status) = self.servers[i].child.try_wait().expect("try_wait") {
                let log = std::fs::read_to_string(&self.servers[i].stderr).unwrap_or_default();
                if log.contains("in use") && attempt < 3 {
                    attempt += 1;
                    self.servers[i] = self.spawn(i, attempt);
                    continue;
                }
                panic!("claimsd {i} exited at start ({status}):\n{log}");
            }
            if let Ok(channel) = Channel::from_shared(self.servers[i].url())
                .expect("url")
                .connect()
                .await
            {
                let serving = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest { service: String::new() })
                    .await
                    .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
                if serving {
                    let products = TermsServiceClient::new(channel)
                        .list_products(ListProductsRequest {})
                        .await
                        .map(|r| {
                            let mut codes: Vec<String> =
                                r.into_inner().products.into_iter().map(|p| p.product_code).collect();
                            codes.sort();
                            codes
                        });
                    if products.is_ok_and(|codes| codes == ours) {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "claimsd {i} not SERVING after 90 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every process is still running (none crashed under the load).
    fn assert_running(&mut self) {
        for (i, s) in self.servers.iter_mut().enumerate() {
            if let Some(status) = s.child.try_wait().expect("try_wait") {
                panic!("claimsd {i} exited during the test ({status})");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("database left for inspection: {}", self.database_url);
            for (i, s) in self.servers.iter().enumerate() {
                let text = std::fs::read_to_string(&s.stderr).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("--- end of claimsd {i}'s log ({}):\n{tail}", s.stderr.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Members and claims.

fn member_id(i: usize) -> String {
    format!("MP{i:03}")
}

/// Category changes of member `i` (effective date, category): mostly the low-income groups of the
/// Cixi layers, some the anti-poverty groups, and two kinds of change on 2024-07-01.
fn categories(i: usize) -> Vec<(&'static str, &'static str)> {
    match i % 10 {
        0..=2 => vec![(START, "DIBAO")],
        3 | 4 => vec![(START, "DESTITUTE")],
        5 => vec![(START, "DIBAO_MARGINAL")],
        6 => vec![(START, "DIBAO"), ("2024-07-01", "DESTITUTE")],
        7 => vec![(START, "AT_RISK")],
        8 => vec![(START, "UNSTABLE_EXIT")],
        _ => vec![(START, "DIBAO_MARGINAL"), ("2024-07-01", "AT_RISK")],
    }
}

fn enrollment_row(member: &str, category: &str, effective: &str, product: &str) -> EnrollmentRow {
    EnrollmentRow {
        member_id: member.into(),
        category: category_value(category).expect("category"),
        effective_date: effective.into(),
        product_code: product.into(),
        period_start: if product.is_empty() {
            String::new()
        } else {
            START.into()
        },
        premium: String::new(),
    }
}

/// Roster rows of member `i`: the first category with the first enrollment, the other
/// enrollments, then the later category changes.
fn roster_rows(i: usize, products: &[String]) -> Vec<EnrollmentRow> {
    let id = member_id(i);
    let cats = categories(i);
    let mut rows = vec![enrollment_row(&id, cats[0].1, cats[0].0, &products[0])];
    for p in &products[1..] {
        rows.push(enrollment_row(&id, "", "", p));
    }
    for (date, category) in &cats[1..] {
        rows.push(enrollment_row(&id, category, date, ""));
    }
    rows
}

/// The member as the engine sees it.
fn domain_member(i: usize, terms: &BTreeMap<String, Terms>) -> Member {
    let mut m = Member::new(MemberId::parse(&member_id(i)).expect("member id"));
    for (date, category) in categories(i) {
        m.categories.set(
            parse_date(date).expect("date"),
            Category::from_str(category).expect("category"),
        );
    }
    for (code, t) in terms {
        m.enrollments.insert(period(code, START), t.product.premium_per_member);
    }
    m
}

/// The amounts of the medical claims ([`random_claim_2024`]): those of a county hospital.
const AMOUNTS: MedicalAmounts = MedicalAmounts {
    in_scope_inpatient: 80_000..=1_500_000,
    in_scope_other: 10_000..=300_000,
    basic_pct: 30..=70,
    critical: (Odds::OneIn(4), 0..=40),
    b_self_pay: (Odds::AllButOneIn(3), 5_000..=200_000),
    out_of_catalogue: (Odds::OneIn(2), 5_000..=400_000),
    non_compliant: (Odds::OneIn(5), 100..=30_000),
};

/// The same key with a different content: one fen more on the first line.
fn conflicting(request: &ClaimRequest) -> ClaimRequest {
    let mut changed = request.clone();
    let amount = dec(&changed.lines[0].amount) + Decimal::new(1, 2);
    changed.lines[0].amount = format_money(amount);
    changed
}

/// What happens to a claim once it is acknowledged.
#[derive(Debug, Clone, Copy, Default)]
struct Fate {
    resubmit: bool,
    conflict: bool,
    /// 0: not reversed; 1: reversed on another process; 2: on both other processes at once.
    reversals: u8,
}

impl Fate {
    fn any(&self) -> bool {
        self.resubmit || self.conflict || self.reversals > 0
    }
}

// ---------------------------------------------------------------------------------------------
// The load.

/// An acknowledged claim, to the dispatcher of resubmissions and reversals.
struct Acknowledged {
    key: Key,
    process: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Replay,
    Conflict,
}

struct ResubmitOutcome {
    key: Key,
    expect: Expect,
    process: usize,
    reply: SettlementReply,
}

struct ReversalOutcome {
    key: Key,
    attempts: Vec<(usize, Result<StoredSettlement, tonic::Status>)>,
}

/// One load stream: sends its claims in bursts of 1-8 with pauses of 0-2 ms (so that the streams
/// overlap for the whole run), reports every new settlement whose claim has a fate.
async fn load_stream(
    s: usize,
    channel: Channel,
    claims: Vec<ClaimRequest>,
    fates: Arc<HashMap<Key, Fate>>,
    acknowledged: mpsc::UnboundedSender<Acknowledged>,
    barrier: Arc<tokio::sync::Barrier>,
) -> Vec<SettlementReply> {
    let process = s % PROCESSES;
    let mut client = SettlementServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    barrier.wait().await;
    let sender = tokio::spawn(send_in_bursts(XorShift::new(0xb0a7_0000 + s as u64), claims, tx));
    let mut replies = client
        .settle(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("stream {s}: settle stream opens: {e}"))
        .into_inner();
    let mut out = Vec::new();
    while let Some(reply) = replies
        .message()
        .await
        .unwrap_or_else(|e| panic!("stream {s}: reply stream failed: {e}"))
    {
        if let Some(ReplyResult::Settlement(stored)) = &reply.result {
            let body = stored.settlement.as_ref().expect("settlement body");
            let key = (body.hospital_id.clone(), body.claim_id.clone());
            if !reply.replay && fates.get(&key).is_some_and(Fate::any) {
                let _ = acknowledged.send(Acknowledged { key, process });
            }
        }
        out.push(reply);
    }
    sender.await.expect("sender");
    out
}

/// A Settle stream on process `p` for resubmissions: takes (request, expectation) and returns the
/// replies paired with what was expected.
async fn resubmit_stream(
    p: usize,
    channel: Channel,
    mut items: mpsc::UnboundedReceiver<(ClaimRequest, Expect)>,
) -> Vec<ResubmitOutcome> {
    let (req_tx, req_rx) = mpsc::unbounded_channel::<ClaimRequest>();
    let (exp_tx, mut exp_rx) = mpsc::unbounded_channel::<(Key, Expect)>();
    let forward = tokio::spawn(async move {
        while let Some((request, expect)) = items.recv().await {
            exp_tx.send((key_of(&request), expect)).expect("expectations kept");
            req_tx.send(request).expect("request stream open");
        }
    });
    let mut client = SettlementServiceClient::new(channel);
    let mut replies = client
        .settle(UnboundedReceiverStream::new(req_rx))
        .await
        .unwrap_or_else(|e| panic!("resubmissions on {p}: stream opens: {e}"))
        .into_inner();
    let mut out = Vec::new();
    while let Some(reply) = replies
        .message()
        .await
        .unwrap_or_else(|e| panic!("resubmissions on {p}: reply stream failed: {e}"))
    {
        let (key, expect) = exp_rx.recv().await.expect("a reply per resubmission");
        assert_eq!(reply.claim_id, key.1, "resubmissions on {p}: replies in request order");
        out.push(ResubmitOutcome {
            key,
            expect,
            process: p,
            reply,
        });
    }
    forward.await.expect("forward");
    out
}

async fn reverse_on(channel: Channel, key: &Key) -> Result<StoredSettlement, tonic::Status> {
    SettlementServiceClient::new(channel)
        .reverse(ReverseRequest {
            hospital_id: key.0.clone(),
            claim_id: key.1.clone(),
        })
        .await
        .map(|r| r.into_inner().settlement.expect("reversed settlement"))
}

/// Sends the follow-ups of every acknowledged claim: identical resubmissions to the next process,
/// conflicting ones to the one after, reversals to the next (or to both others at once).
async fn dispatch(
    mut acknowledged: mpsc::UnboundedReceiver<Acknowledged>,
    resubmit: Vec<mpsc::UnboundedSender<(ClaimRequest, Expect)>>,
    channels: Vec<Channel>,
    requests: Arc<HashMap<Key, ClaimRequest>>,
    fates: Arc<HashMap<Key, Fate>>,
) -> Vec<ReversalOutcome> {
    let mut reversals = tokio::task::JoinSet::new();
    while let Some(Acknowledged { key, process }) = acknowledged.recv().await {
        let fate = fates[&key];
        let request = &requests[&key];
        let next = (process + 1) % PROCESSES;
        let after = (process + 2) % PROCESSES;
        if fate.resubmit {
            resubmit[next]
                .send((request.clone(), Expect::Replay))
                .expect("resubmission stream open");
        }
        if fate.conflict {
            resubmit[after]
                .send((conflicting(request), Expect::Conflict))
                .expect("resubmission stream open");
        }
        match fate.reversals {
            0 => {}
            1 => {
                let channel = channels[next].clone();
                reversals.spawn(async move {
                    let result = reverse_on(channel, &key).await;
                    ReversalOutcome {
                        key,
                        attempts: vec![(next, result)],
                    }
                });
            }
            _ => {
                let (a, b) = (channels[next].clone(), channels[after].clone());
                reversals.spawn(async move {
                    let (ra, rb) = tokio::join!(reverse_on(a, &key), reverse_on(b, &key));
                    ReversalOutcome {
                        key,
                        attempts: vec![(next, ra), (after, rb)],
                    }
                });
            }
        }
    }
    drop(resubmit);
    let mut out = Vec::new();
    while let Some(done) = reversals.join_next().await {
        out.push(done.expect("reversal task"));
    }
    out
}

/// Every settlement, reversed ones included, as ExportSettlements on process `p` gives them.
async fn export_all(p: usize, channel: Channel) -> HashMap<Key, StoredSettlement> {
    let export = export_settlements(channel, true)
        .await
        .unwrap_or_else(|e| panic!("export on {p}: {e}"));
    let mut exported = HashMap::new();
    let mut last = 0;
    for s in export {
        assert!(s.sequence > last, "export on {p} in sequence order");
        last = s.sequence;
        let b = body(&s);
        let key = (b.hospital_id.clone(), b.claim_id.clone());
        assert!(
            exported.insert(key.clone(), s).is_none(),
            "{key:?} exported twice by {p}"
        );
    }
    exported
}

/// GetSettlement of each key on process `p`.
async fn get_all(p: usize, channel: Channel, keys: Vec<Key>) -> Vec<(Key, StoredSettlement)> {
    let mut client = SettlementServiceClient::new(channel);
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let got = client
            .get_settlement(GetSettlementRequest {
                hospital_id: key.0.clone(),
                claim_id: key.1.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetSettlement {key:?} on {p}: {e}"))
            .into_inner();
        out.push((key, got));
    }
    out
}

/// A reply (or a reversal's answer) against the stored settlement: the same settlement, sequence
/// and settlement time; marked reversed only if the claim is, with the same time.
fn assert_matches_stored(what: &str, key: &Key, got: &StoredSettlement, stored: &StoredSettlement) {
    assert_eq!(
        got.settlement, stored.settlement,
        "{what} {key:?}: settlement differs from the stored one"
    );
    assert_eq!(got.sequence, stored.sequence, "{what} {key:?}: sequence");
    assert_eq!(got.settled_at, stored.settled_at, "{what} {key:?}: settled_at");
    if got.reversed {
        assert!(
            stored.reversed,
            "{what} {key:?}: reply says reversed, the store does not"
        );
        assert_eq!(got.reversed_at, stored.reversed_at, "{what} {key:?}: reversed_at");
    } else {
        assert!(
            got.reversed_at.is_empty(),
            "{what} {key:?}: reversed_at without reversed"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_database_keep_every_cap_and_equal_a_replay_in_commit_order() {
    let test_started = Instant::now();
    let url = crate::common::fresh_database().await;
    let mut cluster = Cluster::start(&url).await;
    let mut channels = Vec::new();
    for p in 0..PROCESSES {
        channels.push(cluster.channel(p).await);
    }

    // The engine's view of the terms: each file once, version 1 (every process applied the same
    // text; only the first stored it).
    let mut catalogue = Catalogue::new();
    let mut terms: BTreeMap<String, Terms> = BTreeMap::new();
    for (_, text) in terms_files() {
        let t = Terms::from_toml(&text).expect("terms parse");
        terms.insert(t.product.code.to_string(), t.clone());
        assert_eq!(catalogue.apply(t).expect("catalogue").version(), 1);
    }
    let products: Vec<String> = terms.keys().cloned().collect();

    // 100 members, enrolled in every product, a third through each process at once.
    let mut enrolls = Vec::new();
    for (p, channel) in channels.iter().enumerate() {
        let rows: Vec<EnrollmentRow> = (0..MEMBERS)
            .filter(|i| i % PROCESSES == p)
            .flat_map(|i| roster_rows(i, &products))
            .collect();
        let channel = channel.clone();
        enrolls.push(tokio::spawn(async move {
            MemberServiceClient::new(channel)
                .enroll(tokio_stream::iter(rows))
                .await
                .expect("enroll")
                .into_inner()
        }));
    }
    let mut enrolled = 0;
    for e in enrolls {
        let summary = e.await.expect("enroll task");
        assert!(summary.errors.is_empty(), "roster errors: {:?}", summary.errors);
        enrolled += summary.enrollments;
    }
    assert_eq!(enrolled, (MEMBERS * products.len()) as u64);
    let setup = test_started.elapsed();
    let members: HashMap<String, Member> = (0..MEMBERS).map(|i| (member_id(i), domain_member(i, &terms))).collect();

    // Claims: 32 streams of CLAIMS_PER_STREAM claims for random members; some also sent on the next
    // stream (another process) at the same place.
    let mut streams: Vec<Vec<ClaimRequest>> = Vec::new();
    let mut requests: HashMap<Key, ClaimRequest> = HashMap::new();
    let mut fates: HashMap<Key, Fate> = HashMap::new();
    let mut fate_rng = XorShift::new(0xfa7e_5eed);
    for s in 0..STREAMS {
        let mut rng = XorShift::new(0x5eed_2024_0000 + s as u64 * 7919);
        let claims: Vec<ClaimRequest> = (0..CLAIMS_PER_STREAM)
            .map(|i| {
                let m = member_id(rng.below(MEMBERS as u64) as usize);
                random_claim_2024(&mut rng, &format!("MP{s:02}-{i:04}"), &m, &AMOUNTS)
            })
            .collect();
        for c in &claims {
            assert!(
                requests.insert(key_of(c), c.clone()).is_none(),
                "claim ids are distinct"
            );
            let reversal_roll = fate_rng.below(100);
            fates.insert(
                key_of(c),
                Fate {
                    resubmit: fate_rng.below(100) < RESUBMIT_PCT,
                    conflict: fate_rng.below(100) < CONFLICT_PCT,
                    reversals: if reversal_roll < REVERSE_PCT {
                        1
                    } else if reversal_roll < REVERSE_PCT + DOUBLE_REVERSE_PCT {
                        2
                    } else {
                        0
                    },
                },
            );
        }
        streams.push(claims);
    }
    let mut racing: Vec<(usize, usize, ClaimRequest)> = Vec::new();
    let mut dup_rng = XorShift::new(0xd0_b1e5);
    for (s, claims) in streams.iter().enumerate() {
        for (i, c) in claims.iter().enumerate() {
            if dup_rng.below(100) < RACING_DUPLICATE_PCT {
                racing.push(((s + 1) % STREAMS, i, c.clone()));
            }
        }
    }
    // Inserted from the back so that the positions stay those of the original streams.
    racing.sort_by_key(|(t, i, _)| (*t, std::cmp::Reverse(*i)));
    for (t, i, c) in &racing {
        streams[*t].insert(*i, c.clone());
    }
    let sent_on_load: usize = streams.iter().map(Vec::len).sum();
    let requests = Arc::new(requests);
    let fates = Arc::new(fates);

    // The load: 32 streams (own connection each) released together, three resubmission streams,
    // reversals as claims are acknowledged.
    let started = Instant::now();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let mut resubmit_senders = Vec::new();
    let mut resubmit_tasks = Vec::new();
    for p in 0..PROCESSES {
        let (tx, rx) = mpsc::unbounded_channel();
        resubmit_senders.push(tx);
        let channel = cluster.channel(p).await;
        resubmit_tasks.push(tokio::spawn(resubmit_stream(p, channel, rx)));
    }
    let dispatcher = tokio::spawn(dispatch(
        ack_rx,
        resubmit_senders,
        channels.clone(),
        requests.clone(),
        fates.clone(),
    ));
    let barrier = Arc::new(tokio::sync::Barrier::new(STREAMS));
    let mut load_tasks = Vec::new();
    for (s, claims) in streams.iter().enumerate() {
        let channel = cluster.channel(s % PROCESSES).await;
        load_tasks.push(tokio::spawn(load_stream(
            s,
            channel,
            claims.clone(),
            fates.clone(),
            ack_tx.clone(),
            barrier.clone(),
        )));
    }
    drop(ack_tx);
    // A writer stuck on a lock would hang the streams: give up (with the servers' logs) instead.
    let (load_replies, load_elapsed, reversal_outcomes, resubmit_outcomes) =
        tokio::time::timeout(LOAD_TIMEOUT, async {
            let mut load_replies = Vec::new();
            for t in load_tasks {
                load_replies.push(t.await.expect("load stream task"));
            }
            let load_elapsed = started.elapsed();
            let reversal_outcomes = dispatcher.await.expect("dispatcher");
            let mut resubmit_outcomes = Vec::new();
            for t in resubmit_tasks {
                resubmit_outcomes.extend(t.await.expect("resubmission stream task"));
            }
            (load_replies, load_elapsed, reversal_outcomes, resubmit_outcomes)
        })
        .await
        .unwrap_or_else(|_| panic!("the load did not finish within {LOAD_TIMEOUT:?}"));
    let elapsed = started.elapsed();
    cluster.assert_running();

    // ---- The replies.
    // Every successful reply: (key, what was answered, replay, where).
    let mut acks: Vec<(Key, StoredSettlement, bool, String)> = Vec::new();
    for (s, (claims, got)) in streams.iter().zip(&load_replies).enumerate() {
        assert_eq!(got.len(), claims.len(), "stream {s}: one reply per request");
        // Claims of one member in one stream settle in stream order: each new settlement comes
        // after every earlier claim of the member in the stream. (A replay may carry an earlier
        // number: its racing copy on another stream settled first.)
        let mut last_of_member: HashMap<&str, u64> = HashMap::new();
        for (request, reply) in claims.iter().zip(got) {
            assert_eq!(reply.claim_id, request.claim_id, "stream {s}: replies in request order");
            let stored = settlement_of(reply);
            let b = body(stored);
            assert_eq!(
                (b.hospital_id.as_str(), b.claim_id.as_str(), b.member_id.as_str()),
                (
                    request.hospital_id.as_str(),
                    request.claim_id.as_str(),
                    request.member_id.as_str()
                ),
                "stream {s}: the reply is the request's"
            );
            let last = last_of_member.entry(request.member_id.as_str()).or_default();
            assert!(
                reply.replay || stored.sequence > *last,
                "stream {s}: claim {} of member {} settled at sequence {}, before an earlier claim of the stream (at {last})",
                request.claim_id,
                request.member_id,
                stored.sequence
            );
            *last = (*last).max(stored.sequence);
            acks.push((
                key_of(request),
                stored.clone(),
                reply.replay,
                format!("stream {s} (process {})", s % PROCESSES),
            ));
        }
    }
    let mut replays = 0;
    let mut conflicts = 0;
    for r in &resubmit_outcomes {
        match r.expect {
            Expect::Replay => {
                let stored = settlement_of(&r.reply);
                assert!(r.reply.replay, "{:?}: an identical resubmission is a replay", r.key);
                acks.push((
                    r.key.clone(),
                    stored.clone(),
                    true,
                    format!("resubmission on process {}", r.process),
                ));
                replays += 1;
            }
            Expect::Conflict => {
                match &r.reply.result {
                    Some(ReplyResult::Error(e)) => assert_eq!(
                        e.code,
                        Code::AlreadyExists as i32,
                        "{:?}: a different content under a settled key is ALREADY_EXISTS: {}",
                        r.key,
                        e.message
                    ),
                    other => panic!("{:?}: a conflicting resubmission was answered {other:?}", r.key),
                }
                conflicts += 1;
            }
        }
    }
    let expected_resubmits = fates.values().filter(|f| f.resubmit).count();
    let expected_conflicts = fates.values().filter(|f| f.conflict).count();
    assert_eq!(replays, expected_resubmits, "every identical resubmission answered");
    assert_eq!(conflicts, expected_conflicts, "every conflicting resubmission answered");

    // Reversals: one succeeds per claim; of two at once, exactly one.
    let mut reversed: HashMap<Key, StoredSettlement> = HashMap::new();
    let mut double_reversals = 0;
    for r in &reversal_outcomes {
        let ok: Vec<&StoredSettlement> = r.attempts.iter().filter_map(|(_, a)| a.as_ref().ok()).collect();
        assert_eq!(
            ok.len(),
            1,
            "{:?}: exactly one reversal succeeds: {:?}",
            r.key,
            r.attempts
                .iter()
                .map(|(p, a)| (p, a.as_ref().map(|s| s.sequence).map_err(|e| e.code())))
                .collect::<Vec<_>>()
        );
        for (p, a) in &r.attempts {
            if let Err(e) = a {
                assert_eq!(
                    e.code(),
                    Code::FailedPrecondition,
                    "{:?}: the second reversal (process {p}) is FAILED_PRECONDITION: {e:?}",
                    r.key
                );
            }
        }
        if r.attempts.len() == 2 {
            double_reversals += 1;
        }
        assert!(
            ok[0].reversed && !ok[0].reversed_at.is_empty(),
            "{:?}: marked reversed",
            r.key
        );
        assert!(
            reversed.insert(r.key.clone(), ok[0].clone()).is_none(),
            "one reversal each"
        );
    }
    assert_eq!(
        reversed.len(),
        fates.values().filter(|f| f.reversals > 0).count(),
        "every planned reversal ran"
    );

    // Per key: exactly one first settlement; every other answer a replay of it.
    let mut first_of: HashMap<Key, u64> = HashMap::new();
    for (key, stored, replay, _) in &acks {
        if !*replay {
            assert!(
                first_of.insert(key.clone(), stored.sequence).is_none(),
                "{key:?} settled twice (two replies that are not replays)"
            );
        }
    }
    for (key, stored, _, from) in &acks {
        let first = first_of
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} was only ever answered as a replay"));
        assert_eq!(stored.sequence, *first, "{key:?}: {from} answered another sequence");
    }
    let acked_keys: BTreeSet<Key> = first_of.keys().cloned().collect();
    assert_eq!(acked_keys.len(), requests.len(), "every claim was settled");

    // ---- The stored settlements: every one through ExportSettlements on each process (the same
    // on all three), the claims with follow-ups, the racing duplicates and every 16th other claim
    // also through GetSettlement, round-robin over the processes. (GetSettlement for all 6,400 takes
    // half a minute on a debug build; the rows themselves are compared with the database below.)
    let racing_keys: HashSet<Key> = racing.iter().map(|(_, _, c)| key_of(c)).collect();
    let sample: Vec<Key> = acked_keys
        .iter()
        .enumerate()
        .filter(|(i, k)| i % 16 == 0 || fates[*k].any() || racing_keys.contains(*k))
        .map(|(_, k)| k.clone())
        .collect();
    let sample = Arc::new(sample);
    // All at once: three exports and three runs of GetSettlement.
    let exports: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(p, channel)| tokio::spawn(export_all(p, channel.clone())))
        .collect();
    let gets: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(p, channel)| {
            let keys: Vec<Key> = sample.iter().skip(p).step_by(PROCESSES).cloned().collect();
            tokio::spawn(get_all(p, channel.clone(), keys))
        })
        .collect();
    let mut stored: HashMap<Key, StoredSettlement> = HashMap::new();
    for (p, export) in exports.into_iter().enumerate() {
        let exported = export.await.expect("export task");
        if p == 0 {
            stored = exported;
        } else {
            assert!(exported == stored, "process {p} exports what process 0 exports");
        }
    }
    assert_eq!(
        stored.len(),
        acked_keys.len(),
        "one stored settlement per settled claim"
    );
    for (p, g) in gets.into_iter().enumerate() {
        for (key, got) in g.await.expect("get task") {
            assert_eq!(
                Some(&got),
                stored.get(&key),
                "{key:?}: GetSettlement on {p} and the export"
            );
        }
    }

    // Every successful reply, every successful reversal equals the stored settlement.
    for (key, got, _, from) in &acks {
        assert_matches_stored(from, key, got, &stored[key]);
    }
    for (key, got) in &reversed {
        let s = &stored[key];
        assert!(s.reversed, "{key:?} reversed but not stored as reversed");
        assert_matches_stored("reversal", key, got, s);
    }
    for (key, s) in &stored {
        assert_eq!(s.reversed, reversed.contains_key(key), "{key:?}: reversed in store");
    }

    let fetched = started.elapsed();
    // ---- The database itself.
    let mut db = PgConnection::connect(&url).await.expect("open the test database");
    let twice = sqlx::query(
        "SELECT hospital_id, claim_id, COUNT(*) AS n FROM settlements GROUP BY hospital_id, claim_id \
         HAVING COUNT(*) > 1",
    )
    .fetch_all(&mut db)
    .await
    .expect("duplicates");
    assert!(twice.is_empty(), "{} claims stored more than once", twice.len());
    let settlement_rows = sqlx::query(
        "SELECT seq, hospital_id, claim_id, member_id, service_date, category, claim_json, total_cost_fen, \
         upstream_fen, payout_fen, out_of_pocket_fen, reasons, settled_at FROM settlements ORDER BY seq",
    )
    .fetch_all(&mut db)
    .await
    .expect("settlements");
    assert_eq!(
        settlement_rows.len(),
        acked_keys.len(),
        "one settlements row per claim that got a settlement"
    );
    let mut layer_rows: HashMap<i64, Vec<LayerPayout>> = HashMap::new();
    for row in sqlx::query(
        "SELECT seq, layer_index, product_code, period_start, period_end, terms_version, layer_order, \
         benefit_code, eligible_fen, deductible_fen, payout_fen, reasons FROM settlement_layers \
         ORDER BY seq, layer_index",
    )
    .fetch_all(&mut db)
    .await
    .expect("settlement layers")
    {
        let seq: i64 = row.get("seq");
        let layers = layer_rows.entry(seq).or_default();
        assert_eq!(
            row.get::<i64, _>("layer_index"),
            layers.len() as i64,
            "settlement {seq}: layer indexes"
        );
        layers.push(LayerPayout {
            product_code: row.get("product_code"),
            period_start: row.get("period_start"),
            period_end: row.get("period_end"),
            terms_version: u32::try_from(row.get::<i64, _>("terms_version")).expect("version"),
            layer_order: row.get("layer_order"),
            benefit_code: row.get::<Option<String>, _>("benefit_code").unwrap_or_default(),
            eligible: fen_money(row.get("eligible_fen")),
            deductible_applied: fen_money(row.get("deductible_fen")),
            payout: fen_money(row.get("payout_fen")),
            reasons: reasons_of(&row.get::<String, _>("reasons")),
        });
    }
    let reversal_rows = sqlx::query("SELECT seq, settlement_seq, reversed_at FROM reversals ORDER BY seq")
        .fetch_all(&mut db)
        .await
        .expect("reversals");
    assert_eq!(
        reversal_rows.len(),
        reversed.len(),
        "one reversals row per successful reversal"
    );

    // The stored claim of every row is the one first sent, and the row is the settlement every
    // process returns, field for field.
    enum Event {
        Settle {
            key: Key,
            claim: Box<Claim>,
            member: String,
        },
        Reverse {
            settlement_seq: i64,
        },
    }
    let mut events: BTreeMap<i64, Event> = BTreeMap::new();
    let mut key_of_seq: HashMap<i64, Key> = HashMap::new();
    for row in &settlement_rows {
        let seq: i64 = row.get("seq");
        let key: Key = (row.get("hospital_id"), row.get("claim_id"));
        let s = stored
            .get(&key)
            .unwrap_or_else(|| panic!("row {seq} {key:?} was never acknowledged"));
        assert_eq!(s.sequence, u64::try_from(seq).expect("seq"), "{key:?}: sequence");
        let draft: ClaimDraft = serde_json::from_str(&row.get::<String, _>("claim_json")).expect("claim_json parses");
        let claim = Claim::parse(&draft).expect("the stored claim is valid");
        let sent = Claim::parse(&draft_from_request(&requests[&key])).expect("the sent claim is valid");
        assert_eq!(
            claim, sent,
            "{key:?}: the stored claim is the one sent (a conflict changed nothing)"
        );
        let from_db = Settlement {
            claim_id: key.1.clone(),
            hospital_id: key.0.clone(),
            member_id: row.get("member_id"),
            service_date: row.get("service_date"),
            category: category_value(&row.get::<String, _>("category")).expect("category"),
            total_cost: fen_money(row.get("total_cost_fen")),
            upstream_total: fen_money(row.get("upstream_fen")),
            payout_total: fen_money(row.get("payout_fen")),
            out_of_pocket: fen_money(row.get("out_of_pocket_fen")),
            layers: layer_rows.remove(&seq).unwrap_or_default(),
            reasons: reasons_of(&row.get::<String, _>("reasons")),
        };
        assert_eq!(
            Some(&from_db),
            s.settlement.as_ref(),
            "{key:?}: database rows and GetSettlement"
        );
        assert_eq!(row.get::<String, _>("settled_at"), s.settled_at, "{key:?}: settled_at");
        key_of_seq.insert(seq, key.clone());
        events.insert(
            seq,
            Event::Settle {
                key,
                claim: Box::new(claim),
                member: row.get("member_id"),
            },
        );
    }
    assert!(layer_rows.is_empty(), "settlement_layers rows without their settlement");
    let mut reversed_seqs = HashSet::new();
    for row in &reversal_rows {
        let seq: i64 = row.get("seq");
        let settlement_seq: i64 = row.get("settlement_seq");
        let key = key_of_seq
            .get(&settlement_seq)
            .unwrap_or_else(|| panic!("reversal {seq} of a missing settlement {settlement_seq}"));
        assert!(
            reversed_seqs.insert(settlement_seq),
            "settlement {settlement_seq} reversed twice"
        );
        assert_eq!(
            row.get::<String, _>("reversed_at"),
            stored[key].reversed_at,
            "{key:?}: reversed_at"
        );
        assert!(
            seq > settlement_seq,
            "{key:?}: reversal {seq} numbered before its settlement {settlement_seq}"
        );
        let clash = events.insert(seq, Event::Reverse { settlement_seq });
        assert!(
            clash.is_none(),
            "sequence {seq} numbers both a settlement and a reversal: reversals must draw from the settlements' sequence"
        );
    }

    // The processes committed side by side: in commit order, the settling process changes often.
    let mut settled_by: HashMap<&Key, usize> = HashMap::new();
    for (s, got) in load_replies.iter().enumerate() {
        for reply in got.iter().filter(|r| !r.replay) {
            let b = body(settlement_of(reply));
            let key = (b.hospital_id.clone(), b.claim_id.clone());
            let (key, _) = requests.get_key_value(&key).expect("a sent claim");
            settled_by.insert(key, s % PROCESSES);
        }
    }
    let by_process: Vec<usize> = events
        .values()
        .filter_map(|e| match e {
            Event::Settle { key, .. } => Some(settled_by[key]),
            Event::Reverse { .. } => None,
        })
        .collect();
    let switches = by_process.windows(2).filter(|w| w[0] != w[1]).count();
    // With 100 shared members a batch of a hundred claims locks most of them, so the processes take
    // turns in long runs; still, each settled its share and their turns alternated.
    assert!(
        switches >= 4 * PROCESSES,
        "only {switches} changes of process among {} settlements in commit order: the processes did not overlap",
        by_process.len()
    );
    for p in 0..PROCESSES {
        let share = by_process.iter().filter(|&&q| q == p).count();
        assert!(
            share * 10 >= by_process.len(),
            "process {p} settled only {share} of {} claims",
            by_process.len()
        );
    }

    // ---- Replay every event in sequence order through the engine.
    let mut replay = EventReplay::new(&catalogue);
    let mut payouts_of: HashMap<i64, Vec<(String, Decimal)>> = HashMap::new();
    let mut reasons: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut aggregate_peak: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut aggregate_reached_at: BTreeMap<String, usize> = BTreeMap::new();
    for (position, (seq, event)) in events.iter().enumerate() {
        match event {
            Event::Settle { key, claim, member } => {
                let m = &members[member];
                let replayed = replay.settle(m, claim, &stored[key], |replayed, acc| {
                    // No cap exceeded: each payout within the room each cap left before it.
                    for layer in &replayed.layers {
                        let code = layer.product.to_string();
                        let t = &terms[&code];
                        let k = layer.key();
                        for r in &layer.reasons {
                            *reasons.entry((code.clone(), r.as_str().to_owned())).or_default() += 1;
                        }
                        let room = |cap: Decimal, used: Decimal| (cap - used).max(Decimal::ZERO);
                        if let Some(benefit) = &layer.benefit {
                            let b = t
                                .benefits
                                .iter()
                                .find(|x| x.code.as_str() == benefit.as_str())
                                .expect("benefit of the terms");
                            let rule = b.rule_for(replayed.category);
                            if let Some(cap) = rule.per_claim_cap {
                                assert!(layer.payout <= cap.decimal(), "{seq}: per-claim cap of {code}");
                            }
                            if let Some(cap) = rule.annual_cap {
                                let used = acc.benefit_usage(&m.id, &k, benefit).paid;
                                assert!(
                                    layer.payout <= room(cap.decimal(), used),
                                    "{seq}: {member} {code}/{benefit} annual cap {cap}: {used} before, {} now",
                                    layer.payout
                                );
                            }
                        } else {
                            assert!(layer.payout.is_zero(), "{seq}: a layer without benefit pays");
                        }
                        if let Some(cap) = t.product.annual_cap {
                            let used = acc.member_paid(&m.id, &k);
                            assert!(
                                layer.payout <= room(cap.decimal(), used),
                                "{seq}: {member} {code} product annual cap"
                            );
                        }
                        if let Some(cap) = t.product.aggregate_cap {
                            let used = acc.aggregate_paid(&k);
                            assert!(
                                layer.payout <= room(cap.decimal(), used),
                                "{seq}: {code} aggregate cap: {used} paid before, {} now",
                                layer.payout
                            );
                        }
                    }
                });
                let acc = &replay.acc;
                for layer in &replayed.layers {
                    let code = layer.product.to_string();
                    if let Some(cap) = terms[&code].product.aggregate_cap {
                        let paid = acc.aggregate_paid(&layer.key());
                        let peak = aggregate_peak.entry(code.clone()).or_default();
                        *peak = (*peak).max(paid);
                        if layer.reasons.iter().any(|r| r.as_str() == "CAP_AGGREGATE") {
                            assert_eq!(
                                paid,
                                cap.decimal(),
                                "{seq}: cut by the aggregate cap of {code}, yet the aggregate is not at the cap"
                            );
                            aggregate_reached_at.entry(code).or_insert(position);
                        }
                    }
                }
                payouts_of.insert(
                    *seq,
                    replayed
                        .layers
                        .iter()
                        .map(|l| (l.product.to_string(), l.payout))
                        .collect(),
                );
            }
            Event::Reverse { settlement_seq } => {
                assert!(
                    replay.reverse(&key_of_seq[settlement_seq]),
                    "reversal {seq} before its settlement {settlement_seq}"
                );
                payouts_of.remove(settlement_seq);
            }
        }
    }

    // The accumulators table equals the replay's.
    let acc = replay.acc;
    let from_table = accumulator_money(&url).await;
    let from_replay = accumulators_money(&acc);
    if from_table != from_replay {
        let all: BTreeSet<_> = from_table.keys().chain(from_replay.keys()).collect();
        let diffs: Vec<String> = all
            .into_iter()
            .filter(|k| from_table.get(*k) != from_replay.get(*k))
            .take(10)
            .map(|k| format!("{k:?}: table {:?}, replay {:?}", from_table.get(k), from_replay.get(k)))
            .collect();
        panic!(
            "the accumulators table differs from the replay (deductible used, band position, paid):\n{}",
            diffs.join("\n")
        );
    }

    // No cap exceeded in the stored figures: per member and benefit (the largest cap of the
    // member's categories), per member and product, per product.
    let mut member_product: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    let mut product_paid: BTreeMap<String, Decimal> = BTreeMap::new();
    for ((member, code, _, benefit), (_, _, paid)) in &from_table {
        let t = &terms[code];
        let b = t
            .benefits
            .iter()
            .find(|x| x.code.as_str() == benefit)
            .expect("benefit of the terms");
        let cap = members[member]
            .categories
            .iter()
            .filter_map(|(_, c)| b.rule_for(c).annual_cap)
            .max();
        if let Some(cap) = cap {
            assert!(
                *paid <= cap.decimal(),
                "{member} {code}/{benefit}: paid {paid} above {cap}"
            );
        }
        *member_product.entry((member.clone(), code.clone())).or_default() += *paid;
        *product_paid.entry(code.clone()).or_default() += *paid;
    }
    for ((member, code), paid) in &member_product {
        if let Some(cap) = terms[code].product.annual_cap {
            assert!(
                *paid <= cap.decimal(),
                "{member} {code}: paid {paid} above the product cap {cap}"
            );
        }
    }
    for (code, t) in &terms {
        if let Some(cap) = t.product.aggregate_cap {
            let paid = product_paid.get(code).copied().unwrap_or_default();
            assert!(
                paid <= cap.decimal(),
                "{code}: paid {paid} above the aggregate cap {cap}"
            );
        }
    }

    // Loss ratios: every process gives what the replay gives.
    let mut expected_ratios = Vec::new();
    for (code, t) in &terms {
        let mut paid = Decimal::ZERO;
        let mut paid_claims = 0u64;
        for payouts in payouts_of.values() {
            for (c, p) in payouts {
                if c == code && !p.is_zero() {
                    paid += *p;
                    paid_claims += 1;
                }
            }
        }
        assert_eq!(
            paid,
            acc.aggregate_paid(&period(code, START)),
            "{code}: paid = replayed aggregate"
        );
        assert_eq!(
            paid,
            product_paid.get(code).copied().unwrap_or_default(),
            "{code}: paid = sum of the accumulators table"
        );
        let premium = t.product.premium_per_member.decimal() * Decimal::from(MEMBERS as u64);
        let ratio = if premium.is_zero() {
            String::new()
        } else {
            format!(
                "{:.4}",
                (paid / premium).round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
            )
        };
        expected_ratios.push(LossRatio {
            product_code: code.clone(),
            period_start: START.into(),
            period_end: END.into(),
            written_premium: format_money(premium),
            paid: format_money(paid),
            paid_claims,
            enrolled_members: MEMBERS as u64,
            loss_ratio: ratio,
            above_threshold: false,
        });
    }
    for (p, channel) in channels.iter().enumerate() {
        let mut reports = ReportServiceClient::new(channel.clone());
        let all = reports
            .get_loss_ratio(LossRatioRequest::default())
            .await
            .expect("loss ratios")
            .into_inner()
            .ratios;
        assert_eq!(
            all, expected_ratios,
            "process {p}: loss ratios of every period = the replay's"
        );
        for expected in &expected_ratios {
            let one = reports
                .get_loss_ratio(LossRatioRequest {
                    product_code: expected.product_code.clone(),
                    period_start: START.into(),
                    ..Default::default()
                })
                .await
                .expect("loss ratio")
                .into_inner()
                .ratios;
            assert_eq!(one, vec![expected.clone()], "process {p}: {}", expected.product_code);
        }
    }

    // The caps were tight enough to test something: each cut payouts, and each aggregate cap was
    // reached exactly.
    let cut = |code: &str, reason: &str| {
        reasons
            .get(&(code.to_owned(), reason.to_owned()))
            .copied()
            .unwrap_or_default()
    };
    for (code, caps) in MUST_BIND {
        for reason in caps {
            assert!(
                cut(code, reason) > 0,
                "no {code} payout was cut by {reason}: the caps are not tight enough"
            );
            assert!(reason_value(reason).is_some(), "{reason}");
        }
    }
    for (code, t) in &terms {
        if let Some(cap) = t.product.aggregate_cap {
            assert_eq!(
                aggregate_peak.get(code).copied().unwrap_or_default(),
                cap.decimal(),
                "{code}: the aggregate cap was reached exactly"
            );
        }
    }

    db.close().await.expect("close db");
    let summary_caps: Vec<String> = MUST_BIND
        .iter()
        .map(|(code, caps)| {
            let counts: Vec<String> = caps.iter().map(|r| format!("{r} {}", cut(code, r))).collect();
            let reached = aggregate_reached_at
                .get(*code)
                .map(|p| format!(", aggregate reached at event #{p} of {}", events.len()))
                .unwrap_or_default();
            format!("{code}: {}{reached}", counts.join(", "))
        })
        .collect();
    println!(
        "multiprocess: {PROCESSES} processes, {STREAMS} streams, {MEMBERS} members: {} claims ({} sent on the \
         load streams, {} racing duplicates), {replays} identical resubmissions replayed, {conflicts} conflicts, \
         {} reversals ({double_reversals} raced on two processes); start and enroll {:.2?}, load {:.2?}, with \
         follow-ups {:.2?} ({:.0} claims/s, {switches} changes of process in commit order), read back (3 exports, {} GetSettlement) {:.2?}, all {:.2?}; cuts: {}",
        requests.len(),
        sent_on_load,
        racing.len(),
        reversed.len(),
        setup,
        load_elapsed,
        elapsed,
        sent_on_load as f64 / load_elapsed.as_secs_f64(),
        sample.len(),
        fetched - elapsed,
        test_started.elapsed(),
        summary_caps.join("; "),
    );
    drop(cluster);
    crate::common::drop_database(&url).await;
}

/// Stored reasons ("A,B") as proto values.
fn reasons_of(text: &str) -> Vec<i32> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split(',')
        .map(|r| reason_value(r).unwrap_or_else(|| panic!("unknown stored reason {r:?}")))
        .collect()
}

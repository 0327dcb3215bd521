//! End-to-end throughput and latency of the service: a server on loopback with a fresh SQLite file
//! (WAL, synchronous=FULL), claims over real gRPC streams, every reply after its durable commit.
//!
//! Run: `cargo bench --bench service` (env: STREAMS, CLAIMS_PER_STREAM, MEMBERS, WINDOW).
//!
//! Each stream keeps at most WINDOW claims in flight (a hospital's billing system pipelining its
//! backlog), so the latency figures are the service's, not a queue the benchmark built itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use claims::api::convert::{category_value, expense_class_value, upstream_kind_value, visit_kind_value};
use claims::proto::member_service_client::MemberServiceClient;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::{settlement_reply, ClaimRequest, EnrollmentRow, LineItem, UpstreamPayment};
use claims::startup::{Application, Settings};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const CIXI: [&str; 4] = [
    "cixi-medical-assistance",
    "cixi-major-illness-topup",
    "cixi-tianyi-yongning-bao",
    "cixi-burden-stop-loss",
];

fn claim(stream: usize, i: usize, members: usize) -> ClaimRequest {
    let member = (stream * 7919 + i * 104_729) % members;
    let line = |class: &str, amount: String| LineItem {
        code: format!("drug-{}", amount.len()),
        expense_class: expense_class_value(class).unwrap_or_default(),
        amount,
    };
    let base = 1_000 + (i * 37 % 5_000);
    ClaimRequest {
        claim_id: format!("S{stream}-{i}"),
        hospital_id: "H-BENCH".into(),
        member_id: format!("B{member:05}"),
        service_date: "2022-06-15".into(),
        visit_kind: visit_kind_value("INPATIENT").unwrap_or_default(),
        outpatient_kind: 0,
        cause: 0,
        lines: vec![
            line("IN_SCOPE", format!("{base}.00")),
            line("IN_SCOPE", format!("{}.50", base / 2)),
            line("IN_SCOPE", "312.17".into()),
            line("IN_SCOPE", "88.00".into()),
            line("B_SELF_PAY", format!("{}.25", base / 10)),
            line("B_SELF_PAY", "45.60".into()),
            line("OUT_OF_CATALOGUE", format!("{}.00", base / 3)),
            line("OUT_OF_CATALOGUE", "120.00".into()),
            line("OUT_OF_CATALOGUE", "19.99".into()),
            line("NON_COMPLIANT", "30.00".into()),
        ],
        upstream: vec![UpstreamPayment {
            kind: upstream_kind_value("BASIC").unwrap_or_default(),
            amount: format!("{}.00", base / 2),
        }],
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let streams = env_usize("STREAMS", 8);
    let per_stream = env_usize("CLAIMS_PER_STREAM", 2_500);
    let members = env_usize("MEMBERS", 2_000);
    let window = env_usize("WINDOW", 32);
    let dir = tempfile::tempdir()?;
    let settings = Settings {
        listen: "127.0.0.1:0".parse()?,
        database_url: format!("sqlite://{}", dir.path().join("bench.db").display()),
        terms_dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/terms")),
        ..Settings::default()
    };
    let app = Application::build(settings).await?;
    let url = format!("http://127.0.0.1:{}", app.port());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));

    // Roster: every member DIBAO in the four Cixi 2022 layers.
    let mut rows = Vec::new();
    for m in 0..members {
        for (i, product) in CIXI.iter().enumerate() {
            rows.push(EnrollmentRow {
                member_id: format!("B{m:05}"),
                category: if i == 0 {
                    category_value("DIBAO").unwrap_or_default()
                } else {
                    0
                },
                effective_date: if i == 0 { "2022-01-01".into() } else { String::new() },
                product_code: (*product).into(),
                period_start: "2022-01-01".into(),
                premium: String::new(),
            });
        }
    }
    let started = Instant::now();
    let summary = MemberServiceClient::connect(url.clone())
        .await?
        .enroll(tokio_stream::iter(rows))
        .await?
        .into_inner();
    println!(
        "roster: {} rows ({} members x 4 enrollments) in {:.2} s",
        summary.rows_accepted,
        members,
        started.elapsed().as_secs_f64()
    );

    // Unary latency: one claim at a time, as at the discharge counter.
    let mut client = SettlementServiceClient::connect(url.clone()).await?;
    let mut unary = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        client.settle_one(claim(999, i, members)).await?;
        unary.push(t.elapsed());
    }
    unary.sort();
    println!(
        "SettleOne, one at a time: p50 {:.2} ms, p99 {:.2} ms ({} claims)",
        percentile(&unary, 0.5).as_secs_f64() * 1e3,
        percentile(&unary, 0.99).as_secs_f64() * 1e3,
        unary.len()
    );

    // Streams: all at once, pipelined.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = SettlementServiceClient::connect(url).await?;
            let (tx, rx) = mpsc::channel(window);
            let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Instant>();
            let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(window));
            let feeder_permits = in_flight.clone();
            let feeder = tokio::spawn(async move {
                for i in 0..per_stream {
                    let Ok(permit) = feeder_permits.acquire().await else {
                        break;
                    };
                    permit.forget();
                    let _ = sent_tx.send(Instant::now());
                    if tx.send(claim(s, i, members)).await.is_err() {
                        break;
                    }
                }
            });
            let mut replies = client.settle(ReceiverStream::new(rx)).await?.into_inner();
            let mut latencies = Vec::with_capacity(per_stream);
            let mut errors = 0usize;
            while let Some(reply) = replies.next().await {
                let reply = reply?;
                if let Some(sent) = sent_rx.recv().await {
                    latencies.push(sent.elapsed());
                }
                in_flight.add_permits(1);
                if matches!(reply.result, Some(settlement_reply::Result::Error(_))) {
                    errors += 1;
                }
            }
            let _ = feeder.await;
            Ok::<_, BoxError>((latencies, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "Settle streams: {} streams x {} claims, at most {} in flight each = {} claims (10 lines, 4 layers) in \
         {:.2} s = {:.0} claims/s; latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; errors {}",
        streams,
        per_stream,
        window,
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.9).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3,
        errors
    );
    println!(
        "peak resident memory (server and clients in one process): {} MiB",
        rss_kib() / 1024
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}

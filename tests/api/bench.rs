//! `claims.v1.BenchService`: served only with `--bench` (`Settings::bench`); echo baselines of the
//! requested size, in order, and the process figures of `/proc/self`.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use claims::proto::bench_service_client::BenchServiceClient;
use claims::proto::{EchoRequest, ListSettlementsRequest, ProcessStats, ProcessStatsRequest};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::*;
use crate::support::{assert_refused_with_field, loss_ratio, reflected_services, CIXI_START, MA, STREAM_WAIT};

const BENCH_SERVICE: &str = "claims.v1.BenchService";

/// The largest `reply_bytes` the service grants: `BenchApi::new(max_message_bytes * 4)` in
/// src/startup.rs, with the default `max_message_bytes` of 1 MiB.
const DEFAULT_REPLY_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// How long a small `claimsctl bench` run may take before the test gives up on it.
const CLAIMSCTL_WAIT: Duration = Duration::from_secs(120);

async fn spawn_bench_app() -> TestApp {
    spawn_app_with(|s| s.bench = true).await
}

async fn bench_client(app: &TestApp) -> BenchServiceClient<Channel> {
    // Replies may be up to four times the request limit: above tonic's default of 4 MiB for what a
    // client decodes.
    BenchServiceClient::new(app.channel().await).max_decoding_message_size(usize::MAX)
}

fn echo_request(n: usize, reply_bytes: u32) -> EchoRequest {
    EchoRequest {
        claim: Some(claim_a1("H1", &format!("BENCH-{n}"))),
        reply_bytes,
    }
}

async fn process_stats(client: &mut BenchServiceClient<Channel>, reset_peak_rss: bool) -> ProcessStats {
    client
        .process_stats(ProcessStatsRequest { reset_peak_rss })
        .await
        .unwrap_or_else(|e| panic!("ProcessStats (reset_peak_rss: {reset_peak_rss}): {e:?}"))
        .into_inner()
}

fn cpu_seconds(stats: &ProcessStats) -> f64 {
    stats.cpu_user_seconds + stats.cpu_system_seconds
}

/// Checks the figures every reply must satisfy.
fn assert_sane(stats: &ProcessStats) {
    assert!(stats.rss_bytes > 0, "current RSS > 0: {stats:?}");
    assert!(
        stats.peak_rss_bytes >= stats.rss_bytes,
        "peak RSS >= current RSS: {stats:?}"
    );
    for cpu in [stats.cpu_user_seconds, stats.cpu_system_seconds] {
        assert!(cpu.is_finite() && cpu >= 0.0, "CPU seconds >= 0: {stats:?}");
    }
    assert!(stats.threads >= 1, "at least one thread: {stats:?}");
    assert!(
        stats.writer_cpu_seconds.is_finite()
            && stats.writer_cpu_seconds >= 0.0
            && stats.writer_cpu_seconds <= stats.cpu_user_seconds + stats.cpu_system_seconds,
        "the writer threads' CPU is part of the process's: {stats:?}"
    );
    assert!(stats.writer_threads <= stats.threads, "{stats:?}");
}

/// Sends `requests` over one EchoStream (all of them before reading) and reads until the stream
/// ends: the replies, and the status it ended with (none: it ended cleanly).
async fn echo_stream(
    client: &mut BenchServiceClient<Channel>,
    requests: Vec<EchoRequest>,
) -> (Vec<Vec<u8>>, Option<tonic::Status>) {
    let mut replies = client
        .echo_stream(tokio_stream::iter(requests))
        .await
        .expect("the EchoStream opens")
        .into_inner();
    let mut payloads = Vec::new();
    loop {
        let next = tokio::time::timeout(STREAM_WAIT, replies.message())
            .await
            .expect("an EchoStream reply in time");
        match next {
            Ok(Some(reply)) => payloads.push(reply.payload),
            Ok(None) => return (payloads, None),
            Err(status) => return (payloads, Some(status)),
        }
    }
}

#[tokio::test]
async fn bench_service_is_not_served_by_default() {
    let app = spawn_app().await;
    let mut bench = bench_client(&app).await;
    let status = bench
        .process_stats(ProcessStatsRequest { reset_peak_rss: false })
        .await
        .expect_err("no ProcessStats without --bench");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = bench
        .echo(echo_request(0, 16))
        .await
        .expect_err("no Echo without --bench");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    let names = reflected_services(&app).await;
    assert!(
        !names.iter().any(|n| n == BENCH_SERVICE),
        "{BENCH_SERVICE} is not listed without --bench: {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "claims.v1.SettlementService"),
        "the other services are: {names:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_bench_service_with_bench() {
    let app = spawn_bench_app().await;
    let names = reflected_services(&app).await;
    for expected in [BENCH_SERVICE, "claims.v1.SettlementService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn echo_replies_with_exactly_reply_bytes_zero_bytes() {
    let app = spawn_bench_app().await;
    let mut bench = bench_client(&app).await;
    for (n, size) in [0u32, 141, 4096].into_iter().enumerate() {
        let payload = bench
            .echo(echo_request(n, size))
            .await
            .unwrap_or_else(|e| panic!("Echo of {size} bytes: {e:?}"))
            .into_inner()
            .payload;
        assert_eq!(
            payload.len(),
            size as usize,
            "Echo payload length for reply_bytes {size}"
        );
        assert!(payload.iter().all(|b| *b == 0), "the payload is zero bytes");
    }
    // Without a claim too: the claim is decoded and otherwise ignored.
    let payload = bench
        .echo(EchoRequest {
            claim: None,
            reply_bytes: 7,
        })
        .await
        .expect("Echo without a claim")
        .into_inner()
        .payload;
    assert_eq!(payload.len(), 7);
    app.stop().await;
}

#[tokio::test]
async fn echo_stream_replies_once_per_request_in_order() {
    let app = spawn_bench_app().await;
    let mut bench = bench_client(&app).await;
    // Distinct sizes, not monotonic, so that any reordering shows.
    let sizes: Vec<u32> = (0..100u32).map(|i| (i * 37) % 100 * 13 + i % 7).collect();
    let mut distinct = sizes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), sizes.len(), "the sizes are distinct");
    let requests = sizes.iter().enumerate().map(|(n, s)| echo_request(n, *s)).collect();
    let (payloads, end) = echo_stream(&mut bench, requests).await;
    assert!(end.is_none(), "the EchoStream ends cleanly: {end:?}");
    let lengths: Vec<u32> = payloads.iter().map(|p| p.len() as u32).collect();
    assert_eq!(
        lengths, sizes,
        "one reply per request, in request order, each reply_bytes long"
    );
    assert!(payloads.iter().flatten().all(|b| *b == 0), "payloads are zero bytes");

    // An empty stream: no replies, a clean end.
    let (payloads, end) = echo_stream(&mut bench, Vec::new()).await;
    assert!(payloads.is_empty() && end.is_none(), "{payloads:?} {end:?}");
    app.stop().await;
}

#[tokio::test]
async fn reply_bytes_above_the_limit_are_refused_with_invalid_argument() {
    let app = spawn_bench_app().await;
    let mut bench = bench_client(&app).await;
    for size in [DEFAULT_REPLY_BYTES_MAX + 1, 64 * 1024 * 1024, u32::MAX] {
        let status = bench
            .echo(echo_request(0, size))
            .await
            .expect_err("reply_bytes above the limit");
        // INVALID_ARGUMENT with a google.rpc.BadRequest naming the field, like every other refusal.
        assert_refused_with_field(&status, Code::InvalidArgument, "reply_bytes");
        assert!(
            status.message().contains(&DEFAULT_REPLY_BYTES_MAX.to_string()),
            "the message states the limit: {status:?}"
        );
    }

    // Over EchoStream: the replies before the bad request arrive, then the stream ends with the
    // same status.
    let requests = vec![
        echo_request(0, 10),
        echo_request(1, 20),
        echo_request(2, DEFAULT_REPLY_BYTES_MAX + 1),
        echo_request(3, 30),
    ];
    let (payloads, end) = echo_stream(&mut bench, requests).await;
    let lengths: Vec<usize> = payloads.iter().map(Vec::len).collect();
    assert_eq!(lengths, [10, 20], "the replies before the refused request");
    let status = end.expect("the EchoStream ends with an error");
    assert_refused_with_field(&status, Code::InvalidArgument, "reply_bytes");
    app.stop().await;
}

/// The limit follows `max_message_bytes` (four times it) and is inclusive: the largest granted
/// reply is served in full. A smaller request limit keeps the test light.
#[tokio::test]
async fn reply_bytes_limit_follows_max_message_bytes() {
    let app = spawn_app_with(|s| {
        s.bench = true;
        s.max_message_bytes = 1000;
    })
    .await;
    let mut bench = bench_client(&app).await;
    let status = bench.echo(echo_request(0, 4001)).await.expect_err("above 4 x 1000");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("4000"), "{status:?}");
    let payload = bench
        .echo(echo_request(1, 3990))
        .await
        .expect("an Echo well under the limit")
        .into_inner()
        .payload;
    assert_eq!(payload.len(), 3990);
    app.stop().await;
}

/// Every `reply_bytes` up to the limit is served in full: the service's encoding limit leaves room
/// for the reply's field tag and length prefix (`ECHO_FRAMING_BYTES`). With a limit of 4000, sizes
/// 3998 to 4000 once failed with OUT_OF_RANGE because it did not.
#[tokio::test]
async fn reply_bytes_at_the_limit_are_served() {
    let app = spawn_app_with(|s| {
        s.bench = true;
        s.max_message_bytes = 1000;
    })
    .await;
    let mut bench = bench_client(&app).await;
    let mut failed = Vec::new();
    for size in 3990..=4000u32 {
        match bench.echo(echo_request(0, size)).await {
            Ok(reply) => assert_eq!(reply.into_inner().payload.len(), size as usize),
            Err(status) => failed.push((size, status.code(), status.message().to_owned())),
        }
    }
    assert!(
        failed.is_empty(),
        "reply_bytes not above the limit of 4000 failed: {failed:#?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn process_stats_report_cpu_time_and_memory() {
    let app = spawn_bench_app().await;
    let mut bench = bench_client(&app).await;
    let wall = Instant::now();
    let before = process_stats(&mut bench, false).await;
    assert_sane(&before);
    assert!(!before.peak_rss_reset, "no reset was asked: {before:?}");
    // SQLite's writer runs on a thread of its own (this test binary may run other servers' too);
    // PostgreSQL's writers run on the async runtime's threads.
    match backend() {
        Backend::Sqlite => assert!(before.writer_threads >= 1, "SQLite's writer thread: {before:?}"),
        Backend::Postgres => assert_eq!(before.writer_threads, 0, "no writer thread of its own: {before:?}"),
    }

    // The server runs in this process: burning CPU here shows in its figures, in seconds.
    let after = loop {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        let now = process_stats(&mut bench, false).await;
        assert_sane(&now);
        assert!(
            now.cpu_user_seconds >= before.cpu_user_seconds && now.cpu_system_seconds >= before.cpu_system_seconds,
            "CPU time does not go back: {before:?} then {now:?}"
        );
        if cpu_seconds(&now) - cpu_seconds(&before) >= 0.2 {
            break now;
        }
        assert!(
            wall.elapsed() < Duration::from_secs(30),
            "the CPU time did not grow by 0.2 s in 30 s of spinning: {before:?} then {now:?}"
        );
    };
    // Seconds, not clock ticks: no more CPU time than every core could give in the wall time.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let grown = cpu_seconds(&after) - cpu_seconds(&before);
    let bound = wall.elapsed().as_secs_f64() * cores + 0.05;
    assert!(
        grown <= bound,
        "CPU time grew {grown} s in at most {bound} core-seconds"
    );
    app.stop().await;
}

#[tokio::test]
async fn process_stats_reset_the_peak_rss_when_asked() {
    const BALLAST: usize = 128 * 1024 * 1024;
    let app = spawn_bench_app().await;
    let mut bench = bench_client(&app).await;

    // Raise the peak of this process (the server's) well above its current RSS: touch every page
    // of a large allocation, then give it back (an allocation this large is unmapped when freed).
    let ballast = std::hint::black_box(vec![1u8; BALLAST]);
    let touched = process_stats(&mut bench, false).await;
    assert_sane(&touched);
    assert!(
        touched.rss_bytes >= BALLAST as u64,
        "the ballast is resident: {touched:?}"
    );
    drop(ballast);

    // The figures are read before the reset: this reply still shows the peak with the ballast.
    let first = process_stats(&mut bench, true).await;
    assert_sane(&first);
    assert!(
        first.peak_rss_bytes >= BALLAST as u64,
        "the peak before the reset: {first:?}"
    );
    assert!(
        first.peak_rss_bytes >= first.rss_bytes + (BALLAST as u64) / 2,
        "the ballast was given back: {first:?}"
    );
    assert!(
        first.peak_rss_reset,
        "the peak is reset on Linux 4.0 and later (/proc/self/clear_refs): {first:?}"
    );

    // The next call's peak is the peak since the reset: the ballast no longer counts.
    let second = process_stats(&mut bench, false).await;
    assert_sane(&second);
    assert!(!second.peak_rss_reset, "no reset was asked: {second:?}");
    assert!(
        second.peak_rss_bytes + (BALLAST as u64) / 2 <= first.peak_rss_bytes,
        "the peak since the reset leaves out the ballast: {first:?} then {second:?}"
    );
    app.stop().await;
}

/// Runs `claimsctl --server <app> <args>` to its end (killed after [`CLAIMSCTL_WAIT`]) without blocking
/// the runtime the server runs on; stdout and stderr go to files, so a full pipe never stalls it.
/// Its stdout, after checking that it succeeded.
async fn claimsctl(app: &TestApp, args: &[&str]) -> String {
    let out_path = app.dir.path().join("claimsctl.out");
    let err_path = app.dir.path().join("claimsctl.err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_claimsctl"))
        .arg("--server")
        .arg(app.url())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("claimsctl stdout file"))
        .stderr(File::create(&err_path).expect("claimsctl stderr file"))
        .spawn()
        .expect("claimsctl starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("claimsctl's status") {
            break status;
        }
        if started.elapsed() > CLAIMSCTL_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "claimsctl {args:?} did not end in {CLAIMSCTL_WAIT:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stdout = std::fs::read_to_string(&out_path).expect("claimsctl's stdout");
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "claimsctl {args:?} failed ({status}); stderr:\n{stderr}\nstdout:\n{stdout}"
    );
    stdout
}

/// `claimsctl bench --modes loss-ratio`: for each --concurrency value, K callers of GetLossRatio make
/// --claims calls in all, measured like the other unary modes (rate, latency percentiles, the server's
/// CPU and peak RSS through BenchService), with no echo baseline; and no claim is settled.
#[tokio::test]
async fn claimsctl_bench_loss_ratio_mode_measures_get_loss_ratio_calls() {
    let app = spawn_bench_app().await;
    let stdout = claimsctl(
        &app,
        &[
            "bench",
            "--members",
            "50",
            "--claims",
            "200",
            "--concurrency",
            "1,4",
            "--modes",
            "loss-ratio",
            "--run-id",
            "lr",
            "--json",
            "--quiet",
        ],
    )
    .await;
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON ({e}):\n{stdout}"));
    assert_eq!(report["roster"]["rows"], 250, "50 members, five rows each: {report:#}");
    assert_eq!(report["loss_ratio_period"], "cixi-medical-assistance 2022-01-01");
    let modes = report["modes"].as_array().expect("a list of modes");
    let runs: Vec<(&str, u64)> = modes
        .iter()
        .map(|m| {
            (
                m["mode"].as_str().unwrap_or("?"),
                m["concurrency"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [("loss-ratio", 1), ("loss-ratio", 4)],
        "only the loss-ratio mode runs: {report:#}"
    );
    for m in modes {
        assert_eq!(m["claims_sent"], 200, "200 calls sent: {m:#}");
        assert_eq!(m["replies"], 200, "every call answered: {m:#}");
        assert_eq!(
            m["settled"], 200,
            "every call answered with figures, none refused: {m:#}"
        );
        assert_eq!(m["refused"], serde_json::json!({}), "{m:#}");
        assert_eq!(m["failures"], serde_json::json!([]), "{m:#}");
        assert!(
            m["claims_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "calls/s > 0: {m:#}"
        );
        for q in ["p50", "p90", "p99", "p99_9"] {
            assert!(
                m["latency_ms"][q].as_f64().is_some_and(|v| v > 0.0),
                "latency {q} > 0: {m:#}"
            );
        }
        assert!(m["server_cpu_s"].as_f64().is_some_and(|v| v >= 0.0), "{m:#}");
        // Null when the writer threads changed between the readings (other tests' servers).
        let writer = &m["server_writer_cpu_s"];
        assert!(writer.is_null() || writer.as_f64().is_some_and(|v| v >= 0.0), "{m:#}");
        assert!(m["server_peak_rss_bytes"].as_u64().is_some_and(|v| v > 0), "{m:#}");
        assert!(
            m["reply_bytes_mean"].as_f64().is_some_and(|v| v > 0.0),
            "the period's figures: {m:#}"
        );
        assert_eq!(m["echo_baseline"], Value::Null, "no echo baseline: {m:#}");
        assert_eq!(m["ratio_to_echo"], Value::Null, "{m:#}");
    }

    // Reads only: the roster is there, no claim was settled.
    let figures = loss_ratio(&app, MA, CIXI_START).await;
    assert_eq!(figures.enrolled_members, 50, "{figures:?}");
    assert_eq!(figures.paid_claims, 0, "{figures:?}");
    let listed = app
        .reports()
        .await
        .list_settlements(ListSettlementsRequest::default())
        .await
        .expect("ListSettlements")
        .into_inner();
    assert_eq!(listed.totals.map(|t| t.count), Some(0), "no settlement was written");
    app.stop().await;
}

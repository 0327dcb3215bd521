//! `load`: the load generator. Settles a claims file, repeated under rewritten claim ids, over several
//! concurrent Settle streams, each a closed loop with a bounded window of claims in flight (as
//! `benches/service.rs` does in process), and reports throughput and latency percentiles. The closed
//! loop ([`pipeline`]) also drives the stream modes of `claimsctl bench`, which generates its claims.

use std::fs::File;
use std::future::Future;
use std::io::BufReader;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claims::domain::ClaimId;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::{ClaimRequest, SettlementReply};
use indicatif::ProgressBar;
use time::macros::format_description;
use time::OffsetDateTime;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::settlements::{print_bad_lines, print_refused, progress_bar, read_claims, ReadOutcome, Tally};
use crate::table::{Align, Table};
use crate::{fail, rpc_error, BoxError, Result, Server};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent Settle streams, each on its own connection.
    pub streams: usize,
    /// Most claims in flight per stream.
    pub window: usize,
    /// How many times each claim of the file is sent.
    pub repeat: u32,
    /// Put into every rewritten claim id.
    pub suffix: String,
    pub quiet: bool,
}

/// Checks an `--id-suffix`: the characters a claim id may hold, not empty.
pub fn parse_suffix(text: &str) -> std::result::Result<String, String> {
    ClaimId::parse(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("the suffix {e}"))
}

/// The default `--id-suffix`: the time of the run, UTC, to the millisecond (`20250612T101530.123`).
pub fn default_suffix(now: OffsetDateTime) -> String {
    let format = format_description!("[year][month][day]T[hour][minute][second].[subsecond digits:3]");
    now.format(&format)
        .unwrap_or_else(|_| (now.unix_timestamp_nanos() / 1_000_000).to_string())
}

/// The claim id under which round `round` (from 1) of a load run sends a claim of the file.
pub fn rewrite_claim_id(claim_id: &str, suffix: &str, round: u32) -> String {
    format!("{claim_id}-{suffix}-{round}")
}

/// The `k`-th claim of the run (rounds one after the other, each the whole file in file order) with its
/// claim id rewritten. `claims` must not be empty.
fn nth_claim(claims: &[ClaimRequest], suffix: &str, k: u64) -> ClaimRequest {
    let n = claims.len() as u64;
    let mut request = claims[(k % n) as usize].clone();
    let round = u32::try_from(k / n + 1).unwrap_or(u32::MAX);
    request.claim_id = rewrite_claim_id(&request.claim_id, suffix, round);
    request
}

/// The positions in the run (see [`nth_claim`]) of the claims that stream `stream` of `streams` sends:
/// the claims are dealt to the streams in turn.
fn positions(stream: usize, streams: usize, total: u64) -> impl Iterator<Item = u64> {
    (stream as u64..total).step_by(streams.max(1))
}

/// Checks, before anything is sent, that the longest rewritten claim id is still a valid claim id.
fn check_rewritten_ids(claims: &[ClaimRequest], suffix: &str, repeat: u32) -> Result<()> {
    let Some(longest) = claims.iter().map(|c| c.claim_id.as_str()).max_by_key(|id| id.len()) else {
        return Ok(());
    };
    let id = rewrite_claim_id(longest, suffix, repeat);
    ClaimId::parse(&id)
        .map(|_| ())
        .map_err(|e| fail(format!("the rewritten claim id {id:?} {e}; use a shorter --id-suffix")))
}

/// The `p`-quantile (0 to 1) of samples sorted in ascending order, by the nearest-rank method: the
/// smallest sample that at least the fraction `p` of all samples are at or below. `p` = 1 is the
/// largest. `None` without samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    // The epsilon keeps a product such as 0.9 * 100 = 90.00000000000001 from going up a rank.
    let rank = (p.clamp(0.0, 1.0) * n as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// What one pipelined stream did (see [`pipeline`]).
#[derive(Debug, Default)]
pub struct StreamOutcome {
    /// Requests handed to the stream.
    pub sent: u64,
    pub replies: u64,
    /// From sending each request to its reply, in reply order.
    pub latencies: Vec<Duration>,
    pub failure: Option<BoxError>,
}

/// Drives one bidirectional stream as a closed loop, the way a billing system pipelines its backlog: a
/// send task feeds `requests` into the stream with at most `window` of them unanswered, while this task
/// reads the replies (one per request, in request order), times each request from sending to its reply,
/// and hands the reply with `key` of its request to `on_reply` (an error from it ends the stream). `open`
/// starts the RPC on the request stream; `planned` is how many requests `requests` yields, so that a
/// stream the server ends early is a failure. `rpc` names the RPC in errors.
pub async fn pipeline<Req, Rep, K, Open, Fut>(
    requests: impl Iterator<Item = Req> + Send + 'static,
    planned: u64,
    window: usize,
    key: impl Fn(&Req) -> K + Send + 'static,
    open: Open,
    mut on_reply: impl FnMut(K, &Rep) -> Result<()>,
    rpc: &str,
) -> StreamOutcome
where
    Req: Send + 'static,
    K: Send + 'static,
    Open: FnOnce(ReceiverStream<Req>) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<tonic::Streaming<Rep>>, tonic::Status>>,
{
    let window = window.max(1);
    let (tx, rx) = mpsc::channel::<Req>(window);
    // The key and send time of every request sent and not yet answered, in order.
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(K, Instant)>();
    let in_flight = Arc::new(Semaphore::new(window));
    let sent = Arc::new(AtomicU64::new(0));

    let feeder = {
        let (permits, sent) = (in_flight.clone(), sent.clone());
        tokio::spawn(async move {
            for request in requests {
                // A permit per request in flight; the reply loop gives it back. Closed: the stream is over.
                let Ok(permit) = permits.acquire().await else {
                    break;
                };
                permit.forget();
                if sent_tx.send((key(&request), Instant::now())).is_err() {
                    break;
                }
                if tx.send(request).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let mut outcome = StreamOutcome {
        latencies: Vec::with_capacity(usize::try_from(planned).unwrap_or(0)),
        ..StreamOutcome::default()
    };
    match open(ReceiverStream::new(rx)).await {
        Ok(response) => {
            let mut replies = response.into_inner();
            loop {
                match replies.message().await {
                    Ok(Some(reply)) => {
                        // The request went into the stream after its entry was queued, so the entry of
                        // every reply is there already.
                        let Ok((key, sent_at)) = sent_rx.try_recv() else {
                            outcome.failure = Some(fail(format!("{rpc}: the server sent a reply for no request sent")));
                            break;
                        };
                        outcome.latencies.push(sent_at.elapsed());
                        in_flight.add_permits(1);
                        outcome.replies += 1;
                        if let Err(e) = on_reply(key, &reply) {
                            outcome.failure = Some(e);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        outcome.failure = Some(rpc_error(&format!("the {rpc} stream failed"), &status));
                        break;
                    }
                }
            }
        }
        Err(status) => outcome.failure = Some(rpc_error(rpc, &status)),
    }
    // The stream is over: a feeder still waiting for room or sending stops.
    in_flight.close();
    feeder.abort();
    let _ = feeder.await;
    outcome.sent = sent.load(Ordering::Relaxed);
    if outcome.failure.is_none() && outcome.replies < planned {
        outcome.failure = Some(fail(format!(
            "the server closed the {rpc} stream after {} replies for {} requests sent ({planned} to send)",
            outcome.replies, outcome.sent
        )));
    }
    outcome
}

/// Checks that a Settle reply answers the claim that was due (replies come in request order).
pub fn check_in_order(due: &str, reply: &SettlementReply) -> Result<()> {
    if reply.claim_id == due {
        Ok(())
    } else {
        Err(fail(format!(
            "reply out of order: claim {:?} answered where {due:?} was due",
            reply.claim_id
        )))
    }
}

/// One closed-loop Settle stream of a load run: sends its share of the run (see [`positions`]) with at
/// most `window` claims in flight and tallies the replies.
async fn run_stream(
    channel: Channel,
    claims: Arc<Vec<ClaimRequest>>,
    suffix: Arc<str>,
    stream: usize,
    options: &LoadOptions,
    total: u64,
    bar: ProgressBar,
) -> (StreamOutcome, Tally) {
    let planned = positions(stream, options.streams, total).count() as u64;
    let requests = positions(stream, options.streams, total).map(move |k| nth_claim(&claims, &suffix, k));
    let mut client = SettlementServiceClient::new(channel);
    let mut tally = Tally::default();
    let outcome = pipeline(
        requests,
        planned,
        options.window,
        |r: &ClaimRequest| r.claim_id.clone(),
        move |rx| async move { client.settle(rx).await },
        |due: String, reply: &SettlementReply| {
            check_in_order(&due, reply)?;
            tally.add(reply);
            bar.inc(1);
            Ok(())
        },
        "Settle",
    )
    .await;
    (outcome, tally)
}

/// Reads the claims file whole; lines that are not claims are kept in the outcome's `bad`.
fn read_file(path: &Path) -> Result<(Vec<ClaimRequest>, ReadOutcome)> {
    let file = File::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let mut claims = Vec::new();
    let read = read_claims(
        BufReader::new(file),
        |r| {
            claims.push(r);
            true
        },
        || {},
    );
    if let Some(error) = &read.error {
        return Err(fail(format!("reading {}: {error}", path.display())));
    }
    Ok((claims, read))
}

pub async fn run(server: &Server, path: &Path, options: LoadOptions) -> Result<ExitCode> {
    let (claims, read) = read_file(path)?;
    if claims.is_empty() {
        print_bad_lines(&read.bad);
        return Err(fail(format!("{}: no claims to send", path.display())));
    }
    check_rewritten_ids(&claims, &options.suffix, options.repeat)?;
    let total = claims.len() as u64 * u64::from(options.repeat);
    let options = LoadOptions {
        streams: options.streams.clamp(1, usize::try_from(total).unwrap_or(usize::MAX)),
        ..options
    };

    let mut channels = Vec::with_capacity(options.streams);
    for _ in 0..options.streams {
        channels.push(server.connect().await?);
    }

    let bar = progress_bar(total, options.quiet)?;
    let claims = Arc::new(claims);
    let suffix: Arc<str> = options.suffix.as_str().into();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(options.streams);
    for (stream, channel) in channels.into_iter().enumerate() {
        let (claims, suffix, options, bar) = (claims.clone(), suffix.clone(), options.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            run_stream(channel, claims, suffix, stream, &options, total, bar).await
        }));
    }
    let mut sent = 0u64;
    let mut tally = Tally::default();
    let mut latencies = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut failures = Vec::new();
    for (stream, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok((outcome, stream_tally)) => {
                sent += outcome.sent;
                tally.merge(stream_tally);
                latencies.extend(outcome.latencies);
                if let Some(e) = outcome.failure {
                    failures.push((stream, e));
                }
            }
            Err(e) => failures.push((stream, fail(format!("the stream task ended: {e}")))),
        }
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    latencies.sort_unstable();

    print_summary(path, &options, &read, claims.len(), sent, &tally, &latencies, elapsed);
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (stream, e) in &failures {
        eprintln!("claimsctl: stream {}: {}", stream + 1, crate::chain(e.as_ref()));
    }
    Err(fail(format!(
        "{} of {} Settle streams failed",
        failures.len(),
        options.streams
    )))
}

#[allow(clippy::too_many_arguments)]
fn print_summary(
    path: &Path,
    options: &LoadOptions,
    read: &ReadOutcome,
    claims: usize,
    sent: u64,
    tally: &Tally,
    latencies: &[Duration],
    elapsed: Duration,
) {
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    crate::outln!(
        "load run {}: {} from {} x {} over {}, at most {} in flight each",
        options.suffix,
        plural(claims, "claim", "claims"),
        path.display(),
        plural(options.repeat as usize, "round", "rounds"),
        plural(options.streams, "stream", "streams"),
        options.window
    );
    crate::outln!(
        "  claim ids rewritten as <claim_id>-{}-<round>, round 1 to {}",
        options.suffix,
        options.repeat
    );
    let mut t = Table::new(&[("", Align::Left), ("", Align::Right)]);
    t.row(["bad lines, not sent".to_owned(), read.bad.len().to_string()]);
    t.row(["claims sent".to_owned(), sent.to_string()]);
    t.row(["replies".to_owned(), tally.replies.to_string()]);
    t.row(["  settled".to_owned(), (tally.paid + tally.nothing_paid).to_string()]);
    t.row(["    paid".to_owned(), tally.paid.to_string()]);
    t.row(["    nothing paid".to_owned(), tally.nothing_paid.to_string()]);
    t.row(["  replayed (settled before)".to_owned(), tally.replayed.to_string()]);
    t.row(["  refused".to_owned(), tally.refused.to_string()]);
    for line in t.render().lines().skip(1) {
        crate::outln!("  {line}");
    }
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { tally.replies as f64 / secs } else { 0.0 };
    crate::outln!("  elapsed {secs:.2} s, {rate:.1} claims/s");
    let ms = |p: f64| percentile(latencies, p).map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
    crate::outln!(
        "  latency ms: p50 {}, p90 {}, p99 {}, max {}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(1.0)
    );
    print_refused(tally);
    print_bad_lines(&read.bad);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn claim(id: &str) -> ClaimRequest {
        ClaimRequest {
            claim_id: id.into(),
            hospital_id: "H1".into(),
            member_id: "M1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn claim_ids_are_rewritten_per_round() {
        assert_eq!(rewrite_claim_id("H1-0001", "run7", 3), "H1-0001-run7-3");
        let claims = [claim("A"), claim("B"), claim("C")];
        let ids: Vec<String> = (0..7).map(|k| nth_claim(&claims, "s", k).claim_id).collect();
        assert_eq!(ids, ["A-s-1", "B-s-1", "C-s-1", "A-s-2", "B-s-2", "C-s-2", "A-s-3"]);
        let second = nth_claim(&claims, "s", 4);
        assert_eq!((second.hospital_id.as_str(), second.member_id.as_str()), ("H1", "M1"));
    }

    #[test]
    fn every_claim_of_every_round_goes_to_exactly_one_stream() {
        let claims: Vec<ClaimRequest> = (0..5).map(|i| claim(&format!("C{i}"))).collect();
        let total = claims.len() as u64 * 3;
        let mut seen = BTreeSet::new();
        let mut per_stream = Vec::new();
        for stream in 0..4 {
            let ids: Vec<String> = positions(stream, 4, total)
                .map(|k| nth_claim(&claims, "x", k).claim_id)
                .collect();
            per_stream.push(ids.len());
            for id in ids {
                assert!(seen.insert(id.clone()), "{id} sent twice");
            }
        }
        assert_eq!(seen.len(), 15);
        assert_eq!(per_stream, [4, 4, 4, 3]);
        assert!(seen.contains("C4-x-3") && !seen.contains("C0-x-4"));
    }

    #[test]
    fn suffixes_and_rewritten_ids_are_checked() {
        assert_eq!(parse_suffix("run-1.a:b/c_d").as_deref(), Ok("run-1.a:b/c_d"));
        assert!(parse_suffix("").is_err());
        assert!(parse_suffix("a b").is_err());
        let default = default_suffix(time::macros::datetime!(2025-06-12 10:15:30.1234 UTC));
        assert_eq!(default, "20250612T101530.123");
        assert!(parse_suffix(&default).is_ok());
        let claims = [claim("short"), claim(&"x".repeat(50))];
        assert!(check_rewritten_ids(&claims, "abc", 99).is_ok()); // 50 + 5 + 2 = 57 characters
        let error = check_rewritten_ids(&claims, "abcdefgh", 100_000)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("is 66 characters long, the limit is 64"), "{error}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[ms(7)], 0.0), Some(ms(7)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        let hundred: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&hundred, 0.5), Some(ms(50)));
        assert_eq!(percentile(&hundred, 0.9), Some(ms(90)));
        assert_eq!(percentile(&hundred, 0.99), Some(ms(99)));
        assert_eq!(percentile(&hundred, 1.0), Some(ms(100)));
        assert_eq!(percentile(&hundred, 0.0), Some(ms(1)));
        let four = [ms(1), ms(2), ms(3), ms(4)];
        assert_eq!(percentile(&four, 0.5), Some(ms(2)));
        assert_eq!(percentile(&four, 0.51), Some(ms(3)));
        assert_eq!(percentile(&four, 0.9), Some(ms(4)));
        let thousand: Vec<Duration> = (1..=1000).map(ms).collect();
        for (p, want) in [(0.5, 500), (0.9, 900), (0.99, 990), (0.999, 999), (0.29, 290)] {
            assert_eq!(percentile(&thousand, p), Some(ms(want)), "p{p}");
        }
        assert_eq!(percentile(&hundred, 1.5), Some(ms(100)));
    }
}

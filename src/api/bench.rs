//! `BenchService`: the baselines and process figures `claimsctl bench` compares the real RPCs with.
//! Served only when `claimsd` is started with `--bench`; no domain logic and no database.
//!
//! The echo RPCs decode the same `ClaimRequest` the Settle RPCs take and answer with a reply of the size
//! the client asks for (the size of the real settlement reply), so that an echo run measures what the
//! transport (HTTP/2, gRPC framing, protobuf, tonic and tokio) costs for the same bytes.
//!
//! `ProcessStats` reads `/proc/self/stat` and `/proc/self/status` (the crate forbids unsafe code, so
//! no `getrusage`). CPU time is `utime + stime` of the whole process, counted in clock ticks of
//! `USER_HZ`, which the kernel fixes at 100 a second on x86-64 and arm64 (every architecture the
//! service is built for): a resolution of 10 ms, fine for runs of seconds.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::bench_service_server::BenchService;
use crate::proto::{EchoReply, EchoRequest, ProcessStats, ProcessStatsRequest};

/// The descriptor of `claims/v1/bench.proto`, served by reflection only with `--bench`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("claims_bench_descriptor");

/// Clock ticks a second in `/proc/self/stat` (`USER_HZ`).
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// What an `EchoReply` adds to its payload when encoded: the field tag and the length prefix (a
/// varint of at most 10 bytes). The service's encoding limit is the payload limit plus this.
pub const ECHO_FRAMING_BYTES: usize = 11;

/// The service. `reply_bytes_max` bounds what one echo reply may ask for.
#[derive(Debug, Clone)]
pub struct BenchApi {
    reply_bytes_max: usize,
}

impl BenchApi {
    pub fn new(reply_bytes_max: usize) -> Self {
        Self { reply_bytes_max }
    }

    fn reply(&self, request: &EchoRequest) -> Result<EchoReply, Status> {
        let n = usize::try_from(request.reply_bytes).unwrap_or(usize::MAX);
        if n > self.reply_bytes_max {
            return Err(crate::api::error::invalid(&crate::domain::FieldErrors::single(
                "reply_bytes",
                format!("{n} is above the limit of {} bytes", self.reply_bytes_max),
            )));
        }
        Ok(EchoReply { payload: vec![0; n] })
    }
}

/// CPU time and memory of this process, as `/proc` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub peak_rss_bytes: u64,
    pub rss_bytes: u64,
    pub threads: u32,
    /// CPU time of the live threads named [`crate::ledger::WRITER_THREAD`], and their number.
    pub writer_cpu_seconds: f64,
    pub writer_threads: u32,
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks. The command
/// name (field 2) is in parentheses and may hold spaces and parentheses itself, so the fields are
/// counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (field 3) is the first, utime (14) the twelfth, stime (15) the thirteenth.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// A `Name:   value kB` (or plain number) field of `/proc/PID/status`, in bytes for `kB` values.
pub fn status_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.split(':').next() == Some(name))?;
    let mut parts = line.split(':').nth(1)?.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Reads this process's figures from `/proc/self`.
pub fn process_figures() -> std::io::Result<ProcessFigures> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let (utime, stime) = parse_stat_ticks(&stat).ok_or_else(|| invalid("/proc/self/stat: no utime and stime"))?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let (writer_ticks, writer_threads) = threads_ticks(crate::ledger::WRITER_THREAD)?;
    let field =
        |name: &str| status_field(&status, name).ok_or_else(|| invalid(&format!("/proc/self/status: no {name}")));
    Ok(ProcessFigures {
        cpu_user_seconds: utime as f64 / CLOCK_TICKS_PER_SECOND,
        cpu_system_seconds: stime as f64 / CLOCK_TICKS_PER_SECOND,
        peak_rss_bytes: field("VmHWM")?,
        rss_bytes: field("VmRSS")?,
        threads: u32::try_from(field("Threads")?).unwrap_or(u32::MAX),
        writer_cpu_seconds: writer_ticks as f64 / CLOCK_TICKS_PER_SECOND,
        writer_threads,
    })
}

/// CPU ticks (user and system) of this process's live threads named `name`, and their number. A
/// thread that ends while it is read is left out.
fn threads_ticks(name: &str) -> std::io::Result<(u64, u32)> {
    let (mut ticks, mut threads) = (0, 0);
    for task in std::fs::read_dir("/proc/self/task")? {
        let dir = task?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let Some((utime, stime)) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| parse_stat_ticks(&stat))
        else {
            continue;
        };
        ticks += utime + stime;
        threads += 1;
    }
    Ok((ticks, threads))
}

/// Resets the peak resident set size (`VmHWM`) to the current one (Linux 4.0 and later).
pub fn reset_peak_rss() -> std::io::Result<()> {
    std::fs::write("/proc/self/clear_refs", b"5")
}

type EchoStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl BenchService for BenchApi {
    type EchoStreamStream = EchoStream;

    async fn echo_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        let api = self.clone();
        let replies = request
            .into_inner()
            .map(move |r| r.and_then(|request| api.reply(&request)));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.reply(request.get_ref()).map(Response::new)
    }

    async fn process_stats(&self, request: Request<ProcessStatsRequest>) -> Result<Response<ProcessStats>, Status> {
        let figures =
            process_figures().map_err(|e| Status::failed_precondition(format!("process figures unavailable: {e}")))?;
        let peak_rss_reset = request.get_ref().reset_peak_rss && reset_peak_rss().is_ok();
        Ok(Response::new(ProcessStats {
            cpu_user_seconds: figures.cpu_user_seconds,
            cpu_system_seconds: figures.cpu_system_seconds,
            peak_rss_bytes: figures.peak_rss_bytes,
            rss_bytes: figures.rss_bytes,
            peak_rss_reset,
            threads: figures.threads,
            writer_cpu_seconds: figures.writer_cpu_seconds,
            writer_threads: figures.writer_threads,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_read_after_the_command_name() {
        let stat = "4242 (claims d) (x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 731 269 0 0 20 0 9 0 \
                    100 2000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some((731, 269)));
        assert_eq!(parse_stat_ticks("4242 (short) S 1"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn status_fields_are_read_in_bytes() {
        let status = "Name:\tclaimsd\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\nThreads:\t5\n";
        assert_eq!(status_field(status, "VmHWM"), Some(23456 * 1024));
        assert_eq!(status_field(status, "VmRSS"), Some(20000 * 1024));
        assert_eq!(status_field(status, "Threads"), Some(5));
        assert_eq!(status_field(status, "VmPeak"), None);
    }

    #[test]
    fn this_process_has_figures() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let figures = process_figures().unwrap();
        assert!(figures.peak_rss_bytes >= figures.rss_bytes && figures.rss_bytes > 0);
        assert!(figures.threads >= 1);
    }

    #[test]
    fn echo_replies_have_the_size_asked_for() {
        let api = BenchApi::new(100);
        let request = |n| EchoRequest {
            claim: None,
            reply_bytes: n,
        };
        assert_eq!(api.reply(&request(7)).map(|r| r.payload.len()).ok(), Some(7));
        assert_eq!(
            api.reply(&request(101)).map_err(|s| s.code()).err(),
            Some(tonic::Code::InvalidArgument)
        );
    }
}

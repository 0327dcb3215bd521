//! `claims submit` (a JSON Lines file over one Settle stream), `preview`, `reverse`, `settlement show`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use claims::api::convert::request_from_draft;
use claims::domain::{format_money, ClaimDraft, FieldErrors};
use claims::proto::settlement_reply::Result as ReplyResult;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::{ClaimRequest, GetSettlementRequest, ReverseRequest, SettlementReply};
use indicatif::{ProgressBar, ProgressStyle};
use rust_decimal::Decimal;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::show::{amount, code_name, print_settlement, print_stored};
use crate::table::{Align, Table};
use crate::{fail, rpc_error, Result};

/// How many refused claims are quoted per gRPC code, and how many bad lines are listed.
const QUOTED_PER_CODE: usize = 5;
const BAD_LINES_LISTED: usize = 20;

#[derive(Debug, Clone, Copy)]
pub struct SubmitOptions {
    pub quiet: bool,
    /// Capacity of the channel between the file reader and the stream.
    pub buffer: usize,
}

/// A line of the file that was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: u64,
    pub message: String,
}

/// The field errors of a claim on one line.
fn field_errors_text(errors: &FieldErrors) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Parses one line of a claims file into a request; `None` for a blank line.
pub fn parse_line(text: &str) -> Option<std::result::Result<ClaimRequest, String>> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let draft: ClaimDraft = match serde_json::from_str(text) {
        Ok(draft) => draft,
        Err(e) => return Some(Err(format!("not a claim: {e}"))),
    };
    Some(request_from_draft(&draft).map_err(|e| field_errors_text(&e)))
}

/// What the file reader did.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub lines: u64,
    pub sent: u64,
    pub bad: Vec<BadLine>,
    /// Set when reading stopped early: an I/O error (not sending is not an error: the stream is gone).
    pub error: Option<String>,
}

/// Reads claims line by line and hands each request to `send`, which returns false when the stream is
/// gone. `skipped` is called for every line that is not sent (blank or bad).
pub fn read_claims<R: BufRead>(
    mut input: R,
    mut send: impl FnMut(ClaimRequest) -> bool,
    mut skipped: impl FnMut(),
) -> ReadOutcome {
    let mut outcome = ReadOutcome::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                outcome.error = Some(format!("line {}: {e}", outcome.lines + 1));
                break;
            }
        }
        outcome.lines += 1;
        let parsed = match std::str::from_utf8(&buf) {
            Ok(text) => parse_line(text),
            Err(_) => Some(Err("not valid UTF-8".to_owned())),
        };
        match parsed {
            None => skipped(),
            Some(Err(message)) => {
                skipped();
                outcome.bad.push(BadLine {
                    line: outcome.lines,
                    message,
                });
            }
            Some(Ok(request)) => {
                if !send(request) {
                    break;
                }
                outcome.sent += 1;
            }
        }
    }
    outcome
}

/// Counts lines (for the progress bar's length) without keeping them.
fn count_lines(path: &Path) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    Ok(lines + u64::from(last != b'\n'))
}

/// An in-band error on one line: the message's first line, then each field violation. The server also
/// writes the violations into the message, one per line, so with violations only its first line is kept.
fn error_text(message: &str, violations: &[claims::proto::FieldViolation]) -> String {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut parts: Vec<String> = Vec::new();
    if violations.is_empty() {
        parts.extend(lines.map(|l| l.trim_end_matches(':').to_owned()));
    } else {
        if let Some(head) = lines.next() {
            parts.push(head.trim_end_matches(':').to_owned());
        }
        parts.extend(violations.iter().map(|v| format!("{}: {}", v.field, v.description)));
    }
    parts.join("; ")
}

/// Tally of the replies of one Settle stream.
#[derive(Debug, Default)]
pub struct Tally {
    pub replies: u64,
    pub paid: u64,
    pub nothing_paid: u64,
    pub replayed: u64,
    pub refused: u64,
    /// Per gRPC code name: count and the first few `claim_id: message`.
    pub refused_by_code: BTreeMap<String, (u64, Vec<String>)>,
    /// Sum of payout_total over the claims settled by this run (replays excluded).
    pub payout: Decimal,
    pub replayed_payout: Decimal,
    /// Replies whose payout_total is not a decimal.
    pub unreadable_amounts: u64,
}

impl Tally {
    pub fn add(&mut self, reply: &SettlementReply) {
        self.replies += 1;
        match &reply.result {
            Some(ReplyResult::Settlement(stored)) => {
                let text = stored
                    .settlement
                    .as_ref()
                    .map(|s| s.payout_total.as_str())
                    .unwrap_or("");
                let payout = match amount(text) {
                    Some(p) => p,
                    None => {
                        self.unreadable_amounts += 1;
                        Decimal::ZERO
                    }
                };
                if reply.replay {
                    self.replayed += 1;
                    self.replayed_payout += payout;
                } else if payout > Decimal::ZERO {
                    self.paid += 1;
                    self.payout += payout;
                } else {
                    self.nothing_paid += 1;
                }
            }
            Some(ReplyResult::Error(e)) => {
                let text = error_text(&e.message, &e.violations);
                self.refuse(code_name(e.code), format!("{}: {text}", reply.claim_id));
            }
            None => self.refuse("NO_RESULT".to_owned(), format!("{}: empty reply", reply.claim_id)),
        }
    }

    /// Adds the tally of another stream (quotes kept up to the same limit per code).
    pub fn merge(&mut self, other: Tally) {
        self.replies += other.replies;
        self.paid += other.paid;
        self.nothing_paid += other.nothing_paid;
        self.replayed += other.replayed;
        self.refused += other.refused;
        self.payout += other.payout;
        self.replayed_payout += other.replayed_payout;
        self.unreadable_amounts += other.unreadable_amounts;
        for (code, (count, quotes)) in other.refused_by_code {
            let entry = self.refused_by_code.entry(code).or_default();
            entry.0 += count;
            let room = QUOTED_PER_CODE.saturating_sub(entry.1.len());
            entry.1.extend(quotes.into_iter().take(room));
        }
    }

    fn refuse(&mut self, code: String, quote: String) {
        self.refused += 1;
        let entry = self.refused_by_code.entry(code).or_default();
        entry.0 += 1;
        if entry.1.len() < QUOTED_PER_CODE {
            entry.1.push(quote);
        }
    }
}

fn print_summary(path: &Path, read: &ReadOutcome, tally: &Tally, elapsed: Duration) {
    crate::outln!("claims from {}", path.display());
    let mut t = Table::new(&[("", Align::Left), ("", Align::Right)]);
    t.row(["lines read".to_owned(), read.lines.to_string()]);
    t.row(["bad lines, not sent".to_owned(), read.bad.len().to_string()]);
    t.row(["claims sent".to_owned(), read.sent.to_string()]);
    t.row(["replies".to_owned(), tally.replies.to_string()]);
    t.row(["  paid".to_owned(), tally.paid.to_string()]);
    t.row(["  settled, nothing paid".to_owned(), tally.nothing_paid.to_string()]);
    t.row(["  replayed (settled before)".to_owned(), tally.replayed.to_string()]);
    t.row(["  refused".to_owned(), tally.refused.to_string()]);
    t.row(["total payout".to_owned(), format_money(tally.payout)]);
    if tally.replayed > 0 {
        t.row([
            "payout of replayed claims".to_owned(),
            format_money(tally.replayed_payout),
        ]);
    }
    for line in t.render().lines().skip(1) {
        crate::outln!("  {line}");
    }
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { tally.replies as f64 / secs } else { 0.0 };
    crate::outln!("  elapsed {secs:.2} s, {rate:.1} claims/s");
    print_refused(tally);
    print_bad_lines(&read.bad);
}

/// The warning about unreadable amounts, then the refused claims per gRPC code with a few quoted.
pub fn print_refused(tally: &Tally) {
    if tally.unreadable_amounts > 0 {
        crate::outln!(
            "  warning: {} replies had a payout_total that is not a decimal",
            tally.unreadable_amounts
        );
    }
    if !tally.refused_by_code.is_empty() {
        crate::outln!("refused:");
        for (code, (count, quotes)) in &tally.refused_by_code {
            crate::outln!("  {code}: {count}");
            for q in quotes {
                crate::outln!("    {q}");
            }
            if *count > quotes.len() as u64 {
                crate::outln!("    ... and {} more", *count - quotes.len() as u64);
            }
        }
    }
}

/// The lines of a claims file that were not sent, by line number (the first few).
pub fn print_bad_lines(bad: &[BadLine]) {
    if !bad.is_empty() {
        crate::outln!("bad lines:");
        for b in bad.iter().take(BAD_LINES_LISTED) {
            crate::outln!("  line {}: {}", b.line, b.message);
        }
        if bad.len() > BAD_LINES_LISTED {
            crate::outln!("  ... and {} more", bad.len() - BAD_LINES_LISTED);
        }
    }
}

/// The progress bar of claims settled (drawn on stderr, only when it is a terminal); hidden if quiet.
pub fn progress_bar(total: u64, quiet: bool) -> Result<ProgressBar> {
    if quiet {
        return Ok(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} claims settled ({per_sec}, eta {eta})",
    )
    .map_err(|e| fail(format!("progress bar: {e}")))?;
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Ok(bar)
}

pub async fn submit(channel: Channel, path: &Path, options: SubmitOptions) -> Result<ExitCode> {
    let file = File::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let total = count_lines(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let bar = progress_bar(total, options.quiet)?;

    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<ClaimRequest>(options.buffer.max(1));
    let reader_bar = bar.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_claims(
            BufReader::new(file),
            |r| tx.blocking_send(r).is_ok(),
            || reader_bar.dec_length(1),
        )
    });

    let mut client = SettlementServiceClient::new(channel);
    let mut tally = Tally::default();
    let mut failure = None;
    match client.settle(ReceiverStream::new(rx)).await {
        Ok(response) => {
            let mut replies = response.into_inner();
            loop {
                match replies.message().await {
                    Ok(Some(reply)) => {
                        tally.add(&reply);
                        bar.inc(1);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        failure = Some(rpc_error("the Settle stream failed", &status));
                        break;
                    }
                }
            }
        }
        Err(status) => failure = Some(rpc_error("Settle", &status)),
    }
    // The reply stream is dropped by now, so a reader still sending sees the stream gone and stops.
    let read = reader
        .await
        .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
    let elapsed = start.elapsed();
    bar.finish_and_clear();

    print_summary(path, &read, &tally, elapsed);
    if let Some(error) = &read.error {
        eprintln!("claimsctl: reading {} stopped at {error}", path.display());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if tally.replies != read.sent {
        return Err(fail(format!(
            "the server closed the Settle stream after {} replies for {} claims sent",
            tally.replies, read.sent
        )));
    }
    Ok(if read.error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads one claim (a JSON object) from a file or `-` (standard input).
fn read_one_claim(source: &str) -> Result<ClaimRequest> {
    let text = if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| fail(format!("standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(source).map_err(|e| fail(format!("{source}: {e}")))?
    };
    let draft: ClaimDraft = serde_json::from_str(&text).map_err(|e| fail(format!("{source}: not a claim: {e}")))?;
    request_from_draft(&draft).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        fail(format!("{source}: the claim has bad fields:\n{}", lines.join("\n")))
    })
}

pub async fn preview(channel: Channel, source: &str) -> Result<ExitCode> {
    let request = read_one_claim(source)?;
    let mut client = SettlementServiceClient::new(channel);
    let response = client
        .preview(request)
        .await
        .map_err(|s| rpc_error("Preview", &s))?
        .into_inner();
    crate::outln!("PREVIEW (nothing written)");
    match response.settlement {
        Some(s) => print_settlement(&s),
        None => crate::outln!("(the server sent no settlement body)"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn reverse(channel: Channel, hospital: &str, claim: &str) -> Result<ExitCode> {
    let mut client = SettlementServiceClient::new(channel);
    let response = client
        .reverse(ReverseRequest {
            hospital_id: hospital.to_owned(),
            claim_id: claim.to_owned(),
        })
        .await
        .map_err(|s| rpc_error("Reverse", &s))?
        .into_inner();
    match response.settlement {
        Some(s) => print_stored(&s),
        None => crate::outln!("reversed (the server sent no settlement body)"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(channel: Channel, hospital: &str, claim: &str) -> Result<ExitCode> {
    let mut client = SettlementServiceClient::new(channel);
    let stored = client
        .get_settlement(GetSettlementRequest {
            hospital_id: hospital.to_owned(),
            claim_id: claim.to_owned(),
        })
        .await
        .map_err(|s| rpc_error("GetSettlement", &s))?
        .into_inner();
    print_stored(&stored);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use claims::proto::{self, ErrorDetail, Settlement, StoredSettlement};

    #[test]
    fn lines_are_read_sent_and_reported_by_number() {
        let text = concat!(
            r#"{"claim_id":"A","hospital_id":"H","member_id":"M","service_date":"2022-01-01","visit_kind":"INPATIENT","lines":[{"code":"x","expense_class":"IN_SCOPE","amount":"1.00"}]}"#,
            "\n\n",
            r#"{"claim_id":"B","extra":1}"#,
            "\n",
            r#"{"claim_id":"C","visit_kind":"SPACESHIP"}"#,
            "\n",
            r#"{"claim_id":"D","visit_kind":"OUTPATIENT","outpatient_kind":"CHRONIC"}"#,
        );
        let mut sent = Vec::new();
        let mut skipped = 0;
        let outcome = read_claims(
            text.as_bytes(),
            |r| {
                sent.push(r);
                true
            },
            || skipped += 1,
        );
        assert_eq!(outcome.lines, 5);
        assert_eq!(outcome.sent, 2);
        assert_eq!(skipped, 3);
        assert_eq!(sent[0].claim_id, "A");
        assert_eq!(sent[0].visit_kind, proto::VisitKind::Inpatient as i32);
        assert_eq!(sent[0].lines[0].expense_class, proto::ExpenseClass::InScope as i32);
        assert_eq!(sent[1].outpatient_kind, proto::OutpatientKind::Chronic as i32);
        assert_eq!(outcome.bad.len(), 2);
        assert_eq!(outcome.bad[0].line, 3);
        assert!(
            outcome.bad[0].message.contains("unknown field `extra`"),
            "{}",
            outcome.bad[0].message
        );
        assert_eq!(outcome.bad[1].line, 4);
        assert!(
            outcome.bad[1].message.starts_with("visit_kind: unknown value"),
            "{}",
            outcome.bad[1].message
        );
    }

    fn settled(claim: &str, payout: &str, replay: bool) -> SettlementReply {
        SettlementReply {
            claim_id: claim.into(),
            replay,
            result: Some(ReplyResult::Settlement(StoredSettlement {
                settlement: Some(Settlement {
                    claim_id: claim.into(),
                    payout_total: payout.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn replies_are_tallied() {
        let mut t = Tally::default();
        t.add(&settled("1", "100.50", false));
        t.add(&settled("2", "0.00", false));
        t.add(&settled("3", "7.00", true));
        t.add(&settled("4", "0.49", false));
        for i in 0..7 {
            t.add(&SettlementReply {
                claim_id: format!("E{i}"),
                replay: false,
                result: Some(ReplyResult::Error(ErrorDetail {
                    code: 6,
                    message: "conflict".into(),
                    violations: vec![],
                })),
            });
        }
        t.add(&SettlementReply {
            claim_id: "V".into(),
            replay: false,
            result: Some(ReplyResult::Error(ErrorDetail {
                code: 3,
                message: "invalid request:\nlines[0].amount: has more than two decimals".into(),
                violations: vec![proto::FieldViolation {
                    field: "lines[0].amount".into(),
                    description: "has more than two decimals".into(),
                }],
            })),
        });
        assert_eq!(
            (t.replies, t.paid, t.nothing_paid, t.replayed, t.refused),
            (12, 2, 1, 1, 8)
        );
        assert_eq!(format_money(t.payout), "100.99");
        assert_eq!(format_money(t.replayed_payout), "7.00");
        let (count, quotes) = &t.refused_by_code["ALREADY_EXISTS"];
        assert_eq!((*count, quotes.len()), (7, QUOTED_PER_CODE));
        assert_eq!(quotes[0], "E0: conflict");
        assert_eq!(
            t.refused_by_code["INVALID_ARGUMENT"].1[0],
            "V: invalid request; lines[0].amount: has more than two decimals"
        );
    }

    #[test]
    fn tallies_of_streams_are_merged() {
        let refused = |claim: &str| SettlementReply {
            claim_id: claim.into(),
            replay: false,
            result: Some(ReplyResult::Error(ErrorDetail {
                code: 5,
                message: "member not found".into(),
                violations: vec![],
            })),
        };
        let mut a = Tally::default();
        a.add(&settled("1", "10.00", false));
        a.add(&settled("2", "3.00", true));
        for i in 0..4 {
            a.add(&refused(&format!("A{i}")));
        }
        let mut b = Tally::default();
        b.add(&settled("3", "0.00", false));
        b.add(&settled("4", "2.50", false));
        for i in 0..3 {
            b.add(&refused(&format!("B{i}")));
        }
        a.merge(b);
        assert_eq!(
            (a.replies, a.paid, a.nothing_paid, a.replayed, a.refused),
            (11, 2, 1, 1, 7)
        );
        assert_eq!(format_money(a.payout), "12.50");
        assert_eq!(format_money(a.replayed_payout), "3.00");
        let (count, quotes) = &a.refused_by_code["NOT_FOUND"];
        assert_eq!((*count, quotes.len()), (7, QUOTED_PER_CODE));
        assert_eq!(quotes[4], "B0: member not found");
    }
}

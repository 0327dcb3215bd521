//! claimsctl: the admin and hospital-side command-line client of the claims service.
//!
//! Every command talks gRPC to `claimsd` (see `--server`), except `terms validate` without
//! `--remote`, which checks terms files locally with the same parser the server uses.

mod bench;
mod load;
mod members;
mod reports;
mod settlements;
mod show;
mod table;
mod terms;

use std::error::Error;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};

/// Writes to standard output. When the reader has gone (`claimsctl ... | head`), the command stops
/// quietly with success instead of panicking as `println!` does; any other write error ends it with 1.
pub fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("claimsctl: error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`emit`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::emit("\n")
    };
    ($($arg:tt)*) => {
        $crate::emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// The error type of every command: a message for the operator, printed with its causes.
pub type BoxError = Box<dyn Error + Send + Sync>;
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// A plain message as an error.
#[derive(Debug)]
pub struct Fail(pub String);

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Fail {}

/// Builds an error from a message.
pub fn fail(message: impl Into<String>) -> BoxError {
    Box::new(Fail(message.into()))
}

/// A failed RPC as an error: `<what>: <CODE>: <message>`. INVALID_ARGUMENT messages carry one
/// `field: message` per line, which are kept as they are.
pub fn rpc_error(what: &str, status: &tonic::Status) -> BoxError {
    fail(format!("{what}: {}", show::status_text(status)))
}

#[derive(Parser, Debug)]
#[command(
    name = "claimsctl",
    version,
    about = "Command-line client of the claims settlement service (claimsd)",
    long_about = "Command-line client of the claims settlement service (claimsd): apply and validate product \
                  terms, import member rosters, submit claims from JSON Lines files, preview, reverse and show \
                  settlements, show members and loss ratios, export settlements for reconciliation, run a load \
                  generator against the Settle stream, and benchmark a server against echo baselines.\n\n\
                  Amounts are printed exactly as the server sends them (decimal strings, CNY with two decimals). \
                  Exit status: 0 on success, 1 when a command failed or (for import and apply) refused any input."
)]
struct Cli {
    /// Address of the claims server (gRPC over HTTP/2), e.g. http://claims.internal:50051.
    #[arg(long, global = true, env = "CLAIMS_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,

    /// Seconds to wait for the connection to the server before giving up.
    #[arg(
        long,
        global = true,
        env = "CLAIMS_CONNECT_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 5
    )]
    connect_timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate and apply product terms (TOML files, one product period each).
    #[command(subcommand)]
    Terms(TermsCommand),
    /// Load member rosters (categories and enrollments).
    #[command(subcommand)]
    Members(MembersCommand),
    /// Submit claims to be settled.
    #[command(subcommand)]
    Claims(ClaimsCommand),
    /// Compute the settlement of one claim against the current accumulators without writing anything.
    Preview(PreviewArgs),
    /// Reverse (冲正) a settlement: take back everything it added; prints the reversed settlement.
    Reverse(ClaimKey),
    /// Look up stored settlements.
    #[command(subcommand)]
    Settlement(SettlementCommand),
    /// Look up members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Show written premium, paid amounts and the loss ratio per product period.
    LossRatio(LossRatioArgs),
    /// Export settlements as CSV for reconciliation (streamed: any number of rows).
    Export(ExportArgs),
    /// Load generator: settle a claims file, repeated, over concurrent Settle streams (writes real settlements).
    ///
    /// A LOAD RUN WRITES REAL SETTLEMENTS: every claim it sends is settled and committed like any other (it
    /// uses up members' caps and deductibles, moves loss ratios, and shows in exports). Point it at a test
    /// server, never at one that holds production data.
    ///
    /// The claims file is read once (lines that are not valid claim JSON are reported by line number and
    /// skipped) and sent --repeat times over --streams concurrent Settle streams, each on its own connection.
    /// So that every run settles new claims rather than replaying earlier ones, each claim id is rewritten
    /// as <claim_id>-<suffix>-<round> (round 1 to --repeat; hospital and member ids are unchanged); the
    /// rewritten ids must still be at most 64 characters. Claims are dealt to the streams in turn.
    ///
    /// Closed loop: each stream keeps at most --window claims in flight and sends the next one only when a
    /// reply comes back, so the latencies measured (from sending a claim to its reply, which the server
    /// sends after the durable commit) are the service's and not a queue built up by the client.
    ///
    /// Prints claims sent, settled, replayed and refused (by gRPC code), elapsed time, claims per second
    /// and latency percentiles. Exit 1 if a stream fails (refused claims are counted, not failures).
    Load(LoadArgs),
    /// Benchmark a running claimsd: synthetic roster and claim mix, Settle streams, SettleOne, Preview and
    /// echo baselines; claims/s, latency percentiles, server CPU and peak memory (writes real settlements).
    ///
    /// A BENCH RUN WRITES REAL SETTLEMENTS and enrolls members BM000000, BM000001, ...: point it at a test
    /// server, e.g. `claimsd --bench --database-url sqlite:///tmp/bench/claims.db --terms-dir examples/terms`
    /// on a fresh database. --bench (CLAIMS_BENCH) makes the server also serve claims.v1.BenchService: the
    /// echo RPCs and its CPU time and peak resident memory; without it only stream, unary and preview run
    /// and the server figures are missing.
    ///
    /// Roster: --members members (unless --skip-roster), each enrolled in the Zhongning anti-poverty
    /// product 2020-04-26 (category AT_RISK or UNSTABLE_EXIT from that day) and in the four Cixi 2022
    /// layers (DIBAO, DIBAO_MARGINAL or DESTITUTE from 2022-01-01); the server must have those terms
    /// (--terms-dir examples/terms). Rows are sent in Enroll streams of 10,000 members.
    ///
    /// Claims, generated from --seed before each mode starts (same seed, same claims): 70% outpatient with
    /// 1-5 lines, 25% inpatient with 5-30 lines, 5% non-medical (education, disaster, accident loss);
    /// medical claims in 2022 four times in five, else in the Zhongning period; 2% of the claims belong to
    /// ten heavy members, so that caps bind. Claim ids are <run-id>-<set>-<n>, the set naming the mode and
    /// its shape (s4: 4 streams, u64 and p64: unary and preview at concurrency 64), so that no run or mode
    /// replays another's claims.
    ///
    /// Modes, in this order: for each --streams value S, `stream` (S Settle streams over C connections,
    /// each pipelined with at most --window claims in flight) then `echo-stream` (the same claims through
    /// EchoStream in the same shape); for each --concurrency value K, `unary` (K concurrent callers of
    /// SettleOne, each one claim at a time), `echo-unary` (the same claims through Echo), `preview`
    /// (K callers of Preview) and, only when asked for, `loss-ratio` (K callers of GetLossRatio for
    /// cixi-medical-assistance 2022-01-01, --claims calls in all; no claims are sent, no echo baseline,
    /// and its claims and claims/s figures count calls). The echo answers every claim with as many bytes
    /// as its real reply had (measured in the real mode just before; estimated from Preview replies when
    /// that mode is not run). Latency is from sending a claim (or starting a call) to its reply.
    ///
    /// Prints one row per mode: claims, claims/s, latency p50/p90/p99/p99.9/max, server CPU seconds (and
    /// per claim) and peak RSS during the mode, the client's CPU seconds, the mean reply size and refusals;
    /// then each real mode's figures divided by those of its echo baseline. --json prints one JSON document
    /// instead. Exit 1 if a stream or caller fails (refused claims are counted, not failures).
    Bench(BenchArgs),
}

#[derive(Subcommand, Debug)]
enum TermsCommand {
    /// Check terms files and print every problem as `file: field: message`; exit 1 if any file is bad.
    ///
    /// Locally (the default) the files are checked with the server's own parser, and the files given
    /// together are also checked against each other (overlapping periods of one product). With
    /// --remote the server checks them against its catalogue too; nothing is stored either way.
    Validate {
        /// Terms files (.toml); a directory stands for every *.toml file in it, in name order.
        #[arg(required = true, value_name = "FILES")]
        files: Vec<PathBuf>,
        /// Ask the server (TermsService.ValidateTerms) instead of checking locally.
        #[arg(long)]
        remote: bool,
    },
    /// Apply terms files on the server: each file is a new product period, a new version of an existing
    /// period, or unchanged. Prints code, period, version and outcome per file; exit 1 if any is refused.
    Apply {
        /// Terms files (.toml) or directories (every *.toml file in them, in name order), applied in the
        /// order given.
        #[arg(required = true, value_name = "FILES_OR_DIRS")]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum MembersCommand {
    /// Import a roster CSV in one MemberService.Enroll stream and print a summary.
    ///
    /// Header: member_id,category,effective_date,product_code,period_start,premium. Only member_id is
    /// required; category + effective_date set the member's category from that date, product_code +
    /// period_start enroll the member in that product period, premium (optional) overrides the product's
    /// premium_per_member. Columns may come in any order and optional ones may be left out. Rows refused
    /// locally or by the server are reported by CSV line number (the header is line 1); exit 1 if any.
    Import {
        /// The roster CSV file.
        csv: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ClaimsCommand {
    /// Settle every claim of a JSON Lines file (one claim object per line) over one Settle stream.
    ///
    /// Lines that are not valid claim JSON are reported by line number and skipped. Prints how many
    /// claims were paid, settled with nothing paid, replayed (identical resubmissions) and refused (by
    /// gRPC code), the total payout and the throughput. Exit 1 if the stream itself fails.
    Submit {
        /// The JSON Lines file; each line a claim: claim_id, hospital_id, member_id, service_date,
        /// visit_kind, outpatient_kind, cause, lines [{code, expense_class, amount}], upstream [{kind, amount}].
        jsonl: PathBuf,
        /// Do not show the progress bar (it is drawn on stderr, and only when stderr is a terminal).
        #[arg(long, short)]
        quiet: bool,
        /// How many claims may wait in memory between the file reader and the stream.
        #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        buffer: u32,
    },
}

#[derive(Args, Debug)]
struct PreviewArgs {
    /// A file holding one claim as a JSON object (same fields as a line of `claims submit`), or `-` to
    /// read it from standard input.
    file: String,
}

/// The idempotency key of a settlement.
#[derive(Args, Debug)]
struct ClaimKey {
    /// The hospital that sent the claim.
    #[arg(long, value_name = "HOSPITAL_ID")]
    hospital: String,
    /// The claim id, unique per hospital.
    #[arg(long, value_name = "CLAIM_ID")]
    claim: String,
}

#[derive(Subcommand, Debug)]
enum SettlementCommand {
    /// Show one stored settlement (layers, reasons, totals; reversed or not).
    Show(ClaimKey),
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// Show a member: category history, enrollments with paid amounts and room under each cap, and
    /// usage per benefit.
    Show {
        /// The member's pseudonymous id (never a national ID number).
        member_id: String,
        /// The day whose category is shown as current (YYYY-MM-DD); default: today on the server.
        #[arg(long, value_name = "DATE", value_parser = parse_date_arg)]
        as_of: Option<String>,
    },
}

#[derive(Args, Debug)]
struct LossRatioArgs {
    /// Only this product code; default: every product.
    #[arg(long, value_name = "CODE")]
    product: Option<String>,
    /// Only the product period starting on this date (YYYY-MM-DD); default: every period.
    #[arg(long, value_name = "DATE", value_parser = parse_date_arg)]
    period_start: Option<String>,
    /// Keep watching: print the current figures, then one line per change as settlements and
    /// reversals commit, until interrupted (Ctrl-C).
    #[arg(long)]
    watch: bool,
    /// Alert threshold as a loss ratio (1.0 = 100%). With --watch, after the current figures only
    /// the changes that take a period's loss ratio across it are printed, marked ALERT when at or
    /// above it and "below" when under it.
    #[arg(long, value_name = "RATIO")]
    alert_above: Option<String>,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// First service date to include (YYYY-MM-DD, inclusive); default: unbounded.
    #[arg(long, value_name = "DATE", value_parser = parse_date_arg)]
    from: Option<String>,
    /// Last service date to include (YYYY-MM-DD, inclusive); default: unbounded.
    #[arg(long, value_name = "DATE", value_parser = parse_date_arg)]
    to: Option<String>,
    /// Only settlements of this hospital.
    #[arg(long, value_name = "HOSPITAL_ID")]
    hospital: Option<String>,
    /// Only settlements in which this product was a layer.
    #[arg(long, value_name = "CODE")]
    product: Option<String>,
    /// Include reversed settlements (marked in the `reversed` column); default: only those in force.
    #[arg(long)]
    include_reversed: bool,
    /// Write the CSV to this file instead of standard output (an existing file is replaced).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

// The arguments of `claimsctl load` (its help is on `Command::Load`).
#[derive(Args, Debug)]
struct LoadArgs {
    /// The JSON Lines file of claims, as for `claims submit`.
    jsonl: PathBuf,
    /// Number of concurrent Settle streams, each on its own connection (at most one per claim sent).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    streams: u32,
    /// Most claims in flight (sent, not yet answered) per stream.
    #[arg(long, value_name = "W", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    window: u32,
    /// How many times every claim of the file is sent (each time under a new claim id).
    #[arg(long, value_name = "R", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    repeat: u32,
    /// The text put into every rewritten claim id (ASCII letters, digits and - _ . : /); default: a run
    /// id from the current UTC time, such as 20250612T101530.123. Reusing a suffix resends the same
    /// claim ids, which the server answers as replays.
    #[arg(long, value_name = "TEXT", value_parser = load::parse_suffix)]
    id_suffix: Option<String>,
    /// Do not show the progress bar (it is drawn on stderr, and only when stderr is a terminal).
    #[arg(long, short)]
    quiet: bool,
}

/// The modes of `claimsctl bench`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BenchMode {
    /// Settle streams.
    Stream,
    /// SettleOne calls.
    Unary,
    /// Preview calls (nothing written).
    Preview,
    /// Echo baselines (needs claimsd --bench) for the stream and unary shapes that run.
    Echo,
    /// GetLossRatio calls of one product period (reads only; no claims, no echo baseline; not in the
    /// default).
    LossRatio,
}

// The arguments of `claimsctl bench` (its help is on `Command::Bench`).
#[derive(Args, Debug)]
struct BenchArgs {
    /// Members in the roster (BM000000 onwards), five enrollment rows each; claims go to these members.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    members: u32,
    /// Claims sent in each mode run (each --streams and --concurrency value is a run of every mode); for
    /// loss-ratio, the GetLossRatio calls of each run.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    claims: u64,
    /// Settle streams of the stream modes: one run per value, e.g. 1,4.
    #[arg(long, value_name = "S,...", value_delimiter = ',', default_values_t = [1u32, 4], value_parser = clap::value_parser!(u32).range(1..=1024))]
    streams: Vec<u32>,
    /// HTTP/2 connections the streams (or the concurrent unary callers) share, dealt in turn; default: one
    /// per stream or caller. At most one per stream or caller.
    #[arg(long, value_name = "C", value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: Option<u32>,
    /// Most claims in flight (sent, not yet answered) per stream.
    #[arg(long, value_name = "W", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    window: u32,
    /// Concurrent callers of the unary, preview and loss-ratio modes: one run per value, e.g. 1,64.
    #[arg(long, value_name = "K,...", value_delimiter = ',', default_values_t = [1u32, 64], value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: Vec<u32>,
    /// Which modes run (comma-separated): stream, unary, preview, echo, loss-ratio. The default is every
    /// mode but loss-ratio.
    #[arg(long, value_name = "MODES", value_delimiter = ',', default_values_t = [BenchMode::Stream, BenchMode::Unary, BenchMode::Preview, BenchMode::Echo])]
    modes: Vec<BenchMode>,
    /// Seed of the claim mix: the same seed gives the same claims (apart from the run id in claim ids).
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Do not load the roster: it was loaded before with at least --members members.
    #[arg(long)]
    skip_roster: bool,
    /// Put into every claim id (ASCII letters, digits and - _ . : /); default: the current UTC time, such as
    /// 20250612T101530.123. Reusing one resends the same claim ids, which the server answers as replays.
    #[arg(long, value_name = "TEXT", value_parser = load::parse_suffix)]
    run_id: Option<String>,
    /// Print one JSON document instead of the tables.
    #[arg(long)]
    json: bool,
    /// Do not show progress bars (drawn on stderr, and only when stderr is a terminal).
    #[arg(long, short)]
    quiet: bool,
}

impl std::fmt::Display for BenchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use clap::ValueEnum as _;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => Ok(()),
        }
    }
}

/// Checks a YYYY-MM-DD date argument with the domain's date parser and keeps the text.
fn parse_date_arg(text: &str) -> Result<String, String> {
    ::claims::domain::parse_date(text).map(|_| text.to_owned())
}

/// The server of `--server`, with the connect timeout: opens connections to it.
#[derive(Debug, Clone)]
pub struct Server {
    url: String,
    endpoint: Endpoint,
}

impl Server {
    fn from_cli(cli: &Cli) -> Result<Self> {
        let endpoint = Endpoint::from_shared(cli.server.clone())
            .map_err(|e| fail(format!("--server {:?} is not a valid URL: {e}", cli.server)))?
            .connect_timeout(Duration::from_secs(cli.connect_timeout));
        Ok(Self {
            url: cli.server.clone(),
            endpoint,
        })
    }

    /// The server's URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a new HTTP/2 connection (each call its own).
    pub async fn connect(&self) -> Result<Channel> {
        self.endpoint
            .connect()
            .await
            .map_err(|e| fail(format!("cannot connect to {}: {}", self.url, chain(&e))))
    }
}

/// Opens one HTTP/2 channel to the server, shared by the clients of one command.
async fn connect(cli: &Cli) -> Result<Channel> {
    Server::from_cli(cli)?.connect().await
}

/// An error with its causes, `outer: inner: innermost`.
fn chain(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Terms(TermsCommand::Validate { files, remote: false }) => terms::validate_local(files),
        Command::Terms(TermsCommand::Validate { files, remote: true }) => {
            terms::validate_remote(connect(&cli).await?, files).await
        }
        Command::Terms(TermsCommand::Apply { paths }) => terms::apply(connect(&cli).await?, paths).await,
        Command::Members(MembersCommand::Import { csv }) => members::import(connect(&cli).await?, csv).await,
        Command::Member(MemberCommand::Show { member_id, as_of }) => {
            members::show(connect(&cli).await?, member_id, as_of.as_deref()).await
        }
        Command::Claims(ClaimsCommand::Submit { jsonl, quiet, buffer }) => {
            let options = settlements::SubmitOptions {
                quiet: *quiet,
                buffer: *buffer as usize,
            };
            settlements::submit(connect(&cli).await?, jsonl, options).await
        }
        Command::Preview(args) => settlements::preview(connect(&cli).await?, &args.file).await,
        Command::Reverse(key) => settlements::reverse(connect(&cli).await?, &key.hospital, &key.claim).await,
        Command::Settlement(SettlementCommand::Show(key)) => {
            settlements::show(connect(&cli).await?, &key.hospital, &key.claim).await
        }
        Command::LossRatio(args) => {
            let request = ::claims::proto::LossRatioRequest {
                product_code: args.product.clone().unwrap_or_default(),
                period_start: args.period_start.clone().unwrap_or_default(),
                alert_above: args.alert_above.clone().unwrap_or_default(),
            };
            reports::loss_ratio(connect(&cli).await?, request, args.watch).await
        }
        Command::Export(args) => {
            let request = ::claims::proto::ListSettlementsRequest {
                from_date: args.from.clone().unwrap_or_default(),
                to_date: args.to.clone().unwrap_or_default(),
                hospital_id: args.hospital.clone().unwrap_or_default(),
                product_code: args.product.clone().unwrap_or_default(),
                page_size: 0,
                page_token: String::new(),
                include_reversed: args.include_reversed,
            };
            reports::export(connect(&cli).await?, request, args.out.as_deref()).await
        }
        Command::Load(args) => {
            let options = load::LoadOptions {
                streams: args.streams as usize,
                window: args.window as usize,
                repeat: args.repeat,
                suffix: args
                    .id_suffix
                    .clone()
                    .unwrap_or_else(|| load::default_suffix(time::OffsetDateTime::now_utc())),
                quiet: args.quiet,
            };
            load::run(&Server::from_cli(&cli)?, &args.jsonl, options).await
        }
        Command::Bench(args) => {
            let options = bench::BenchOptions {
                members: args.members,
                claims: args.claims,
                streams: args.streams.clone(),
                connections: args.connections,
                window: args.window,
                concurrency: args.concurrency.clone(),
                stream: args.modes.contains(&BenchMode::Stream),
                unary: args.modes.contains(&BenchMode::Unary),
                preview: args.modes.contains(&BenchMode::Preview),
                echo: args.modes.contains(&BenchMode::Echo),
                loss_ratio: args.modes.contains(&BenchMode::LossRatio),
                seed: args.seed,
                skip_roster: args.skip_roster,
                run_id: args
                    .run_id
                    .clone()
                    .unwrap_or_else(|| load::default_suffix(time::OffsetDateTime::now_utc())),
                json: args.json,
                quiet: args.quiet,
            };
            bench::run(&Server::from_cli(&cli)?, options).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("claimsctl: error: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_every_argument_has_help() {
        let command = Cli::command();
        command.clone().debug_assert();
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no help text");
            }
            for sub in command.get_subcommands() {
                assert!(sub.get_about().is_some(), "{path} {} has no help text", sub.get_name());
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&command, "claimsctl");
    }

    #[test]
    fn dates_are_checked() {
        assert!(parse_date_arg("2022-01-31").is_ok());
        assert!(parse_date_arg("2022-02-30").is_err());
        assert!(parse_date_arg("20220101").is_err());
    }
}

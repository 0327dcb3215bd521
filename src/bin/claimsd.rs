//! claimsd: the claims settlement server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use claims::ledger::LedgerConfig;
use claims::startup::{Application, Settings};
use claims::store::WalPreallocate;

/// mimalloc rather than glibc's allocator: the writer thread, which every claim waits for, spent
/// 19% of its time in malloc and free (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One-stop settlement of health insurance claims over gRPC.
///
/// Every flag can also be set by the environment variable named beside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on for gRPC (port 0: any free port).
    #[arg(long, env = "CLAIMS_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Database: sqlite://PATH (embedded; the file is created and migrated at start) or
    /// postgres://USER@HOST/DB.
    #[arg(long, env = "CLAIMS_DATABASE_URL", default_value = "sqlite://claims.db")]
    database_url: String,
    /// Directory of terms files (*.toml) to apply at start, e.g. examples/terms. Terms already stored
    /// unchanged are left as they are; changed terms become a new version.
    #[arg(long, env = "CLAIMS_TERMS_DIR")]
    terms_dir: Option<PathBuf>,
    /// Largest gRPC message accepted, in bytes; larger ones are refused with RESOURCE_EXHAUSTED or
    /// OUT_OF_RANGE by the transport.
    #[arg(long, env = "CLAIMS_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    max_message_bytes: usize,
    /// Most commands (claims, reversals, roster chunks) committed in one transaction.
    #[arg(long, env = "CLAIMS_BATCH_MAX", default_value_t = 256)]
    batch_max: usize,
    /// Commands that may wait for the writer before senders are slowed down.
    #[arg(long, env = "CLAIMS_QUEUE_MAX", default_value_t = 4096)]
    queue_max: usize,
    /// Writer tasks, each with its own connection, settling different members' claims side by side
    /// (PostgreSQL; with SQLite one writer is used whatever this says).
    #[arg(long, env = "CLAIMS_WRITERS", default_value_t = 4)]
    writers: usize,
    /// Database connections in the pool for reads (each writer has one of its own besides).
    #[arg(long, env = "CLAIMS_DB_CONNECTIONS", default_value_t = 8)]
    db_connections: u32,
    /// Seconds a SIGTERM waits for open streams to finish before stopping anyway.
    #[arg(long, env = "CLAIMS_DRAIN_SECONDS", default_value_t = 10)]
    drain_seconds: u64,
    /// Address to serve Prometheus metrics on (http://ADDR/metrics), e.g. 0.0.0.0:9464. Not served
    /// when absent.
    #[arg(long, env = "CLAIMS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Also serve claims.v1.BenchService: the echo RPCs and process figures (CPU time, peak memory)
    /// that `claimsctl bench` compares the real RPCs with. For benchmark runs, not for production.
    #[arg(long, env = "CLAIMS_BENCH")]
    bench: bool,
    /// SQLite: MiB of zeros the writer's WAL file is filled to as the server starts, so that
    /// commits write over blocks the file has rather than extend it (0: none). By default as far
    /// as the WAL reaches before it starts over from its beginning, about 258 MiB.
    #[arg(long, env = "CLAIMS_WAL_PREALLOCATE_MIB")]
    wal_preallocate_mib: Option<u64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let telemetry = claims::telemetry::init();
    let settings = Settings {
        listen: args.listen,
        database_url: args.database_url,
        terms_dir: args.terms_dir,
        max_message_bytes: args.max_message_bytes,
        ledger: LedgerConfig {
            queue_max: args.queue_max,
            batch_max: args.batch_max,
            writers: args.writers,
        },
        db_connections_max: args.db_connections,
        drain_timeout: Duration::from_secs(args.drain_seconds),
        metrics_listen: args.metrics_listen,
        bench: args.bench,
        wal_preallocate: args.wal_preallocate_mib.map_or(WalPreallocate::UntilRestart, |mib| {
            WalPreallocate::Bytes(mib.saturating_mul(1 << 20))
        }),
    };
    let code = match Application::build(settings).await {
        Err(e) => {
            tracing::error!("could not start: {e}");
            eprintln!("claimsd: could not start: {e}");
            std::process::ExitCode::FAILURE
        }
        Ok(app) => match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("stopped with an error: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    };
    telemetry.shutdown().await;
    code
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

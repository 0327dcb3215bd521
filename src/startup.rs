//! Building and running the server: what `claimsd` runs and what the tests start on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::api::bench::BenchApi;
use crate::api::member::MemberApi;
use crate::api::report::ReportApi;
use crate::api::settlement::SettlementApi;
use crate::api::terms::TermsApi;
use crate::domain::{FieldErrors, Terms};
use crate::ledger::{Ledger, LedgerConfig, LedgerError};
use crate::proto::bench_service_server::BenchServiceServer;
use crate::proto::member_service_server::MemberServiceServer;
use crate::proto::report_service_server::ReportServiceServer;
use crate::proto::settlement_service_server::SettlementServiceServer;
use crate::proto::terms_service_server::TermsServiceServer;
use crate::store::{Store, StoreError, WalPreallocate};

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// `sqlite://PATH` (embedded, the default) or `postgres://...`.
    pub database_url: String,
    /// Terms files (`*.toml`) applied at start; unchanged terms are not versioned again.
    pub terms_dir: Option<PathBuf>,
    /// The largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    pub ledger: LedgerConfig,
    pub db_connections_max: u32,
    /// How long a SIGTERM waits for in-flight streams before stopping anyway.
    pub drain_timeout: Duration,
    /// Where to serve Prometheus metrics (`/metrics`); none: not served. At most one server per
    /// process may serve them (the recorder is global).
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve `claims.v1.BenchService` (echo baselines and process figures for `claimsctl bench`).
    pub bench: bool,
    /// SQLite: how far the writer fills its WAL file with zeros as it opens.
    pub wal_preallocate: WalPreallocate,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: "sqlite://claims.db".into(),
            terms_dir: None,
            max_message_bytes: 1024 * 1024,
            ledger: LedgerConfig::default(),
            db_connections_max: 8,
            drain_timeout: Duration::from_secs(10),
            metrics_listen: None,
            bench: false,
            wal_preallocate: WalPreallocate::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:\n{errors}")]
    Terms { path: String, errors: FieldErrors },
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("metrics: {0}")]
    Metrics(String),
}

/// A built server, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    ledger: Ledger,
    writer: JoinHandle<()>,
    settings: Settings,
}

impl Application {
    /// Connects and migrates the database, starts the ledger, applies the terms directory and binds
    /// the listener.
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let store = Store::connect(&settings.database_url, settings.db_connections_max)
            .await?
            .with_wal_preallocate(settings.wal_preallocate);
        let (ledger, writer) = Ledger::start(store, settings.ledger).await?;
        if let Some(dir) = &settings.terms_dir {
            apply_terms_dir(&ledger, dir).await?;
        }
        if let Some(addr) = settings.metrics_listen {
            crate::telemetry::serve_metrics(addr).map_err(StartupError::Metrics)?;
            // The loss-ratio gauges start from the stored figures; commits keep them current.
            for (key, figures, _) in ledger.store().loss_ratios(None, None).await? {
                crate::telemetry::record_loss_ratio(&key, &figures);
            }
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartupError::Io {
                path: settings.listen.to_string(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Io {
                path: settings.listen.to_string(),
                source,
            })?
            .port();
        Ok(Application {
            listener,
            port,
            ledger,
            writer,
            settings,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` completes, then drains: health turns NOT_SERVING, new streams are
    /// refused, in-flight requests finish (bounded by the drain timeout) and the ledger commits
    /// and answers everything it had queued.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Application {
            listener,
            port,
            ledger,
            writer,
            settings,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<SettlementServiceServer<SettlementApi>>().await;
        health.set_serving::<TermsServiceServer<TermsApi>>().await;
        health.set_serving::<MemberServiceServer<MemberApi>>().await;
        health.set_serving::<ReportServiceServer<ReportApi>>().await;
        // A writer that could not make a commit durable refuses every change from then on: the
        // services that change anything say so, and so does the server as a whole; reports still
        // answer.
        let mut durability_lost = ledger.durability_lost();
        let lost_health = health.clone();
        tokio::spawn(async move {
            if durability_lost.wait_for(|lost| *lost).await.is_ok() {
                tracing::error!("a commit could not be made durable: reporting NOT_SERVING until a restart");
                lost_health
                    .set_not_serving::<SettlementServiceServer<SettlementApi>>()
                    .await;
                lost_health.set_not_serving::<TermsServiceServer<TermsApi>>().await;
                lost_health.set_not_serving::<MemberServiceServer<MemberApi>>().await;
                lost_health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            }
        });
        // Both reflection versions: grpcurl and older tools ask for v1alpha.
        let reflection = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            if settings.bench {
                builder.register_encoded_file_descriptor_set(crate::api::bench::FILE_DESCRIPTOR_SET)
            } else {
                builder
            }
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let max = settings.max_message_bytes;
        let store = ledger.store().clone();
        let bench = settings.bench.then(|| {
            // A payload of the largest real reply's size, plus its field tag and length prefix.
            BenchServiceServer::new(BenchApi::new(max * 4))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max * 4 + crate::api::bench::ECHO_FRAMING_BYTES)
        });

        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let (draining_watch_tx, draining_watch) = tokio::sync::watch::channel(false);
        let drain_health = health.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutdown requested: draining");
            let _ = draining_watch_tx.send(true);
            drain_health
                .set_not_serving::<SettlementServiceServer<SettlementApi>>()
                .await;
            drain_health.set_not_serving::<TermsServiceServer<TermsApi>>().await;
            drain_health.set_not_serving::<MemberServiceServer<MemberApi>>().await;
            drain_health.set_not_serving::<ReportServiceServer<ReportApi>>().await;
            let _ = draining_tx.send(());
        };
        let serve = Server::builder()
            // HTTP/2 pings find billing systems that vanished without closing their connection, so
            // their streams end and stop holding resources.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // A bound on what one connection may open at once.
            .max_concurrent_streams(Some(256))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // Only with --bench.
            .add_optional_service(bench)
            .add_service(
                SettlementServiceServer::new(SettlementApi::new(ledger.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max * 4),
            )
            .add_service(TermsServiceServer::new(TermsApi::new(ledger.clone())).max_decoding_message_size(max))
            .add_service(MemberServiceServer::new(MemberApi::new(ledger.clone())).max_decoding_message_size(max))
            .add_service(
                ReportServiceServer::new(ReportApi::new(ledger.clone(), draining_watch)).max_decoding_message_size(max),
            )
            // Nagle's algorithm would hold each unary reply for the client's delayed ACK (40 ms).
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
        drop(ledger);
        tracing::info!(port, "serving");
        tokio::pin!(serve);
        let drain_timeout = settings.drain_timeout;
        tokio::select! {
            result = &mut serve => result?,
            _ = async move {
                if draining_rx.await.is_ok() {
                    tokio::time::sleep(drain_timeout).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => tracing::warn!("drain timeout: stopping with streams still open"),
        }
        // Every handle the services held is gone with `serve`; the writer answers what is queued.
        if tokio::time::timeout(drain_timeout, writer).await.is_err() {
            tracing::warn!("the ledger writer did not stop in time");
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Applies every `*.toml` of `dir`, in name order. A bad file stops the start with its problems.
pub async fn apply_terms_dir(ledger: &Ledger, dir: &Path) -> Result<(), StartupError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StartupError::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let terms = Terms::from_toml(&text).map_err(|errors| StartupError::Terms {
            path: path.display().to_string(),
            errors,
        })?;
        match ledger.apply_terms(terms, text).await {
            Ok(outcome) => tracing::info!(file = %path.display(), version = outcome.version(), "terms loaded"),
            Err(LedgerError::Invalid(errors)) => {
                return Err(StartupError::Terms {
                    path: path.display().to_string(),
                    errors,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

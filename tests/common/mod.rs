//! Test harness shared by the integration test binaries: a real server on a loopback port with a
//! fresh, empty database, and real gRPC clients.
//!
//! The backend comes from `CLAIMS_TEST_BACKEND`: `sqlite` (the default) gives every server a new
//! SQLite file in a temporary directory; `postgres` gives it a new database (named
//! `claims_t_<unix seconds>_<pid>_<n>`) on the server named by `CLAIMS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), and fails, never skips, when that server does not
//! answer. `scripts/test` runs the api and durability tests on both.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use claims::proto::member_service_client::MemberServiceClient;
use claims::proto::report_service_client::ReportServiceClient;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::terms_service_client::TermsServiceClient;
use claims::proto::{self, ClaimRequest, EnrollmentRow, LineItem, UpstreamPayment};
use claims::startup::{Application, Settings};
use claims::store::WalPreallocate;
use sqlx::{AnyConnection, Connection, Executor, PgConnection, Row};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub mod products;
pub mod random;
pub mod replay;

pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The database backend the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backend named by `CLAIMS_TEST_BACKEND`: `sqlite` (also when unset or empty) or `postgres`.
/// Any other value fails the test rather than quietly testing something else.
pub fn backend() -> Backend {
    let value = std::env::var("CLAIMS_TEST_BACKEND").unwrap_or_default();
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "sqlite" => Backend::Sqlite,
        "postgres" | "postgresql" | "pg" => Backend::Postgres,
        other => panic!("CLAIMS_TEST_BACKEND={other:?}: expected `sqlite` or `postgres`"),
    }
}

/// The PostgreSQL server the tests create their databases on: `CLAIMS_TEST_POSTGRES_URL` (set by
/// `scripts/test`, which starts a server if none runs), else the local default.
pub fn postgres_admin_url() -> String {
    std::env::var("CLAIMS_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Every test database on PostgreSQL is named with this prefix, then `<unix seconds>_<pid>_<n>`;
/// `scripts/test` drops the stale ones.
pub const PG_DATABASE_PREFIX: &str = "claims_t_";

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

async fn postgres_admin() -> PgConnection {
    let admin = postgres_admin_url();
    PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {admin} (CLAIMS_TEST_POSTGRES_URL) does not answer ({e}); the PostgreSQL tests fail \
             rather than skip: run them with scripts/test, which finds or starts a server"
        )
    })
}

/// A new, empty database on the test PostgreSQL server; its URL. Panics when the server does not
/// answer: the PostgreSQL tests never skip.
pub async fn fresh_database() -> String {
    let mut conn = postgres_admin().await;
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let name = format!(
        "{PG_DATABASE_PREFIX}{seconds}_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {}: {e}", postgres_admin_url()));
    let _ = conn.close().await;
    let admin = postgres_admin_url();
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base.to_owned(), format!("?{query}")),
        None => (admin, String::new()),
    };
    let base = base.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(base);
    format!("{base}/{name}{query}")
}

/// Drops a database made by [`fresh_database`], closing the sessions still on it.
pub async fn drop_database(url: &str) {
    let name = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .map(|(_, name)| name.to_owned())
        .unwrap_or_default();
    assert!(name.starts_with(PG_DATABASE_PREFIX), "{url} is not a test database");
    let mut conn = postgres_admin().await;
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap_or_else(|e| panic!("DROP DATABASE {name}: {e}"));
    let _ = conn.close().await;
}

/// Drops a database made by [`fresh_database_url`] when it is a PostgreSQL one (a SQLite file goes
/// with its temporary directory). Call it when the test has passed and no server uses it anymore.
pub async fn drop_test_database(url: &str) {
    if url.starts_with("postgres") {
        drop_database(url).await;
    }
}

/// A fresh, empty database of the test backend: a new SQLite file in `dir`, or a new PostgreSQL
/// database. Its URL, for `Settings::database_url` or `claimsd --database-url`.
pub async fn fresh_database_url(dir: &Path) -> String {
    match backend() {
        Backend::Sqlite => format!("sqlite://{}", dir.join("claims.db").display()),
        Backend::Postgres => fresh_database().await,
    }
}

/// A server running in this process on a free port, with its own database.
pub struct TestApp {
    pub port: u16,
    /// The server's database (`sqlite://...` or `postgres://...`).
    pub database_url: String,
    /// A temporary directory of the test (it holds the SQLite file on that backend).
    pub dir: tempfile::TempDir,
    /// The database was made for this app (not passed in by the test): [`TestApp::stop`] drops it
    /// on PostgreSQL.
    owns_database: bool,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// Starts a server with the example terms loaded.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server after `adjust` changed its settings (the port is set already). When `adjust`
/// leaves `database_url` empty, the server gets a fresh database of the test backend
/// ([`backend`]); a test that sets it (e.g. to restart on a database) uses that one.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database_url: String::new(),
        terms_dir: Some(examples_dir().join("terms")),
        drain_timeout: Duration::from_secs(5),
        // A megabyte rather than the WAL's whole length (about 258 MiB, as `claimsd` itself and
        // the tests that start it as a process do), for hundreds of servers.
        wal_preallocate: WalPreallocate::Bytes(1 << 20),
        ..Settings::default()
    };
    adjust(&mut settings);
    let owns_database = settings.database_url.is_empty();
    if owns_database {
        settings.database_url = fresh_database_url(dir.path()).await;
    }
    let database_url = settings.database_url.clone();
    let app = Application::build(settings).await.expect("server starts");
    let port = app.port();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = stop_rx.await;
        })
        .await
        .expect("server runs");
    });
    TestApp {
        port,
        database_url,
        dir,
        owns_database,
        stop: Some(stop_tx),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connects")
    }

    pub async fn settlements(&self) -> SettlementServiceClient<Channel> {
        SettlementServiceClient::new(self.channel().await)
    }

    pub async fn terms(&self) -> TermsServiceClient<Channel> {
        TermsServiceClient::new(self.channel().await)
    }

    pub async fn members(&self) -> MemberServiceClient<Channel> {
        MemberServiceClient::new(self.channel().await)
    }

    pub async fn reports(&self) -> ReportServiceClient<Channel> {
        ReportServiceClient::new(self.channel().await)
    }

    /// Stops the server (drain) and waits for it; drops the PostgreSQL database it was given (a
    /// failed test, which does not get here, leaves it for a look; `scripts/test` drops it later).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), handle).await;
        }
        if self.owns_database && self.database_url.starts_with("postgres") {
            drop_database(&self.database_url).await;
        }
    }

    /// Every row of every table and view, as text, in a fixed order: equal fingerprints mean
    /// nothing was written.
    pub async fn db_fingerprint(&self) -> Vec<String> {
        db_fingerprint(&self.database_url).await
    }
}

/// Opens the database at `url` (SQLite or PostgreSQL) through sqlx's Any driver.
pub async fn connect_any(url: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("open the database {url}: {e}"))
}

/// Every row of every table and view of the database at `url` (both backends; the migrations'
/// bookkeeping table left out), as `table: cell|cell|...` with NULL for a null, sorted: equal
/// fingerprints mean nothing was written.
pub async fn db_fingerprint(url: &str) -> Vec<String> {
    let mut conn = connect_any(url).await;
    let catalogue = if url.starts_with("sqlite") {
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         AND name <> '_sqlx_migrations' ORDER BY name"
    } else {
        "SELECT CAST(table_name AS TEXT) FROM information_schema.tables WHERE table_schema = current_schema() \
         AND table_name <> '_sqlx_migrations' ORDER BY table_name"
    };
    let tables: Vec<String> = sqlx::query(catalogue)
        .fetch_all(&mut conn)
        .await
        .expect("list tables")
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    assert!(
        tables.iter().any(|t| t == "settlements"),
        "no settlements table in {url}: {tables:?}"
    );
    let mut out = Vec::new();
    for table in tables {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("read {table}: {e}"));
        let mut lines = Vec::with_capacity(rows.len());
        for row in rows {
            let mut cells = Vec::new();
            for i in 0..row.len() {
                // SQLite INTEGER and PostgreSQL BIGINT come as i64, TEXT as String, NULL as None.
                let cell: Option<String> = row
                    .try_get::<Option<String>, _>(i)
                    .or_else(|_| row.try_get::<Option<i64>, _>(i).map(|v| v.map(|v| v.to_string())))
                    .or_else(|_| row.try_get::<Option<f64>, _>(i).map(|v| v.map(|v| v.to_string())))
                    .or_else(|_| row.try_get::<Option<bool>, _>(i).map(|v| v.map(|v| v.to_string())))
                    .or_else(|_| {
                        row.try_get::<Option<Vec<u8>>, _>(i)
                            .map(|v| v.map(|v| format!("{v:?}")))
                    })
                    .unwrap_or_else(|e| panic!("{table} column {i}: {e}"));
                cells.push(cell.unwrap_or_else(|| "NULL".into()));
            }
            lines.push(format!("{table}: {}", cells.join("|")));
        }
        lines.sort();
        out.extend(lines);
    }
    let _ = conn.close().await;
    out
}

/// A claim request: `visit` may be `OUTPATIENT/CHRONIC`; lines are (class, amount), upstream
/// (kind, amount), with domain spellings. The amounts are text: `&str`, or `String` as a generator
/// makes them (e.g. [`random::medical_amounts`]).
pub fn claim<A: AsRef<str>>(
    hospital: &str,
    id: &str,
    member: &str,
    date: &str,
    visit: &str,
    cause: &str,
    lines: &[(&str, A)],
    upstream: &[(&str, A)],
) -> ClaimRequest {
    use claims::api::convert::{
        cause_value, expense_class_value, outpatient_kind_value, upstream_kind_value, visit_kind_value,
    };
    let (visit_kind, outpatient_kind) = visit.split_once('/').unwrap_or((visit, ""));
    ClaimRequest {
        claim_id: id.into(),
        hospital_id: hospital.into(),
        member_id: member.into(),
        service_date: date.into(),
        visit_kind: visit_kind_value(visit_kind).expect("visit kind"),
        outpatient_kind: outpatient_kind_value(outpatient_kind).expect("outpatient kind"),
        cause: cause_value(cause).expect("cause"),
        lines: lines
            .iter()
            .enumerate()
            .map(|(i, (class, amount))| LineItem {
                code: format!("item-{i}"),
                expense_class: expense_class_value(class).expect("class"),
                amount: amount.as_ref().into(),
            })
            .collect(),
        upstream: upstream
            .iter()
            .map(|(kind, amount)| UpstreamPayment {
                kind: upstream_kind_value(kind).expect("upstream kind"),
                amount: amount.as_ref().into(),
            })
            .collect(),
    }
}

/// A roster row: category (domain spelling, "" for none) from `effective`, and an enrollment in
/// `product`@`period_start` ("" for none) at the product's premium.
pub fn row(member: &str, category: &str, effective: &str, product: &str, period_start: &str) -> EnrollmentRow {
    EnrollmentRow {
        member_id: member.into(),
        category: claims::api::convert::category_value(category).expect("category"),
        effective_date: effective.into(),
        product_code: product.into(),
        period_start: period_start.into(),
        premium: String::new(),
    }
}

/// Sends a roster over one Enroll stream and returns the summary.
pub async fn enroll(app: &TestApp, rows: Vec<EnrollmentRow>) -> proto::EnrollSummary {
    let mut client = app.members().await;
    client
        .enroll(tokio_stream::iter(rows))
        .await
        .expect("enroll")
        .into_inner()
}

pub const CIXI_2022: [&str; 4] = [
    "cixi-medical-assistance",
    "cixi-major-illness-topup",
    "cixi-tianyi-yongning-bao",
    "cixi-burden-stop-loss",
];

/// Enrolls `member` with `category` from 2022-01-01 in the four Cixi 2022 products of worked
/// example A.
pub async fn enroll_cixi(app: &TestApp, member: &str, category: &str) {
    let rows = CIXI_2022
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i == 0 {
                row(member, category, "2022-01-01", p, "2022-01-01")
            } else {
                row(member, "", "", p, "2022-01-01")
            }
        })
        .collect();
    let summary = enroll(app, rows).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
}

/// The claims of worked example A of ADJUDICATION.md (member M1, the four Cixi 2022 layers).
/// H1-0001: inpatient, total 116,500.00.
pub fn claim_a1(hospital: &str, id: &str) -> ClaimRequest {
    claim(
        hospital,
        id,
        "M1",
        "2022-03-10",
        "INPATIENT",
        "",
        &[
            ("IN_SCOPE", "80000.00"),
            ("B_SELF_PAY", "6000.00"),
            ("OUT_OF_CATALOGUE", "30000.00"),
            ("NON_COMPLIANT", "500.00"),
        ],
        &[("BASIC", "48000.00"), ("CRITICAL_ILLNESS", "12000.00")],
    )
}

/// H1-0002: outpatient CHRONIC, IN_SCOPE 30,000.00, BASIC 15,000.00.
pub fn claim_a2(hospital: &str, id: &str) -> ClaimRequest {
    claim(
        hospital,
        id,
        "M1",
        "2022-04-02",
        "OUTPATIENT/CHRONIC",
        "",
        &[("IN_SCOPE", "30000.00")],
        &[("BASIC", "15000.00")],
    )
}

/// H1-0003 (and H1-0004): outpatient, IN_SCOPE 20,000.00, OUT_OF_CATALOGUE 1,234.56, BASIC 8,000.00.
pub fn claim_a3(hospital: &str, id: &str) -> ClaimRequest {
    claim(
        hospital,
        id,
        "M1",
        "2022-05-03",
        "OUTPATIENT",
        "",
        &[("IN_SCOPE", "20000.00"), ("OUT_OF_CATALOGUE", "1234.56")],
        &[("BASIC", "8000.00")],
    )
}

// Worked example B (Zhongning 2020), member M2 AT_RISK.

/// A `claimsd` child process, killed (SIGKILL) and reaped when dropped, also when a test panics.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub stderr: PathBuf,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL on Unix: no drain, no destructor, no final commit.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill claimsd");
        self.child.wait().expect("reap claimsd");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Starts `claimsd` on a free port with a SQLite file in `dir` and waits until it accepts gRPC
/// connections.
pub async fn start_server(dir: &Path, run: &str) -> (Server, Channel) {
    start_server_with_env(dir, run, &[]).await
}

/// [`start_server`] with extra environment variables for the process.
pub async fn start_server_with_env(dir: &Path, run: &str, env: &[(&str, &str)]) -> (Server, Channel) {
    let url = format!("sqlite://{}", dir.join("claims.db").display());
    start_server_on_with_env(&url, dir, run, env).await
}

/// Starts `claimsd` on a free port on the database at `database_url` (see
/// [`fresh_database_url`]), its output in `dir`, and waits until it accepts gRPC connections.
pub async fn start_server_on(database_url: &str, dir: &Path, run: &str) -> (Server, Channel) {
    start_server_on_with_env(database_url, dir, run, &[]).await
}

/// [`start_server_on`] with extra environment variables for the process.
pub async fn start_server_on_with_env(
    database_url: &str,
    dir: &Path,
    run: &str,
    env: &[(&str, &str)],
) -> (Server, Channel) {
    let port = free_port();
    let stdout = dir.join(format!("claimsd-{run}.stdout"));
    let stderr = dir.join(format!("claimsd-{run}.stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_claimsd"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--database-url")
        .arg(database_url)
        .arg("--terms-dir")
        .arg(examples_dir().join("terms"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("stdout file"))
        .stderr(File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("claimsd starts");
    let mut server = Server { child, port, stderr };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait().expect("child status") {
            let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
            panic!("claimsd ({run}) exited with {status} before serving:\n{log}");
        }
        match Channel::from_shared(server.url()).expect("url").connect().await {
            Ok(channel) => return (server, channel),
            Err(e) if Instant::now() > deadline => {
                let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
                panic!("claimsd ({run}) did not accept connections within 30 s: {e}\n{log}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

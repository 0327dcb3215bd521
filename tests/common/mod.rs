//! Test harness shared by the integration test binaries: a real server on a loopback port with a
//! fresh SQLite file, and real gRPC clients.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claims::proto::member_service_client::MemberServiceClient;
use claims::proto::report_service_client::ReportServiceClient;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::terms_service_client::TermsServiceClient;
use claims::proto::{self, ClaimRequest, EnrollmentRow, LineItem, UpstreamPayment};
use claims::startup::{Application, Settings};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A server running in this process on a free port, with its own database file.
pub struct TestApp {
    pub port: u16,
    pub db_path: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// Starts a server with the example terms loaded.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server after `adjust` changed its settings (the database and port are set already).
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_path = dir.path().join("claims.db");
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database_url: format!("sqlite://{}", db_path.display()),
        terms_dir: Some(examples_dir().join("terms")),
        drain_timeout: Duration::from_secs(5),
        ..Settings::default()
    };
    adjust(&mut settings);
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
        db_path,
        dir,
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

    /// Stops the server (drain) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), handle).await;
        }
    }

    /// Every row of every table, as text, in a fixed order: equal fingerprints mean nothing was
    /// written.
    pub async fn db_fingerprint(&self) -> Vec<String> {
        db_fingerprint(&self.db_path).await
    }
}

pub async fn db_fingerprint(db_path: &Path) -> Vec<String> {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .expect("open db");
    let mut out = Vec::new();
    for (table, order) in [
        ("terms", "product_code, period_start, version"),
        ("members", "member_id"),
        ("member_categories", "member_id, effective_date"),
        ("enrollments", "member_id, product_code, period_start"),
        ("settlements", "seq"),
        ("settlement_layers", "seq, layer_index"),
        ("reversals", "seq"),
        ("accumulators", "member_id, product_code, period_start, benefit_code"),
        ("product_totals", "product_code, period_start"),
    ] {
        let rows = sqlx::query(&format!("SELECT * FROM {table} ORDER BY {order}"))
            .fetch_all(&mut conn)
            .await
            .expect("read table");
        for row in rows {
            let mut cells = Vec::new();
            for i in 0..row.len() {
                let cell: Option<String> = row
                    .try_get::<Option<String>, _>(i)
                    .or_else(|_| row.try_get::<Option<i64>, _>(i).map(|v| v.map(|v| v.to_string())))
                    .expect("cell");
                cells.push(cell.unwrap_or_else(|| "NULL".into()));
            }
            out.push(format!("{table}: {}", cells.join("|")));
        }
    }
    out
}

/// A claim request: `visit` may be `OUTPATIENT/CHRONIC`; lines are (class, amount), upstream
/// (kind, amount), with domain spellings.
pub fn claim(
    hospital: &str,
    id: &str,
    member: &str,
    date: &str,
    visit: &str,
    cause: &str,
    lines: &[(&str, &str)],
    upstream: &[(&str, &str)],
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
                amount: (*amount).into(),
            })
            .collect(),
        upstream: upstream
            .iter()
            .map(|(kind, amount)| UpstreamPayment {
                kind: upstream_kind_value(kind).expect("upstream kind"),
                amount: (*amount).into(),
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

/// Starts `claimsd` on a free port with the database in `dir` and waits until it accepts gRPC
/// connections.
pub async fn start_server(dir: &Path, run: &str) -> (Server, Channel) {
    start_server_with_env(dir, run, &[]).await
}

/// [`start_server`] with extra environment variables for the process.
pub async fn start_server_with_env(dir: &Path, run: &str, env: &[(&str, &str)]) -> (Server, Channel) {
    let port = free_port();
    let stdout = dir.join(format!("claimsd-{run}.stdout"));
    let stderr = dir.join(format!("claimsd-{run}.stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_claimsd"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("claims.db").display()))
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

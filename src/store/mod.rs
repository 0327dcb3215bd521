//! Storage: one implementation for both backends, SQLite (embedded default, one file, WAL,
//! `synchronous=FULL`) and PostgreSQL, each with its own migrations. Reads go through sqlx's `Any`
//! pool, except SQLite's short reads (a member and their usage for `Preview` and `GetMember`, the
//! loss-ratio figures, a settlement by its key, the terms), which go through rusqlite connections
//! of their own (`db::LiteReaders`); the writers' statements go through the small `Db` interface of
//! `db.rs`, over sqlx for PostgreSQL and over rusqlite for SQLite's single writer.
//!
//! The SQL is written once: both backends take parameters in order (`Params`) and `RETURNING`.
//! Where they differ (how a writer takes its lock), [`Backend`] says which statement to use.
//!
//! Money is stored as whole fen (`BIGINT`), dates as `YYYY-MM-DD` text.

mod cache;
mod db;
mod rows;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use rust_decimal::Decimal;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Connection, Executor};
use time::Date;

use crate::domain::{
    format_date, money::to_fen, parse_date, Accumulators, BenefitCode, BenefitUsage, Catalogue, Category, LayerResult,
    LossRatio, Member, MemberId, Money, PeriodKey, ProductCode, Reason, Settlement, Terms,
};

pub use cache::Book;
use db::{Cols, Conn, Db, Lite, LiteReaders, PgReaders, Statement, Val};
pub use db::{WalPreallocate, WalSync};
use rows::SettlementPages;
pub use rows::{SettlementFilter, SettlementTotals, StoredSettlement, TermsRow};

/// Settlements read a query while SQLite exports.
const EXPORT_PAGE_ROWS: i64 = 500;

/// How long a pooled PostgreSQL connection may sit idle before it is pinged again on its way out
/// of the pool.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How long a read waits for a database connection when all are in use.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything that can go wrong below the ledger.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database: {0}")]
    Vfs(#[from] claims_walbuf::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row that does not parse back: the database was changed behind the service's back.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("could not start a thread: {0}")]
    Thread(std::io::Error),
    /// The writer's WAL file could not be opened to sync it.
    #[error("the WAL file: {0}")]
    Wal(std::io::Error),
    #[error("unsupported database url {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// A statement the store could not put together or whose answers do not match it.
    #[error("statement: {0}")]
    Statement(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The aggregate that joins text with a separator.
    fn string_agg(self) -> &'static str {
        match self {
            Backend::Sqlite => "group_concat",
            Backend::Postgres => "string_agg",
        }
    }
}

/// The database: a pool for reads and for the ledger's single writer.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The SQLite file, which the writer opens through rusqlite.
    sqlite_path: Option<PathBuf>,
    /// The connections of the short reads ([`Store::member_snapshot`], the loss ratios, a
    /// settlement by its key, the terms).
    readers: Readers,
    /// How far the SQLite writer fills its WAL with zeros as it opens.
    wal_preallocate: WalPreallocate,
}

/// The connections of the store's short reads, of its own rather than sqlx's pool: see
/// [`LiteReaders`] and [`PgReaders`].
#[derive(Debug, Clone)]
enum Readers {
    Lite(Arc<LiteReaders>),
    Pg(Arc<PgReaders>),
}

/// The shard of the next PostgreSQL writer: writers of one process take turns through the shards,
/// starting at a place that depends on the process, so that processes spread over them too.
fn next_shard() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(-1);
    let _ = NEXT.compare_exchange(-1, i64::from(std::process::id()), Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed).rem_euclid(TOTALS_SHARDS)
}

pub(crate) fn corrupt(table: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.into(),
    }
}

pub(crate) fn fen(value: Decimal, table: &'static str) -> Result<i64> {
    to_fen(value).ok_or_else(|| corrupt(table, format!("{value} is not a whole number of fen")))
}

pub(crate) fn from_fen(value: i64) -> Decimal {
    Decimal::new(value, 2)
}

pub(crate) fn date_col(text: &str, table: &'static str) -> Result<Date> {
    parse_date(text).map_err(|e| corrupt(table, e))
}

pub fn now_text() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Rows (or keys) per multi-row statement. SQLite statements use anonymous `?` parameters: sqlx
/// looks each named parameter up by name (`sqlite3_bind_parameter_name`, a linear scan), which made
/// binding n named parameters cost n² and large statements slower than many small ones.
const ROWS_PER_STATEMENT_MAX: usize = 128;

/// Splits `items` into the chunks of one statement each: full chunks of `max`, then the rest in
/// chunks of falling powers of two. A driver that keeps prepared statements by their text then sees
/// at most log2(`max`) + 1 texts of each statement, whatever the batch sizes.
fn statement_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    chunk_sizes(items.len(), max).map(move |size| {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        chunk
    })
}

/// The sizes of [`statement_chunks`] of `n` items.
fn chunk_sizes(n: usize, max: usize) -> impl Iterator<Item = usize> {
    let max = max.max(1);
    let mut rest = n;
    std::iter::from_fn(move || {
        if rest == 0 {
            return None;
        }
        let size = if rest >= max { max } else { 1 << rest.ilog2() };
        rest -= size;
        Some(size)
    })
}

/// The columns of a settlement's row, as [`Writer::insert_settlements`] writes them.
const SETTLEMENT_COLUMNS: [Column; 13] = {
    use Column::{Int, Text};
    [Text, Text, Text, Text, Text, Text, Int, Int, Int, Int, Text, Text, Text]
};

/// The type of a column that [`row_statements`] writes, for PostgreSQL's typed arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Text,
    Int,
}

impl Column {
    fn array_type(self) -> &'static str {
        match self {
            Column::Text => "TEXT[]",
            Column::Int => "BIGINT[]",
        }
    }
}

/// The statements that write rows of `columns.len()` values each, `values` holding them one row
/// after another: `head` names the table and its columns (`INSERT INTO t (a, b)`), `tail` follows
/// the rows (`ON CONFLICT ...`, `RETURNING ...`). SQLite: multi-row `VALUES`, in chunks of at most
/// `max` rows ([`statement_chunks`]). PostgreSQL: one statement for any number of rows, each column
/// one array that `unnest` takes apart, so that PostgreSQL parses and coerces a literal a column,
/// not one a value: a batch's insert of 128 settlements was 1,664 literals, and parsing and
/// coercing them about a sixth of PostgreSQL's work on four streams (docs/benchmarks.md).
fn row_statements<'a>(
    backend: Backend,
    max: usize,
    head: &str,
    columns: &[Column],
    tail: &str,
    values: Vec<Val<'a>>,
) -> Result<Vec<Statement<'a>>> {
    let width = columns.len().max(1);
    if values.len() % width != 0 {
        return Err(StoreError::Statement(format!(
            "{} values do not make rows of {width}",
            values.len()
        )));
    }
    let rows = values.len() / width;
    if rows == 0 {
        return Ok(Vec::new());
    }
    if backend == Backend::Postgres {
        let casts: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("CAST(${} AS {})", i + 1, c.array_type()))
            .collect();
        let sql = format!("{head} SELECT * FROM unnest({}){tail}", casts.join(", "));
        let mut arrays: Vec<Vec<Val<'a>>> = (0..width).map(|_| Vec::with_capacity(rows)).collect();
        for (i, value) in values.into_iter().enumerate() {
            if let Some(array) = arrays.get_mut(i % width) {
                array.push(value);
            }
        }
        return Ok(vec![(sql, arrays.into_iter().map(Val::Array).collect())]);
    }
    let mut values = values.into_iter();
    Ok(chunk_sizes(rows, max)
        .map(|size| {
            let sql = format!("{head} VALUES {}{tail}", Params::new(backend).values(size, width));
            (sql, values.by_ref().take(size * width).collect())
        })
        .collect())
}

/// Numbers the parameters of a statement the way its backend wants them: `$1, $2, ...` for
/// PostgreSQL, anonymous `?` (bound in order) for SQLite. Each call is one more bound value.
struct Params {
    backend: Backend,
    next: usize,
}

impl Params {
    fn new(backend: Backend) -> Params {
        Params { backend, next: 0 }
    }

    fn next(&mut self) -> String {
        self.next += 1;
        match self.backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => format!("${}", self.next),
        }
    }

    /// `(p, p, ...), (p, ...)`: the VALUES of a multi-row insert of `rows` rows of `columns`.
    fn values(&mut self, rows: usize, columns: usize) -> String {
        let tuples: Vec<String> = (0..rows)
            .map(|_| {
                let params: Vec<String> = (0..columns).map(|_| self.next()).collect();
                format!("({})", params.join(", "))
            })
            .collect();
        tuples.join(", ")
    }

    /// `p, p, ...`: an IN list of `n` values.
    fn list(&mut self, n: usize) -> String {
        let params: Vec<String> = (0..n).map(|_| self.next()).collect();
        params.join(", ")
    }
}

/// A change to the running figures of one product period, in fen and counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TotalsDelta {
    pub written_premium_fen: i64,
    pub enrolled_members: i64,
    pub paid_fen: i64,
    pub paid_claims: i64,
}

impl TotalsDelta {
    pub fn add(&mut self, other: &TotalsDelta) {
        self.written_premium_fen += other.written_premium_fen;
        self.enrolled_members += other.enrolled_members;
        self.paid_fen += other.paid_fen;
        self.paid_claims += other.paid_claims;
    }
}

/// A settlement to append.
pub struct NewSettlement<'a> {
    pub claim_json: &'a str,
    pub settlement: &'a Settlement,
    pub settled_at: &'a str,
}

fn reasons_text(reasons: &[Reason]) -> String {
    let names: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
    names.join(",")
}

pub(crate) fn parse_reasons(text: &str, table: &'static str) -> Result<Vec<Reason>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|r| Reason::from_str(r).map_err(|e| corrupt(table, e)))
        .collect()
}

impl Store {
    /// Connects, creating the SQLite file if needed, and runs the backend's migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let url = match backend {
            // `mode=rwc` creates the file on first start.
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            }
            _ => url.to_owned(),
        };
        // Waiting for another writer's lock is normal on PostgreSQL; only a statement stuck for long
        // is worth a warning (its text holds no personal data: values are bound, not written in).
        let options =
            AnyConnectOptions::from_str(&url)?.log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(30));
        // On PostgreSQL the short reads' connections are half of `max_connections` and the pool
        // the rest (at least two): a process holds no more connections for reads than it is given.
        let (pool_max, readers_max) = match backend {
            Backend::Postgres => {
                let readers = (max_connections / 2).max(1);
                (max_connections.saturating_sub(readers).max(2), readers)
            }
            Backend::Sqlite => (max_connections.max(2), 0),
        };
        let sqlite_path = match backend {
            Backend::Sqlite => Some(db::sqlite_path(&url)?),
            Backend::Postgres => None,
        };
        let readers = match &sqlite_path {
            Some(path) => Readers::Lite(Arc::new(LiteReaders::new(path.clone()))),
            None => Readers::Pg(Arc::new(PgReaders::new(
                options.clone(),
                usize::try_from(readers_max).unwrap_or(1),
                PING_IDLE_AFTER,
                ACQUIRE_TIMEOUT,
            ))),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(pool_max)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A SQLite connection does not go stale; a ping is a round trip to sqlx's worker
            // thread before every read. A PostgreSQL one may have been closed by the server (a
            // restart, an idle timeout on the way): one that sat idle for `PING_IDLE_AFTER` is
            // pinged before it is handed out, and replaced if the ping fails. One in steady use is
            // not: without a ping before every read, `GetLossRatio` ran 9% faster at one caller
            // and 15% at 64 (docs/benchmarks.md).
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if backend == Backend::Postgres && meta.idle_for >= PING_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL makes every commit durable
                        // before the ledger acknowledges it; the busy timeout covers a second process
                        // (or claimsctl) holding the write lock briefly.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
        }
        Ok(Store {
            pool,
            backend,
            sqlite_path,
            readers,
            wal_preallocate: WalPreallocate::default(),
        })
    }

    /// How far the SQLite writer fills its WAL file with zeros as it opens (by default as far as
    /// the WAL reaches before it starts over); PostgreSQL ignores it.
    pub fn with_wal_preallocate(mut self, size: WalPreallocate) -> Store {
        self.wal_preallocate = size;
        self
    }

    /// Refreshes PostgreSQL's planner statistics of `tables`: PostgreSQL plans the writers'
    /// statements from them, and where autovacuum is off or behind they would still describe the
    /// tables before a bulk import or before settling grew them (docs/benchmarks.md). `ANALYZE`
    /// samples a bounded number of rows per table, so it stays quick on any size. SQLite's planner
    /// does without statistics here, and its `ANALYZE` reads whole indexes, so it is not run.
    pub async fn refresh_statistics(&self, tables: StatisticsOf) -> Result<()> {
        if self.backend == Backend::Postgres {
            let mut conn = self.pool.acquire().await?;
            conn.execute(tables.analyze()).await?;
        }
        Ok(())
    }

    /// [`Store::refresh_statistics`] in the background: what changed the tables is committed
    /// already, and a failure is only logged.
    pub fn refresh_statistics_in_background(&self, tables: StatisticsOf) {
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.refresh_statistics(tables).await {
                tracing::warn!(error = %e, ?tables, "could not refresh planner statistics");
            }
        });
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A connection for the ledger's writer.
    pub async fn writer(&self) -> Result<Writer> {
        let (conn, shard) = match (&self.sqlite_path, self.backend) {
            (Some(path), Backend::Sqlite) => (Conn::Lite(Lite::open(path, self.wal_preallocate)?), 0),
            _ => (
                Conn::Any(self.pool.acquire().await?.detach(), db::Prepared::default()),
                next_shard(),
            ),
        };
        let lasting = matches!(conn, Conn::Lite(_));
        Ok(Writer {
            conn,
            backend: self.backend,
            shard,
            held: BTreeSet::new(),
            exclusive: false,
            cache: cache::WriterCache::new(lasting),
            prefetched_claims: None,
            totals_fresh: false,
            committed: false,
        })
    }

    /// Every product period's current terms.
    pub async fn load_catalogue(&self) -> Result<Catalogue> {
        let mut conn = self.pool.acquire().await?;
        load_catalogue(&mut *conn).await
    }

    pub async fn terms_rows(&self, code: Option<&str>) -> Result<Vec<TermsRow>> {
        match &self.readers {
            Readers::Lite(readers) => readers.read(|reader| db::ready(rows::terms_rows(reader, code))),
            Readers::Pg(readers) => readers.read(async |conn| rows::terms_rows(conn, code).await).await,
        }
    }

    pub async fn get_settlement(&self, hospital: &str, claim: &str) -> Result<Option<StoredSettlement>> {
        match &self.readers {
            Readers::Lite(readers) => {
                readers.read(|reader| db::ready(rows::settlement_by_key(reader, hospital, claim)))
            }
            Readers::Pg(readers) => {
                readers
                    .read(async |conn| rows::settlement_by_key(conn, hospital, claim).await)
                    .await
            }
        }
    }

    /// The first `limit` settlements matching `filter` after number `after_seq`, in number order.
    pub async fn list_settlements(
        &self,
        filter: &SettlementFilter,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredSettlement>> {
        self.settlement_pages(filter, after_seq).next(limit).await
    }

    /// The settlements matching `filter` after number `after_seq`, page by page in number order.
    fn settlement_pages(&self, filter: &SettlementFilter, after_seq: i64) -> SettlementPages {
        SettlementPages::new(self.pool.clone(), self.backend, filter, after_seq)
    }

    /// Every settlement matching `filter`, in number order, each handed to `each` as it is read,
    /// until `each` answers false (an export). PostgreSQL reads them in one query, one snapshot,
    /// sorted once, on a connection of the pool held until the end: one query a page re-sorted
    /// the filter's matches for every page (exporting a hospital's quarter of 2,000,000 settlements
    /// took 18 s, docs/benchmarks.md), and a settlement committed out of number order by another
    /// writer between two pages could be passed over. SQLite reads pages of
    /// [`EXPORT_PAGE_ROWS`] ([`SettlementPages`]), each in a read transaction of its own, so that a
    /// long export does not hold the WAL back from the database file.
    pub async fn export<F, Fut>(&self, filter: &SettlementFilter, mut each: F) -> Result<()>
    where
        F: FnMut(StoredSettlement) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if self.backend == Backend::Postgres {
            return rows::each_settlement(&self.pool, filter, each).await;
        }
        let mut pages = self.settlement_pages(filter, 0);
        loop {
            let rows = pages.next(EXPORT_PAGE_ROWS).await?;
            if rows.is_empty() {
                return Ok(());
            }
            for s in rows {
                if !each(s).await {
                    return Ok(());
                }
            }
        }
    }

    pub async fn settlement_totals(&self, filter: &SettlementFilter) -> Result<SettlementTotals> {
        rows::settlement_totals(&self.pool, filter).await
    }

    /// Loss-ratio figures, read from the running totals (one row per product period).
    pub async fn loss_ratios(
        &self,
        code: Option<&str>,
        start: Option<&str>,
    ) -> Result<Vec<(PeriodKey, LossRatio, i64)>> {
        match &self.readers {
            Readers::Lite(readers) => readers.read(|reader| db::ready(rows::loss_ratios(reader, code, start))),
            Readers::Pg(readers) => {
                readers
                    .read(async |conn| rows::loss_ratios(conn, code, start).await)
                    .await
            }
        }
    }

    /// A member with the accumulators of every period they are enrolled in, read in one statement
    /// so the figures agree with each other (preview, member view).
    pub async fn member_snapshot(&self, member_id: &MemberId) -> Result<Option<(Member, Accumulators)>> {
        match &self.readers {
            Readers::Lite(readers) => {
                readers.read(|reader| db::ready(member_snapshot_on(reader, self.backend, member_id)))
            }
            Readers::Pg(readers) => {
                readers
                    .read(async |conn| member_snapshot_on(conn, self.backend, member_id).await)
                    .await
            }
        }
    }
}

/// The ledger's connection. Every method runs inside the transaction the ledger opened with
/// [`Writer::begin`]; nothing is visible to others before [`Writer::commit`].
pub struct Writer {
    conn: Conn,
    backend: Backend,
    /// The row of `product_total_shards` this writer adds its figures to.
    shard: i64,
    /// The advisory locks this transaction holds (PostgreSQL).
    held: BTreeSet<LockKey>,
    /// This transaction holds the global lock exclusively: no other lock is needed.
    exclusive: bool,
    /// What this writer read and wrote (`cache`).
    cache: cache::WriterCache,
    /// Settlements looked up by [`Writer::begin_prefetching`], for the first
    /// [`Writer::claims_by_keys`] of the transaction (none settled in between).
    prefetched_claims: Option<PrefetchedClaims>,
    /// The period totals held were read by [`Writer::begin_prefetching`] after their locks: the
    /// next [`Writer::accumulators`] need not read them again.
    totals_fresh: bool,
    /// The transaction was committed with its last writes, in their message
    /// ([`Writer::insert_settlements`]): [`Writer::commit`] has nothing left to do.
    committed: bool,
}

struct PrefetchedClaims {
    /// The keys looked up, sorted.
    asked: Vec<(String, String)>,
    found: HashMap<(String, String), (i64, String)>,
}

/// What a batch of a concurrent writer (PostgreSQL) locks and reads first: see
/// [`Writer::begin_prefetching`].
#[derive(Default)]
pub struct Prefetch<'a> {
    /// Members and claim keys, locked first.
    pub locks: BTreeSet<LockKey>,
    /// Claim keys whose stored settlements are read.
    pub claims: Vec<(&'a str, &'a str)>,
    /// Members read with their usage.
    pub members: Vec<&'a MemberId>,
    /// Product periods whose totals are read.
    pub periods: Vec<PeriodKey>,
}

/// Tables whose planner statistics [`Store::refresh_statistics`] refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatisticsOf {
    /// The member tables a settlement reads, after a large roster import.
    Members,
    /// The tables settling grows (see `ledger::statistics`).
    Settlements,
}

impl StatisticsOf {
    fn analyze(self) -> &'static str {
        match self {
            StatisticsOf::Members => "ANALYZE members, member_categories, enrollments",
            StatisticsOf::Settlements => "ANALYZE settlements, reversals, member_usage, product_total_shards",
        }
    }
}

/// Shards of the running figures per product period on PostgreSQL: enough that writers of a few
/// processes rarely meet on one row, few enough that summing them stays cheap.
pub const TOTALS_SHARDS: i64 = 16;

/// How a write transaction stands towards the others (PostgreSQL; SQLite has one writer at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxMode {
    /// Settling, reversing, enrolling: runs beside other writers; [`Writer::lock`] orders the ones
    /// that touch the same members, claims or aggregate-capped periods.
    Shared,
    /// Alone: applying terms, which changes what every settlement reads, or a batch that would
    /// need more locks than a transaction should hold (a large roster chunk).
    Exclusive,
}

/// What a PostgreSQL writer locks before it reads: a namespace and a stable 32-bit hash of the key
/// (FNV-1a, the same in every process and every build, so that processes of different versions
/// still exclude each other). Two keys with one hash only wait for each other needlessly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockKey {
    space: i32,
    hash: i32,
}

impl LockKey {
    /// The transaction-wide lock every writer takes first, shared or exclusive.
    const GLOBAL: LockKey = LockKey { space: 0, hash: 0 };

    /// A member: their accumulators, enrollments and categories.
    pub fn member(member: &MemberId) -> LockKey {
        LockKey::of(1, &[member.as_str()])
    }

    /// A claim key: its settlement and reversal.
    pub fn claim(hospital: &str, claim: &str) -> LockKey {
        LockKey::of(2, &[hospital, claim])
    }

    /// A product period whose aggregate cap every member's payouts share.
    pub fn period(key: &PeriodKey) -> LockKey {
        LockKey::of(3, &[key.product.as_str(), &format_date(key.start)])
    }

    fn of(space: i32, parts: &[&str]) -> LockKey {
        let mut hash: u32 = 0x811c_9dc5;
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                // A separator no id may contain, so ("a", "bc") and ("ab", "c") differ.
                hash = (hash ^ 0x1f).wrapping_mul(0x0100_0193);
            }
            for byte in part.bytes() {
                hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
            }
        }
        LockKey {
            space,
            hash: i32::from_ne_bytes(hash.to_ne_bytes()),
        }
    }
}

/// Takes the transaction-scoped advisory locks `keys`, in their (ascending) order: one statement
/// text for any number of keys (two arrays), so that it stays prepared. `unnest` returns the
/// elements in order and the aggregate takes each lock as its row arrives.
fn lock_statement(keys: &BTreeSet<LockKey>) -> Statement<'static> {
    let array = |part: fn(&LockKey) -> i32| Val::Array(keys.iter().map(|k| Val::Int(i64::from(part(k)))).collect());
    (
        "SELECT COUNT(pg_advisory_xact_lock(ns, h)) AS n \
         FROM unnest(CAST($1 AS INTEGER[]), CAST($2 AS INTEGER[])) AS v(ns, h)"
            .into(),
        vec![array(|k| k.space), array(|k| k.hash)],
    )
}

impl Writer {
    /// Opens the write transaction. SQLite: `BEGIN IMMEDIATE` takes the database's write lock, so
    /// writers take turns. PostgreSQL: writers run side by side; each takes the global advisory lock
    /// shared (or exclusive, to change terms) and then, through [`Writer::lock`], the locks of what it
    /// is about to read and change. Under READ COMMITTED every statement after a lock sees what the
    /// previous holder committed, so the result is that of a one-at-a-time order.
    ///
    /// Returns the number of terms versions stored when another writer may have changed it since
    /// this writer's last transaction (read after the global lock, in the same round trip on
    /// PostgreSQL), and None when none can have: SQLite's `data_version` shows that no other
    /// connection committed.
    pub async fn begin(&mut self, mode: TxMode) -> Result<Option<i64>> {
        self.begin_prefetching(mode, Prefetch::default()).await
    }

    /// Forgets what the previous transaction held: locks, prefetched claims and totals.
    fn new_transaction(&mut self, mode: TxMode) {
        self.held.clear();
        self.exclusive = mode == TxMode::Exclusive;
        self.prefetched_claims = None;
        self.totals_fresh = false;
        self.committed = false;
    }

    async fn begin_sqlite(&mut self, mode: TxMode) -> Result<Option<i64>> {
        self.new_transaction(mode);
        if let Conn::Lite(lite) = &mut self.conn {
            lite.before_transaction();
        }
        self.conn.run("BEGIN IMMEDIATE", Vec::new()).await?;
        let version = self
            .conn
            .rows("PRAGMA data_version", Vec::new(), |r| r.int("data_version"))
            .await?;
        if self.cache.begin(version.first().copied()) {
            return Ok(Some(self.terms_count().await?));
        }
        Ok(None)
    }

    /// [`Writer::begin`], and on PostgreSQL in the same round trip: the locks of `prefetch` (as
    /// [`Writer::lock`] takes them) and, after them, the roster's version (whether the members
    /// this writer holds from earlier transactions are as stored), the stored settlements of its
    /// claim keys, those of its members not held, their usage and its periods' totals, which the
    /// batch's own reads then find held. One round trip instead of about six for a batch of
    /// claims. SQLite reads on demand, mostly from the cache its single writer keeps.
    pub async fn begin_prefetching(&mut self, mode: TxMode, prefetch: Prefetch<'_>) -> Result<Option<i64>> {
        if self.backend != Backend::Postgres {
            return self.begin_sqlite(mode).await;
        }
        self.new_transaction(mode);
        self.cache.begin(None);
        let function = match mode {
            TxMode::Shared => "pg_advisory_xact_lock_shared",
            TxMode::Exclusive => "pg_advisory_xact_lock",
        };
        #[derive(Clone, Copy, PartialEq)]
        enum Part {
            Nothing,
            TermsCount,
            RosterVersion,
            Claims,
            Members,
            Usage,
            Totals,
        }
        let max = self.conn.rows_per_statement();
        let mut statements: Vec<Statement<'_>> = vec![
            ("BEGIN".into(), Vec::new()),
            (
                format!("SELECT {function}({}, {})", LockKey::GLOBAL.space, LockKey::GLOBAL.hash),
                Vec::new(),
            ),
            ("SELECT COUNT(*) AS n FROM terms".into(), Vec::new()),
        ];
        let mut parts = vec![Part::Nothing, Part::Nothing, Part::TermsCount];
        if !self.exclusive && !prefetch.locks.is_empty() {
            statements.push(lock_statement(&prefetch.locks));
            parts.push(Part::Nothing);
        }
        // After the locks: whether the members held are as stored (`WriterCache::roster_seen`).
        // Only those not held are read here; if the version moved, the batch's members that were
        // held are read when first asked for.
        statements.push(("SELECT version FROM roster_version".into(), Vec::new()));
        parts.push(Part::RosterVersion);
        for chunk in statement_chunks(&prefetch.claims, max) {
            statements.push(claims_statement(self.backend, chunk));
            parts.push(Part::Claims);
        }
        let not_held = self.cache.members_not_held(&prefetch.members);
        for chunk in statement_chunks(&not_held, max) {
            statements.push(members_statement(self.backend, chunk));
            parts.push(Part::Members);
        }
        for chunk in statement_chunks(&prefetch.members, max) {
            statements.push(usage_statement(self.backend, chunk));
            parts.push(Part::Usage);
        }
        let periods: Vec<&PeriodKey> = prefetch.periods.iter().collect();
        for chunk in statement_chunks(&periods, max) {
            statements.push(period_paid_statement(self.backend, chunk));
            parts.push(Part::Totals);
        }
        let mut terms = None;
        let mut roster_version = None;
        let mut claims = HashMap::new();
        let mut members = Vec::new();
        let mut usage = Vec::new();
        let mut totals = Vec::new();
        self.conn
            .script(statements, |i, r| {
                match parts.get(i).copied().unwrap_or(Part::Nothing) {
                    Part::Nothing => {}
                    Part::TermsCount => terms = Some(r.int("n")?),
                    Part::RosterVersion => roster_version = Some(r.int("version")?),
                    Part::Claims => {
                        let (key, stored) = claim_row(r)?;
                        claims.insert(key, stored);
                    }
                    Part::Members => members.push(Arc::new(member_row(r)?)),
                    Part::Usage => usage.push(usage_row(r)?),
                    Part::Totals => totals.push(period_paid_row(r)?),
                }
                Ok(())
            })
            .await?;
        if !self.exclusive {
            self.held.extend(prefetch.locks.iter().copied());
        }
        let mut asked: Vec<(String, String)> = prefetch
            .claims
            .iter()
            .map(|(h, c)| ((*h).to_owned(), (*c).to_owned()))
            .collect();
        asked.sort();
        self.prefetched_claims = Some(PrefetchedClaims { asked, found: claims });
        let roster_version =
            roster_version.ok_or_else(|| corrupt("roster_version", "the roster's version returned no row"))?;
        self.cache.roster_seen(roster_version, prefetch.members.iter().copied());
        self.cache.keep_members(&members);
        self.cache.keep_usage(&prefetch.members, usage, &periods, totals);
        self.totals_fresh = true;
        terms
            .map(Some)
            .ok_or_else(|| corrupt("terms", "the count of terms returned no row"))
    }

    /// The period totals [`Writer::begin_prefetching`] read are read again by the next
    /// [`Writer::accumulators`]: the catalogue changed, and a period may now need a lock that was
    /// not held when they were read.
    pub fn forget_prefetched_totals(&mut self) {
        self.totals_fresh = false;
    }

    /// Whether other writers run at the same time, so that [`Writer::lock`] matters.
    pub fn concurrent(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Whether this writer blocks its thread on every statement (SQLite through rusqlite): the
    /// ledger then runs it on a thread of its own.
    pub fn blocking(&self) -> bool {
        matches!(self.conn, Conn::Lite(_))
    }

    /// Takes transaction-scoped advisory locks on those of `keys` this transaction does not hold
    /// yet, in ascending order, in one statement. The ledger takes every lock a batch needs in two
    /// such calls before it reads anything (members and claims, then aggregate-capped periods), so
    /// two writers cannot wait for each other in a circle; a lock found missing later is taken late
    /// (a deadlock that this could cause is detected by PostgreSQL, and the batch is answered
    /// UNAVAILABLE and retried by its callers). No-op on SQLite, whose transaction holds the whole
    /// database.
    pub async fn lock(&mut self, keys: impl IntoIterator<Item = LockKey>) -> Result<()> {
        if self.backend != Backend::Postgres || self.exclusive {
            return Ok(());
        }
        let wanted: BTreeSet<LockKey> = keys.into_iter().filter(|k| !self.held.contains(k)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let (sql, values) = lock_statement(&wanted);
        self.conn.rows(&sql, values, |_| Ok(())).await?;
        self.held.extend(wanted);
        Ok(())
    }

    /// Commits the transaction. On SQLite the commit is visible when this returns but not yet
    /// durable: nothing of it may be acknowledged before a [`WalSync::sync`] of
    /// [`Writer::wal_sync`] that began after it returns `Ok`. On PostgreSQL it is durable.
    pub async fn commit(&mut self) -> Result<()> {
        if std::mem::take(&mut self.committed) {
            return Ok(());
        }
        if let Err(e) = self.conn.run("COMMIT", Vec::new()).await {
            self.cache.rolled_back();
            return Err(e);
        }
        Ok(())
    }

    /// What makes this writer's commits durable, where they return before they are (SQLite); `None`
    /// where a commit is durable when it returns (PostgreSQL).
    pub fn wal_sync(&self) -> Option<WalSync> {
        match &self.conn {
            Conn::Lite(lite) => Some(lite.wal().clone()),
            Conn::Any(..) => None,
        }
    }

    pub async fn rollback(&mut self) -> Result<()> {
        self.committed = false;
        self.cache.rolled_back();
        self.conn.run("ROLLBACK", Vec::new()).await?;
        Ok(())
    }

    /// How many terms versions exist: the ledger reloads its catalogue when another process
    /// changed it.
    pub async fn terms_count(&mut self) -> Result<i64> {
        let n = self
            .conn
            .rows("SELECT COUNT(*) AS n FROM terms", Vec::new(), |r| r.int("n"))
            .await?;
        Ok(n.first().copied().unwrap_or_default())
    }

    pub async fn load_catalogue(&mut self) -> Result<Catalogue> {
        load_catalogue(&mut self.conn).await
    }

    pub async fn settlement_by_key(&mut self, hospital: &str, claim: &str) -> Result<Option<StoredSettlement>> {
        rows::settlement_by_key(&mut self.conn, hospital, claim).await
    }

    /// The member with categories and enrollments.
    pub async fn member(&mut self, member_id: &MemberId) -> Result<Option<Member>> {
        let mut found = HashMap::new();
        load_members(&mut self.conn, self.backend, &[member_id], &mut found).await?;
        Ok(found.remove(member_id))
    }

    /// Settlements already stored under these `(hospital_id, claim_id)` keys, with their sequence
    /// number and canonical claim; one query per chunk of keys.
    pub async fn claims_by_keys(&mut self, keys: &[(&str, &str)]) -> Result<HashMap<(String, String), (i64, String)>> {
        if let Some(prefetched) = self.prefetched_claims.take() {
            let asked = |k: &(&str, &str)| {
                prefetched
                    .asked
                    .binary_search_by(|(h, c)| (h.as_str(), c.as_str()).cmp(k))
                    .is_ok()
            };
            if keys.iter().all(asked) {
                return Ok(prefetched.found);
            }
        }
        let mut found = HashMap::new();
        for chunk in statement_chunks(keys, self.conn.rows_per_statement()) {
            let (sql, values) = claims_statement(self.backend, chunk);
            let rows = self.conn.rows(&sql, values, claim_row).await?;
            found.extend(rows);
        }
        Ok(found)
    }

    /// The members among `ids` that exist, with categories and enrollments.
    pub async fn members(&mut self, ids: &[&MemberId]) -> Result<HashMap<MemberId, Arc<Member>>> {
        let mut found = HashMap::new();
        let missing = self.cache.members(ids, &mut found);
        if !missing.is_empty() {
            let mut loaded = HashMap::new();
            load_members(&mut self.conn, self.backend, &missing, &mut loaded).await?;
            let loaded: Vec<Arc<Member>> = loaded.into_values().map(Arc::new).collect();
            self.cache.keep_members(&loaded);
            found.extend(loaded.into_iter().map(|m| (m.id.clone(), m)));
        }
        Ok(found)
    }

    /// The usage of `members` in the product periods `keys`, with each period's total paid by all
    /// members (aggregate caps): read where not held, then read in the writer's cache, through
    /// the returned book, which copies none of it.
    pub async fn accumulators(&mut self, members: &[&MemberId], keys: &[PeriodKey]) -> Result<Book<'_>> {
        if !self.cache.lasting() && !std::mem::take(&mut self.totals_fresh) {
            // Other writers may change the totals of periods without an aggregate cap (which
            // nobody locks) at any time: read them afresh, unless read just now, after the locks,
            // by `begin_prefetching`. Members are locked: their usage holds.
            self.cache.forget_totals();
        }
        let (members_missing, keys_missing) = self.cache.missing_usage(members, keys);
        let usage = if members_missing.is_empty() {
            Vec::new()
        } else {
            load_usage(&mut self.conn, self.backend, &members_missing).await?
        };
        let totals = if keys_missing.is_empty() {
            Vec::new()
        } else {
            load_period_paid(&mut self.conn, self.backend, &keys_missing).await?
        };
        self.cache.keep_usage(&members_missing, usage, &keys_missing, totals);
        Ok(self.cache.view())
    }

    /// Appends settlements (their layers in the same row), and adds their changes to the accumulators and the
    /// loss-ratio totals, in a few statements for the lot. Returns the sequence numbers, in order.
    ///
    /// With `then_commit`, these are the transaction's last writes: PostgreSQL commits it in the
    /// same message, one round trip less a batch, and [`Writer::commit`] then has nothing left to
    /// do. Should a statement fail, PostgreSQL runs none after it, `COMMIT` included, and the
    /// caller rolls back as after any failure. SQLite commits in [`Writer::commit`] as always.
    pub async fn insert_settlements(&mut self, rows: &[NewSettlement<'_>], then_commit: bool) -> Result<Vec<i64>> {
        self.prefetched_claims = None;
        let settlements: Vec<&Settlement> = rows.iter().map(|r| r.settlement).collect();
        // Read first (where not held): the usage of the members whose rows the figures rewrite.
        let (figures, deltas) = self.running_figures(&settlements, 1).await?;
        let mut values = Vec::with_capacity(rows.len() * SETTLEMENT_COLUMNS.len());
        for r in rows {
            let s = r.settlement;
            values.extend([
                Val::Str(s.hospital_id.as_str()),
                Val::Str(s.claim_id.as_str()),
                Val::Str(s.member_id.as_str()),
                Val::Text(format_date(s.service_date)),
                Val::Str(s.category.as_str()),
                Val::Str(r.claim_json),
                Val::Int(fen(s.total_cost, "settlements")?),
                Val::Int(fen(s.upstream_total, "settlements")?),
                Val::Int(fen(s.payout_total, "settlements")?),
                Val::Int(fen(s.out_of_pocket, "settlements")?),
                Val::Text(reasons_text(&s.reasons)),
                Val::Str(r.settled_at),
                Val::Text(layers_json(&s.layers)?),
            ]);
        }
        // Row order of RETURNING is not defined: the key maps each number back.
        let mut statements = self.row_statements(
            "INSERT INTO settlements (hospital_id, claim_id, member_id, service_date, category, claim_json, \
             total_cost_fen, upstream_fen, payout_fen, out_of_pocket_fen, reasons, settled_at, layers)",
            &SETTLEMENT_COLUMNS,
            " RETURNING seq, hospital_id, claim_id",
            values,
        )?;
        let inserts = statements.len();
        statements.extend(figures);
        let commit_here = then_commit && self.backend == Backend::Postgres;
        if commit_here {
            statements.push(("COMMIT".into(), Vec::new()));
        }
        let mut seqs: HashMap<(String, String), i64> = HashMap::with_capacity(rows.len());
        // One round trip on PostgreSQL: the settlements, the members' usage and the totals.
        self.conn
            .script(statements, |i, r| {
                if i < inserts {
                    seqs.insert((r.text("hospital_id")?, r.text("claim_id")?), r.int("seq")?);
                }
                Ok(())
            })
            .await?;
        self.committed = commit_here;
        self.totals_added(&deltas);
        let mut ordered = Vec::with_capacity(rows.len());
        for r in rows {
            let key = (r.settlement.hospital_id.to_string(), r.settlement.claim_id.to_string());
            let seq = seqs
                .get(&key)
                .copied()
                .ok_or_else(|| corrupt("settlements", "an inserted settlement returned no sequence number"))?;
            ordered.push(seq);
        }
        Ok(ordered)
    }

    /// Appends the reversal of settlement `seq` and takes its changes back.
    pub async fn insert_reversal(&mut self, seq: i64, s: &Settlement, reversed_at: &str) -> Result<()> {
        let (figures, deltas) = self.running_figures(&[s], -1).await?;
        let mut statements: Vec<Statement<'_>> = vec![(
            "INSERT INTO reversals (settlement_seq, reversed_at) VALUES ($1, $2)".into(),
            vec![Val::Int(seq), Val::Str(reversed_at)],
        )];
        statements.extend(figures);
        self.conn.script(statements, |_, _| Ok(())).await?;
        self.totals_added(&deltas);
        Ok(())
    }

    /// The statements that add (`sign` 1) or take back (-1) settlements' changes to the
    /// accumulators and their payouts to the loss-ratio totals: one upsert of each touched member's
    /// whole usage and one for the totals; with the totals' changes, for [`Writer::totals_added`]
    /// once the statements ran. The cache holds the new usage at once (a failure rolls back, which
    /// empties it).
    async fn running_figures<'s>(
        &mut self,
        settlements: &[&'s Settlement],
        sign: i64,
    ) -> Result<(Vec<Statement<'s>>, BTreeMap<PeriodKey, TotalsDelta>)> {
        let mut usage: BTreeMap<(&MemberId, &PeriodKey, &BenefitCode), BenefitUsage> = BTreeMap::new();
        let mut totals: BTreeMap<PeriodKey, (Decimal, i64)> = BTreeMap::new();
        for s in settlements {
            for c in &s.changes.entries {
                usage
                    .entry((&s.member_id, &c.period, &c.benefit))
                    .or_default()
                    .add(&c.delta);
            }
            for l in s.layers.iter().filter(|l| !l.payout.is_zero()) {
                let t = totals.entry(l.key()).or_default();
                t.0 += l.payout;
                t.1 += 1;
            }
        }
        // Each member's row is written whole: its usage is read first where this writer does not
        // hold it (a reversal, or a member the batch did not settle for), then changed here.
        let mut members: Vec<&MemberId> = usage.keys().map(|(m, _, _)| *m).collect();
        members.dedup();
        let missing = self.cache.missing_members_usage(&members);
        if !missing.is_empty() {
            let stored = load_usage(&mut self.conn, self.backend, &missing).await?;
            self.cache.keep_usage(&missing, stored, &[], Vec::new());
        }
        for ((member, period, benefit), delta) in &usage {
            let signed = if sign < 0 { delta.negated() } else { *delta };
            self.cache.add_usage(member, period, benefit, &signed);
        }
        let mut rows = Vec::with_capacity(members.len());
        for member in &members {
            let held = self
                .cache
                .usage_of(member)
                .ok_or_else(|| corrupt("member_usage", "a member's usage was not read before its change"))?;
            rows.push((*member, usage_json(held)?));
        }
        let values = rows
            .into_iter()
            .flat_map(|(m, json)| [Val::Str(m.as_str()), Val::Text(json)])
            .collect();
        let mut statements = self.row_statements(
            "INSERT INTO member_usage (member_id, usage)",
            &[Column::Text, Column::Text],
            " ON CONFLICT (member_id) DO UPDATE SET usage = excluded.usage",
            values,
        )?;
        let mut deltas = BTreeMap::new();
        for (key, (paid, claims)) in totals {
            let paid = fen(paid, "product_total_shards")?;
            deltas.insert(
                key,
                TotalsDelta {
                    paid_fen: sign * paid,
                    paid_claims: sign * claims,
                    ..TotalsDelta::default()
                },
            );
        }
        statements.extend(self.totals_statements(&deltas)?);
        Ok((statements, deltas))
    }

    /// Adds to this writer's shard of the running figures of each period, in ascending period
    /// order (so two writers that share a shard lock its rows in the same order).
    pub async fn add_to_totals(&mut self, deltas: &BTreeMap<PeriodKey, TotalsDelta>) -> Result<()> {
        let statements = self.totals_statements(deltas)?;
        self.conn.script(statements, |_, _| Ok(())).await?;
        self.totals_added(deltas);
        Ok(())
    }

    /// [`row_statements`] for this writer's backend and connection.
    fn row_statements<'a>(
        &self,
        head: &str,
        columns: &[Column],
        tail: &str,
        values: Vec<Val<'a>>,
    ) -> Result<Vec<Statement<'a>>> {
        row_statements(
            self.backend,
            self.conn.rows_per_statement(),
            head,
            columns,
            tail,
            values,
        )
    }

    /// The statements of [`Writer::add_to_totals`]: where the shard's row of a period exists, the
    /// changes are added to it.
    fn totals_statements(&self, deltas: &BTreeMap<PeriodKey, TotalsDelta>) -> Result<Vec<Statement<'static>>> {
        let mut values = Vec::with_capacity(deltas.len() * 7);
        for (key, d) in deltas {
            values.extend([
                Val::Text(key.product.as_str().to_owned()),
                Val::Text(format_date(key.start)),
                Val::Int(self.shard),
                Val::Int(d.written_premium_fen),
                Val::Int(d.enrolled_members),
                Val::Int(d.paid_fen),
                Val::Int(d.paid_claims),
            ]);
        }
        let t = "product_total_shards";
        let added = ["written_premium_fen", "enrolled_members", "paid_fen", "paid_claims"];
        let sets: Vec<String> = added.iter().map(|c| format!("{c} = {t}.{c} + excluded.{c}")).collect();
        self.row_statements(
            &format!(
                "INSERT INTO {t} (product_code, period_start, shard, {})",
                added.join(", ")
            ),
            &[
                Column::Text,
                Column::Text,
                Column::Int,
                Column::Int,
                Column::Int,
                Column::Int,
                Column::Int,
            ],
            &format!(
                " ON CONFLICT (product_code, period_start, shard) DO UPDATE SET {}",
                sets.join(", ")
            ),
            values,
        )
    }

    /// The totals' changes `deltas` were written: the cache holds them too.
    fn totals_added(&mut self, deltas: &BTreeMap<PeriodKey, TotalsDelta>) {
        for (key, d) in deltas {
            self.cache.add_period_paid(key, from_fen(d.paid_fen));
        }
    }

    /// Stores a terms version and makes sure the period has its running totals row.
    pub async fn insert_terms(&mut self, terms: &Terms, toml: &str, version: u32, applied_at: &str) -> Result<()> {
        let p = &terms.product;
        self.conn
            .run(
                "INSERT INTO terms (product_code, period_start, version, period_end, toml, applied_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                vec![
                    Val::Str(p.code.as_str()),
                    Val::Text(format_date(p.period.start)),
                    Val::Int(i64::from(version)),
                    Val::Text(format_date(p.period.end)),
                    Val::Str(toml),
                    Val::Str(applied_at),
                ],
            )
            .await?;
        self.conn
            .run(
                "INSERT INTO product_total_shards (product_code, period_start, shard, written_premium_fen, \
                 enrolled_members, paid_fen, paid_claims) VALUES ($1, $2, 0, 0, 0, 0, 0) \
                 ON CONFLICT (product_code, period_start, shard) DO NOTHING",
                vec![Val::Str(p.code.as_str()), Val::Text(format_date(p.period.start))],
            )
            .await?;
        Ok(())
    }

    /// Adds the members not stored yet ([`row_statements`]). The writer's cache holds those it
    /// adds (with nothing enrolled and no usage, as stored), so that their first claims need not
    /// read them.
    pub async fn ensure_members(&mut self, ids: &[&MemberId], now: &str) -> Result<()> {
        let values = ids
            .iter()
            .flat_map(|id| [Val::Str(id.as_str()), Val::Str(now)])
            .collect();
        let statements = self.row_statements(
            "INSERT INTO members (member_id, created_at)",
            &[Column::Text, Column::Text],
            " ON CONFLICT (member_id) DO NOTHING RETURNING member_id",
            values,
        )?;
        let mut added = BTreeSet::new();
        for (sql, values) in statements {
            added.extend(self.conn.rows(&sql, values, |r| r.text("member_id")).await?);
        }
        // The ids returned are among those sent: the caller's own, already parsed, are kept.
        self.cache
            .keep_new_members(ids.iter().copied().filter(|id| added.contains(id.as_str())));
        Ok(())
    }

    pub async fn set_category(&mut self, member_id: &MemberId, effective: Date, category: Category) -> Result<()> {
        self.set_categories(&BTreeMap::from([((member_id, effective), category)]))
            .await
    }

    /// Sets members' categories from the given dates on (replacing one set before for the same
    /// date; [`row_statements`]). The keys are distinct, as a statement may change a row only once.
    pub async fn set_categories(&mut self, categories: &BTreeMap<(&MemberId, Date), Category>) -> Result<()> {
        for ((member, date), category) in categories {
            self.cache.set_category(member, *date, *category);
        }
        let values = categories
            .iter()
            .flat_map(|((member, date), category)| {
                [
                    Val::Str(member.as_str()),
                    Val::Text(format_date(*date)),
                    Val::Str(category.as_str()),
                ]
            })
            .collect();
        let statements = self.row_statements(
            "INSERT INTO member_categories (member_id, effective_date, category)",
            &[Column::Text, Column::Text, Column::Text],
            " ON CONFLICT (member_id, effective_date) DO UPDATE SET category = excluded.category",
            values,
        )?;
        for (sql, values) in statements {
            self.conn.run(&sql, values).await?;
        }
        Ok(())
    }

    /// The stored premiums (fen) of those of these enrollments that exist.
    pub async fn enrollment_premiums(
        &mut self,
        keys: &[(&MemberId, &PeriodKey)],
    ) -> Result<HashMap<(MemberId, PeriodKey), i64>> {
        let mut found = HashMap::with_capacity(keys.len());
        for chunk in statement_chunks(keys, self.conn.rows_per_statement()) {
            let mut params = Params::new(self.backend);
            let clauses: Vec<String> = (0..chunk.len())
                .map(|_| {
                    format!(
                        "(member_id = {} AND product_code = {} AND period_start = {})",
                        params.next(),
                        params.next(),
                        params.next()
                    )
                })
                .collect();
            let sql = format!(
                "SELECT member_id, product_code, period_start, premium_fen FROM enrollments WHERE {}",
                clauses.join(" OR ")
            );
            let values = chunk
                .iter()
                .flat_map(|(member, key)| {
                    [
                        Val::Str(member.as_str()),
                        Val::Str(key.product.as_str()),
                        Val::Text(format_date(key.start)),
                    ]
                })
                .collect();
            let rows = self
                .conn
                .rows(&sql, values, |r| {
                    Ok((
                        r.text("member_id")?,
                        r.text("product_code")?,
                        r.text("period_start")?,
                        r.int("premium_fen")?,
                    ))
                })
                .await?;
            for (member, code, start, premium) in rows {
                let member = MemberId::parse(&member).map_err(|e| corrupt("enrollments", e))?;
                found.insert((member, period_key(&code, &start, "enrollments")?), premium);
            }
        }
        Ok(found)
    }

    /// Stores enrollments with their premiums (fen), replacing the premium of one that exists
    /// ([`row_statements`]). The caller works out what they change of the running figures
    /// ([`Writer::enrollment_premiums`], [`Writer::add_to_totals`]).
    pub async fn upsert_enrollments(&mut self, enrollments: &BTreeMap<(&MemberId, &PeriodKey), i64>) -> Result<()> {
        for ((member, key), premium) in enrollments {
            self.cache.set_enrollment(member, key, *premium);
        }
        let values = enrollments
            .iter()
            .flat_map(|((member, key), premium)| {
                [
                    Val::Str(member.as_str()),
                    Val::Str(key.product.as_str()),
                    Val::Text(format_date(key.start)),
                    Val::Int(*premium),
                ]
            })
            .collect();
        let statements = self.row_statements(
            "INSERT INTO enrollments (member_id, product_code, period_start, premium_fen)",
            &[Column::Text, Column::Text, Column::Text, Column::Int],
            " ON CONFLICT (member_id, product_code, period_start) DO UPDATE SET premium_fen = excluded.premium_fen",
            values,
        )?;
        for (sql, values) in statements {
            self.conn.run(&sql, values).await?;
        }
        Ok(())
    }

    /// The running figures of some product periods, read after a commit.
    pub async fn loss_ratios_of(&mut self, keys: &[&PeriodKey]) -> Result<Vec<(PeriodKey, LossRatio, i64)>> {
        let mut all = Vec::with_capacity(keys.len());
        for chunk in statement_chunks(keys, self.conn.rows_per_statement()) {
            all.extend(rows::loss_ratios_of(&mut self.conn, self.backend, chunk).await?);
        }
        Ok(all)
    }
}

async fn load_catalogue(db: &mut impl Db) -> Result<Catalogue> {
    // The highest version of each period is the current one.
    let rows = db
        .rows(
            "SELECT t.toml AS toml, t.version AS version FROM terms t \
             JOIN (SELECT product_code, period_start, MAX(version) AS version FROM terms \
                   GROUP BY product_code, period_start) m \
             ON t.product_code = m.product_code AND t.period_start = m.period_start AND t.version = m.version",
            Vec::new(),
            |r| Ok((r.text("toml")?, r.int("version")?)),
        )
        .await?;
    let mut catalogue = Catalogue::new();
    for (text, version) in rows {
        let terms = Terms::from_toml(&text).map_err(|e| corrupt("terms", e.to_string()))?;
        let version = u32::try_from(version).map_err(|e| corrupt("terms", e.to_string()))?;
        catalogue.insert_version(terms, version);
    }
    Ok(catalogue)
}

/// Members with categories and enrollments, in one query of one row per member (per chunk of
/// `rows_per_statement` members): each member's categories and enrollments come back folded into
/// one text column each (`2022-01-01=DIBAO,...`, `code@2022-01-01=15000,...`; no code, date,
/// category or number contains `,`, `@` or `=`), so a read of many members costs few rows.
async fn load_members(
    db: &mut impl Db,
    backend: Backend,
    ids: &[&MemberId],
    found: &mut HashMap<MemberId, Member>,
) -> Result<()> {
    for chunk in statement_chunks(ids, db.rows_per_statement()) {
        let (sql, values) = members_statement(backend, chunk);
        for member in db.rows(&sql, values, member_row).await? {
            found.insert(member.id.clone(), member);
        }
    }
    Ok(())
}

/// The statement of [`load_members`] for one chunk of ids; its rows read with [`member_row`].
fn members_statement<'a>(backend: Backend, ids: &[&'a MemberId]) -> Statement<'a> {
    let (condition, values) = one_of(backend, "m.member_id", ids.iter().map(|id| id.as_str()));
    let sql = format!("SELECT {} FROM members m WHERE {condition}", member_columns(backend));
    (sql, values)
}

/// The columns [`member_row`] reads, of a member `m`.
fn member_columns(backend: Backend) -> String {
    let agg = backend.string_agg();
    format!(
        "m.member_id AS member_id, \
         COALESCE((SELECT {agg}(c.effective_date || '=' || c.category, ',') FROM member_categories c \
                   WHERE c.member_id = m.member_id), '') AS categories, \
         COALESCE((SELECT {agg}(e.product_code || '@' || e.period_start || '=' || CAST(e.premium_fen AS TEXT), ',') \
                   FROM enrollments e WHERE e.member_id = m.member_id), '') AS enrollments"
    )
}

fn member_row(r: &dyn Cols) -> Result<Member> {
    parse_member(&r.text("member_id")?, &r.text("categories")?, &r.text("enrollments")?)
}

/// The statement of [`Writer::claims_by_keys`] for one chunk of keys; its rows read with
/// [`claim_row`]. PostgreSQL: the keys as two arrays joined to the settlements' key index, one
/// statement text for any number of keys (a disjunction of `N` key conditions, planned as `N` bitmap
/// index scans and an OR of their bitmaps, cost four streams about a tenth of their rate,
/// docs/benchmarks.md). SQLite: the disjunction, each term a seek of the same index.
fn claims_statement<'a>(backend: Backend, keys: &[(&'a str, &'a str)]) -> Statement<'a> {
    if backend == Backend::Postgres {
        return (
            "SELECT s.seq AS seq, s.hospital_id AS hospital_id, s.claim_id AS claim_id, s.claim_json AS claim_json \
             FROM unnest(CAST($1 AS TEXT[]), CAST($2 AS TEXT[])) AS k(h, c) \
             JOIN settlements s ON s.hospital_id = k.h AND s.claim_id = k.c"
                .into(),
            vec![
                Val::Array(keys.iter().map(|(h, _)| Val::Str(h)).collect()),
                Val::Array(keys.iter().map(|(_, c)| Val::Str(c)).collect()),
            ],
        );
    }
    let mut params = Params::new(backend);
    let clauses: Vec<String> = (0..keys.len())
        .map(|_| format!("(hospital_id = {} AND claim_id = {})", params.next(), params.next()))
        .collect();
    let sql = format!(
        "SELECT seq, hospital_id, claim_id, claim_json FROM settlements WHERE {}",
        clauses.join(" OR ")
    );
    (sql, keys.iter().flat_map(|(h, c)| [Val::Str(h), Val::Str(c)]).collect())
}

type StoredClaim = ((String, String), (i64, String));

fn claim_row(r: &dyn Cols) -> Result<StoredClaim> {
    Ok((
        (r.text("hospital_id")?, r.text("claim_id")?),
        (r.int("seq")?, r.text("claim_json")?),
    ))
}

/// A member from the folded columns of [`load_members`].
fn parse_member(id: &str, categories: &str, enrollments: &str) -> Result<Member> {
    let mut member = Member::new(MemberId::parse(id).map_err(|e| corrupt("members", e))?);
    for item in categories.split(',').filter(|i| !i.is_empty()) {
        let (date, category) = item
            .split_once('=')
            .ok_or_else(|| corrupt("member_categories", format!("{item:?}")))?;
        let date = date_col(date, "member_categories")?;
        let category = Category::from_str(category).map_err(|e| corrupt("member_categories", e))?;
        member.categories.set(date, category);
    }
    for item in period_amounts(enrollments, "enrollments") {
        let (key, premium) = item?;
        let premium = Money::from_fen(premium).map_err(|e| corrupt("enrollments", e))?;
        member.enrollments.insert(key, premium);
    }
    Ok(member)
}

/// The items of a list `code@start=fen,...` of product periods and amounts in fen (as the member
/// statements aggregate them), read from `table`.
fn period_amounts<'a>(list: &'a str, table: &'static str) -> impl Iterator<Item = Result<(PeriodKey, i64)>> + 'a {
    list.split(',').filter(|i| !i.is_empty()).map(move |item| {
        let bad = || corrupt(table, format!("{item:?}"));
        let (period, fen) = item.split_once('=').ok_or_else(bad)?;
        let (code, start) = period.split_once('@').ok_or_else(bad)?;
        let fen = fen.parse::<i64>().map_err(|_| bad())?;
        Ok((period_key(code, start, table)?, fen))
    })
}

pub(crate) fn period_key(code: &str, start: &str, table: &'static str) -> Result<PeriodKey> {
    Ok(PeriodKey {
        product: ProductCode::parse(code).map_err(|e| corrupt(table, e))?,
        start: date_col(start, table)?,
    })
}

/// A member and their accumulators in every period they are enrolled in, read on `db` in one
/// statement, so from one snapshot on either backend and in one round trip on PostgreSQL (a
/// transaction of three reads was five); `None` for an unknown member.
async fn member_snapshot_on(
    db: &mut impl Db,
    backend: Backend,
    member_id: &MemberId,
) -> Result<Option<(Member, Accumulators)>> {
    let (sql, values) = member_snapshot_statement(backend, member_id);
    let mut rows = db
        .rows(&sql, values, |r| {
            let member = member_row(r)?;
            let usage = r.opt_text("usage")?.map(|json| usage_from_json(&json)).transpose()?;
            let totals = period_amounts(&r.text("period_paid")?, "product_totals")
                .map(|item| item.map(|(key, paid)| (key, from_fen(paid))))
                .collect::<Result<Vec<_>>>()?;
            Ok((member, usage, totals))
        })
        .await?;
    let Some((member, usage, totals)) = rows.pop() else {
        return Ok(None);
    };
    let keys: Vec<PeriodKey> = member.enrollments.keys().cloned().collect();
    let key_refs: Vec<&PeriodKey> = keys.iter().collect();
    let stored = usage.map(|entries| (member_id.clone(), entries)).into_iter().collect();
    let mut once = cache::WriterCache::new(false);
    once.keep_usage(&[member_id], stored, &key_refs, totals);
    let acc = once.book(&[member_id], &keys);
    Ok(Some((member, acc)))
}

/// The statement of [`member_snapshot_on`]: [`members_statement`]'s columns for one member, with
/// their usage (`usage`, NULL if none is stored) and what every member together has been paid in
/// each product period they are enrolled in (`period_paid`, as `code@start=fen,...`): the sum of
/// the period's shards, as the view `product_totals` has it, but summed for those periods alone
/// (SQLite built the whole view for every preview).
fn member_snapshot_statement<'a>(backend: Backend, member_id: &'a MemberId) -> Statement<'a> {
    let agg = backend.string_agg();
    let (condition, values) = one_of(backend, "m.member_id", std::iter::once(member_id.as_str()));
    let sql = format!(
        "SELECT {}, (SELECT u.usage FROM member_usage u WHERE u.member_id = m.member_id) AS usage, \
         COALESCE((SELECT {agg}(p.paid, ',') FROM \
                   (SELECT e.product_code || '@' || e.period_start || '=' || CAST(SUM(t.paid_fen) AS TEXT) AS paid \
                    FROM enrollments e JOIN product_total_shards t \
                    ON t.product_code = e.product_code AND t.period_start = e.period_start \
                    WHERE e.member_id = m.member_id GROUP BY e.product_code, e.period_start) p), '') AS period_paid \
         FROM members m WHERE {condition}",
        member_columns(backend)
    );
    (sql, values)
}

/// Every stored usage of `members`, in every product period: one `member_usage` row per member
/// (see [`usage_json`]). Members without any are absent.
async fn load_usage(db: &mut impl Db, backend: Backend, members: &[&MemberId]) -> Result<cache::StoredUsage> {
    let mut found = Vec::with_capacity(members.len());
    for chunk in statement_chunks(members, db.rows_per_statement()) {
        let (sql, values) = usage_statement(backend, chunk);
        found.extend(db.rows(&sql, values, usage_row).await?);
    }
    Ok(found)
}

fn usage_statement<'a>(backend: Backend, members: &[&'a MemberId]) -> Statement<'a> {
    let (condition, values) = one_of(backend, "member_id", members.iter().map(|m| m.as_str()));
    (
        format!("SELECT member_id, usage FROM member_usage WHERE {condition}"),
        values,
    )
}

/// The condition that `column` is one of `items`, and its values: `IN (?, ?, ...)` on SQLite; on
/// PostgreSQL, for more than one item, `= ANY` of one array: one literal to parse and one statement
/// text for any number of items. One item keeps `IN ($1)`: PostgreSQL's generic plan for `= ANY`
/// of a parameter expects ten rows (a bitmap scan, estimated at 80 against 8.3 for one row), so
/// for the one member that `Preview` and `GetMember` read it would never settle on the generic
/// plan and would plan every execution anew.
fn one_of<'a>(backend: Backend, column: &str, items: impl ExactSizeIterator<Item = &'a str>) -> (String, Vec<Val<'a>>) {
    if backend == Backend::Postgres && items.len() > 1 {
        return (
            format!("{column} = ANY(CAST($1 AS TEXT[]))"),
            vec![Val::Array(items.map(Val::Str).collect())],
        );
    }
    let condition = format!("{column} IN ({})", Params::new(backend).list(items.len()));
    (condition, items.map(Val::Str).collect())
}

type MemberUsage = (MemberId, Vec<(PeriodKey, BenefitCode, BenefitUsage)>);

fn usage_row(r: &dyn Cols) -> Result<MemberUsage> {
    let member = MemberId::parse(&r.text("member_id")?).map_err(|e| corrupt("member_usage", e))?;
    Ok((member, usage_from_json(&r.text("usage")?)?))
}

/// Each period's total paid by all members; periods without a stored total are absent.
async fn load_period_paid(
    db: &mut impl Db,
    backend: Backend,
    keys: &[&PeriodKey],
) -> Result<Vec<(PeriodKey, Decimal)>> {
    let mut found = Vec::with_capacity(keys.len());
    for chunk in statement_chunks(keys, db.rows_per_statement()) {
        let (sql, values) = period_paid_statement(backend, chunk);
        found.extend(db.rows(&sql, values, period_paid_row).await?);
    }
    Ok(found)
}

fn period_paid_statement<'a>(backend: Backend, keys: &[&'a PeriodKey]) -> Statement<'a> {
    product_totals_statement(backend, "product_code, period_start, paid_fen", keys)
}

/// `SELECT columns FROM product_totals` of the product periods `keys`.
pub(super) fn product_totals_statement<'a>(backend: Backend, columns: &str, keys: &[&'a PeriodKey]) -> Statement<'a> {
    let mut params = Params::new(backend);
    let clauses: Vec<String> = (0..keys.len())
        .map(|_| {
            format!(
                "(product_code = {} AND period_start = {})",
                params.next(),
                params.next()
            )
        })
        .collect();
    let sql = format!("SELECT {columns} FROM product_totals WHERE {}", clauses.join(" OR "));
    let values = keys
        .iter()
        .flat_map(|key| [Val::Str(key.product.as_str()), Val::Text(format_date(key.start))])
        .collect();
    (sql, values)
}

fn period_paid_row(r: &dyn Cols) -> Result<(PeriodKey, Decimal)> {
    let key = period_key(&r.text("product_code")?, &r.text("period_start")?, "product_totals")?;
    Ok((key, from_fen(r.int("paid_fen")?)))
}

/// One usage as stored in `member_usage.usage`: [product, period start, benefit, deductible used,
/// band position, paid (fen)].
type UsageJson<'a> = (
    std::borrow::Cow<'a, str>,
    std::borrow::Cow<'a, str>,
    std::borrow::Cow<'a, str>,
    i64,
    i64,
    i64,
);

/// A member's whole usage as the `member_usage.usage` column: a JSON array in key order, without
/// the usages that came back to zero.
pub(crate) fn usage_json<'a>(
    usage: impl IntoIterator<Item = (&'a PeriodKey, &'a BenefitCode, &'a BenefitUsage)>,
) -> Result<String> {
    let t = "member_usage";
    let mut rows = usage
        .into_iter()
        .filter(|(_, _, u)| !u.is_zero())
        .map(|(key, benefit, u)| {
            Ok::<(&PeriodKey, &BenefitCode, UsageJson<'_>), StoreError>((
                key,
                benefit,
                (
                    key.product.as_str().into(),
                    format_date(key.start).into(),
                    benefit.as_str().into(),
                    fen(u.deductible_used, t)?,
                    fen(u.band_position, t)?,
                    fen(u.paid, t)?,
                ),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let rows: Vec<UsageJson<'_>> = rows.into_iter().map(|(_, _, r)| r).collect();
    serde_json::to_string(&rows).map_err(|e| corrupt(t, e.to_string()))
}

/// Reads the `member_usage.usage` column back.
pub(crate) fn usage_from_json(text: &str) -> Result<Vec<(PeriodKey, BenefitCode, BenefitUsage)>> {
    let t = "member_usage";
    let rows: Vec<UsageJson<'_>> = serde_json::from_str(text).map_err(|e| corrupt(t, format!("usage: {e}")))?;
    rows.into_iter()
        .map(|(code, start, benefit, deductible_used, band_position, paid)| {
            Ok((
                period_key(&code, &start, t)?,
                BenefitCode::parse(&benefit).map_err(|e| corrupt(t, e))?,
                BenefitUsage {
                    deductible_used: from_fen(deductible_used),
                    band_position: from_fen(band_position),
                    paid: from_fen(paid),
                },
            ))
        })
        .collect()
}

/// A layer as stored in `settlements.layers`: [product, period start, period end, terms version,
/// layer order, benefit or null, eligible, deductible applied, payout (fen), reasons]. Enough to
/// rebuild the settlement and its accumulator changes.
type LayerJson<'a> = (
    std::borrow::Cow<'a, str>,
    std::borrow::Cow<'a, str>,
    std::borrow::Cow<'a, str>,
    i64,
    i64,
    Option<std::borrow::Cow<'a, str>>,
    i64,
    i64,
    i64,
    std::borrow::Cow<'a, str>,
);

/// The `layers` column of a settlement: a JSON array with one array per layer, in layer order.
pub(crate) fn layers_json(layers: &[LayerResult]) -> Result<String> {
    let t = "settlements";
    let rows = layers
        .iter()
        .map(|l| {
            Ok::<LayerJson<'_>, StoreError>((
                l.product.as_str().into(),
                format_date(l.period_start).into(),
                format_date(l.period_end).into(),
                i64::from(l.terms_version),
                l.layer_order,
                l.benefit.as_ref().map(|b| b.as_str().into()),
                fen(l.eligible, t)?,
                fen(l.deductible_applied, t)?,
                fen(l.payout, t)?,
                reasons_text(&l.reasons).into(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    serde_json::to_string(&rows).map_err(|e| corrupt(t, e.to_string()))
}

/// Reads the `layers` column back.
pub(crate) fn layers_from_json(text: &str) -> Result<Vec<LayerResult>> {
    let t = "settlements";
    let rows: Vec<LayerJson<'_>> = serde_json::from_str(text).map_err(|e| corrupt(t, format!("layers: {e}")))?;
    rows.into_iter()
        .map(
            |(product, start, end, version, layer_order, benefit, eligible, deductible, payout, reasons)| {
                Ok(LayerResult {
                    product: ProductCode::parse(&product).map_err(|e| corrupt(t, e))?,
                    period_start: date_col(&start, t)?,
                    period_end: date_col(&end, t)?,
                    terms_version: u32::try_from(version).map_err(|e| corrupt(t, e.to_string()))?,
                    layer_order,
                    benefit: benefit
                        .filter(|b| !b.is_empty())
                        .map(|b| BenefitCode::parse(&b).map_err(|e| corrupt(t, e)))
                        .transpose()?,
                    eligible: from_fen(eligible),
                    deductible_applied: from_fen(deductible),
                    payout: from_fen(payout),
                    reasons: parse_reasons(&reasons, t)?,
                })
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{one_of, row_statements, statement_chunks, Backend, Column, Statement, Val};
    use proptest::prelude::*;

    /// Rows of (text, number) for [`row_statements`].
    fn pairs(n: usize) -> Vec<Val<'static>> {
        (0..n)
            .flat_map(|i| [Val::Text(format!("m\"{i}")), Val::Int(i as i64)])
            .collect()
    }

    #[test]
    fn one_item_is_an_in_list_and_more_are_an_array_on_postgresql() {
        let ids = ["BM1", "BM2", "BM3"];
        let pg = |n: usize| one_of(Backend::Postgres, "m.member_id", ids[..n].iter().copied());
        assert_eq!(pg(1), ("m.member_id IN ($1)".to_owned(), vec![Val::Str("BM1")]));
        assert_eq!(
            pg(3),
            (
                "m.member_id = ANY(CAST($1 AS TEXT[]))".to_owned(),
                vec![Val::Array(ids.iter().map(|id| Val::Str(id)).collect())]
            )
        );
        assert_eq!(
            one_of(Backend::Sqlite, "member_id", ids.iter().copied()),
            (
                "member_id IN (?, ?, ?)".to_owned(),
                ids.iter().map(|id| Val::Str(id)).collect()
            )
        );
    }

    /// [`row_statements`] of `rows` (text, number) rows into `t`, two rows a statement at most.
    fn statements_of(backend: Backend, rows: usize) -> Vec<Statement<'static>> {
        let columns = [Column::Text, Column::Int];
        row_statements(
            backend,
            2,
            "INSERT INTO t (a, b)",
            &columns,
            " RETURNING a",
            pairs(rows),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn postgresql_writes_any_number_of_rows_in_one_statement_of_arrays() {
        let statements = statements_of(Backend::Postgres, 3);
        let [(sql, values)] = statements.as_slice() else {
            panic!("one statement expected: {statements:?}");
        };
        assert_eq!(
            sql,
            "INSERT INTO t (a, b) SELECT * FROM unnest(CAST($1 AS TEXT[]), CAST($2 AS BIGINT[])) RETURNING a"
        );
        assert_eq!(
            values,
            &[
                Val::Array((0..3).map(|i| Val::Text(format!("m\"{i}"))).collect()),
                Val::Array((0..3).map(Val::Int).collect())
            ]
        );
        // The same text for any number of rows: it stays prepared.
        let more = statements_of(Backend::Postgres, 7);
        assert_eq!(more.len(), 1);
        assert_eq!(&more[0].0, sql);
    }

    #[test]
    fn sqlite_writes_rows_as_values_in_chunks() {
        let statements = statements_of(Backend::Sqlite, 3);
        let sqls: Vec<&str> = statements.iter().map(|(sql, _)| sql.as_str()).collect();
        assert_eq!(
            sqls,
            [
                "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) RETURNING a",
                "INSERT INTO t (a, b) VALUES (?, ?) RETURNING a"
            ]
        );
        let values: Vec<&Val<'_>> = statements.iter().flat_map(|(_, v)| v).collect();
        assert_eq!(values, pairs(3).iter().collect::<Vec<_>>());
    }

    #[test]
    fn no_rows_make_no_statement_and_a_short_row_is_refused() {
        let columns = [Column::Text, Column::Int];
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let none = row_statements(backend, 2, "INSERT INTO t (a, b)", &columns, "", Vec::new());
            assert!(none.is_ok_and(|s| s.is_empty()));
            let mut short = pairs(2);
            short.pop();
            assert!(row_statements(backend, 2, "INSERT INTO t (a, b)", &columns, "", short).is_err());
        }
    }

    proptest! {
        /// The chunks cover the items in order; each is `max` long or a power of two shorter than
        /// `max`, and after the full ones they only shrink.
        #[test]
        fn statement_chunks_cover_in_order_with_few_sizes(n in 0usize..600, max in 1usize..200) {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&items, max).collect();
            let joined: Vec<usize> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            prop_assert_eq!(&joined, &items);
            let mut previous = usize::MAX;
            for c in &chunks {
                prop_assert!(!c.is_empty());
                prop_assert!(c.len() == max || (c.len() < max && c.len().is_power_of_two()));
                prop_assert!(c.len() <= previous);
                previous = c.len();
            }
        }
    }
}

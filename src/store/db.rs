//! The two ways the store talks to a database, behind one small interface, so that every statement
//! is written once:
//!
//! - sqlx's `Any` connection: the pool (the API's reads, both backends, but those below) and
//!   PostgreSQL's writers.
//! - [`Lite`], a rusqlite connection for SQLite's single writer. The ledger runs that writer on its
//!   own thread, so a whole batch costs one hand-off. sqlx's SQLite driver hands every statement (and
//!   every row) to a worker thread and back, which made thread wake-ups the largest cost of a
//!   settlement (docs/benchmarks.md). Statements are prepared once and kept.
//! - [`LiteReaders`], rusqlite connections for SQLite's short reads (a member and their usage, the
//!   loss-ratio figures, a settlement by its key, the terms), run on the calling thread, for the
//!   same reason.
//!
//! Statements bind [`Val`]s and results are read through [`Cols`], the same for either driver.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, Executor, Row};

use super::{Result, StoreError};

/// A value bound to a statement parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val<'a> {
    Int(i64),
    Str(&'a str),
    Text(String),
    Null,
    /// A PostgreSQL array of these values, none of them an array (`unnest` takes it apart):
    /// written into the message as one literal ([`literal_into`]), or bound as its text.
    Array(Vec<Val<'a>>),
}

impl From<Option<String>> for Val<'_> {
    fn from(v: Option<String>) -> Self {
        v.map_or(Val::Null, Val::Text)
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Val::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Val::Str(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Array(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "SQLite has no arrays: only PostgreSQL's statements take them".into(),
                ))
            }
        })
    }
}

/// A result row, read by column name.
pub(crate) trait Cols {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<i64>;
}

impl Cols for sqlx::any::AnyRow {
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        Ok(self.try_get(column)?)
    }
}

impl Cols for rusqlite::Row<'_> {
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        Ok(self.get(column)?)
    }
}

/// Runs statements with bound values; implemented by both drivers.
pub(crate) trait Db {
    /// Executes a statement that returns no rows; the number of rows it changed.
    async fn run(&mut self, sql: &str, values: Vec<Val<'_>>) -> Result<u64>;

    /// Runs a query and maps every row.
    async fn rows<T>(
        &mut self,
        sql: &str,
        values: Vec<Val<'_>>,
        map: impl FnMut(&dyn Cols) -> Result<T>,
    ) -> Result<Vec<T>>;

    /// Rows (or keys) per multi-row statement at most.
    fn rows_per_statement(&self) -> usize;

    /// Runs `statements` in order and hands every row they return to `row`, with the index of the
    /// statement that returned it. By default one statement after another; a PostgreSQL writer's
    /// [`Conn`] sends them all in one round trip (`pg_script`). The first failure stops the rest,
    /// and the caller's transaction rolls back.
    async fn script(
        &mut self,
        statements: Vec<Statement<'_>>,
        mut row: impl FnMut(usize, &dyn Cols) -> Result<()>,
    ) -> Result<()> {
        for (i, (sql, values)) in statements.into_iter().enumerate() {
            self.rows(&sql, values, |r| row(i, r)).await?;
        }
        Ok(())
    }
}

/// A statement and the values of its parameters.
pub(crate) type Statement<'a> = (String, Vec<Val<'a>>);

/// Writes `value` as a PostgreSQL literal, for the simple query protocol, which binds nothing. A
/// text becomes an escape string (`E'...'`, quotes doubled), or, when it holds a backslash, a
/// dollar-quoted string (`$q$...$q$`, with a tag the text does not hold), which needs no escapes:
/// the writers' array literals escape every `"` of the JSON in them with one, and doubling each
/// again cost claimsd and PostgreSQL's scanner a step per character. Both read the same whatever
/// `standard_conforming_strings` says; a text with a NUL character, which PostgreSQL cannot store,
/// is refused.
pub(crate) fn literal_into(out: &mut String, value: &Val<'_>) -> Result<()> {
    match value {
        Val::Int(v) => {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(out, "{v}");
        }
        Val::Null => out.push_str("NULL"),
        Val::Str(text) => quote_into(out, text)?,
        Val::Text(text) => quote_into(out, text)?,
        Val::Array(items) => {
            // Dollar-quoted: the escapes of its texts' `"` (a claim's JSON holds many) need no
            // doubling.
            let texts = || {
                items.iter().filter_map(|v| match v {
                    Val::Str(t) => Some(*t),
                    Val::Text(t) => Some(t.as_str()),
                    _ => None,
                })
            };
            if texts().any(|t| memchr::memchr(0, t.as_bytes()).is_some()) {
                return Err(nul());
            }
            if items.iter().any(|v| matches!(v, Val::Array(_))) {
                return Err(StoreError::Statement("an array holds an array".into()));
            }
            // The literal ends in `}`, so no end of a text can make the tag with it; and escaping
            // (a `\` before `"` and `\`) cannot make one that the texts do not hold.
            let tag = dollar_tag(|tag| texts().any(|t| memchr::memmem::find(t.as_bytes(), tag.as_bytes()).is_some()));
            out.push_str(&tag);
            array_into(out, items);
            out.push_str(&tag);
        }
    }
    Ok(())
}

/// The literal of an array of `items`, `{1,NULL,"a\"b"}`: numbers as they are, `NULL` bare, and
/// every text quoted, `"` and `\` escaped, so that none reads as `NULL` or splits. (An array
/// among the items, which nothing makes, is written as the text of its literal.)
pub(crate) fn array_into(out: &mut String, items: &[Val<'_>]) {
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Val::Int(v) => {
                use std::fmt::Write;
                // Writing to a String cannot fail.
                let _ = write!(out, "{v}");
            }
            Val::Null => out.push_str("NULL"),
            Val::Str(text) => array_text_into(out, text),
            Val::Text(text) => array_text_into(out, text),
            Val::Array(inner) => {
                let mut text = String::new();
                array_into(&mut text, inner);
                array_text_into(out, &text);
            }
        }
    }
    out.push('}');
}

/// One quoted text of an array literal, the text between the characters to escape copied in one
/// piece each.
fn array_text_into(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    let mut rest = text;
    while let Some(at) = memchr::memchr2(b'"', b'\\', rest.as_bytes()) {
        // `at` is the index of an ASCII byte: a character boundary.
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        out.push('\\');
        out.push_str(from.get(..1).unwrap_or(""));
        rest = from.get(1..).unwrap_or("");
    }
    out.push_str(rest);
    out.push('"');
}

/// Copies the text between the characters to double in one piece each: a claim's JSON (most of
/// what a writer sends) holds few or none, and copying a character at a time was 8% of claimsd's
/// samples on four PostgreSQL streams (docs/benchmarks.md).
fn quote_into(out: &mut String, text: &str) -> Result<()> {
    if memchr::memchr(b'\\', text.as_bytes()).is_some() {
        return dollar_quote_into(out, text);
    }
    out.reserve(text.len() + 3);
    out.push_str("E'");
    let mut rest = text;
    while let Some(at) = memchr::memchr2(b'\'', 0, rest.as_bytes()) {
        // `at` is the index of an ASCII byte: a character boundary.
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        match from.as_bytes().first() {
            Some(b'\'') => out.push_str("''"),
            _ => return Err(nul()),
        }
        rest = from.get(1..).unwrap_or("");
    }
    out.push_str(rest);
    out.push('\'');
    Ok(())
}

/// `$q$text$q$`.
fn dollar_quote_into(out: &mut String, text: &str) -> Result<()> {
    if memchr::memchr(0, text.as_bytes()).is_some() {
        return Err(nul());
    }
    let tag = dollar_tag(|tag| !closes(text.as_bytes(), tag.as_bytes()));
    out.reserve(text.len() + 2 * tag.len());
    out.push_str(&tag);
    out.push_str(text);
    out.push_str(&tag);
    Ok(())
}

/// Whether `tag` closes a dollar-quoted `text` where the text ends: the text holds no `tag`, and
/// no end of it makes one with the tag's start (`...$q` then `$q$` reads as `$q$` and `q$`).
fn closes(text: &[u8], tag: &[u8]) -> bool {
    if memchr::memmem::find(text, tag).is_some() {
        return false;
    }
    let tail = text
        .get(text.len().saturating_sub(tag.len().saturating_sub(1))..)
        .unwrap_or(text);
    let mut joined = tail.to_vec();
    joined.extend_from_slice(tag);
    memchr::memmem::find(&joined, tag) == Some(tail.len())
}

/// The tag of a dollar-quoted string: `$q$`, else `$q1$`, `$q2$`, ..., the first that the quoted
/// text does not hold (`held`).
fn dollar_tag(held: impl Fn(&str) -> bool) -> String {
    let mut tag = String::from("$q$");
    let mut n = 0u32;
    while held(&tag) {
        n += 1;
        tag = format!("$q{n}$");
    }
    tag
}

fn nul() -> StoreError {
    StoreError::Statement("a text value holds a NUL character".into())
}

fn any_query<'q>(sql: &'q str, values: Vec<Val<'q>>) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut query = sqlx::query(sql);
    for v in values {
        query = match v {
            Val::Int(i) => query.bind(i),
            Val::Str(s) => query.bind(s),
            Val::Text(s) => query.bind(s),
            Val::Null => query.bind(Option::<String>::None),
            Val::Array(items) => {
                let mut text = String::new();
                array_into(&mut text, &items);
                query.bind(text)
            }
        };
    }
    query
}

impl Db for AnyConnection {
    async fn run(&mut self, sql: &str, values: Vec<Val<'_>>) -> Result<u64> {
        let done = if values.is_empty() {
            self.execute(sql).await?
        } else {
            any_query(sql, values).execute(&mut *self).await?
        };
        Ok(done.rows_affected())
    }

    async fn rows<T>(
        &mut self,
        sql: &str,
        values: Vec<Val<'_>>,
        mut map: impl FnMut(&dyn Cols) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = any_query(sql, values).fetch_all(&mut *self).await?;
        rows.iter().map(|r| map(r)).collect()
    }

    fn rows_per_statement(&self) -> usize {
        super::ROWS_PER_STATEMENT_MAX
    }
}

/// SQLite's writer connection (rusqlite): used only from the writer's own thread, where blocking
/// is what it is for.
pub(crate) struct Lite {
    conn: rusqlite::Connection,
    /// Makes this connection's commits durable: they return once their WAL frames are written,
    /// before they are synced (see [`Lite::open`]).
    wal: WalSync,
    /// Dropped with the writer, which stops its checkpointer.
    _checkpointer: std::sync::mpsc::Sender<()>,
    /// Set by the checkpointer when the WAL is long and has been copied: see
    /// [`Lite::before_transaction`].
    restart_wanted: Arc<AtomicBool>,
}

/// Prepared statements a writer keeps: every statement it runs, with room to spare.
const STATEMENT_CACHE: usize = 128;

/// Rows per statement of the SQLite writer: beyond a few dozen, a longer statement saves nothing
/// more per row, and with power-of-two tails (`statement_chunks`) every statement has at most six
/// texts, all of which stay prepared.
const LITE_ROWS_PER_STATEMENT: usize = 32;

impl Lite {
    /// Opens the database file in WAL mode, with waits of up to 10 s for another process's write
    /// lock and foreign keys checked.
    ///
    /// Unlike every other connection of the store, a commit returns once its WAL frames are
    /// written, before they are synced (`synchronous = OFF`): the ledger syncs the WAL through
    /// [`Lite::wal`] on a thread of its own, while this connection goes on with the next batch,
    /// and answers a batch only once a sync that began after its commit returned. Waiting for the
    /// sync inside `COMMIT` left the writer idle a fifth of the time (docs/benchmarks.md). Every
    /// checkpoint still syncs the WAL before it copies frames into the database file, and the
    /// database file before the WAL may start over: the checkpointer's connection is `FULL`, and
    /// so is this one whenever it checkpoints itself ([`Lite::before_transaction`], and on close).
    pub(crate) fn open(path: &Path, wal_preallocate: WalPreallocate) -> Result<Lite> {
        // Through the shim of crates/walbuf: a commit's WAL frames reach the file in a few writes
        // instead of two per page (a fifth of the writer's time, docs/benchmarks.md), before the
        // commit's sync as without it.
        claims_walbuf::register()?;
        let conn =
            rusqlite::Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), claims_walbuf::NAME)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA foreign_keys = ON;")?;
        // A multi-row statement that may fail halfway keeps the pages it changes in a statement
        // journal, to take itself back alone; in a temporary file by default, whose writes were
        // 10% of the writer's time (docs/benchmarks.md). In memory it costs a copy. Nothing
        // durable depends on it: a failed batch rolls back whole.
        conn.execute_batch("PRAGMA temp_store = MEMORY;")?;
        // SQLite's default page cache (2 MiB) is kept: 16 and 64 MiB measured 3% and 12% slower at
        // first, and 16 MiB no faster once commits wrote their WAL frames in a few writes
        // (docs/benchmarks.md).
        // Checkpoints copy the WAL back into the database file and sync it: by default the
        // committing connection runs one every 1,000 pages, inside the commit a caller waits for.
        // The writer leaves them to a thread of its own (`checkpointer`).
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let restart_wanted = Arc::new(AtomicBool::new(false));
        let checkpointer = checkpointer(path, restart_wanted.clone())?;
        // The WAL file exists once the connection is in WAL mode. Opened now, the sync's
        // descriptor is this connection's WAL file, whatever happens to the path later.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        preallocate_wal(&conn, &wal, wal_preallocate)?;
        let wal = WalSync::open(wal).map_err(StoreError::Wal)?;
        Ok(Lite {
            conn,
            wal,
            _checkpointer: checkpointer,
            restart_wanted,
        })
    }

    /// Runs before each write transaction. SQLite starts the WAL over from its beginning only when
    /// a write transaction begins with every frame already copied into the database file; under
    /// continuous writes the checkpointer never finishes between a commit and the next `BEGIN`,
    /// so the WAL would only grow, and every commit would append to fresh file pages that the
    /// kernel first fills with zeros (18% of the writer's time, measured). Once the checkpointer
    /// has copied a long WAL, the writer copies the few frames committed since, here, between
    /// two transactions: its next transaction then writes from the WAL's start, over pages the
    /// kernel already holds.
    ///
    /// The copy syncs the WAL before it, and the database file after it (this connection is
    /// `FULL` for it): the WAL then starting over cannot lose a commit.
    pub(crate) fn before_transaction(&mut self) {
        if self.restart_wanted.swap(false, Ordering::Relaxed) {
            let started = std::time::Instant::now();
            match self.checkpoint_synced() {
                Ok(copied) => tracing::debug!(
                    copied,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "WAL copied before a transaction"
                ),
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint before a transaction failed"),
            }
        }
    }

    /// A `PASSIVE` checkpoint with `synchronous = FULL`, which syncs the WAL before copying it and
    /// the database file before letting the WAL start over; the connection is `OFF` again after
    /// it, whatever happened. Returns the frames copied.
    fn checkpoint_synced(&self) -> rusqlite::Result<i64> {
        self.conn.execute_batch("PRAGMA synchronous = FULL;")?;
        let copied = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(2));
        let off = self.conn.execute_batch("PRAGMA synchronous = OFF;");
        let copied = copied?;
        off?;
        Ok(copied)
    }

    /// What makes this connection's commits durable.
    pub(crate) fn wal(&self) -> &WalSync {
        &self.wal
    }
}

impl Drop for Lite {
    /// The last connection to close checkpoints the WAL and deletes it; with this connection's own
    /// setting (`OFF`) that checkpoint would not sync the database file first.
    fn drop(&mut self) {
        if let Err(e) = self.conn.execute_batch("PRAGMA synchronous = FULL;") {
            tracing::error!(error = %e, "could not make the writer's closing checkpoint sync");
        }
    }
}

/// How far the SQLite writer fills its WAL file with zeros as it opens: commits then write over
/// blocks the file already has instead of appending, and a commit's `fdatasync` has no new blocks
/// to allocate and no file size to write (about a tenth of the writer's time at one caller, and
/// 14% more calls a second there: docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalPreallocate {
    /// As far as the WAL reaches before it starts over from its beginning
    /// ([`WAL_FRAMES_RESTART`] frames of the database's pages): about 258 MiB with 4 KiB pages.
    #[default]
    UntilRestart,
    /// This many bytes (0: none).
    Bytes(u64),
}

/// The bytes a WAL takes for `frames` frames of `page_size`-byte pages: its 32-byte header, then
/// per frame a 24-byte header and the page.
fn wal_bytes(frames: i64, page_size: i64) -> u64 {
    u64::try_from(32 + frames.saturating_mul(page_size.saturating_add(24))).unwrap_or(0)
}

/// Extends the writer's WAL file at `wal` with zeros to `size`'s length and syncs them, holding
/// the database's write lock meanwhile (`BEGIN IMMEDIATE`), so that no connection, of this process
/// or another, writes frames into it at the same time. Only bytes past the file's end are written:
/// whatever the file holds (frames not yet copied into the database, which a recovery after a
/// crash reads) is left as it is. SQLite reads a WAL only as far as its frames carry the salt of
/// its header and a checksum chained from the frame before, which zeros never do, so they are
/// never read as frames, here or by a recovery.
fn preallocate_wal(conn: &rusqlite::Connection, wal: &Path, size: WalPreallocate) -> Result<()> {
    let bytes = match size {
        WalPreallocate::Bytes(bytes) => bytes,
        WalPreallocate::UntilRestart => {
            let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            wal_bytes(WAL_FRAMES_RESTART, page_size)
        }
    };
    if bytes == 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let written = extend_with_zeros(wal, bytes);
    let ended = conn.execute_batch("ROLLBACK");
    let written = written.map_err(StoreError::Wal)?;
    ended?;
    if written > 0 {
        tracing::debug!(
            written,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "WAL filled with zeros ahead of its frames"
        );
    }
    Ok(())
}

/// Writes zeros from the end of the file at `path` up to `size` bytes, then syncs them. Returns the
/// bytes written (none when the file is that long already).
fn extend_with_zeros(path: &Path, size: u64) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    const CHUNK: usize = 1 << 20;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let start = file.metadata()?.len();
    if start >= size {
        return Ok(0);
    }
    file.seek(SeekFrom::Start(start))?;
    let zeros = vec![0u8; CHUNK];
    let mut left = size - start;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_data()?;
    Ok(size - start)
}

/// Syncs a writer's WAL file: every commit that returned before [`WalSync::sync`] began is durable
/// once it returns `Ok`. Through a descriptor of its own, opened with the writer's connection: a
/// sync makes every write to the file durable, whichever descriptor wrote it. SQLite keeps the WAL
/// file (the same inode) while any connection to the database is open, and the writer's stays open
/// until every sync of its commits is done; should the path name another file all the same, the
/// commits are in a file no recovery reads, and the sync fails.
#[derive(Clone)]
pub struct WalSync {
    inner: Arc<WalFile>,
}

struct WalFile {
    path: PathBuf,
    file: std::fs::File,
}

impl WalSync {
    /// Opens the WAL file at `path` for syncing.
    pub(crate) fn open(path: PathBuf) -> std::io::Result<WalSync> {
        let file = std::fs::File::open(&path)?;
        Ok(WalSync {
            inner: Arc::new(WalFile { path, file }),
        })
    }

    /// Whether both sync the same file through the same descriptor (one writer's connection).
    pub fn same(&self, other: &WalSync) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Makes every commit returned so far durable (`fdatasync` of the WAL file). An error means
    /// some of them may not be: the caller must not acknowledge them, nor anything after them.
    pub fn sync(&self) -> std::io::Result<()> {
        let wal = &self.inner;
        wal.file.sync_data()?;
        if !same_file(&wal.file, &wal.path)? {
            return Err(std::io::Error::other(format!(
                "{} names another file than the one the writer wrote to",
                wal.path.display()
            )));
        }
        Ok(())
    }
}

/// Whether `path` still names the file open as `file`.
fn same_file(file: &std::fs::File, path: &Path) -> std::io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (open, named) = (file.metadata()?, std::fs::metadata(path)?);
        Ok(open.dev() == named.dev() && open.ino() == named.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        Ok(true)
    }
}

/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// WAL frames (pages) beyond which the checkpointer asks the writer to let the WAL start over
/// ([`Lite::before_transaction`]): 65,536 pages, 256 MiB. Each start-over costs the writer a copy
/// and a sync of the database file before its next transaction, 7 to 110 ms with 10,000,000
/// settlements stored: at 16,384 pages that came about every 5,000 claims (docs/benchmarks.md).
const WAL_FRAMES_RESTART: i64 = 65_536;

/// Passes the checkpointer makes, at most, after copying a long WAL, before it asks the writer to
/// let the WAL start over.
const CATCH_UP_PASSES: usize = 4;

/// Frames committed during a pass below which the checkpointer stops making further passes.
const WAL_FRAMES_LEFT_FOR_WRITER: i64 = 1_024;

/// WAL frames beyond which the checkpointer makes the writer wait for a checkpoint that lets the
/// WAL start over (`RESTART`), should the writer not have done so: 262,144 pages, 1 GiB.
const WAL_FRAMES_MAX: i64 = 262_144;

/// Starts the thread that checkpoints the writer's database on a connection of its own. A
/// `PASSIVE` checkpoint runs beside the writer without blocking it; once the WAL has been copied
/// entirely, the writer's next transaction starts the WAL over from its beginning. The thread
/// stops, after a last checkpoint, when the returned sender is dropped. A failed checkpoint is
/// only logged: the WAL keeps every commit durable, and the next checkpoint copies it.
fn checkpointer(path: &Path, restart_wanted: Arc<AtomicBool>) -> Result<std::sync::mpsc::Sender<()>> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let checkpoint = move |mode: &str| -> rusqlite::Result<(i64, i64)> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        })
    };
    std::thread::Builder::new()
        .name("claims-checkpoint".into())
        .spawn(move || loop {
            let last = !matches!(
                stopped.recv_timeout(CHECKPOINT_EVERY),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            match checkpoint("PASSIVE") {
                Ok((frames, _)) if frames > WAL_FRAMES_MAX => {
                    if let Err(e) = checkpoint("RESTART") {
                        tracing::warn!(error = %e, "WAL checkpoint (RESTART) failed");
                    }
                }
                Ok((frames, copied)) if frames > WAL_FRAMES_RESTART && copied == frames => {
                    // The writer copies the frames committed since this pass itself, and syncs
                    // the database file, before its next transaction. Further passes, each
                    // copying what arrived during the one before, leave it a few batches' worth
                    // (with 10,000,000 settlements stored, its copies took 300 ms in all over
                    // four runs instead of 460 to 540; docs/benchmarks.md).
                    let mut seen = frames;
                    let mut all_copied = true;
                    for _ in 0..CATCH_UP_PASSES {
                        match checkpoint("PASSIVE") {
                            Ok((frames, copied)) if copied == frames => {
                                let arrived = frames - seen;
                                seen = frames;
                                if arrived <= WAL_FRAMES_LEFT_FOR_WRITER {
                                    break;
                                }
                            }
                            _ => {
                                all_copied = false;
                                break;
                            }
                        }
                    }
                    if all_copied {
                        restart_wanted.store(true, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            }
            if last {
                break;
            }
        })
        .map_err(StoreError::Thread)?;
    Ok(stop)
}

/// Statements on a rusqlite connection (SQLite's writer and readers), each prepared once and kept.
impl Db for rusqlite::Connection {
    async fn run(&mut self, sql: &str, values: Vec<Val<'_>>) -> Result<u64> {
        let mut statement = self.prepare_cached(sql)?;
        let changed = statement.execute(rusqlite::params_from_iter(values.iter()))?;
        Ok(changed as u64)
    }

    async fn rows<T>(
        &mut self,
        sql: &str,
        values: Vec<Val<'_>>,
        mut map: impl FnMut(&dyn Cols) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut statement = self.prepare_cached(sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(values.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(map(row)?);
        }
        Ok(out)
    }

    fn rows_per_statement(&self) -> usize {
        LITE_ROWS_PER_STATEMENT
    }
}

/// Idle reader connections kept at most ([`LiteReaders`]): as many as reads run at once, one on
/// each thread of the async runtime.
const READERS_IDLE_MAX: usize = 16;

/// How long a reader waits for a lock before its read fails (SQLite's busy timeout). Under WAL a
/// read waits only in rare cases (another connection recovering the WAL after a crash), and it
/// waits on a thread of the async runtime ([`LiteReaders`]).
const READER_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// Prepared statements a reader connection keeps.
const READER_STATEMENT_CACHE: usize = 32;

/// SQLite connections for the API's short reads (a member and their usage for `Preview` and
/// `GetMember`, the loss-ratio figures, a settlement by its key, the terms), each read run in one
/// read transaction on the calling thread, a thread of the async runtime; reads that may scan many
/// rows stay on sqlx's pool. sqlx's SQLite driver hands every statement and its rows to a worker
/// thread and back: a `Preview` at 64 callers spent a third of its samples in futex calls, against
/// 13% running statements. Run through `spawn_blocking` instead, reads at 64 callers were 12% to
/// 39% slower than here (docs/benchmarks.md). The statements read a few pages that the writer keeps
/// warm, tens of microseconds; a read that would wait for a lock fails after
/// [`READER_BUSY_TIMEOUT`].
pub(crate) struct LiteReaders {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

impl std::fmt::Debug for LiteReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiteReaders")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LiteReaders {
    pub(crate) fn new(path: PathBuf) -> LiteReaders {
        LiteReaders {
            path,
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Runs `read` in one read transaction: every statement of it reads the same committed state.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&mut rusqlite::Connection) -> Result<T>) -> Result<T> {
        let mut reader = self.begin()?;
        let out = read(&mut reader)?;
        self.end(reader)?;
        Ok(out)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<rusqlite::Connection>> {
        unpoisoned(&self.idle)
    }

    /// An idle connection, or a new one, with a read transaction begun.
    fn begin(&self) -> Result<rusqlite::Connection> {
        let reader = match self.idle().pop() {
            Some(reader) => reader,
            None => open_reader(&self.path)?,
        };
        reader.execute_batch("BEGIN")?;
        Ok(reader)
    }

    /// Ends the reader's transaction and keeps the connection for the next read. A connection
    /// whose transaction does not end is closed instead: kept, it would read that state forever.
    fn end(&self, reader: rusqlite::Connection) -> Result<()> {
        reader.execute_batch("COMMIT")?;
        let mut idle = self.idle();
        if idle.len() < READERS_IDLE_MAX {
            idle.push(reader);
        }
        Ok(())
    }
}

/// PostgreSQL connections of the store's own for its short reads (a member with their usage, the
/// loss-ratio figures, a settlement by its key, the terms), each read a single statement. sqlx's
/// pool pings every connection as it goes back (sqlx-core 0.8.6, `return_to_pool`, not
/// configurable): a round trip after every read, on both sides' CPU, and the connection kept from
/// the next caller meanwhile. These are pinged only when they sat idle for a while (the server may
/// have closed them meanwhile), as the pool's are before they are handed out. A connection goes
/// back only after a read that ran to its end: one whose read failed or was abandoned (the caller
/// went away) is closed.
pub(crate) struct PgReaders {
    options: sqlx::any::AnyConnectOptions,
    idle: std::sync::Mutex<Vec<(AnyConnection, std::time::Instant)>>,
    /// At most this many connections at once.
    permits: tokio::sync::Semaphore,
    /// How long a connection may sit idle and be used without a ping.
    ping_idle_after: Duration,
    /// How long a read waits for a connection.
    acquire_timeout: Duration,
}

impl std::fmt::Debug for PgReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReaders")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// A connection of [`PgReaders`], in use.
struct PgReader<'a> {
    conn: AnyConnection,
    readers: &'a PgReaders,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl PgReaders {
    pub(crate) fn new(
        options: sqlx::any::AnyConnectOptions,
        max: usize,
        ping_idle_after: Duration,
        acquire_timeout: Duration,
    ) -> PgReaders {
        PgReaders {
            options,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(max.max(1)),
            ping_idle_after,
            acquire_timeout,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(AnyConnection, std::time::Instant)>> {
        unpoisoned(&self.idle)
    }

    /// Runs `read` on a connection, kept for the next read once `read` returned `Ok`.
    pub(crate) async fn read<T>(&self, read: impl AsyncFnOnce(&mut AnyConnection) -> Result<T>) -> Result<T> {
        let mut reader = self.acquire().await?;
        let out = read(&mut reader.conn).await?;
        reader.done();
        Ok(out)
    }

    /// A connection: the one used last (an idle one that answers its ping, if it sat idle long),
    /// or a new one. Waits for one of the others to come back when all are in use.
    async fn acquire(&self) -> Result<PgReader<'_>> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))?
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        let conn = loop {
            let Some((mut conn, since)) = self.idle().pop() else {
                use sqlx::ConnectOptions;
                break self.options.connect().await?;
            };
            if since.elapsed() < self.ping_idle_after || sqlx::Connection::ping(&mut conn).await.is_ok() {
                break conn;
            }
        };
        Ok(PgReader {
            conn,
            readers: self,
            _permit: permit,
        })
    }
}

impl PgReader<'_> {
    /// Keeps the connection for the next read, once a read ran to its end on it.
    fn done(self) {
        let PgReader { conn, readers, _permit } = self;
        readers.idle().push((conn, std::time::Instant::now()));
    }
}

/// A lock on a list of idle connections: one a thread panicked holding is still a list of
/// connections, each whole (a push or a pop either happened or not).
fn unpoisoned<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The output of a future that is ready when first polled: a reader's statements (every [`Db`]
/// method of a rusqlite connection) run to the end when called and never wait, so the store's
/// functions, written once for both drivers as `async`, run on a reader from plain blocking code.
pub(crate) fn ready<T>(read: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let mut read = std::pin::pin!(read);
    match read
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => Err(StoreError::Statement("a SQLite reader's statement waited".into())),
    }
}

/// A connection of [`LiteReaders`]: it cannot write (`query_only`).
fn open_reader(path: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(READER_BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA query_only = ON;")?;
    conn.set_prepared_statement_cache_capacity(READER_STATEMENT_CACHE);
    Ok(conn)
}

/// A writer's connection.
pub(crate) enum Conn {
    /// PostgreSQL, with the statements [`Db::script`] prepared on it.
    Any(AnyConnection, Prepared),
    Lite(Lite),
}

/// The statements [`Db::script`] prepared (SQL `PREPARE`) on a PostgreSQL connection, by text.
#[derive(Default)]
pub(crate) struct Prepared {
    names: std::collections::HashMap<String, String>,
    /// Names handed out, each once: a message that failed after its `PREPARE` leaves a statement
    /// behind that was not recorded, and a later name must not meet it.
    issued: u64,
    /// The text of the last message, kept for its capacity: a batch's message runs to over a hundred
    /// kilobytes, and growing a new one each time reallocated it into fresh pages that the kernel
    /// zeroes first (on four streams, growing vectors and strings 11% of claimsd's samples and
    /// page faults 7%; 5% and 2% with the text kept, docs/benchmarks.md).
    text: String,
}

/// PostgreSQL: `statements` in one simple-protocol message, one round trip. Each still runs on its
/// own, with its own snapshot under READ COMMITTED, so a statement after a lock reads what the
/// lock's previous holder committed. A statement with parameters runs as `EXECUTE name(values)`
/// of a statement prepared (`PREPARE`) on this connection the first time its text is sent, in the
/// same message: it is planned like the driver's own prepared statements, not anew each time. The
/// texts are few: the writes take their rows as arrays (`row_statements`), one text for any number
/// of rows, and the other statements have a fixed shape for each of a few chunk sizes
/// (`statement_chunks`). What a failed message prepared is not recorded, and is prepared again
/// under a new name if needed (the ledger replaces a writer whose batch failed anyway).
async fn pg_script(
    conn: &mut AnyConnection,
    prepared: &mut Prepared,
    statements: Vec<Statement<'_>>,
    mut row: impl FnMut(usize, &dyn Cols) -> Result<()>,
) -> Result<()> {
    use futures::TryStreamExt;
    if statements.is_empty() {
        return Ok(());
    }
    let mut text = std::mem::take(&mut prepared.text);
    text.clear();
    // For each statement of the message, the caller's statement whose rows it returns.
    let mut owners: Vec<Option<usize>> = Vec::with_capacity(statements.len());
    let mut new_names = Vec::new();
    for (i, (sql, values)) in statements.iter().enumerate() {
        if !text.is_empty() {
            text.push_str(";\n");
        }
        if values.is_empty() {
            text.push_str(sql);
            owners.push(Some(i));
            continue;
        }
        let name = match prepared.names.get(sql) {
            Some(name) => name.clone(),
            None => {
                let name = format!("claims_{}", prepared.issued);
                prepared.issued += 1;
                text.push_str(&format!("PREPARE {name} AS {sql};\n"));
                owners.push(None);
                new_names.push((sql.clone(), name.clone()));
                name
            }
        };
        text.push_str("EXECUTE ");
        text.push_str(&name);
        text.push('(');
        for (k, value) in values.iter().enumerate() {
            if k > 0 {
                text.push_str(", ");
            }
            literal_into(&mut text, value)?;
        }
        text.push(')');
        owners.push(Some(i));
    }
    let mut done = 0;
    {
        #[allow(deprecated)]
        let mut results = conn.fetch_many(sqlx::raw_sql(&text));
        while let Some(next) = results.try_next().await? {
            match next {
                sqlx::Either::Left(_) => done += 1,
                sqlx::Either::Right(r) => {
                    if let Some(Some(owner)) = owners.get(done) {
                        row(*owner, &r)?;
                    }
                }
            }
        }
    }
    if done != owners.len() {
        return Err(StoreError::Statement(format!(
            "{} statements sent, {done} answered",
            owners.len()
        )));
    }
    prepared.names.extend(new_names);
    prepared.text = text;
    Ok(())
}

impl Db for Conn {
    async fn run(&mut self, sql: &str, values: Vec<Val<'_>>) -> Result<u64> {
        match self {
            Conn::Any(c, _) => c.run(sql, values).await,
            Conn::Lite(c) => c.conn.run(sql, values).await,
        }
    }

    async fn rows<T>(
        &mut self,
        sql: &str,
        values: Vec<Val<'_>>,
        map: impl FnMut(&dyn Cols) -> Result<T>,
    ) -> Result<Vec<T>> {
        match self {
            Conn::Any(c, _) => c.rows(sql, values, map).await,
            Conn::Lite(c) => c.conn.rows(sql, values, map).await,
        }
    }

    fn rows_per_statement(&self) -> usize {
        match self {
            Conn::Any(c, _) => c.rows_per_statement(),
            Conn::Lite(c) => c.conn.rows_per_statement(),
        }
    }

    async fn script(
        &mut self,
        statements: Vec<Statement<'_>>,
        row: impl FnMut(usize, &dyn Cols) -> Result<()>,
    ) -> Result<()> {
        match self {
            Conn::Any(c, prepared) if c.backend_name() == "PostgreSQL" => pg_script(c, prepared, statements, row).await,
            Conn::Any(c, _) => c.script(statements, row).await,
            Conn::Lite(c) => c.conn.script(statements, row).await,
        }
    }
}

/// The file behind a `sqlite:` URL, as sqlx reads it, so the writer opens the file the pool has.
pub(crate) fn sqlite_path(url: &str) -> Result<PathBuf> {
    use std::str::FromStr;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = options.get_filename().to_path_buf();
    // An in-memory database is private to each connection: the writer would not share the pool's.
    if path.as_os_str().is_empty()
        || path.to_string_lossy().starts_with("file:sqlx-in-memory")
        || url.contains("mode=memory")
    {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(lite: &Lite) -> i64 {
        lite.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("PRAGMA synchronous: {e}"))
    }

    /// The writer's commits do not sync (the ledger syncs the WAL after them), and its own
    /// checkpoint copies the WAL and leaves the connection so.
    #[test]
    fn the_writer_commits_unsynced_and_checkpoints_back_to_unsynced() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("claims.db");
        let mut lite = Lite::open(&path, WalPreallocate::Bytes(0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(synchronous(&lite), 0, "OFF");
        lite.conn
            .execute_batch("CREATE TABLE t (v INTEGER); BEGIN IMMEDIATE; INSERT INTO t VALUES (1); COMMIT;")
            .unwrap_or_else(|e| panic!("{e}"));
        lite.wal()
            .sync()
            .unwrap_or_else(|e| panic!("sync of {}-wal: {e}", path.display()));
        assert!(
            lite.checkpoint_synced().unwrap_or_else(|e| panic!("{e}")) > 0,
            "frames copied"
        );
        assert_eq!(synchronous(&lite), 0, "OFF again after the checkpoint");
        lite.restart_wanted.store(true, Ordering::Relaxed);
        lite.before_transaction();
        assert_eq!(
            synchronous(&lite),
            0,
            "OFF again after the checkpoint before a transaction"
        );
        assert!(!lite.restart_wanted.load(Ordering::Relaxed));
    }

    fn wal_len(db: &Path) -> u64 {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(PathBuf::from(wal))
            .unwrap_or_else(|e| panic!("{e}"))
            .len()
    }

    /// The rows of `t` that a copy of the database file and its WAL (what a crash would leave on
    /// disk, since every commit here is in the file when it returns) holds once SQLite recovers it.
    fn rows_after_a_crash(db: &Path, scratch: &Path) -> i64 {
        let copy = scratch.join("crashed.db");
        for suffix in ["", "-wal"] {
            let mut from = db.as_os_str().to_owned();
            from.push(suffix);
            let mut to = copy.as_os_str().to_owned();
            to.push(suffix);
            std::fs::copy(PathBuf::from(from), PathBuf::from(to)).unwrap_or_else(|e| panic!("{e}"));
        }
        let conn = rusqlite::Connection::open(&copy).unwrap_or_else(|e| panic!("{e}"));
        count(&conn)
    }

    /// The writer's WAL is filled with zeros to the length asked for as it opens; commits write
    /// over them (the file grows no further), and SQLite's recovery reads every commit and takes
    /// none of the zeros for a frame.
    #[test]
    fn commits_write_over_the_preallocated_wal_and_a_crash_loses_none() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("claims.db");
        let lite = Lite::open(&path, WalPreallocate::Bytes(4 << 20)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wal_len(&path), 4 << 20);
        lite.conn
            .execute_batch("CREATE TABLE t (v INTEGER)")
            .unwrap_or_else(|e| panic!("{e}"));
        for v in 0..50 {
            lite.conn
                .execute_batch(&format!("BEGIN IMMEDIATE; INSERT INTO t VALUES ({v}); COMMIT;"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        lite.wal().sync().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wal_len(&path), 4 << 20, "written over, not extended");
        assert_eq!(rows_after_a_crash(&path, scratch.path()), 50);
        // Opened again (as after a restart) on a WAL as long already: nothing is written.
        drop(lite);
        let again = Lite::open(&path, WalPreallocate::Bytes(1 << 20)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count(&again.conn), 50);
    }

    /// Preallocation holds the write lock: it waits for another connection's write transaction,
    /// then extends the file past the frames that transaction committed, which a crash keeps.
    #[test]
    fn preallocation_waits_for_the_write_lock_and_keeps_the_frames_before_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("claims.db");
        let other = rusqlite::Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        other
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1); \
                 INSERT INTO t VALUES (2); BEGIN IMMEDIATE; INSERT INTO t VALUES (3);",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let before = wal_len(&path);
        let opening = {
            let path = path.clone();
            std::thread::spawn(move || Lite::open(&path, WalPreallocate::Bytes(8 << 20)))
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!opening.is_finished(), "waits for the other connection's transaction");
        assert_eq!(wal_len(&path), before, "nothing written meanwhile");
        other.execute_batch("COMMIT").unwrap_or_else(|e| panic!("{e}"));
        let committed = wal_len(&path);
        assert!(committed > before, "the other connection's commit appended frames");
        let lite = opening
            .join()
            .unwrap_or_else(|_| panic!("the opening thread panicked"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wal_len(&path), 8 << 20);
        assert_eq!(rows_after_a_crash(&path, scratch.path()), 3);
        drop(lite);
    }

    /// By default the WAL is filled as far as it reaches before it starts over, in the database's
    /// own page size.
    #[test]
    fn by_default_the_wal_is_filled_to_where_it_starts_over() {
        assert_eq!(wal_bytes(WAL_FRAMES_RESTART, 4096), 270_008_352);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("claims.db");
        rusqlite::Connection::open(&path)
            .and_then(|c| c.execute_batch("PRAGMA page_size = 512; CREATE TABLE t (v INTEGER);"))
            .unwrap_or_else(|e| panic!("{e}"));
        let _lite = Lite::open(&path, WalPreallocate::UntilRestart).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wal_len(&path), 32 + 65_536 * (512 + 24));
    }

    fn count(reader: &rusqlite::Connection) -> i64 {
        reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A reader connection kept for the next read has ended its transaction: the next read on it
    /// sees what was committed since. One not given back is closed, not kept inside its
    /// transaction. Readers cannot write.
    #[test]
    fn reader_connections_are_kept_only_outside_a_transaction() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("claims.db");
        let mut lite = Lite::open(&path, WalPreallocate::Bytes(0)).unwrap_or_else(|e| panic!("{e}"));
        let insert = |lite: &mut Lite| {
            lite.conn
                .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1); COMMIT;")
                .unwrap_or_else(|e| panic!("{e}"));
        };
        lite.conn
            .execute_batch("CREATE TABLE t (v INTEGER)")
            .unwrap_or_else(|e| panic!("{e}"));
        insert(&mut lite);
        let readers = LiteReaders::new(path.clone());
        let reader = readers.begin().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count(&reader), 1);
        insert(&mut lite);
        assert_eq!(count(&reader), 1, "one read transaction, one state");
        assert!(
            reader.execute_batch("INSERT INTO t VALUES (2)").is_err(),
            "a reader cannot write"
        );
        readers.end(reader).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(readers.idle().len(), 1, "kept");
        insert(&mut lite);
        let reader = readers.begin().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(readers.idle().len(), 0, "the kept connection, again");
        assert_eq!(count(&reader), 3, "what was committed since");
        drop(reader);
        assert_eq!(readers.idle().len(), 0, "not given back: closed");
        insert(&mut lite);
        let reader = readers.begin().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count(&reader), 4);
        readers.end(reader).unwrap_or_else(|e| panic!("{e}"));
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap_or_else(|e| panic!("{e}")).ino()
    }

    /// A sync keeps the file it opened; a missing file, or a path that names another file than the
    /// one open, is an error, not a silent success.
    #[test]
    fn a_wal_sync_fails_unless_its_path_names_its_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("claims.db-wal");
        assert!(WalSync::open(path.clone()).is_err(), "no file yet");
        std::fs::write(&path, b"first").unwrap_or_else(|e| panic!("{e}"));
        let wal = WalSync::open(path.clone()).unwrap_or_else(|e| panic!("{e}"));
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
        let held = |wal: &WalSync| {
            use std::os::unix::fs::MetadataExt;
            wal.inner
                .file
                .metadata()
                .map(|m| m.ino())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let first = inode(&path);
        assert_eq!(held(&wal), first);
        let other = dir.path().join("other");
        std::fs::write(&other, b"second").unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&other, &path).unwrap_or_else(|e| panic!("{e}"));
        assert!(wal.sync().is_err(), "the path names another file");
        assert_eq!(held(&wal), first, "still the file written to");
        assert!(wal.same(&wal.clone()));
        assert!(!wal.same(&WalSync::open(path.clone()).unwrap_or_else(|e| panic!("{e}"))));
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(wal.sync().is_err(), "the path names no file");
    }

    fn literal(value: Val<'_>) -> Result<String> {
        let mut out = String::new();
        literal_into(&mut out, &value)?;
        Ok(out)
    }

    #[test]
    fn literals_escape_quotes_and_backslashes_and_refuse_nul() {
        assert_eq!(literal(Val::Int(-42)).ok().as_deref(), Some("-42"));
        assert_eq!(literal(Val::Null).ok().as_deref(), Some("NULL"));
        assert_eq!(literal(Val::Str("it's $1")).ok().as_deref(), Some("E'it''s $1'"));
        assert_eq!(
            literal(Val::Str(r"it's a \ and $q$")).ok().as_deref(),
            Some(r"$q1$it's a \ and $q$$q1$")
        );
        assert_eq!(
            literal(Val::Str(r#"{"a\"b"}"#)).ok().as_deref(),
            Some(r#"$q${"a\"b"}$q$"#)
        );
        // `\$q` then `$q$` would close at `\$q$`: found by the read-back test below.
        assert_eq!(literal(Val::Str(r"\$q")).ok().as_deref(), Some(r"$q1$\$q$q1$"));
        assert_eq!(literal(Val::Str(r"\$")).ok().as_deref(), Some(r"$q$\$$q$"));
        assert_eq!(literal(Val::Text("医保".into())).ok().as_deref(), Some("E'医保'"));
        assert!(matches!(literal(Val::Str("a\0b")), Err(StoreError::Statement(_))));
        assert!(matches!(literal(Val::Str("a\\\0b")), Err(StoreError::Statement(_))));
    }

    #[test]
    fn array_literals_quote_every_text_and_dollar_quote_the_whole() {
        let array = |items: Vec<Val<'static>>| {
            let mut out = String::new();
            array_into(&mut out, &items);
            out
        };
        assert_eq!(array(Vec::new()), "{}");
        assert_eq!(
            array(vec![
                Val::Str("H1"),
                Val::Str("NULL"),
                Val::Null,
                Val::Int(-7),
                Val::Str("a,b"),
                Val::Text(r#"q"uote"#.into()),
                Val::Str(r"back\slash"),
            ]),
            r#"{"H1","NULL",NULL,-7,"a,b","q\"uote","back\\slash"}"#
        );
        assert_eq!(
            literal(Val::Array(vec![Val::Str(r#"{"a":1}"#)])).ok().as_deref(),
            Some(r#"$q${"{\"a\":1}"}$q$"#)
        );
        assert_eq!(
            literal(Val::Array(vec![Val::Str("$q$"), Val::Str("$q1$")]))
                .ok()
                .as_deref(),
            Some(r#"$q2${"$q$","$q1$"}$q2$"#)
        );
    }

    /// Any text without NUL, written as a literal, reads back from a real PostgreSQL as itself,
    /// whatever `standard_conforming_strings` says (the server of CLAIMS_TEST_POSTGRES_URL, which
    /// scripts/test finds or starts; without one this fails, as the PostgreSQL tests do).
    #[test]
    fn literals_read_back_from_postgresql_as_the_same_text() {
        use proptest::prelude::*;

        let (runtime, conn) = postgres();
        let read_back = |text: &str, conforming: &str| -> String {
            let mut sql = format!("SET standard_conforming_strings = {conforming}; SELECT ");
            literal_into(&mut sql, &Val::Str(text)).unwrap_or_else(|e| panic!("{e}"));
            sql.push_str(" AS v");
            let rows: Vec<sqlx::any::AnyRow> = runtime
                .block_on(conn.borrow_mut().fetch_all(sqlx::raw_sql(&sql)))
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let row = rows.last().unwrap_or_else(|| panic!("{sql}: no row"));
            row.try_get::<String, _>("v").unwrap_or_else(|e| panic!("{e}"))
        };
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
        runner
            .run(&proptest::collection::vec(awkward(), 0..40), |chars| {
                let text: String = chars.into_iter().collect();
                prop_assert_eq!(read_back(&text, "on"), text.clone());
                prop_assert_eq!(read_back(&text, "off"), text);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A connection to the PostgreSQL of CLAIMS_TEST_POSTGRES_URL (scripts/test finds or starts
    /// one; without one this fails, as the PostgreSQL tests do), with a runtime to drive it.
    fn postgres() -> (tokio::runtime::Runtime, std::cell::RefCell<AnyConnection>) {
        use sqlx::Connection;
        let url = std::env::var("CLAIMS_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime: {e}"));
        sqlx::any::install_default_drivers();
        let conn = runtime
            .block_on(AnyConnection::connect(&url))
            .unwrap_or_else(|e| panic!("PostgreSQL at {url} (CLAIMS_TEST_POSTGRES_URL) does not answer: {e}"));
        (runtime, std::cell::RefCell::new(conn))
    }

    /// Characters that quoting must handle, and any other but NUL.
    fn awkward() -> impl proptest::strategy::Strategy<Value = char> {
        use proptest::prelude::*;
        prop_oneof![
            Just('\''),
            Just('\\'),
            Just('$'),
            Just('q'),
            Just(';'),
            Just('"'),
            Just(','),
            Just('{'),
            Just('}'),
            Just(' '),
            any::<char>().prop_filter("PostgreSQL text holds no NUL", |c| *c != '\0'),
        ]
    }

    /// Texts, numbers and NULLs written as an array literal (as the writers' `unnest` statements
    /// send a column) and that as a literal read back from a real PostgreSQL element by element as
    /// themselves, in order: quotes, backslashes, commas, braces, blanks, empty texts and the text
    /// `NULL` included.
    #[test]
    fn arrays_read_back_from_postgresql_as_the_same_values() {
        use proptest::prelude::*;

        let (runtime, conn) = postgres();
        let read_back = |values: &[Val<'_>], array_type: &str| -> Vec<Option<String>> {
            let mut sql = String::from("SELECT CAST(v AS TEXT) AS v FROM unnest(CAST(");
            literal_into(&mut sql, &Val::Array(values.to_vec())).unwrap_or_else(|e| panic!("{e}"));
            sql.push_str(&format!(" AS {array_type})) WITH ORDINALITY AS a(v, n) ORDER BY n"));
            let rows: Vec<sqlx::any::AnyRow> = runtime
                .block_on(conn.borrow_mut().fetch_all(sqlx::raw_sql(&sql)))
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.iter()
                .map(|r| r.try_get::<Option<String>, _>("v").unwrap_or_else(|e| panic!("{e}")))
                .collect()
        };
        let text = proptest::collection::vec(awkward(), 0..12).prop_map(|c| c.into_iter().collect::<String>());
        let element = prop_oneof![
            4 => text.prop_map(Some),
            1 => Just(Some("NULL".to_owned())),
            1 => Just(None),
        ];
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(128));
        runner
            .run(&proptest::collection::vec(element, 0..8), |texts| {
                let values: Vec<Val<'_>> = texts.iter().map(|t| t.as_deref().map_or(Val::Null, Val::Str)).collect();
                prop_assert_eq!(read_back(&values, "TEXT[]"), texts);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        runner
            .run(&proptest::collection::vec(any::<i64>(), 0..8), |numbers| {
                let values: Vec<Val<'_>> = numbers.iter().map(|n| Val::Int(*n)).collect();
                let expected: Vec<Option<String>> = numbers.iter().map(|n| Some(n.to_string())).collect();
                prop_assert_eq!(read_back(&values, "BIGINT[]"), expected);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(literal(Val::Array(vec![Val::Int(1), Val::Str("a\0b")])).is_err());
        assert!(literal(Val::Array(vec![Val::Array(vec![Val::Str("$q$")])])).is_err());
    }
}

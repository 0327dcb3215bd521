//! The shim against real SQLite files: what a connection through it commits is in the files when
//! the commit returns (a copy of the files taken then opens with every committed row), it reads back
//! what it wrote inside a transaction, and its WAL works with other connections' checkpoints.
// A panic is a failed test; the helpers outside `#[test]` functions may panic too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("claims-walbuf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A connection through the shim, as the service's writer opens it.
fn open_shim(path: &Path) -> Connection {
    open_shim_with(path, "FULL")
}

/// A connection through the shim with the given `synchronous` setting.
fn open_shim_with(path: &Path, synchronous: &str) -> Connection {
    claims_walbuf::register().unwrap();
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), claims_walbuf::NAME).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA wal_autocheckpoint = 0; \
         CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB NOT NULL); \
         CREATE INDEX IF NOT EXISTS t_k ON t (k);"
    ))
    .unwrap();
    conn
}

/// A row whose key spreads the index writes over the file.
fn row(i: i64) -> (String, Vec<u8>) {
    let k = format!("{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let v = (0..(200 + i % 900)).map(|j| (i + j) as u8).collect();
    (k, v)
}

fn insert(conn: &Connection, from: i64, to: i64) {
    let mut stmt = conn
        .prepare_cached("INSERT INTO t (id, k, v) VALUES (?1, ?2, ?3)")
        .unwrap();
    for i in from..to {
        let (k, v) = row(i);
        stmt.execute(rusqlite::params![i, k, v]).unwrap();
    }
}

/// Checks that `conn` holds exactly rows `0..n` as written.
fn check(conn: &Connection, n: i64) {
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, n);
    let mut stmt = conn.prepare("SELECT id, k, v FROM t ORDER BY k").unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut seen = 0;
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let (k, v) = row(id);
        assert_eq!(r.get::<_, String>(1).unwrap(), k, "key of row {id}");
        assert_eq!(r.get::<_, Vec<u8>>(2).unwrap(), v, "value of row {id}");
        seen += 1;
    }
    assert_eq!(seen, n);
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
}

/// Copies the database and its WAL as they are in the files now, as a crash would leave them
/// (the shared memory index is not copied: SQLite rebuilds it from the WAL).
fn copy_files(from: &Path, to_dir: &Path) -> PathBuf {
    let to = to_dir.join("copy.db");
    for suffix in ["", "-wal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", to.display()));
        let _ = std::fs::remove_file(format!("{}-shm", to.display()));
        let source = format!("{}{suffix}", from.display());
        if Path::new(&source).exists() {
            std::fs::copy(&source, format!("{}{suffix}", to.display())).unwrap();
        }
    }
    to
}

#[test]
fn every_commit_is_in_the_files_when_it_returns() {
    let d = dir("commit");
    let path = d.join("a.db");
    let conn = open_shim(&path);
    let before = claims_walbuf::stats();
    let mut n = 0;
    for batch in [1, 7, 300, 1, 2000, 50] {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        insert(&conn, n, n + batch);
        conn.execute_batch("COMMIT").unwrap();
        n += batch;
        // Recovered from a copy of the files alone, with the default VFS.
        let copy = copy_files(&path, &d);
        let recovered = Connection::open(&copy).unwrap();
        check(&recovered, n);
    }
    let after = claims_walbuf::stats();
    let gathered = after.writes_gathered - before.writes_gathered;
    let issued = after.writes_issued - before.writes_issued;
    // Other tests run at the same time and count too; this one alone gathers thousands of writes.
    assert!(gathered > 1000, "{gathered} writes gathered");
    assert!(issued * 4 < gathered, "{issued} writes issued for {gathered} gathered");
}

#[test]
fn a_transaction_larger_than_the_cache_reads_back_what_it_spilled_and_rolls_back() {
    let d = dir("spill");
    let path = d.join("a.db");
    let conn = open_shim(&path);
    // A 16-page cache: a large transaction writes pages to the WAL before its commit and reads
    // some of them back.
    conn.execute_batch("PRAGMA cache_size = 16").unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    insert(&conn, 0, 3000);
    conn.execute_batch("COMMIT").unwrap();
    check(&conn, 3000);
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    insert(&conn, 3000, 6000);
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 6000);
    conn.execute_batch("ROLLBACK").unwrap();
    check(&conn, 3000);
    check(&Connection::open(copy_files(&path, &d)).unwrap(), 3000);
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    insert(&conn, 3000, 4000);
    conn.execute_batch("COMMIT").unwrap();
    check(&conn, 4000);
    check(&Connection::open(copy_files(&path, &d)).unwrap(), 4000);
}

#[test]
fn other_connections_read_and_checkpoint_its_wal_and_it_starts_the_wal_over() {
    let d = dir("checkpoint");
    let path = d.join("a.db");
    let conn = open_shim(&path);
    let other = Connection::open(&path).unwrap();
    let mut n = 0;
    for round in 0..12 {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        insert(&conn, n, n + 400);
        conn.execute_batch("COMMIT").unwrap();
        n += 400;
        check(&other, n);
        // Copied to the database file; the writer's next transaction starts the WAL over from its
        // beginning (writes at offsets it wrote before) once every frame is copied.
        let mode = if round % 3 == 2 { "TRUNCATE" } else { "PASSIVE" };
        let (busy, frames, copied): (i64, i64, i64) = other
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0);
        assert_eq!(frames, copied);
        check(&Connection::open(copy_files(&path, &d)).unwrap(), n);
    }
    drop(other);
    drop(conn);
    check(&Connection::open(&path).unwrap(), n);
}

#[test]
fn without_a_sync_at_each_commit_other_connections_still_read_every_commit() {
    // With `synchronous=NORMAL` SQLite does not sync the WAL at a commit, and publishes the
    // commit in the WAL index right after writing its frames: the shim must have written them out.
    let d = dir("normal");
    let path = d.join("a.db");
    let conn = open_shim_with(&path, "NORMAL");
    let other = Connection::open(&path).unwrap();
    let mut n = 0;
    for batch in [1, 3, 250, 1200] {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        insert(&conn, n, n + batch);
        conn.execute_batch("COMMIT").unwrap();
        n += batch;
        check(&other, n);
        check(&Connection::open(copy_files(&path, &d)).unwrap(), n);
    }
}

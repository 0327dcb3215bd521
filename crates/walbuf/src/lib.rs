//! A VFS shim over SQLite's default VFS (`unix`) that gathers the writes SQLite makes to a WAL file
//! and hands them to the real file in a few writes once a commit's last frame is gathered, and
//! whenever SQLite syncs, reads, sizes, truncates or closes that file, or writes somewhere that does
//! not continue the last write.
//!
//! SQLite writes each WAL frame with two system calls: the 24-byte frame header, then the page. A
//! commit of a few hundred pages is then a thousand `pwrite`s, each through the file system's
//! buffered-write path; for the claims service's writer that was a fifth of its time
//! (docs/benchmarks.md). Gathered, a commit is a few `pwrite`s of up to 124 KiB and one `fsync`.
//!
//! What SQLite relies on still holds: every byte it wrote is in the real file before any `xSync`
//! returns (so a commit is as durable as without the shim), and before any read of that file (so
//! SQLite always reads what it wrote). A commit's frames are in the real file when the commit
//! returns, whatever the `synchronous` setting: a connection at `synchronous = OFF` can make its
//! commits durable afterwards by syncing the file through a descriptor of its own. Other
//! connections read a WAL only up to the last commit they see in the WAL index, which SQLite
//! updates after writing the commit's frames (and, with `synchronous=FULL`, after syncing them): by
//! then the shim has written them out, whatever the `synchronous` setting. Files other than WAL
//! files are the real VFS's own, untouched: the shim is not even on their path.
//!
//! Only the connections opened with [`NAME`] as their VFS use the shim; others, on the same files,
//! keep the default VFS. The default VFS's own functions (delete, access, full path, time, ...) do
//! not use the VFS object they are handed except to open files, so the shim's VFS is a copy of it
//! with its own `xOpen`.
//!
//! This is the crate's only purpose and its only unsafe code; the service's crate forbids unsafe code.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

/// The name of the VFS, to open connections with (`sqlite3_open_v2`'s last argument).
pub const NAME: &str = "claims-walbuf";

/// [`NAME`] as SQLite keeps it.
const NAME_C: &CStr = c"claims-walbuf";

/// Gathered bytes beyond which the shim writes them out without waiting for a sync.
const FLUSH_AT: usize = 1 << 20;

/// The size of a WAL frame's header.
const FRAME_HEADER: usize = 24;

/// The most the default VFS writes in one call: its `unixWrite` keeps the low 17 bits of the
/// length (`nBuf &= 0x1ffff`), so longer writes go in pieces of 31 pages.
const WRITE_MAX: usize = 31 * 4096;

/// An error from SQLite while registering the VFS: its result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error(pub c_int);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not register the SQLite VFS {NAME}: result code {}", self.0)
    }
}

impl std::error::Error for Error {}

/// Registers the VFS [`NAME`] (not as the default), once per process; later calls return the first
/// call's result.
pub fn register() -> Result<(), Error> {
    static REGISTERED: OnceLock<Result<(), Error>> = OnceLock::new();
    // SAFETY: runs once; see `register_once`.
    *REGISTERED.get_or_init(|| unsafe { register_once() })
}

/// Writes the shim was handed, and writes it made to the real files, since the process started:
/// the second is far smaller than the first when the shim works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub writes_gathered: u64,
    pub writes_issued: u64,
}

pub fn stats() -> Stats {
    Stats {
        writes_gathered: WRITES_GATHERED.load(Ordering::Relaxed),
        writes_issued: WRITES_ISSUED.load(Ordering::Relaxed),
    }
}

static WRITES_GATHERED: AtomicU64 = AtomicU64::new(0);
static WRITES_ISSUED: AtomicU64 = AtomicU64::new(0);

/// The default VFS the shim wraps; set once, before the shim is registered.
static REAL_VFS: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// # Safety
/// Must run once (it leaks the VFS object it registers, which SQLite keeps for the process).
unsafe fn register_once() -> Result<(), Error> {
    let rc = ffi::sqlite3_initialize();
    if rc != ffi::SQLITE_OK {
        return Err(Error(rc));
    }
    let real = ffi::sqlite3_vfs_find(ptr::null());
    if real.is_null() {
        return Err(Error(ffi::SQLITE_ERROR));
    }
    let real_size = usize::try_from((*real).szOsFile).map_err(|_| Error(ffi::SQLITE_ERROR))?;
    let mut vfs: ffi::sqlite3_vfs = ptr::read(real);
    vfs.szOsFile = c_int::try_from(HEADER + real_size).map_err(|_| Error(ffi::SQLITE_ERROR))?;
    vfs.pNext = ptr::null_mut();
    vfs.zName = NAME_C.as_ptr();
    vfs.xOpen = Some(open);
    REAL_VFS.store(real, Ordering::Release);
    let rc = ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0);
    if rc != ffi::SQLITE_OK {
        return Err(Error(rc));
    }
    Ok(())
}

/// A WAL file opened through the shim: SQLite's file object (whose methods are [`WAL_METHODS`]),
/// then the shim's state, then (at [`HEADER`]) the real VFS's file object, all in the one block
/// SQLite allocates (`szOsFile` bytes, 8-aligned).
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Bytes written by SQLite and not yet by the real file, from offset `start`.
    gathered: Vec<u8>,
    start: i64,
    /// The last write was a commit frame's header: the next (its page) ends the commit.
    commit_page_next: bool,
}

/// Where the real file object starts in the block.
const HEADER: usize = (std::mem::size_of::<WalFile>() + 7) & !7;

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = REAL_VFS.load(Ordering::Acquire);
    let Some(real_open) = real_vfs.as_ref().and_then(|v| v.xOpen) else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Any other file is the real VFS's own object, at the start of the block.
        return real_open(real_vfs, name, file, flags, out_flags);
    }
    let real = file.cast::<u8>().add(HEADER).cast::<ffi::sqlite3_file>();
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        // SQLite does not close a file whose open failed and whose methods are null.
        (*file).pMethods = ptr::null();
        return rc;
    }
    ptr::write(
        file.cast::<WalFile>(),
        WalFile {
            base: ffi::sqlite3_file { pMethods: &WAL_METHODS },
            real,
            gathered: Vec::new(),
            start: 0,
            commit_page_next: false,
        },
    );
    ffi::SQLITE_OK
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// # Safety
/// `file` is a block opened by [`open`] with [`WAL_METHODS`].
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    &mut *file.cast::<WalFile>()
}

/// The real file's methods.
unsafe fn real(w: &WalFile) -> &ffi::sqlite3_io_methods {
    &*(*w.real).pMethods
}

/// Writes the gathered bytes to the real file. They are dropped whatever the outcome: after a
/// failed write SQLite fails the operation that needed them (a commit fails and rolls back) and
/// never relies on what the file holds past its last sync.
unsafe fn flush(w: &mut WalFile) -> c_int {
    if w.gathered.is_empty() {
        return ffi::SQLITE_OK;
    }
    let mut rc = ffi::SQLITE_OK;
    let mut offset = w.start;
    for chunk in w.gathered.chunks(WRITE_MAX) {
        rc = match (real(w).xWrite, c_int::try_from(chunk.len()), i64::try_from(chunk.len())) {
            (Some(write), Ok(n), Ok(len)) => {
                let rc = write(w.real, chunk.as_ptr().cast(), n, offset);
                offset += len;
                rc
            }
            _ => ffi::SQLITE_IOERR_WRITE,
        };
        WRITES_ISSUED.fetch_add(1, Ordering::Relaxed);
        if rc != ffi::SQLITE_OK {
            break;
        }
    }
    w.gathered.clear();
    rc
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    let w = wal(file);
    let Ok(n) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let end = i64::try_from(w.gathered.len()).map_or(i64::MAX, |len| w.start.saturating_add(len));
    if !w.gathered.is_empty() && end != offset {
        // Not a continuation: what is gathered goes first, so that later bytes land over earlier.
        let rc = flush(w);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if w.gathered.is_empty() {
        w.start = offset;
    }
    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), n);
    w.gathered.extend_from_slice(bytes);
    WRITES_GATHERED.fetch_add(1, Ordering::Relaxed);
    // A frame's header is the only 24-byte write SQLite makes to a WAL (the WAL's own header is 32
    // bytes); in a commit frame's header, bytes 4 to 8 hold the database's size after the commit,
    // and are 0 in every other frame's. The page after a commit header ends the commit.
    let is_commit_header = n == FRAME_HEADER && bytes.get(4..8).is_some_and(|size| size != [0; 4]);
    let ends_commit = std::mem::replace(&mut w.commit_page_next, is_commit_header);
    if ends_commit || w.gathered.len() >= FLUSH_AT {
        return flush(w);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let w = wal(file);
    let flushed = flush(w);
    let closed = match real(w).xClose {
        Some(close) => close(w.real),
        None => ffi::SQLITE_OK,
    };
    // SQLite frees the block; the shim's own allocation goes here.
    drop(std::mem::take(&mut w.gathered));
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

/// Calls the real method `$m` with `$args` after writing out what is gathered.
macro_rules! flushed {
    ($file:ident, $m:ident, $($arg:expr),*) => {{
        let w = wal($file);
        let rc = flush(w);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        match real(w).$m {
            Some(m) => m(w.real, $($arg),*),
            None => ffi::SQLITE_IOERR,
        }
    }};
}

/// Calls the real method `$m` with `$args`; nothing gathered is concerned.
macro_rules! forwarded {
    ($file:ident, $m:ident, $($arg:expr),*) => {{
        let w = wal($file);
        match real(w).$m {
            Some(m) => m(w.real, $($arg),*),
            None => ffi::SQLITE_IOERR,
        }
    }};
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, data: *mut c_void, amount: c_int, offset: i64) -> c_int {
    flushed!(file, xRead, data, amount, offset)
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    flushed!(file, xTruncate, size)
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flushed!(file, xSync, flags)
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    flushed!(file, xFileSize, size)
}

unsafe extern "C" fn file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    flushed!(file, xFileControl, op, arg)
}

unsafe extern "C" fn fetch(file: *mut ffi::sqlite3_file, offset: i64, amount: c_int, out: *mut *mut c_void) -> c_int {
    flushed!(file, xFetch, offset, amount, out)
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, offset: i64, p: *mut c_void) -> c_int {
    forwarded!(file, xUnfetch, offset, p)
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forwarded!(file, xLock, level)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forwarded!(file, xUnlock, level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    forwarded!(file, xCheckReservedLock, out)
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    match real(wal(file)).xSectorSize {
        Some(m) => m(wal(file).real),
        None => 4096,
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    match real(wal(file)).xDeviceCharacteristics {
        Some(m) => m(wal(file).real),
        None => 0,
    }
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    forwarded!(file, xShmMap, page, size, extend, out)
}

unsafe extern "C" fn shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    forwarded!(file, xShmLock, offset, n, flags)
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    if let Some(m) = real(wal(file)).xShmBarrier {
        m(wal(file).real);
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    forwarded!(file, xShmUnmap, delete)
}

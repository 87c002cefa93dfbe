//! The redb file, with blocks allocated ahead of redb's writes.
//!
//! redb grows its file with `set_len`, which leaves the new part a hole. A durable commit
//! that writes pages into a hole makes the file system allocate blocks for them, and the
//! `fdatasync` that makes the commit durable must then also commit the file system's
//! journal (on ext4 the same writes into allocated blocks took half the time). Creates
//! grow the file, so many of their commits paid that. Here, a write at most [`AHEAD`] past
//! the watermark first fills the file from the watermark to the next [`AHEAD`] boundary
//! past the write: one journal commit per ~1 MiB of growth instead of one per commit.
//! A write further out (after redb doubled the file, near its new end) fills nothing.
//!
//! The fill writes zeros only over pages that read as zeros (a hole, or zeros already),
//! so whatever the watermark says, nothing stored is overwritten and a crash leaves the
//! same bytes either way (on ext4's default `data=ordered`). The watermark starts where
//! the file's last data ends (`SEEK_DATA`), measured at the first write, when redb holds
//! the file's lock (at `new` another process may still be writing it). Writes that reach
//! past the watermark run under the lock the fill holds, so none lands in a range being
//! filled between its read and its write.

use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

// redb's I/O error type for backends (without its `experimental-api-5` feature).
type BackendIoError = std::io::Error;

/// How far ahead a write may land and still fill, and the step of a fill.
const AHEAD: u64 = 1 << 20;
/// What a fill reads and checks at a time.
const PIECE: usize = 64 << 10;
/// The unit checked for zeros (redb's page).
const PAGE: usize = 4096;

/// redb's own file backend, filling holes before writes land in them.
#[derive(Debug)]
pub(crate) struct Prealloc {
    inner: FileBackend,
    /// The same file, for the fills.
    file: File,
    /// Below here the file is allocated as far as this backend knows (0 until measured).
    allocated: AtomicU64,
    /// Held by writes past `allocated`, fills and `set_len`; whether `allocated` was measured.
    grow: Mutex<bool>,
}

impl Prealloc {
    pub(crate) fn new(file: File) -> std::io::Result<Prealloc> {
        let inner = FileBackend::new(file.try_clone()?).map_err(std::io::Error::other)?;
        Ok(Prealloc { inner, file, allocated: AtomicU64::new(0), grow: Mutex::new(false) })
    }

    fn grow_lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.grow.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes reaching past the watermark: fills ahead when the write is near it.
    fn write_growing(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        let mut measured = self.grow_lock();
        if !*measured {
            self.allocated.store(data_end(&self.file)?, Ordering::Release);
            *measured = true;
        }
        let from = self.allocated.load(Ordering::Acquire);
        let end = offset + data.len() as u64;
        if end > from && offset <= from + AHEAD {
            let upto = end.next_multiple_of(AHEAD).min(self.inner.len()?).max(end);
            self.fill(from, upto)?;
            self.allocated.store(upto, Ordering::Release);
        }
        self.inner.write(offset, data)
    }

    /// Writes zeros over the pages of `from..upto` that read as zeros.
    fn fill(&self, from: u64, upto: u64) -> std::io::Result<()> {
        let mut buf = vec![0u8; PIECE];
        let zero = |p: &[u8]| p.iter().all(|&b| b == 0);
        let mut at = from;
        while at < upto {
            let n = (upto - at).min(PIECE as u64) as usize;
            let piece = &mut buf[..n];
            self.file.read_exact_at(piece, at)?;
            let mut i = 0;
            while i < n {
                let start = i;
                while i < n && zero(&piece[i..(i + PAGE).min(n)]) {
                    i = (i + PAGE).min(n);
                }
                if i > start {
                    self.file.write_all_at(&piece[start..i], at + start as u64)?;
                }
                while i < n && !zero(&piece[i..(i + PAGE).min(n)]) {
                    i = (i + PAGE).min(n);
                }
            }
            at += n as u64;
        }
        Ok(())
    }
}

/// Where the file's last data ends: everything after is a hole (or the end of the file).
fn data_end(file: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut end = 0i64;
    loop {
        // SAFETY: lseek on a file descriptor this function borrows; no memory is passed.
        let data = unsafe { libc::lseek(fd, end, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data at or after `end`. Without SEEK_DATA, call it all data.
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(end as u64),
                _ => Ok(file.metadata()?.len()),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Ok(file.metadata()?.len());
        }
        end = hole;
    }
}

impl StorageBackend for Prealloc {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        let _grow = self.grow_lock();
        self.inner.set_len(len)?;
        // A shrink drops what was allocated past the end; what a grow adds is a hole.
        self.allocated.fetch_min(len, Ordering::AcqRel);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        if offset + data.len() as u64 > self.allocated.load(Ordering::Acquire) {
            return self.write_growing(offset, data);
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendIoError> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const MIB: u64 = 1 << 20;

    /// A file of `len` bytes, holes but for the `data` written at their offsets.
    fn sparse(path: &std::path::Path, len: u64, data: &[(u64, &[u8])]) -> File {
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
        f.set_len(len).unwrap();
        for (at, bytes) in data {
            f.write_all_at(bytes, *at).unwrap();
        }
        f
    }

    fn backend(path: &std::path::Path) -> Prealloc {
        Prealloc::new(std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()).unwrap()
    }

    fn read(b: &Prealloc, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0xEEu8; len];
        b.read(offset, &mut out).unwrap();
        out
    }

    /// Bytes of the file backed by blocks.
    fn allocated_bytes(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn a_fill_writes_zeros_only_where_the_file_reads_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let odd = [0u8, 0, 7, 0];
        sparse(&path, 4 * MIB, &[(0, &[1u8; 4096]), (MIB + 4096, &[2u8; 8192]), (2 * MIB + 10, &odd), (4 * MIB - 1, &[3u8])]);
        let before = std::fs::read(&path).unwrap();
        assert!(allocated_bytes(&path) < MIB, "the test needs holes");
        let b = backend(&path);
        b.fill(0, 4 * MIB).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before, "no byte changed");
        assert!(allocated_bytes(&path) >= 4 * MIB - 64 * 1024, "the holes have blocks now");
    }

    #[test]
    fn the_first_write_measures_the_watermark_and_a_write_far_ahead_fills_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let other = sparse(&path, 8 * MIB, &[(0, &[1u8; 4096])]);
        let b = backend(&path);
        // Another writer finishing after the backend was made (redb's lock not yet ours).
        other.write_all_at(&[2u8; 4096], 5 * MIB).unwrap();
        b.write(5 * MIB + 8192, &[3u8; 4096]).unwrap();
        assert_eq!(b.allocated.load(Ordering::Acquire), 6 * MIB, "measured where the data ended, filled to the next MiB");
        assert_eq!(read(&b, 5 * MIB, 4096), vec![2u8; 4096]);
        assert_eq!(read(&b, 5 * MIB + 4096, 4096), vec![0u8; 4096]);
        assert_eq!(read(&b, 5 * MIB + 8192, 4096), vec![3u8; 4096]);
        assert_eq!(read(&b, 0, 4096), vec![1u8; 4096]);

        let blocks = allocated_bytes(&path);
        b.write(7 * MIB + 8192, &[4u8; 4096]).unwrap();
        assert_eq!(b.allocated.load(Ordering::Acquire), 6 * MIB, "a write past the next MiB moves nothing");
        assert!(allocated_bytes(&path) < blocks + 64 * 1024, "and fills nothing");
        assert_eq!(b.len().unwrap(), 8 * MIB, "filling never grows the file");

        // A shrink takes the watermark with it; what a grow adds is a hole again.
        b.set_len(3 * MIB).unwrap();
        assert_eq!(b.allocated.load(Ordering::Acquire), 3 * MIB);
        b.set_len(4 * MIB).unwrap();
        b.write(4 * MIB - 4096, &[5u8; 4096]).unwrap();
        assert_eq!(b.allocated.load(Ordering::Acquire), 4 * MIB);
        assert_eq!(read(&b, 3 * MIB, 4096), vec![0u8; 4096]);
        assert_eq!(read(&b, 4 * MIB - 4096, 4096), vec![5u8; 4096]);
    }
}

//! The redb file, with blocks allocated ahead of redb's writes.
//!
//! redb grows its file with `set_len`, which leaves the new part a hole. A durable commit
//! that writes pages into a hole makes the file system allocate blocks for them, and the
//! `fdatasync` that makes the commit durable must then also commit the file system's
//! journal (on ext4: ~2x the time of the same writes into allocated blocks, measured on
//! this project's CI disk). Creates grow the file, so most of their commits paid that.
//! Here, a write past the part of the file known to be allocated first fills the hole
//! ahead of it with zeros, [`AHEAD`] at a time: one journal commit per chunk instead of
//! one per commit.
//!
//! Only holes are filled: every byte redb wrote lies below the watermark (a write moves
//! it past its end before writing), and at open the watermark starts where the file's
//! last data ends (`SEEK_DATA`), so zeros are only ever written over zeros. A crash
//! leaves the same contents whether or not the zeros reached the disk.

use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

// redb's I/O error type for backends (without its `experimental-api-5` feature).
type BackendIoError = std::io::Error;

/// How far ahead of a write past the watermark the hole is filled.
pub(crate) const AHEAD: u64 = 1 << 20;

/// redb's own file backend, filling holes before writes land in them.
#[derive(Debug)]
pub(crate) struct Prealloc {
    inner: FileBackend,
    /// The same file, for the zeros.
    file: File,
    /// Every byte from here to the end of the file is a hole redb has not written.
    allocated: AtomicU64,
    /// Taken to move `allocated` (and by `set_len`).
    grow: Mutex<()>,
}

impl Prealloc {
    pub(crate) fn new(file: File) -> std::io::Result<Prealloc> {
        let allocated = data_end(&file)?;
        let inner = FileBackend::new(file.try_clone()?).map_err(std::io::Error::other)?;
        Ok(Prealloc { inner, file, allocated: AtomicU64::new(allocated), grow: Mutex::new(()) })
    }

    /// Fills the hole from the watermark to past `end` (within the file), then moves it.
    fn fill_to(&self, end: u64) -> Result<(), BackendIoError> {
        let _grow = self.grow.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let from = self.allocated.load(Ordering::Acquire);
        if end <= from {
            return Ok(());
        }
        let len = self.inner.len()?;
        let upto = end.next_multiple_of(AHEAD).min(len).max(end);
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut at = from;
        while at < upto {
            let n = (upto - at).min(ZEROS.len() as u64);
            self.file.write_all_at(&ZEROS[..n as usize], at)?;
            at += n;
        }
        self.allocated.store(upto, Ordering::Release);
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
        let _grow = self.grow.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.inner.set_len(len)?;
        // A shrink drops what was allocated past the end; what a grow adds is a hole.
        self.allocated.fetch_min(len, Ordering::AcqRel);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        let end = offset + data.len() as u64;
        if end > self.allocated.load(Ordering::Acquire) {
            self.fill_to(end)?;
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

    fn backend(path: &std::path::Path) -> Prealloc {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).unwrap();
        Prealloc::new(file).unwrap()
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
    fn a_write_into_a_hole_allocates_ahead_and_changes_no_other_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // A file as an earlier process left it: data, a hole, data, a hole at the end.
        {
            let b = backend(&path);
            b.set_len(8 * MIB).unwrap();
            b.write(0, &[1u8; 4096]).unwrap();
            b.write(5 * MIB, &[2u8; 4096]).unwrap();
        }
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        f.set_len(8 * MIB).unwrap();
        // Whatever the first process allocated ahead, punch it back into a hole, so the
        // reopen starts from a file with holes in the middle and at the end.
        punch(&f, 4096, 5 * MIB - 4096);
        punch(&f, 5 * MIB + 4096, 3 * MIB - 4096);
        let before = allocated_bytes(&path);
        assert!(before <= 64 << 10, "the test needs holes; {before} bytes allocated");

        let b = backend(&path);
        assert_eq!(b.allocated.load(Ordering::Acquire), 5 * MIB + 4096, "the watermark starts where the last data ends");
        b.write(6 * MIB + 100, &[3u8; 4096]).unwrap();
        assert!(allocated_bytes(&path) >= before + MIB, "the hole before and ahead of the write is allocated");
        assert_eq!(b.allocated.load(Ordering::Acquire), 7 * MIB);
        // A write below the watermark (into the middle hole) allocates nothing ahead.
        let mid = allocated_bytes(&path);
        b.write(2 * MIB, &[4u8; 4096]).unwrap();
        assert!(allocated_bytes(&path) < mid + (64 << 10), "only the written page is allocated");

        assert_eq!(read(&b, 0, 4096), vec![1u8; 4096]);
        assert_eq!(read(&b, 4096, 4096), vec![0u8; 4096]);
        assert_eq!(read(&b, 5 * MIB, 4096), vec![2u8; 4096]);
        assert_eq!(read(&b, 5 * MIB + 4096, 4096), vec![0u8; 4096]);
        assert_eq!(read(&b, 6 * MIB + 100, 4096), vec![3u8; 4096]);
        assert_eq!(read(&b, 2 * MIB, 4096), vec![4u8; 4096]);
        assert_eq!(read(&b, 7 * MIB, 4096), vec![0u8; 4096]);
        assert_eq!(b.len().unwrap(), 8 * MIB, "filling never grows the file");

        // A shrink takes the watermark with it; the grown part is a hole again.
        b.set_len(3 * MIB).unwrap();
        assert_eq!(b.allocated.load(Ordering::Acquire), 3 * MIB);
        b.set_len(4 * MIB).unwrap();
        b.write(4 * MIB - 4096, &[5u8; 4096]).unwrap();
        assert_eq!(read(&b, 3 * MIB, 4096), vec![0u8; 4096]);
        assert_eq!(read(&b, 4 * MIB - 4096, 4096), vec![5u8; 4096]);
        assert_eq!(read(&b, 2 * MIB, 4096), vec![4u8; 4096]);
    }

    fn punch(f: &File, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on a file this test owns; no memory is passed.
        let r = unsafe {
            libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset as i64, len as i64)
        };
        assert_eq!(r, 0, "punch a hole: {}", std::io::Error::last_os_error());
    }
}

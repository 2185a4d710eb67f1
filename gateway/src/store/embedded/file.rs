//! The database file under redb: its own file backend, which writes the pages
//! of a commit in runs of adjacent pages instead of one `pwrite` per page.
//!
//! redb hands the backend every dirty page of a commit separately (about four
//! per write on the request mix, ~47 `pwrite` calls per group commit) and then
//! asks it to sync. Here the pages are kept until the sync (or until anything
//! would observe the file), then written as one `pwrite` per run of adjacent
//! pages, then `fdatasync`ed: the same bytes reach the file before the same
//! sync, so a commit is exactly as durable as with redb's own backend.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use redb::StorageBackend;
use redb::backends::FileBackend;

/// A redb file backend that defers page writes to the next sync (or to the
/// next read, length change or overlapping write) and then writes adjacent
/// pages with one call.
#[derive(Debug)]
pub(super) struct CoalescingFile {
    /// redb's own backend (it holds the file lock).
    file: FileBackend,
    /// Writes not yet made, by offset; no two overlap.
    pending: Mutex<BTreeMap<u64, Vec<u8>>>,
}

impl CoalescingFile {
    pub(super) fn new(file: FileBackend) -> Self {
        Self {
            file,
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes every pending write, one call per run of adjacent writes.
    fn flush(&self, pending: &mut BTreeMap<u64, Vec<u8>>) -> io::Result<()> {
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut result = Ok(());
        for (offset, data) in std::mem::take(pending) {
            if result.is_err() {
                break;
            }
            if !run.is_empty() && run_start + run.len() as u64 == offset {
                run.extend_from_slice(&data);
                continue;
            }
            if !run.is_empty() {
                result = self.file.write(run_start, &run);
            }
            run_start = offset;
            run = data;
        }
        if result.is_ok() && !run.is_empty() {
            result = self.file.write(run_start, &run);
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Vec<u8>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether a pending write overlaps `offset..offset + len`.
fn overlaps(pending: &BTreeMap<u64, Vec<u8>>, offset: u64, len: usize) -> bool {
    let end = offset.saturating_add(len as u64);
    // Writes never overlap each other, so only the last one starting before
    // `end` can reach into the range.
    pending
        .range(..end)
        .next_back()
        .is_some_and(|(o, d)| o + d.len() as u64 > offset)
}

impl StorageBackend for CoalescingFile {
    fn len(&self) -> io::Result<u64> {
        let mut pending = self.lock();
        self.flush(&mut pending)?;
        self.file.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut pending = self.lock();
        if overlaps(&pending, offset, len) {
            self.flush(&mut pending)?;
        }
        self.file.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pending = self.lock();
        self.flush(&mut pending)?;
        self.file.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        let mut pending = self.lock();
        self.flush(&mut pending)?;
        self.file.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut pending = self.lock();
        if overlaps(&pending, offset, data.len()) {
            self.flush(&mut pending)?;
        }
        pending.insert(offset, data.to_vec());
        Ok(())
    }
}

impl Drop for CoalescingFile {
    /// Writes what is pending (redb syncs before it considers anything
    /// durable; this only keeps the file as complete as redb's own backend
    /// would leave it).
    fn drop(&mut self) {
        let pending = self
            .pending
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut pending = std::mem::take(pending);
        let _ = self.flush(&mut pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, CoalescingFile) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("db"))
            .unwrap();
        (dir, CoalescingFile::new(FileBackend::new(file).unwrap()))
    }

    /// Pending writes are seen by reads (whole, partial or spanning two),
    /// by `len`, and survive a later overlapping write in order.
    #[test]
    fn reads_see_pending_writes() {
        let (_dir, f) = backend();
        f.set_len(16).unwrap();
        f.write(0, &[1; 4]).unwrap();
        f.write(4, &[2; 4]).unwrap();
        f.write(12, &[3; 4]).unwrap();
        assert_eq!(f.lock().len(), 3);
        assert_eq!(f.read(2, 4).unwrap(), [1, 1, 2, 2]);
        assert!(f.lock().is_empty(), "an overlapping read writes first");
        f.write(8, &[4; 4]).unwrap();
        assert_eq!(f.read(0, 2).unwrap(), [1, 1], "a disjoint read waits");
        assert_eq!(f.lock().len(), 1);
        f.write(8, &[5; 8]).unwrap();
        assert_eq!(f.read(0, 16).unwrap()[8..], [5; 8]);
        f.write(16, &[6; 4]).unwrap();
        assert_eq!(f.len().unwrap(), 20);
    }

    /// A sync writes every pending page (adjacent ones in one run) before it
    /// returns; what a fresh handle reads is what was written.
    #[test]
    fn sync_writes_everything() {
        let (dir, f) = backend();
        f.set_len(4096 * 4).unwrap();
        for (i, page) in [0u64, 1, 3].into_iter().enumerate() {
            f.write(page * 4096, &vec![i as u8 + 1; 4096]).unwrap();
        }
        f.sync_data(false).unwrap();
        assert!(f.lock().is_empty());
        let bytes = std::fs::read(dir.path().join("db")).unwrap();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[4096], 2);
        assert_eq!(bytes[2 * 4096], 0);
        assert_eq!(bytes[3 * 4096 + 4095], 3);
    }
}

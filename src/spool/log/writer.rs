//! The write side of the active segment: a file and a buffer of bytes not yet written to it.

use super::*;

/// Write side of the active segment: a file and a buffer of bytes not yet written to it.
pub(super) struct Writer {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) buf: Vec<u8>,
    /// Bytes of the file already written; the buffer continues from here.
    pub(super) written: u64,
}

impl Writer {
    pub(super) fn new(file: File, path: PathBuf, written: u64) -> Self {
        Writer { file, path, buf: Vec::with_capacity(WRITE_BUF), written }
    }

    /// Writes the buffer to the file. On failure the bytes that were written are removed from
    /// the buffer (they are in the file) and the rest is kept for the next attempt.
    pub(super) fn flush(&mut self) -> Result<(), SpoolError> {
        let mut done = 0usize;
        let result = loop {
            if done >= self.buf.len() {
                break Ok(());
            }
            match self.write_some(done) {
                Ok(0) => break Err(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..done.min(self.buf.len()));
        self.written += done as u64;
        if self.buf.is_empty() && self.buf.capacity() > 2 * WRITE_BUF {
            self.buf.shrink_to(WRITE_BUF);
        }
        result.map_err(|e| map_io(&self.path, "writing segment", e))
    }

    pub(super) fn write_some(&self, from: usize) -> io::Result<usize> {
        let chunk = self.buf.get(from..).unwrap_or_default();
        let offset = self.written + from as u64;
        #[cfg(test)]
        let chunk = match fault::WRITE_BUDGET.get() {
            Some(0) => return Err(io::Error::from_raw_os_error(28)),
            Some(budget) => {
                let n = chunk.len().min(budget as usize);
                fault::WRITE_BUDGET.set(Some(budget - n as u64));
                chunk.get(..n).unwrap_or_default()
            }
            None => chunk,
        };
        self.file.write_at(chunk, offset)
    }

    pub(super) fn sync(&self) -> Result<(), SpoolError> {
        #[cfg(test)]
        if fault::FAIL_SYNC.get() {
            return Err(map_io(&self.path, "fsyncing segment", io::Error::from_raw_os_error(5)));
        }
        self.file.sync_data().map_err(|e| map_io(&self.path, "fsyncing segment", e))
    }
}

/// Ensures the bytes of the active segment up to `upto` are in the file.
pub(super) fn flush_upto(writer: Option<&mut Writer>, upto: u64) -> Result<(), SpoolError> {
    match writer {
        Some(w) if w.written < upto => w.flush(),
        _ => Ok(()),
    }
}

/// Fault injection for tests (per test thread).
#[cfg(test)]
pub(crate) mod fault {
    use std::cell::Cell;
    thread_local! {
        /// Bytes that may still be written before writes fail with ENOSPC.
        pub static WRITE_BUDGET: Cell<Option<u64>> = const { Cell::new(None) };
        /// Make every segment fsync fail with EIO.
        pub static FAIL_SYNC: Cell<bool> = const { Cell::new(false) };
    }
}

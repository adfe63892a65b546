//! The segment log's errors, each naming the path involved and what was being done.

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

/// Errors of the segment log. Each names the path involved and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full: unacknowledged data would exceed max_bytes ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("record of {len} bytes is larger than the maximum of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("no space left on the device holding {} (while {op})", .path.display())]
    NoSpace { path: PathBuf, op: &'static str },
    #[error("{} is on a read-only file system (while {op})", .path.display())]
    ReadOnly { path: PathBuf, op: &'static str },
    #[error(
        "permission denied on {} (while {op}); check the owner and mode of the spool directory",
        .path.display()
    )]
    PermissionDenied { path: PathBuf, op: &'static str },
    #[error("{} does not exist (while {op})", .path.display())]
    NotFound { path: PathBuf, op: &'static str },
    #[error("{} is not a directory (while {op})", .path.display())]
    NotADirectory { path: PathBuf, op: &'static str },
    #[error("{} is locked: another process is already using this spool directory", .path.display())]
    Locked { path: PathBuf },
    #[error(
        "corrupt record at byte {offset} of {}; the rest of that segment is skipped",
        .path.display()
    )]
    Corrupt { path: PathBuf, offset: u64 },
    #[error("the spool's thread stopped before it was closed; what it had not written is lost")]
    Stopped,
    #[error("invalid spool options: {reason}")]
    InvalidOptions { reason: &'static str },
    #[error("I/O error while {op} {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Classifies an I/O error into the variant an operator can act on.
pub fn map_io(path: &Path, op: &'static str, source: io::Error) -> SpoolError {
    let path = path.to_path_buf();
    let by_code = match source.raw_os_error() {
        Some(28) | Some(122) => Some(ErrorKind::StorageFull), // ENOSPC, EDQUOT
        Some(30) => Some(ErrorKind::ReadOnlyFilesystem),      // EROFS
        Some(13) | Some(1) => Some(ErrorKind::PermissionDenied), // EACCES, EPERM
        Some(2) => Some(ErrorKind::NotFound),                 // ENOENT
        Some(20) => Some(ErrorKind::NotADirectory),           // ENOTDIR
        _ => None,
    };
    match by_code.unwrap_or_else(|| source.kind()) {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => SpoolError::NoSpace { path, op },
        ErrorKind::ReadOnlyFilesystem => SpoolError::ReadOnly { path, op },
        ErrorKind::PermissionDenied => SpoolError::PermissionDenied { path, op },
        ErrorKind::NotFound => SpoolError::NotFound { path, op },
        ErrorKind::NotADirectory => SpoolError::NotADirectory { path, op },
        _ => SpoolError::Io { path, op, source },
    }
}

pub(super) fn internal(path: &Path, what: &'static str) -> SpoolError {
    SpoolError::Io { path: path.to_path_buf(), op: what, source: io::Error::other("inconsistent internal state") }
}

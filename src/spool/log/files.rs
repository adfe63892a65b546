//! The spool directory's files: segment names, the lock, the `ack` file, creating and probing the
//! directory.

use super::*;

pub(super) fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:0width$}{SEG_SUFFIX}", width = SEG_DIGITS))
}

pub(super) fn parse_seg_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEG_SUFFIX)?;
    if digits.len() != SEG_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn prepare_dir(dir: &Path, sync: bool) -> Result<(), SpoolError> {
    const OP: &str = "opening the spool directory";
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(SpoolError::NotADirectory { path: dir.to_path_buf(), op: OP });
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(map_io(dir, OP, e)),
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            if sync {
                let parent = match dir.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                fsync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(map_io(dir, "creating the spool directory (its parent directory must exist)", e)),
    }
}

pub(super) fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| map_io(&path, "opening the lock file", e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(SpoolError::Locked { path }),
        Err(TryLockError::Error(e)) => Err(map_io(&path, "locking the spool directory", e)),
    }
}

/// Checks that files can be created in `dir`. A full disk is tolerated here: the log can still
/// be read, and appends report it.
pub(super) fn probe_writable(dir: &Path) -> Result<(), SpoolError> {
    let path = dir.join(PROBE_FILE);
    match File::create(&path) {
        Ok(_) => remove_if_present(&path, "removing the write probe"),
        Err(e) => match map_io(&path, "checking that the spool directory is writable", e) {
            SpoolError::NoSpace { .. } => Ok(()),
            other => Err(other),
        },
    }
}

pub(super) fn remove_if_present(path: &Path, op: &'static str) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(map_io(path, op, e)),
    }
}

pub(super) fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| map_io(dir, "fsyncing directory", e))
}

/// Sorted (base, length) of the segment files in `dir`.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, u64)>, SpoolError> {
    let err = |e| map_io(dir, "listing the spool directory", e);
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let Some(base) = entry.file_name().to_str().and_then(parse_seg_name) else {
            continue;
        };
        let meta = entry.metadata().map_err(|e| map_io(&entry.path(), "inspecting segment", e))?;
        if meta.is_file() && base < MAX_POSITION && meta.len() < MAX_POSITION {
            out.push((base, meta.len()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads the durable ack position: `(None, false)` if there is none, `(None, true)` if the
/// file is damaged.
pub(super) fn read_ack(dir: &Path) -> Result<(Option<u64>, bool), SpoolError> {
    let path = dir.join(ACK_FILE);
    let err = |e| map_io(&path, "reading the ack file", e);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((None, false)),
        Err(e) => return Err(err(e)),
    };
    if file.metadata().map_err(err)?.len() != 12 {
        return Ok((None, true));
    }
    let mut pos = [0u8; 8];
    let mut crc = [0u8; 4];
    if !read_full(&mut file, &mut pos).map_err(err)? || !read_full(&mut file, &mut crc).map_err(err)? {
        return Ok((None, true));
    }
    let value = u64::from_le_bytes(pos);
    if crc32c::crc32c(&pos) != u32::from_le_bytes(crc) || value >= MAX_POSITION {
        return Ok((None, true));
    }
    Ok((Some(value), false))
}

pub(super) fn write_ack(dir: &Path, pos: u64, sync: bool) -> Result<(), SpoolError> {
    let tmp = dir.join(ACK_TMP);
    let err = |e| map_io(&tmp, "writing the ack file", e);
    let pos = pos.to_le_bytes();
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&pos);
    bytes[8..].copy_from_slice(&crc32c::crc32c(&pos).to_le_bytes());
    let mut file = File::create(&tmp).map_err(err)?;
    file.write_all(&bytes).map_err(err)?;
    if sync {
        file.sync_all().map_err(err)?;
    }
    drop(file);
    let path = dir.join(ACK_FILE);
    fs::rename(&tmp, &path).map_err(|e| map_io(&path, "replacing the ack file", e))?;
    if sync {
        fsync_dir(dir)?;
    }
    Ok(())
}

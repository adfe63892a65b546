//! Frames on disk: their checksum, reading one at a position, and scanning a segment at open.

use super::*;

/// A buffered read handle positioned inside one segment file.
pub(super) struct Cursor {
    pub(super) base: u64,
    pub(super) off: u64,
    pub(super) reader: BufReader<File>,
}

pub(super) fn frame_crc(len_bytes: &[u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), payload)
}

/// `read_exact`, with end of file reported as `Ok(false)`.
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Positions the cursor in `slot` at `off` of segment `base`, opening the file if needed.
pub(super) fn cursor_at<'a>(
    slot: &'a mut Option<Cursor>,
    dir: &Path,
    base: u64,
    off: u64,
) -> Result<&'a mut Cursor, SpoolError> {
    let c = match slot.take() {
        Some(c) if c.base == base => slot.insert(c),
        _ => {
            let path = seg_path(dir, base);
            let file = File::open(&path).map_err(|e| map_io(&path, "opening segment", e))?;
            slot.insert(Cursor { base, off: 0, reader: BufReader::with_capacity(READ_BUF, file) })
        }
    };
    if c.off != off {
        let moved = match (i64::try_from(off), i64::try_from(c.off)) {
            (Ok(to), Ok(from)) => c.reader.seek_relative(to - from),
            _ => c.reader.seek(SeekFrom::Start(off)).map(|_| ()),
        };
        moved.map_err(|e| map_io(&seg_path(dir, base), "seeking in segment", e))?;
        c.off = off;
    }
    Ok(c)
}

/// Reads the frame at `off` of segment `base`, where `avail` readable bytes remain. Returns
/// the payload length (and the payload if asked for), or `None` if the frame is damaged.
/// Without the payload, the CRC is not checked.
pub(super) fn read_frame(
    dir: &Path,
    slot: &mut Option<Cursor>,
    mut writer: Option<&mut Writer>,
    base: u64,
    off: u64,
    avail: u64,
    want_payload: bool,
) -> Result<Option<(u64, Vec<u8>)>, SpoolError> {
    if avail < HEADER_BYTES {
        return Ok(None);
    }
    flush_upto(writer.as_deref_mut(), off + HEADER_BYTES)?;
    let read_err = |e| map_io(&seg_path(dir, base), "reading segment", e);
    let c = cursor_at(slot, dir, base, off)?;
    let mut header = [0u8; HEADER_BYTES as usize];
    if !read_full(&mut c.reader, &mut header).map_err(read_err)? {
        return Ok(None);
    }
    c.off += HEADER_BYTES;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len_bytes = [l0, l1, l2, l3];
    let len = u64::from(u32::from_le_bytes(len_bytes));
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len > MAX_RECORD_BYTES || HEADER_BYTES + len > avail {
        return Ok(None);
    }
    flush_upto(writer, off + HEADER_BYTES + len)?;
    if !want_payload {
        c.reader.seek_relative(len as i64).map_err(|e| map_io(&seg_path(dir, base), "seeking in segment", e))?;
        c.off += len;
        return Ok(Some((len, Vec::new())));
    }
    let mut payload = vec![0u8; len as usize];
    if !read_full(&mut c.reader, &mut payload).map_err(read_err)? {
        return Ok(None);
    }
    c.off += len;
    if frame_crc(&len_bytes, &payload) != crc {
        return Ok(None);
    }
    Ok(Some((len, payload)))
}

#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) valid_len: u64,
    pub(super) records: u64,
    pub(super) bytes: u64,
    /// Records starting before the ack offset, the end of the last of them, and their bytes.
    pub(super) acked_records: u64,
    pub(super) acked_end: u64,
    pub(super) acked_bytes: u64,
}

/// Validates the frames of a segment file up to `limit` bytes.
pub(super) fn scan_segment(path: &Path, limit: u64, ack_off: u64) -> Result<Scan, SpoolError> {
    let err = |e| map_io(path, "reading segment", e);
    let file = File::open(path).map_err(err)?;
    let mut r = BufReader::with_capacity(READ_BUF, file);
    let mut s = Scan::default();
    let mut chunk = vec![0u8; READ_BUF];
    let mut off = 0u64;
    'frames: while limit - off >= HEADER_BYTES {
        let mut header = [0u8; HEADER_BYTES as usize];
        if !read_full(&mut r, &mut header).map_err(err)? {
            break;
        }
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len_bytes = [l0, l1, l2, l3];
        let len = u64::from(u32::from_le_bytes(len_bytes));
        if len > MAX_RECORD_BYTES || HEADER_BYTES + len > limit - off {
            break;
        }
        let mut crc = crc32c::crc32c(&len_bytes);
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            let Some(part) = chunk.get_mut(..n) else {
                break 'frames;
            };
            if !read_full(&mut r, part).map_err(err)? {
                break 'frames;
            }
            crc = crc32c::crc32c_append(crc, part);
            left -= n;
        }
        if crc != u32::from_le_bytes([c0, c1, c2, c3]) {
            break;
        }
        let frame = HEADER_BYTES + len;
        if off < ack_off {
            s.acked_records += 1;
            s.acked_end = off + frame;
            s.acked_bytes += frame;
        }
        s.records += 1;
        s.bytes += frame;
        off += frame;
    }
    s.valid_len = off;
    Ok(s)
}

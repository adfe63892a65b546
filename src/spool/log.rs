//! Durable append-only segment log, used as a disk spool.
//!
//! # What it owns
//!
//! A [`SegmentLog`] owns one directory. Inside it:
//!
//! - segment files `NNNNNNNNNNNNNNNNNNNN.seg`, each named by the [`Position`] of its first byte,
//!   zero-padded to 20 digits. Positions are byte offsets that grow monotonically across
//!   segments (like Kafka offsets, but counting bytes), and are never reused while the `ack`
//!   file survives;
//! - `ack`: the durable delivery mark, 12 bytes: the little-endian `u64` position of the first
//!   byte not yet acknowledged, followed by the CRC-32C of those 8 bytes. It is replaced
//!   atomically (written to `ack.tmp`, fsynced, renamed, directory fsynced);
//! - `lock`: held with an exclusive advisory lock while the log is open, so two processes (or
//!   two logs in one process) cannot use the same directory at once.
//!
//! Other files in the directory are ignored, as are segment names at or above 2^62.
//!
//! # Record format
//!
//! Each record is a frame: `u32 LE payload length`, `u32 LE CRC-32C` computed over the four
//! length bytes followed by the payload, then the payload. Payloads are opaque bytes of at most
//! [`MAX_RECORD_BYTES`]. A new segment is started when the current one would grow beyond
//! `segment_bytes`; a record larger than that gets a segment of its own.
//!
//! # Promises
//!
//! - **Order.** [`SegmentLog::next`] returns records in append order, including records
//!   appended after the reader caught up (data still in the write buffer is flushed to the file
//!   when the reader reaches it).
//! - **Durability.** With [`Fsync::Always`] a record is on stable storage when `append`
//!   returns. With [`Fsync::Interval`] the active segment is fsynced by [`SegmentLog::tick`]
//!   once the interval has elapsed, a segment is fsynced when it is closed for a new one, and
//!   `sync`/`close` fsync everything. With [`Fsync::Never`] nothing is ever fsynced; data
//!   reaches the operating system when the 64 KiB write buffer fills, on `tick`, `sync`,
//!   `close`, drop, or when the reader needs it.
//! - **At-least-once.** The acknowledged position is kept in memory by [`SegmentLog::ack`] and
//!   written to the `ack` file when whole segments are deleted, on `sync`, on `close`, and (with
//!   `Fsync::Interval`) on `tick` once the interval has elapsed. After a crash, reading resumes
//!   at the last durable ack, so records acknowledged after it are delivered again. A record
//!   is never dropped unless it was acknowledged, dropped by [`SegmentLog::drop_oldest`], lost
//!   to a crash before it was fsynced, or lost to damage on disk.
//! - **Recovery.** [`SegmentLog::open`] scans every segment it keeps. A bad frame (partial
//!   frame, bad CRC, impossible length, zero-filled tail) in the last segment is a torn tail:
//!   the file is truncated there. A bad frame in an earlier segment makes the rest of that
//!   segment unreadable: it is skipped and counted, never an error. Damage found later, while
//!   reading, is reported once as [`SpoolError::Corrupt`] and the rest of that segment is
//!   skipped; the next call continues behind it.
//! - **Disk bound.** [`SegmentLog::live_bytes`] counts the segment bytes from the ack position
//!   to the end of the log (including unreadable regions of damaged segments and bytes still in
//!   the write buffer). `append` refuses a record with [`SpoolError::Full`] when that count plus
//!   the frame would exceed `max_bytes`. The acknowledged head of the oldest segment stays on
//!   disk until the whole segment is acknowledged, so the directory holds at most about
//!   `max_bytes + segment_bytes` (plus one oversized record) of segment data.
//! - **Failures while writing.** If a write fails part-way (for example on a full disk), the
//!   bytes that did reach the file are a prefix of the frames in order; the rest stays in the
//!   write buffer and is written by the next flush, so a partially written frame is completed,
//!   never followed by another frame. The record whose `append` failed is not in the log.
//!   With `Fsync::Always` a failed append (write or fsync) cuts the file back to where the
//!   frame started. If the process ends before the buffer is written, the partial frame is a
//!   torn tail that the next `open` truncates.
//! - **Memory.** O(1) in the number of records: one small summary per segment, a 64 KiB write
//!   buffer and two 64 KiB read buffers (records larger than 64 KiB are buffered whole once).
//!
//! The API is synchronous and takes `&mut self`; run it on a dedicated thread.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod error;
mod files;
mod frame;
mod writer;

use error::internal;
pub use error::{map_io, SpoolError};
use files::*;
use frame::*;
#[cfg(test)]
pub(crate) use writer::fault;
use writer::*;

/// Bytes of the frame header (length + CRC) in front of every payload.
pub const HEADER_BYTES: u64 = 8;
/// Largest payload accepted by [`SegmentLog::append`] (64 MiB).
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

const WRITE_BUF: usize = 64 << 10;
const READ_BUF: usize = 64 << 10;
const ACK_FILE: &str = "ack";
const ACK_TMP: &str = "ack.tmp";
const LOCK_FILE: &str = "lock";
const PROBE_FILE: &str = "write-probe.tmp";
const SEG_SUFFIX: &str = ".seg";
const SEG_DIGITS: usize = 20;
/// Segment names and ack positions at or above this are not trusted (they would leave no room
/// to grow without overflow).
const MAX_POSITION: u64 = 1 << 62;

/// Configuration of a [`SegmentLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Directory owned by the log. Created if missing; its parent must exist.
    pub dir: PathBuf,
    /// Upper bound of [`SegmentLog::live_bytes`]; appends beyond it fail with
    /// [`SpoolError::Full`].
    pub max_bytes: u64,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
    /// When data is forced to stable storage.
    pub fsync: Fsync,
}

/// When appended data is forced to stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Every append is fsynced before it returns.
    Always,
    /// [`SegmentLog::tick`] fsyncs once this much time has passed since the last fsync.
    Interval(Duration),
    /// Never fsync; rely on the operating system.
    Never,
}

/// Global byte offset of a record's frame in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What [`SegmentLog::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Readable records not yet acknowledged; they will be returned by `next`.
    pub records: u64,
    /// Bytes of those records' frames (headers included).
    pub bytes: u64,
    /// Bytes cut from the end of the last segment (partial frame, bad CRC, zero fill).
    pub torn_tail_bytes: u64,
    /// Earlier segments with a bad frame; the rest of each was skipped.
    pub corrupt_segments: u32,
    /// Bytes skipped in those segments.
    pub skipped_bytes: u64,
    /// Segment files kept after deleting the ones entirely below the ack position.
    pub segments: u32,
    /// Position where reading resumes (first byte not acknowledged).
    pub ack: Position,
    /// The `ack` file existed but was unreadable or failed its CRC; reading resumes at the
    /// oldest segment (records may be delivered twice, none is lost).
    pub ack_file_damaged: bool,
}

/// A point in the log: byte position and the sequence number of the record starting there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Mark {
    pos: u64,
    seq: u64,
}

/// Summary of one segment file.
#[derive(Clone, Copy, Debug)]
struct Segment {
    base: u64,
    /// Sequence number of the first record.
    first_seq: u64,
    /// Readable records.
    records: u64,
    /// Length of the readable prefix (whole valid frames).
    valid_len: u64,
    /// Bytes of the file, including the write buffer for the active segment.
    file_len: u64,
    /// No more appends go here (earlier segments, or damage found in the active one).
    sealed: bool,
}

impl Segment {
    fn readable_end(&self) -> u64 {
        self.base.saturating_add(self.valid_len)
    }
    fn end_seq(&self) -> u64 {
        self.first_seq.saturating_add(self.records)
    }
    fn start(&self) -> Mark {
        Mark { pos: self.base, seq: self.first_seq }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Reader,
    Scanner,
}

enum Step {
    /// A valid frame; `end` is the mark behind it.
    Frame { end: Mark, payload: Vec<u8> },
    /// Nothing more to read.
    End,
    /// Damage found; the segment has been sealed at the returned mark.
    Corrupt(SpoolError),
}

/// Durable append-only segment log. See the module documentation.
pub struct SegmentLog {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    fsync: Fsync,
    segs: VecDeque<Segment>,
    /// Sum of `file_len` over `segs`.
    total_bytes: u64,
    /// Writer of the last segment, if it is open for appends.
    writer: Option<Writer>,
    /// Data appended since the last fsync of the active segment.
    dirty: bool,
    last_sync: Instant,
    ack: Mark,
    ack_persisted: Option<u64>,
    read: Mark,
    /// Start and end of the record most recently returned by `next`.
    last_handed: Option<(Mark, Mark)>,
    reader: Option<Cursor>,
    scanner: Option<Cursor>,
    _lock: File,
}

impl SegmentLog {
    /// Opens (or creates) the log in `options.dir`.
    ///
    /// Creates the directory if missing (its parent must exist), takes the directory lock,
    /// checks that files can be created, deletes segments entirely below the durable ack and
    /// scans the others. A torn tail of the last segment is truncated at its first bad frame;
    /// a bad frame in an earlier segment makes the rest of that segment skipped. Both are
    /// counted in the returned [`Recovery`], never an error. Reading resumes at the durable ack.
    pub fn open(options: Options) -> Result<(SegmentLog, Recovery), SpoolError> {
        if options.max_bytes == 0 {
            return Err(SpoolError::InvalidOptions { reason: "max_bytes must be greater than 0" });
        }
        if options.segment_bytes == 0 {
            return Err(SpoolError::InvalidOptions { reason: "segment_bytes must be greater than 0" });
        }
        let dir = options.dir;
        let sync = options.fsync != Fsync::Never;
        prepare_dir(&dir, sync)?;
        let lock = lock_dir(&dir)?;
        probe_writable(&dir)?;
        remove_if_present(&dir.join(ACK_TMP), "removing stale")?;
        let (stored_ack, ack_file_damaged) = read_ack(&dir)?;
        let files = list_segments(&dir)?;

        let mut ack_pos = stored_ack.unwrap_or(0);
        if let Some(&(first, _)) = files.first() {
            ack_pos = ack_pos.max(first);
        }

        // Segments entirely below the ack are delivered: finish their deletion.
        let mut kept: Vec<(u64, u64, Option<u64>)> = Vec::new();
        for (i, &(base, len)) in files.iter().enumerate() {
            let next = files.get(i + 1).map(|&(b, _)| b);
            let below = match next {
                Some(next) => next <= ack_pos,
                None => base.saturating_add(len) < ack_pos,
            };
            if below {
                remove_if_present(&seg_path(&dir, base), "deleting acknowledged segment")?;
            } else {
                kept.push((base, len, next));
            }
        }

        let mut rec = Recovery { ack_file_damaged, ..Recovery::default() };
        let mut segs = VecDeque::with_capacity(kept.len());
        let mut frame_bytes = Vec::with_capacity(kept.len());
        let mut writer = None;
        let mut total_bytes = 0u64;
        let mut seq = 0u64;
        let mut ack = Mark { pos: ack_pos, seq: 0 };
        for (k, &(base, len, next)) in kept.iter().enumerate() {
            let path = seg_path(&dir, base);
            let limit = match next {
                Some(next) => len.min(next - base),
                None => len,
            };
            // The ack lies in the first kept segment (or behind the end of the log).
            let ack_off = if k == 0 { ack_pos.saturating_sub(base) } else { 0 };
            let scan = scan_segment(&path, limit, ack_off)?;
            if k == 0 {
                ack = Mark { pos: base.saturating_add(scan.acked_end), seq: scan.acked_records };
            }
            let mut file_len = len;
            if next.is_none() {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| map_io(&path, "opening segment for appending", e))?;
                if scan.valid_len < len {
                    rec.torn_tail_bytes = len - scan.valid_len;
                    file.set_len(scan.valid_len).map_err(|e| map_io(&path, "truncating the torn tail of", e))?;
                    if sync {
                        file.sync_all().map_err(|e| map_io(&path, "fsyncing segment", e))?;
                    }
                    file_len = scan.valid_len;
                }
                if base.saturating_add(file_len) < ack_pos {
                    // Everything that survived is acknowledged, and positions up to the ack
                    // must not be reused: drop the file and continue at the ack.
                    drop(file);
                    remove_if_present(&path, "deleting acknowledged segment")?;
                    ack = Mark { pos: ack_pos, seq };
                    break;
                }
                writer = Some(Writer::new(file, path, file_len));
            } else if scan.valid_len < len {
                rec.corrupt_segments += 1;
                rec.skipped_bytes += len - scan.valid_len;
            }
            segs.push_back(Segment {
                base,
                first_seq: seq,
                records: scan.records,
                valid_len: scan.valid_len,
                file_len,
                sealed: next.is_some(),
            });
            frame_bytes.push((scan.bytes, scan.acked_bytes));
            total_bytes += file_len;
            seq += scan.records;
        }

        let mut log = SegmentLog {
            dir,
            max_bytes: options.max_bytes,
            segment_bytes: options.segment_bytes,
            fsync: options.fsync,
            segs,
            total_bytes,
            writer,
            dirty: false,
            last_sync: Instant::now(),
            ack,
            ack_persisted: stored_ack,
            read: ack,
            last_handed: None,
            reader: None,
            scanner: None,
            _lock: lock,
        };
        let (ack, _) = log.settle(log.ack);
        log.ack = ack;
        log.read = ack;
        for (seg, &(bytes, acked)) in log.segs.iter().zip(&frame_bytes) {
            if seg.readable_end() <= ack.pos {
                continue;
            }
            rec.bytes += if seg.base < ack.pos { bytes - acked } else { bytes };
        }
        log.release()?;
        rec.records = log.live_records();
        rec.segments = u32::try_from(log.segs.len()).unwrap_or(u32::MAX);
        rec.ack = Position(log.ack.pos);
        Ok((log, rec))
    }

    /// Appends one record and returns its position.
    ///
    /// Fails with [`SpoolError::Full`] if [`live_bytes`](Self::live_bytes) plus the frame would
    /// exceed `max_bytes`, and with [`SpoolError::TooLarge`] if the record can never fit; in
    /// both cases nothing is written. With [`Fsync::Always`] the record is fsynced before this
    /// returns; if that fails the record is removed again and the error returned.
    pub fn append(&mut self, payload: &[u8]) -> Result<Position, SpoolError> {
        let position = self.append_unsynced(payload)?;
        if self.fsync == Fsync::Always {
            let Some(w) = self.writer.as_mut() else {
                return Err(internal(&self.dir, "appending: no active segment"));
            };
            if let Err(e) = w.flush().and_then(|()| w.sync()) {
                // The record is in the active segment, the last one.
                let frame_off = position.0 - self.segs.back().map_or(0, |s| s.base);
                let frame = HEADER_BYTES + payload.len() as u64;
                self.undo_append(frame_off, frame);
                return Err(e);
            }
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        Ok(position)
    }

    /// Like [`append`](Self::append), without the fsync of [`Fsync::Always`]: for a batch of appends
    /// made durable by one [`sync_segment`](Self::sync_segment) (group commit).
    pub fn append_unsynced(&mut self, payload: &[u8]) -> Result<Position, SpoolError> {
        let len = payload.len() as u64;
        if len > MAX_RECORD_BYTES {
            return Err(SpoolError::TooLarge { len, max: MAX_RECORD_BYTES });
        }
        let frame = HEADER_BYTES + len;
        if frame > self.max_bytes {
            return Err(SpoolError::TooLarge { len, max: self.max_bytes.saturating_sub(HEADER_BYTES) });
        }
        if self.live_bytes().saturating_add(frame) > self.max_bytes {
            return Err(SpoolError::Full { max_bytes: self.max_bytes });
        }
        if self.needs_roll(frame) {
            self.roll()?;
        }
        let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segs.back_mut()) else {
            return Err(internal(&self.dir, "appending: no active segment"));
        };
        if !w.buf.is_empty() && w.buf.len() as u64 + frame > WRITE_BUF as u64 {
            w.flush()?;
        }
        let frame_off = seg.file_len;
        let len_bytes = (len as u32).to_le_bytes();
        let crc = frame_crc(&len_bytes, payload);
        w.buf.extend_from_slice(&len_bytes);
        w.buf.extend_from_slice(&crc.to_le_bytes());
        w.buf.extend_from_slice(payload);
        seg.file_len += frame;
        seg.valid_len += frame;
        seg.records += 1;
        self.total_bytes += frame;
        self.dirty = true;
        Ok(Position(seg.base + frame_off))
    }

    /// New limits, from now on: `max_bytes` (a smaller one than what is held makes the next appends
    /// fail with [`SpoolError::Full`] until enough is acknowledged or dropped) and the fsync mode.
    /// What was appended before is fsynced first, so nothing written under a stricter mode is left
    /// waiting under a looser one.
    pub fn set_limits(&mut self, max_bytes: u64, fsync: Fsync) -> Result<(), SpoolError> {
        if max_bytes == 0 {
            return Err(SpoolError::InvalidOptions { reason: "max_bytes must be greater than 0" });
        }
        if fsync != self.fsync {
            self.sync_segment()?;
        }
        self.max_bytes = max_bytes;
        self.fsync = fsync;
        Ok(())
    }

    /// Writes the buffer and fsyncs the active segment (unless [`Fsync::Never`]); the ack position
    /// is left as it is. Makes appends since the last fsync durable.
    pub fn sync_segment(&mut self) -> Result<(), SpoolError> {
        if let Some(w) = self.writer.as_mut() {
            w.flush()?;
            if self.dirty && self.fsync != Fsync::Never {
                w.sync()?;
            }
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Flushes the write buffer; with [`Fsync::Interval`], once the interval has passed since
    /// the last fsync, also fsyncs the active segment and persists the ack position. Call it
    /// from a timer.
    pub fn tick(&mut self, now: Instant) -> Result<(), SpoolError> {
        if let Some(w) = self.writer.as_mut() {
            w.flush()?;
        }
        let Fsync::Interval(every) = self.fsync else { return Ok(()) };
        if now.saturating_duration_since(self.last_sync) >= every {
            if let (true, Some(w)) = (self.dirty, self.writer.as_ref()) {
                w.sync()?;
            }
            self.dirty = false;
            self.last_sync = now;
            self.persist_ack()?;
        }
        Ok(())
    }

    /// Writes the buffer, fsyncs the active segment (unless [`Fsync::Never`]) and persists the
    /// ack position now. For shutdown.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.sync_segment()?;
        self.persist_ack()
    }

    /// Returns the next record not yet handed out, in append order, or `Ok(None)` when caught
    /// up. Independent of acks: reading continues while appending, and [`rewind`](Self::rewind)
    /// goes back to the ack position.
    ///
    /// [`SpoolError::Corrupt`] reports damage found on disk; the rest of that segment is
    /// skipped and the next call continues behind it.
    #[allow(clippy::should_implement_trait, reason = "fallible reads; an Iterator would have to hide the errors")]
    pub fn next(&mut self) -> Result<Option<(Position, Vec<u8>)>, SpoolError> {
        let (start, step) = self.step(Which::Reader, self.read, true)?;
        match step {
            Step::End => {
                self.read = start;
                Ok(None)
            }
            Step::Frame { end, payload } => {
                self.read = end;
                self.last_handed = Some((start, end));
                Ok(Some((Position(start.pos), payload)))
            }
            Step::Corrupt(e) => {
                self.read = start;
                Err(e)
            }
        }
    }

    /// Acknowledges every record whose position is at or before `upto` (normally a position
    /// returned by `next` or `append`). Deletes whole segments that are then entirely
    /// acknowledged, persisting the ack first. Records not yet handed out by `next` that are
    /// acknowledged here are skipped by the reader. Acking an older position does nothing.
    pub fn ack(&mut self, upto: Position) -> Result<(), SpoolError> {
        let upto = upto.0;
        if upto < self.ack.pos {
            return Ok(());
        }
        let target = match self.last_handed {
            Some((start, end)) if start.pos == upto => end,
            _ => self.scan_to(upto)?,
        };
        self.set_ack(target)
    }

    /// Moves the read cursor back to the ack position, so unacknowledged records are returned
    /// again (after a failed delivery).
    pub fn rewind(&mut self) {
        self.read = self.ack;
        self.last_handed = None;
    }

    /// Drops the oldest unacknowledged records until `needed` more bytes fit under
    /// `max_bytes` (or nothing is left): whole segments first, then records at the head of the
    /// oldest segment. Returns (records dropped, bytes of `live_bytes` freed). Dropped records
    /// are treated as acknowledged; the reader skips them.
    pub fn drop_oldest(&mut self, needed: u64) -> Result<(u64, u64), SpoolError> {
        let before_bytes = self.live_bytes();
        let before_seq = self.ack.seq;
        loop {
            let live = self.live_bytes();
            if live.saturating_add(needed) <= self.max_bytes {
                break;
            }
            let shortfall = live.saturating_add(needed) - self.max_bytes;
            // The segment the ack is in: not always the first, which stays (acknowledged to its end)
            // while it is the last one written to.
            let (at, idx) = self.settle(self.ack);
            let whole = idx.and_then(|i| {
                let (seg, next) = (self.segs.get(i)?, self.segs.get(i + 1)?);
                let seg_live = seg.file_len.saturating_sub(at.pos.saturating_sub(seg.base));
                (seg_live <= shortfall).then(|| next.start())
            });
            let target = match whole {
                Some(next_start) => next_start,
                None => {
                    let goal = self.ack.pos.saturating_add(shortfall);
                    let mut m = self.ack;
                    loop {
                        let (start, step) = self.step(Which::Scanner, m, false)?;
                        match step {
                            Step::End => {
                                m = start;
                                break;
                            }
                            Step::Frame { end, .. } => {
                                m = end;
                                if end.pos >= goal {
                                    break;
                                }
                            }
                            Step::Corrupt(_) => m = start,
                        }
                    }
                    m
                }
            };
            let before = self.ack;
            self.set_ack(target)?;
            if self.ack == before {
                break;
            }
        }
        Ok((self.ack.seq.saturating_sub(before_seq), before_bytes.saturating_sub(self.live_bytes())))
    }

    /// Bytes of segment files from the ack position to the end of the log: unacknowledged
    /// records, plus unreadable regions of damaged segments not yet deleted, plus bytes still
    /// in the write buffer. The acknowledged head of the oldest segment is not counted even
    /// though it stays on disk until that whole segment is acknowledged.
    pub fn live_bytes(&self) -> u64 {
        let acked: u64 = self
            .segs
            .iter()
            .take_while(|s| s.base < self.ack.pos)
            .map(|s| (self.ack.pos - s.base).min(s.file_len))
            .sum();
        self.total_bytes.saturating_sub(acked)
    }

    /// Records appended or recovered and not yet acknowledged (or dropped).
    pub fn live_records(&self) -> u64 {
        self.append_seq().saturating_sub(self.ack.seq)
    }

    /// Position of the first record not acknowledged (or the end of the log).
    pub fn acked(&self) -> Position {
        Position(self.ack.pos)
    }

    /// The directory owned by this log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Syncs (see [`sync`](Self::sync)) and releases the directory.
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.sync()
    }

    /// Drops the log as a crash would: buffered data is discarded, nothing is synced.
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        if let Some(w) = self.writer.as_mut() {
            w.buf.clear();
        }
    }

    fn append_seq(&self) -> u64 {
        self.segs.back().map_or(self.ack.seq, Segment::end_seq)
    }

    /// The mark behind the last readable record.
    fn end_mark(&self) -> Mark {
        match self.segs.back() {
            Some(s) => Mark { pos: s.readable_end(), seq: s.end_seq() },
            None => self.ack,
        }
    }

    fn needs_roll(&self, frame: u64) -> bool {
        match (self.segs.back(), self.writer.as_ref()) {
            (Some(s), Some(_)) if !s.sealed => s.file_len > 0 && s.file_len.saturating_add(frame) > self.segment_bytes,
            _ => true,
        }
    }

    /// Starts a new segment at the end of the log.
    fn roll(&mut self) -> Result<(), SpoolError> {
        let base = match self.segs.back() {
            Some(s) => s.base.saturating_add(s.file_len).max(self.ack.pos),
            None => self.ack.pos,
        };
        let sync = self.fsync != Fsync::Never;
        if let Some(w) = self.writer.as_mut() {
            w.flush()?;
            if sync && self.dirty {
                w.sync()?;
            }
            self.dirty = false;
        }
        let path = seg_path(&self.dir, base);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| map_io(&path, "creating segment", e))?;
        if sync {
            fsync_dir(&self.dir)?;
        }
        let first_seq = self.append_seq();
        if let Some(last) = self.segs.back_mut() {
            last.sealed = true;
        }
        self.segs.push_back(Segment { base, first_seq, records: 0, valid_len: 0, file_len: 0, sealed: false });
        self.writer = Some(Writer::new(file, path, 0));
        Ok(())
    }

    /// Removes the frame just appended at `frame_off` after its write or fsync failed.
    fn undo_append(&mut self, frame_off: u64, frame: u64) {
        let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segs.back_mut()) else {
            return;
        };
        let old_len = seg.file_len;
        if w.written > frame_off {
            // Part of the frame reached the file; everything before it did too.
            w.buf.clear();
            match w.file.set_len(frame_off) {
                Ok(()) => {
                    w.written = frame_off;
                    seg.file_len = frame_off;
                }
                Err(_) => {
                    // Cannot cut: keep the garbage out of reach and continue in a new segment.
                    seg.file_len = w.written;
                    seg.sealed = true;
                }
            }
        } else {
            let keep = w.buf.len().saturating_sub(frame as usize);
            w.buf.truncate(keep);
            seg.file_len = old_len - frame;
        }
        seg.valid_len = frame_off;
        seg.records = seg.records.saturating_sub(1);
        self.total_bytes = self.total_bytes - old_len + seg.file_len;
        // Read handles may hold bytes of the removed frame.
        self.reader = None;
        self.scanner = None;
        if self.last_handed.is_some_and(|(_, end)| end.pos > seg.readable_end()) {
            self.last_handed = None;
        }
    }

    /// Moves `m` forward over unreadable regions to where the next frame starts. Returns the
    /// index of the segment holding that frame, or `None` at the end of the log.
    fn settle(&self, mut m: Mark) -> (Mark, Option<usize>) {
        loop {
            let i = self.segs.partition_point(|s| s.base <= m.pos);
            if i == 0 {
                match self.segs.front() {
                    Some(first) => {
                        m = first.start();
                        continue;
                    }
                    None => return (m, None),
                }
            }
            let Some(seg) = self.segs.get(i - 1) else {
                return (m, None);
            };
            if m.pos < seg.readable_end() {
                return (m, Some(i - 1));
            }
            match self.segs.get(i) {
                Some(next) => m = next.start(),
                None => return (m, None),
            }
        }
    }

    /// Reads the frame at (or, past unreadable regions, after) `at` with one of the two read
    /// handles. Returns the mark where the frame starts and what was found there.
    fn step(&mut self, which: Which, at: Mark, payload: bool) -> Result<(Mark, Step), SpoolError> {
        let (m, idx) = self.settle(at);
        let Some((idx, seg)) = idx.and_then(|i| self.segs.get(i).map(|s| (i, *s))) else {
            return Ok((m, Step::End));
        };
        let writer = if idx + 1 == self.segs.len() { self.writer.as_mut() } else { None };
        let slot = match which {
            Which::Reader => &mut self.reader,
            Which::Scanner => &mut self.scanner,
        };
        let off = m.pos - seg.base;
        let avail = seg.valid_len - off;
        match read_frame(&self.dir, slot, writer, seg.base, off, avail, payload) {
            Ok(Some((len, payload))) => {
                let end = Mark { pos: m.pos + HEADER_BYTES + len, seq: m.seq + 1 };
                Ok((m, Step::Frame { end, payload }))
            }
            Ok(None) => Ok((m, Step::Corrupt(self.seal(idx, m)))),
            Err(e) => {
                *slot = None;
                Err(e)
            }
        }
    }

    /// Damage found at `at` in segment `idx` while running: the rest of the segment becomes
    /// unreadable and the records in it are forgotten.
    fn seal(&mut self, idx: usize, at: Mark) -> SpoolError {
        let path = seg_path(&self.dir, at.pos);
        let Some(seg) = self.segs.get_mut(idx) else {
            return internal(&path, "sealing a damaged segment");
        };
        let path = seg_path(&self.dir, seg.base);
        let offset = at.pos - seg.base;
        let old_end = seg.readable_end();
        let lost = seg.end_seq().saturating_sub(at.seq);
        seg.records = seg.records.saturating_sub(lost);
        seg.valid_len = offset;
        seg.sealed = true;
        for later in self.segs.iter_mut().skip(idx + 1) {
            later.first_seq = later.first_seq.saturating_sub(lost);
        }
        for m in [&mut self.read, &mut self.ack] {
            if m.pos > at.pos {
                if m.pos < old_end {
                    *m = at;
                } else {
                    m.seq = m.seq.saturating_sub(lost);
                }
            }
        }
        self.last_handed = None;
        self.reader = None;
        self.scanner = None;
        SpoolError::Corrupt { path, offset }
    }

    /// The mark behind the last record whose position is at or before `upto`, scanning frame
    /// headers from the ack position (whole segments are skipped without reading).
    fn scan_to(&mut self, upto: u64) -> Result<Mark, SpoolError> {
        let end = self.end_mark();
        if upto >= end.pos {
            return Ok(end);
        }
        let mut m = self.ack;
        let i = self.segs.partition_point(|s| s.base <= upto);
        if let Some(seg) = i.checked_sub(1).and_then(|i| self.segs.get(i)).filter(|seg| seg.base > m.pos) {
            m = seg.start();
        }
        loop {
            let (start, step) = self.step(Which::Scanner, m, false)?;
            match step {
                Step::End => return Ok(start),
                Step::Frame { end, .. } if start.pos <= upto => m = end,
                Step::Frame { .. } => return Ok(start),
                Step::Corrupt(_) => m = start,
            }
        }
    }

    /// Moves the ack forward to `target`, moves the reader along if it is behind, and deletes
    /// segments that are now entirely acknowledged.
    fn set_ack(&mut self, target: Mark) -> Result<(), SpoolError> {
        let (target, _) = self.settle(target);
        if target.pos <= self.ack.pos {
            return Ok(());
        }
        self.ack = target;
        if self.read.pos < target.pos {
            self.read = target;
        }
        self.release()
    }

    /// Deletes leading segments entirely below the ack (never the last one), after persisting
    /// the ack.
    fn release(&mut self) -> Result<(), SpoolError> {
        let doomed = self.segs.iter().skip(1).take_while(|s| s.base <= self.ack.pos).count();
        if doomed == 0 {
            return Ok(());
        }
        self.persist_ack()?;
        for _ in 0..doomed {
            let Some(seg) = self.segs.front().copied() else {
                break;
            };
            remove_if_present(&seg_path(&self.dir, seg.base), "deleting acknowledged segment")?;
            self.segs.pop_front();
            self.total_bytes = self.total_bytes.saturating_sub(seg.file_len);
            for slot in [&mut self.reader, &mut self.scanner] {
                if slot.as_ref().is_some_and(|c| c.base == seg.base) {
                    *slot = None;
                }
            }
        }
        Ok(())
    }

    fn persist_ack(&mut self) -> Result<(), SpoolError> {
        if self.ack_persisted == Some(self.ack.pos) {
            return Ok(());
        }
        write_ack(&self.dir, self.ack.pos, self.fsync != Fsync::Never)?;
        self.ack_persisted = Some(self.ack.pos);
        Ok(())
    }
}

impl Drop for SegmentLog {
    /// Best effort: hands buffered data to the operating system. Nothing is fsynced and the ack
    /// is not persisted; use [`SegmentLog::close`] to do that and see errors.
    fn drop(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            let _ = w.flush();
        }
    }
}

#[cfg(test)]
mod tests;

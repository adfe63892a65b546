use super::*;
use proptest::prelude::*;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

fn options(dir: &Path, segment_bytes: u64, max_bytes: u64, fsync: Fsync) -> Options {
    Options { dir: dir.to_path_buf(), max_bytes, segment_bytes, fsync }
}

fn open(o: &Options) -> (SegmentLog, Recovery) {
    SegmentLog::open(o.clone()).unwrap()
}

/// A payload of `len` bytes (at least 8) carrying its index `i`.
fn rec(i: u64, len: usize) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.extend((0..len.saturating_sub(8)).map(|k| (i as usize * 31 + k * 7) as u8));
    v
}

fn index_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().unwrap())
}

fn frame(len: usize) -> u64 {
    HEADER_BYTES + len as u64
}

fn drain(log: &mut SegmentLog) -> Vec<(Position, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(r) = log.next().unwrap() {
        out.push(r);
    }
    out
}

fn drain_indices(log: &mut SegmentLog) -> Vec<u64> {
    drain(log).iter().map(|(_, p)| index_of(p)).collect()
}

fn segments(dir: &Path) -> Vec<(u64, u64)> {
    list_segments(dir).unwrap()
}

fn append_n(log: &mut SegmentLog, range: std::ops::Range<u64>, len: usize) -> Vec<Position> {
    range.map(|i| log.append(&rec(i, len)).unwrap()).collect()
}

fn kind(e: &SpoolError) -> &'static str {
    match e {
        SpoolError::Full { .. } => "Full",
        SpoolError::TooLarge { .. } => "TooLarge",
        SpoolError::NoSpace { .. } => "NoSpace",
        SpoolError::ReadOnly { .. } => "ReadOnly",
        SpoolError::PermissionDenied { .. } => "PermissionDenied",
        SpoolError::NotFound { .. } => "NotFound",
        SpoolError::NotADirectory { .. } => "NotADirectory",
        SpoolError::Locked { .. } => "Locked",
        SpoolError::Corrupt { .. } => "Corrupt",
        SpoolError::InvalidOptions { .. } => "InvalidOptions",
        SpoolError::Io { .. } => "Io",
        SpoolError::Stopped => "Stopped",
    }
}

/// Resets the fault injection of this thread when dropped.
struct Faults;
impl Drop for Faults {
    fn drop(&mut self) {
        fault::WRITE_BUDGET.set(None);
        fault::FAIL_SYNC.set(false);
    }
}

#[test]
fn round_trip_across_rollovers() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 1000, MIB, Fsync::Never);
    let (mut log, rec0) = open(&o);
    assert_eq!(rec0, Recovery::default());
    let lens: Vec<usize> = (0..300u64).map(|i| if i == 150 { 2500 } else { 8 + (i as usize * 37) % 200 }).collect();
    let mut positions = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        positions.push(log.append(&rec(i as u64, len)).unwrap());
    }
    for (i, w) in positions.windows(2).enumerate() {
        assert_eq!(w[1].0, w[0].0 + frame(lens[i]), "positions are contiguous");
    }
    let total: u64 = lens.iter().map(|&l| frame(l)).sum();
    assert_eq!(log.live_records(), 300);
    assert_eq!(log.live_bytes(), total);

    let got = drain(&mut log);
    assert_eq!(got.len(), 300);
    for (i, (pos, payload)) in got.iter().enumerate() {
        assert_eq!(*pos, positions[i]);
        assert_eq!(*payload, rec(i as u64, lens[i]));
    }
    assert!(log.next().unwrap().is_none());

    log.sync().unwrap();
    let files = segments(tmp.path());
    assert!(files.len() > 10, "{files:?}");
    for w in files.windows(2) {
        assert_eq!(w[0].0 + w[0].1, w[1].0, "segment names are positions");
    }
    let big = positions[150].0;
    for &(base, len) in &files {
        if base == big {
            assert_eq!(len, frame(2500), "oversized record has its own segment");
        } else {
            assert!(len <= 1000, "segment {base} has {len} bytes");
        }
    }
    log.close().unwrap();

    let (mut log, r) = open(&o);
    assert_eq!(r.records, 300);
    assert_eq!(r.bytes, total);
    assert_eq!(r.torn_tail_bytes, 0);
    assert_eq!(r.segments as usize, files.len());
    assert_eq!(drain_indices(&mut log), (0..300).collect::<Vec<_>>());
}

#[test]
fn records_larger_than_the_buffers_round_trip() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 512 * 1024, 64 * MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    let lens = [300_000usize, 8, 1_000_000, 70_000, 20];
    for (i, &len) in lens.iter().enumerate() {
        log.append(&rec(i as u64, len)).unwrap();
        // Read each one back while it may still be in the write buffer.
        let (_, p) = log.next().unwrap().unwrap();
        assert_eq!(p, rec(i as u64, len));
    }
    log.close().unwrap();
    let (mut log, r) = open(&o);
    assert_eq!(r.records, 5);
    assert_eq!(r.bytes, lens.iter().map(|&l| frame(l)).sum::<u64>());
    let got = drain(&mut log);
    for (i, (_, p)) in got.iter().enumerate() {
        assert_eq!(*p, rec(i as u64, lens[i]));
    }
    assert_eq!(got.len(), 5);
}

#[test]
fn empty_payloads_round_trip() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 64, MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    let a = log.append(b"").unwrap();
    let b = log.append(b"x").unwrap();
    let c = log.append(b"").unwrap();
    assert_eq!((a.0, b.0, c.0), (0, 8, 17));
    assert_eq!(log.next().unwrap(), Some((a, vec![])));
    assert_eq!(log.next().unwrap(), Some((b, b"x".to_vec())));
    assert_eq!(log.next().unwrap(), Some((c, vec![])));
    assert_eq!(log.next().unwrap(), None);
    log.close().unwrap();
    let (_, r) = open(&o);
    assert_eq!((r.records, r.bytes, r.torn_tail_bytes), (3, 25, 0));
}

#[test]
fn interleaved_append_and_next_see_buffered_data() {
    let tmp = TempDir::new().unwrap();
    let (mut log, _) = open(&options(tmp.path(), 300, MIB, Fsync::Never));
    let mut next_index = 0u64;
    let mut expected = 0u64;
    for round in 0..60u64 {
        for _ in 0..round % 4 {
            log.append(&rec(next_index, 20 + (next_index as usize % 50))).unwrap();
            next_index += 1;
        }
        while let Some((_, p)) = log.next().unwrap() {
            assert_eq!(index_of(&p), expected);
            expected += 1;
        }
        assert_eq!(expected, next_index);
    }
    assert!(segments(tmp.path()).len() > 3);
}

#[test]
fn ack_deletes_whole_segments_and_updates_counts() {
    let tmp = TempDir::new().unwrap();
    let (mut log, _) = open(&options(tmp.path(), 1000, MIB, Fsync::Never));
    let pos = append_n(&mut log, 0..100, 100); // 108-byte frames, 9 per segment
    assert_eq!(drain(&mut log).len(), 100);
    assert_eq!(log.live_records(), 100);
    assert_eq!(log.live_bytes(), 100 * 108);
    let files_before = segments(tmp.path()).len();
    assert_eq!(files_before, 12);

    log.ack(pos[49]).unwrap();
    assert_eq!(log.live_records(), 50);
    assert_eq!(log.live_bytes(), 50 * 108);
    assert_eq!(log.acked(), pos[50]);
    let files = segments(tmp.path());
    assert_eq!(files.len(), files_before - 5, "segments holding records 0..45 are gone");
    assert!(files[0].0 <= pos[50].0 && pos[50].0 < files[1].0);
    assert_eq!(read_ack(tmp.path()).unwrap(), (Some(pos[50].0), false));

    // Acking an older position changes nothing.
    log.ack(pos[10]).unwrap();
    assert_eq!(log.live_records(), 50);

    log.ack(pos[99]).unwrap();
    assert_eq!(log.live_records(), 0);
    assert_eq!(log.live_bytes(), 0);
    assert_eq!(segments(tmp.path()).len(), 1, "the active segment stays");
    assert!(log.next().unwrap().is_none());
}

#[test]
fn ack_accepts_any_position_and_moves_the_reader() {
    let tmp = TempDir::new().unwrap();
    let (mut log, _) = open(&options(tmp.path(), 500, MIB, Fsync::Never));
    let pos = append_n(&mut log, 0..30, 50);
    // Fast path: ack exactly what was just handed out.
    let (p0, _) = log.next().unwrap().unwrap();
    log.ack(p0).unwrap();
    assert_eq!(log.live_records(), 29);
    // A position inside record 3 acknowledges records 0..=3.
    log.ack(Position(pos[3].0 + 1)).unwrap();
    assert_eq!(log.live_records(), 26);
    assert_eq!(log.acked(), pos[4]);
    // Acking beyond the reader skips the acknowledged records.
    log.ack(pos[20]).unwrap();
    assert_eq!(log.live_records(), 9);
    assert_eq!(index_of(&log.next().unwrap().unwrap().1), 21);
    log.ack(Position(u64::MAX)).unwrap();
    assert_eq!(log.live_records(), 0);
    assert_eq!(log.live_bytes(), 0);
    assert!(log.next().unwrap().is_none());
    // Appending after everything was acknowledged.
    let p = log.append(&rec(30, 50)).unwrap();
    assert_eq!(p.0, pos[29].0 + frame(50));
    assert_eq!(drain_indices(&mut log), vec![30]);
}

#[test]
fn reopen_after_close_resumes_after_the_ack() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 1000, MIB, Fsync::Interval(Duration::from_millis(500)));
    let (mut log, _) = open(&o);
    let pos = append_n(&mut log, 0..50, 100);
    for _ in 0..30 {
        log.next().unwrap().unwrap();
    }
    log.ack(pos[19]).unwrap();
    log.close().unwrap();

    let (mut log, r) = open(&o);
    assert_eq!(r.records, 30);
    assert_eq!(r.bytes, 30 * 108);
    assert_eq!(r.ack, pos[20]);
    assert_eq!(log.live_records(), 30);
    assert_eq!(log.live_bytes(), 30 * 108);
    assert_eq!(drain_indices(&mut log), (20..50).collect::<Vec<_>>());
    let more = append_n(&mut log, 50..55, 100);
    assert_eq!(more[0].0, pos[49].0 + 108);
    assert_eq!(drain_indices(&mut log), (50..55).collect::<Vec<_>>());
}

#[test]
fn crash_replays_from_the_last_durable_ack() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 1000, MIB, Fsync::Always);
    let (mut log, _) = open(&o);
    let pos = append_n(&mut log, 0..60, 100); // records 9k..9k+8 in segment k
    assert_eq!(drain(&mut log).len(), 60);
    log.ack(pos[20]).unwrap(); // deletes segments 0 and 1: ack persisted
    assert_eq!(read_ack(tmp.path()).unwrap().0, Some(pos[21].0));
    log.ack(pos[25]).unwrap(); // same segment: kept in memory only
    assert_eq!(log.live_records(), 34);
    log.crash();

    let (mut log, r) = open(&o);
    assert_eq!(r.ack, pos[21]);
    assert_eq!(r.records, 39);
    assert_eq!(r.torn_tail_bytes, 0);
    // Records 21..=25 are delivered again; nothing is lost.
    assert_eq!(drain_indices(&mut log), (21..60).collect::<Vec<_>>());
}

#[test]
fn drop_without_close_writes_buffered_data() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), MIB, MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    append_n(&mut log, 0..10, 100);
    drop(log);
    let (mut log, r) = open(&o);
    assert_eq!(r.records, 10);
    assert_eq!(drain_indices(&mut log), (0..10).collect::<Vec<_>>());
}

/// Writes 30 records over several segments, closes, damages the last segment with `damage`
/// and checks recovery. `damage` returns the expected torn bytes and surviving record count.
fn torn_tail_case(damage: impl FnOnce(&Path, u64) -> (u64, u64)) {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 1000, MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    append_n(&mut log, 0..30, 100);
    log.close().unwrap();
    let &(base, len) = segments(tmp.path()).last().unwrap();
    let last = seg_path(tmp.path(), base);
    let (torn, survivors) = damage(&last, len);

    let (mut log, r) = open(&o);
    assert_eq!(r.torn_tail_bytes, torn);
    assert_eq!(r.records, survivors);
    assert_eq!((r.corrupt_segments, r.skipped_bytes), (0, 0));
    assert_eq!(fs::metadata(&last).unwrap().len(), len.min(fs::metadata(&last).unwrap().len()));
    assert_eq!(drain_indices(&mut log), (0..survivors).collect::<Vec<_>>());
    append_n(&mut log, 100..105, 100);
    assert_eq!(drain_indices(&mut log), (100..105).collect::<Vec<_>>());
    log.close().unwrap();

    let (mut log, r) = open(&o);
    assert_eq!(r.torn_tail_bytes, 0);
    let expected: Vec<u64> = (0..survivors).chain(100..105).collect();
    assert_eq!(drain_indices(&mut log), expected);
}

#[test]
fn torn_tail_partial_frame_is_truncated() {
    torn_tail_case(|last, len| {
        let f = OpenOptions::new().write(true).open(last).unwrap();
        f.set_len(len - 5).unwrap();
        (108 - 5, 29)
    });
}

#[test]
fn torn_tail_garbage_is_truncated() {
    torn_tail_case(|last, _| {
        let mut f = OpenOptions::new().append(true).open(last).unwrap();
        let garbage: Vec<u8> = (0..777u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        f.write_all(&garbage).unwrap();
        (777, 30)
    });
}

#[test]
fn torn_tail_zero_fill_is_truncated() {
    torn_tail_case(|last, _| {
        let mut f = OpenOptions::new().append(true).open(last).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        (4096, 30)
    });
}

#[test]
fn torn_tail_flipped_length_is_truncated() {
    torn_tail_case(|last, len| {
        // Damage the length field of the last frame: the CRC covers it.
        let f = OpenOptions::new().write(true).open(last).unwrap();
        f.write_at(&[0x63], len - 108).unwrap();
        (108, 29)
    });
}

#[test]
fn corrupt_earlier_segment_is_skipped() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 1000, MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    append_n(&mut log, 0..60, 100); // segment k holds records 9k..9k+8
    log.close().unwrap();
    let files = segments(tmp.path());
    let (base, len) = files[2];
    let f = OpenOptions::new().write(true).open(seg_path(tmp.path(), base)).unwrap();
    f.write_at(b"\xff\xee\xdd", 3 * 108 + 20).unwrap(); // inside record 21
    drop(f);

    let (mut log, r) = open(&o);
    assert_eq!(r.corrupt_segments, 1);
    assert_eq!(r.skipped_bytes, len - 3 * 108);
    assert_eq!(r.torn_tail_bytes, 0);
    assert_eq!(r.records, 54);
    assert_eq!(log.live_records(), 54);
    let expected: Vec<u64> = (0..21).chain(27..60).collect();
    assert_eq!(drain_indices(&mut log), expected);
    // The damaged segment goes away once acknowledged past.
    log.ack(Position(u64::MAX)).unwrap();
    assert_eq!(segments(tmp.path()).len(), 1);
    assert_eq!((log.live_records(), log.live_bytes()), (0, 0));
}

#[test]
fn corruption_found_while_reading_is_reported_once_and_skipped() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 1000, MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    append_n(&mut log, 0..40, 100);
    log.close().unwrap();
    let (mut log, _) = open(&o);
    let files = segments(tmp.path());
    let f = OpenOptions::new().write(true).open(seg_path(tmp.path(), files[2].0)).unwrap();
    f.write_at(b"\x00\x00", 2 * 108 + 30).unwrap(); // inside record 20
    drop(f);

    let mut got = Vec::new();
    let mut errors = 0;
    loop {
        match log.next() {
            Ok(Some((_, p))) => got.push(index_of(&p)),
            Ok(None) => break,
            Err(SpoolError::Corrupt { path, offset }) => {
                errors += 1;
                assert_eq!(path, seg_path(tmp.path(), files[2].0));
                assert_eq!(offset, 2 * 108);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(errors, 1);
    assert_eq!(got, (0..20).chain(27..40).collect::<Vec<_>>());
    assert_eq!(log.live_records(), 33);
    log.rewind();
    assert_eq!(drain_indices(&mut log), got);
    log.ack(Position(u64::MAX)).unwrap();
    assert_eq!(log.live_records(), 0);
}

#[test]
fn corruption_in_the_active_segment_moves_appends_to_a_new_segment() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), MIB, MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    append_n(&mut log, 0..10, 100);
    log.tick(Instant::now()).unwrap();
    let f = OpenOptions::new().write(true).open(seg_path(tmp.path(), 0)).unwrap();
    f.write_at(b"\x01", 5 * 108 + 9).unwrap(); // inside record 5
    drop(f);
    for i in 0..5 {
        assert_eq!(index_of(&log.next().unwrap().unwrap().1), i);
    }
    assert!(matches!(log.next(), Err(SpoolError::Corrupt { offset: 540, .. })));
    assert!(log.next().unwrap().is_none());
    assert_eq!(log.live_records(), 5);
    let p = log.append(&rec(10, 100)).unwrap();
    assert_eq!(p, Position(10 * 108), "positions are not reused");
    assert_eq!(segments(tmp.path()).len(), 2);
    assert_eq!(drain_indices(&mut log), vec![10]);
    log.close().unwrap();
    let (mut log, r) = open(&o);
    assert_eq!((r.corrupt_segments, r.skipped_bytes), (1, 5 * 108));
    assert_eq!(drain_indices(&mut log), vec![0, 1, 2, 3, 4, 10]);
}

#[test]
fn full_refuses_without_writing_and_recovers_after_ack() {
    let tmp = TempDir::new().unwrap();
    let (mut log, _) = open(&options(tmp.path(), 500, 2000, Fsync::Never));
    let mut pos = Vec::new();
    let err = loop {
        match log.append(&rec(pos.len() as u64, 100)) {
            Ok(p) => pos.push(p),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SpoolError::Full { max_bytes: 2000 }), "{err}");
    assert_eq!(pos.len(), 18);
    assert_eq!(log.live_bytes(), 18 * 108);
    log.tick(Instant::now()).unwrap();
    let on_disk = segments(tmp.path());
    assert!(matches!(log.append(&rec(99, 100)), Err(SpoolError::Full { .. })));
    log.tick(Instant::now()).unwrap();
    assert_eq!(segments(tmp.path()), on_disk, "nothing written");
    // A small record may still fit.
    assert!(log.append(&rec(98, 40)).is_ok());

    for _ in 0..10 {
        log.next().unwrap().unwrap();
    }
    log.ack(pos[9]).unwrap();
    assert!(segments(tmp.path()).len() < on_disk.len());
    let mut n = 18;
    while log.append(&rec(n, 100)).is_ok() {
        n += 1;
    }
    assert!(n > 18);
    let mut expected: Vec<u64> = (10..18).collect();
    expected.push(98);
    expected.extend(18..n);
    assert_eq!(drain_indices(&mut log), expected);
}

#[test]
fn too_large_records_are_refused() {
    let tmp = TempDir::new().unwrap();
    let (mut log, _) = open(&options(tmp.path(), 500, 1000, Fsync::Never));
    let e = log.append(&vec![0u8; MAX_RECORD_BYTES as usize + 1]).unwrap_err();
    assert!(matches!(e, SpoolError::TooLarge { max: MAX_RECORD_BYTES, .. }), "{e}");
    let e = log.append(&[0u8; 993]).unwrap_err();
    assert!(matches!(e, SpoolError::TooLarge { len: 993, max: 992 }), "{e}");
    log.append(&[7u8; 992]).unwrap();
    assert_eq!(log.next().unwrap().unwrap().1, vec![7u8; 992]);
    assert_eq!(segments(tmp.path()).len(), 1);
}

#[test]
fn drop_oldest_frees_enough_and_counts_exactly() {
    let tmp = TempDir::new().unwrap();
    let max = 2000;
    let (mut log, _) = open(&options(tmp.path(), 500, max, Fsync::Never));
    let pos = append_n(&mut log, 0..18, 100); // 4 records per segment
    for _ in 0..5 {
        log.next().unwrap().unwrap();
    }
    let files_before = segments(tmp.path()).len();

    // Frees within the oldest segment.
    let (records, bytes) = log.drop_oldest(300).unwrap();
    assert_eq!((records, bytes), (3, 324));
    assert_eq!(log.live_records(), 15);
    assert_eq!(log.live_bytes(), 18 * 108 - 324);
    assert!(log.live_bytes() + 300 <= max);
    assert_eq!(log.acked(), pos[3]);
    assert_eq!(segments(tmp.path()).len(), files_before);
    // The reader was ahead of the dropped records: unchanged.
    assert_eq!(index_of(&log.next().unwrap().unwrap().1), 5);

    // Whole segments first, then records of the next one.
    let live = log.live_bytes();
    let (records, bytes) = log.drop_oldest(1000).unwrap();
    assert_eq!((records, bytes), (6, 648));
    assert_eq!(log.live_bytes(), live - 648);
    assert!(log.live_bytes() + 1000 <= max);
    assert_eq!(log.live_records(), 9);
    assert_eq!(segments(tmp.path()).len(), files_before - 2);
    // The reader was behind the new ack: it moved along.
    assert_eq!(index_of(&log.next().unwrap().unwrap().1), 9);

    // Nothing to drop when it already fits.
    assert_eq!(log.drop_oldest(0).unwrap(), (0, 0));
    // More than can ever fit drops everything.
    let (records, _) = log.drop_oldest(max + 1).unwrap();
    assert_eq!(records, 9);
    assert_eq!((log.live_records(), log.live_bytes()), (0, 0));
    assert!(log.next().unwrap().is_none());
    log.append(&rec(50, 100)).unwrap();
    assert_eq!(drain_indices(&mut log), vec![50]);
}

#[test]
fn drop_oldest_in_a_single_active_segment() {
    let tmp = TempDir::new().unwrap();
    let (mut log, _) = open(&options(tmp.path(), MIB, 1080, Fsync::Never));
    append_n(&mut log, 0..10, 100);
    assert!(matches!(log.append(&rec(10, 100)), Err(SpoolError::Full { .. })));
    let (records, bytes) = log.drop_oldest(frame(100)).unwrap();
    assert_eq!((records, bytes), (1, 108));
    log.append(&rec(10, 100)).unwrap();
    assert_eq!(drain_indices(&mut log), (1..11).collect::<Vec<_>>());
}

#[test]
fn rewind_replays_from_the_ack() {
    let tmp = TempDir::new().unwrap();
    let (mut log, _) = open(&options(tmp.path(), 400, MIB, Fsync::Never));
    let pos = append_n(&mut log, 0..20, 60);
    for _ in 0..15 {
        log.next().unwrap().unwrap();
    }
    log.ack(pos[4]).unwrap();
    log.rewind();
    assert_eq!(drain_indices(&mut log), (5..20).collect::<Vec<_>>());
    log.rewind();
    assert_eq!(log.next().unwrap().unwrap().0, pos[5]);
}

#[test]
fn error_mapping_table() {
    let p = Path::new("/spool/x.seg");
    let cases: Vec<(io::Error, &str)> = vec![
        (io::Error::from_raw_os_error(28), "NoSpace"),
        (io::Error::from_raw_os_error(122), "NoSpace"),
        (io::Error::from(ErrorKind::StorageFull), "NoSpace"),
        (io::Error::from(ErrorKind::QuotaExceeded), "NoSpace"),
        (io::Error::from_raw_os_error(30), "ReadOnly"),
        (io::Error::from(ErrorKind::ReadOnlyFilesystem), "ReadOnly"),
        (io::Error::from_raw_os_error(13), "PermissionDenied"),
        (io::Error::from_raw_os_error(1), "PermissionDenied"),
        (io::Error::from(ErrorKind::PermissionDenied), "PermissionDenied"),
        (io::Error::from_raw_os_error(2), "NotFound"),
        (io::Error::from(ErrorKind::NotFound), "NotFound"),
        (io::Error::from_raw_os_error(20), "NotADirectory"),
        (io::Error::from_raw_os_error(5), "Io"),
        (io::Error::other("boom"), "Io"),
        (io::Error::from(ErrorKind::UnexpectedEof), "Io"),
    ];
    for (err, want) in cases {
        let shown = err.to_string();
        let mapped = map_io(p, "writing segment", err);
        assert_eq!(kind(&mapped), want, "{shown}");
        let msg = mapped.to_string();
        assert!(msg.contains("/spool/x.seg"), "{msg}");
        assert!(msg.contains("writing segment"), "{msg}");
    }
    let msg = map_io(p, "writing segment", io::Error::from_raw_os_error(28)).to_string();
    assert_eq!(msg, "no space left on the device holding /spool/x.seg (while writing segment)");
}

#[test]
fn open_with_missing_parent_names_the_path() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("missing").join("spool");
    let e = SegmentLog::open(options(&dir, 1000, MIB, Fsync::Never)).err().unwrap();
    match &e {
        SpoolError::NotFound { path, .. } => assert_eq!(path, &dir),
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(&*dir.to_string_lossy()) && msg.contains("parent"), "{msg}");
}

#[test]
fn open_creates_the_directory() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("spool");
    let (mut log, r) = SegmentLog::open(options(&dir, 1000, MIB, Fsync::Always)).unwrap();
    assert_eq!(r, Recovery::default());
    assert!(dir.is_dir());
    log.append(b"hello").unwrap();
    assert_eq!(log.dir(), dir);
}

#[test]
fn open_on_a_file_is_a_clear_error() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let e = SegmentLog::open(options(&file, 1000, MIB, Fsync::Never)).err().unwrap();
    assert!(matches!(&e, SpoolError::NotADirectory { path, .. } if path == &file), "{e}");
    assert!(e.to_string().contains("is not a directory"));
    // Below a file: the parent is not a directory either.
    let below = file.join("spool");
    let e = SegmentLog::open(options(&below, 1000, MIB, Fsync::Never)).err().unwrap();
    assert_eq!(kind(&e), "NotADirectory", "{e}");
}

#[test]
fn second_open_of_the_same_directory_is_locked() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 1000, MIB, Fsync::Never);
    let (log, _) = open(&o);
    let e = SegmentLog::open(o.clone()).err().unwrap();
    assert!(matches!(e, SpoolError::Locked { .. }), "{e}");
    log.close().unwrap();
    open(&o);
}

#[test]
fn invalid_options_are_refused() {
    let tmp = TempDir::new().unwrap();
    for o in [options(tmp.path(), 0, MIB, Fsync::Never), options(tmp.path(), 100, 0, Fsync::Never)] {
        let e = SegmentLog::open(o).err().unwrap();
        assert_eq!(kind(&e), "InvalidOptions");
    }
}

#[test]
fn stale_files_are_handled() {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("ack.tmp"), b"half written").unwrap();
    fs::write(tmp.path().join("notes.txt"), b"keep me").unwrap();
    fs::write(tmp.path().join("123.seg"), b"not a segment name").unwrap();
    let (mut log, r) = open(&options(tmp.path(), 1000, MIB, Fsync::Never));
    assert_eq!(r.records, 0);
    assert!(!tmp.path().join("ack.tmp").exists());
    assert!(tmp.path().join("notes.txt").exists());
    assert!(tmp.path().join("123.seg").exists());
    log.append(b"12345678").unwrap();
    assert_eq!(drain(&mut log).len(), 1);
}

#[test]
fn damaged_ack_file_replays_everything() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 1000, MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    let pos = append_n(&mut log, 0..20, 100);
    drain(&mut log);
    log.ack(pos[5]).unwrap();
    log.close().unwrap();
    let mut bytes = fs::read(tmp.path().join("ack")).unwrap();
    bytes[0] ^= 1;
    fs::write(tmp.path().join("ack"), &bytes).unwrap();
    let (mut log, r) = open(&o);
    assert!(r.ack_file_damaged);
    assert_eq!(r.ack, Position(0));
    assert_eq!(drain_indices(&mut log), (0..20).collect::<Vec<_>>());
}

#[test]
fn ack_ahead_of_surviving_data_is_never_reused() {
    for garbage_past_ack in [false, true] {
        let tmp = TempDir::new().unwrap();
        let o = options(tmp.path(), MIB, MIB, Fsync::Never);
        let (mut log, _) = open(&o);
        let pos = append_n(&mut log, 0..20, 100);
        drain(&mut log);
        log.ack(pos[19]).unwrap();
        let end = log.acked();
        log.close().unwrap();
        // The data was lost (not fsynced) but the ack survived; maybe the lost blocks read
        // back as zeros reaching past the ack.
        let seg = seg_path(tmp.path(), 0);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(pos[10].0).unwrap();
        if garbage_past_ack {
            f.set_len(pos[10].0 + 3000).unwrap();
        }
        drop(f);

        let (mut log, r) = open(&o);
        assert_eq!(r.ack, end);
        assert_eq!((r.records, r.segments), (0, 0));
        assert_eq!(r.torn_tail_bytes, if garbage_past_ack { 3000 } else { 0 });
        assert!(segments(tmp.path()).is_empty());
        let p = log.append(&rec(100, 100)).unwrap();
        assert_eq!(p, end, "new records start at the ack");
        log.append(&rec(101, 100)).unwrap();
        log.close().unwrap();

        let (mut log, r) = open(&o);
        assert_eq!(r.records, 2);
        assert_eq!(drain_indices(&mut log), vec![100, 101]);
    }
}

#[test]
fn tick_flushes_and_persists_the_ack_on_interval() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), MIB, MIB, Fsync::Interval(Duration::from_secs(3600)));
    let (mut log, _) = open(&o);
    let pos = append_n(&mut log, 0..5, 100);
    assert_eq!(segments(tmp.path())[0].1, 0, "still buffered");
    let now = Instant::now();
    log.tick(now).unwrap();
    assert_eq!(segments(tmp.path())[0].1, 5 * 108);
    drain(&mut log);
    log.ack(pos[2]).unwrap();
    log.tick(now).unwrap();
    assert_eq!(read_ack(tmp.path()).unwrap().0, None);
    log.tick(now + Duration::from_secs(3601)).unwrap();
    assert_eq!(read_ack(tmp.path()).unwrap().0, Some(pos[3].0));
}

#[test]
fn enospc_mid_frame_keeps_the_log_readable() {
    let _faults = Faults;
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 4 * MIB, 4 * MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    append_n(&mut log, 0..10, 1000); // 1008-byte frames, all buffered
    fault::WRITE_BUDGET.set(Some(5000));
    let e = log.tick(Instant::now()).unwrap_err();
    assert!(matches!(e, SpoolError::NoSpace { .. }), "{e}");
    assert_eq!(segments(tmp.path())[0].1, 5000, "a partial frame reached the file");
    // Complete frames before it can be read; the next one needs the disk.
    for i in 0..4 {
        assert_eq!(index_of(&log.next().unwrap().unwrap().1), i);
    }
    assert!(matches!(log.next(), Err(SpoolError::NoSpace { .. })));
    // Appends that need the buffer written fail and leave nothing behind.
    let mut accepted: Vec<u64> = (0..10).collect();
    let mut failed = 0;
    for i in 10..100 {
        match log.append(&rec(i, 1000)) {
            Ok(_) => accepted.push(i),
            Err(SpoolError::NoSpace { .. }) => failed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(failed > 0);
    fault::WRITE_BUDGET.set(None);
    log.append(&rec(500, 1000)).unwrap();
    accepted.push(500);
    assert_eq!(drain_indices(&mut log), accepted[4..].to_vec());
    log.close().unwrap();
    let (mut log, r) = open(&o);
    assert_eq!(r.torn_tail_bytes, 0);
    assert_eq!(drain_indices(&mut log), accepted);
}

#[test]
fn enospc_mid_frame_then_crash_truncates_the_partial_frame() {
    let _faults = Faults;
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 4 * MIB, 4 * MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    append_n(&mut log, 0..10, 1000);
    fault::WRITE_BUDGET.set(Some(5000));
    assert!(log.sync().is_err());
    log.crash();
    fault::WRITE_BUDGET.set(None);
    let (mut log, r) = open(&o);
    assert_eq!(r.torn_tail_bytes, 5000 - 4 * 1008);
    assert_eq!(r.records, 4);
    log.append(&rec(10, 1000)).unwrap();
    assert_eq!(drain_indices(&mut log), vec![0, 1, 2, 3, 10]);
}

#[test]
fn enospc_with_fsync_always_cuts_the_frame() {
    let _faults = Faults;
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 4 * MIB, 4 * MIB, Fsync::Always);
    let (mut log, _) = open(&o);
    append_n(&mut log, 0..3, 100);
    assert_eq!(log.next().unwrap().unwrap().0, Position(0)); // reader holds a buffer
    fault::WRITE_BUDGET.set(Some(50));
    assert!(matches!(log.append(&rec(3, 1000)), Err(SpoolError::NoSpace { .. })));
    assert_eq!(segments(tmp.path())[0].1, 3 * 108, "partial frame cut");
    assert_eq!(log.live_records(), 3);
    assert_eq!(log.live_bytes(), 3 * 108);
    fault::WRITE_BUDGET.set(None);
    let p = log.append(&rec(4, 1000)).unwrap();
    assert_eq!(p, Position(3 * 108));
    assert_eq!(drain_indices(&mut log), vec![1, 2, 4]);
    log.crash();
    let (mut log, r) = open(&o);
    assert_eq!(r.torn_tail_bytes, 0);
    assert_eq!(drain_indices(&mut log), vec![0, 1, 2, 4]);
}

#[test]
fn failed_fsync_with_fsync_always_removes_the_record() {
    let _faults = Faults;
    let tmp = TempDir::new().unwrap();
    let (mut log, _) = open(&options(tmp.path(), 4 * MIB, 4 * MIB, Fsync::Always));
    append_n(&mut log, 0..2, 100);
    fault::FAIL_SYNC.set(true);
    let e = log.append(&rec(2, 100)).unwrap_err();
    assert!(matches!(e, SpoolError::Io { op: "fsyncing segment", .. }), "{e}");
    assert_eq!(segments(tmp.path())[0].1, 2 * 108);
    fault::FAIL_SYNC.set(false);
    append_n(&mut log, 3..4, 100);
    assert_eq!(drain_indices(&mut log), vec![0, 1, 3]);
    assert_eq!(log.live_records(), 3);
}

#[test]
fn live_bytes_counts_buffered_and_acked_head() {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), 1000, MIB, Fsync::Never);
    let (mut log, _) = open(&o);
    let pos = append_n(&mut log, 0..5, 92); // 100-byte frames
    assert_eq!(log.live_bytes(), 500);
    log.ack(pos[1]).unwrap();
    assert_eq!(log.live_bytes(), 300);
    log.close().unwrap();
    let (log, r) = open(&o);
    assert_eq!((r.records, r.bytes), (3, 300));
    assert_eq!(log.live_bytes(), 300);
    assert_eq!(log.live_records(), 3);
}

// ---------------------------------------------------------------------------------------------
// Model-based property test.

#[derive(Clone, Debug)]
enum Op {
    Append(usize),
    Next,
    /// Acknowledge one of the handed-out, unacknowledged records (chosen by the number).
    Ack(usize),
    Rewind,
    Tick,
    Sync,
    DropOldest(u64),
    Close,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (8usize..300).prop_map(Op::Append),
        6 => Just(Op::Next),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::Rewind),
        1 => Just(Op::Tick),
        1 => Just(Op::Sync),
        1 => (0u64..600).prop_map(Op::DropOldest),
        1 => Just(Op::Close),
        1 => Just(Op::Crash),
    ]
}

fn fsync_mode() -> impl Strategy<Value = Fsync> {
    prop_oneof![Just(Fsync::Always), Just(Fsync::Never), Just(Fsync::Interval(Duration::ZERO)),]
}

struct Model {
    /// Every record appended, by index: (position, payload).
    records: Vec<(Position, Vec<u8>)>,
    /// Records `..acked` are acknowledged in memory.
    acked: usize,
    /// Records `..durable` are known to be acknowledged on disk.
    durable: usize,
    /// Next record `next` must return.
    read: usize,
}

fn run_model(segment_bytes: u64, max_bytes: u64, fsync: Fsync, ops: Vec<Op>) {
    let tmp = TempDir::new().unwrap();
    let o = options(tmp.path(), segment_bytes, max_bytes, fsync);
    let (mut log, _) = open(&o);
    let mut m = Model { records: Vec::new(), acked: 0, durable: 0, read: 0 };
    for op in ops {
        match op {
            Op::Append(len) => {
                let payload = rec(m.records.len() as u64, len);
                let fits = log.live_bytes() + frame(len) <= max_bytes;
                match log.append(&payload) {
                    Ok(p) => {
                        assert!(fits);
                        if let Some((last, _)) = m.records.last() {
                            assert!(p > *last, "positions strictly increase");
                        }
                        m.records.push((p, payload));
                    }
                    Err(SpoolError::Full { .. }) => assert!(!fits),
                    Err(e) => panic!("append: {e}"),
                }
            }
            Op::Next => match log.next().unwrap() {
                Some(got) => {
                    assert!(m.read < m.records.len(), "unexpected record");
                    assert_eq!(got, m.records[m.read], "record {}", m.read);
                    m.read += 1;
                }
                None => assert_eq!(m.read, m.records.len(), "record missing"),
            },
            Op::Ack(k) => {
                if m.read > m.acked {
                    let i = m.acked + k % (m.read - m.acked);
                    log.ack(m.records[i].0).unwrap();
                    m.acked = i + 1;
                } else if m.acked > 0 {
                    log.ack(m.records[m.acked - 1].0).unwrap();
                }
            }
            Op::Rewind => {
                log.rewind();
                m.read = m.acked;
            }
            Op::Tick => log.tick(Instant::now()).unwrap(),
            Op::Sync => {
                log.sync().unwrap();
                m.durable = m.acked;
            }
            Op::DropOldest(needed) => {
                let (live_r, live_b) = (log.live_records(), log.live_bytes());
                let (records, bytes) = log.drop_oldest(needed).unwrap();
                assert_eq!(log.live_records(), live_r - records);
                assert_eq!(log.live_bytes(), live_b - bytes);
                assert!(log.live_bytes() + needed <= max_bytes || log.live_records() == 0);
                m.acked += records as usize;
                m.read = m.read.max(m.acked);
            }
            Op::Close => {
                log.close().unwrap();
                let (l, r) = open(&o);
                log = l;
                assert_eq!(r.records as usize, m.records.len() - m.acked);
                assert_eq!(r.torn_tail_bytes + r.skipped_bytes, 0);
                m.read = m.acked;
                m.durable = m.acked;
            }
            Op::Crash => {
                if fsync == Fsync::Always {
                    log.crash();
                } else {
                    drop(log); // a process crash after the buffer reached the OS
                }
                let (l, r) = open(&o);
                log = l;
                let resume = m.records.len() - r.records as usize;
                assert!(
                    m.durable <= resume && resume <= m.acked,
                    "resume at {resume}, durable {}, acked {}",
                    m.durable,
                    m.acked
                );
                if let Some((p, _)) = m.records.get(resume) {
                    assert_eq!(r.ack, *p);
                }
                m.acked = resume;
                m.durable = resume;
                m.read = resume;
            }
        }
        assert_eq!(log.live_records() as usize, m.records.len() - m.acked);
    }
    // Everything not acknowledged is still there, in order.
    log.rewind();
    let rest: Vec<_> = drain(&mut log);
    assert_eq!(rest, m.records[m.acked..].to_vec());
    log.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn model(
        segment_bytes in prop_oneof![Just(150u64), Just(700), Just(4096)],
        max_bytes in prop_oneof![Just(1500u64), Just(5000), Just(MIB)],
        fsync in fsync_mode(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run_model(segment_bytes, max_bytes, fsync, ops);
    }
}

#[test]
/// The first segment acknowledged to its end and kept (it was the last one written when acknowledged):
/// dropping the oldest must go on from the segment after it.
fn drop_oldest_past_a_fully_acknowledged_first_segment() {
    use Op::*;
    let ops =
        vec![Append(8), Next, Ack(0), Append(276), Append(86), Append(269), Append(289), Append(94), DropOldest(447)];
    run_model(150, 1500, Fsync::Always, ops);
}

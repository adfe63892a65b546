//! The spool's own thread: the segment log's disk I/O (appends, fsyncs, reads, deletions) never runs
//! on the message path's thread. The path sends commands and never waits for them; the thread answers
//! with events.
//!
//! - [`Handle::append`] queues a record. Appends are counted in the order they were sent;
//!   [`Event::Stored`] says how many are in the log and how many of those are durable (fsynced, or as
//!   far as the fsync setting promises), so that the path can settle messages once their records are
//!   safe.
//! - When the log is full (`max_bytes`) or the disk is, `when_full` decides: [`WhenFull::Block`] keeps
//!   the records in memory, in order, says [`Event::Full`] (the path stops taking messages: push back
//!   to MQTT) and [`Event::Room`] once they are all in the log; [`WhenFull::DropOldest`] drops the
//!   oldest records to make room and counts them ([`Event::Dropped`]).
//! - [`Handle::want`] asks for that many more records, returned in log order ([`Event::Records`]) as
//!   they can be read, including records appended later; [`Handle::ack`] says what Kafka has taken
//!   (everything up to a position), [`Handle::rewind`] reads again from there.
//! - An I/O error is an [`Event::Failed`] naming the path; the record stays queued and is tried again
//!   at the next tick. Damage found while reading is an [`Event::Corrupt`]; reading goes on behind it.
//! - [`Handle::close`] writes and fsyncs everything and stops the thread (shutdown).
//!
//! Records that wait for room are held in memory: the path must stop appending once told
//! [`Event::Full`], so that they stay few.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::log::{Fsync, Options, Position, Recovery, SegmentLog, SpoolError, HEADER_BYTES};

/// What to do when a record does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Keep it in memory, in order, and push back (nothing dropped).
    Block,
    /// Drop the oldest spooled records to make room, and count them.
    DropOldest,
}

/// What the thread reports.
#[derive(Debug)]
pub enum Event {
    /// Of the appends sent so far, `stored` are in the log and `durable` of them are as safe as the
    /// fsync setting makes them (both counts since the start).
    Stored { stored: u64, durable: u64 },
    /// Records asked for with [`Handle::want`], in log order.
    Records(Vec<(Position, Vec<u8>)>),
    /// Records were asked for and every record stored so far has been handed out: `stored` appends
    /// (counted as in [`Event::Stored`]), nothing waiting for room. Said once each time it becomes so.
    CaughtUp { stored: u64 },
    /// Records dropped to make room (`when_full: drop_oldest`).
    Dropped { records: u64, bytes: u64 },
    /// Appends wait in memory for room (`when_full: block`).
    Full,
    /// Every waiting append is in the log again.
    Room,
    /// Writing, syncing or deleting failed; what failed is tried again.
    Failed(SpoolError),
    /// Damage found while reading; the rest of that segment is skipped.
    Corrupt(SpoolError),
}

enum Command {
    Append(Vec<u8>),
    Want(usize),
    Ack(Position),
    Rewind,
    /// New settings (a reload): `max_bytes`, fsync, when full.
    Settings {
        max_bytes: u64,
        fsync: Fsync,
        when_full: WhenFull,
    },
    Close(std_mpsc::Sender<Result<usize, SpoolError>>),
}

/// The path's side of the spool thread.
pub struct Handle {
    commands: std_mpsc::Sender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    thread: Option<JoinHandle<()>>,
    gauges: Arc<Gauges>,
}

/// What the log holds, as of the thread's last round: for metrics, read whenever someone looks.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Bytes not acknowledged (what counts against `max_bytes`).
    pub bytes: AtomicU64,
    /// Records not acknowledged.
    pub records: AtomicU64,
    /// Records not acknowledged that are not fsynced yet: what a power cut now would lose of the spool
    /// (with `fsync: never`, every record not acknowledged).
    pub not_durable: AtomicU64,
    /// The most [`not_durable`](Self::not_durable) has been since the spool was opened.
    pub not_durable_max: AtomicU64,
    /// `max_bytes` in effect.
    pub max_bytes: AtomicU64,
}

/// Sends new settings to the spool's thread (see [`Handle::settings`]).
#[derive(Clone)]
pub struct Settings(std_mpsc::Sender<Command>);

impl Settings {
    /// From the next append on: `max_bytes`, the fsync mode, what to do when full.
    pub fn apply(&self, max_bytes: u64, fsync: Fsync, when_full: WhenFull) {
        let _ = self.0.send(Command::Settings { max_bytes, fsync, when_full });
    }
}

/// How often the thread wakes up with nothing to do: fsync at the interval, retry what failed.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// Records handed over in one [`Event::Records`], at most.
const READ_BATCH: usize = 512;

/// Opens the log (recovering what a crash left) and starts its thread.
pub fn start(options: Options, when_full: WhenFull) -> Result<(Handle, Recovery), SpoolError> {
    let (fsync, max_bytes) = (options.fsync, options.max_bytes);
    let (log, recovery) = SegmentLog::open(options)?;
    let (commands, rx) = std_mpsc::channel();
    let (events, events_rx) = mpsc::unbounded_channel();
    let gauges = Arc::new(Gauges {
        bytes: AtomicU64::new(log.live_bytes()),
        records: AtomicU64::new(log.live_records()),
        max_bytes: AtomicU64::new(max_bytes),
        ..Gauges::default()
    });
    let mut worker = Worker {
        gauges: gauges.clone(),
        log,
        fsync,
        when_full,
        events,
        waiting: VecDeque::new(),
        full: false,
        stored: 0,
        durable: 0,
        unsynced: 0,
        reported: (0, 0),
        credit: 0,
        said_caught_up: false,
        last_sync: Instant::now(),
        retry_failed: false,
    };
    let thread = std::thread::Builder::new()
        .name("spool".into())
        .spawn(move || worker.run(rx))
        .map_err(|e| SpoolError::Io { path: Default::default(), op: "starting the spool thread", source: e })?;
    Ok((Handle { commands, events: events_rx, thread: Some(thread), gauges }, recovery))
}

impl Handle {
    /// Queues a record for the log.
    pub fn append(&self, record: Vec<u8>) {
        let _ = self.commands.send(Command::Append(record));
    }

    /// Asks for `n` more records.
    pub fn want(&self, n: usize) {
        let _ = self.commands.send(Command::Want(n));
    }

    /// Everything up to and including the record at `upto` is in Kafka.
    pub fn ack(&self, upto: Position) {
        let _ = self.commands.send(Command::Ack(upto));
    }

    /// Reads again from the first record not acknowledged (records asked for and not delivered).
    pub fn rewind(&self) {
        let _ = self.commands.send(Command::Rewind);
    }

    /// A sender of new settings to the thread, for whoever follows the configuration.
    pub fn settings(&self) -> Settings {
        Settings(self.commands.clone())
    }

    /// The next event; `None` once the thread is gone.
    pub async fn event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The log's size, kept up to date by the thread.
    pub fn gauges(&self) -> Arc<Gauges> {
        self.gauges.clone()
    }

    /// An event if there is one now.
    pub fn try_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Writes and fsyncs everything and stops the thread; the records that waited for room and still
    /// did not fit are counted (lost). Blocks: for shutdown.
    pub fn close(mut self) -> Result<usize, SpoolError> {
        let (tx, rx) = std_mpsc::channel();
        let _ = self.commands.send(Command::Close(tx));
        // No answer: the thread is gone (it panicked), and with it whatever it had not written.
        let result = rx.recv().unwrap_or(Err(SpoolError::Stopped));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }
}

struct Worker {
    log: SegmentLog,
    gauges: Arc<Gauges>,
    fsync: Fsync,
    when_full: WhenFull,
    events: mpsc::UnboundedSender<Event>,
    /// Appends not in the log yet (no room, or a failed write), in order.
    waiting: VecDeque<Vec<u8>>,
    full: bool,
    stored: u64,
    durable: u64,
    /// `fsync: always`: appended, waiting for the fsync that makes them stored.
    unsynced: u64,
    reported: (u64, u64),
    credit: usize,
    /// [`Event::CaughtUp`] was said, and nothing has been stored since.
    said_caught_up: bool,
    last_sync: Instant,
    /// A write failed: try the waiting appends again at the next tick, not at every command.
    retry_failed: bool,
}

impl Worker {
    fn tick_period(&self) -> Duration {
        match self.fsync {
            Fsync::Interval(every) => every.min(IDLE_TICK),
            Fsync::Always | Fsync::Never => IDLE_TICK,
        }
    }

    fn run(&mut self, commands: std_mpsc::Receiver<Command>) {
        let mut next_tick = Instant::now() + self.tick_period();
        loop {
            let tick = self.tick_period();
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match commands.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.close();
                    return;
                }
            };
            // Everything queued, in one go: one flush and one event for a burst.
            let mut next = first;
            while let Some(command) = next.take().or_else(|| commands.try_recv().ok()) {
                if let Command::Close(reply) = command {
                    let _ = reply.send(self.close());
                    return;
                }
                self.command(command);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + tick;
                // The interval's fsync on time, not up to a tick late: what a power cut can lose is what
                // arrives within one interval.
                // (After a failed fsync the deadline has passed: the next try is a tick away.)
                if let Fsync::Interval(every) = self.fsync {
                    let due = self.last_sync + every;
                    if due > now {
                        next_tick = next_tick.min(due);
                    }
                }
            }
            self.serve_reads();
            self.report();
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Append(record) => {
                self.waiting.push_back(record);
                if !self.retry_failed {
                    self.store_waiting();
                }
            }
            Command::Want(n) => self.credit = self.credit.saturating_add(n),
            Command::Ack(upto) => {
                if let Err(e) = self.log.ack(upto) {
                    self.send(Event::Failed(e));
                }
                // Room may have come free.
                if self.full {
                    self.store_waiting();
                }
            }
            Command::Rewind => self.log.rewind(),
            Command::Settings { max_bytes, fsync, when_full } => {
                // What `always` appended and did not sync yet, under the mode it was appended in.
                self.sync_appended();
                let mode_changed = fsync != self.fsync;
                match self.log.set_limits(max_bytes, fsync) {
                    Ok(()) => {
                        self.fsync = fsync;
                        self.when_full = when_full;
                        if mode_changed {
                            // Everything appended so far was fsynced at the change.
                            self.durable = self.stored;
                        }
                        self.gauges.max_bytes.store(max_bytes, Relaxed);
                        // More room, or another answer to no room: try what waits.
                        self.store_waiting();
                    }
                    Err(e) => self.send(Event::Failed(e)),
                }
            }
            Command::Close(_) => {}
        }
    }

    /// Appends what waits, in order, until one does not fit. With `fsync: always` the appends of one
    /// go share one fsync (group commit), and count as stored once it is done.
    fn store_waiting(&mut self) {
        let always = self.fsync == Fsync::Always;
        while let Some(record) = self.waiting.front() {
            let appended = if always { self.log.append_unsynced(record) } else { self.log.append(record) };
            match appended {
                Ok(_) => {
                    self.waiting.pop_front();
                    self.said_caught_up = false;
                    if always {
                        self.unsynced += 1;
                    } else {
                        self.stored += 1;
                        if self.fsync == Fsync::Never {
                            // As durable as it will ever be.
                            self.durable = self.stored;
                        }
                    }
                }
                Err(e @ (SpoolError::Full { .. } | SpoolError::NoSpace { .. })) => {
                    let needed = record.len() as u64 + HEADER_BYTES;
                    if self.when_full == WhenFull::DropOldest && self.drop_oldest(needed) {
                        continue;
                    }
                    if let SpoolError::NoSpace { .. } = e {
                        self.send(Event::Failed(e));
                        self.retry_failed = true;
                    }
                    if !self.full {
                        self.full = true;
                        self.send(Event::Full);
                    }
                    self.sync_appended();
                    return;
                }
                Err(e) => {
                    // Not a matter of room (EIO, a record over the log's limit): say so, try later.
                    self.send(Event::Failed(e));
                    self.retry_failed = true;
                    self.sync_appended();
                    return;
                }
            }
        }
        if !self.sync_appended() {
            return;
        }
        self.retry_failed = false;
        if self.full {
            self.full = false;
            self.send(Event::Room);
        }
    }

    /// `fsync: always`: one fsync for the appends not yet synced, which then count as stored and
    /// durable. False if it failed (said, and tried again at the next tick).
    fn sync_appended(&mut self) -> bool {
        if self.unsynced == 0 {
            return true;
        }
        match self.log.sync_segment() {
            Ok(()) => {
                self.stored += self.unsynced;
                self.durable = self.stored;
                self.unsynced = 0;
                true
            }
            Err(e) => {
                self.send(Event::Failed(e));
                self.retry_failed = true;
                false
            }
        }
    }

    /// Drops the oldest records for `needed` bytes; false if nothing could be dropped.
    fn drop_oldest(&mut self, needed: u64) -> bool {
        match self.log.drop_oldest(needed) {
            Ok((0, _)) => false,
            Ok((records, bytes)) => {
                self.send(Event::Dropped { records, bytes });
                true
            }
            Err(e) => {
                self.send(Event::Failed(e));
                false
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        let result = match self.fsync {
            // At the interval: everything stored so far is fsynced, and the ack mark written.
            Fsync::Interval(every) if now.saturating_duration_since(self.last_sync) >= every => {
                self.log.sync().map(|()| {
                    self.last_sync = now;
                    self.durable = self.stored;
                })
            }
            // Otherwise the write buffer reaches the operating system.
            _ => self.log.tick(now),
        };
        if let Err(e) = result {
            self.send(Event::Failed(e));
        }
        if self.retry_failed || self.full {
            self.retry_failed = false;
            self.store_waiting();
        }
    }

    fn serve_reads(&mut self) {
        while self.credit > 0 {
            let mut batch = Vec::new();
            let mut at_end = false;
            while self.credit > 0 && batch.len() < READ_BATCH {
                match self.log.next() {
                    Ok(Some(record)) => {
                        batch.push(record);
                        self.credit -= 1;
                    }
                    Ok(None) => {
                        at_end = true;
                        break;
                    }
                    Err(e @ SpoolError::Corrupt { .. }) => self.send(Event::Corrupt(e)),
                    Err(e) => {
                        self.send(Event::Failed(e));
                        break;
                    }
                }
            }
            let read_none = batch.is_empty();
            if !read_none {
                self.send(Event::Records(batch));
            }
            if at_end {
                if self.waiting.is_empty() && !self.said_caught_up {
                    self.said_caught_up = true;
                    self.send(Event::CaughtUp { stored: self.stored });
                }
                return;
            }
            if read_none {
                return;
            }
        }
    }

    fn report(&mut self) {
        let records = self.log.live_records();
        self.gauges.bytes.store(self.log.live_bytes(), Relaxed);
        self.gauges.records.store(records, Relaxed);
        let not_durable = match self.fsync {
            Fsync::Never => records,
            // Appended since the last fsync, of those Kafka does not have yet. A segment closed for a new
            // one is fsynced then, earlier than counted here: an upper bound.
            Fsync::Interval(_) | Fsync::Always => (self.stored - self.durable).min(records),
        };
        self.gauges.not_durable.store(not_durable, Relaxed);
        self.gauges.not_durable_max.fetch_max(not_durable, Relaxed);
        if (self.stored, self.durable) != self.reported {
            self.reported = (self.stored, self.durable);
            self.send(Event::Stored { stored: self.stored, durable: self.durable });
        }
    }

    fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Stores what waits if it can and syncs; the records that still did not fit, counted.
    fn close(&mut self) -> Result<usize, SpoolError> {
        self.store_waiting();
        self.log.sync()?;
        Ok(self.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &std::path::Path, max_bytes: u64, fsync: Fsync) -> Options {
        Options { dir: dir.join("spool"), max_bytes, segment_bytes: 4096, fsync }
    }

    async fn event(h: &mut Handle) -> Event {
        tokio::time::timeout(Duration::from_secs(10), h.event()).await.expect("an event within 10 s").expect("open")
    }

    /// Events until one that `done` accepts; what else came, in order.
    async fn until(h: &mut Handle, mut done: impl FnMut(&Event) -> bool) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let e = event(h).await;
            if done(&e) {
                return seen;
            }
            seen.push(e);
        }
    }

    /// `n` records, as they are read (other events are left out).
    async fn read(h: &mut Handle, n: usize) -> Vec<(Position, Vec<u8>)> {
        let mut read = Vec::new();
        while read.len() < n {
            if let Event::Records(batch) = event(h).await {
                read.extend(batch);
            }
        }
        assert_eq!(read.len(), n, "no more than asked for");
        read
    }

    fn record(i: u32) -> Vec<u8> {
        format!("record {i:05}").into_bytes()
    }

    fn values(read: &[(Position, Vec<u8>)]) -> Vec<Vec<u8>> {
        read.iter().map(|(_, v)| v.clone()).collect()
    }

    #[tokio::test]
    async fn records_come_back_in_order_as_they_are_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, recovery) = start(options(dir.path(), 1 << 20, Fsync::Never), WhenFull::Block).unwrap();
        assert_eq!(recovery.records, 0);
        for i in 0..1000 {
            h.append(record(i));
        }
        until(&mut h, |e| matches!(e, Event::Stored { stored: 1000, durable: 1000 })).await;
        // Never fsynced: a power cut could take every record Kafka does not have.
        assert_eq!(h.gauges().not_durable.load(Relaxed), 1000);
        h.want(600);
        let mut got = read(&mut h, 600).await;
        // No more come until asked for; then the rest, and what is appended later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(h.try_event().is_none());
        h.append(record(1000));
        h.want(1000);
        got.extend(read(&mut h, 401).await);
        assert_eq!(values(&got), (0..1001).map(record).collect::<Vec<_>>());
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "positions grow");
        assert_eq!(h.close().unwrap(), 0);
    }

    #[tokio::test]
    async fn at_an_interval_records_are_durable_at_the_next_fsync_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let every = Duration::from_millis(1500);
        let (mut h, _) = start(options(dir.path(), 1 << 20, Fsync::Interval(every)), WhenFull::Block).unwrap();
        for i in 0..10 {
            h.append(record(i));
        }
        let before = until(&mut h, |e| matches!(e, Event::Stored { durable: 10, .. })).await;
        assert!(
            before.iter().any(|e| matches!(e, Event::Stored { stored: 10, durable: 0 })),
            "stored before durable: {before:?}"
        );
        // What a power cut would have lost of the spool: the ten, until the fsync.
        let gauges = h.gauges();
        assert_eq!(gauges.not_durable.load(Relaxed), 0);
        assert_eq!(gauges.not_durable_max.load(Relaxed), 10);
        h.want(4);
        let got = read(&mut h, 4).await;
        h.ack(got[3].0);
        assert_eq!(h.close().unwrap(), 0);
        // The acknowledged four are gone; the six others come back after a restart.
        let (mut h, recovery) = start(options(dir.path(), 1 << 20, Fsync::Interval(every)), WhenFull::Block).unwrap();
        assert_eq!(recovery.records, 6);
        h.want(10);
        assert_eq!(values(&read(&mut h, 6).await), (4..10).map(record).collect::<Vec<_>>());
        h.close().unwrap();
    }

    #[tokio::test]
    async fn when_full_block_holds_records_in_order_until_acks_make_room() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about 20 records of 20 bytes.
        let (mut h, _) = start(options(dir.path(), 400, Fsync::Never), WhenFull::Block).unwrap();
        for i in 0..50 {
            h.append(record(i));
        }
        let seen = until(&mut h, |e| matches!(e, Event::Full)).await;
        assert!(!seen.iter().any(|e| matches!(e, Event::Dropped { .. })));
        // Read and acknowledge five at a time until everything is in and out: nothing lost, nothing out
        // of order, and room again once every waiting record is in the log.
        let (mut got, mut room) = (Vec::new(), false);
        h.want(5);
        while got.len() < 50 {
            match event(&mut h).await {
                Event::Records(batch) => {
                    h.ack(batch[batch.len() - 1].0);
                    got.extend(batch);
                    h.want(5);
                }
                Event::Room => room = true,
                Event::Dropped { .. } | Event::Failed(_) | Event::Corrupt(_) => panic!("nothing goes wrong"),
                Event::Stored { .. } | Event::Full | Event::CaughtUp { .. } => {}
            }
        }
        assert!(room, "Room once the last waiting record was stored");
        assert_eq!(values(&got), (0..50).map(record).collect::<Vec<_>>());
        assert_eq!(h.close().unwrap(), 0);
    }

    #[tokio::test]
    async fn when_full_drop_oldest_makes_room_and_counts_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, _) = start(options(dir.path(), 400, Fsync::Never), WhenFull::DropOldest).unwrap();
        for i in 0..50 {
            h.append(record(i));
        }
        let seen = until(&mut h, |e| matches!(e, Event::Stored { stored: 50, .. })).await;
        assert!(!seen.iter().any(|e| matches!(e, Event::Full)), "nothing waits: {seen:?}");
        let dropped: u64 = seen.iter().map(|e| if let Event::Dropped { records, .. } = e { *records } else { 0 }).sum();
        assert!(dropped >= 30, "{dropped} dropped");
        // What is left is the newest, in order.
        let left = 50 - dropped as usize;
        h.want(50);
        let got = read(&mut h, left).await;
        assert_eq!(values(&got), (dropped as u32..50).map(record).collect::<Vec<_>>());
        h.close().unwrap();
    }

    #[tokio::test]
    async fn caught_up_is_said_once_each_time_the_reader_reaches_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, _) = start(options(dir.path(), 1 << 20, Fsync::Never), WhenFull::Block).unwrap();
        for i in 0..3 {
            h.append(record(i));
        }
        h.want(10);
        let before = until(&mut h, |e| matches!(e, Event::CaughtUp { stored: 3 })).await;
        assert!(before.iter().any(|e| matches!(e, Event::Records(r) if r.len() == 3)), "{before:?}");
        h.append(record(3));
        let before = until(&mut h, |e| matches!(e, Event::CaughtUp { stored: 4 })).await;
        assert!(before.iter().any(|e| matches!(e, Event::Records(r) if r.len() == 1)), "{before:?}");
        // Nothing new: not said again.
        h.want(1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Some(e) = h.try_event() {
            assert!(!matches!(e, Event::CaughtUp { .. }), "said twice");
        }
        h.close().unwrap();
    }

    #[tokio::test]
    async fn new_settings_apply_from_the_next_append_a_larger_max_bytes_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about 20 records of 20 bytes.
        let (mut h, _) = start(options(dir.path(), 400, Fsync::Never), WhenFull::Block).unwrap();
        for i in 0..50 {
            h.append(record(i));
        }
        until(&mut h, |e| matches!(e, Event::Full)).await;
        // More room, and an fsync at an interval from now on: what waited is stored, in order.
        h.settings().apply(1 << 20, Fsync::Interval(Duration::from_millis(50)), WhenFull::Block);
        until(&mut h, |e| matches!(e, Event::Room)).await;
        until(&mut h, |e| matches!(e, Event::Stored { stored: 50, durable: 50 })).await;
        assert_eq!(h.gauges().max_bytes.load(Relaxed), 1 << 20);
        h.want(100);
        assert_eq!(values(&read(&mut h, 50).await), (0..50).map(record).collect::<Vec<_>>());
        assert_eq!(h.close().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_rewind_reads_again_from_the_first_record_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, _) = start(options(dir.path(), 1 << 20, Fsync::Never), WhenFull::Block).unwrap();
        for i in 0..10 {
            h.append(record(i));
        }
        h.want(6);
        let first = read(&mut h, 6).await;
        h.ack(first[1].0);
        h.rewind();
        h.want(8);
        assert_eq!(values(&read(&mut h, 8).await), (2..10).map(record).collect::<Vec<_>>());
        h.close().unwrap();
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            dir: dir.path().join("missing/parent/spool"),
            max_bytes: 1 << 20,
            segment_bytes: 4096,
            fsync: Fsync::Never,
        };
        let e = start(options, WhenFull::Block).err().expect("an error").to_string();
        assert!(e.contains("missing/parent"), "{e}");
    }
}

//! Which offsets a downlink may commit: per partition, the records read in order, each marked done
//! when it is published (or dead-lettered); the commit point is the first record not done. So a
//! record is never committed before it is published, and offsets are committed in partition order
//! whatever order the publishes complete in.
//!
//! A partition taken away by a rebalance is forgotten at once (its generation moves on): records of it
//! still in flight complete into nothing, and whoever owns the partition now reads them again from the
//! last commit (a duplicate at worst, never a gap).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A record read, to be marked done when it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    /// Offsets read and not yet committed, in order, each with whether it is done.
    pending: VecDeque<(i64, bool)>,
    /// The next offset after the last done record at the front (what a commit says).
    next: Option<i64>,
    committed: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Offsets {
    inner: Mutex<Inner>,
    /// Told when the records in flight fall to what [`Offsets::wait_for_room`] waits for.
    room: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    partitions: HashMap<(std::sync::Arc<str>, i32), Partition>,
    generation: u64,
    in_flight: usize,
    /// Someone waits until `in_flight` is at most this.
    waiting_for: Option<usize>,
}

impl Inner {
    fn less_in_flight(&mut self, by: usize, room: &Condvar) {
        self.in_flight = self.in_flight.saturating_sub(by);
        if self.waiting_for.is_some_and(|w| self.in_flight <= w) {
            room.notify_all();
        }
    }
}

impl Offsets {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A record was read: its ticket, or `None` for an offset this partition already had since it was
    /// assigned (read again: the first copy is published and settles it).
    pub fn take(&self, topic: &std::sync::Arc<str>, partition: i32, offset: i64) -> Option<Ticket> {
        let mut guard = self.lock();
        let Inner { partitions, generation: last, in_flight, .. } = &mut *guard;
        let p = partitions.entry((topic.clone(), partition)).or_insert_with(|| {
            *last += 1;
            Partition { generation: *last, ..Partition::default() }
        });
        let generation = p.generation;
        let latest = p.pending.back().map(|(o, _)| *o).or(p.next.map(|n| n - 1));
        if latest.is_some_and(|l| offset <= l) {
            return None;
        }
        *in_flight += 1;
        p.pending.push_back((offset, false));
        Some(Ticket { topic: topic.clone(), partition, offset, generation })
    }

    /// The record of `ticket` is published or dead-lettered. False if its partition was revoked since.
    pub fn done(&self, ticket: &Ticket) -> bool {
        let mut inner = self.lock();
        let Some(p) = inner.partitions.get_mut(&(ticket.topic.clone(), ticket.partition)) else { return false };
        if p.generation != ticket.generation {
            return false;
        }
        let Ok(i) = p.pending.binary_search_by_key(&ticket.offset, |(o, _)| *o) else { return false };
        if p.pending[i].1 {
            return false;
        }
        p.pending[i].1 = true;
        while let Some(&(offset, true)) = p.pending.front() {
            p.pending.pop_front();
            p.next = Some(offset + 1);
        }
        inner.less_in_flight(1, &self.room);
        true
    }

    /// The record of `ticket` is still ours: its partition has not been taken away since it was read.
    /// A record of a revoked partition is not published any more: its next owner reads it again from
    /// the last commit, and publishing it here too would interleave two owners' copies of a device's
    /// commands.
    pub fn holds(&self, ticket: &Ticket) -> bool {
        let inner = self.lock();
        inner
            .partitions
            .get(&(ticket.topic.clone(), ticket.partition))
            .is_some_and(|p| p.generation == ticket.generation)
    }

    /// Waits until at most `at_most` records are in flight, or `timeout`; true if there is room.
    pub fn wait_for_room(&self, at_most: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        while inner.in_flight > at_most {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                inner.waiting_for = None;
                return false;
            }
            inner.waiting_for = Some(at_most);
            inner = match self.room.wait_timeout(inner, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        inner.waiting_for = None;
        true
    }

    /// Records read and not done, over every partition held.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// What to commit now: for each partition whose commit point moved, (topic, partition, next offset).
    /// They count as committed; [`Self::failed`] takes them back.
    pub fn to_commit(&self) -> Vec<(std::sync::Arc<str>, i32, i64)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for ((topic, partition), p) in inner.partitions.iter_mut() {
            if let Some(next) = p.next {
                if p.committed != Some(next) {
                    p.committed = Some(next);
                    out.push((topic.clone(), *partition, next));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// A commit of these failed: the next [`Self::to_commit`] offers them again.
    pub fn failed(&self, offsets: &[(std::sync::Arc<str>, i32, i64)]) {
        let mut inner = self.lock();
        for (topic, partition, next) in offsets {
            if let Some(p) = inner.partitions.get_mut(&(topic.clone(), *partition)) {
                if p.committed == Some(*next) {
                    p.committed = None;
                }
            }
        }
    }

    /// The partitions are taken away: forget them (their records in flight complete into nothing).
    /// Returns how many of their records were still in flight.
    pub fn revoke(&self, partitions: &[(std::sync::Arc<str>, i32)]) -> usize {
        let mut inner = self.lock();
        let mut left = 0;
        for key in partitions {
            if let Some(p) = inner.partitions.remove(key) {
                let open = p.pending.iter().filter(|(_, done)| !done).count();
                inner.less_in_flight(open, &self.room);
                left += open;
            }
        }
        left
    }

    /// Every partition is taken away.
    pub fn revoke_all(&self) {
        let mut inner = self.lock();
        inner.partitions.clear();
        let all = inner.in_flight;
        inner.less_in_flight(all, &self.room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn commits_follow_the_first_record_not_done_per_partition() {
        let o = Offsets::default();
        let t: Arc<str> = "t".into();
        let a: Vec<Ticket> = (10..15).map(|i| o.take(&t, 0, i).unwrap()).collect();
        let b = o.take(&t, 1, 7).unwrap();
        // An offset the partition already had is not taken twice.
        assert_eq!(o.take(&t, 0, 12), None);
        assert_eq!(o.in_flight(), 6);
        // Done out of order: nothing before offset 10 is done, so nothing to commit.
        assert!(o.done(&a[2]));
        assert!(o.done(&a[1]));
        assert_eq!(o.to_commit(), []);
        // 10 done: 10, 11, 12 are, so the commit says 13.
        assert!(o.done(&a[0]));
        assert_eq!(o.to_commit(), [(t.clone(), 0, 13)]);
        assert_eq!(o.to_commit(), [], "said once");
        assert!(o.done(&b));
        assert!(!o.done(&b), "twice is nothing");
        assert_eq!(o.to_commit(), [(t.clone(), 1, 8)]);
        assert_eq!(o.in_flight(), 2);
        // A failed commit is offered again.
        assert!(o.done(&a[3]));
        let c = o.to_commit();
        assert_eq!(c, [(t.clone(), 0, 14)]);
        o.failed(&c);
        assert_eq!(o.to_commit(), c);
    }

    #[test]
    fn waiting_for_room_ends_when_enough_records_are_done() {
        let o = Arc::new(Offsets::default());
        let t: Arc<str> = "t".into();
        let tickets: Vec<Ticket> = (0..4).map(|i| o.take(&t, 0, i).unwrap()).collect();
        assert!(!o.wait_for_room(2, Duration::from_millis(20)), "4 in flight");
        let done = {
            let o = o.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                for t in &tickets[..2] {
                    o.done(t);
                }
            })
        };
        assert!(o.wait_for_room(2, Duration::from_secs(10)));
        assert!(o.in_flight() <= 2);
        done.join().unwrap();
    }

    #[test]
    fn a_revoked_partition_is_forgotten_and_its_late_completions_do_nothing() {
        let o = Offsets::default();
        let t: Arc<str> = "t".into();
        let old = o.take(&t, 0, 5).unwrap();
        let other = o.take(&t, 1, 1).unwrap();
        assert!(o.holds(&old) && o.holds(&other));
        assert_eq!(o.revoke(&[(t.clone(), 0)]), 1);
        assert_eq!(o.in_flight(), 1);
        assert!(!o.holds(&old), "revoked");
        assert!(o.holds(&other), "another partition is still held");
        // Assigned again: read again from the commit; the old ticket is stale.
        let new = o.take(&t, 0, 5).unwrap();
        assert!(o.holds(&new));
        assert!(!o.holds(&old), "a new generation");
        assert!(!o.done(&old));
        assert_eq!(o.to_commit(), []);
        assert!(o.done(&new));
        assert_eq!(o.to_commit(), [(t.clone(), 0, 6)]);
        o.revoke_all();
        assert_eq!(o.in_flight(), 0);
    }
}

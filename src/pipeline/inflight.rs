//! What is in flight between receipt and settlement: each message taken from MQTT until all its records
//! are settled, and each record until Kafka reports on it. A record's delivery tag is its index here, so
//! a delivery report finds its record, its route and its message without a lookup structure or an
//! allocation per record. Pure bookkeeping, no I/O.

/// A vector of slots with a free list: indices stay valid while their entry lives, and are reused after.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self { slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    /// The index the next [`insert`](Self::insert) will use.
    pub fn vacant_key(&self) -> u32 {
        self.free.last().copied().unwrap_or(self.slots.len() as u32)
    }

    pub fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(value);
                i
            }
            None => {
                self.slots.push(Some(value));
                (self.slots.len() - 1) as u32
            }
        }
    }

    pub fn get(&self, key: u32) -> Option<&T> {
        self.slots.get(key as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, key: u32) -> Option<&mut T> {
        self.slots.get_mut(key as usize).and_then(Option::as_mut)
    }

    pub fn remove(&mut self, key: u32) -> Option<T> {
        let value = self.slots.get_mut(key as usize)?.take()?;
        self.free.push(key);
        self.len -= 1;
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One record Kafka has not reported on yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordEntry {
    /// The message it belongs to (its index in the message slab).
    pub message: u32,
    /// The route that made it (its index in the message's route table).
    pub route: u32,
    /// It is the dead letter of the message, not its record.
    pub dead_letter: bool,
    /// It is a dead letter cut to size because Kafka refused the whole payload.
    pub truncated: bool,
    /// Times it was produced again after a failed delivery.
    pub attempt: u32,
}

/// A message's progress: its records not settled yet, and whether it may still be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub outstanding: u32,
    pub ackable: bool,
}

impl Progress {
    /// Held while a message's records are being produced, so that it cannot settle before the last one
    /// is out (see [`settle_one`](Self::settle_one)).
    pub fn producing() -> Self {
        Self { outstanding: 1, ackable: true }
    }

    /// One more record to wait for.
    pub fn add(&mut self) {
        self.outstanding += 1;
    }

    /// One record (or the production hold) settled; `ok` is false if it makes the message
    /// unacknowledgeable. True once nothing is outstanding.
    pub fn settle_one(&mut self, ok: bool) -> bool {
        self.ackable &= ok;
        self.outstanding = self.outstanding.saturating_sub(1);
        self.outstanding == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_indices_are_stable_and_reused_after_removal() {
        let mut s = Slab::default();
        assert_eq!(s.vacant_key(), 0);
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!((a, b), (0, 1));
        assert_eq!(s.vacant_key(), 2);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "removing twice is harmless");
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.vacant_key(), a, "the freed slot comes next");
        assert_eq!(s.insert("c"), a);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(99), None);
    }

    #[test]
    fn a_message_settles_when_its_last_record_does_not_before() {
        let mut p = Progress::producing();
        p.add();
        p.add();
        // A record may report before production of the message is finished.
        assert!(!p.settle_one(true));
        assert!(!p.settle_one(false), "a failure does not settle early");
        assert!(p.settle_one(true), "the production hold is the last");
        assert!(!p.ackable, "one unacknowledgeable record makes the message so");
    }
}

//! Ordered scale-out: `replicas.count` gateways each receive every message and keep only the devices
//! whose hash falls in their share, so each device has one writer and its order holds end to end on any
//! broker. A message none of whose records is ours is acknowledged at once and counted.
//!
//! The hash is xxh3-64 of the device id's bytes, modulo the count: stable across versions, platforms and
//! restarts (a device keeps its replica as long as the count is unchanged).

/// This replica's share of the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    pub index: u32,
    pub count: u32,
}

impl Replicas {
    /// `index` as given: a number, or a name ending in `-<n>` (a StatefulSet pod name).
    pub fn parse_index(s: &str) -> Option<u32> {
        let s = s.trim();
        let digits = s.rsplit_once('-').map_or(s, |(_, n)| n);
        digits.parse().ok()
    }

    /// The replica that writes `device_id`'s records.
    pub fn owner(count: u32, device_id: &str) -> u32 {
        (xxhash_rust::xxh3::xxh3_64(device_id.as_bytes()) % u64::from(count.max(1))) as u32
    }

    pub fn owns(&self, device_id: &str) -> bool {
        Replicas::owner(self.count, device_id) == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_come_from_numbers_and_pod_names() {
        assert_eq!(Replicas::parse_index("2"), Some(2));
        assert_eq!(Replicas::parse_index("mqtt-kafka-gateway-11"), Some(11));
        assert_eq!(Replicas::parse_index("gateway"), None);
    }

    #[test]
    fn every_device_has_exactly_one_owner_and_the_split_is_even() {
        let count = 3;
        let shares: Vec<Replicas> = (0..count).map(|index| Replicas { index, count }).collect();
        let mut per = [0usize; 3];
        for d in 0..3000 {
            let id = format!("device-{d}");
            let owners: Vec<u32> = shares.iter().filter(|s| s.owns(&id)).map(|s| s.index).collect();
            assert_eq!(owners.len(), 1, "{id}");
            per[owners[0] as usize] += 1;
        }
        assert!(per.iter().all(|n| (850..=1150).contains(n)), "{per:?}");
        // Stable: the same id, the same owner, in every build.
        assert_eq!(Replicas::owner(3, "f2-e4fd45f654be"), Replicas::owner(3, "f2-e4fd45f654be"));
    }
}

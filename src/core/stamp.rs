//! A message's stamps: its deterministic id (XXH3-128 of topic and payload, in hex) and its receive
//! time as epoch seconds with microseconds. Both are written by hand: per message, `format!` cost as
//! much as the hash. The envelope puts them in the `message_id` and `received_at` headers and the
//! `timestamp` field.

use std::time::{SystemTime, UNIX_EPOCH};

/// A deterministic id for a message: 128 bits of XXH3 over the MQTT topic and the payload, in hex. A
/// message the broker delivers again (after a gateway crash, before its ack) gets the same id, so a
/// consumer can drop the copy. Its limit: two messages with the same topic and the same payload get the
/// same id too; a device that may send identical payloads twice should put a sequence number or
/// timestamp in them. Not a cryptographic hash.
pub fn message_id(topic: &str, payload: &[u8]) -> String {
    // One-shot over topic, 0, payload when that fits on the stack: the same hash as streaming the three
    // parts, at a fraction of the streaming state's set-up.
    let mut buf = [0u8; 512];
    let len = topic.len() + 1 + payload.len();
    let n = if len <= buf.len() {
        buf[..topic.len()].copy_from_slice(topic.as_bytes());
        buf[topic.len() + 1..len].copy_from_slice(payload);
        xxhash_rust::xxh3::xxh3_128(&buf[..len])
    } else {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(topic.as_bytes());
        h.update(&[0]);
        h.update(payload);
        h.digest128()
    };
    // By hand: `format!("{:032x}")` cost as much as the hash itself.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = HEX[((n >> ((31 - i) * 4)) & 0xf) as usize];
    }
    ascii(&hex)
}

/// ASCII bytes as a `String` (one allocation; the check is over a few dozen bytes).
fn ascii(bytes: &[u8]) -> String {
    std::str::from_utf8(bytes).map(str::to_owned).unwrap_or_default()
}

/// Epoch seconds with microseconds, as the spec's `timestamp` field (`1684678444.928538`).
pub fn epoch_seconds(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    // By hand, as `message_id`: per message, `format!` is most of the cost. At most 20 digits, a dot
    // and 6 digits, written from the end.
    let mut buf = [0u8; 27];
    let mut at = buf.len();
    let mut micros = d.subsec_micros();
    for _ in 0..6 {
        at -= 1;
        buf[at] = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    at -= 1;
    buf[at] = b'.';
    let mut secs = d.as_secs();
    loop {
        at -= 1;
        buf[at] = b'0' + (secs % 10) as u8;
        secs /= 10;
        if secs == 0 {
            break;
        }
    }
    ascii(&buf[at..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamp_has_microseconds() {
        assert_eq!(epoch_seconds(UNIX_EPOCH + Duration::from_micros(5_000_001)), "5.000001");
        assert_eq!(epoch_seconds(UNIX_EPOCH + Duration::from_millis(1_500)), "1.500000");
        // Written by hand: the same text as the format it replaced, for any time.
        for micros in [0, 7, 999_999, 1_000_000, 1_684_678_444_928_538, u64::MAX / 1000] {
            let d = Duration::from_micros(micros);
            assert_eq!(epoch_seconds(UNIX_EPOCH + d), format!("{}.{:06}", d.as_secs(), d.subsec_micros()));
        }
        assert_eq!(epoch_seconds(UNIX_EPOCH - Duration::from_secs(1)), "0.000000", "before 1970: zero, not a panic");
    }

    #[test]
    fn the_message_id_is_the_hash_in_32_hex_digits() {
        for (topic, payload) in [
            ("cmnd/a", b"{}".as_slice()),
            ("", b"".as_slice()),
            ("x/y/z", &[0xff; 300][..]),
            ("past/the/stack/buffer", &[7; 1000][..]),
        ] {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(topic.as_bytes());
            h.update(&[0]);
            h.update(payload);
            assert_eq!(message_id(topic, payload), format!("{:032x}", h.digest128()));
        }
    }
}

//! A record as the spool keeps it: the Kafka record exactly as it was built (topic, key, headers, value),
//! so that a replay writes what would have been written, and what the gateway still needs of its MQTT
//! message once the message is gone: the route and device for the failure policy and the metrics, the
//! receive time for latency and the age of the backlog, and the payload for a dead letter made later.
//!
//! The encoding is ours and versioned: a version byte, flags, QoS, the receive time, the token, then
//! length-prefixed fields. Decoding never trusts a length: a frame that passed its checksum but does not
//! decode (a newer version, a bug) is an error the caller counts and skips, never a panic.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::core::envelope::Record;

/// A record and what the gateway needs of its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub record: Record,
    /// The route's name (as in `routes.yaml`).
    pub route: String,
    pub device_id: String,
    pub mqtt_topic: String,
    pub qos: u8,
    pub received_at: SystemTime,
    /// The record is a dead letter already.
    pub dead_letter: bool,
    /// The MQTT payload, for a dead letter made if Kafka refuses the record; `None` when it is the
    /// record's value (a raw route), so that it is not stored twice.
    pub payload: Option<Vec<u8>>,
    /// The number the gateway gave the message that waits for this record to reach Kafka (QoS 1/2
    /// with `ack_after: kafka`); 0 for none. Meaningful to the process that wrote it only.
    pub token: u64,
}

impl Spooled {
    /// The MQTT payload of the record's message.
    pub fn payload(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or(&self.record.value)
    }
}

const VERSION: u8 = 1;
const DEAD_LETTER: u8 = 1;
const HAS_KEY: u8 = 2;
const HAS_PAYLOAD: u8 = 4;
/// The payload is a slice of the value (the spec's envelope splices it in as published): stored as its
/// offset and length, not a second time.
const PAYLOAD_IN_VALUE: u8 = 8;

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("spooled record of version {0}, this gateway reads version {VERSION}")]
    Version(u8),
    #[error("spooled record ends early (reading {0})")]
    Short(&'static str),
    #[error("spooled record's {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("spooled record has {0} bytes after its end")]
    Trailing(usize),
}

/// Appends the encoding of `s` to `out`.
pub fn encode(s: &Spooled, out: &mut Vec<u8>) {
    let r = &s.record;
    let mut flags = 0;
    if s.dead_letter {
        flags |= DEAD_LETTER;
    }
    if r.key.is_some() {
        flags |= HAS_KEY;
    }
    // Found only on the spool's path (a Kafka outage), not on every record.
    let inside = s.payload.as_deref().filter(|p| !p.is_empty()).and_then(|p| memchr::memmem::find(&r.value, p));
    match (&s.payload, inside) {
        (Some(_), Some(_)) => flags |= HAS_PAYLOAD | PAYLOAD_IN_VALUE,
        (Some(_), None) => flags |= HAS_PAYLOAD,
        (None, _) => {}
    }
    let micros = s.received_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros();
    out.extend_from_slice(&[VERSION, flags, s.qos]);
    out.extend_from_slice(&u64::try_from(micros).unwrap_or(u64::MAX).to_le_bytes());
    out.extend_from_slice(&s.token.to_le_bytes());
    field(out, r.topic.as_bytes());
    if let Some(key) = &r.key {
        field(out, key);
    }
    field(out, &r.value);
    field(out, s.route.as_bytes());
    field(out, s.device_id.as_bytes());
    field(out, s.mqtt_topic.as_bytes());
    match (&s.payload, inside) {
        (Some(payload), Some(at)) => {
            out.extend_from_slice(&len32(at).to_le_bytes());
            out.extend_from_slice(&len32(payload.len()).to_le_bytes());
        }
        (Some(payload), None) => field(out, payload),
        (None, _) => {}
    }
    out.extend_from_slice(&len32(r.headers.len()).to_le_bytes());
    for (name, value) in &r.headers {
        field(out, name.as_bytes());
        field(out, value);
    }
}

/// The record `bytes` hold.
pub fn decode(bytes: &[u8]) -> Result<Spooled, DecodeError> {
    let mut r = Reader(bytes);
    let version = r.byte("version")?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let flags = r.byte("flags")?;
    let qos = r.byte("qos")?;
    let micros = u64::from_le_bytes(r.array("receive time")?);
    let token = u64::from_le_bytes(r.array("token")?);
    let topic = r.text("topic")?;
    let key = if flags & HAS_KEY != 0 { Some(r.field("key")?.to_vec()) } else { None };
    let value = r.field("value")?.to_vec();
    let route = r.text("route")?;
    let device_id = r.text("device id")?;
    let mqtt_topic = r.text("MQTT topic")?;
    let payload = match (flags & HAS_PAYLOAD != 0, flags & PAYLOAD_IN_VALUE != 0) {
        (true, true) => {
            let at = u32::from_le_bytes(r.array("payload's offset")?) as usize;
            let len = u32::from_le_bytes(r.array("payload's length")?) as usize;
            let slice = at.checked_add(len).and_then(|end| value.get(at..end));
            Some(slice.ok_or(DecodeError::Short("payload in the value"))?.to_vec())
        }
        (true, false) => Some(r.field("payload")?.to_vec()),
        (false, _) => None,
    };
    let count = u32::from_le_bytes(r.array("header count")?);
    // Each header takes 8 bytes at least: a count beyond that is damage, not a reason to allocate.
    let mut headers = Vec::with_capacity((count as usize).min(r.0.len() / 8));
    for _ in 0..count {
        let name = r.text("header name")?;
        let value = r.field("header value")?.to_vec();
        headers.push((Cow::Owned(name), value));
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(Spooled {
        record: Record { topic, key, value, headers },
        route,
        device_id,
        mqtt_topic,
        qos,
        received_at: UNIX_EPOCH + Duration::from_micros(micros),
        dead_letter: flags & DEAD_LETTER != 0,
        payload,
        token,
    })
}

fn len32(n: usize) -> u32 {
    // Kafka's own limits keep every field far below 4 GiB; a longer one would not have been built.
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&len32(bytes.len()).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Short(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn field(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = u32::from_le_bytes(self.array(what)?) as usize;
        self.take(len, what)
    }

    fn text(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let bytes = self.field(what)?;
        std::str::from_utf8(bytes).map(str::to_string).map_err(|_| DecodeError::NotUtf8(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Spooled {
        Spooled {
            record: Record {
                topic: "raw_iot_data".into(),
                key: Some(b"f2-e4fd45f654be".to_vec()),
                value: br#"{"original_topic":"cmnd/f2-e4fd45f654be/state","payload":{"on":true}}"#.to_vec(),
                headers: vec![(Cow::Borrowed("mqtt_topic"), b"cmnd/f2-e4fd45f654be/state".to_vec())],
            },
            route: "iot-commands".into(),
            device_id: "f2-e4fd45f654be".into(),
            mqtt_topic: "cmnd/f2-e4fd45f654be/state".into(),
            qos: 1,
            received_at: UNIX_EPOCH + Duration::from_micros(1_796_431_035_406_037),
            dead_letter: false,
            payload: Some(br#"{"on":true}"#.to_vec()),
            token: 7,
        }
    }

    #[test]
    fn a_record_comes_back_as_it_went_in() {
        let mut raw = sample();
        raw.payload = None;
        raw.record.key = None;
        raw.dead_letter = true;
        raw.record.headers.clear();
        for s in [sample(), raw] {
            let mut bytes = Vec::new();
            encode(&s, &mut bytes);
            assert_eq!(decode(&bytes).unwrap(), s);
        }
        // Without a stored payload, the payload is the value.
        let mut raw = sample();
        raw.payload = None;
        assert_eq!(raw.payload(), raw.record.value.as_slice());
        assert_eq!(sample().payload(), br#"{"on":true}"#);
    }

    #[test]
    fn a_payload_spliced_into_the_value_is_not_stored_twice() {
        let s = sample();
        let mut bytes = Vec::new();
        encode(&s, &mut bytes);
        let mut apart = s.clone();
        apart.payload = Some(br#"{"on":false}"#.to_vec());
        let mut bytes_apart = Vec::new();
        encode(&apart, &mut bytes_apart);
        // Offset and length (8 bytes) instead of a length and the payload (4 + 11).
        assert_eq!(bytes.len() + 4 + 11 - 8, bytes_apart.len() - 1);
        assert_eq!(decode(&bytes).unwrap(), s);
        assert_eq!(decode(&bytes_apart).unwrap(), apart);
        // A place outside the value is damage.
        let at = bytes.len() - (4 + 4 + 10 + 4 + 26) - 8;
        bytes[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::Short("payload in the value")));
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let mut bytes = Vec::new();
        encode(&sample(), &mut bytes);
        // Every prefix ends early.
        for n in 0..bytes.len() {
            assert!(matches!(decode(&bytes[..n]), Err(DecodeError::Short(_))), "prefix of {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::Trailing(1)));
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert_eq!(decode(&newer), Err(DecodeError::Version(2)));
        // A header count of 4 billion does not allocate for them.
        let mut many = bytes.clone();
        let at = many.len() - (4 + 10 + 4 + 26) - 4;
        many[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&many), Err(DecodeError::Short(_))));
        // A topic that is not UTF-8.
        let mut bad = bytes;
        bad[19 + 4] = 0xff;
        assert_eq!(decode(&bad), Err(DecodeError::NotUtf8("topic")));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_record_round_trips(
            topic in ".{0,40}", key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            value in proptest::collection::vec(any::<u8>(), 0..200), route in ".{0,20}", device in ".{0,20}",
            mqtt_topic in ".{0,40}", qos in 0u8..3, micros in any::<u64>(), dead_letter in any::<bool>(),
            payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)), token in any::<u64>(),
            headers in proptest::collection::vec((".{0,12}", proptest::collection::vec(any::<u8>(), 0..30)), 0..5),
        ) {
            let s = Spooled {
                record: Record {
                    topic, key, value,
                    headers: headers.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect(),
                },
                route, device_id: device, mqtt_topic, qos,
                received_at: UNIX_EPOCH + Duration::from_micros(micros), dead_letter, payload, token,
            };
            let mut bytes = Vec::new();
            encode(&s, &mut bytes);
            prop_assert_eq!(decode(&bytes).unwrap(), s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}

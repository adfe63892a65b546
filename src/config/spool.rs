//! `spool`: the disk spool, checked offline. Whether the directory can be written is found when the
//! gateway opens it (a start-up error naming the path), since `validate` may run elsewhere.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Problems;

/// `spool`, as written. Setting `dir` turns the spool on.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpool {
    /// The directory the spool owns (created if missing; its parent must exist). Unset: memory only.
    /// Env: `GATEWAY_SPOOL__DIR`.
    pub dir: Option<String>,
    /// The spool's size at most: `512MiB`, `1GiB`, `2GB` or a number of bytes.
    pub max_bytes: ByteSize,
    /// `interval` (default), `always` (every record) or `never` (the operating system decides).
    pub fsync: FsyncMode,
    /// With `fsync: interval`, how often, in milliseconds.
    pub fsync_interval_ms: u64,
    /// `block` (push back to MQTT, as without a spool) or `drop_oldest` (counted).
    pub when_full: WhenFull,
    /// QoS 1/2 messages are acknowledged once their records are in Kafka (`kafka`, default) or once
    /// they are durably in the spool (`spool`).
    pub ack_after: AckAfter,
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: ByteSize::Number(1 << 30),
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 500,
            when_full: WhenFull::Block,
            ack_after: AckAfter::Kafka,
        }
    }
}

/// A size: a number of bytes, or a number with a unit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ByteSize {
    Number(u64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    Block,
    DropOldest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckAfter {
    Kafka,
    Spool,
}

/// When spooled records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolFsync {
    Always,
    Interval(Duration),
    Never,
}

/// `spool`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub fsync: SpoolFsync,
    pub when_full: WhenFull,
    pub ack_after: AckAfter,
}

/// The smallest spool: a few segments of the smallest size.
const MIN_BYTES: u64 = 4 << 20;

/// `spool`, checked; `None` when `dir` is unset (or on a problem, which `p` holds).
pub(super) fn settings(r: &RawSpool, p: &mut Problems<'_>) -> Option<SpoolSettings> {
    let max_bytes = match parse_size(&r.max_bytes) {
        Ok(n) if n >= MIN_BYTES => Some(n),
        Ok(n) => {
            p.add("spool.max_bytes", format!("{n} bytes is too small"), Some("at least 4MiB; e.g. 1GiB"));
            None
        }
        Err(why) => {
            p.add("spool.max_bytes", why, Some("a number of bytes, or e.g. 512MiB, 1GiB, 2GB"));
            None
        }
    };
    let fsync = match r.fsync {
        FsyncMode::Always => Some(SpoolFsync::Always),
        FsyncMode::Never => Some(SpoolFsync::Never),
        FsyncMode::Interval if (1..=60_000).contains(&r.fsync_interval_ms) => {
            Some(SpoolFsync::Interval(Duration::from_millis(r.fsync_interval_ms)))
        }
        FsyncMode::Interval => {
            p.add(
                "spool.fsync_interval_ms",
                format!("{} is out of range", r.fsync_interval_ms),
                Some("use 1 to 60000"),
            );
            None
        }
    };
    let dir = r.dir.as_deref().map(str::trim).filter(|d| !d.is_empty())?;
    Some(SpoolSettings {
        dir: PathBuf::from(dir),
        max_bytes: max_bytes?,
        fsync: fsync?,
        when_full: r.when_full,
        ack_after: r.ack_after,
    })
}

/// `1GiB`, `512 MiB`, `2GB`, `1048576`: bytes. Binary units are powers of 1024, decimal ones of 1000.
pub fn parse_size(size: &ByteSize) -> Result<u64, String> {
    let text = match size {
        ByteSize::Number(n) => return Ok(*n),
        ByteSize::Text(t) => t.trim(),
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a size"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => return Err(format!("`{text}`: unknown unit `{other}`")),
    };
    number.checked_mul(factor).ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        let text = |t: &str| parse_size(&ByteSize::Text(t.into()));
        for (written, bytes) in [
            ("1GiB", 1u64 << 30),
            ("512MiB", 512 << 20),
            ("512 MiB", 512 << 20),
            ("2gib", 2 << 30),
            ("2GB", 2_000_000_000),
            ("64KiB", 64 << 10),
            ("1048576", 1 << 20),
            ("1048576B", 1 << 20),
            ("1TiB", 1 << 40),
        ] {
            assert_eq!(text(written), Ok(bytes), "{written}");
        }
        assert_eq!(parse_size(&ByteSize::Number(123)), Ok(123));
        for bad in ["", "GiB", "1.5GiB", "1 GiBs", "-1GiB", "99999999999999999999", "18446744073709551615GiB"] {
            assert!(text(bad).is_err(), "{bad}");
        }
    }
}

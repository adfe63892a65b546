//! What follows the configuration once the gateway runs, besides the routes, Kafka and MQTT (which have
//! their own: `swap.rs`, `crate::mqtt`): the Schema Registry's settings and the spool's; and opening the
//! spool at start.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::watch;

use super::engine::SpoolLink;
use crate::config::{SpoolFsync, SpoolSettings, WhenFull};
use crate::core::routing::RouteTable;
use crate::ops::metrics::{self, Metrics};
use crate::registry;
use crate::spool::{log, worker};

/// The spool's fsync mode and what it does when full, in its own terms.
fn modes(settings: &SpoolSettings) -> (log::Fsync, worker::WhenFull) {
    let fsync = match settings.fsync {
        SpoolFsync::Always => log::Fsync::Always,
        SpoolFsync::Interval(every) => log::Fsync::Interval(every),
        SpoolFsync::Never => log::Fsync::Never,
    };
    let when_full = match settings.when_full {
        WhenFull::Block => worker::WhenFull::Block,
        WhenFull::DropOldest => worker::WhenFull::DropOldest,
    };
    (fsync, when_full)
}

/// Opens the spool's directory (recovering what a crash left) and starts its thread.
/// `settings` follows reloads: its `max_bytes`, `fsync` and `when_full` reach the spool's thread, its
/// `ack_after` the engine.
pub(super) fn open_spool(
    settings: &SpoolSettings,
    follow: watch::Receiver<Option<SpoolSettings>>,
    routes: watch::Receiver<Arc<RouteTable>>,
    metrics: &Metrics,
) -> anyhow::Result<SpoolLink> {
    let (fsync, when_full) = modes(settings);
    // A sixteenth of the spool a segment, between 1 and 64 MiB: whole segments are what is freed.
    let segment_bytes = (settings.max_bytes / 16).clamp(1 << 20, 64 << 20);
    let options = log::Options { dir: settings.dir.clone(), max_bytes: settings.max_bytes, segment_bytes, fsync };
    let (handle, recovery) = worker::start(options, when_full)
        .map_err(|e| anyhow::Error::new(super::SpoolUnusable(format!("spool.dir {}: {e}", settings.dir.display()))))?;
    let (gauges, also, limit) = (handle.gauges(), handle.gauges(), handle.gauges());
    metrics.set_spool_size(metrics::SpoolSize {
        held: Box::new(move || (gauges.bytes.load(Relaxed), gauges.records.load(Relaxed))),
        not_durable: Box::new(move || (also.not_durable.load(Relaxed), also.not_durable_max.load(Relaxed))),
        max_bytes: Box::new(move || limit.max_bytes.load(Relaxed)),
    });
    metrics.health.spool_enabled.store(true, Relaxed);
    metrics.spool_damaged_bytes.fetch_add(recovery.torn_tail_bytes + recovery.skipped_bytes, Relaxed);
    if recovery.torn_tail_bytes > 0 || recovery.corrupt_segments > 0 || recovery.ack_file_damaged {
        tracing::warn!(
            torn_tail_bytes = recovery.torn_tail_bytes,
            corrupt_segments = recovery.corrupt_segments,
            skipped_bytes = recovery.skipped_bytes,
            ack_file_damaged = recovery.ack_file_damaged,
            "spool: damage found at start; what could be read is kept"
        );
    }
    tracing::info!(
        dir = %settings.dir.display(),
        records = recovery.records,
        bytes = recovery.bytes,
        "spool: open{}",
        if recovery.records > 0 { "; reading back what it holds before anything new" } else { "" }
    );
    tokio::spawn(spool(handle.settings(), follow.clone()));
    Ok(SpoolLink { handle, settings: follow, routes, recovered: recovery.records })
}

/// New spool settings from a reload (`dir` stays: a new directory needs a restart): `max_bytes`,
/// `fsync` and `when_full` to the spool's thread, from its next append on. (`ack_after` the engine
/// reads from the same channel, for each message.)
async fn spool(thread: worker::Settings, mut settings: watch::Receiver<Option<SpoolSettings>>) {
    while settings.changed().await.is_ok() {
        let Some(new) = settings.borrow_and_update().clone() else { continue };
        let (fsync, when_full) = modes(&new);
        thread.apply(new.max_bytes, fsync, when_full);
        tracing::info!(
            max_bytes = new.max_bytes,
            fsync = ?new.fsync,
            when_full = ?new.when_full,
            ack_after = ?new.ack_after,
            "spool settings applied"
        );
    }
}

/// New `schema_registry` settings from a reload: a new client, and every schema looked up again
/// through it; settings a client cannot be made from are refused, and the client in use stays.
pub(super) async fn registry(
    schemas: Arc<registry::Schemas>,
    mut settings: watch::Receiver<Option<crate::config::RegistrySettings>>,
    metrics: Arc<Metrics>,
) {
    while settings.changed().await.is_ok() {
        let Some(new) = settings.borrow_and_update().clone() else { continue };
        match registry::client::Client::new(&new, Some(metrics.clone())) {
            Ok(client) => {
                tracing::info!(url = %new.url, "schema_registry settings applied: every schema in use is looked up again");
                schemas.reconfigure(client, new.refresh);
            }
            Err(e) => {
                tracing::error!(error = %e, "new schema_registry settings refused: the registry client in use stays")
            }
        }
    }
}

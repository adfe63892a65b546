//! Hot reload of `routes.yaml`: a message to the running pipeline, never a restart.
//!
//! The watch is on the file's *directory*, not the file: editors save by writing a temporary file and
//! renaming it over the old one, and a Kubernetes ConfigMap update swaps the `..data` symlink without
//! touching `routes.yaml` itself; a watch on the file would miss both (or die with the old inode). Any
//! event in the directory starts a debounce; once the directory has been quiet for `reload.debounce_ms`,
//! the path is read (following symlinks), read again to make sure it is not still being written, compared
//! by hash with what is in effect, and checked in full. Only a complete, valid file is swapped in, as a
//! whole new route table. A periodic re-read and SIGHUP are safety nets for filesystems whose events do
//! not arrive (some network and overlay mounts).
//!
//! Routes' schema files (`routes[].schema`) are part of the configuration: their directories are watched
//! too, their bytes are hashed with the file's text, and a schema edit alone is a reload like any other
//! (a broken schema is refused and the routes in effect stay).

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::core::routing::{RouteDiff, RouteTable};
use crate::ops::metrics::Metrics;

/// Why a reload was attempted, for the log.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    FileEvent,
    Poll,
    Signal,
}

struct State {
    path: PathBuf,
    current: Config,
    /// Hash of the file text in effect, and of the last text that failed (not reported twice).
    applied_hash: Option<u64>,
    failed_hash: Option<u64>,
    generation: u64,
    file_missing: bool,
    /// The file's text last applied: an edit of a key the environment overrides is named.
    text: String,
    /// The settings that need a restart, as last said: said once, not at every reload after.
    said_restart: String,
}

/// Of the file's text and of the other files `config` reads (a missing one hashes as missing).
fn hash(text: &str, config: &Config) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    contents(&files_read(config)).hash(&mut h);
    h.finish()
}

/// Of the contents of `files` (a missing one hashes as missing).
fn contents(files: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for file in files {
        std::fs::read(file).ok().hash(&mut h);
    }
    h.finish()
}

/// New Kafka settings for the producer: a new producer is built and checked, and swapped in if it
/// reaches and authenticates to the cluster (see `pipeline::swap`).
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaChange {
    pub settings: crate::config::KafkaSettings,
    /// Of the contents of the files librdkafka reads (certificates, keys, keytabs): a certificate renewed
    /// in place is a change as well.
    pub files: u64,
    /// Counts the reloads that sent it: a SIGHUP sends the same settings again, to try a refused
    /// change once more.
    pub attempt: u64,
}

impl KafkaChange {
    pub fn of(config: &Config) -> Self {
        KafkaChange { settings: config.kafka.clone(), files: contents(&kafka_files(config)), attempt: 0 }
    }

    /// Same settings and files, whatever the attempt.
    pub fn same(&self, other: &KafkaChange) -> bool {
        self.settings == other.settings && self.files == other.files
    }
}

/// The files librdkafka reads, by the `*.location` properties and the Kerberos keytab.
fn kafka_files(config: &Config) -> Vec<PathBuf> {
    let props = &config.kafka.properties;
    props
        .iter()
        .filter(|(k, _)| k.ends_with(".location") || k.as_str() == "sasl.kerberos.keytab")
        .map(|(_, v)| PathBuf::from(v))
        .collect()
}

/// Every file the configuration reads besides itself: the routes' schemas, the secret files, and the TLS
/// files and keys of MQTT, Kafka and the registry (a Secret mount swaps them like a ConfigMap).
fn files_read(config: &Config) -> Vec<PathBuf> {
    let mut files = schema_files(config);
    files.extend(kafka_files(config));
    files.extend(config.secret_files.iter().cloned());
    let tls = [config.mqtt.tls.as_ref(), config.schema_registry.as_ref().and_then(|r| r.tls.as_ref())];
    for t in tls.into_iter().flatten() {
        files.extend(t.ca_file.clone());
        if let Some((cert, key)) = &t.client {
            files.extend([cert.clone(), key.clone()]);
        }
    }
    files
}

/// The files the routes read besides the configuration: JSON Schemas and the encodings' `schema_file`s.
fn schema_files(config: &Config) -> Vec<PathBuf> {
    let routes = config.routes.routes().iter();
    routes
        .flat_map(|r| {
            let schema = r.schema.as_ref().map(|s| s.file.clone());
            let encoding = r.encoding.as_ref().and_then(|e| e.schema_file.as_ref()).map(|f| f.path.clone());
            schema.into_iter().chain(encoding)
        })
        .collect()
}

/// The directories to watch for `config`: the file's own and its schema files'.
fn directories(path: &Path, config: &Config) -> Vec<PathBuf> {
    let dir = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![dir(path)];
    for f in files_read(config) {
        let d = dir(&f);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// Where a reload sends what it applies.
pub struct Targets {
    /// Each valid new route table.
    pub routes: watch::Sender<Arc<RouteTable>>,
    /// Each change of the Kafka settings or of the files librdkafka reads.
    pub kafka: watch::Sender<KafkaChange>,
    /// Each change of the MQTT settings (the edge reconnects, or applies them in place).
    pub mqtt: watch::Sender<crate::config::MqttSettings>,
    /// Each change of `http.listen`.
    pub http: watch::Sender<Option<std::net::SocketAddr>>,
    /// Each change of `log.stats_interval_secs`.
    pub stats_every: watch::Sender<Duration>,
    /// Each change of `shutdown.grace_period_secs` (read when the shutdown begins).
    pub grace: watch::Sender<Duration>,
    /// Each change of `downlinks`.
    pub downlinks: watch::Sender<Vec<Arc<crate::core::downlink::Downlink>>>,
    /// Each change of `schema_registry`'s settings, while there is one (adding or removing the section
    /// needs a restart).
    pub registry: watch::Sender<Option<crate::config::RegistrySettings>>,
    /// Each change of the spool's settings but its `dir` (a new directory, or adding or removing the
    /// section, needs a restart).
    pub spool: watch::Sender<Option<crate::config::SpoolSettings>>,
    /// Each change of `mqtt.max_unacked_messages` (the engine's window).
    pub window: watch::Sender<usize>,
}

/// Watches `config.source` until `shutdown`, publishing what a valid new configuration changes.
pub async fn run(config: Config, targets: Targets, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let path = config.source.clone();
    let initial_text = std::fs::read_to_string(&path).ok();
    let initial_hash = initial_text.as_ref().map(|t| hash(t, &config));
    let mut state = State {
        path: path.clone(),
        current: config,
        applied_hash: initial_hash,
        failed_hash: None,
        generation: 1,
        file_missing: false,
        text: initial_text.unwrap_or_default(),
        said_restart: String::new(),
    };

    let (events_tx, mut events) = mpsc::channel::<()>(1);
    // Kept alive while watching: dropping the watcher stops the watch.
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut watched = HashSet::new();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by editing the file instead");
            None
        }
    };

    loop {
        // `reload.*` as in effect now: a reload may change them too.
        let settings = state.current.reload.clone();
        match (settings.watch, watcher.is_some()) {
            (true, false) => {
                watcher = new_watcher(events_tx.clone());
                watched.clear();
            }
            (false, true) => watcher = None,
            _ => {}
        }
        if let Some(w) = watcher.as_mut() {
            watch_more(w, &mut watched, directories(&path, &state.current));
        }
        let poll_every = (settings.poll_interval_secs > 0).then(|| Duration::from_secs(settings.poll_interval_secs));
        let debounce = Duration::from_millis(settings.debounce_ms);
        let trigger = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = events.recv() => Trigger::FileEvent,
            _ = sleep_or_never(poll_every) => Trigger::Poll,
            Some(()) = recv_signal(&mut hangup) => Trigger::Signal,
        };
        if let Trigger::FileEvent = trigger {
            // Settle: wait until the directory has been quiet for the debounce time, but not for ever: a
            // watched directory that is never quiet (a broker's log beside its CA file, say) would
            // otherwise hold every reload back. The file is read until two reads agree anyway.
            let give_up = tokio::time::Instant::now() + (debounce * 4).max(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    Some(()) = events.recv() => continue,
                    _ = tokio::time::sleep(debounce) => break,
                    _ = tokio::time::sleep_until(give_up) => break,
                }
            }
        }
        attempt(&mut state, trigger, debounce, &targets, &metrics).await;
    }
}

/// The settings of the gateway's own machinery, applied at once: `log.level`, `log.format`,
/// `log.stats_interval_secs`,
/// `reload.*` (from the next wait on), `shutdown.grace_period_secs`. True if one changed.
fn apply_own(state: &mut State, new: &Config, targets: &Targets) -> bool {
    let mut changed = false;
    // The log's filter and its output, each through the telemetry setter that may refuse it.
    changed |= apply_log("log.level", &state.current.log.level, &new.log.level, crate::ops::telemetry::set_level);
    changed |= apply_log("log.format", &state.current.log.format, &new.log.format, crate::ops::telemetry::set_format);
    state.current.log.level = new.log.level.clone();
    state.current.log.format = new.log.format.clone();
    if state.current.log.stats_interval_secs != new.log.stats_interval_secs {
        changed = true;
        targets.stats_every.send_replace(Duration::from_secs(new.log.stats_interval_secs));
        tracing::info!(stats_interval_secs = new.log.stats_interval_secs, "log.stats_interval_secs applied");
        state.current.log.stats_interval_secs = new.log.stats_interval_secs;
    }
    if state.current.shutdown_grace != new.shutdown_grace {
        changed = true;
        targets.grace.send_replace(new.shutdown_grace);
        tracing::info!(grace_period_secs = new.shutdown_grace.as_secs(), "shutdown.grace_period_secs applied");
        state.current.shutdown_grace = new.shutdown_grace;
    }
    if state.current.reload != new.reload {
        changed = true;
        tracing::info!(reload = ?new.reload, "reload settings applied");
        state.current.reload = new.reload.clone();
    }
    changed
}

/// One `log` key through its setter, if it changed; true if it did.
fn apply_log(key: &str, old: &str, new: &str, set: fn(&str) -> Result<(), String>) -> bool {
    if old == new {
        return false;
    }
    match set(new) {
        Ok(()) => tracing::info!(key, value = new, "applied"),
        Err(why) => tracing::warn!(key, reason = %why, "not applied"),
    }
    true
}

/// The file as read (hash `h`) is refused: counted, logged once with `why`, the routes in effect stay.
fn refuse(state: &mut State, metrics: &Metrics, h: u64, why: String) {
    state.failed_hash = Some(h);
    metrics.config_file_valid.store(false, Relaxed);
    let total = metrics.reload_failed();
    tracing::error!(reload_failures = total, generation = state.generation, "{why}");
}

async fn sleep_or_never(every: Option<Duration>) {
    match every {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn new_watcher(tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| match res {
        // Lossy on purpose: one pending wake-up is enough, the file is re-read whole.
        Ok(ev) if !matches!(ev.kind, notify::EventKind::Access(_)) => {
            let _ = tx.try_send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "file watch error; the periodic re-read still applies edits"),
    };
    match notify::recommended_watcher(handler) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch for configuration changes; edits apply on the periodic re-read or SIGHUP");
            None
        }
    }
}

/// Watches the directories of `dirs` not watched yet (a schema file may live beside the configuration
/// or elsewhere). Directories no longer needed stay watched: a spare wake-up costs one comparison.
fn watch_more(watcher: &mut notify::RecommendedWatcher, watched: &mut HashSet<PathBuf>, dirs: Vec<PathBuf>) {
    for dir in dirs {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => tracing::info!(dir = %dir.display(), "watching the configuration directory for changes"),
            Err(e) => {
                tracing::error!(error = %e, dir = %dir.display(), "cannot watch the directory; edits there apply on the periodic re-read or SIGHUP")
            }
        }
        watched.insert(dir);
    }
}

/// Reads the file whole and steady: two reads `settle` apart must agree, so a file still being written
/// is not taken. Returns `None` if the file is missing or keeps changing.
async fn read_steady(path: &Path, settle: Duration) -> Result<Option<String>, std::io::Error> {
    let mut previous = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for _ in 0..10 {
        tokio::time::sleep(settle).await;
        let again = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if again == previous {
            return Ok(Some(again));
        }
        previous = again;
    }
    tracing::warn!(path = %path.display(), "the configuration file keeps changing; will try again on the next event");
    Ok(None)
}

async fn attempt(state: &mut State, trigger: Trigger, debounce: Duration, targets: &Targets, metrics: &Metrics) {
    let settle = (debounce / 2).clamp(Duration::from_millis(20), Duration::from_millis(200));
    let text = match read_steady(&state.path, settle).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            if !state.path.exists() {
                metrics.config_file_valid.store(false, Relaxed);
            }
            if !state.file_missing && !state.path.exists() {
                state.file_missing = true;
                tracing::warn!(path = %state.path.display(), "the configuration file is gone; the current routes stay in effect until it is back");
            }
            return;
        }
        Err(e) => {
            metrics.reload_failed();
            metrics.config_file_valid.store(false, Relaxed);
            tracing::error!(path = %state.path.display(), error = %e, "cannot read the configuration file; the current routes stay in effect");
            return;
        }
    };
    state.file_missing = false;
    let h = hash(&text, &state.current);
    if Some(h) == state.applied_hash {
        metrics.config_file_valid.store(true, Relaxed);
        if matches!(trigger, Trigger::Signal) {
            tracing::info!(generation = state.generation, "SIGHUP: the configuration file is unchanged");
            // A Kafka change refused before (the cluster not ready for it yet) is tried again.
            targets.kafka.send_modify(|k| k.attempt += 1);
        }
        return;
    }
    if Some(h) == state.failed_hash && !matches!(trigger, Trigger::Signal) {
        return;
    }
    let new = match config::load_from_str(&state.path, &text, &config::ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                state,
                metrics,
                h,
                format!("the new configuration is invalid; the current routes stay in effect:\n{e}"),
            )
        }
    };
    // The registry client is made at start: routes that need one cannot come in through a reload of a
    // gateway started without it (their records could only be dead-lettered).
    if state.current.schema_registry.is_none() {
        if let Some(r) = new.routes.routes().iter().find(|r| r.encoding.is_some()) {
            let why = format!(
                "route {} has a registry encoding, and the gateway was started without schema_registry, which applies only after a restart; the current routes stay in effect",
                r.name
            );
            return refuse(state, metrics, h, why);
        }
    }
    let ignored = config::edited_overrides(&state.text, &text, &config::ProcessEnv);
    if !ignored.is_empty() {
        tracing::warn!(
            keys = ?ignored,
            "these keys changed in the file, but environment variables override them: the edit has no effect while the variables are set"
        );
    }
    let diff = RouteDiff::between(&state.current.routes, &new.routes);
    let restart = state.current.restart_needed(&new);
    let kafka = KafkaChange::of(&new);
    let kafka_changed = !kafka.same(&targets.kafka.borrow());
    if kafka_changed || matches!(trigger, Trigger::Signal) {
        // Checked and applied by the producer's side, which reports the outcome.
        targets.kafka.send_modify(|k| *k = KafkaChange { attempt: k.attempt + 1, ..kafka });
    }
    state.current.kafka = new.kafka.clone();
    if new.mqtt.max_unacked_messages != state.current.mqtt.max_unacked_messages {
        targets.window.send_replace(new.mqtt.max_unacked_messages);
    }
    let mqtt = new.mqtt.clone();
    let mqtt_changed = mqtt != *targets.mqtt.borrow();
    if mqtt_changed || matches!(trigger, Trigger::Signal) {
        // The MQTT edge reconnects with them, or goes back to the old ones and says why.
        targets.mqtt.send_replace(mqtt.clone());
    }
    state.current.mqtt = mqtt;
    let http_changed = new.http != state.current.http;
    if http_changed {
        targets.http.send_replace(new.http);
        state.current.http = new.http;
    }
    let own_changed = apply_own(state, &new, targets);
    let registry_changed = state.current.schema_registry.is_some()
        && new.schema_registry.is_some()
        && state.current.schema_registry != new.schema_registry;
    if registry_changed {
        targets.registry.send_replace(new.schema_registry.clone());
        state.current.schema_registry = new.schema_registry.clone();
    }
    // Hashed again over the schema files the new configuration reads.
    state.applied_hash = Some(hash(&text, &new));
    state.text = text;
    state.failed_hash = None;
    metrics.config_file_valid.store(true, Relaxed);
    let spool_changed = match (&state.current.spool, &new.spool) {
        (Some(old), Some(new)) => old.dir == new.dir && old != new,
        _ => false,
    };
    if spool_changed {
        targets.spool.send_replace(new.spool.clone());
        state.current.spool = new.spool.clone();
    }
    let downlinks_changed = new.downlinks != state.current.downlinks;
    if downlinks_changed {
        let names =
            |c: &[Arc<crate::core::downlink::Downlink>]| c.iter().map(|d| d.name.to_string()).collect::<Vec<_>>();
        let (old, now) = (names(&state.current.downlinks), names(&new.downlinks));
        let added: Vec<&String> = now.iter().filter(|n| !old.contains(n)).collect();
        let removed: Vec<&String> = old.iter().filter(|n| !now.contains(n)).collect();
        let changed: Vec<&str> = new
            .downlinks
            .iter()
            .filter(|d| state.current.downlinks.iter().any(|o| o.name == d.name && o != *d))
            .map(|d| &*d.name)
            .collect();
        tracing::info!(?added, ?removed, ?changed, downlinks = now.len(), "downlinks reloaded");
        targets.downlinks.send_replace(new.downlinks.clone());
        state.current.downlinks = new.downlinks.clone();
    }
    let applied = kafka_changed
        || mqtt_changed
        || http_changed
        || own_changed
        || registry_changed
        || spool_changed
        || downlinks_changed;
    if diff.is_empty() && restart.is_empty() && !applied {
        tracing::info!(generation = state.generation, "the configuration file changed, but nothing in effect did");
        return;
    }
    // Once for each new value of what needs a restart, not at every reload while it differs.
    let said = format!(
        "{restart:?} {:?} {} {:?}",
        new.replicas,
        new.schema_registry.is_some(),
        new.spool.as_ref().map(|s| &s.dir)
    );
    if !restart.is_empty() && said != state.said_restart {
        tracing::warn!(keys = ?restart, "these settings changed in the file but only apply after a restart; the rest applies now");
    }
    state.said_restart = if restart.is_empty() { String::new() } else { said };
    if !diff.is_empty() {
        state.generation += 1;
        let mut table = new.routes.clone();
        metrics.routes.bind(&mut table);
        targets.routes.send_replace(Arc::new(table));
        metrics.reloads.fetch_add(1, Relaxed);
        metrics.routes_loaded(state.generation);
        tracing::info!(
            generation = state.generation,
            trigger = ?trigger,
            added = ?diff.added,
            removed = ?diff.removed,
            changed = ?diff.changed,
            routes = new.routes.routes().len(),
            "routes reloaded"
        );
    }
    // Settings that need a restart stay as they were; only the routes move on.
    state.current.routes = new.routes;
}

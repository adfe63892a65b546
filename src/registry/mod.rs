//! The Schema Registry edge: the schemas the routes' `encoding` names, fetched, compiled and cached.
//!
//! - **When:** a route table's fixed subjects are resolved as soon as it loads (start and reload); a
//!   templated subject (`{kind}-value`) when a record first needs it. `version: latest` is looked up
//!   again on every reload and every `schema_registry.refresh_secs`: a new version applies from the next
//!   record on.
//! - **Waiting, never guessing:** a record whose schema is not resolved yet waits in the engine (its
//!   message unacknowledged), and so does every later record of its route, so order holds; nothing is
//!   ever written unencoded. While the registry cannot be reached or refuses the credentials, `/readyz`
//!   names it and the gateway keeps asking, backing off to 30 s.
//! - **Keeping what works:** a resolved schema stays in use when the registry goes away (a WARN and a
//!   metric), and when a refresh finds a version that cannot be used (it does not parse, or is of another
//!   type): that is refused with its subject, version and reason, and the route keeps the schema it had.
//! - **Failing clearly:** a subject or version the registry does not have (and no `schema_file` to
//!   register), or a schema that does not compile: the route's records are dead-lettered with the reason,
//!   and the subject is asked for again at each refresh.
//!
//! Imports the core (schemas compile there), `ops` (counts and readiness) and `config`; no other edge.

pub mod client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::core::backoff::Backoff;
use crate::core::encoding::{Compiled, EncodingKind, EncodingRule, SchemaFile, SchemaText, SchemaVersion};
use crate::core::routing::RouteTable;
use crate::ops::metrics::Metrics;
use client::{Client, RegistryError};

/// Subjects (with version and type) kept at most: each costs a request per refresh.
const MAX_SUBJECTS: usize = 10_000;

/// What the cache says of a subject for a route.
#[derive(Debug, Clone)]
pub enum Lookup {
    Ready(Arc<Compiled>),
    /// Not resolved yet: the record waits (see [`Schemas::changed`]).
    Pending,
    /// Cannot be resolved as configured: the record is dead-lettered with this reason.
    Failed(String),
}

#[derive(Debug, Clone)]
enum Entry {
    /// Not resolved yet (the readiness problem says why, when an attempt failed).
    Pending,
    Ready(Arc<Compiled>),
    Failed(String),
}

/// One subject as one route shape wants it.
#[derive(Debug, Clone)]
struct Slot {
    version: SchemaVersion,
    kind: EncodingKind,
    message: Option<String>,
    schema_file: Option<SchemaFile>,
    entry: Entry,
    /// The last new version refused while this one stays in use: logged once, not at every refresh.
    refused: Option<String>,
}

impl Slot {
    fn serves(&self, rule: &EncodingRule) -> bool {
        self.version == rule.version && self.kind == rule.kind && self.message == rule.message
    }

    /// The same subject wanted the same way (the entry aside): how a slot is found again in the map.
    fn same_shape(&self, other: &Slot) -> bool {
        self.version == other.version && self.kind == other.kind && self.message == other.message
    }
}

/// The compiled schemas, by subject, and the state of those still wanted.
pub struct Schemas {
    state: Mutex<HashMap<String, Vec<Slot>>>,
    /// Bumped whenever an entry changes: the engine looks again at the records waiting.
    changed: watch::Sender<u64>,
    /// Something new is wanted.
    wake: Notify,
    /// The client in use; a reload of `schema_registry` replaces it ([`Schemas::reconfigure`]).
    client: Mutex<Arc<Client>>,
    refresh: Mutex<Duration>,
    /// Every schema is to be looked up again (the registry's settings changed).
    again: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas").field("registry", &self.url()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Schemas {
    pub fn new(client: Client, refresh: Duration, metrics: Arc<Metrics>) -> Arc<Schemas> {
        Arc::new(Schemas {
            state: Mutex::default(),
            changed: watch::channel(0).0,
            wake: Notify::new(),
            client: Mutex::new(Arc::new(client)),
            refresh: Mutex::new(refresh),
            again: std::sync::atomic::AtomicBool::new(false),
            metrics,
        })
    }

    /// New `schema_registry` settings (a reload): the new client is used from now on, and every schema
    /// in use is looked up again through it. Until each answers, the cached schema stays in use (a
    /// registry that does not answer changes nothing); one that comes back with another id applies from
    /// the next record.
    pub fn reconfigure(&self, client: Client, refresh: Duration) {
        *lock(&self.client) = Arc::new(client);
        *lock(&self.refresh) = refresh;
        self.again.store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn client(&self) -> Arc<Client> {
        lock(&self.client).clone()
    }

    fn refresh(&self) -> Duration {
        *lock(&self.refresh)
    }

    /// The schema `rule` encodes `subject`'s records with. A subject not seen before is wanted from
    /// now on (the task resolves it) and is pending until then.
    pub fn lookup(&self, subject: &str, rule: &EncodingRule) -> Lookup {
        let mut state = lock(&self.state);
        if let Some(slot) = state.get(subject).and_then(|slots| slots.iter().find(|s| s.serves(rule))) {
            return match &slot.entry {
                Entry::Ready(c) => Lookup::Ready(c.clone()),
                Entry::Pending => Lookup::Pending,
                Entry::Failed(why) => Lookup::Failed(why.clone()),
            };
        }
        let slots: usize = state.values().map(Vec::len).sum();
        if slots >= MAX_SUBJECTS {
            return Lookup::Failed(format!(
                "more than {MAX_SUBJECTS} subjects are in use; a subject template that names the device makes one per device"
            ));
        }
        want(&mut state, subject, rule);
        drop(state);
        self.wake.notify_one();
        Lookup::Pending
    }

    /// Wants the fixed subjects of `table`'s routes (a table just loaded).
    /// What no route of `table` can use any more is forgotten: the cache stays bounded across reloads,
    /// and a subject that was pending for a removed route no longer holds readiness. (A record of an old
    /// table that still wants one asks for it again.)
    pub fn want_table(&self, table: &RouteTable) {
        let mut state = lock(&self.state);
        let rules: Vec<&EncodingRule> = table.routes().iter().filter_map(|r| r.encoding.as_deref()).collect();
        for (subject, slots) in state.iter_mut() {
            slots.retain(|slot| {
                rules
                    .iter()
                    .any(|rule| slot.serves(rule) && rule.fixed_subject.as_deref().is_none_or(|fixed| fixed == subject))
            });
        }
        state.retain(|_, slots| !slots.is_empty());
        let mut added = 0;
        for route in table.routes() {
            let Some(rule) = &route.encoding else { continue };
            if let Some(subject) = rule.fixed_subject.clone().or_else(|| rule.static_subject(&route.topic)) {
                let known = state.get(&subject).is_some_and(|slots| slots.iter().any(|s| s.serves(rule)));
                if !known {
                    want(&mut state, &subject, rule);
                    added += 1;
                }
            }
        }
        drop(state);
        if added > 0 {
            // Not ready until they are resolved (the task clears this after its pass).
            self.metrics.health.set_registry_problem(Some(format!("resolving {added} schema(s)")));
        }
        self.wake.notify_one();
    }

    /// Changes each time a schema is resolved, replaced or given up on.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The registry's address.
    pub fn url(&self) -> String {
        self.client().url().to_string()
    }

    /// Resolves every pending entry (and, with `refresh`, every `latest` and failed one again), then
    /// says whether some are still pending because the registry did not answer.
    /// With `all`, every ready schema is looked up again too, whatever its version (new settings).
    async fn resolve_all(&self, refresh: bool, all: bool) -> Option<String> {
        let client = self.client();
        let todo: Vec<(String, Slot)> = lock(&self.state)
            .iter()
            .flat_map(|(subject, slots)| slots.iter().map(move |s| (subject.clone(), s.clone())))
            .filter(|(_, s)| match s.entry {
                Entry::Pending => true,
                Entry::Ready(_) => all || (refresh && s.version == SchemaVersion::Latest),
                Entry::Failed(_) => refresh || all,
            })
            .collect();
        let mut unresolved: Option<String> = None;
        let mut any_change = false;
        let mut unreachable = false;
        for (subject, slot) in todo {
            if unreachable {
                // One unanswered request is enough to know: the others wait for the next attempt, instead
                // of each taking its own timeout.
                if matches!(slot.entry, Entry::Pending) {
                    continue;
                }
                break;
            }
            let known = match &slot.entry {
                Entry::Ready(c) => Some(c.id),
                _ => None,
            };
            let result = resolve(&client, &subject, &slot, known).await;
            let next = match (result, &slot.entry) {
                (Ok(c), Entry::Ready(old)) if old.id == c.id => continue,
                (Ok(c), Entry::Ready(old)) => {
                    tracing::info!(subject = %subject, version = c.version, schema_id = c.id, previous_schema_id = old.id, "schema registry: a new version applies from the next record");
                    Entry::Ready(Arc::new(c))
                }
                (Ok(c), _) => {
                    tracing::info!(subject = %subject, version = c.version, schema_id = c.id, encoding = %c.kind, "schema registry: schema resolved");
                    Entry::Ready(Arc::new(c))
                }
                (Err(Problem::Transient(why)), Entry::Ready(old)) => {
                    tracing::warn!(subject = %subject, schema_id = old.id, error = %why, "schema registry: cannot look up the latest version; the cached schema stays in use");
                    continue;
                }
                (Err(Problem::Permanent(why) | Problem::Absent(why)), Entry::Ready(old)) => {
                    if slot.refused.as_deref() != Some(why.as_str()) {
                        tracing::error!(subject = %subject, version = %slot.version, schema_id = old.id, reason = %why, "schema registry: new schema refused; the route keeps the schema it had");
                        if let Some(s) = lock(&self.state)
                            .get_mut(&subject)
                            .and_then(|slots| slots.iter_mut().find(|s| s.same_shape(&slot)))
                        {
                            s.refused = Some(why);
                        }
                    }
                    continue;
                }
                (Err(Problem::Unchanged), _) => continue,
                (Err(Problem::Transient(why)), Entry::Failed(_)) => {
                    // Records keep being dead-lettered with the reason they had: a registry gone away
                    // changes nothing.
                    tracing::warn!(subject = %subject, error = %why, "schema registry: cannot look the subject up again");
                    continue;
                }
                (Err(Problem::Transient(why)), _) => {
                    unresolved.get_or_insert_with(|| format!("{subject}: {why}"));
                    unreachable = why.starts_with("unreachable");
                    Entry::Pending
                }
                (Err(Problem::Permanent(why) | Problem::Absent(why)), Entry::Failed(old)) if *old == why => continue,
                (Err(Problem::Permanent(why) | Problem::Absent(why)), _) => {
                    tracing::error!(subject = %subject, version = %slot.version, reason = %why, "schema registry: the route's records are dead-lettered until the schema can be used");
                    Entry::Failed(why)
                }
            };
            let mut state = lock(&self.state);
            if let Some(s) = state.get_mut(&subject).and_then(|slots| slots.iter_mut().find(|s| s.same_shape(&slot))) {
                s.entry = next;
                any_change = true;
            }
        }
        if any_change {
            self.changed.send_modify(|n| *n += 1);
        }
        unresolved
    }
}

fn want(state: &mut HashMap<String, Vec<Slot>>, subject: &str, rule: &EncodingRule) {
    state.entry(subject.to_string()).or_default().push(Slot {
        version: rule.version,
        kind: rule.kind,
        message: rule.message.clone(),
        schema_file: rule.schema_file.clone(),
        entry: Entry::Pending,
        refused: None,
    });
}

/// Why a subject did not resolve: worth asking again soon, or not until something changes; or the
/// registry has the very schema in use already (a refresh with nothing new).
enum Problem {
    Transient(String),
    Permanent(String),
    /// Permanent too: the registry has no such subject or version (and there was no file to register).
    Absent(String),
    Unchanged,
}

impl From<RegistryError> for Problem {
    fn from(e: RegistryError) -> Self {
        if e.is_transient() {
            Problem::Transient(e.to_string())
        } else {
            Problem::Permanent(e.to_string())
        }
    }
}

/// Why [`fetch`] found no schema: the registry has no such subject or version, or something else (in words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    Absent(String),
    Other(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Absent(w) | FetchError::Other(w) => f.write_str(w),
        }
    }
}

/// Fetches and compiles the schema `rule` names for `subject`, without registering anything (`check`
/// and `explain`).
pub async fn fetch(client: &Client, subject: &str, rule: &EncodingRule) -> Result<Compiled, FetchError> {
    let slot = Slot {
        version: rule.version,
        kind: rule.kind,
        message: rule.message.clone(),
        schema_file: None,
        entry: Entry::Pending,
        refused: None,
    };
    resolve(client, subject, &slot, None).await.map_err(|p| match p {
        Problem::Absent(w) => FetchError::Absent(w),
        Problem::Transient(w) | Problem::Permanent(w) => FetchError::Other(w),
        Problem::Unchanged => FetchError::Other("unchanged".into()),
    })
}

/// Fetches and compiles what `slot` wants of `subject`, registering its `schema_file` first if the
/// registry has no such subject. `known`: the id in use, for a refresh that finds it again (nothing to
/// compile).
async fn resolve(client: &Client, subject: &str, slot: &Slot, known: Option<u32>) -> Result<Compiled, Problem> {
    let answer = match (client.version(subject, slot.version).await, &slot.schema_file) {
        (Err(RegistryError::NotFound(_)), Some(file)) => {
            let id = client.register(subject, slot.kind, &file.text).await.map_err(|e| {
                Problem::from(e).map(|w| format!("registering `{}` under {subject}: {w}", file.path.display()))
            })?;
            tracing::info!(subject = %subject, schema_id = id, file = %file.path.display(), "schema registry: registered the route's schema_file");
            client.version(subject, slot.version).await?
        }
        (Err(RegistryError::NotFound(why)), None) => {
            return Err(Problem::Absent(format!("subject {subject} version {}: {why}", slot.version)))
        }
        (result, _) => result?,
    };
    let Some(id) = answer.id else {
        return Err(Problem::Transient(format!("subject {subject}: the registry's answer has no schema id")));
    };
    if known == Some(id) {
        return Err(Problem::Unchanged);
    }
    let version = answer.version.map_or_else(|| slot.version.to_string(), |v| v.to_string());
    let kind = answer.kind();
    if kind != Some(slot.kind) {
        return Err(Problem::Permanent(format!(
            "subject {subject} version {version} (schema {id}) holds a {} schema; the route encodes {}",
            answer.schema_type.as_deref().unwrap_or("AVRO"),
            slot.kind
        )));
    }
    let references = references(client, &answer.references).await?;
    let text = SchemaText {
        id,
        subject: subject.to_string(),
        version: answer.version.unwrap_or_default(),
        kind: slot.kind,
        text: answer.schema,
        references,
    };
    // The compilers are other people's code, fed text from the network: a panic in one refuses the schema
    // instead of ending the task that every waiting record depends on.
    let message = slot.message.clone();
    let compiled = std::panic::catch_unwind(move || Compiled::compile(&text, message.as_deref()))
        .unwrap_or_else(|_| Err("the schema compiler failed on it (a panic)".to_string()));
    compiled.map_err(|e| Problem::Permanent(format!("subject {subject} version {version} (schema {id}): {e}")))
}

impl Problem {
    fn map(self, f: impl FnOnce(String) -> String) -> Problem {
        match self {
            Problem::Transient(w) => Problem::Transient(f(w)),
            Problem::Permanent(w) => Problem::Permanent(f(w)),
            Problem::Absent(w) => Problem::Absent(f(w)),
            Problem::Unchanged => Problem::Unchanged,
        }
    }
}

/// The texts of the schemas `refs` names and of those they reference in turn, dependencies first,
/// each once.
async fn references(client: &Client, refs: &[client::Reference]) -> Result<Vec<(String, String)>, Problem> {
    let mut out: Vec<(String, String)> = Vec::new();
    // (reference, its own references expanded yet)
    let mut stack: Vec<(client::Reference, bool)> = refs.iter().rev().cloned().map(|r| (r, false)).collect();
    let mut fetched: HashMap<(String, u32), (String, Vec<client::Reference>)> = HashMap::new();
    let mut steps = 0;
    while let Some((r, expanded)) = stack.pop() {
        steps += 1;
        if steps > 1000 {
            return Err(Problem::Permanent("schema references nest too deep (or loop)".into()));
        }
        if out.iter().any(|(name, _)| *name == r.name) {
            continue;
        }
        let key = (r.subject.clone(), r.version);
        if !fetched.contains_key(&key) {
            let answer = client.version(&r.subject, SchemaVersion::Number(r.version)).await.map_err(|e| {
                Problem::from(e).map(|w| format!("reference {} ({} v{}): {w}", r.name, r.subject, r.version))
            })?;
            fetched.insert(key.clone(), (answer.schema, answer.references));
        }
        let (text, nested) = fetched[&key].clone();
        if expanded || nested.is_empty() {
            out.push((r.name, text));
        } else {
            stack.push((r, true));
            stack.extend(nested.into_iter().rev().map(|n| (n, false)));
        }
    }
    Ok(out)
}

/// Keeps the wanted schemas resolved until `stop`: at once for what is new, again on every new route
/// table and every `refresh`, and with a backoff while the registry does not answer. When the route
/// tables stop coming (the reloader ends at shutdown), it goes on for the records still waiting.
pub async fn run(schemas: Arc<Schemas>, mut routes: watch::Receiver<Arc<RouteTable>>, stop: CancellationToken) {
    let mut tables = true;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut refresh_due = false;
    let mut next_refresh = tokio::time::Instant::now() + schemas.refresh();
    loop {
        if refresh_due {
            next_refresh = tokio::time::Instant::now() + schemas.refresh();
        }
        let all = schemas.again.swap(false, std::sync::atomic::Ordering::Relaxed);
        if all {
            next_refresh = tokio::time::Instant::now() + schemas.refresh();
            backoff.reset();
        }
        let unresolved = schemas.resolve_all(refresh_due, all).await;
        refresh_due = false;
        schemas.metrics.health.set_registry_problem(unresolved.clone());
        let retry = if unresolved.is_some() {
            Some(backoff.next_delay())
        } else {
            backoff.reset();
            None
        };
        let refresh = schemas.refresh();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = schemas.wake.notified() => {}
            changed = routes.changed(), if tables => {
                if changed.is_err() {
                    tables = false;
                    continue;
                }
                let table = routes.borrow_and_update().clone();
                schemas.want_table(&table);
                // A reload looks `latest` up again.
                refresh_due = true;
            }
            _ = tokio::time::sleep(retry.unwrap_or(Duration::from_secs(3600))), if retry.is_some() => {}
            _ = tokio::time::sleep_until(next_refresh), if !refresh.is_zero() => refresh_due = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_from_str;

    fn table(routes: &str) -> RouteTable {
        let text = format!("schema_registry:\n  url: http://127.0.0.1:1\nroutes:\n{routes}");
        let env = std::collections::BTreeMap::new();
        load_from_str(std::path::Path::new("r.yaml"), &text, &env).unwrap().routes
    }

    fn schemas() -> Arc<Schemas> {
        let settings = crate::config::RegistrySettings {
            url: "http://127.0.0.1:1".into(),
            credentials: None,
            tls: None,
            refresh: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        Schemas::new(Client::new(&settings, None).unwrap(), Duration::ZERO, Arc::new(Metrics::default()))
    }

    fn slots(s: &Schemas) -> Vec<String> {
        let mut out: Vec<String> = lock(&s.state).keys().cloned().collect();
        out.sort();
        out
    }

    #[test]
    fn a_new_table_wants_its_fixed_subjects_and_forgets_what_no_route_uses() {
        let s = schemas();
        let a = table("  - {name: a, filter: a/#, topic: ta, encoding: avro}\n  - {name: t, filter: t/#, topic: 'tt.{1}', encoding: avro}\n");
        s.want_table(&a);
        assert_eq!(slots(&s), ["ta-value"], "the fixed subject at once; the templated one on first use");
        assert!(s.metrics.health.readiness(true).not_ready.iter().any(|w| w.contains("resolving 1 schema")));
        let templated = a.routes()[1].encoding.as_ref().unwrap();
        assert!(matches!(s.lookup("tt.x-value", templated), Lookup::Pending));
        assert_eq!(slots(&s), ["ta-value", "tt.x-value"]);
        // A reload that keeps only the fixed route: the templated route's subjects are forgotten. (A
        // templated route keeps every subject of its type and version: any could be one of its own.)
        let b = table("  - {name: a, filter: a/#, topic: ta, encoding: avro}\n");
        s.want_table(&b);
        assert_eq!(slots(&s), ["ta-value"]);
        // Another type for the same route name: nothing of the old shape is kept.
        let c = table("  - {name: t, filter: t/#, topic: 'tt.{1}', encoding: protobuf}\n");
        s.want_table(&c);
        assert!(slots(&s).is_empty());
    }
}

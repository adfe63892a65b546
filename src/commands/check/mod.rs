//! The `check` command: a preflight for deploys. It loads the configuration exactly as the gateway does
//! (same file, same environment overrides), connects to both brokers with those settings and reports,
//! item by item, OK, FAIL with the precise problem and a hint, or SKIP with the reason:
//!
//! - MQTT (`mqtt.rs`): reachable, authenticated, each route's filter granted in its SUBACK;
//! - Kafka (`kafka.rs`): reachable, authenticated, each route's topic and dead-letter topic existing or
//!   auto-created, and with `--produce-test` a real record written to each;
//! - the downlinks (`downlinks.rs`): each topic read existing, the consumer group's offsets readable, the
//!   dead-letter topic existing or auto-created;
//! - Schema Registry (`registry.rs`): reachable, authenticated, each route's subject present and compiling;
//! - `report.rs`: the items, their text, the exit code, and keeping secrets out of it.
//!
//! Every network step is bounded by the timeout. The MQTT connection uses a client id of its own and a
//! clean session, so it never disturbs a running gateway. Exit codes: 0 when nothing failed, 1 when an
//! item failed, 2 when the configuration is invalid.

mod downlinks;
mod kafka;
mod mqtt;
mod produce;
mod registry;
mod report;

use std::path::Path;
use std::process::ExitCode;

use crate::commands::exit;
use std::time::Duration;

pub use kafka::CHECK_HEADER;
pub use report::{Item, Report, Side, Status};

use crate::config::{self, Config};

/// How a check runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The longest any one network step may take.
    pub timeout: Duration,
    /// Write one test record to each topic that is checked.
    pub produce_test: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { timeout: Duration::from_secs(10), produce_test: false }
    }
}

/// Checks both sides against `config`, MQTT first, and returns every item with secrets redacted.
pub async fn run(config: &Config, options: &Options) -> Report {
    let mut items = mqtt::check(&config.mqtt, &config.routes, options.timeout).await;
    items.extend(kafka::check(&config.kafka, &config.routes, options).await);
    // The downlinks' topics and groups, when Kafka answered at all.
    let kafka_up = items.iter().any(|i| i.side == Side::Kafka && i.what == "reachable" && i.status == Status::Ok);
    if kafka_up && !config.downlinks.is_empty() {
        items.extend(downlinks::check(config, options).await);
    }
    items.extend(registry::check(config, options).await);
    let mut report = Report { items };
    report.redact(&secrets(config));
    report
}

/// The configured values that must never be printed: the MQTT password and every Kafka property whose
/// name says it holds a secret.
fn secrets(config: &Config) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    if let Some((_, password)) = &config.mqtt.credentials {
        out.push(password.expose());
    }
    if let Some((_, password)) = config.schema_registry.as_ref().and_then(|r| r.credentials.as_ref()) {
        out.push(password.expose());
    }
    for (key, value) in &config.kafka.properties {
        if is_secret_property(key) {
            out.push(value);
        }
    }
    out
}

fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "oauthbearer.config", "key.pem", "private"].iter().any(|s| key.contains(s))
}

/// The `check` command line: loads `path` as the gateway would, runs the check on a runtime of its own,
/// prints the report to stdout and returns the exit code (2 for an invalid configuration, printed as
/// `validate` prints it).
pub fn command(path: &Path, options: &Options) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return exit::code(exit::INVALID);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return exit::code(exit::FAILED);
        }
    };
    let report = runtime.block_on(run(&config, options));
    print!("{report}");
    exit::code(report.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_recognised() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "sasl.jaas.config",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_property(key), "{key}");
        }
        for key in ["sasl.username", "bootstrap.servers", "security.protocol", "ssl.ca.location"] {
            assert!(!is_secret_property(key), "{key}");
        }
    }
}

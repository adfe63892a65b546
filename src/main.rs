//! The `mqtt-kafka-gateway` binary: parses the command line, loads the configuration, sets up logging and
//! runs the library's pipeline until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mqtt_kafka_gateway::commands::{check, exit, explain};
use mqtt_kafka_gateway::ops::telemetry;
use mqtt_kafka_gateway::{config, pipeline};
use tokio_util::sync::CancellationToken;

// Most of what the gateway allocates lives for one message: glibc's malloc spent a fifth of the
// gateway's CPU on it under load (perf), mimalloc much less. See docs/BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bridges MQTT topics to Apache Kafka topics by the routes in a YAML file.
///
/// Every MQTT message that matches a route becomes one Kafka record per matching route:
/// {"original_topic", "device_id", "payload", "timestamp"}, keyed by device id. Messages that cannot be
/// delivered as such (payload not JSON, refused by Kafka) go to the route's dead-letter topic.
///
/// Environment variables override the file: MQTT_BROKER, KAFKA_BOOTSTRAP_SERVERS, MQTT_USERNAME,
/// MQTT_PASSWORD, KAFKA_TOPIC and MQTT_TOPIC_PATTERN (first route), and GATEWAY_<SECTION>__<KEY> for any
/// other key (e.g. GATEWAY_MQTT__CLIENT_ID=edge-1). GATEWAY_CONFIG names the file when --config does
/// not. RUST_LOG sets the log filter, LOG_FORMAT=json structured logs.
#[derive(Parser, Debug)]
#[command(name = "mqtt-kafka-gateway", version, about, long_about, max_term_width = 110)]
struct Cli {
    /// The routes file (the container image sets GATEWAY_CONFIG, so that every command finds its file).
    #[arg(
        long,
        short = 'c',
        value_name = "PATH",
        env = "GATEWAY_CONFIG",
        default_value = config::DEFAULT_CONFIG_PATH,
        global = true
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Run,
    /// Check a routes file as the gateway would, list every problem, and exit 2 if there is one (as
    /// every command does for an invalid configuration). Applies the same environment overrides as `run`.
    Validate {
        /// The file to check (default: --config).
        file: Option<PathBuf>,
    },
    /// Show which routes a message would match and the exact Kafka topic, key, headers and value each
    /// would produce (or why it would be dead-lettered). With --kafka-topic, the other way: which
    /// downlinks a Kafka record would go through, and the MQTT topic, QoS, retain flag and properties
    /// each would publish (or why it would be dead-lettered). No broker needed.
    Explain {
        /// The MQTT topic of the message.
        #[arg(long, required_unless_present = "kafka_topic", conflicts_with = "kafka_topic")]
        topic: Option<String>,
        /// Explain a Kafka record read from this topic instead (downlinks).
        #[arg(long, value_name = "TOPIC")]
        kafka_topic: Option<String>,
        /// The Kafka record's key (downlinks).
        #[arg(long, requires = "kafka_topic")]
        key: Option<String>,
        /// A header of the Kafka record, NAME=VALUE; repeat for more (downlinks).
        #[arg(long = "header", value_name = "NAME=VALUE", requires = "kafka_topic")]
        headers: Vec<String>,
        /// The Kafka record's partition (downlinks).
        #[arg(long, default_value_t = 0, requires = "kafka_topic")]
        partition: i32,
        /// The payload, as text.
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// Read the payload from a file (any bytes).
        #[arg(long, value_name = "FILE")]
        payload_file: Option<PathBuf>,
        /// The MQTT QoS the message arrived with.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
    },
    /// Preflight: connect to both brokers with the real settings (same file, same environment overrides)
    /// and report, item by item, whether MQTT is reachable, accepts the credentials and grants each
    /// route's filter, and whether Kafka is reachable, accepts the credentials and has (or will
    /// auto-create) each route's topic and dead-letter topic. Exit 0 when nothing failed, 1 when
    /// something did, 2 for an invalid configuration.
    Check {
        /// The longest any one network step may take, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
        /// Also write one small test record (header `gateway_check`) to each topic checked, and report
        /// the partition and offset it got.
        #[arg(long)]
        produce_test: bool,
    },
    /// Ask an HTTP endpoint, by default this gateway's own /readyz (on the port of http.listen in the
    /// configuration, 127.0.0.1 when it listens on every address): exit 0 on a 2xx answer, 1 otherwise.
    /// For container health checks, in an image without a shell or curl.
    Probe {
        /// The URL to ask (plain http), e.g. http://127.0.0.1:9180/healthz.
        url: Option<String>,
        /// How long to wait for the answer, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
        timeout_ms: u64,
    },
    /// Print a starting schema for what a route writes, to register and refine (`schema avro --route
    /// NAME`): the spec's envelope with the payload as a map, or typed from a sample payload.
    Schema {
        /// The schema language (avro).
        #[arg(value_parser = ["avro"])]
        language: String,
        /// The route, by name.
        #[arg(long)]
        route: String,
        /// A sample payload (a JSON file) to type the payload from.
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Validate { file } => validate(file.unwrap_or(cli.config)),
        Command::Explain { topic, kafka_topic, key, headers, partition, payload, payload_file, qos } => {
            match kafka_topic {
                Some(kafka_topic) => {
                    explain_record(cli.config, kafka_topic, key, headers, partition, payload, payload_file)
                }
                None => explain(cli.config, topic.unwrap_or_default(), payload, payload_file, qos),
            }
        }
        Command::Check { timeout, produce_test } => {
            let options = check::Options { timeout: std::time::Duration::from_secs(timeout), produce_test };
            check::command(&cli.config, &options)
        }
        Command::Schema { language: _, route, payload } => schema(cli.config, &route, payload),
        Command::Probe { url, timeout_ms } => probe(cli.config, url, timeout_ms),
        Command::Run => run(cli.config),
    }
}

fn validate(path: PathBuf) -> ExitCode {
    match config::load(&path) {
        Ok(c) => {
            let routes = c.routes.routes();
            println!("{}: OK, {} route{}", path.display(), routes.len(), if routes.len() == 1 { "" } else { "s" });
            for r in routes {
                let schema = r.schema.as_ref().map(|s| format!(", schema {}", s.configured)).unwrap_or_default();
                let limit = r
                    .rate_limit
                    .map(|l| format!(", at most {:.3} records/s", 1.0 / l.interval.as_secs_f64()))
                    .unwrap_or_default();
                let encoding = r
                    .encoding
                    .as_ref()
                    .map(|e| format!(", {} by subject {} version {}", e.kind, e.subject.source(), e.version))
                    .unwrap_or_default();
                println!(
                    "  {}: {} -> {} (QoS {}, key {}{schema}{encoding}{limit})",
                    r.name, r.filter, r.topic, r.qos, r.key
                );
            }
            if !c.downlinks.is_empty() {
                let n = c.downlinks.len();
                println!("  and {n} downlink{} (Kafka -> MQTT):", if n == 1 { "" } else { "s" });
            }
            for d in &c.downlinks {
                println!("  {}", mqtt_kafka_gateway::commands::explain::downlink_line(d));
            }
            exit::code(exit::OK)
        }
        Err(e) => {
            eprint!("{e}");
            exit::code(exit::INVALID)
        }
    }
}

/// The configuration as every command reads it; an invalid one is printed as `validate` prints it.
fn load(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprint!("{e}");
        exit::code(exit::INVALID)
    })
}

/// The payload given on the command line or in a file.
fn payload_arg(payload: Option<String>, payload_file: Option<PathBuf>) -> Result<Vec<u8>, ExitCode> {
    match (payload, payload_file) {
        (Some(p), _) => Ok(p.into_bytes()),
        (None, Some(f)) => std::fs::read(&f).map_err(|e| {
            eprintln!("cannot read {}: {e}", f.display());
            exit::code(exit::INVALID)
        }),
        (None, None) => Ok(Vec::new()),
    }
}

fn explain_record(
    path: PathBuf,
    topic: String,
    key: Option<String>,
    headers: Vec<String>,
    partition: i32,
    payload: Option<String>,
    payload_file: Option<PathBuf>,
) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let payload = match payload_arg(payload, payload_file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut parsed = Vec::new();
    for h in headers {
        let Some((name, value)) = h.split_once('=') else {
            eprintln!("--header {h}: write it as NAME=VALUE");
            return exit::code(exit::INVALID);
        };
        parsed.push((name.to_string(), Some(bytes::Bytes::from(value.to_string()))));
    }
    let record = mqtt_kafka_gateway::core::downlink::Record {
        topic,
        partition,
        offset: 0,
        key: key.map(bytes::Bytes::from),
        headers: parsed,
        payload: payload.into(),
    };
    print!("{}", explain::explain_record(&config, &record));
    exit::code(exit::OK)
}

fn explain(path: PathBuf, topic: String, payload: Option<String>, payload_file: Option<PathBuf>, qos: u8) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let payload = match payload_arg(payload, payload_file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // With a registry, the routes' schemas are fetched (nothing is registered) to show the encoded value.
    let registry = config.schema_registry.as_ref().map(|settings| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let client = mqtt_kafka_gateway::registry::client::Client::new(settings, None);
        (runtime, client)
    });
    let mut resolve = |subject: &str, rule: &mqtt_kafka_gateway::core::encoding::EncodingRule| match &registry {
        None => Err("no schema_registry is configured".to_string()),
        Some((Err(e), _)) => Err(format!("cannot start the async runtime: {e}")),
        Some((_, Err(e))) => Err(e.clone()),
        Some((Ok(runtime), Ok(client))) => {
            runtime.block_on(mqtt_kafka_gateway::registry::fetch(client, subject, rule)).map_err(|e| e.to_string())
        }
    };
    print!("{}", explain::explain(&config, &topic, &payload, qos, std::time::SystemTime::now(), &mut resolve));
    exit::code(exit::OK)
}

fn probe(path: PathBuf, url: Option<String>, timeout_ms: u64) -> ExitCode {
    use mqtt_kafka_gateway::commands::probe;
    // The configuration only gives the port; a health check must not fail because the file is being
    // swapped, so a file that does not load falls back to the default port.
    let url = url.unwrap_or_else(|| probe::default_url(config::load(&path).ok().as_ref()));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return exit::code(exit::FAILED);
        }
    };
    match runtime.block_on(probe::probe(&url, std::time::Duration::from_millis(timeout_ms))) {
        Ok(status) if (200..300).contains(&status) => {
            println!("{url}: {status}");
            exit::code(exit::OK)
        }
        Ok(status) => {
            println!("{url}: {status}");
            exit::code(exit::FAILED)
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            exit::code(exit::FAILED)
        }
    }
}

fn schema(path: PathBuf, name: &str, payload: Option<PathBuf>) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(route) = config.routes.routes().iter().find(|r| &*r.name == name) else {
        let names: Vec<&str> = config.routes.routes().iter().map(|r| &*r.name).collect();
        eprintln!("no route named {name}; the routes are: {}", names.join(", "));
        return exit::code(exit::INVALID);
    };
    let sample = match payload.map(|f| std::fs::read(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))) {
        None => None,
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(e)) => {
            eprintln!("{e}");
            return exit::code(exit::INVALID);
        }
    };
    match mqtt_kafka_gateway::commands::schema::avro(route, sample.as_deref()) {
        Ok(schema) => {
            println!("{schema}");
            exit::code(exit::OK)
        }
        Err(e) => {
            eprintln!("{e}");
            exit::code(exit::INVALID)
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("error: invalid configuration\n{e}");
            return exit::code(exit::INVALID);
        }
    };
    telemetry::init(&config.log.level, &config.log.format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Read coalescing sleeps here, once every task is idle (see mqtt::coalesce).
        .on_thread_park(mqtt_kafka_gateway::mqtt::coalesce::before_park)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return exit::code(exit::FAILED);
        }
    };
    let code = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match pipeline::run(config, shutdown).await {
            Ok(report) if report.fatal => {
                tracing::error!(undelivered = report.undelivered, "stopped after a fatal Kafka producer error");
                exit::code(exit::FAILED)
            }
            Ok(report) if report.undelivered == 0 && report.spooled > 0 => {
                tracing::info!(
                    spooled = report.spooled,
                    "stopped; every message taken was delivered or is kept in the spool, to be read back at the next start"
                );
                exit::code(exit::OK)
            }
            Ok(report) if report.undelivered == 0 => {
                tracing::info!("stopped; every message taken was delivered");
                exit::code(exit::OK)
            }
            Ok(report) => {
                tracing::error!(undelivered = report.undelivered, "stopped with records not delivered");
                exit::code(exit::FAILED)
            }
            Err(e) if e.downcast_ref::<pipeline::SpoolUnusable>().is_some() => {
                tracing::error!(error = format!("{e:#}"), "invalid configuration: the spool cannot be used");
                exit::code(exit::INVALID)
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "gateway failed");
                exit::code(exit::FAILED)
            }
        }
    });
    // Everything is settled and said by now. A blocking task may still run: a reconnect's DNS lookup of a
    // broker whose name no longer resolves can take half a minute (seen under compose, where the broker's
    // container stopped first), and dropping the runtime would wait for it until the orchestrator's SIGKILL.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting at once");
    std::process::exit(130);
}

//! A dedicated Kafka broker with secured listeners next to its PLAINTEXT one, in one JVM:
//!
//! | accessor                               | listener                                            |
//! |----------------------------------------|-----------------------------------------------------|
//! | [`bootstrap`](Kafka::bootstrap)        | PLAINTEXT: admin and test consumers, as usual       |
//! | [`SecureKafka::sasl_ssl_bootstrap`]    | SASL_SSL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512       |
//! | [`SecureKafka::ssl_bootstrap`]         | SSL with `ssl.client.auth=required`                 |
//!
//! The TLS listeners present [`Pki::server_cert`] (127.0.0.1 and localhost, so librdkafka's
//! default `ssl.endpoint.identification.algorithm=https` passes) from a PKCS12 keystore and trust
//! the test CA ([`Pki::ca_pem`]) for client certificates. Users: [`SCRAM_USER`] (both SCRAM
//! mechanisms, stored in the metadata log by `kafka-storage format --add-scram`) and
//! [`PLAIN_USER`] (the PLAIN listener's JAAS `user_<name>`). OAUTHBEARER is enabled with Kafka's
//! default validator, which accepts unsigned JWTs (`alg: none`): enough to exercise librdkafka's OIDC
//! client against [`super::oidc::TokenEndpoint`], not a test of signature checks. No authorizer: any authenticated
//! client may produce. The secured listeners are set up through `scripts/kafka-server.sh`'s
//! KAFKA_EXTRA_PROPERTIES and KAFKA_FORMAT_ARGS.

use super::kafka::READY_TIMEOUT;
use super::pki::{Pki, KEY_PASSPHRASE};
use super::{free_ports, Kafka};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A user known to SCRAM-SHA-256 and SCRAM-SHA-512, and its password.
pub const SCRAM_USER: (&str, &str) = ("alice", "alice-scram-secret");
/// A user known to PLAIN, and its password.
pub const PLAIN_USER: (&str, &str) = ("bob", "bob-plain-secret");

/// A dedicated broker (stopped and removed on drop) with its own [`Pki`]; the plain [`Kafka`]
/// API (bootstrap, create_topic, consume, kill, restart...) through `Deref`.
pub struct SecureKafka {
    kafka: Kafka,
    pki: Pki,
    sasl_ssl_port: u16,
    ssl_port: u16,
}

impl SecureKafka {
    /// Generates a PKI, starts the broker and waits until a SCRAM-SHA-512 client gets metadata
    /// over SASL_SSL (all within the harness's start-up timeout).
    pub fn start() -> SecureKafka {
        let started = Instant::now();
        let pki = Pki::generate();
        let [port, controller_port, sasl_ssl_port, ssl_port] = free_ports::<4>();
        let props = pki.dir().join("kafka-security.properties");
        let (scram_user, scram_password) = SCRAM_USER;
        let (plain_user, plain_password) = PLAIN_USER;
        let keystore = pki.server_keystore_p12();
        let ca = pki.ca_pem();
        std::fs::write(
            &props,
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},\
                 SASL_SSL://127.0.0.1:{sasl_ssl_port},SSL://127.0.0.1:{ssl_port}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{sasl_ssl_port},\
                 SSL://127.0.0.1:{ssl_port}\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL\n\
                 ssl.keystore.type=PKCS12\n\
                 ssl.keystore.location={keystore}\n\
                 ssl.keystore.password={KEY_PASSPHRASE}\n\
                 ssl.key.password={KEY_PASSPHRASE}\n\
                 ssl.truststore.type=PEM\n\
                 ssl.truststore.location={ca}\n\
                 listener.name.ssl.ssl.client.auth=required\n\
                 sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER\n\
                 listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER\n\
                 listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;\n\
                 listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule \
                 required user_{plain_user}=\"{plain_password}\";\n\
                 listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n",
                keystore = keystore.display(),
                ca = ca.display(),
            ),
        )
        .expect("write kafka-security.properties");
        let format_args = ["SCRAM-SHA-256", "SCRAM-SHA-512"]
            .map(|m| format!("--add-scram\n{m}=[name={scram_user},password={scram_password}]"))
            .join("\n");
        let env = vec![
            ("KAFKA_EXTRA_PROPERTIES".to_string(), props.display().to_string()),
            ("KAFKA_FORMAT_ARGS".to_string(), format_args),
        ];
        let kafka = Kafka::start_dedicated_with([port, controller_port], env);
        let secure = SecureKafka { kafka, pki, sasl_ssl_port, ssl_port };
        secure.wait_secure_ready(started);
        eprintln!(
            "[kafka] secured broker (SASL_SSL {}, SSL {}) ready after {:.1}s including the PKI",
            secure.sasl_ssl_bootstrap(),
            secure.ssl_bootstrap(),
            started.elapsed().as_secs_f64()
        );
        secure
    }

    /// SCRAM credentials come from the metadata log: wait until they authenticate.
    fn wait_secure_ready(&self, started: Instant) {
        let (user, password) = SCRAM_USER;
        let consumer: BaseConsumer = self
            .sasl_client_config("SCRAM-SHA-512", user, password)
            .set("socket.connection.setup.timeout.ms", "2000")
            .create()
            .expect("create rdkafka SASL_SSL consumer for readiness");
        let mut last_err = String::from("no attempt");
        while started.elapsed() < READY_TIMEOUT {
            match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(md) if !md.brokers().is_empty() => return,
                Ok(_) => last_err = "metadata without brokers".to_string(),
                Err(e) => last_err = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "Kafka's SASL_SSL listener {} did not answer SCRAM-SHA-512 within {}s (last error: {last_err}):\n{}",
            self.sasl_ssl_bootstrap(),
            READY_TIMEOUT.as_secs(),
            self.kafka.log_tail()
        );
    }

    /// "127.0.0.1:<port>" of the SASL_SSL listener.
    pub fn sasl_ssl_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_ssl_port)
    }

    /// "127.0.0.1:<port>" of the SSL listener that requires a client certificate.
    pub fn ssl_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.ssl_port)
    }

    /// (user, password) for SCRAM-SHA-256 and SCRAM-SHA-512.
    pub fn scram_user(&self) -> (&'static str, &'static str) {
        SCRAM_USER
    }

    /// (user, password) for PLAIN.
    pub fn plain_user(&self) -> (&'static str, &'static str) {
        PLAIN_USER
    }

    /// The CA that signed the broker's certificate and the client certificates it accepts.
    pub fn ca_pem(&self) -> PathBuf {
        self.pki.ca_pem()
    }

    /// The PKI of this broker: client certificates and keys for the SSL listener.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn kafka(&self) -> &Kafka {
        &self.kafka
    }

    /// An rdkafka config for the SASL_SSL listener: `mechanism` (PLAIN, SCRAM-SHA-256 or
    /// SCRAM-SHA-512) with `user`/`password`, trusting the test CA.
    pub fn sasl_client_config(&self, mechanism: &str, user: &str, password: &str) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", self.sasl_ssl_bootstrap())
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", mechanism)
            .set("sasl.username", user)
            .set("sasl.password", password)
            .set("ssl.ca.location", self.ca_pem().display().to_string());
        cfg
    }

    /// An rdkafka config for the SSL listener with a client certificate and key (and the key's
    /// password, if it is encrypted), trusting the test CA.
    pub fn ssl_client_config(&self, cert: PathBuf, key: PathBuf, key_password: Option<&str>) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", self.ssl_bootstrap())
            .set("security.protocol", "SSL")
            .set("ssl.ca.location", self.ca_pem().display().to_string())
            .set("ssl.certificate.location", cert.display().to_string())
            .set("ssl.key.location", key.display().to_string());
        if let Some(p) = key_password {
            cfg.set("ssl.key.password", p);
        }
        cfg
    }
}

impl std::ops::Deref for SecureKafka {
    type Target = Kafka;
    fn deref(&self) -> &Kafka {
        &self.kafka
    }
}

//! A throw-away PKI for the TLS tests, made at test time with the `openssl` CLI.
//!
//! [`Pki::generate`] writes into a fresh temp dir (removed when the [`Pki`] is dropped):
//!
//! * a CA (EC P-256, `basicConstraints` CA:TRUE critical, `keyUsage` keyCertSign+cRLSign) and a
//!   second, unrelated "wrong" CA;
//! * a server certificate for `IP:127.0.0.1` and `DNS:localhost` (EC P-256, serverAuth, CA:FALSE),
//!   strict enough for rustls/webpki, plus a PKCS12 keystore of it (with the CA) for Kafka;
//! * variants of it signed by the same CA: one only for `DNS:wrong.example`, and one for the right
//!   names that expired on 2020-01-02;
//! * client certificates (clientAuth) with an RSA 2048 key (PKCS#8, PKCS#1 and an encrypted PKCS#8
//!   copy) and with an EC P-256 key (PKCS#8 and SEC1).
//!
//! Nothing here is checked in: every key is new for each [`Pki`]. Leaf certificates are signed
//! with `openssl ca`, which, unlike `openssl x509 -req` in OpenSSL 3.0, can set explicit dates.
//! A missing `openssl` fails the test with the command that installs it.

use super::find_executable;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const INSTALL_HINT: &str = "install it with `apt-get install openssl`";

/// The certificates and keys of one test PKI; all paths are PEM files unless noted.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// Password of [`Pki::client_key_encrypted`] and of [`Pki::server_keystore_p12`].
pub const KEY_PASSPHRASE: &str = "test-key-passphrase";

/// `openssl.cnf` sections for `req` and for the extensions of each kind of certificate.
const EXTENSIONS: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[wrong_host]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A minimal `openssl ca` configuration (run in the PKI dir, so paths are relative).
fn ca_config(name: &str) -> String {
    format!(
        "[ca]\ndefault_ca = this_ca\n[this_ca]\n\
         database = {name}.index\nnew_certs_dir = {name}.issued\nrand_serial = yes\n\
         default_md = sha256\ndefault_days = 3650\npolicy = policy_any\nunique_subject = no\n\
         copy_extensions = none\nemail_in_dn = no\n[policy_any]\ncommonName = supplied\n"
    )
}

impl Pki {
    /// Generates the whole PKI (about a second: two RSA keys are the slow part).
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new().prefix("mkg-pki-").tempdir().expect("temp dir for the PKI");
        let pki = Pki { dir };
        std::fs::write(pki.path("openssl.cnf"), EXTENSIONS).expect("write openssl.cnf");

        pki.make_ca("ca", "mkg test CA");
        pki.make_ca("wrong-ca", "mkg unrelated CA");

        pki.ec_key("server.key");
        pki.sign("ca", "server", "localhost", "server", None);
        pki.ec_key("wrong-host.key");
        pki.sign("ca", "wrong-host", "wrong.example", "wrong_host", None);
        pki.ec_key("expired.key");
        pki.sign("ca", "expired", "localhost", "server", Some(("20200101000000Z", "20200102000000Z")));

        pki.rsa_key("client-rsa.key");
        pki.sign("ca", "client-rsa", "client-rsa", "client", None);
        pki.openssl(&["rsa", "-in", "client-rsa.key", "-traditional", "-out", "client-rsa.pkcs1.key"]);
        let pass = format!("pass:{KEY_PASSPHRASE}");
        pki.openssl(&[
            "pkcs8",
            "-topk8",
            "-in",
            "client-rsa.key",
            "-v2",
            "aes-256-cbc",
            "-passout",
            &pass,
            "-out",
            "client-rsa.encrypted.key",
        ]);
        pki.ec_key("client-ec.key");
        pki.sign("ca", "client-ec", "client-ec", "client", None);
        pki.openssl(&["ec", "-in", "client-ec.key", "-out", "client-ec.sec1.key"]);

        // Kafka's keystore: the server key and chain in PKCS12 (Java 17 reads OpenSSL 3's
        // AES-256/PBKDF2 defaults).
        pki.openssl(&[
            "pkcs12",
            "-export",
            "-in",
            "server.pem",
            "-inkey",
            "server.key",
            "-certfile",
            "ca.pem",
            "-name",
            "server",
            "-passout",
            &pass,
            "-out",
            "server.p12",
        ]);

        for (file, marker) in [
            ("client-rsa.key", "-----BEGIN PRIVATE KEY-----"),
            ("client-rsa.pkcs1.key", "-----BEGIN RSA PRIVATE KEY-----"),
            ("client-rsa.encrypted.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            ("client-ec.key", "-----BEGIN PRIVATE KEY-----"),
            ("client-ec.sec1.key", "-----BEGIN EC PRIVATE KEY-----"),
        ] {
            let text = std::fs::read_to_string(pki.path(file)).expect("read a generated key");
            assert!(text.starts_with(marker), "{file} does not start with {marker}:\n{text}");
        }
        pki
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `openssl args...` in the PKI dir and panics with its output if it fails.
    fn openssl(&self, args: &[&str]) {
        let bin = find_executable("openssl").unwrap_or_else(|| panic!("`openssl` not found on PATH; {INSTALL_HINT}"));
        let out = Command::new(&bin)
            .args(args)
            .current_dir(self.dir.path())
            .env("OPENSSL_CONF", self.path("openssl.cnf"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
        assert!(
            out.status.success(),
            "openssl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ec_key(&self, out: &str) {
        self.openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", out]);
    }

    fn rsa_key(&self, out: &str) {
        self.openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", out]);
    }

    /// `<name>.key` + `<name>.pem`: a self-signed CA, valid for ten years.
    fn make_ca(&self, name: &str, cn: &str) {
        self.ec_key(&format!("{name}.key"));
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-config",
            "openssl.cnf",
            "-extensions",
            "v3_ca",
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "3650",
            "-sha256",
            "-out",
            &format!("{name}.pem"),
        ]);
        std::fs::create_dir(self.path(&format!("{name}.issued"))).expect("dir for issued certificates");
        std::fs::write(self.path(&format!("{name}.index")), "").expect("write the CA index");
        std::fs::write(self.path(&format!("{name}.cnf")), ca_config(name)).expect("write the CA config");
    }

    /// `<name>.pem` for the existing key `<name>.key`, signed by `ca` with the extensions of
    /// `section`, valid for ten years from now or between the given `(start, end)` dates.
    fn sign(&self, ca: &str, name: &str, cn: &str, section: &str, dates: Option<(&str, &str)>) {
        let csr = format!("{name}.csr");
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-config",
            "openssl.cnf",
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ]);
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            &format!("{ca}.cnf"),
            "-cert",
            &format!("{ca}.pem"),
            "-keyfile",
            &format!("{ca}.key"),
            "-in",
            &csr,
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            "openssl.cnf",
            "-extensions",
            section,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if let Some((start, end)) = dates {
            args.extend(["-startdate", start, "-enddate", end].map(String::from));
        }
        self.openssl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// The test CA's certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The unrelated CA's certificate: trusting it must fail every handshake with these servers.
    pub fn wrong_ca_pem(&self) -> PathBuf {
        self.path("wrong-ca.pem")
    }

    /// Server certificate for 127.0.0.1 and localhost.
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }

    /// Its key (EC P-256, PKCS#8).
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    /// PKCS12 keystore of the server key and chain (password [`KEY_PASSPHRASE`]).
    pub fn server_keystore_p12(&self) -> PathBuf {
        self.path("server.p12")
    }

    /// Server certificate for 127.0.0.1 and localhost whose validity ended on 2020-01-02.
    pub fn expired_server_cert(&self) -> PathBuf {
        self.path("expired.pem")
    }

    pub fn expired_server_key(&self) -> PathBuf {
        self.path("expired.key")
    }

    /// Server certificate from the right CA for `DNS:wrong.example` only.
    pub fn wrong_host_server_cert(&self) -> PathBuf {
        self.path("wrong-host.pem")
    }

    pub fn wrong_host_server_key(&self) -> PathBuf {
        self.path("wrong-host.key")
    }

    /// Client certificate (CN client-rsa) with an RSA 2048 key.
    pub fn client_rsa_cert(&self) -> PathBuf {
        self.path("client-rsa.pem")
    }

    /// "BEGIN PRIVATE KEY"
    pub fn client_rsa_key_pkcs8(&self) -> PathBuf {
        self.path("client-rsa.key")
    }

    /// "BEGIN RSA PRIVATE KEY"
    pub fn client_rsa_key_pkcs1(&self) -> PathBuf {
        self.path("client-rsa.pkcs1.key")
    }

    /// The RSA client key as encrypted PKCS#8 ("BEGIN ENCRYPTED PRIVATE KEY"), password
    /// [`Pki::client_key_passphrase`].
    pub fn client_key_encrypted(&self) -> PathBuf {
        self.path("client-rsa.encrypted.key")
    }

    pub fn client_key_passphrase(&self) -> &'static str {
        KEY_PASSPHRASE
    }

    /// Client certificate (CN client-ec) with an EC P-256 key.
    pub fn client_ec_cert(&self) -> PathBuf {
        self.path("client-ec.pem")
    }

    /// "BEGIN PRIVATE KEY"
    pub fn client_ec_key_pkcs8(&self) -> PathBuf {
        self.path("client-ec.key")
    }

    /// "BEGIN EC PRIVATE KEY"
    pub fn client_ec_key_sec1(&self) -> PathBuf {
        self.path("client-ec.sec1.key")
    }
}

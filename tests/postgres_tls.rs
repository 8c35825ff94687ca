//! TLS to the PostgreSQL store as managed services demand it: one private server with
//! `ssl = on` and a `pg_hba.conf` that lets tagpin's role in over TLS only (and a second
//! role by client certificate only), certificates made with the `openssl` CLI. tagpin
//! reaches it with `verify-full` and pins; a wrong CA, a host name the certificate lacks,
//! a plain connection and a missing client certificate are each refused with a one-line
//! reason that never holds the password.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::postgres::{PgServer, USER};
use common::procs::require_binary;
use common::*;

const PASSWORD: &str = "hunter2-tls-do-not-log-me";
/// The role that may log in only with a client certificate naming it.
const CERT_USER: &str = "certuser";

/// `tagpin` over TLS only and with its password (except the harness's own plain look at
/// `postgres`), and `certuser` by certificate only.
const HBA: &str = "\
local   all       all                      trust
host    postgres  tagpin    127.0.0.1/32   trust
hostssl all       certuser  127.0.0.1/32   cert
hostssl all       tagpin    127.0.0.1/32   scram-sha-256
";

struct TlsServer {
    server: PgServer,
    /// The CA that signed the server's and the client's certificates.
    ca: PathBuf,
    /// A CA that signed nothing here.
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    _certs: tempfile::TempDir,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new(require_binary("openssl", "openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `NAME.key` and a self-signed CA certificate `NAME.pem` in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={name}"));
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subj,
            "-keyout",
            &key,
            "-out",
            &pem,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        dir,
    );
}

/// `NAME.key` and `NAME.pem` signed by the CA `ca`, for common name `cn` with
/// `extensions` (an `openssl x509 -extfile`).
fn make_leaf(dir: &Path, name: &str, ca: &str, cn: &str, extensions: &str) {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), extensions).unwrap();
    let subj = format!("/CN={cn}");
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &subj,
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
        dir,
    );
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
        dir,
    );
}

/// The one server of this test process.
fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let certs = tempfile::tempdir().unwrap();
        let dir = certs.path();
        make_ca(dir, "ca");
        make_ca(dir, "other-ca");
        make_leaf(
            dir,
            "server",
            "ca",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        );
        make_leaf(
            dir,
            "client",
            "ca",
            CERT_USER,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let server = PgServer::start_with(
            &[
                ("ssl", "on"),
                ("ssl_cert_file", "server.pem"),
                ("ssl_key_file", "server.key"),
                ("ssl_ca_file", "ca.pem"),
            ],
            &[
                ("server.pem", &read("server.pem")),
                ("server.key", &read("server.key")),
                ("ca.pem", &read("ca.pem")),
                ("pg_hba.conf", HBA.as_bytes()),
            ],
        );
        server
            .connect("postgres")
            .batch_execute(&format!(
                "CREATE ROLE {CERT_USER} LOGIN; ALTER ROLE {USER} PASSWORD '{PASSWORD}'"
            ))
            .unwrap();
        TlsServer {
            server,
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            _certs: certs,
        }
    })
}

impl TlsServer {
    /// A new database owned by `owner` ([a-z_]+, unique in this process).
    fn database(&self, name: &str, owner: &str) -> String {
        self.server
            .connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        name.to_owned()
    }

    /// A superuser session on `db` through the Unix socket (TCP would need TLS).
    fn local(&self, db: &str) -> ::postgres::Client {
        ::postgres::Config::new()
            .host_path(self.server.socket_dir())
            .port(self.server.port)
            .user(USER)
            .dbname(db)
            .connect(::postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {db} over the socket: {e}"))
    }

    /// `postgres://tagpin:PASSWORD@HOST:PORT/DB?PARAMS`.
    fn url(&self, host: &str, db: &str, params: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@{host}:{}/{db}?{params}", self.server.port)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `tagpin export` offline on the database: the quickest way to have tagpin open the
/// store and say whether it could (exit status, stderr). The environment's database
/// settings are removed, `env` set.
fn export(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tagpin"));
    cmd.arg("export").args(args);
    for var in [
        "TAGPIN_DATABASE_URL",
        "TAGPIN_DATABASE_PASSWORD_FILE",
        "TAGPIN_DATABASE_SSLMODE",
        "TAGPIN_DATABASE_SSLROOTCERT",
        "TAGPIN_DATABASE_SSLCERT",
        "TAGPIN_DATABASE_SSLKEY",
        "TAGPIN_ADMIN_URL",
        "TAGPIN_ADMIN_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.envs(env.iter().copied()).output().expect("run tagpin export");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains(PASSWORD), "the password leaked: {stderr}");
    (out.status.success(), stderr)
}

/// The stderr line holding `cause`, which must be there.
fn line_with<'a>(stderr: &'a str, cause: &str) -> &'a str {
    stderr
        .lines()
        .find(|l| l.contains(cause))
        .unwrap_or_else(|| panic!("no line says {cause:?}:\n{stderr}"))
}

#[test]
fn verify_full_with_the_right_ca_serves_and_pins_over_tls() {
    let s = tls_server();
    let db = s.database("pins_verified", USER);
    // SCRAM bound to this TLS channel (tls-server-end-point), or no connection at all.
    let url = s.url(
        "127.0.0.1",
        &db,
        &format!(
            "sslmode=verify-full&sslrootcert={}&channel_binding=require",
            path(&s.ca)
        ),
    );
    let registry = Registry::start();
    let tagpin = Tagpin::start_on_database(&registry.url(), &url, &[]);
    let ready = request(tagpin.addr, "GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 200, "{}\n{}", ready.text(), tagpin.logs().join("\n"));

    let first = Image::random(7001, 1500);
    let dir = tempfile::tempdir().unwrap();
    first.write_layout(dir.path(), "t");
    let dest = format!("docker://{}/app:1.0", tagpin.host());
    let out = skopeo_copy(&format!("oci:{}:t", dir.path().display()), &dest, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(upstream_digest(&registry, "app", "1.0"), Some(first.digest()));

    // Pinned: another digest under the tag is refused, and the upstream keeps the first.
    let second = Image::random(7002, 1500);
    second.push_blobs(tagpin.addr, "app", "");
    assert_eq!(second.put_manifest(tagpin.addr, "app", "1.0", "").status, 409);
    assert_eq!(upstream_digest(&registry, "app", "1.0"), Some(first.digest()));

    // Every session tagpin holds on the database is encrypted.
    let sessions = s
        .server
        .connect("postgres")
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
            &[&db],
        )
        .unwrap();
    let (tls, plain): (i64, i64) = (sessions.get(0), sessions.get(1));
    assert!(tls > 0 && plain == 0, "{tls} sessions over TLS, {plain} plain");
    assert!(tagpin.logs().iter().all(|l| !l.contains(PASSWORD)));
}

#[test]
fn verify_full_with_another_ca_fails_closed_and_names_the_ca() {
    let s = tls_server();
    let db = s.database("pins_wrong_ca", USER);
    let url = s.url(
        "127.0.0.1",
        &db,
        &format!("sslmode=verify-full&sslrootcert={}", path(&s.other_ca)),
    );
    let registry = Registry::start();
    let tagpin = Tagpin::start_on_database(&registry.url(), &url, &[]);
    let cause = format!(
        "the server's certificate is not signed by sslrootcert {}",
        path(&s.other_ca)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tagpin.logs().iter().any(|l| l.contains(&cause)) {
        assert!(
            Instant::now() < deadline,
            "never logged {cause:?}:\n{}",
            tagpin.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fail closed: a push that needs the store is refused, and readiness says why not.
    let img = Image::random(7003, 1200);
    img.push_blobs(tagpin.addr, "app", "");
    assert_eq!(img.put_manifest(tagpin.addr, "app", "1.0", "").status, 503);
    assert_eq!(upstream_digest(&registry, "app", "1.0"), None);
    assert_eq!(request(tagpin.addr, "GET", "/readyz", &[], b"").status, 503);
    let logs = tagpin.logs();
    if let Some(l) = logs.iter().find(|l| l.contains(PASSWORD)) {
        panic!("a log line carries the database password: {l}");
    }
}

#[test]
fn verify_full_against_a_host_name_the_certificate_lacks_names_both() {
    let s = tls_server();
    let db = s.database("pins_wrong_name", USER);
    // The TCP connection goes to 127.0.0.1; the name checked is the URL's host.
    let url = s.url(
        "db.example",
        &db,
        &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}", path(&s.ca)),
    );
    let (ok, stderr) = export(&["--database-url", &url], &[]);
    assert!(!ok, "{stderr}");
    line_with(
        &stderr,
        "the server's certificate is for localhost, 127.0.0.1, not db.example",
    );
    // The same server under a name its certificate holds: accepted.
    let url = s.url(
        "localhost",
        &db,
        &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}", path(&s.ca)),
    );
    let (ok, stderr) = export(&["--database-url", &url], &[]);
    assert!(ok, "{stderr}");
}

#[test]
fn verify_ca_checks_the_chain_not_the_name_and_require_with_a_root_is_verify_ca() {
    let s = tls_server();
    let db = s.database("pins_verify_ca", USER);
    let as_db_example = |params: String| s.url("db.example", &db, &format!("hostaddr=127.0.0.1&{params}"));
    let (ok, stderr) = export(
        &[
            "--database-url",
            &as_db_example(format!("sslmode=verify-ca&sslrootcert={}", path(&s.ca))),
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let (ok, stderr) = export(
        &[
            "--database-url",
            &as_db_example("sslmode=require".into()),
            "--database-sslrootcert",
            path(&s.other_ca),
        ],
        &[],
    );
    assert!(!ok, "{stderr}");
    line_with(
        &stderr,
        &format!(
            "the server's certificate is not signed by sslrootcert {}",
            path(&s.other_ca)
        ),
    );
    // verify-full without a root: the web PKI roots, which did not sign this server's.
    let (ok, stderr) = export(
        &[
            "--database-url",
            &s.url("localhost", &db, "hostaddr=127.0.0.1&sslmode=verify-full"),
        ],
        &[],
    );
    assert!(!ok, "{stderr}");
    line_with(&stderr, "not signed by a web PKI root CA");
}

#[test]
fn require_without_a_root_cert_connects_and_disable_is_refused_by_hostssl() {
    let s = tls_server();
    let db = s.database("pins_require", USER);
    // sslmode from the environment, beside a URL without one.
    let url = s.url("127.0.0.1", &db, "application_name=tagpin-tls-test");
    let (ok, stderr) = export(&["--database-url", &url], &[("TAGPIN_DATABASE_SSLMODE", "require")]);
    assert!(ok, "{stderr}");
    // The schema was created over that connection.
    let tables: i64 = s
        .local(&db)
        .query_one("SELECT count(*) FROM tagpin_schema", &[])
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("no schema in {db}: {e}"));
    assert!(tables > 0);
    // Without sslmode, prefer: TLS, since the server offers it.
    let (ok, stderr) = export(&["--database-url", &url], &[]);
    assert!(ok, "{stderr}");

    let (ok, stderr) = export(&["--database-url", &url, "--database-sslmode", "disable"], &[]);
    assert!(!ok, "{stderr}");
    let line = line_with(&stderr, "no pg_hba.conf entry");
    assert!(line.contains("no encryption"), "{line}");
}

#[test]
fn a_client_certificate_gets_in_where_pg_hba_demands_one() {
    let s = tls_server();
    let db = s.database("pins_cert", CERT_USER);
    let url = format!("postgres://{CERT_USER}@127.0.0.1:{}/{db}", s.server.port);
    let verified = [
        "--database-url",
        &url,
        "--database-sslmode",
        "verify-full",
        "--database-sslrootcert",
        path(&s.ca),
    ];
    let (ok, stderr) = export(&verified, &[]);
    assert!(!ok, "got in without a certificate: {stderr}");
    line_with(&stderr, "connection requires a valid client certificate");

    let mut with_cert = verified.to_vec();
    with_cert.extend(["--database-sslcert", path(&s.client_cert)]);
    let (ok, stderr) = export(&with_cert, &[("TAGPIN_DATABASE_SSLKEY", path(&s.client_key))]);
    assert!(ok, "{stderr}");
    let owner: String = s
        .local(&db)
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'tagpin_schema'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, CERT_USER, "the schema was created by the certificate's role");
}

//! TLS to the database: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, on
//! rustls (ring) through `tokio-postgres-rustls`.
//!
//! rust-postgres itself knows only `disable`, `prefer` and `require`, and whether it
//! negotiates TLS at all ([`SslMode::client_mode`]); which certificate the server may
//! show is decided here, as libpq does ("SSL Support", "Protection Provided in Different
//! Modes"):
//! - `disable`: plain;
//! - `prefer`: TLS when the server offers it, plain when it does not; the certificate is
//!   not checked;
//! - `require`: TLS, the certificate not checked; with `sslrootcert` it is `verify-ca`;
//! - `verify-ca`: the server's chain must lead to `sslrootcert` (the web PKI roots of
//!   `webpki-roots` without one), whatever names the certificate holds;
//! - `verify-full`: that, and the certificate must name the host tagpin connects to (the
//!   URL's host, which `hostaddr` does not change).
//!
//! A handshake that fails is reported in one line that names the cause (the CA that did
//! not sign the certificate, the names it holds); never the URL or the password, which
//! this module does not see.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, less `allow` (plain first, TLS only when refused: nothing a store
/// holding pins should want).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static str = "disable, prefer, require, verify-ca or verify-full";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What rust-postgres must be told: whether TLS is skipped, tried or demanded.
    pub fn client_mode(self) -> postgres::config::SslMode {
        match self {
            Self::Disable => postgres::config::SslMode::Disable,
            Self::Prefer => postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => postgres::config::SslMode::Require,
        }
    }
}

/// Which file a TLS setting could not be used for, and why.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("{0}")]
    RootCert(String),
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

/// The TLS side of tagpin's database connections; cheap to clone (one config, shared).
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    connector: MakeRustlsConnect,
    /// The `sslrootcert` file, named in errors.
    root: Option<Arc<Path>>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTls({})", self.mode.as_str())
    }
}

impl PgTls {
    /// No files: `prefer` and `require` as rust-postgres's own `sslmode` asks for them,
    /// certificates unchecked (`disable` never uses it).
    pub fn unverified() -> Self {
        let config = client_config(ServerCert::new(None, false), None).expect("no client key, nothing to refuse");
        Self {
            mode: SslMode::Prefer,
            connector: MakeRustlsConnect::new(config),
            root: None,
        }
    }

    /// The connector for `mode` with the PEM files given: `root` is `sslrootcert`, `client`
    /// the (`sslcert`, `sslkey`) pair. Every file given is read and parsed here, so a bad
    /// one stops tagpin at start. `require` with a root is `verify-ca`, as in libpq; the
    /// `verify-*` modes without one trust the web PKI roots.
    pub fn from_files(
        mode: SslMode,
        root: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, TlsFileError> {
        let mode = match (mode, root) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        };
        let roots = root.map(read_roots).transpose()?;
        let pair = match client {
            None => None,
            Some((cert, key)) => {
                let chain = read_certs(cert).map_err(TlsFileError::Cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| TlsFileError::Key(format!("{}: no usable PEM private key: {e}", key.display())))?;
                Some((chain, key))
            }
        };
        let verified = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull).then(|| {
            roots.unwrap_or_else(|| RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        });
        let verifier = ServerCert::new(verified, mode == SslMode::VerifyFull);
        // Only a client key can fail here: rustls checks that it is the certificate's.
        let config = client_config(verifier, pair).map_err(|e| {
            let (cert, key) = client.unwrap_or((Path::new(""), Path::new("")));
            TlsFileError::Key(format!(
                "{} is not the key of sslcert {}: {e}",
                key.display(),
                cert.display()
            ))
        })?;
        Ok(Self {
            mode,
            connector: MakeRustlsConnect::new(config),
            root: root.map(Arc::from),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn client_config(
    verifier: ServerCert,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key),
    }
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut store = RootCertStore::empty();
    for cert in read_certs(path).map_err(TlsFileError::RootCert)? {
        store
            .add(cert)
            .map_err(|e| TlsFileError::RootCert(format!("{}: {e}", path.display())))?;
    }
    Ok(store)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The server certificate check of every mode: none (`roots` empty), the chain, or the
/// chain and the name. The handshake's own signatures are always checked, so the server
/// holds the key of the certificate it shows.
#[derive(Debug, Clone)]
struct ServerCert {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCert {
    /// `roots`: `None` checks no certificate; `check_name`: the certificate must name the
    /// host too.
    fn new(roots: Option<RootCertStore>, check_name: bool) -> Self {
        Self {
            roots: roots.map(Arc::new),
            check_name,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algs.all)?;
            if self.check_name {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

type Inner = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = Stream;
    type TlsConnect = Connect;
    type Error = Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, Infallible> {
        Ok(Connect {
            inner: MakeTlsConnect::<Socket>::make_tls_connect(&mut self.connector, host)?,
            host: host.to_owned(),
            root: self.root.clone(),
        })
    }
}

/// One handshake, whose failure is explained.
pub struct Connect {
    inner: Inner,
    host: String,
    root: Option<Arc<Path>>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        let Connect { inner, host, root } = self;
        let handshake = inner.connect(socket);
        Box::pin(async move { handshake.await.map_err(|e| explain(e, &host, root.as_deref())) })
    }
}

/// The cause of a failed handshake in words an operator acts on; rustls's own words for
/// the causes not named here.
fn explain(e: io::Error, host: &str, root: Option<&Path>) -> io::Error {
    let Some(rustls::Error::InvalidCertificate(cert)) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return e;
    };
    let why = match cert {
        CertificateError::BadSignature => {
            "a signature of the server's certificate chain or of its handshake does not verify".to_owned()
        }
        CertificateError::UnknownIssuer => match root {
            Some(root) => format!(
                "the server's certificate is not signed by sslrootcert {}",
                root.display()
            ),
            None => "the server's certificate is not signed by a web PKI root CA (without sslrootcert, verify-ca \
                     and verify-full trust those; set sslrootcert to the CA that signed it)"
                .to_owned(),
        },
        CertificateError::NotValidForNameContext { presented, .. } if !presented.is_empty() => {
            let names: Vec<&str> = presented.iter().map(|n| bare_name(n)).collect();
            format!("the server's certificate is for {}, not {host}", names.join(", "))
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("the server's certificate does not name {host}")
        }
        other => format!("the server's certificate: {other}"),
    };
    io::Error::new(e.kind(), why)
}

/// A name as webpki presents it (`DnsName("db.example")`, `IpAddress(10.0.0.5)`), bare.
fn bare_name(presented: &str) -> &str {
    let inner = |prefix: &str| {
        presented
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(')'))
            .map(|n| n.trim_matches('"'))
    };
    inner("DnsName(").or_else(|| inner("IpAddress(")).unwrap_or(presented)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_errors_are_bare() {
        assert_eq!(bare_name("DnsName(\"db.example\")"), "db.example");
        assert_eq!(bare_name("IpAddress(10.0.0.5)"), "10.0.0.5");
        assert_eq!(bare_name("IpAddress(::1)"), "::1");
        assert_eq!(
            bare_name("UniformResourceIdentifier(\"x\")"),
            "UniformResourceIdentifier(\"x\")"
        );
    }

    #[test]
    fn sslmode_names_round_trip_and_map_to_what_rust_postgres_negotiates() {
        use postgres::config::SslMode as Pg;
        for (name, pg) in [
            ("disable", Pg::Disable),
            ("prefer", Pg::Prefer),
            ("require", Pg::Require),
            ("verify-ca", Pg::Require),
            ("verify-full", Pg::Require),
        ] {
            let mode = SslMode::parse(name).unwrap();
            assert_eq!((mode.as_str(), mode.client_mode()), (name, pg));
        }
        assert_eq!(SslMode::parse("allow"), None);
        assert_eq!(SslMode::parse("VERIFY-FULL"), None);
    }
}

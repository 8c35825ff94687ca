//! The PostgreSQL store's settings: the URL, its password (in the URL or a file) and TLS,
//! libpq style (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) as URL parameters or as
//! settings of their own. Errors name the setting and never repeat the URL: it may hold
//! the password.

use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;

use super::{ConfigError, Database};
use crate::store::{PgTls, SslMode, TlsFileError};

/// The database settings as given (flag, environment or config file).
#[derive(Debug, Default, Clone, Copy)]
pub struct DatabaseSettings<'a> {
    pub url: &'a str,
    pub password_file: Option<&'a Path>,
    pub sslmode: Option<&'a str>,
    pub sslrootcert: Option<&'a Path>,
    pub sslcert: Option<&'a Path>,
    pub sslkey: Option<&'a Path>,
}

/// libpq's default: TLS when the server offers it.
const DEFAULT_SSLMODE: SslMode = SslMode::Prefer;

/// A `postgres://` or `postgresql://` URL, with the password from `password_file` when
/// given and TLS from the URL's parameters or the settings (which must agree where both
/// are given).
pub fn database(s: &DatabaseSettings<'_>) -> Result<Database, ConfigError> {
    if !(s.url.starts_with("postgres://") || s.url.starts_with("postgresql://")) {
        return Err(ConfigError::invalid(
            "database_url",
            "must start with postgres:// or postgresql://",
        ));
    }
    let (url, params) = split_tls_params(s.url);
    let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
        // The parser's message names what is wrong without echoing the value.
        ConfigError::invalid("database_url", format!("not a valid PostgreSQL URL: {e}"))
    })?;
    if let Some(path) = s.password_file {
        let text = super::secrets::read("database_password_file", path)?;
        let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if password.is_empty() {
            return Err(ConfigError::invalid(
                "database_password_file",
                format!("{} is empty", path.display()),
            ));
        }
        config.password(password);
    }
    if config.get_dbname().is_none() {
        return Err(ConfigError::invalid(
            "database_url",
            "names no database (postgres://host/DATABASE)",
        ));
    }
    let tls = tls(s, params)?;
    config.ssl_mode(tls.mode().client_mode());
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(s) => s.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let display = format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or(""));
    Ok(Database { config, tls, display })
}

/// The TLS parameters of a URL.
#[derive(Debug, Default, PartialEq)]
struct UrlTls {
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
}

/// The URL without libpq's TLS parameters, which rust-postgres does not know (`verify-ca`,
/// `verify-full`, the three files), and their values. The URL is cut as rust-postgres
/// reads it: the credentials end at the first `@`, the parameters begin at the first `?`
/// after them.
fn split_tls_params(url: &str) -> (String, UrlTls) {
    let after_credentials = url.find('@').map_or(0, |i| i + 1);
    let Some(q) = url[after_credentials..].find('?').map(|i| i + after_credentials) else {
        return (url.to_owned(), UrlTls::default());
    };
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let (mut kept, mut tls) = (Vec::new(), UrlTls::default());
    for pair in url[q + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(key).as_str() {
            "sslmode" => tls.sslmode = Some(decode(value)),
            "sslrootcert" => tls.sslrootcert = Some(decode(value).into()),
            "sslcert" => tls.sslcert = Some(decode(value).into()),
            "sslkey" => tls.sslkey = Some(decode(value).into()),
            _ => kept.push(pair),
        }
    }
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    (rest, tls)
}

/// One TLS setting, from the URL or its own setting, and the key an error names.
fn one_of<'a, T: PartialEq + ?Sized + std::fmt::Debug>(
    name: &'static str,
    key: &'static str,
    in_url: Option<&'a T>,
    setting: Option<&'a T>,
) -> Result<Option<(&'a T, &'static str)>, ConfigError> {
    match (in_url, setting) {
        (Some(u), Some(s)) if u != s => Err(ConfigError::invalid(
            key,
            format!("{s:?} disagrees with {name} {u:?} in the database URL; give it once"),
        )),
        (_, Some(s)) => Ok(Some((s, key))),
        (Some(u), None) => Ok(Some((u, "database_url"))),
        (None, None) => Ok(None),
    }
}

fn tls(s: &DatabaseSettings<'_>, url: UrlTls) -> Result<PgTls, ConfigError> {
    let mode = match one_of("sslmode", "database_sslmode", url.sslmode.as_deref(), s.sslmode)? {
        None => DEFAULT_SSLMODE,
        Some((value, key)) => SslMode::parse(value)
            .ok_or_else(|| ConfigError::invalid(key, format!("sslmode {value:?} is not one of {}", SslMode::NAMES)))?,
    };
    let root = one_of(
        "sslrootcert",
        "database_sslrootcert",
        url.sslrootcert.as_deref(),
        s.sslrootcert,
    )?;
    let cert = one_of("sslcert", "database_sslcert", url.sslcert.as_deref(), s.sslcert)?;
    let key = one_of("sslkey", "database_sslkey", url.sslkey.as_deref(), s.sslkey)?;
    let client = match (cert, key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((c, k)),
        (Some((_, k)), None) => return Err(ConfigError::invalid(k, "sslcert needs sslkey (its private key)")),
        (None, Some((_, k))) => return Err(ConfigError::invalid(k, "sslkey needs sslcert (its certificate)")),
    };
    PgTls::from_files(mode, root.map(|r| r.0), client.map(|(c, k)| (c.0, k.0))).map_err(|e| {
        let (key, what) = match &e {
            TlsFileError::RootCert(_) => (root.map(|r| r.1), "sslrootcert"),
            TlsFileError::Cert(_) => (cert.map(|c| c.1), "sslcert"),
            TlsFileError::Key(_) => (key.map(|k| k.1), "sslkey"),
        };
        ConfigError::invalid(key.unwrap_or("database_url"), format!("{what} {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn url(url: &str) -> Result<Database, ConfigError> {
        database(&DatabaseSettings {
            url,
            ..Default::default()
        })
    }

    #[test]
    fn database_urls_keep_their_password_out_of_errors_and_debug() {
        let d = url("postgres://tagpin:hunter2@127.0.0.1:5432/pins?sslmode=disable").unwrap();
        assert_eq!(format!("{d:?}"), "Database(127.0.0.1/pins)");
        assert_eq!(d.config.get_password(), Some(&b"hunter2"[..]));
        let f = file("from-file\n");
        let d = database(&DatabaseSettings {
            url: "postgresql://tagpin@db/pins",
            password_file: Some(f.path()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.config.get_password(), Some(&b"from-file"[..]));
        for bad in [
            "mysql://u:hunter2@h/db",
            "postgres://u:hunter2@h:notaport/db",
            "postgres://u:hunter2@h/",
            "postgres://u:hunter2@h/db?sslmode=verify-everything",
            "postgres://u:hunter2@h/db?sslrootcert=/nonexistent/ca.pem",
        ] {
            let e = url(bad).unwrap_err().to_string();
            assert!(e.starts_with("database_url"), "{e}");
            assert!(!e.contains("hunter2") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_tls_parameters_leave_the_url_and_the_others_stay() {
        let (rest, tls) = split_tls_params(
            "postgres://u:p%3Fw@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&hostaddr=127.0.0.1",
        );
        assert_eq!(rest, "postgres://u:p%3Fw@h:5/db?application_name=x&hostaddr=127.0.0.1");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(tls.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        // A `?` in the password is the password's.
        let (rest, tls) = split_tls_params("postgres://u:a?b@h/db?sslkey=/k");
        assert_eq!(
            (rest.as_str(), tls.sslkey),
            ("postgres://u:a?b@h/db", Some(PathBuf::from("/k")))
        );
        assert_eq!(split_tls_params("postgres://h/db").0, "postgres://h/db");
    }

    #[test]
    fn sslmode_defaults_to_prefer_and_maps_to_what_rust_postgres_knows() {
        let d = url("postgres://u@h/db").unwrap();
        assert_eq!(d.tls.mode(), SslMode::Prefer);
        assert_eq!(d.config.get_ssl_mode(), postgres::config::SslMode::Prefer);
        let d = url("postgres://u@h/db?sslmode=verify-full").unwrap();
        assert_eq!(d.tls.mode(), SslMode::VerifyFull);
        assert_eq!(d.config.get_ssl_mode(), postgres::config::SslMode::Require);
        let d = url("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(d.config.get_ssl_mode(), postgres::config::SslMode::Disable);
    }

    #[test]
    fn a_setting_and_the_url_must_agree_and_errors_name_the_setting() {
        let s = |url, sslmode| DatabaseSettings {
            url,
            sslmode,
            ..Default::default()
        };
        let d = database(&s("postgres://u@h/db?sslmode=require", Some("require"))).unwrap();
        assert_eq!(d.tls.mode(), SslMode::Require);
        let d = database(&s("postgres://u@h/db", Some("verify-ca"))).unwrap();
        assert_eq!(d.tls.mode(), SslMode::VerifyCa);
        let e = database(&s("postgres://u@h/db?sslmode=verify-full", Some("require")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("database_sslmode: \"require\" disagrees"), "{e}");
        let e = database(&s("postgres://u@h/db", Some("allow")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("database_sslmode: sslmode \"allow\" is not one of"),
            "{e}"
        );
        let missing = Path::new("/nonexistent/tagpin/ca.pem");
        for (settings, key) in [
            (
                DatabaseSettings {
                    sslrootcert: Some(missing),
                    ..s("postgres://u@h/db", None)
                },
                "database_sslrootcert",
            ),
            (
                DatabaseSettings {
                    sslcert: Some(missing),
                    sslkey: Some(missing),
                    ..s("postgres://u@h/db", None)
                },
                "database_sslcert",
            ),
            (
                DatabaseSettings {
                    sslcert: Some(missing),
                    ..s("postgres://u@h/db", None)
                },
                "database_sslcert",
            ),
        ] {
            let e = database(&settings).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{key}: ")), "{e}");
        }
        let garbage = file("not a certificate\n");
        let e = database(&DatabaseSettings {
            sslrootcert: Some(garbage.path()),
            ..s("postgres://u@h/db", Some("verify-full"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("database_sslrootcert: sslrootcert ") && e.contains("no PEM certificate"),
            "{e}"
        );
    }
}

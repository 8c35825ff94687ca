//! `tagpin resolve REPOSITORY:TAG [--at TIME]`: the digest a tag is pinned to now, or was
//! at TIME, printed as `REPOSITORY@sha256:…` for `kubectl set image` or a pipeline's
//! digest file. Through the admin API (`GET /admin/v1/pin`, with `at=` for a time), or
//! offline on a data dir or database like `export`; either way the answer comes from
//! [`crate::store::PinAt`] and the pin record, so both agree.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use http::Method;
use serde_json::{json, Value};

use super::client::{AdminArgs, CliError, Client, EXIT_FOUND, EXIT_OK};
use super::transfer::{offline_store, DatabaseArgs};
use crate::oci::{Digest, Repository, Tag};
use crate::store::PinAt;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 printed; 1 the tag has no pin (at TIME), or TIME is before its first \
                        history entry (history never guesses); 2 on a malformed TIME or any other error."
)]
pub struct ResolveArgs {
    /// The tag, as REPOSITORY:TAG (e.g. prod/api:1.4.2).
    pub reference: String,
    /// The time to answer for, RFC 3339 with Z or an offset (2026-12-01T14:00:00Z,
    /// 2026-12-01T15:00:00+01:00) [default: now].
    #[arg(long, value_name = "TIME", value_parser = parse_at)]
    pub at: Option<i64>,
    /// Prefix the answer with this registry host (and port), as clients pull it:
    /// HOST/REPOSITORY@sha256:….
    #[arg(long, value_name = "HOST", value_parser = parse_registry)]
    pub registry: Option<String>,
    /// One JSON object (the reference, the digest, and the admin API's record at TIME), for scripts.
    #[arg(long)]
    pub json: bool,
    /// Read the store in DIR directly instead of calling the admin API (tagpin must not
    /// be running on it).
    #[arg(long, value_name = "DIR", conflicts_with = "database_url")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `--at`: RFC 3339; a malformed time is a usage error (exit 2).
pub fn parse_at(text: &str) -> Result<i64, String> {
    crate::store::parse_time(text)
}

/// `--registry`: a host and optional port, as image references name a registry.
fn parse_registry(text: &str) -> Result<String, String> {
    let host = text.trim().trim_end_matches('/');
    if host.contains("://") {
        return Err(format!(
            "{text:?} has a scheme; give the host (and port) as image references name it, e.g. registry.example.com:5000"
        ));
    }
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'/' | b'_'));
    if !valid {
        return Err(format!(
            "{text:?} is not a registry host such as registry.example.com:5000"
        ));
    }
    Ok(host.to_owned())
}

/// What the tag held: its digest and, for a time, the admin API's record that says why.
struct Found {
    digest: Digest,
    at: Option<Value>,
}

fn no_pin(repo: &Repository, tag: &Tag, in_flight: bool) -> NotFound {
    NotFound(if in_flight {
        format!("{repo}:{tag} has no pin yet: its first push is in flight")
    } else {
        format!("{repo}:{tag} has no pin")
    })
}

/// Why nothing is printed (exit 1): the one line for stderr.
struct NotFound(String);

/// `resolve`: exit 1 when the tag had no pin.
pub async fn run(
    args: &ResolveArgs,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let (repo, tag) = super::policy::parse_reference(&args.reference).map_err(|e| CliError::Usage(e.to_string()))?;
    let offline = args.data_dir.is_some() || args.database.database_url.is_some();
    let found = if offline {
        from_store(args, &repo, &tag).await?
    } else {
        from_api(&Client::new(&args.admin, env)?, &repo, &tag, args.at).await?
    };
    let found = match found {
        Ok(found) => found,
        Err(NotFound(why)) => {
            eprintln!("tagpin: {why}");
            return Ok(EXIT_FOUND);
        }
    };
    let reference = match &args.registry {
        Some(host) => format!("{host}/{repo}@{}", found.digest),
        None => format!("{repo}@{}", found.digest),
    };
    let line = if args.json {
        // The record at TIME (`GET /admin/v1/pin?…&at=`), or the pin now, with the
        // reference as printed.
        let mut v = found.at.unwrap_or_else(
            || json!({"repository": repo.as_str(), "tag": tag.as_str(), "at": null, "digest": found.digest.as_str()}),
        );
        v["reference"] = json!(reference);
        v.to_string()
    } else {
        reference
    };
    writeln!(out, "{line}").map_err(|e| CliError::Io(format!("cannot write the output: {e}")))?;
    Ok(EXIT_OK)
}

/// Ask the admin API: the pin record now, or the record at `at`.
async fn from_api(
    client: &Client,
    repo: &Repository,
    tag: &Tag,
    at: Option<i64>,
) -> Result<Result<Found, NotFound>, CliError> {
    let at_text = at.map(crate::store::rfc3339);
    let mut query = vec![("repository", repo.as_str()), ("tag", tag.as_str())];
    if let Some(t) = &at_text {
        query.push(("at", t.as_str()));
    }
    let record = match client.json(Method::GET, "pin", &query, None).await {
        Ok(record) => record,
        Err(CliError::Api {
            status: 404, message, ..
        }) => return Ok(Err(NotFound(message))),
        Err(e) => return Err(e),
    };
    let digest = match at {
        // A tagpin that does not know `at=` answers with the pin as it is now: never taken
        // for the answer at a time.
        Some(at) if record["at"].as_i64() != Some(at) => {
            return Err(CliError::Protocol(
                "the admin API ignored at= (a tagpin older than `resolve --at`); upgrade the server".into(),
            ))
        }
        Some(_) => record["digest"].as_str(),
        None => match record["state"].as_str() {
            Some("pinned" | "advancing") => record["digest"].as_str(),
            state => return Ok(Err(no_pin(repo, tag, state == Some("claimed")))),
        },
    };
    let digest = digest
        .and_then(|d| Digest::parse(d).ok())
        .ok_or_else(|| CliError::Protocol("a pin record without a digest".into()))?;
    Ok(Ok(Found {
        digest,
        at: at.is_some().then_some(record),
    }))
}

/// Read the store directly, the answer built as the admin API builds it.
async fn from_store(args: &ResolveArgs, repo: &Repository, tag: &Tag) -> Result<Result<Found, NotFound>, CliError> {
    let (dir, db, at) = (args.data_dir.clone(), args.database.clone(), args.at);
    let (r, t) = (repo.clone(), tag.clone());
    let found = tokio::task::spawn_blocking(move || {
        let store = offline_store(dir.as_deref(), &db, false)?
            .ok_or_else(|| CliError::Usage("resolve offline needs --data-dir or --database-url".into()))?;
        let record = store
            .shared()
            .record(&r, &t)
            .map_err(|e| CliError::Store(e.to_string()))?;
        Ok::<_, CliError>(match (at, &record.pin) {
            (Some(at), _) => match PinAt::of(&r, &t, &record.timeline(), at) {
                Ok(p) => Ok(Found {
                    digest: p.digest.clone(),
                    at: Some(serde_json::to_value(&p).map_err(|e| CliError::Store(e.to_string()))?),
                }),
                Err(gap) => Err(NotFound(gap.describe(&r, &t, at))),
            },
            (None, Some(pin)) => Ok(Found {
                digest: pin.digest.clone(),
                at: None,
            }),
            (None, None) => Err(no_pin(&r, &t, !record.writes.is_empty())),
        })
    })
    .await
    .map_err(|e| CliError::Store(e.to_string()))??;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_is_a_host_without_a_scheme() {
        assert_eq!(
            parse_registry("registry.example.com:5000/").unwrap(),
            "registry.example.com:5000"
        );
        assert_eq!(parse_registry("127.0.0.1:5050").unwrap(), "127.0.0.1:5050");
        assert!(parse_registry("https://registry.example.com")
            .unwrap_err()
            .contains("scheme"));
        assert!(parse_registry("").is_err());
        assert!(parse_registry("a b").is_err());
    }
}

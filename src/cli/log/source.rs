//! Where the log commands read the log and the pins: the admin API (`/admin/v1/log/…`,
//! `/admin/v1/pins`, `/admin/v1/pin`), or a store opened offline (`--data-dir`,
//! `--database-url`), whose calls run off the async runtime. Both answer the same
//! questions in the same shapes, so the checks above them do not care which it is.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::Args;
use http::Method;
use serde::Deserialize;
use serde_json::Value;

use super::super::client::{collect, AdminArgs, CliError, Client, Lines};
use super::super::transfer::{offline_store, DatabaseArgs, OfflineStore};
use crate::log::{Frontier, Hash, ProofError};
use crate::oci::{Repository, Tag};
use crate::store::{PinStore, StoreError, TagState};

/// Entries and pins asked for at a time: the admin API's largest page.
pub const PAGE: u64 = 1000;

/// The admin API, or the store read directly.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Read the store in DIR directly instead of calling the admin API (tagpin must not
    /// be running on it).
    #[arg(long, value_name = "DIR", conflicts_with = "database_url")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

impl SourceArgs {
    pub fn offline(&self) -> bool {
        self.data_dir.is_some() || self.database.database_url.is_some()
    }
}

/// A tag's pin and the log entry that bound it last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub digest: String,
    /// The largest log index in the pin's history: `None` when no entry records it.
    pub log: Option<u64>,
}

pub enum Source {
    Api(Client),
    Store(OfflineStore),
}

fn store_error(e: StoreError) -> CliError {
    CliError::Store(e.to_string())
}

fn proof_error(e: ProofError) -> CliError {
    match e {
        ProofError::Store(e) => store_error(e),
        ProofError::Range(why) => CliError::Usage(why),
    }
}

/// A list of base64 hashes as the proof endpoints give them.
fn hashes(v: &Value) -> Result<Vec<Hash>, CliError> {
    let bad = || CliError::Protocol("a proof whose hashes are not a list of base64 SHA-256 hashes".into());
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|h| {
            h.as_str()
                .and_then(|s| B64.decode(s).ok())
                .and_then(|b| Hash::try_from(b).ok())
                .ok_or_else(bad)
        })
        .collect()
}

/// One line of `GET /admin/v1/log/entries`: the leaf's own fields (its `index`
/// among them, which is what is checked, not trusted) and `leaf`, the base64 of its
/// exact bytes, which are all that is used. Lines come in order from `start`.
#[derive(Deserialize)]
struct Line {
    leaf: String,
}

/// The pin and last log index of a record: `None` without a pin.
pub fn latest_of(state: Option<&crate::store::Pin>) -> Option<Latest> {
    state.map(|p| Latest {
        digest: p.digest.as_str().to_owned(),
        log: p.history.iter().filter_map(|e| e.log).max(),
    })
}

impl Source {
    pub async fn open(args: &SourceArgs, env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Result<Self, CliError> {
        if !args.offline() {
            return Ok(Self::Api(Client::new(&args.admin, env)?));
        }
        let (dir, db) = (args.data_dir.clone(), args.database.clone());
        let store = tokio::task::spawn_blocking(move || offline_store(dir.as_deref(), &db, false))
            .await
            .map_err(|e| CliError::Store(e.to_string()))??;
        store
            .map(Self::Store)
            .ok_or_else(|| CliError::Usage("no --data-dir or --database-url".into()))
    }

    pub fn offline(&self) -> bool {
        matches!(self, Self::Store(_))
    }

    /// Run a store call off the async runtime.
    async fn blocking<T: Send + 'static>(
        store: &OfflineStore,
        f: impl FnOnce(&dyn PinStore) -> Result<T, CliError> + Send + 'static,
    ) -> Result<T, CliError> {
        let s = store.shared();
        tokio::task::spawn_blocking(move || f(s.as_ref()))
            .await
            .map_err(|e| CliError::Store(e.to_string()))?
    }

    /// The served checkpoint note, as it is served (admin API only).
    pub async fn served_checkpoint(&self) -> Result<String, CliError> {
        let Self::Api(client) = self else {
            return Err(CliError::Usage("offline there is no served checkpoint".into()));
        };
        let resp = client.send(Method::GET, "log/checkpoint", &[], None).await?;
        let body = collect(resp.into_body()).await?;
        String::from_utf8(body.to_vec()).map_err(|_| CliError::Protocol("a checkpoint that is not UTF-8".into()))
    }

    /// The log's head as the store keeps it: its size and right frontier (offline only).
    pub async fn head(&self) -> Result<Frontier, CliError> {
        match self {
            Self::Store(store) => Self::blocking(store, |s| s.log_head().map_err(store_error)).await,
            Self::Api(_) => Err(CliError::Usage("the head is read offline only".into())),
        }
    }

    /// The root of the first `size` entries from the stored subtree hashes the proofs are
    /// built from (offline only); `Err` with the store's words when one is missing.
    pub async fn stored_root(&self, size: u64) -> Result<Result<Hash, String>, CliError> {
        match self {
            Self::Store(store) => {
                Self::blocking(store, move |s| match crate::log::root_at(s, size) {
                    Ok(root) => Ok(Ok(root)),
                    Err(StoreError::Corrupt { why, .. }) => Ok(Err(why)),
                    Err(e) => Err(store_error(e)),
                })
                .await
            }
            Self::Api(_) => Err(CliError::Usage("the stored tree is read offline only".into())),
        }
    }

    /// The leaf bytes of entries `[start, end)` (at most [`PAGE`]), in order; fewer when
    /// the log holds fewer.
    pub async fn leaves(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, CliError> {
        let end = end.min(start + PAGE);
        match self {
            Self::Store(store) => Self::blocking(store, move |s| s.log_leaves(start, end).map_err(store_error)).await,
            Self::Api(client) => {
                let (s, e) = (start.to_string(), end.to_string());
                let resp = client
                    .send(Method::GET, "log/entries", &[("start", &s), ("end", &e)], None)
                    .await?;
                let mut lines = Lines::new(resp.into_body());
                let mut out = Vec::new();
                let mut at = start;
                while let Some((line, complete)) = lines.next().await? {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let parsed: Line = serde_json::from_slice(&line)
                        .ok()
                        .filter(|_| complete)
                        .ok_or_else(|| CliError::Protocol(format!("the entries from {start} were cut off")))?;
                    let leaf = B64
                        .decode(&parsed.leaf)
                        .map_err(|_| CliError::Protocol(format!("entry {at} has a leaf that is not base64")))?;
                    out.push(leaf);
                    at += 1;
                }
                if at > end {
                    return Err(CliError::Protocol(format!(
                        "asked for the entries [{start}, {end}), got {} of them",
                        at - start
                    )));
                }
                Ok(out)
            }
        }
    }

    /// One page of pins in key order after the cursor (`repository:tag`): each pinned
    /// tag's key and digest (a first push in flight has no pin yet), and the cursor of the
    /// next page, `None` after the last.
    pub async fn pins(&self, after: Option<String>) -> Result<(Vec<(String, String)>, Option<String>), CliError> {
        match self {
            Self::Store(store) => {
                Self::blocking(store, move |s| {
                    let after = after
                        .as_deref()
                        .and_then(|a| a.split_once(':'))
                        .map(|(r, t)| Ok::<_, CliError>((parse_repo(r)?, parse_tag(t)?)))
                        .transpose()?;
                    let page = s.list(None, after.as_ref(), PAGE as usize).map_err(store_error)?;
                    let next = (page.len() == PAGE as usize)
                        .then(|| page.last().map(|(r, t, _)| format!("{r}:{t}")))
                        .flatten();
                    let pins = page
                        .into_iter()
                        .filter_map(|(r, t, state)| match state {
                            TagState::Pinned(p) | TagState::Advancing { pin: p, .. } => {
                                Some((format!("{r}:{t}"), p.digest.as_str().to_owned()))
                            }
                            TagState::Claimed(_) => None,
                        })
                        .collect();
                    Ok((pins, next))
                })
                .await
            }
            Self::Api(client) => {
                let limit = PAGE.to_string();
                let mut query = vec![("limit", limit.as_str())];
                if let Some(a) = &after {
                    query.push(("after", a.as_str()));
                }
                let page = client.json(Method::GET, "pins", &query, None).await?;
                let list = page["pins"]
                    .as_array()
                    .ok_or_else(|| CliError::Protocol("a pins page without a pins list".into()))?;
                let mut pins = Vec::with_capacity(list.len());
                for p in list
                    .iter()
                    .filter(|p| matches!(p["state"].as_str(), Some("pinned" | "advancing")))
                {
                    let (Some(r), Some(t), Some(d)) =
                        (p["repository"].as_str(), p["tag"].as_str(), p["digest"].as_str())
                    else {
                        return Err(CliError::Protocol(format!(
                            "a pin without repository, tag or digest: {p}"
                        )));
                    };
                    pins.push((format!("{r}:{t}"), d.to_owned()));
                }
                let next = page["next"].as_str().map(str::to_owned);
                // A cursor that does not move would loop forever.
                let next = next.filter(|n| !list.is_empty() && after.as_deref() != Some(n));
                Ok((pins, next))
            }
        }
    }

    /// The tag's pin and the last log entry that bound it; `None` when it has no pin.
    pub async fn latest(&self, repo: &Repository, tag: &Tag) -> Result<Option<Latest>, CliError> {
        match self {
            Self::Store(store) => {
                let (r, t) = (repo.clone(), tag.clone());
                Self::blocking(store, move |s| {
                    Ok(latest_of(s.record(&r, &t).map_err(store_error)?.pin.as_ref()))
                })
                .await
            }
            Self::Api(client) => {
                let query = [("repository", repo.as_str()), ("tag", tag.as_str())];
                let record = match client.json(Method::GET, "pin", &query, None).await {
                    Ok(record) => record,
                    Err(CliError::Api { status: 404, .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                if !matches!(record["state"].as_str(), Some("pinned" | "advancing")) {
                    return Ok(None);
                }
                let digest = record["digest"]
                    .as_str()
                    .ok_or_else(|| CliError::Protocol("a pin record without a digest".into()))?;
                let history = record["history"].as_array().map_or(&[][..], Vec::as_slice);
                Ok(Some(Latest {
                    digest: digest.to_owned(),
                    log: history.iter().filter_map(|e| e["log"].as_u64()).max(),
                }))
            }
        }
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, CliError> {
        match self {
            Self::Store(store) => {
                Self::blocking(store, move |s| {
                    crate::log::inclusion_proof(s, index, size).map_err(proof_error)
                })
                .await
            }
            Self::Api(client) => {
                let (i, n) = (index.to_string(), size.to_string());
                let v = client
                    .json(Method::GET, "log/proof/inclusion", &[("index", &i), ("size", &n)], None)
                    .await?;
                hashes(&v["hashes"])
            }
        }
    }

    /// The consistency proof from the tree of `from` entries to the tree of `to`.
    pub async fn consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, CliError> {
        match self {
            Self::Store(store) => {
                Self::blocking(store, move |s| {
                    crate::log::consistency_proof(s, from, to).map_err(proof_error)
                })
                .await
            }
            Self::Api(client) => {
                let (f, t) = (from.to_string(), to.to_string());
                let v = client
                    .json(Method::GET, "log/proof/consistency", &[("from", &f), ("to", &t)], None)
                    .await?;
                hashes(&v["hashes"])
            }
        }
    }
}

fn parse_repo(r: &str) -> Result<Repository, CliError> {
    Repository::parse(r).map_err(|e| CliError::Store(e.to_string()))
}

fn parse_tag(t: &str) -> Result<Tag, CliError> {
    Tag::parse(t).map_err(|e| CliError::Store(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proof_hashes_must_all_be_base64_sha256() {
        let h = B64.encode([7u8; 32]);
        assert_eq!(hashes(&json!([h, h])).unwrap(), vec![[7u8; 32]; 2]);
        assert!(hashes(&json!([B64.encode([7u8; 31])])).is_err());
        assert!(hashes(&json!(["not base64!"])).is_err());
        assert!(hashes(&json!(null)).is_err());
        assert!(hashes(&json!([])).unwrap().is_empty());
    }
}

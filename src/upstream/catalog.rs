//! Walking the upstream with tagpin's own credentials ([`super::own`]): the repositories
//! of `/v2/_catalog`, each repository's tags, and the digest under a tag. For seeding
//! and drift checks, which no client asked for.
//!
//! Like the tag list, the catalog is read to its end or not at all: its pages follow
//! `Link: <…>; rel="next"` on the upstream's own origin only (the OCI spec leaves the
//! catalog out; distribution's `docs/spec/api.md` "Catalog" defines `n`, `last` and the
//! `Link` header), and a page that cannot be read is an error, so a seed or a check never
//! reports on half the registry as if it were all of it.

use http::{Method, StatusCode};

use super::{error_chain, next_page, As, Listing, TagAtUpstream, Upstream, UpstreamError, MAX_TAG_PAGES};
use crate::oci::{Digest, Repository, Tag};

/// Repositories asked for per catalog page.
pub const CATALOG_PAGE: usize = 100;

impl Upstream {
    /// Every repository the upstream lists, in its order. Names outside the grammar
    /// cannot be pushed through tagpin and are skipped.
    pub async fn catalog(&self) -> Result<Vec<Repository>, UpstreamError> {
        let mut next = Some(format!("/v2/_catalog?n={CATALOG_PAGE}"));
        let mut repos = Vec::new();
        let mut pages = 0;
        while let Some(target) = next.take() {
            pages += 1;
            if pages > MAX_TAG_PAGES {
                return Err(UpstreamError::Catalog(format!("more than {MAX_TAG_PAGES} pages")));
            }
            let resp = self.get_as(Method::GET, &target, None, As::Own).await?;
            match resp.status() {
                StatusCode::OK => {}
                s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    return Err(UpstreamError::OwnAuth(format!("{target} answered {s}")))
                }
                s => return Err(UpstreamError::Catalog(format!("{target} answered {s}"))),
            }
            next = next_page(resp.headers(), &self.origin).map_err(UpstreamError::Catalog)?;
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map_err(|e| UpstreamError::Transport(error_chain(&e)))?
                .to_bytes();
            #[derive(serde::Deserialize)]
            struct Page {
                repositories: Option<Vec<String>>,
            }
            let page: Page = serde_json::from_slice(&bytes)
                .map_err(|e| UpstreamError::Catalog(format!("{target} is not valid JSON: {e}")))?;
            repos.extend(
                page.repositories
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|r| Repository::parse(r).ok()),
            );
        }
        Ok(repos)
    }

    /// Every tag of `repo`, with tagpin's own credentials; `None` when the upstream does
    /// not know the repository (a repository that holds only blobs is in the catalog
    /// but answers 404 for its tags).
    pub async fn own_list_tags(&self, repo: &Repository) -> Result<Option<Vec<Tag>>, UpstreamError> {
        match self.list_tags_as(repo, As::Own).await? {
            Listing::Tags(tags) => Ok(Some(tags)),
            Listing::Unknown => Ok(None),
            Listing::Challenge(resp) => Err(UpstreamError::OwnAuth(format!(
                "the tag list of {repo} answered {}",
                resp.status()
            ))),
        }
    }

    /// The digest the upstream holds under `repo:tag`, asked with tagpin's own
    /// credentials; `None` when it holds none.
    pub async fn own_tag_digest(&self, repo: &Repository, tag: &Tag) -> Result<Option<Digest>, UpstreamError> {
        match self.tag_digest_as(repo, tag, As::Own).await? {
            TagAtUpstream::Present(d) => Ok(Some(d)),
            TagAtUpstream::Absent => Ok(None),
            TagAtUpstream::Challenge(resp) => Err(UpstreamError::OwnAuth(format!(
                "the tag check of {repo}:{tag} answered {}",
                resp.status()
            ))),
        }
    }
}

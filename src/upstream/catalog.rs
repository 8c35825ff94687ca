//! Walking the upstream with tagpin's own credentials ([`super::own`]): the repositories
//! of `/v2/_catalog`, each repository's tags, and the digest under a tag. For seeding
//! and drift checks, which no client asked for.
//!
//! Like the tag list, the catalog is read to its end or not at all: its pages follow
//! `Link: <…>; rel="next"` on the upstream's own origin only (the OCI spec leaves the
//! catalog out; distribution's `docs/spec/api.md` "Catalog" defines `n`, `last` and the
//! `Link` header), and a page that cannot be read is an error, so a seed or a check never
//! reports on half the registry as if it were all of it.
//!
//! Each page (of the catalog or of a tag list) is bounded: its request, headers and body,
//! must complete within the check timeout, its body may hold at most [`MAX_PAGE_BYTES`],
//! and a `Link` that does not advance (to a page already read) ends the walk with an error.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;

use super::{error_chain, next_page, As, Listing, TagAtUpstream, Upstream, UpstreamError, MAX_TAG_PAGES};
use crate::oci::{Digest, Repository, Tag};

/// Repositories asked for per catalog page.
pub const CATALOG_PAGE: usize = 100;
/// Largest body of one listing page (catalog or tag list) read; a larger page ends the
/// walk with an error.
pub const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// The body of one listing page, at most [`MAX_PAGE_BYTES`], read by `until` (the page's
/// deadline, `within` after its request went out). A page too large or too late is
/// `failed(reason)`.
pub(super) async fn read_page(
    body: Incoming,
    until: tokio::time::Instant,
    within: Duration,
    target: &str,
    failed: &(dyn Fn(String) -> UpstreamError + Sync),
) -> Result<Bytes, UpstreamError> {
    let body = http_body_util::Limited::new(body, MAX_PAGE_BYTES);
    match tokio::time::timeout_at(until, http_body_util::BodyExt::collect(body)).await {
        Err(_) => Err(failed(format!("{target} was not read in full within {within:?}"))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(failed(format!(
            "{target} is larger than the page bound of {MAX_PAGE_BYTES} bytes"
        ))),
        Ok(Err(e)) => Err(UpstreamError::Transport(error_chain(&*e))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Pages read so far in one walk, to refuse a `Link` that does not advance.
#[derive(Default)]
pub(super) struct Visited(HashSet<String>);

impl Visited {
    /// `next`, the page after `current`, unless it was read already (or is `current`).
    pub(super) fn advance(&mut self, current: &str, next: Option<String>) -> Result<Option<String>, String> {
        self.0.insert(current.to_owned());
        match next {
            Some(n) if self.0.contains(&n) => Err(format!(
                "the Link after {current} does not advance: {n} was already read"
            )),
            next => Ok(next),
        }
    }
}

/// The catalog a page at a time ([`Upstream::catalog_pages`]), so a walk of ten thousand
/// repositories holds one page of names, not all of them.
pub struct CatalogPages<'u> {
    upstream: &'u Upstream,
    next: Option<String>,
    pages: usize,
    visited: Visited,
}

impl CatalogPages<'_> {
    /// The next page's repositories (possibly none), or `None` past the last page. Names
    /// outside the grammar cannot be pushed through tagpin and are skipped.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Repository>>, UpstreamError> {
        let Some(target) = self.next.take() else {
            return Ok(None);
        };
        let failed = |reason: String| UpstreamError::Catalog(reason);
        self.pages += 1;
        if self.pages > MAX_TAG_PAGES {
            return Err(UpstreamError::Catalog(format!("more than {MAX_TAG_PAGES} pages")));
        }
        let up = self.upstream;
        let within = up.check_timeout;
        let until = tokio::time::Instant::now() + within;
        let resp = tokio::time::timeout_at(until, up.get_as(Method::GET, &target, None, As::Own))
            .await
            .map_err(|_| UpstreamError::HeaderTimeout(within))??;
        match resp.status() {
            StatusCode::OK => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(UpstreamError::OwnAuth(format!("{target} answered {s}")))
            }
            s => return Err(UpstreamError::Catalog(format!("{target} answered {s}"))),
        }
        let link = next_page(resp.headers(), &up.origin).map_err(failed)?;
        self.next = self.visited.advance(&target, link).map_err(failed)?;
        let bytes = read_page(resp.into_body(), until, within, &target, &failed).await?;
        #[derive(serde::Deserialize)]
        struct Page {
            repositories: Option<Vec<String>>,
        }
        let page: Page = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Catalog(format!("{target} is not valid JSON: {e}")))?;
        Ok(Some(
            page.repositories
                .unwrap_or_default()
                .iter()
                .filter_map(|r| Repository::parse(r).ok())
                .collect(),
        ))
    }
}

/// Whose credentials a tag listing carries, owned so a listing can outlive the request
/// that started it.
enum Lister {
    Own,
    Client(Option<HeaderValue>),
}

/// One page of a tag list ([`TagPages`]).
pub enum TagPage {
    Tags(Vec<Tag>),
    /// The first page answered 404: the upstream does not know the repository.
    Unknown,
    /// The upstream wants (other) credentials; handed to the client as is.
    Challenge(Response<Incoming>),
}

/// A repository's tag list a page at a time, following `Link: <…>; rel="next"` (end-8a).
/// How long a page is, is the upstream's to say (distribution 2.8 answers every tag at
/// once): tagpin asks for no page size and never holds more than the page at hand.
pub struct TagPages<'u> {
    upstream: &'u Upstream,
    repo: Repository,
    who: Lister,
    next: Option<String>,
    pages: usize,
    visited: Visited,
}

impl TagPages<'_> {
    /// The next page, or `None` past the last one. A page that cannot be read, or a next
    /// link tagpin will not follow, is an error rather than the end of the list: a tag on
    /// a page never read would escape the decision.
    pub async fn next_page(&mut self) -> Result<Option<TagPage>, UpstreamError> {
        let Some(target) = self.next.take() else {
            return Ok(None);
        };
        let repo = &self.repo;
        let failed = |reason: String| UpstreamError::TagList {
            repo: repo.clone(),
            reason,
        };
        self.pages += 1;
        if self.pages > MAX_TAG_PAGES {
            return Err(failed(format!("more than {MAX_TAG_PAGES} pages")));
        }
        let who = match &self.who {
            Lister::Own => As::Own,
            Lister::Client(a) => As::Client(a.as_ref()),
        };
        // One deadline for the page: its request, headers and body.
        let up = self.upstream;
        let within = up.check_timeout;
        let until = tokio::time::Instant::now() + within;
        let resp = tokio::time::timeout_at(until, up.get_as(Method::GET, &target, None, who))
            .await
            .map_err(|_| UpstreamError::HeaderTimeout(within))??;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND if self.pages == 1 => return Ok(Some(TagPage::Unknown)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Ok(Some(TagPage::Challenge(resp))),
            status => return Err(failed(format!("{target} answered {status}"))),
        }
        let link = next_page(resp.headers(), &up.origin).map_err(failed)?;
        self.next = self.visited.advance(&target, link).map_err(failed)?;
        let bytes = read_page(resp.into_body(), until, within, &target, &failed).await?;
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let page: Page =
            serde_json::from_slice(&bytes).map_err(|e| failed(format!("{target} is not valid JSON: {e}")))?;
        Ok(Some(TagPage::Tags(
            page.tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| Tag::parse(t).ok())
                .collect(),
        )))
    }
}

impl Upstream {
    /// The catalog's pages, from the first or from the repository after `after`
    /// (distribution's `last`: the catalog is in lexical order).
    pub fn catalog_pages(&self, after: Option<&Repository>) -> CatalogPages<'_> {
        let first = match after {
            Some(a) => format!("/v2/_catalog?n={CATALOG_PAGE}&last={a}"),
            None => format!("/v2/_catalog?n={CATALOG_PAGE}"),
        };
        CatalogPages {
            upstream: self,
            next: Some(first),
            pages: 0,
            visited: Visited::default(),
        }
    }

    /// Every repository the upstream lists, in its order.
    pub async fn catalog(&self) -> Result<Vec<Repository>, UpstreamError> {
        let mut pages = self.catalog_pages(None);
        let mut repos = Vec::new();
        while let Some(page) = pages.next_page().await? {
            repos.extend(page);
        }
        Ok(repos)
    }

    /// The tag list of `repo` a page at a time, with tagpin's own credentials.
    pub fn own_tag_pages(&self, repo: &Repository) -> TagPages<'_> {
        self.tag_pages_as(repo, Lister::Own)
    }

    /// The tag list of `repo` a page at a time, with the client's credentials.
    pub fn tag_pages(&self, repo: &Repository, authorization: Option<&HeaderValue>) -> TagPages<'_> {
        self.tag_pages_as(repo, Lister::Client(authorization.cloned()))
    }

    fn tag_pages_as(&self, repo: &Repository, who: Lister) -> TagPages<'_> {
        TagPages {
            upstream: self,
            repo: repo.clone(),
            who,
            next: Some(format!("/v2/{repo}/tags/list")),
            pages: 0,
            visited: Visited::default(),
        }
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

/// A scripted upstream on 127.0.0.1 for the bounds tests, one response per connection.
#[cfg(test)]
pub(crate) mod fake {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::upstream::Upstream;

    pub enum Reply {
        /// Status, extra header lines, body.
        Full(u16, Vec<String>, Vec<u8>),
        /// 200 announcing `len` bytes and sending none of them.
        Stall(usize),
        /// 200 with `len` bytes of `a`.
        Big(usize),
    }

    /// Serve `script(target, own address)`; an upstream client with a check timeout
    /// of `check_ms` talks to it.
    pub async fn start(
        check_ms: u64,
        script: impl Fn(&str, SocketAddr) -> Reply + Send + Sync + 'static,
    ) -> (SocketAddr, Upstream) {
        start_with_head(check_ms, move |target, _, addr| script(target, addr)).await
    }

    /// Like [`start`], the script also seeing the request's head (line and headers).
    pub async fn start_with_head(
        check_ms: u64,
        script: impl Fn(&str, &str, SocketAddr) -> Reply + Send + Sync + 'static,
    ) -> (SocketAddr, Upstream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let target = text.split(' ').nth(1).unwrap_or("").to_owned();
                    let (status, extra, body, announce, stall) = match script(&target, &text, addr) {
                        Reply::Full(s, h, b) => (s, h, b.clone(), b.len(), false),
                        Reply::Stall(len) => (200, vec![], vec![], len, true),
                        Reply::Big(len) => (200, vec![], vec![b'a'; len], len, false),
                    };
                    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {announce}\r\nConnection: close\r\n");
                    for h in extra {
                        out.push_str(&h);
                        out.push_str("\r\n");
                    }
                    out.push_str("\r\n");
                    let _ = conn.write_all(out.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                    if stall {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                });
            }
        });
        let text = format!("upstream = \"http://{addr}\"\n[timeouts]\nupstream_check_ms = {check_ms}\n");
        let config = crate::config::RawConfig::from_toml(&text, std::path::Path::new("t.toml"))
            .unwrap()
            .validate()
            .unwrap();
        let tls = Upstream::tls_config(&config).unwrap();
        (
            addr,
            Upstream::new(&config, tls, Default::default(), Default::default()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::fake::{start, Reply};
    use super::*;

    /// Generous: the walks under test end on their own bounds well before.
    const GIVE_UP: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_catalog_page_over_the_bound_is_an_error_naming_the_bound() {
        let (_, up) = start(10_000, |_, _| Reply::Big(MAX_PAGE_BYTES + 1)).await;
        let e = tokio::time::timeout(GIVE_UP, up.catalog()).await.unwrap().unwrap_err();
        assert!(matches!(e, UpstreamError::Catalog(_)), "{e}");
        assert!(e.to_string().contains(&MAX_PAGE_BYTES.to_string()), "{e}");
    }

    #[tokio::test]
    async fn a_link_that_does_not_advance_ends_the_walk_with_an_error() {
        // The tag list links to itself; the catalog to its first page from its second.
        let (_, up) = start(10_000, |target, _| {
            let link = if target.contains("/tags/list") {
                "</v2/a/tags/list>; rel=\"next\""
            } else if target.contains("last=") {
                "</v2/_catalog?n=100>; rel=\"next\""
            } else {
                "</v2/_catalog?n=100&last=a>; rel=\"next\""
            };
            let body = if target.contains("/tags/") {
                br#"{"tags":["v1"]}"#.to_vec()
            } else {
                br#"{"repositories":["a"]}"#.to_vec()
            };
            Reply::Full(200, vec![format!("Link: {link}")], body)
        })
        .await;
        let repo = Repository::parse("a").unwrap();
        let e = tokio::time::timeout(GIVE_UP, up.own_list_tags(&repo))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, UpstreamError::TagList { .. }), "{e}");
        assert!(e.to_string().contains("does not advance"), "{e}");
        let e = tokio::time::timeout(GIVE_UP, up.catalog()).await.unwrap().unwrap_err();
        assert!(e.to_string().contains("does not advance"), "{e}");
    }

    /// Walks check many tags of one repository at once: those challenged together
    /// wait for one token fetch and share its token.
    #[tokio::test]
    async fn requests_challenged_together_share_one_token_fetch() {
        use std::sync::{atomic::AtomicUsize, Arc};
        let (fetched, digest) = (Arc::new(AtomicUsize::new(0)), format!("sha256:{}", "a".repeat(64)));
        let counter = Arc::clone(&fetched);
        let (_, up) = super::fake::start_with_head(10_000, move |target, head, addr| {
            let (status, header, body) = if target.starts_with("/token") {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (200, None, br#"{"token":"tok","expires_in":300}"#.to_vec())
            } else if head
                .lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: Bearer tok"))
            {
                (200, Some(format!("Docker-Content-Digest: {digest}")), vec![])
            } else {
                let realm = format!("realm=\"http://{addr}/token\",service=\"s\",scope=\"repository:a:pull\"");
                (401, Some(format!("WWW-Authenticate: Bearer {realm}")), vec![])
            };
            Reply::Full(status, header.into_iter().collect(), body)
        })
        .await;
        let (up, repo) = (Arc::new(up), crate::oci::Repository::parse("a").unwrap());
        let mut checks = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (up, repo, tag) = (
                Arc::clone(&up),
                repo.clone(),
                crate::oci::Tag::parse(&format!("v{i}")).unwrap(),
            );
            checks.spawn(async move { up.own_tag_digest(&repo, &tag).await });
        }
        while let Some(done) = checks.join_next().await {
            assert!(
                done.unwrap().unwrap().is_some(),
                "each check got through with the token"
            );
        }
        assert_eq!(
            fetched.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one token fetch for the scope"
        );
    }

    #[tokio::test]
    async fn a_catalog_page_whose_body_stalls_fails_within_the_check_timeout() {
        let (_, up) = start(300, |_, _| Reply::Stall(100)).await;
        let r = tokio::time::timeout(GIVE_UP, up.catalog()).await;
        assert!(r.expect("the catalog read is bounded").is_err());
    }
}

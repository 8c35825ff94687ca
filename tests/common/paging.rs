//! A relay in front of the real registry that pages tag lists one tag at a time with
//! absolute `Link` URLs (distribution 2.8 ignores `n` and answers every tag at once).
//! Tag-list requests are answered from the registry's full list; manifest HEADs and every
//! other request (the catalog, with its `Link` pages) are passed on with all manifest
//! types accepted, so digests are the registry's own. Built on [`FakeUpstream`], which records what it was asked.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use super::fake::{Action, FakeUpstream};
use super::http::request;
use super::image::ACCEPT_ALL;

/// Where the relay's next-page links point.
pub enum Links {
    /// The relay's own origin, absolute: `http://<relay>/v2/…`.
    Own,
    /// Another origin (no trailing slash), which tagpin must refuse to follow.
    Other(String),
}

pub fn start(registry: SocketAddr, links: Links) -> FakeUpstream {
    let own: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let origin = Arc::clone(&own);
    let fake = FakeUpstream::start(move |method, target| {
        if let Some((repo, query)) = tag_list_target(target) {
            let link_origin = match &links {
                Links::Own => origin.get().expect("set before any request").clone(),
                Links::Other(o) => o.clone(),
            };
            return tag_page(registry, repo, query, &link_origin);
        }
        let r = request(registry, method, target, &[("Accept", ACCEPT_ALL)], b"");
        // `link`: the catalog's own next pages (relative), followed through the relay.
        let headers = ["content-type", "docker-content-digest", "link"]
            .iter()
            .filter_map(|h| r.header(h).map(|v| (h.to_string(), v.to_owned())))
            .collect();
        let body = if method == "HEAD" { Vec::new() } else { r.body };
        Action::Respond {
            status: r.status,
            headers,
            body,
        }
    });
    own.set(fake.url()).unwrap();
    fake
}

/// `(repo, query)` of `GET /v2/<repo>/tags/list[?query]`.
fn tag_list_target(target: &str) -> Option<(&str, &str)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let repo = path.strip_prefix("/v2/")?.strip_suffix("/tags/list")?;
    Some((repo, query))
}

/// The page after `last=` (or the first), one tag long, with a next link when more remain.
fn tag_page(registry: SocketAddr, repo: &str, query: &str, link_origin: &str) -> Action {
    let full = request(registry, "GET", &format!("/v2/{repo}/tags/list"), &[], b"");
    if full.status != 200 {
        return Action::Respond {
            status: full.status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: full.body,
        };
    }
    let mut tags: Vec<String> = serde_json::from_value(full.json()["tags"].clone()).unwrap_or_default();
    tags.sort();
    let last = query.split('&').find_map(|p| p.strip_prefix("last="));
    let rest: Vec<&String> = tags.iter().filter(|t| last.is_none_or(|l| t.as_str() > l)).collect();
    let page: Vec<&String> = rest.iter().take(1).copied().collect();
    let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    if rest.len() > 1 {
        headers.push((
            "Link".into(),
            format!(
                r#"<{link_origin}/v2/{repo}/tags/list?n=1&last={}>; rel="next""#,
                page[0]
            ),
        ));
    }
    let body = serde_json::json!({ "name": repo, "tags": page })
        .to_string()
        .into_bytes();
    Action::Respond {
        status: 200,
        headers,
        body,
    }
}

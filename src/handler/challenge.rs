//! The answer to a push whose tag check the upstream refused for lack of credentials.
//!
//! tagpin checks what a tag holds with a `HEAD` carrying the client's credentials. When
//! the upstream answers that `HEAD` with 401 or 403, the client must learn what it would
//! have learned from its `PUT`: a challenge for the push scope (a `HEAD` is challenged
//! for `pull` only, and a token for that would fail the push again) and an OCI error
//! body (a `HEAD` answer has none). distribution-spec `spec.md`, "Error Codes", and the
//! token auth spec's `scope="repository:<name>:pull,push"`.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::body::{self, Body};
use crate::oci::{ErrorCode, ErrorEnvelope, Repository};

/// The client's response for a tag check the upstream answered with 401 or 403.
pub fn for_push(check: Response<Incoming>, repo: &Repository, request_id: &str) -> Response<Body> {
    for_write(check, repo, request_id, PUSH)
}

/// The actions a push needs (the token spec's scope for `PUT`).
pub const PUSH: &str = "pull,push";
/// The action a delete needs (distribution asks `delete` for `DELETE`).
pub const DELETE: &str = "delete";

/// The client's response for a check, made for a write needing `actions`, that the
/// upstream answered with 401 or 403: the challenge asks for the write's scope.
pub fn for_write(check: Response<Incoming>, repo: &Repository, request_id: &str, actions: &str) -> Response<Body> {
    render(check.status(), check.headers(), repo, request_id, actions)
}

/// A protected write's answer of 401 or 403 in the one form tagpin gives it, whether the
/// upstream gave it to the forwarded write or to a check tagpin made for the write: a
/// client the upstream turns away must not tell a pinned tag from a free one, or a
/// guessed pinned digest from another, by the form of the answer. Other answers pass.
pub fn uniform(resp: Response<Body>, repo: &Repository, request_id: &str, actions: &str) -> Response<Body> {
    match resp.status() {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            render(resp.status(), resp.headers(), repo, request_id, actions)
        }
        _ => resp,
    }
}

fn render(
    status: StatusCode,
    headers: &HeaderMap,
    repo: &Repository,
    request_id: &str,
    actions: &str,
) -> Response<Body> {
    let mut out = Response::new(body::empty());
    for value in headers.get_all(header::WWW_AUTHENTICATE) {
        let rewritten = value
            .to_str()
            .ok()
            .and_then(|v| HeaderValue::from_str(&write_scope(v, repo, actions)).ok())
            .unwrap_or_else(|| value.clone());
        out.headers_mut().append(header::WWW_AUTHENTICATE, rewritten);
    }
    if let Some(v) = headers.get("docker-distribution-api-version") {
        out.headers_mut().insert("docker-distribution-api-version", v.clone());
    }
    let (code, message) = if status == StatusCode::FORBIDDEN {
        (ErrorCode::Denied, "requested access to the resource is denied")
    } else {
        (ErrorCode::Unauthorized, "authentication required")
    };
    let envelope = ErrorEnvelope {
        code,
        message: message.to_owned(),
        detail: json!({ "repository": repo.as_str(), "request_id": request_id }),
    };
    *out.body_mut() = body::full(envelope.to_json());
    *out.status_mut() = status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    out
}

/// A `Bearer` challenge asks for `actions` on `repo`; other schemes (Basic) have no scope
/// and pass unchanged.
pub fn write_scope(challenge: &str, repo: &Repository, actions: &str) -> String {
    let Some(params) = challenge
        .strip_prefix("Bearer ")
        .or_else(|| challenge.strip_prefix("bearer "))
    else {
        return challenge.to_owned();
    };
    let wanted = format!("repository:{repo}:{actions}");
    let mut found = false;
    let mut parts: Vec<String> = split_params(params)
        .into_iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("scope") => {
                found = true;
                let scopes: Vec<String> = v
                    .trim()
                    .trim_matches('"')
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        if s.starts_with(&format!("repository:{repo}:")) {
                            wanted.clone()
                        } else {
                            s.to_owned()
                        }
                    })
                    .collect();
                let mut scopes = scopes;
                if !scopes.contains(&wanted) {
                    scopes.push(wanted.clone());
                }
                format!("scope=\"{}\"", scopes.join(" "))
            }
            _ => p.trim().to_owned(),
        })
        .collect();
    if !found {
        parts.push(format!("scope=\"{wanted}\""));
    }
    format!("Bearer {}", parts.join(","))
}

/// Split `a="x,y",b=z` on the commas outside quotes.
fn split_params(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> Repository {
        Repository::parse("team/app").unwrap()
    }

    #[test]
    fn a_pull_scope_becomes_pull_and_push() {
        let c = r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:team/app:pull""#;
        assert_eq!(
            write_scope(c, &repo(), PUSH),
            r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:team/app:pull,push""#
        );
    }

    #[test]
    fn a_challenge_without_scope_gets_one_and_other_scopes_stay() {
        let c = r#"Bearer realm="https://a/t",service="r""#;
        assert_eq!(
            write_scope(c, &repo(), PUSH),
            r#"Bearer realm="https://a/t",service="r",scope="repository:team/app:pull,push""#
        );
        let c = r#"Bearer realm="https://a/t",scope="repository:other:pull repository:team/app:pull""#;
        assert_eq!(
            write_scope(c, &repo(), PUSH),
            r#"Bearer realm="https://a/t",scope="repository:other:pull repository:team/app:pull,push""#
        );
    }

    #[test]
    fn basic_challenges_pass_unchanged() {
        let c = r#"Basic realm="tagpin-test""#;
        assert_eq!(write_scope(c, &repo(), PUSH), c);
    }
}

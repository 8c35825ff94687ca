//! tagpin's own upstream credentials, for the requests it makes for itself (seed, verify,
//! drift checks). A client's request never goes through here: it carries the client's
//! own `Authorization`, unchanged.
//!
//! The first request goes out bare (or with what worked before for its scope); a 401
//! names the scheme in `WWW-Authenticate` (RFC 9110 11.6.1):
//! - `Basic`: the request is repeated with the configured user and password;
//! - `Bearer realm=…,service=…,scope=…` (the registry token flow of distribution's
//!   `docs/spec/auth/token.md`): a token is fetched from the realm with Basic credentials
//!   (or anonymously when none are configured), cached per scope until its `expires_in`,
//!   and the request is repeated with it. A realm [`super::realm::check`] refuses gets
//!   no request at all.
//!
//! Neither the password nor a token is ever logged or put into an error: header values
//! built here are marked sensitive, and errors name the realm and the status only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use super::{error_chain, Upstream, UpstreamError};
use crate::body;
use crate::config::{Credentials, TokenRealm};

/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Lifetime of a token whose response gives none (token.md: "defaults to 60 seconds").
const DEFAULT_EXPIRES_IN: u64 = 60;
/// Longest a token is cached, whatever its `expires_in` says: one day.
const MAX_EXPIRES_IN: u64 = 24 * 60 * 60;
/// Scopes cached at most; past it, the cache starts over.
const MAX_CACHED_SCOPES: usize = 10_000;

/// The credentials and what the upstream asked for before.
pub struct OwnAuth {
    credentials: Option<Credentials>,
    /// `token_realms`: when not empty, the only realms used.
    realms: Vec<TokenRealm>,
    tokens: Mutex<HashMap<String, Cached>>,
    /// One token fetch per scope at a time ([`Upstream::token_for`]).
    fetching: crate::locks::LockTable<tokio::sync::Mutex<()>>,
    /// The upstream asked for Basic: send it up front from then on.
    basic: AtomicBool,
}

struct Cached {
    value: HeaderValue,
    until: Instant,
}

/// A challenge tagpin can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl OwnAuth {
    pub fn new(credentials: Option<Credentials>, realms: Vec<TokenRealm>) -> Self {
        Self {
            credentials,
            realms,
            tokens: Mutex::new(HashMap::new()),
            fetching: crate::locks::LockTable::new(),
            basic: AtomicBool::new(false),
        }
    }

    fn basic_value(&self) -> Option<HeaderValue> {
        let c = self.credentials.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password.0));
        let mut v = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// The live token cached for `scope`.
    fn cached(&self, scope: &str) -> Option<HeaderValue> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(scope)
            .filter(|t| t.until > Instant::now())
            .map(|t| t.value.clone())
    }

    /// What to send before any challenge: a live token for the scope, or Basic once the
    /// upstream asked for it.
    fn up_front(&self, scope: Option<&str>) -> Option<HeaderValue> {
        if let Some(token) = scope.and_then(|s| self.cached(s)) {
            return Some(token);
        }
        if self.basic.load(Ordering::Relaxed) {
            return self.basic_value();
        }
        None
    }

    fn remember(&self, scope: &str, value: HeaderValue, expires_in: Duration) {
        let expires_in = expires_in.min(Duration::from_secs(MAX_EXPIRES_IN));
        // A little early, so a token is not sent in its last second.
        let margin = (expires_in / 2).min(Duration::from_secs(5));
        let now = Instant::now();
        let Some(until) = now.checked_add(expires_in.saturating_sub(margin)) else {
            return;
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, t| t.until > now);
        if tokens.len() >= MAX_CACHED_SCOPES {
            tokens.clear();
        }
        tokens.insert(scope.to_owned(), Cached { value, until });
    }
}

impl Upstream {
    /// `method target` with tagpin's own credentials, answering one challenge. A 401 or
    /// 403 that remains is returned for the caller to report.
    pub(super) async fn send_own(
        &self,
        method: Method,
        target: &str,
        accept: Option<&'static str>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let build = |auth: Option<&HeaderValue>| {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(self.uri_for(target))
                .header(header::USER_AGENT, concat!("tagpin/", env!("CARGO_PKG_VERSION")));
            if let Some(accept) = accept {
                req = req.header(header::ACCEPT, accept);
            }
            if let Some(auth) = auth {
                req = req.header(header::AUTHORIZATION, auth);
            }
            req.body(body::empty()).expect("static request parts are valid")
        };
        let hint = scope_for(target);
        let first = self.own.up_front(hint.as_deref());
        let resp = self.send_check(build(first.as_ref())).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let auth = match challenge(resp.headers()) {
            None => return Ok(resp),
            Some(Challenge::Basic) => {
                let sent_basic = first.as_ref().is_some_and(|v| v.as_bytes().starts_with(b"Basic "));
                match self.own.basic_value() {
                    Some(v) if !sent_basic => {
                        self.own.basic.store(true, Ordering::Relaxed);
                        v
                    }
                    // No credentials, or these very ones were refused.
                    _ => return Ok(resp),
                }
            }
            Some(Challenge::Bearer { realm, service, scope }) => {
                // A cached token refused (revoked, or expired early) is replaced.
                let scope = scope.or(hint);
                self.token_for(&realm, service.as_deref(), scope.as_deref(), first.as_ref())
                    .await?
            }
        };
        drop(resp);
        self.send_check(build(Some(&auth))).await
    }

    /// A token for `scope`, fetched by one request at a time: requests that met the same
    /// challenge together (a walk's requests in flight) wait for that one fetch and share
    /// its token, rather than each fetching its own. The token a request was just refused
    /// with (`refused`, what it carried) is never handed out again.
    async fn token_for(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        refused: Option<&HeaderValue>,
    ) -> Result<HeaderValue, UpstreamError> {
        let Some(scope) = scope else {
            return self.fetch_token(realm, service, None).await;
        };
        let one_at_a_time = self.own.fetching.get(scope.to_owned());
        let _fetching = one_at_a_time.lock().await;
        if let Some(token) = self.own.cached(scope).filter(|t| Some(t) != refused) {
            return Ok(token);
        }
        self.fetch_token(realm, service, Some(scope)).await
    }

    /// A token from `realm` for `scope`, with Basic credentials when configured: the
    /// request, its headers and its body within the check timeout.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<HeaderValue, UpstreamError> {
        let within = self.check_timeout;
        match tokio::time::timeout(within, self.fetch_token_unbounded(realm, service, scope)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::OwnAuth(format!(
                "token from {realm}: no complete answer within {within:?}"
            ))),
        }
    }

    async fn fetch_token_unbounded(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<HeaderValue, UpstreamError> {
        let failed = |why: String| UpstreamError::OwnAuth(format!("token from {realm}: {why}"));
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(s) = service {
                query.append_pair("service", s);
            }
            if let Some(s) = scope {
                query.append_pair("scope", s);
            }
            query.finish()
        };
        let sep = if realm.contains('?') { '&' } else { '?' };
        let uri: Uri = format!("{realm}{sep}{query}")
            .parse()
            .map_err(|_| failed("the realm is not a URL".into()))?;
        super::realm::check(&uri, &self.origin, &self.own.realms)
            .await
            .map_err(|reason| UpstreamError::TokenRealm {
                realm: realm.to_owned(),
                reason,
            })?;
        let mut req = Request::builder()
            .uri(uri)
            .header(header::USER_AGENT, concat!("tagpin/", env!("CARGO_PKG_VERSION")));
        if let Some(basic) = self.own.basic_value() {
            req = req.header(header::AUTHORIZATION, basic);
        }
        let resp = self
            .send_check(req.body(body::empty()).expect("a parsed URI is a valid request"))
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(failed(format!("answered {}", resp.status())));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE);
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| failed(format!("cannot read the answer: {}", error_chain(&*e))))?
            .to_bytes();
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        // The serde error could quote the token: it is not passed on.
        let answer: Answer =
            serde_json::from_slice(&bytes).map_err(|_| failed("the answer is not token JSON".into()))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| failed("the answer holds no token".into()))?;
        let mut value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| failed("the token is not a valid header value".into()))?;
        value.set_sensitive(true);
        let expires_in = token_lifetime(answer.expires_in);
        if let Some(scope) = scope {
            self.own.remember(scope, value.clone(), Duration::from_secs(expires_in));
        }
        tracing::debug!(
            realm,
            scope = scope.unwrap_or(""),
            expires_in,
            "fetched an upstream token"
        );
        Ok(value)
    }
}

/// How long a token answered with `expires_in` is cached: at least a second, at most
/// [`MAX_EXPIRES_IN`].
fn token_lifetime(expires_in: Option<u64>) -> u64 {
    expires_in.unwrap_or(DEFAULT_EXPIRES_IN).clamp(1, MAX_EXPIRES_IN)
}

/// The scope distribution asks for on `target`, to use a cached token before any
/// challenge: `registry:catalog:*` for the catalog, `repository:<name>:pull` otherwise.
pub fn scope_for(target: &str) -> Option<String> {
    let path = target.split('?').next().unwrap_or(target);
    let rest = path.strip_prefix("/v2/")?;
    if rest == "_catalog" {
        return Some("registry:catalog:*".into());
    }
    let repo = ["/manifests/", "/tags/", "/blobs/"]
        .iter()
        .filter_map(|sep| rest.rfind(sep).map(|i| &rest[..i]))
        .max_by_key(|r| r.len())?;
    Some(format!("repository:{repo}:pull"))
}

/// The challenge to answer among the `WWW-Authenticate` headers: Bearer before Basic.
pub fn challenge(headers: &HeaderMap) -> Option<Challenge> {
    let mut basic = false;
    for value in headers.get_all(header::WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        for (scheme, params) in parse_challenges(text) {
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            if scheme.eq_ignore_ascii_case("bearer") {
                if let Some(realm) = get("realm") {
                    return Some(Challenge::Bearer {
                        realm,
                        service: get("service"),
                        scope: get("scope"),
                    });
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// The challenges of one `WWW-Authenticate` value (RFC 9110 11.6.1): each a scheme and its
/// auth-params. A token68 reads as one empty param; anything unreadable ends the list.
pub fn parse_challenges(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && matches!(chars[*i], ' ' | '\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len() && is_tchar(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    loop {
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | ',') {
            i += 1;
        }
        if i >= chars.len() {
            return out;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            return out;
        }
        let mut params = Vec::new();
        loop {
            skip_ws(&mut i);
            let mark = i;
            let name = token(&mut i);
            skip_ws(&mut i);
            if name.is_empty() || i >= chars.len() || chars[i] != '=' {
                // The next challenge's scheme: back up to it.
                i = mark;
                break;
            }
            i += 1;
            skip_ws(&mut i);
            let value = if chars.get(i) == Some(&'"') {
                i += 1;
                let mut v = String::new();
                loop {
                    match chars.get(i) {
                        None => return out,
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            if let Some(c) = chars.get(i + 1) {
                                v.push(*c);
                            }
                            i += 2;
                        }
                        Some(c) => {
                            v.push(*c);
                            i += 1;
                        }
                    }
                }
                v
            } else {
                token(&mut i)
            };
            params.push((name, value));
            // A token68 (`abc==`) reads as a name and an empty value; skip its padding.
            while chars.get(i) == Some(&'=') {
                i += 1;
            }
            skip_ws(&mut i);
            if chars.get(i) == Some(&',') {
                i += 1;
            } else {
                break;
            }
        }
        out.push((scheme, params));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::WWW_AUTHENTICATE, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_bearer_challenge_names_realm_service_and_scope() {
        assert_eq!(
            challenge(&headers(&[
                r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull""#
            ])),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        // Spaces, unquoted values, any case, a scope with commas inside quotes.
        assert_eq!(
            challenge(&headers(&[
                r#"bearer  realm = "https://t/x?a=1" , scope="repository:a:pull,push", service=reg"#
            ])),
            Some(Challenge::Bearer {
                realm: "https://t/x?a=1".into(),
                service: Some("reg".into()),
                scope: Some("repository:a:pull,push".into()),
            })
        );
    }

    #[test]
    fn bearer_is_answered_before_basic_and_basic_alone_is_basic() {
        assert_eq!(challenge(&headers(&[r#"Basic realm="r""#])), Some(Challenge::Basic));
        assert!(matches!(
            challenge(&headers(&[r#"Basic realm="r", Bearer realm="http://t/""#])),
            Some(Challenge::Bearer { .. })
        ));
        assert!(matches!(
            challenge(&headers(&[r#"Basic realm="r""#, r#"Bearer realm="http://t/""#])),
            Some(Challenge::Bearer { .. })
        ));
        assert_eq!(challenge(&headers(&["Negotiate abc==, Basic"])), Some(Challenge::Basic));
        assert_eq!(challenge(&headers(&["Negotiate"])), None);
        assert_eq!(challenge(&headers(&[r#"Bearer service="x""#])), None);
        assert_eq!(challenge(&headers(&[])), None);
    }

    #[test]
    fn quoted_values_unescape_and_a_cut_value_ends_the_list() {
        let c = parse_challenges(r#"Bearer realm="a\"b", error="x""#);
        assert_eq!(c[0].1[0], ("realm".into(), "a\"b".into()));
        assert_eq!(c[0].1[1], ("error".into(), "x".into()));
        assert!(parse_challenges(r#"Bearer realm="open"#).is_empty());
    }

    #[test]
    fn scopes_follow_the_path() {
        assert_eq!(scope_for("/v2/_catalog?n=100").as_deref(), Some("registry:catalog:*"));
        assert_eq!(
            scope_for("/v2/team/app/tags/list?last=x").as_deref(),
            Some("repository:team/app:pull")
        );
        assert_eq!(
            scope_for("/v2/a/manifests/b/manifests/v1").as_deref(),
            Some("repository:a/manifests/b:pull")
        );
        assert_eq!(scope_for("/v2/").as_deref(), None);
    }

    #[test]
    fn built_credentials_are_sensitive_and_cached_tokens_expire() {
        let own = OwnAuth::new(
            Some(Credentials {
                user: "u".into(),
                password: crate::config::Secret("p".into()),
            }),
            Vec::new(),
        );
        let b = own.basic_value().unwrap();
        assert!(b.is_sensitive());
        assert_eq!(format!("{b:?}"), "Sensitive");
        assert!(own.up_front(Some("s")).is_none());
        own.remember("s", HeaderValue::from_static("Bearer t"), Duration::from_secs(60));
        assert_eq!(own.up_front(Some("s")).unwrap(), "Bearer t");
        own.remember("s", HeaderValue::from_static("Bearer t"), Duration::from_secs(1));
        // A one-second token is kept half a second; well after, it is gone.
        std::thread::sleep(Duration::from_millis(600));
        assert!(own.up_front(Some("s")).is_none());
    }
}

#[cfg(test)]
mod bounds {
    use std::time::Duration;

    use super::super::catalog::fake::{start, Reply};
    use super::*;

    #[tokio::test]
    async fn a_token_body_that_stalls_after_headers_fails_within_the_check_timeout() {
        let (_, up) = start(300, |target, addr| {
            if target.starts_with("/token") {
                Reply::Stall(100)
            } else {
                Reply::Full(
                    401,
                    vec![format!(
                        "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"s\""
                    )],
                    vec![],
                )
            }
        })
        .await;
        // Far below the 60 s header timeout the token request used to wait on.
        let r = tokio::time::timeout(Duration::from_secs(20), up.send_own(Method::GET, "/v2/_catalog", None)).await;
        let e = r.expect("the token fetch is bounded").unwrap_err();
        assert!(matches!(e, UpstreamError::OwnAuth(_)), "{e}");
    }

    #[test]
    fn an_expires_in_near_u64_max_does_not_panic_and_caches_for_the_cap() {
        assert_eq!(token_lifetime(Some(u64::MAX)), MAX_EXPIRES_IN);
        assert_eq!(token_lifetime(Some(0)), 1);
        assert_eq!(token_lifetime(None), DEFAULT_EXPIRES_IN);
        let own = OwnAuth::new(None, Vec::new());
        own.remember("s", HeaderValue::from_static("Bearer t"), Duration::from_secs(u64::MAX));
        let until = own.tokens.lock().unwrap()["s"].until;
        let cap = Duration::from_secs(MAX_EXPIRES_IN);
        assert!(until <= Instant::now() + cap);
        assert!(until > Instant::now() + cap - Duration::from_secs(60));
        assert_eq!(own.up_front(Some("s")).unwrap(), "Bearer t");
    }
}

//! Header edits between client and upstream, as small pure functions over `HeaderMap`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::Origin;

/// Hop-by-hop headers, RFC 9110 7.6.1: they describe one connection and are never
/// forwarded. `Proxy-Connection` is the non-standard alias some clients still send.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Remove hop-by-hop headers, including every header the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One look at the names present first: most messages carry none of these, or only
    // `Connection`, and each removal costs a hash of the name, every request, both ways.
    let is_hop = |name: &HeaderName| HOP_BY_HOP.contains(name) || name.as_str() == "proxy-connection";
    if !headers.keys().any(is_hop) {
        return;
    }
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    doomed.extend(headers.keys().filter(|n| is_hop(n)).cloned());
    for name in &doomed {
        headers.remove(name);
    }
}

/// Prepare a client's request headers for the upstream: drop hop-by-hop headers, let the
/// client library set `Host` to the upstream, and record the original in `X-Forwarded-*`.
/// Values an earlier proxy already set are kept, and the client address is appended.
/// With a configured public URL, `X-Forwarded-Host` and `-Proto` name it instead, so
/// registries that build absolute URLs from them (distribution does) point at it.
pub fn to_upstream(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &'static str, public_url: Option<&Origin>) {
    remove_hop_by_hop(headers);
    if let Some(p) = public_url {
        headers.remove(header::HOST);
        if let Ok(v) = HeaderValue::from_str(p.authority.as_str()) {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
        if let Ok(v) = HeaderValue::from_str(p.scheme.as_str()) {
            headers.insert(X_FORWARDED_PROTO.clone(), v);
        }
    } else if let Some(host) = headers.remove(header::HOST) {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    // The de-facto list form (no RFC defines X-Forwarded-For): what the client sent,
    // then the address this hop saw.
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", client_ip.to_str().unwrap_or(""))).ok(),
        None => Some(client_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// The origin a client used to reach tagpin: the configured public URL, or the scheme and
/// `Host` of its request. `None` when neither is known (an HTTP/1.0 request may omit
/// `Host`, RFC 9112 3.2): locations then become relative, see [`rewrite_locations`].
pub fn client_origin(public_url: Option<&Origin>, headers: &HeaderMap, proto: &str) -> Option<String> {
    client_origin_of_host(public_url, headers.get(header::HOST), proto)
}

/// [`client_origin`] from the `Host` value alone.
pub fn client_origin_of_host(public_url: Option<&Origin>, host: Option<&HeaderValue>, proto: &str) -> Option<String> {
    if let Some(p) = public_url {
        return Some(p.to_string());
    }
    let host = host?.to_str().ok()?;
    Some(format!("{proto}://{host}"))
}

/// Rewrite a `Location`, and every target of a `Link` (the `rel="next"` of paginated tag
/// lists and catalogs, distribution-spec `spec.md` "Listing Tags"; RFC 8288 3), that
/// points at the upstream's own origin so that it points at `client_origin`: uploads and
/// page walks then keep flowing through tagpin, and the upstream's internal address never
/// reaches a client. Without a client origin the URL becomes relative (path and query),
/// which a client resolves against the URL it asked (RFC 7231 7.1.2, RFC 9110 10.2.2;
/// RFC 8288 3.1 for link targets). A relative URL, or one on any other origin (object
/// storage, a CDN), is left untouched.
pub fn rewrite_locations(headers: &mut HeaderMap, upstream: &Origin, client_origin: Option<&str>) {
    if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        if let Some(url) = rewrite_url(loc, upstream, client_origin) {
            if let Ok(v) = HeaderValue::from_str(&url) {
                headers.insert(header::LOCATION, v);
            }
        }
    }
    if !headers.contains_key(header::LINK) {
        return;
    }
    let links: Vec<HeaderValue> = headers
        .get_all(header::LINK)
        .iter()
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|text| rewrite_link(text, upstream, client_origin))
                .and_then(|text| HeaderValue::from_str(&text).ok())
                .unwrap_or_else(|| v.clone())
        })
        .collect();
    headers.remove(header::LINK);
    for v in links {
        headers.append(header::LINK, v);
    }
}

/// `url` pointed at `client_origin` (or made relative), when it is on the upstream's origin.
fn rewrite_url(url: &str, upstream: &Origin, client_origin: Option<&str>) -> Option<String> {
    let rest = strip_origin(url, upstream)?;
    // `http://up` and `http://up?q` name the root path; a relative `?q` would not.
    let slash = if rest.starts_with('/') { "" } else { "/" };
    Some(format!("{}{slash}{rest}", client_origin.unwrap_or("")))
}

/// A `Link` header value with each upstream target rewritten; `None` when nothing changed
/// or the value is not an RFC 8288 link list (it is then passed on as it is).
fn rewrite_link(value: &str, upstream: &Origin, client_origin: Option<&str>) -> Option<String> {
    let links = parse_links(value)?;
    let mut out = String::with_capacity(value.len());
    let mut copied = 0;
    for link in &links {
        if let Some(url) = rewrite_url(link.target(value), upstream, client_origin) {
            out.push_str(&value[copied..link.target.start]);
            out.push_str(&url);
            copied = link.target.end;
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&value[copied..]);
    Some(out)
}

/// One link-value of a `Link` header (RFC 8288 3): where its target and its parameters
/// are in the header text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkValue {
    /// The URI-reference between `<` and `>`.
    pub target: std::ops::Range<usize>,
    /// Everything after the `>` up to the next link-value, `;`-separated parameters.
    pub params: std::ops::Range<usize>,
}

impl LinkValue {
    pub fn target<'a>(&self, header: &'a str) -> &'a str {
        &header[self.target.clone()]
    }

    /// Whether the `rel` parameter names `rel` (a space-separated list, compared without
    /// case, RFC 8288 3.3).
    pub fn has_rel(&self, header: &str, rel: &str) -> bool {
        split_unquoted(&header[self.params.clone()], ';')
            .into_iter()
            .filter_map(|param| param.split_once('='))
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case("rel"))
            .any(|(_, value)| {
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                value.split_ascii_whitespace().any(|r| r.eq_ignore_ascii_case(rel))
            })
    }
}

/// The link-values of a `Link` header: `#( "<" URI-Reference ">" *( OWS ";" OWS
/// link-param ) )` (RFC 8288 3). `None` when the text is not of that form: a target
/// without its angle brackets, or an unterminated quoted string.
pub fn parse_links(header: &str) -> Option<Vec<LinkValue>> {
    let bytes = header.as_bytes();
    let mut links = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        if i == bytes.len() {
            return Some(links);
        }
        if bytes[i] != b'<' {
            return None;
        }
        // `<` and `>` cannot occur in a URI-reference (RFC 3986 2), so the first `>` ends it.
        let end = i + 1 + header[i + 1..].find('>')?;
        let target = i + 1..end;
        i = end + 1;
        let params_start = i;
        let mut quoted = false;
        while i < bytes.len() && (quoted || bytes[i] != b',') {
            match bytes[i] {
                b'"' => quoted = !quoted,
                b'\\' if quoted => i += 1,
                _ => {}
            }
            i += 1;
        }
        if quoted {
            return None;
        }
        let params = params_start..i.min(bytes.len());
        links.push(LinkValue { target, params });
    }
}

/// `s` split at every `sep` outside a quoted string.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// If `url` starts with `upstream`'s origin, the path and query after it.
pub fn strip_origin<'a>(url: &'a str, upstream: &Origin) -> Option<&'a str> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case(upstream.scheme.as_str()) {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let default_port = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
    let authority: http::uri::Authority = authority.parse().ok()?;
    let port = authority.port_u16().unwrap_or(default_port);
    let host = authority.host();
    let want_port = upstream.authority.port_u16().unwrap_or(default_port);
    (host.eq_ignore_ascii_case(upstream.authority.host()) && port == want_port).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> Origin {
        let u: http::Uri = s.parse().unwrap();
        Origin {
            scheme: u.scheme().unwrap().clone(),
            authority: u.authority().unwrap().clone(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("authorization", "Basic keepme"),
            ("content-length", "5"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["authorization", "content-length"]);
    }

    #[test]
    fn forwarded_headers_are_set_and_appended() {
        let mut h = map(&[("host", "tagpin:5050"), ("authorization", "Bearer t")]);
        to_upstream(&mut h, &HeaderValue::from_static("127.0.0.7"), "http", None);
        assert!(h.get("host").is_none());
        assert_eq!(h["x-forwarded-host"], "tagpin:5050");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "127.0.0.7");
        assert_eq!(h["authorization"], "Bearer t");

        let mut h = map(&[
            ("host", "inner"),
            ("x-forwarded-for", "127.0.0.4"),
            ("x-forwarded-host", "outer"),
            ("x-forwarded-proto", "https"),
        ]);
        to_upstream(&mut h, &HeaderValue::from_static("::1"), "http", None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.4, ::1");
        assert_eq!(h["x-forwarded-host"], "outer");
        assert_eq!(h["x-forwarded-proto"], "https");

        let mut h = map(&[("host", "inner"), ("x-forwarded-host", "spoofed")]);
        to_upstream(
            &mut h,
            &HeaderValue::from_static("::1"),
            "http",
            Some(&origin("https://pub.example:8443")),
        );
        assert_eq!(h["x-forwarded-host"], "pub.example:8443");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("host").is_none());
    }

    #[test]
    fn locations_on_the_upstream_origin_are_rewritten() {
        let up = origin("http://127.0.0.1:5000");
        let cases = [
            (
                "http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=y",
                "http://tagpin:5050/v2/a/blobs/uploads/x?_state=y",
            ),
            ("HTTP://127.0.0.1:5000/v2/", "http://tagpin:5050/v2/"),
            ("/v2/a/blobs/uploads/x", "/v2/a/blobs/uploads/x"),
            ("https://127.0.0.1:5000/v2/", "https://127.0.0.1:5000/v2/"),
            ("http://127.0.0.1:5001/v2/", "http://127.0.0.1:5001/v2/"),
            ("http://127.0.0.1:50000/v2/", "http://127.0.0.1:50000/v2/"),
            (
                "https://bucket.s3.example/blob?sig=1",
                "https://bucket.s3.example/blob?sig=1",
            ),
        ];
        for (from, to) in cases {
            let mut h = map(&[("location", from)]);
            rewrite_locations(&mut h, &up, Some("http://tagpin:5050"));
            assert_eq!(h["location"], to, "{from}");
        }
        let up = origin("https://reg.example");
        let mut h = map(&[("location", "https://REG.example:443/v2/x")]);
        rewrite_locations(&mut h, &up, Some("https://pub.example"));
        assert_eq!(h["location"], "https://pub.example/v2/x");
    }

    #[test]
    fn without_a_client_origin_upstream_locations_become_relative() {
        let up = origin("http://127.0.0.1:5000");
        let cases = [
            (
                "http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=y",
                "/v2/a/blobs/uploads/x?_state=y",
            ),
            ("http://127.0.0.1:5000", "/"),
            ("http://127.0.0.1:5000?q=1", "/?q=1"),
            ("/v2/a/blobs/uploads/x", "/v2/a/blobs/uploads/x"),
            ("https://cdn.example/blob", "https://cdn.example/blob"),
        ];
        for (from, to) in cases {
            let mut h = map(&[("location", from)]);
            rewrite_locations(&mut h, &up, None);
            assert_eq!(h["location"], to, "{from}");
        }
    }

    #[test]
    fn link_targets_on_the_upstream_origin_are_rewritten() {
        let up = origin("http://127.0.0.1:5000");
        let tp = Some("http://tagpin:5050");
        let cases = [
            (
                r#"<http://127.0.0.1:5000/v2/_catalog?last=a&n=1>; rel="next""#,
                tp,
                r#"<http://tagpin:5050/v2/_catalog?last=a&n=1>; rel="next""#,
            ),
            (
                r#"<http://127.0.0.1:5000/v2/_catalog?last=a&n=1>; rel="next""#,
                None,
                r#"</v2/_catalog?last=a&n=1>; rel="next""#,
            ),
            (
                r#"</v2/_catalog?last=a&n=1>; rel="next""#,
                tp,
                r#"</v2/_catalog?last=a&n=1>; rel="next""#,
            ),
            (
                r#"<https://docs.example/x>; rel="help", <HTTP://127.0.0.1:5000/v2/t/tags/list?last=b>; rel=next"#,
                tp,
                r#"<https://docs.example/x>; rel="help", <http://tagpin:5050/v2/t/tags/list?last=b>; rel=next"#,
            ),
            (
                r#"<http://127.0.0.1:5000/a>; title="x, <y>", <http://127.0.0.1:5000/b>; rel=next"#,
                tp,
                r#"<http://tagpin:5050/a>; title="x, <y>", <http://tagpin:5050/b>; rel=next"#,
            ),
            (
                "not a link http://127.0.0.1:5000/v2/",
                tp,
                "not a link http://127.0.0.1:5000/v2/",
            ),
        ];
        for (from, client, to) in cases {
            let mut h = map(&[("link", from)]);
            rewrite_locations(&mut h, &up, client);
            assert_eq!(h["link"], to, "{from}");
        }
        let mut h = map(&[
            ("link", "<http://127.0.0.1:5000/one>; rel=a"),
            ("link", "</two>; rel=b"),
        ]);
        rewrite_locations(&mut h, &up, tp);
        let all: Vec<&str> = h.get_all("link").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(all, ["<http://tagpin:5050/one>; rel=a", "</two>; rel=b"]);
    }

    #[test]
    fn link_values_are_parsed_with_their_relations() {
        let h = r#"</v2/x>; rel="prev", <https://u/v2/y>; rel="next last"; title="a;rel=next,""#;
        let links = parse_links(h).unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].target(h), "/v2/x");
        assert!(links[0].has_rel(h, "prev") && !links[0].has_rel(h, "next"));
        assert_eq!(links[1].target(h), "https://u/v2/y");
        assert!(links[1].has_rel(h, "NEXT") && links[1].has_rel(h, "last"));
        assert_eq!(parse_links(""), Some(vec![]));
        assert_eq!(parse_links("/v2/x; rel=next"), None);
        assert_eq!(parse_links("</v2/x; rel=next"), None);
        assert_eq!(parse_links(r#"</v2/x>; title="open"#), None);
        let h = r#"</v2/z>; title="rel=next""#;
        assert!(!parse_links(h).unwrap()[0].has_rel(h, "next"));
    }

    #[test]
    fn client_origin_prefers_the_public_url() {
        let h = map(&[("host", "h:1")]);
        assert_eq!(client_origin(None, &h, "http").as_deref(), Some("http://h:1"));
        let p = origin("https://pub.example");
        assert_eq!(
            client_origin(Some(&p), &h, "http").as_deref(),
            Some("https://pub.example")
        );
        assert_eq!(client_origin(None, &HeaderMap::new(), "http"), None);
    }
}

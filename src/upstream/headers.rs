//! Header edits between client and upstream, as small pure functions over `HeaderMap`.

use std::net::IpAddr;

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
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

/// Prepare a client's request headers for the upstream: drop hop-by-hop headers, let the
/// client library set `Host` to the upstream, and record the original in `X-Forwarded-*`.
/// Values an earlier proxy already set are kept, and the client address is appended.
/// With a configured public URL, `X-Forwarded-Host` and `-Proto` name it instead, so
/// registries that build absolute URLs from them (distribution does) point at it.
pub fn to_upstream(headers: &mut HeaderMap, client_ip: IpAddr, proto: &'static str, public_url: Option<&Origin>) {
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
    let ip = client_ip.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// The origin a client used to reach tagpin: the configured public URL, or the scheme and
/// `Host` of its request.
pub fn client_origin(public_url: Option<&Origin>, headers: &HeaderMap, proto: &str) -> Option<String> {
    if let Some(p) = public_url {
        return Some(p.to_string());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(format!("{proto}://{host}"))
}

/// Rewrite a `Location` (and the `Link` of paginated listings) that points at the
/// upstream's own origin so that it points at `client_origin`: uploads then keep flowing
/// through tagpin. A relative location, or one on any other origin (object storage, a
/// CDN), is left untouched.
pub fn rewrite_locations(headers: &mut HeaderMap, upstream: &Origin, client_origin: &str) {
    if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        if let Some(rest) = strip_origin(loc, upstream) {
            if let Ok(v) = HeaderValue::from_str(&format!("{client_origin}{rest}")) {
                headers.insert(header::LOCATION, v);
            }
        }
    }
}

/// If `url` starts with `upstream`'s origin, the path and query after it.
fn strip_origin<'a>(url: &'a str, upstream: &Origin) -> Option<&'a str> {
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
        to_upstream(&mut h, "127.0.0.7".parse().unwrap(), "http", None);
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
        to_upstream(&mut h, "::1".parse().unwrap(), "http", None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.4, ::1");
        assert_eq!(h["x-forwarded-host"], "outer");
        assert_eq!(h["x-forwarded-proto"], "https");

        let mut h = map(&[("host", "inner"), ("x-forwarded-host", "spoofed")]);
        to_upstream(
            &mut h,
            "::1".parse().unwrap(),
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
            rewrite_locations(&mut h, &up, "http://tagpin:5050");
            assert_eq!(h["location"], to, "{from}");
        }
        let up = origin("https://reg.example");
        let mut h = map(&[("location", "https://REG.example:443/v2/x")]);
        rewrite_locations(&mut h, &up, "https://pub.example");
        assert_eq!(h["location"], "https://pub.example/v2/x");
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

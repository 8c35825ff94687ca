//! Which token realms tagpin fetches its own tokens from (with its own credentials, when
//! configured). A `WWW-Authenticate: Bearer realm=…` challenge names any URL the upstream
//! likes; tagpin goes there only when:
//! - the realm is an absolute `http` or `https` URL;
//! - it is not `http` behind an `https` upstream (the credentials would cross the
//!   network in the clear where the upstream itself is protected);
//! - with `token_realms` configured: the realm lies under one of its prefixes (and
//!   nothing else is checked: the operator named it);
//! - without: each of the realm's addresses (its literal IP, or every address its host
//!   name resolves to here and now) is public, or of a kind one of the upstream's own
//!   addresses has too: loopback (with the unspecified address), link-local, or private
//!   (RFC 1918, shared 100.64/10, unique-local fc00::/7). A loopback realm is fine for a
//!   loopback upstream; a private one for an upstream on a private network.
//!
//! The connection to the realm resolves its host again: a name whose answers change in
//! between (DNS rebinding) is not caught; `token_realms` pins realms when that matters.

use std::net::IpAddr;

use http::uri::Scheme;
use http::Uri;

use crate::config::{Origin, TokenRealm};

/// The kind of network an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Public,
    Loopback,
    LinkLocal,
    Private,
}

fn reach(ip: IpAddr) -> Reach {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() || v4.is_unspecified() {
                Reach::Loopback
            } else if v4.is_link_local() {
                Reach::LinkLocal
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                Reach::Private
            } else {
                Reach::Public
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() || v6.is_unspecified() {
                Reach::Loopback
            } else if first & 0xffc0 == 0xfe80 {
                Reach::LinkLocal
            } else if first & 0xfe00 == 0xfc00 {
                Reach::Private
            } else {
                Reach::Public
            }
        }
    }
}

/// Every address of `host` (a literal IP, bracketed or not, or a name to resolve).
async fn addresses(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let found: Vec<IpAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| format!("cannot resolve {bare}: {e}"))?
        .map(|a| a.ip())
        .collect();
    if found.is_empty() {
        return Err(format!("{bare} resolves to no address"));
    }
    Ok(found)
}

fn port_of(uri_scheme: &Scheme, port: Option<u16>) -> u16 {
    port.unwrap_or(if *uri_scheme == Scheme::HTTPS { 443 } else { 80 })
}

/// `Ok` when tagpin may send a token request to `realm`; otherwise why not.
pub async fn check(realm: &Uri, upstream: &Origin, allowed: &[TokenRealm]) -> Result<(), String> {
    let (Some(scheme), Some(authority)) = (realm.scheme(), realm.authority()) else {
        return Err("it is not an absolute http(s) URL".into());
    };
    if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
        return Err("it is not an absolute http(s) URL".into());
    }
    if *scheme == Scheme::HTTP && upstream.scheme == Scheme::HTTPS {
        return Err("it is plain http behind an https upstream".into());
    }
    if !allowed.is_empty() {
        return if allowed.iter().any(|a| a.matches(realm)) {
            Ok(())
        } else {
            Err("it is not under any of token_realms".into())
        };
    }
    let theirs = addresses(authority.host(), port_of(scheme, authority.port_u16())).await?;
    let ours: Vec<Reach> = match addresses(
        upstream.authority.host(),
        port_of(&upstream.scheme, upstream.authority.port_u16()),
    )
    .await
    {
        Ok(ips) => ips.into_iter().map(reach).collect(),
        Err(_) => Vec::new(),
    };
    for ip in theirs {
        let kind = reach(ip);
        if kind != Reach::Public && !ours.contains(&kind) {
            let kind = match kind {
                Reach::Loopback => "loopback",
                Reach::LinkLocal => "link-local",
                _ => "private",
            };
            return Err(format!("its address {ip} is {kind} and the upstream's is not"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> Origin {
        let u: Uri = url.parse().unwrap();
        Origin {
            scheme: u.scheme().unwrap().clone(),
            authority: u.authority().unwrap().clone(),
        }
    }

    async fn verdict(realm: &str, upstream: &str, allowed: &[&str]) -> Result<(), String> {
        let allowed: Vec<TokenRealm> = allowed.iter().map(|a| TokenRealm::parse(a).unwrap()).collect();
        check(&realm.parse().unwrap(), &origin(upstream), &allowed).await
    }

    #[test]
    fn addresses_are_sorted_by_reach() {
        let r = |s: &str| reach(s.parse().unwrap());
        assert_eq!(r("127.0.0.2"), Reach::Loopback);
        assert_eq!(r("0.0.0.0"), Reach::Loopback);
        assert_eq!(r("::1"), Reach::Loopback);
        assert_eq!(r("::ffff:127.0.0.1"), Reach::Loopback);
        assert_eq!(r("169.254.169.254"), Reach::LinkLocal);
        assert_eq!(r("fe80::1"), Reach::LinkLocal);
        assert_eq!(r("10.1.2.3"), Reach::Private);
        assert_eq!(r("172.31.0.1"), Reach::Private);
        assert_eq!(r("192.168.0.1"), Reach::Private);
        assert_eq!(r("100.64.0.1"), Reach::Private);
        assert_eq!(r("fd00::1"), Reach::Private);
        assert_eq!(r("8.8.8.8"), Reach::Public);
        assert_eq!(r("100.128.0.1"), Reach::Public);
        assert_eq!(r("2001:db8::1"), Reach::Public);
    }

    #[tokio::test]
    async fn realms_are_refused_by_scheme_reach_and_allowlist() {
        // Docker Hub's shape: a public realm on another host.
        assert_eq!(verdict("https://34.1.2.3/token", "https://52.1.2.3", &[]).await, Ok(()));
        assert!(verdict("http://34.1.2.3/token", "https://52.1.2.3", &[])
            .await
            .unwrap_err()
            .contains("plain http behind an https upstream"));
        for internal in [
            "http://127.0.0.1/t",
            "http://169.254.169.254/t",
            "http://10.0.0.1/t",
            "http://[::1]/t",
        ] {
            assert!(verdict(internal, "http://52.1.2.3", &[]).await.is_err(), "{internal}");
        }
        assert_eq!(verdict("http://127.0.0.2:1/t", "http://127.0.0.1:2", &[]).await, Ok(()));
        assert_eq!(verdict("http://10.0.0.9/t", "http://10.0.0.1", &[]).await, Ok(()));
        assert!(verdict("http://169.254.169.254/t", "http://10.0.0.1", &[])
            .await
            .is_err());
        // The allowlist: only its realms, whatever their address; never http behind https.
        assert_eq!(
            verdict("http://10.0.0.9/t", "http://52.1.2.3", &["http://10.0.0.9/t"]).await,
            Ok(())
        );
        assert!(
            verdict("https://34.1.2.3/token", "https://52.1.2.3", &["https://34.1.2.4/"])
                .await
                .unwrap_err()
                .contains("token_realms")
        );
        assert!(verdict("http://10.0.0.9/t", "https://52.1.2.3", &["http://10.0.0.9/t"])
            .await
            .is_err());
        assert!(verdict("ftp://a/t", "http://a", &[]).await.is_err());
    }
}

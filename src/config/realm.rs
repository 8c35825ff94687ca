//! `token_realms`: the token realms tagpin may fetch its own tokens from, as URL prefixes.

use http::uri::{Scheme, Uri};

/// A realm URL prefix, `scheme://host[:port][/path]`. A realm matches when its scheme,
/// host (any case) and port (the scheme's default when none is written) are the prefix's,
/// and its path is the prefix's path or lies under it segment by segment
/// (`https://auth.example.com/token` matches `…/token` and `…/token/v2`, not `…/tokens`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRealm {
    text: String,
    scheme: Scheme,
    host: String,
    port: u16,
    /// Without a trailing `/`; empty for the whole origin.
    path: String,
}

fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTPS {
        443
    } else {
        80
    }
}

impl TokenRealm {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} {why}; expected scheme://host[:port][/path]");
        let uri: Uri = text.parse().map_err(|_| bad("is not a URL"))?;
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            _ => return Err(bad("is not an http or https URL")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("carries credentials"));
        }
        if authority.host().is_empty() {
            return Err(bad("has no host"));
        }
        if uri.query().is_some() || text.contains('#') {
            return Err(bad("has a query or fragment"));
        }
        Ok(Self {
            text: text.to_owned(),
            port: authority.port_u16().unwrap_or_else(|| default_port(&scheme)),
            host: authority.host().to_ascii_lowercase(),
            path: uri.path().trim_end_matches('/').to_owned(),
            scheme,
        })
    }

    /// Whether `realm` (an absolute URL) lies under this prefix.
    pub fn matches(&self, realm: &Uri) -> bool {
        let (Some(scheme), Some(authority)) = (realm.scheme(), realm.authority()) else {
            return false;
        };
        let path = realm.path();
        *scheme == self.scheme
            && authority.host().eq_ignore_ascii_case(&self.host)
            && authority.port_u16().unwrap_or_else(|| default_port(scheme)) == self.port
            && (path == self.path
                || path
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

impl std::fmt::Display for TokenRealm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(prefix: &str, realm: &str) -> bool {
        TokenRealm::parse(prefix).unwrap().matches(&realm.parse().unwrap())
    }

    #[test]
    fn realms_match_by_origin_and_path_segments() {
        assert!(m(
            "https://auth.docker.io/token",
            "https://auth.docker.io/token?service=x"
        ));
        assert!(m("https://auth.docker.io", "https://Auth.Docker.IO:443/token"));
        assert!(m("https://auth.docker.io/", "https://auth.docker.io/token"));
        assert!(m("https://a/token", "https://a/token/v2"));
        assert!(!m("https://a/token", "https://a/tokens"));
        assert!(!m("https://a/token", "http://a/token"));
        assert!(!m("https://a", "https://a:8443/token"));
        assert!(!m(
            "https://auth.docker.io",
            "https://auth.docker.io.evil.example/token"
        ));
        assert!(m("http://127.0.0.1:5001/t", "http://127.0.0.1:5001/t"));
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in [
            "",
            "auth.docker.io",
            "ftp://a/",
            "https://u:p@a/",
            "https://a/token?x=1",
            "https://a/#f",
            "/token",
        ] {
            assert!(TokenRealm::parse(bad).is_err(), "{bad}");
        }
    }
}

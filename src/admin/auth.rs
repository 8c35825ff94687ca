//! Admin authentication: `Authorization: Bearer <token>` against the configured tokens.
//!
//! Tokens are compared as sha256 digests with a constant-time equality, and every
//! configured token is compared on every request, so neither the time taken nor an early
//! exit tells a guesser how close a guess came or how long a real token is.

use http::HeaderMap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// The configured tokens, kept only as digests.
pub struct Tokens {
    entries: Vec<(String, [u8; 32])>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    pub fn new(tokens: &[(String, Secret)]) -> Self {
        Self {
            entries: tokens
                .iter()
                .map(|(name, t)| (name.clone(), digest(t.0.as_bytes())))
                .collect(),
        }
    }

    /// The name of the token the request carries, or `None`.
    pub fn authorize(&self, headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
        let presented = match value.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => digest(rest),
            _ => return None,
        };
        let mut found = None;
        for (name, want) in &self.entries {
            if bool::from(want.ct_eq(&presented)) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn only_a_configured_bearer_token_is_accepted() {
        let t = Tokens::new(&[
            ("alice".into(), Secret("alice-token-0123456789".into())),
            ("bob".into(), Secret("bob-token-0123456789xx".into())),
        ]);
        assert_eq!(t.authorize(&headers("Bearer bob-token-0123456789xx")), Some("bob"));
        assert_eq!(t.authorize(&headers("bearer alice-token-0123456789")), Some("alice"));
        assert_eq!(t.authorize(&headers("Bearer alice-token-012345678")), None);
        assert_eq!(t.authorize(&headers("Bearer alice-token-0123456789x")), None);
        assert_eq!(t.authorize(&headers("Basic alice-token-0123456789")), None);
        assert_eq!(t.authorize(&headers("alice-token-0123456789")), None);
        assert_eq!(t.authorize(&HeaderMap::new()), None);
    }
}

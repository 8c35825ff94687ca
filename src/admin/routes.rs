//! The admin API's paths, classified by one pure function. Everything is under
//! `/admin/v1/`; repositories and tags travel as query parameters (`?repository=a/b&tag=v1`),
//! so a name with slashes never has to be escaped into a path segment.

use http::Method;

use crate::oci::{Repository, Tag};

/// An admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    /// `GET /admin/v1/pins[?repository=R][&after=R:T][&limit=N]`
    ListPins {
        repository: Option<Repository>,
        after: Option<(Repository, Tag)>,
        limit: usize,
    },
    /// `GET /admin/v1/pins?at=TIME[&repository=R][&after=R:T][&limit=N]`: every tag as it
    /// stood at TIME (RFC 3339, in seconds since the epoch here).
    PinsAt {
        repository: Option<Repository>,
        after: Option<(Repository, Tag)>,
        limit: usize,
        at: i64,
    },
    /// `GET /admin/v1/pin?repository=R&tag=T`
    ShowPin { repository: Repository, tag: Tag },
    /// `GET /admin/v1/pin?repository=R&tag=T&at=TIME`: the tag as it stood at TIME.
    PinAt { repository: Repository, tag: Tag, at: i64 },
    /// `POST /admin/v1/releases` with a JSON body.
    CreateRelease,
    /// `DELETE /admin/v1/releases?repository=R&tag=T`
    CancelRelease { repository: Repository, tag: Tag },
    /// `POST /admin/v1/seed[?repository=R | ?after=R][&concurrency=N]`
    Seed(WalkScope),
    /// `GET /admin/v1/verify[?repository=R | ?after=R][&concurrency=N][&format=ndjson]`;
    /// `lines`: answered as JSON lines with progress, not one JSON object.
    Verify { scope: WalkScope, lines: bool },
    /// `GET /admin/v1/export`
    Export,
    /// `POST /admin/v1/import` with JSON lines.
    Import,
    /// `GET /admin/v1/claims[?repository=R]`: the records of writes and digest deletes
    /// whose outcome is not known.
    ListClaims { repository: Option<Repository> },
    /// `POST /admin/v1/claims/clear` with a JSON body naming a tag or a digest.
    ClearClaims,
    /// `GET /admin/v1/log/checkpoint`
    LogCheckpoint,
    /// `POST /admin/v1/notify/test[?target=NAME]`: an `io.tagpin.test` event to every
    /// webhook target, or the one named.
    NotifyTest { target: Option<String> },
    /// `GET /admin/v1/log/entries?start=S&end=E`
    LogEntries { start: u64, end: u64 },
    /// `GET /admin/v1/log/proof/inclusion?index=I&size=N`
    LogInclusion { index: u64, size: u64 },
    /// `GET /admin/v1/log/proof/consistency?from=M&to=N`
    LogConsistency { from: u64, to: u64 },
}

/// Which repositories a seed or verify walks, and how many upstream requests it keeps in
/// flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkScope {
    /// Only this repository.
    pub repository: Option<Repository>,
    /// Every repository after this one (a walk that resumes).
    pub after: Option<Repository>,
    /// At most this many requests in flight (the server's `walk_concurrency` caps it).
    pub concurrency: Option<usize>,
}

/// Largest page of `ListPins`, and the default.
pub const MAX_PAGE: usize = 1000;

/// Classify an admin request; `Err` carries the message of a 400 (or 404 for no route).
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> Result<AdminRoute, RouteProblem> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let repository = || -> Result<Option<Repository>, RouteProblem> {
        get("repository")
            .map(|r| Repository::parse(r).map_err(|e| RouteProblem::Bad(e.to_string())))
            .transpose()
    };
    let at = || -> Result<Option<i64>, RouteProblem> {
        get("at")
            .map(|a| crate::store::parse_query_time(a).map_err(|e| RouteProblem::Bad(format!("at: {e}"))))
            .transpose()
    };
    let required = || -> Result<(Repository, Tag), RouteProblem> {
        let r = repository()?.ok_or_else(|| RouteProblem::Bad("the repository parameter is required".into()))?;
        let t = get("tag").ok_or_else(|| RouteProblem::Bad("the tag parameter is required".into()))?;
        let t = Tag::parse(t).map_err(|e| RouteProblem::Bad(e.to_string()))?;
        Ok((r, t))
    };
    let number = |key: &str| -> Result<u64, RouteProblem> {
        let v = get(key).ok_or_else(|| RouteProblem::Bad(format!("the {key} parameter is required")))?;
        v.parse()
            .map_err(|_| RouteProblem::Bad(format!("{key} must be a whole number, not {v:?}")))
    };
    match (method.as_str(), path) {
        ("GET", "/admin/v1/log/checkpoint") => Ok(AdminRoute::LogCheckpoint),
        ("POST", "/admin/v1/notify/test") => Ok(AdminRoute::NotifyTest {
            target: get("target").filter(|t| !t.is_empty()).map(str::to_owned),
        }),
        ("GET", "/admin/v1/log/entries") => Ok(AdminRoute::LogEntries {
            start: number("start")?,
            end: number("end")?,
        }),
        ("GET", "/admin/v1/log/proof/inclusion") => Ok(AdminRoute::LogInclusion {
            index: number("index")?,
            size: number("size")?,
        }),
        ("GET", "/admin/v1/log/proof/consistency") => Ok(AdminRoute::LogConsistency {
            from: number("from")?,
            to: number("to")?,
        }),
        ("GET", "/admin/v1/pins") => {
            let after = get("after")
                .filter(|a| !a.is_empty())
                .map(|a| {
                    let (r, t) = a
                        .rsplit_once(':')
                        .ok_or_else(|| RouteProblem::Bad("after must be REPOSITORY:TAG".into()))?;
                    Ok::<_, RouteProblem>((
                        Repository::parse(r).map_err(|e| RouteProblem::Bad(e.to_string()))?,
                        Tag::parse(t).map_err(|e| RouteProblem::Bad(e.to_string()))?,
                    ))
                })
                .transpose()?;
            let limit = match get("limit") {
                None => MAX_PAGE,
                Some(n) => n
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| RouteProblem::Bad(format!("limit must be 1 to {MAX_PAGE}")))?,
            };
            let repository = repository()?;
            Ok(match at()? {
                Some(at) => AdminRoute::PinsAt {
                    repository,
                    after,
                    limit,
                    at,
                },
                None => AdminRoute::ListPins {
                    repository,
                    after,
                    limit,
                },
            })
        }
        ("GET", "/admin/v1/pin") => {
            let (repository, tag) = required()?;
            Ok(match at()? {
                Some(at) => AdminRoute::PinAt { repository, tag, at },
                None => AdminRoute::ShowPin { repository, tag },
            })
        }
        ("POST", "/admin/v1/releases") => Ok(AdminRoute::CreateRelease),
        ("DELETE", "/admin/v1/releases") => {
            let (repository, tag) = required()?;
            Ok(AdminRoute::CancelRelease { repository, tag })
        }
        ("POST", "/admin/v1/seed") => Ok(AdminRoute::Seed(walk_scope(&params)?)),
        ("GET", "/admin/v1/verify") => Ok(AdminRoute::Verify {
            scope: walk_scope(&params)?,
            lines: match get("format") {
                None | Some("json") => false,
                Some("ndjson") => true,
                Some(other) => {
                    return Err(RouteProblem::Bad(format!(
                        "format must be json or ndjson, not {other:?}"
                    )))
                }
            },
        }),
        ("GET", "/admin/v1/export") => Ok(AdminRoute::Export),
        ("POST", "/admin/v1/import") => Ok(AdminRoute::Import),
        ("GET", "/admin/v1/claims") => Ok(AdminRoute::ListClaims {
            repository: repository()?,
        }),
        ("POST", "/admin/v1/claims/clear") => Ok(AdminRoute::ClearClaims),
        (_, p) if p.starts_with("/admin/v1/") => Err(RouteProblem::NotFound),
        _ => Err(RouteProblem::NotFound),
    }
}

/// `repository`, `after` and `concurrency` of a seed or verify.
fn walk_scope(params: &[(String, String)]) -> Result<WalkScope, RouteProblem> {
    let get = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let name = |key: &str| {
        get(key)
            .filter(|v| !v.is_empty())
            .map(|v| Repository::parse(v).map_err(|e| RouteProblem::Bad(format!("{key}: {e}"))))
            .transpose()
    };
    let (repository, after) = (name("repository")?, name("after")?);
    if repository.is_some() && after.is_some() {
        return Err(RouteProblem::Bad(
            "after resumes a walk of the whole catalog; it does not go with repository".into(),
        ));
    }
    let concurrency = get("concurrency")
        .map(|n| {
            n.parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| RouteProblem::Bad(format!("concurrency must be a whole number of 1 or more, not {n:?}")))
        })
        .transpose()?;
    Ok(WalkScope {
        repository,
        after,
        concurrency,
    })
}

/// Why an admin request has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteProblem {
    NotFound,
    Bad(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: &str, p: &str, q: Option<&str>) -> Result<AdminRoute, RouteProblem> {
        classify(&Method::from_bytes(m.as_bytes()).unwrap(), p, q)
    }

    #[test]
    fn a_table_of_admin_requests() {
        let r = |s: &str| Repository::parse(s).unwrap();
        let t = |s: &str| Tag::parse(s).unwrap();
        assert_eq!(
            c("GET", "/admin/v1/pin", Some("repository=team%2Fapp&tag=1.0")),
            Ok(AdminRoute::ShowPin {
                repository: r("team/app"),
                tag: t("1.0")
            })
        );
        // A slash need not be escaped in a query value.
        assert_eq!(
            c("GET", "/admin/v1/pin", Some("repository=team/app&tag=1.0")),
            Ok(AdminRoute::ShowPin {
                repository: r("team/app"),
                tag: t("1.0")
            })
        );
        assert_eq!(
            c("GET", "/admin/v1/pins", Some("after=a%2Fb%3Av1&limit=10")),
            Ok(AdminRoute::ListPins {
                repository: None,
                after: Some((r("a/b"), t("v1"))),
                limit: 10
            })
        );
        assert_eq!(
            c("GET", "/admin/v1/pins", None),
            Ok(AdminRoute::ListPins {
                repository: None,
                after: None,
                limit: MAX_PAGE
            })
        );
        assert!(matches!(
            c("GET", "/admin/v1/pins", Some("limit=0")),
            Err(RouteProblem::Bad(_))
        ));
        assert!(matches!(
            c("GET", "/admin/v1/pin", Some("repository=A&tag=x")),
            Err(RouteProblem::Bad(_))
        ));
        assert!(matches!(
            c("GET", "/admin/v1/pin", Some("repository=a")),
            Err(RouteProblem::Bad(_))
        ));
        // `at` is RFC 3339 with Z or an offset, held in seconds since the epoch.
        assert_eq!(
            c(
                "GET",
                "/admin/v1/pin",
                Some("repository=a&tag=v1&at=2026-12-01T15%3A00%3A00%2B01%3A00")
            ),
            Ok(AdminRoute::PinAt {
                repository: r("a"),
                tag: t("v1"),
                at: 1_796_133_600
            })
        );
        assert_eq!(
            c(
                "GET",
                "/admin/v1/pins",
                Some("at=2026-12-01T14:00:00Z&repository=a&limit=5")
            ),
            Ok(AdminRoute::PinsAt {
                repository: Some(r("a")),
                after: None,
                limit: 5,
                at: 1_796_133_600
            })
        );
        for q in ["repository=a&tag=v1&at=yesterday", "repository=a&tag=v1&at=2026-12-01"] {
            assert!(
                matches!(c("GET", "/admin/v1/pin", Some(q)), Err(RouteProblem::Bad(ref m)) if m.starts_with("at: ")),
                "{q}"
            );
        }
        assert_eq!(c("POST", "/admin/v1/releases", None), Ok(AdminRoute::CreateRelease));
        assert_eq!(c("GET", "/admin/v1/export", None), Ok(AdminRoute::Export));
        assert_eq!(c("PUT", "/admin/v1/export", None), Err(RouteProblem::NotFound));
        assert_eq!(c("GET", "/v2/", None), Err(RouteProblem::NotFound));
        assert_eq!(
            c("POST", "/admin/v1/seed", Some("repository=x")),
            Ok(AdminRoute::Seed(WalkScope {
                repository: Some(r("x")),
                ..WalkScope::default()
            }))
        );
        assert_eq!(
            c(
                "GET",
                "/admin/v1/verify",
                Some("after=team/app&concurrency=3&format=ndjson")
            ),
            Ok(AdminRoute::Verify {
                scope: WalkScope {
                    repository: None,
                    after: Some(r("team/app")),
                    concurrency: Some(3),
                },
                lines: true,
            })
        );
        assert_eq!(
            c("GET", "/admin/v1/verify", None),
            Ok(AdminRoute::Verify {
                scope: WalkScope::default(),
                lines: false
            })
        );
        for q in [
            "repository=a&after=b",
            "concurrency=0",
            "concurrency=many",
            "after=A",
            "format=xml",
        ] {
            assert!(
                matches!(c("GET", "/admin/v1/verify", Some(q)), Err(RouteProblem::Bad(_))),
                "{q}"
            );
        }
        assert_eq!(
            c("GET", "/admin/v1/claims", None),
            Ok(AdminRoute::ListClaims { repository: None })
        );
        assert_eq!(
            c("GET", "/admin/v1/claims", Some("repository=team/app")),
            Ok(AdminRoute::ListClaims {
                repository: Some(r("team/app"))
            })
        );
        assert!(matches!(
            c("GET", "/admin/v1/claims", Some("repository=Team")),
            Err(RouteProblem::Bad(_))
        ));
        assert_eq!(c("POST", "/admin/v1/claims/clear", None), Ok(AdminRoute::ClearClaims));
        // Clearing changes the store: never by GET, and only at its own path.
        assert_eq!(c("GET", "/admin/v1/claims/clear", None), Err(RouteProblem::NotFound));
        assert_eq!(c("POST", "/admin/v1/claims", None), Err(RouteProblem::NotFound));
        assert_eq!(c("DELETE", "/admin/v1/claims", None), Err(RouteProblem::NotFound));
        assert_eq!(c("POST", "/admin/v1/claims/clear/", None), Err(RouteProblem::NotFound));
    }
}

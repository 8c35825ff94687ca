//! Which repositories a walk visits, in order, a page at a time: one named repository,
//! the upstream's catalog (a seed), or the catalog merged with the repositories the
//! store holds pins for (a verify, which also checks pins of repositories the upstream
//! no longer lists).
//!
//! The catalog is in lexical order (distribution's `last` parameter means "the
//! repositories after this name"), which for repository names is the byte order the
//! store lists pins in; the merge relies on it and a catalog out of order ends the walk
//! with an error rather than counting a repository twice or not at all.

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::app::App;
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};
use crate::upstream::{CatalogPages, UpstreamError};

/// A repository to walk, and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub repository: Repository,
    /// Listed by the upstream's catalog (or named by the request): its tags are read.
    pub in_catalog: bool,
    /// The store holds pins or claims in it (or it was named by the request).
    pub in_store: bool,
}

/// The repositories of one walk (see the module doc).
pub struct Repos<'a> {
    app: &'a App,
    source: Source<'a>,
}

enum Source<'a> {
    One(Option<Repository>),
    Catalog(Catalog<'a>),
    Union {
        catalog: Catalog<'a>,
        /// The next repository of the store, once looked up.
        store: Option<Option<Repository>>,
        /// The store's next repository is the first after this one.
        store_after: Option<Repository>,
    },
}

/// The catalog's pages, one page held at a time.
struct Catalog<'a> {
    pages: CatalogPages<'a>,
    page: VecDeque<Repository>,
    done: bool,
    /// The last repository taken, to check the order with.
    last: Option<Repository>,
    /// Whether an order other than lexical is an error (when merged with the store).
    ordered: bool,
}

impl Catalog<'_> {
    async fn peek(&mut self) -> Result<Option<&Repository>, UpstreamError> {
        while self.page.is_empty() && !self.done {
            match self.pages.next_page().await? {
                Some(page) => self.page.extend(page),
                None => self.done = true,
            }
        }
        let Some(next) = self.page.front() else {
            return Ok(None);
        };
        if let Some(last) = self.last.as_ref().filter(|l| self.ordered && *l >= next) {
            return Err(UpstreamError::Catalog(format!(
                "the catalog is not in lexical order ({next} follows {last}), which the walk needs to merge it \
                 with the pins"
            )));
        }
        Ok(Some(next))
    }

    fn take(&mut self) -> Option<Repository> {
        let next = self.page.pop_front()?;
        self.last = Some(next.clone());
        Some(next)
    }
}

impl<'a> Repos<'a> {
    /// Only `repository`.
    pub fn one(app: &'a App, repository: Repository) -> Self {
        Self {
            app,
            source: Source::One(Some(repository)),
        }
    }

    /// The catalog's repositories after `after` (all when `None`).
    pub fn catalog(app: &'a App, after: Option<&Repository>) -> Self {
        Self {
            app,
            source: Source::Catalog(Catalog {
                pages: app.upstream.catalog_pages(after),
                page: VecDeque::new(),
                done: false,
                last: None,
                ordered: false,
            }),
        }
    }

    /// The catalog's repositories and the store's, merged, after `after`.
    pub fn catalog_and_store(app: &'a App, after: Option<&Repository>) -> Self {
        Self {
            app,
            source: Source::Union {
                catalog: Catalog {
                    pages: app.upstream.catalog_pages(after),
                    page: VecDeque::new(),
                    done: false,
                    last: after.cloned(),
                    ordered: true,
                },
                store: None,
                store_after: after.cloned(),
            },
        }
    }

    /// The first catalog page is read now, so an upstream that refuses tagpin's
    /// credentials is an error before any answer is streamed.
    pub async fn open(&mut self) -> Result<(), ProxyError> {
        match &mut self.source {
            Source::One(_) => {}
            Source::Catalog(c) | Source::Union { catalog: c, .. } => {
                c.peek().await?;
            }
        }
        Ok(())
    }

    /// The next repository, or `None` past the last.
    pub async fn next(&mut self) -> Result<Option<Listed>, ProxyError> {
        let app = self.app;
        match &mut self.source {
            Source::One(r) => Ok(r.take().map(|repository| Listed {
                repository,
                in_catalog: true,
                in_store: true,
            })),
            Source::Catalog(c) => {
                c.peek().await?;
                Ok(c.take().map(|repository| Listed {
                    repository,
                    in_catalog: true,
                    in_store: false,
                }))
            }
            Source::Union {
                catalog,
                store,
                store_after,
            } => {
                if store.is_none() {
                    *store = Some(next_in_store(app, store_after.as_ref()).await?);
                }
                let from_store = store.clone().flatten();
                let from_catalog = catalog.peek().await?.cloned();
                let (in_catalog, in_store) = match pick(from_catalog.as_ref(), from_store.as_ref()) {
                    None => return Ok(None),
                    Some(sides) => sides,
                };
                let repository = if in_catalog {
                    catalog.take().expect("peeked")
                } else {
                    from_store.clone().expect("picked")
                };
                if in_store {
                    *store = None;
                    *store_after = Some(repository.clone());
                }
                Ok(Some(Listed {
                    repository,
                    in_catalog,
                    in_store,
                }))
            }
        }
    }
}

/// Which side the next repository of a merge comes from: `(catalog, store)`.
fn pick(catalog: Option<&Repository>, store: Option<&Repository>) -> Option<(bool, bool)> {
    match (catalog, store) {
        (None, None) => None,
        (Some(_), None) => Some((true, false)),
        (None, Some(_)) => Some((false, true)),
        (Some(c), Some(s)) => Some(match c.cmp(s) {
            Ordering::Less => (true, false),
            Ordering::Equal => (true, true),
            Ordering::Greater => (false, true),
        }),
    }
}

/// The first repository after `after` that the store holds pins or claims in.
async fn next_in_store(app: &App, after: Option<&Repository>) -> Result<Option<Repository>, ProxyError> {
    // Past every tag of `after`: the greatest tag the grammar allows sorts last.
    let cursor = after.map(|r| (r.clone(), Tag::greatest()));
    let first = app.store_call(move |s| s.list(None, cursor.as_ref(), 1)).await?;
    Ok(first.into_iter().next().map(|(r, _, _)| r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_takes_the_smaller_name_and_both_sides_of_an_equal_one() {
        let r = |s: &str| Repository::parse(s).unwrap();
        assert_eq!(pick(None, None), None);
        assert_eq!(pick(Some(&r("a")), None), Some((true, false)));
        assert_eq!(pick(None, Some(&r("a"))), Some((false, true)));
        assert_eq!(pick(Some(&r("a")), Some(&r("b"))), Some((true, false)));
        assert_eq!(pick(Some(&r("b")), Some(&r("a"))), Some((false, true)));
        assert_eq!(pick(Some(&r("a/b")), Some(&r("a/b"))), Some((true, true)));
        // Byte order: "a-b" < "a/b" < "a0".
        assert_eq!(pick(Some(&r("a/b")), Some(&r("a-b"))), Some((false, true)));
        assert_eq!(pick(Some(&r("a/b")), Some(&r("a0"))), Some((true, false)));
    }
}

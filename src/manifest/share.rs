//! Each client address's share of the manifest memory budget: without it, one address
//! that opens many bodies and stalls them holds the whole budget and every other
//! client's push is refused until those bodies time out.
//!
//! A client is its connecting address: tagpin never trusts `X-Forwarded-For`, which the
//! client writes itself. An IPv6 client counts by its /64, which one host or network is
//! usually given whole; counting single IPv6 addresses would hand it 2^64 shares.
//!
//! A share is a count of bytes held, not a first-come first-served queue: a large body
//! waiting for room must not hold up its address's small bodies (the budget's small
//! reserve exists for them, and behind a load balancer every client has one address).
//! A body that does not fit waits until one of its address's bodies gives bytes back;
//! the budget's wait bounds how long. The entry of an address lives while any body of
//! it does, so the map holds at most one entry per body being read or held, never one
//! per address ever seen.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Whose share a body counts against: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        // `::ffff:a.b.c.d` (a dual-stack listener's IPv4 client) is that IPv4 client.
        match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => Self(v4),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Self(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
            }
        }
    }
}

/// The shares of every address with a body in flight.
#[derive(Debug)]
pub struct Shares {
    per_client: usize,
    clients: Mutex<HashMap<ClientKey, Client>>,
}

#[derive(Debug)]
struct Client {
    /// Bytes granted to this address's bodies.
    held: usize,
    /// The [`Share`]s of this address alive now; the entry goes when the last does.
    users: usize,
    /// Woken whenever this address's bodies give bytes back.
    freed: Arc<Notify>,
}

impl Shares {
    pub fn new(per_client: usize) -> Self {
        Self {
            per_client,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Addresses with a body in flight.
    pub fn clients(&self) -> usize {
        self.lock().len()
    }

    /// A handle on `client`'s share, for one body.
    pub fn of(self: &Arc<Self>, client: IpAddr) -> Share {
        let key = ClientKey::from(client);
        let freed = {
            let mut clients = self.lock();
            let entry = clients.entry(key).or_insert_with(|| Client {
                held: 0,
                users: 0,
                freed: Arc::new(Notify::new()),
            });
            entry.users += 1;
            Arc::clone(&entry.freed)
        };
        Share {
            shares: Arc::clone(self),
            key,
            freed,
            granted: 0,
        }
    }

    fn try_take(&self, key: ClientKey, n: usize) -> bool {
        let mut clients = self.lock();
        // A share's entry lives as long as the share; a missing one grants nothing.
        let Some(c) = clients.get_mut(&key) else { return false };
        let fits = c.held.checked_add(n).is_some_and(|total| total <= self.per_client);
        if fits {
            c.held += n;
        }
        fits
    }

    /// Return `n` bytes of `key`'s share and, if `leaving`, one of its users.
    fn give_back(&self, key: ClientKey, n: usize, leaving: bool) {
        let mut clients = self.lock();
        if let Entry::Occupied(mut e) = clients.entry(key) {
            let c = e.get_mut();
            c.held -= n;
            c.users -= usize::from(leaving);
            if c.users == 0 {
                e.remove();
            } else if n > 0 {
                c.freed.notify_waiters();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClientKey, Client>> {
        // Nothing panics while the lock is held; a poisoned map is still consistent.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One body's part of its address's share. Dropping it returns the bytes to the share
/// and, if no other body of the address is in flight, forgets the address.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
    key: ClientKey,
    freed: Arc<Notify>,
    granted: usize,
}

impl Share {
    /// Wait (without limit: the caller bounds it) until `n` more bytes fit in the share,
    /// and take them. Cancel-safe: nothing is taken until it returns.
    pub async fn take(&self, n: usize) -> Taken {
        loop {
            // Registered before the check, so bytes freed in between still wake it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.shares.try_take(self.key, n) {
                return Taken {
                    shares: Arc::clone(&self.shares),
                    key: self.key,
                    bytes: n,
                };
            }
            freed.await;
        }
    }

    /// Keep bytes taken by [`Share::take`] until this share is dropped.
    pub fn keep(&mut self, mut taken: Taken) {
        self.granted += std::mem::take(&mut taken.bytes);
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.shares.give_back(self.key, self.granted, true);
    }
}

/// Bytes taken from a share and not yet kept: they go back if dropped, e.g. when the
/// budget itself had no room for them.
#[derive(Debug)]
pub struct Taken {
    shares: Arc<Shares>,
    key: ClientKey,
    bytes: usize,
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.shares.give_back(self.key, self.bytes, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClientKey {
        ClientKey::from(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn an_ipv4_client_is_its_address_and_an_ipv6_client_its_64() {
        assert_eq!(key("10.0.0.1"), key("::ffff:10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }
}

//! The RCAR session table: bounded, with expiry, and not starvable by a flood of `/auth`.
//!
//! Two classes of sessions, each with its own cap:
//! * **pending**: created by `/auth`, holding only a challenge (nonce). Anyone can
//!   create them, so when the class is full the *oldest* pending session is evicted to
//!   make room: a new client is never refused. An honest client goes from `/auth` to
//!   `/attest` in milliseconds, so it loses its challenge only if `max_pending` newer
//!   challenges are issued in that time.
//! * **attested**: a session whose evidence was accepted (it holds the claims and the
//!   TEE key). A `/auth` flood cannot touch them; when this class is full (only clients
//!   with accepted evidence can fill it) the oldest attested session is evicted.
//!
//! Every session expires `timeout` after it entered its class. Insert, lookup, expiry
//! and eviction are O(log n): each class is a `BTreeMap` ordered by (deadline, sequence
//! number) beside one `HashMap` from session id; expired sessions are popped from the
//! front of the ordered maps, never found by a scan.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Order key: deadline first, then a sequence number that makes keys unique.
type Key = (Instant, u64);

struct Slot<T> {
    key: Key,
    attested: bool,
    value: T,
}

/// Why a session cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// No such session (never issued, evicted, or expired and already pruned).
    Unknown,
    /// The session's deadline has passed (it is removed now).
    Expired,
}

/// What the table holds now (for tests and figures).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Challenge-only sessions.
    pub pending: usize,
    /// Sessions that attested.
    pub attested: usize,
    /// Sessions evicted (not expired) to make room since the table was created.
    pub evicted: u64,
}

/// The session table (see the module documentation).
pub(crate) struct SessionTable<T> {
    timeout: Duration,
    max_pending: usize,
    max_attested: usize,
    next_seq: u64,
    evicted: u64,
    slots: HashMap<String, Slot<T>>,
    pending: BTreeMap<Key, String>,
    attested: BTreeMap<Key, String>,
}

impl<T> SessionTable<T> {
    /// A table whose sessions live `timeout`, with at most `max_pending` challenge-only
    /// and `max_attested` attested sessions (each at least 1).
    pub(crate) fn new(timeout: Duration, max_pending: usize, max_attested: usize) -> Self {
        Self {
            timeout,
            max_pending: max_pending.max(1),
            max_attested: max_attested.max(1),
            next_seq: 0,
            evicted: 0,
            slots: HashMap::new(),
            pending: BTreeMap::new(),
            attested: BTreeMap::new(),
        }
    }

    /// Current sizes and the eviction count.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            pending: self.pending.len(),
            attested: self.attested.len(),
            evicted: self.evicted,
        }
    }

    fn key(&mut self, now: Instant) -> Key {
        self.next_seq += 1;
        (now + self.timeout, self.next_seq)
    }

    /// Drops every session whose deadline is at or before `now` (from the front of the
    /// ordered maps only).
    pub(crate) fn expire(&mut self, now: Instant) {
        for attested in [false, true] {
            loop {
                let class = if attested {
                    &mut self.attested
                } else {
                    &mut self.pending
                };
                match class.first_key_value() {
                    Some((&(deadline, _), _)) if deadline <= now => {}
                    _ => break,
                }
                if let Some((_, id)) = class.pop_first() {
                    self.slots.remove(&id);
                }
            }
        }
    }

    /// Removes the session with the earliest deadline of one class.
    fn evict_oldest(&mut self, attested: bool) {
        let class = if attested {
            &mut self.attested
        } else {
            &mut self.pending
        };
        if let Some((_, id)) = class.pop_first() {
            self.slots.remove(&id);
            self.evicted += 1;
        }
    }

    /// Adds a challenge-only session, evicting the oldest pending one when that class
    /// is full. An existing session with the same id is replaced.
    pub(crate) fn insert_pending(&mut self, id: String, value: T, now: Instant) {
        self.expire(now);
        self.remove(&id);
        while self.pending.len() >= self.max_pending {
            self.evict_oldest(false);
        }
        let key = self.key(now);
        self.pending.insert(key, id.clone());
        self.slots.insert(
            id,
            Slot {
                key,
                attested: false,
                value,
            },
        );
    }

    /// Stores `value` as the attested session `id` with a fresh deadline, moving it out
    /// of the pending class (or adding it, if it was evicted meanwhile). Evicts the
    /// oldest attested session when that class is full.
    pub(crate) fn insert_attested(&mut self, id: String, value: T, now: Instant) {
        self.expire(now);
        self.remove(&id);
        while self.attested.len() >= self.max_attested {
            self.evict_oldest(true);
        }
        let key = self.key(now);
        self.attested.insert(key, id.clone());
        self.slots.insert(
            id,
            Slot {
                key,
                attested: true,
                value,
            },
        );
    }

    /// The live session `id`. An expired one is removed and reported as such.
    pub(crate) fn get_mut(&mut self, id: &str, now: Instant) -> Result<&mut T, Lookup> {
        let expired = match self.slots.get(id) {
            None => return Err(Lookup::Unknown),
            Some(s) => s.key.0 <= now,
        };
        if expired {
            self.remove(id);
            self.expire(now);
            return Err(Lookup::Expired);
        }
        self.slots
            .get_mut(id)
            .map(|s| &mut s.value)
            .ok_or(Lookup::Unknown)
    }

    /// Removes session `id` (either class); its value if it was there.
    pub(crate) fn remove(&mut self, id: &str) -> Option<T> {
        let slot = self.slots.remove(id)?;
        if slot.attested {
            self.attested.remove(&slot.key);
        } else {
            self.pending.remove(&slot.key);
        }
        Some(slot.value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const T: Duration = Duration::from_secs(300);

    fn id(i: usize) -> String {
        format!("s{i}")
    }

    #[test]
    fn pending_cap_evicts_the_oldest_challenges_first() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(T, 3, 3);
        for i in 0..5 {
            t.insert_pending(id(i), i, t0 + Duration::from_millis(i as u64));
        }
        let now = t0 + Duration::from_millis(10);
        assert_eq!(t.counts().pending, 3);
        assert_eq!(t.counts().evicted, 2);
        assert_eq!(t.get_mut("s0", now), Err(Lookup::Unknown));
        assert_eq!(t.get_mut("s1", now), Err(Lookup::Unknown));
        for i in 2..5 {
            assert_eq!(t.get_mut(&id(i), now).copied(), Ok(i));
        }
    }

    #[test]
    fn sessions_expire_after_the_timeout_without_a_scan() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(T, 100, 100);
        t.insert_pending(id(0), 0, t0);
        t.insert_pending(id(1), 1, t0 + Duration::from_secs(10));
        t.insert_attested(id(2), 2, t0);
        // Just before the deadline: alive.
        assert!(t.get_mut("s0", t0 + T - Duration::from_millis(1)).is_ok());
        // At the deadline: expired, and removed.
        assert_eq!(t.get_mut("s0", t0 + T), Err(Lookup::Expired));
        assert_eq!(t.get_mut("s0", t0 + T), Err(Lookup::Unknown));
        // Any insert prunes what has expired (s2), not what has not (s1).
        t.insert_pending(id(3), 3, t0 + T + Duration::from_secs(1));
        assert_eq!(
            t.counts(),
            Counts {
                pending: 2,
                attested: 0,
                evicted: 0
            }
        );
        assert!(t.get_mut("s1", t0 + T + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn attested_sessions_survive_an_auth_flood() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(T, 1000, 10);
        t.insert_pending(id(0), 0, t0);
        t.insert_attested(id(0), 100, t0);
        for i in 1..100_000 {
            t.insert_pending(id(i), i, t0 + Duration::from_micros(i as u64));
        }
        let now = t0 + Duration::from_secs(1);
        assert_eq!(t.get_mut("s0", now).copied(), Ok(100));
        let c = t.counts();
        assert_eq!((c.pending, c.attested), (1000, 1));
        assert_eq!(c.evicted, 99_999 - 1000);
        // The newest challenge is alive: a client that just called /auth can attest.
        assert!(t.get_mut(&id(99_999), now).is_ok());
    }

    #[test]
    fn attesting_moves_a_session_and_survives_its_own_eviction() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(T, 2, 2);
        t.insert_pending(id(0), 0, t0);
        t.insert_pending(id(1), 1, t0);
        t.insert_pending(id(2), 2, t0); // evicts s0
        assert_eq!(t.get_mut("s0", t0), Err(Lookup::Unknown));
        // s0's evidence was verified while it was evicted: it is stored as attested.
        t.insert_attested(id(0), 10, t0);
        t.insert_attested(id(1), 11, t0);
        let c = t.counts();
        assert_eq!((c.pending, c.attested), (1, 2));
        // A third attested session evicts the oldest attested one, not a pending one.
        t.insert_attested(id(3), 13, t0 + Duration::from_millis(1));
        assert_eq!(t.get_mut("s0", t0), Err(Lookup::Unknown));
        assert!(t.get_mut("s2", t0).is_ok());
        assert_eq!(t.get_mut("s3", t0).copied(), Ok(13));
        assert_eq!(t.remove("s3"), Some(13));
        assert_eq!(t.remove("s3"), None);
    }

    #[test]
    fn a_full_table_costs_no_scan() {
        // 1M inserts into a table capped at 50k take well under a second in a debug
        // build only if each insert is O(log n); the old table scanned all on each.
        let t0 = Instant::now();
        let mut t = SessionTable::new(T, 50_000, 10);
        let start = Instant::now();
        for i in 0..200_000 {
            t.insert_pending(id(i), (), t0);
        }
        assert_eq!(t.counts().pending, 50_000);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}

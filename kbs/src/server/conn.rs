//! Connection slots: at most `max` connections open at once, and idle connections are
//! the ones that give way.
//!
//! A connection is *idle* from its accept until hyper hands its first request to the
//! handler, and again from each response until the next request (keep-alive). Idle
//! connections are kept in accept/idle order (a `BTreeMap` on a sequence number). When a
//! new connection arrives and every slot is taken, the connection idle longest is told
//! to close (its [`Notify`]) and the new one takes its slot; when no connection is idle
//! (all are inside a request) the new one is closed at once. So half-open connections
//! (no complete header yet) cannot lock honest clients out: they are the oldest idle
//! ones, while an honest client sends its header right after connecting. Hyper's header
//! timeout closes idle connections on its own as well.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

struct Entry {
    /// Position in `idle` while idle.
    idle_seq: Option<u64>,
    kill: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    /// Open connections by id (the id is the sequence number given at admission).
    open: HashMap<u64, Entry>,
    /// Idle connections, oldest first: sequence -> connection id.
    idle: BTreeMap<u64, u64>,
    evicted: u64,
    refused: u64,
}

impl Inner {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// The slot table (see the module documentation).
pub(crate) struct ConnSlots {
    max: usize,
    inner: Mutex<Inner>,
}

/// An admitted connection: releases its slot when dropped.
pub(crate) struct Slot {
    slots: Arc<ConnSlots>,
    id: u64,
    /// Notified when the connection must close to make room.
    pub(crate) kill: Arc<Notify>,
}

impl Slot {
    /// The connection is inside a request: it cannot be evicted.
    pub(crate) fn busy(&self) {
        if let Ok(mut g) = self.slots.inner.lock() {
            if let Some(seq) = g.open.get_mut(&self.id).and_then(|e| e.idle_seq.take()) {
                g.idle.remove(&seq);
            }
        }
    }

    /// The connection finished a request and waits for the next one: evictable, as the
    /// youngest idle connection.
    pub(crate) fn idle(&self) {
        if let Ok(mut g) = self.slots.inner.lock() {
            let seq = g.seq();
            let old = match g.open.get_mut(&self.id) {
                Some(e) => e.idle_seq.replace(seq),
                None => return,
            };
            if let Some(old) = old {
                g.idle.remove(&old);
            }
            g.idle.insert(seq, self.id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.slots.inner.lock() {
            if let Some(e) = g.open.remove(&self.id) {
                if let Some(seq) = e.idle_seq {
                    g.idle.remove(&seq);
                }
            }
        }
    }
}

/// Counters (for tests and figures).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConnCounts {
    /// Connections holding a slot.
    pub open: usize,
    /// Of which idle.
    pub idle: usize,
    /// Idle connections closed to make room.
    pub evicted: u64,
    /// New connections closed because every slot was busy.
    pub refused: u64,
}

impl ConnSlots {
    /// Room for `max` connections (at least 1).
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Admits a new (idle) connection, evicting the connection idle longest when full;
    /// `None` when every slot is inside a request.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut g = self.inner.lock().ok()?;
        if g.open.len() >= self.max {
            // The evicted connection leaves `open` now; its task closes it when notified.
            match g.idle.pop_first() {
                Some((_, victim)) => {
                    if let Some(e) = g.open.remove(&victim) {
                        e.kill.notify_one();
                    }
                    g.evicted += 1;
                }
                None => {
                    g.refused += 1;
                    return None;
                }
            }
        }
        let id = g.seq();
        let kill = Arc::new(Notify::new());
        g.open.insert(
            id,
            Entry {
                idle_seq: Some(id),
                kill: kill.clone(),
            },
        );
        g.idle.insert(id, id);
        Some(Slot {
            slots: self.clone(),
            id,
            kill,
        })
    }

    /// Current counters.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> ConnCounts {
        match self.inner.lock() {
            Ok(g) => ConnCounts {
                open: g.open.len(),
                idle: g.idle.len(),
                evicted: g.evicted,
                refused: g.refused,
            },
            Err(_) => ConnCounts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::time::Duration;

    use super::*;

    async fn killed(s: &Slot) -> bool {
        tokio::time::timeout(Duration::from_millis(10), s.kill.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn full_table_evicts_the_oldest_idle_connection() {
        let slots = ConnSlots::new(3);
        let a = slots.admit().unwrap();
        let b = slots.admit().unwrap();
        let c = slots.admit().unwrap();
        a.busy(); // inside a request: never evicted
        let d = slots.admit().unwrap(); // evicts b (oldest idle)
        assert!(killed(&b).await);
        assert!(!killed(&a).await && !killed(&c).await);
        b.idle(); // a late call from the evicted connection changes nothing
        assert_eq!(
            slots.counts(),
            ConnCounts {
                open: 3,
                idle: 2,
                evicted: 1,
                refused: 0
            }
        );
        // c finished a request after d arrived: d is now the oldest idle.
        c.busy();
        c.idle();
        let _e = slots.admit().unwrap();
        assert!(killed(&d).await);
        assert!(!killed(&c).await);
        drop(a);
        assert_eq!(slots.counts().open, 2);
    }

    #[tokio::test]
    async fn all_busy_refuses_new_connections_and_drop_frees_a_slot() {
        let slots = ConnSlots::new(2);
        let a = slots.admit().unwrap();
        let b = slots.admit().unwrap();
        a.busy();
        b.busy();
        assert!(slots.admit().is_none());
        assert_eq!(slots.counts().refused, 1);
        drop(b);
        let c = slots.admit().unwrap();
        assert!(!killed(&a).await && !killed(&c).await);
        assert_eq!(slots.counts().open, 2);
    }

    #[tokio::test]
    async fn a_flood_of_half_open_connections_leaves_a_fresh_one_alone() {
        let slots = ConnSlots::new(100);
        let mut flood: Vec<Slot> = (0..100).map(|_| slots.admit().unwrap()).collect();
        let honest = slots.admit().unwrap();
        honest.busy();
        for _ in 0..10_000 {
            flood.push(slots.admit().unwrap());
        }
        assert!(!killed(&honest).await);
        let c = slots.counts();
        assert_eq!((c.open, c.evicted), (100, 10_001));
    }
}

//! Live stock in process: the figures (available, sold) of every product this instance has
//! seen, kept current by the stock gate's own scripts. Each script that changes a
//! product's figures publishes them with a version on `<prefix>events:live`
//! (`lua/live.lua`); every instance applies each message to its map, so a product nobody
//! is buying never costs a Redis round trip, and the one being bought is read from memory
//! too, a message behind Redis at most.
//!
//! A read that misses the map asks Redis once and offers what it read with the version it
//! carries: the newer of a read and a message wins, whichever arrives first. The map is
//! trusted only while the subscription is up: when it drops (messages may be lost), the
//! map is emptied and reads ask Redis until the subscription is back, then start again
//! from empty. A read that began before such a reset does not write into the map after it
//! (the epoch changed).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        RwLock,
    },
};

use tokio::sync::broadcast;

use super::domain::Live;

/// What changed, for whoever shows the figures (the catalog's rendered pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveChange {
    /// One product's figures.
    Product(i64),
    /// Possibly every product's (the feed was interrupted or came back).
    All,
}

/// A product's figures as this instance knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    live: Live,
    /// The version stamped by the script that last changed them; 0 for "no counter"
    /// (any counter is newer).
    version: u64,
}

pub struct LiveFigures {
    entries: RwLock<HashMap<i64, Entry>>,
    /// Bumped by every reset: a read that started before one may not write into the map.
    epoch: AtomicU64,
    /// Whether the feed is subscribed (only then is the map read or filled).
    up: AtomicBool,
    changes: broadcast::Sender<LiveChange>,
}

/// Changes buffered for a slow listener before it is told to drop everything.
const CHANGES_BUFFER: usize = 4096;

impl Default for LiveFigures {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            epoch: AtomicU64::new(0),
            up: AtomicBool::new(false),
            changes: broadcast::channel(CHANGES_BUFFER).0,
        }
    }
}

impl LiveFigures {
    /// The figures in memory of each product (one lock for all), when the feed is up and
    /// the product has been seen.
    pub fn get_many(&self, product_ids: &[i64]) -> Vec<Option<Live>> {
        let entries = match self.entries.read() {
            Ok(entries) if self.up.load(Ordering::Acquire) => entries,
            _ => return vec![None; product_ids.len()],
        };
        product_ids
            .iter()
            .map(|id| entries.get(id).map(|e| e.live))
            .collect()
    }

    /// [`Self::get_many`] of one product.
    pub fn get(&self, product_id: i64) -> Option<Live> {
        self.get_many(&[product_id]).pop().flatten()
    }

    /// The epoch to hand back with what a read is about to fetch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// What a read fetched (`HMGET avail sold v`), kept unless something newer is known or
    /// the map was reset since the read began.
    pub fn offer(&self, product_id: i64, live: Live, version: u64, epoch: u64) {
        if !self.up.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        // Checked under the lock that a reset takes too.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        keep_newer(&mut entries, product_id, Entry { live, version });
    }

    /// A message of the feed: the product's figures after a script changed them.
    pub fn apply(&self, product_id: i64, avail: i64, sold: i64, version: u64) {
        if let Ok(mut entries) = self.entries.write() {
            let live = Live::Counter {
                avail: avail.max(0),
                sold,
            };
            keep_newer(&mut entries, product_id, Entry { live, version });
        }
        let _ = self.changes.send(LiveChange::Product(product_id));
    }

    /// Forgets everything; `up` says whether the feed is subscribed from now on.
    pub fn reset(&self, up: bool) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.up.store(up, Ordering::Release);
        }
        let _ = self.changes.send(LiveChange::All);
    }

    /// Products whose figures changed, from now on.
    pub fn changes(&self) -> broadcast::Receiver<LiveChange> {
        self.changes.subscribe()
    }

    /// How many products are in memory.
    pub fn products(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }
}

fn keep_newer(entries: &mut HashMap<i64, Entry>, product_id: i64, entry: Entry) {
    match entries.get(&product_id) {
        Some(known) if known.version > entry.version => {}
        _ => {
            entries.insert(product_id, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(avail: i64, sold: i64) -> Live {
        Live::Counter { avail, sold }
    }

    #[test]
    fn nothing_is_trusted_before_the_feed_is_up() {
        let live = LiveFigures::default();
        live.offer(1, counter(5, 0), 10, live.epoch());
        assert_eq!(live.get(1), None);
        live.reset(true);
        live.offer(1, counter(5, 0), 10, live.epoch());
        assert_eq!(live.get(1), Some(counter(5, 0)));
    }

    #[test]
    fn the_newer_of_a_read_and_a_message_wins_whichever_comes_first() {
        let live = LiveFigures::default();
        live.reset(true);
        let epoch = live.epoch();
        // The message of a later change arrives before the read that saw the earlier one.
        live.apply(1, 4, 1, 20);
        live.offer(1, counter(5, 0), 10, epoch);
        assert_eq!(live.get(1), Some(counter(4, 1)));
        // A read newer than what is known replaces it.
        live.offer(1, counter(3, 2), 30, epoch);
        assert_eq!(live.get(1), Some(counter(3, 2)));
        // "No counter" never hides a counter, and any counter replaces it.
        live.offer(1, Live::NoCounter, 0, epoch);
        assert_eq!(live.get(1), Some(counter(3, 2)));
        live.offer(2, Live::NoCounter, 0, epoch);
        assert_eq!(live.get(2), Some(Live::NoCounter));
        live.apply(2, 7, 0, 1);
        assert_eq!(live.get(2), Some(counter(7, 0)));
    }

    #[test]
    fn a_reset_drops_everything_and_reads_begun_before_it() {
        let live = LiveFigures::default();
        live.reset(true);
        let before = live.epoch();
        live.apply(1, 4, 1, 20);
        live.reset(false);
        assert_eq!(live.get(1), None, "down: nothing is trusted");
        live.reset(true);
        assert_eq!(live.get(1), None, "back: start from empty");
        live.offer(1, counter(9, 9), 99, before);
        assert_eq!(live.get(1), None, "a read from before the reset");
    }

    #[test]
    fn figures_never_show_below_zero_and_changes_are_announced() {
        let live = LiveFigures::default();
        let mut changes = live.changes();
        live.reset(true);
        live.apply(3, -2, 5, 1);
        assert_eq!(live.get(3), Some(counter(0, 5)));
        assert_eq!(changes.try_recv(), Ok(LiveChange::All));
        assert_eq!(changes.try_recv(), Ok(LiveChange::Product(3)));
    }
}

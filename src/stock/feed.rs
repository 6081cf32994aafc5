//! The live feed: each product's figures read from memory (or Redis once), and the
//! subscription to what the gate's scripts publish, which keeps them current.

use std::{collections::HashMap, time::Duration};

use redis::PushKind;

use super::{
    domain::{self, LiveMessage},
    Live, LiveChange, StockGate,
};

/// The channel of the figures the scripts publish (`lua/live.lua` names it the same).
const LIVE: &str = "events:live";

impl StockGate {
    /// Live `(available, sold)`: from memory when the feed has brought them (or a read
    /// before), else from the product's Redis hash (kept for the next read).
    ///
    /// A read does not build a missing key (a 100,000-product catalog browsed at random
    /// would turn every first view into a locking MySQL read): a product without a counter
    /// has had no change since Redis last lost it, so its row as loaded is current.
    pub async fn live(&self, product_id: i64) -> Live {
        self.live_many(&[product_id])
            .await
            .pop()
            .unwrap_or(Live::Unavailable)
    }

    /// [`Self::live`] of several products: from memory, and one round trip (pipelined on
    /// the connection) for the ones not there.
    pub async fn live_many(&self, ids: &[i64]) -> Vec<Live> {
        if !self.enabled {
            return vec![Live::Unavailable; ids.len()];
        }
        let mut found = self.live.get_many(ids);
        let hits = found.iter().filter(|l| l.is_some()).count();
        count_live("hit", hits);
        count_live("miss", ids.len() - hits);
        if hits == ids.len() {
            return found.into_iter().flatten().collect();
        }
        let epoch = self.live.epoch();
        self.live_asked.fetch_add(
            (ids.len() - hits) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let reads = ids
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(id, _)| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.product_key(*id))
                    .arg("avail")
                    .arg("sold")
                    .arg("v");
                async move { (*id, self.redis.cmd::<domain::Figures>(&cmd).await) }
            });
        let read: HashMap<i64, Live> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .map(|(id, reply)| match reply {
                Ok(figures) => {
                    let (live, version) = Live::read(figures);
                    self.live.offer(id, live, version, epoch);
                    (id, live)
                }
                Err(_) => (id, Live::Unavailable),
            })
            .collect();
        for (slot, id) in found.iter_mut().zip(ids) {
            if slot.is_none() {
                *slot = read.get(id).copied();
            }
        }
        found
            .into_iter()
            .map(|l| l.unwrap_or(Live::Unavailable))
            .collect()
    }

    /// Products whose figures change, as the feed brings them (pages that show them).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<LiveChange> {
        self.live.changes()
    }

    /// What a script of this instance published (appended to its reply after its `base`
    /// own fields), known here at once rather than when the feed brings it back.
    pub(super) fn learn(&self, product_id: i64, reply: &[i64], base: usize) {
        if let Some(m) = LiveMessage::appended(product_id, reply, base) {
            self.live.apply(m.product_id, m.avail, m.sold, m.version);
        }
    }

    /// Applies the scripts' messages to the figures in memory until the process ends,
    /// resubscribing after a lost connection (and starting from empty then: messages may
    /// have been missed). A message with units available also ends a sold-out answer.
    pub fn spawn_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let gate = self.clone();
        let channel = gate.redis.key(LIVE);
        Some(tokio::spawn(async move {
            loop {
                match gate.redis.subscribe(std::slice::from_ref(&channel)).await {
                    Ok(mut pushes) => {
                        while let Some(push) = pushes.recv().await {
                            match push.kind {
                                PushKind::Message => gate.on_message(&push.data).await,
                                PushKind::Subscribe => gate.on_feed(true),
                                PushKind::Disconnection => gate.on_feed(false),
                                _ => {}
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "live stock listener not subscribed"),
                }
                gate.on_feed(false);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }

    async fn on_message(&self, data: &[redis::Value]) {
        let text = data
            .last()
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
        match text.as_deref().and_then(LiveMessage::parse) {
            Some(m) => {
                metrics::counter!("stock_live_messages_total").increment(1);
                self.live.apply(m.product_id, m.avail, m.sold, m.version);
                if m.avail > 0 {
                    self.forget_sold_out(m.product_id).await;
                }
            }
            None => self.on_feed(true),
        }
    }

    /// The feed (re)started or stopped: what was in memory may be stale either way.
    fn on_feed(&self, up: bool) {
        self.live.reset(up);
        if let Some(memory) = &self.sold_out {
            memory.invalidate_all();
        }
        metrics::gauge!("stock_live_feed_up").set(if up { 1.0 } else { 0.0 });
    }

    /// How many products' figures this instance holds in memory, and how many reads of
    /// figures it has had to ask Redis for since start.
    pub fn live_counts(&self) -> (usize, u64) {
        (
            self.live.products(),
            self.live_asked.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

fn count_live(result: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("cache_requests_total", "cache" => "stock", "layer" => "memory", "result" => result)
            .increment(n as u64);
    }
}

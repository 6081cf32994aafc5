//! The stock gate's calls on a request's path: reserve units for a new order, settle a
//! reservation once its order is written, finish reservations whose orders ended.

use std::time::Duration;

use tokio::{sync::broadcast::error::RecvError, time::Instant};

use super::{domain::ReserveReply, Finish, Gate, Hold, Live, LiveChange, StockGate};

/// How often a buyer waiting on reservations in flight asks the gate again when no change
/// of the product's figures woke it first (a settle changes none).
const IN_FLIGHT_RECHECK: Duration = Duration::from_millis(200);

/// Counts a waiting buyer for as long as it waits.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl StockGate {
    /// [`Self::reserve`], except that a refusal caused only by reservations in flight
    /// (their orders being written; MySQL may refuse them and give their units back) is
    /// not the answer yet: the buyer waits, up to `wait`, for the product's figures to show
    /// units or for nothing to be in flight any more, asking the gate again each time. A
    /// buyer who cannot pay (no points, a wrong price) thus cannot make one who can hear
    /// "sold out" while the first one's order is judged. Past `wait` the refusal comes back
    /// still marked in flight (not final).
    pub async fn reserve_when_settled(
        &self,
        product_id: i64,
        user_id: i64,
        quantity: i64,
        hold: &Hold,
        wait: Duration,
    ) -> Gate {
        let gate = self.reserve(product_id, user_id, quantity, hold).await;
        if !matches!(
            gate,
            Gate::Refused {
                in_flight: true,
                ..
            }
        ) || wait.is_zero()
        {
            return gate;
        }
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let deadline = Instant::now() + wait;
        let mut changes = self.changes();
        let mut gate = gate;
        while Instant::now() < deadline {
            let until = (Instant::now() + IN_FLIGHT_RECHECK).min(deadline);
            // Until the product shows units again, the recheck, or the deadline.
            loop {
                match tokio::time::timeout_at(until, changes.recv()).await {
                    Ok(Ok(LiveChange::Product(p))) if p == product_id => {
                        match self.live(product_id).await {
                            Live::Counter { avail, .. } if avail < quantity => continue,
                            _ => break,
                        }
                    }
                    Ok(Ok(LiveChange::Product(_))) => continue,
                    Ok(Ok(LiveChange::All) | Err(RecvError::Lagged(_))) => break,
                    Ok(Err(RecvError::Closed)) | Err(_) => break,
                }
            }
            gate = self.reserve(product_id, user_id, quantity, hold).await;
            if !matches!(
                gate,
                Gate::Refused {
                    in_flight: true,
                    ..
                }
            ) {
                return gate;
            }
        }
        gate
    }

    /// Buyers waiting on reservations in flight right now (tests and operators watch it).
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tries to take `quantity` units for `hold`, ordered by `user_id`.
    pub async fn reserve(&self, product_id: i64, user_id: i64, quantity: i64, hold: &Hold) -> Gate {
        if !self.enabled {
            return Gate::Bypass;
        }
        if let Some(memory) = &self.sold_out {
            if memory.contains_key(&product_id) {
                return outcome(
                    Gate::Refused {
                        available: 0,
                        in_flight: false,
                    },
                    "sold_out_local",
                );
            }
        }
        // The Redis call and the rebuild are boxed: their futures are ~14 KB, and inline
        // they would make every caller's future (the order handler's included) that big,
        // copied at each step even when the sold-out memory answers.
        for attempt in 0..2 {
            let reply = Box::pin(
                self.redis.script::<Vec<i64>>(
                    self.scripts
                        .reserve
                        .key(self.product_key(product_id))
                        .arg(hold.as_str())
                        .arg(quantity)
                        .arg(self.hold_window.as_millis() as u64)
                        .arg(user_id),
                ),
            )
            .await;
            if let Ok(reply) = &reply {
                self.learn(product_id, reply, 2);
            }
            match reply.map(ReserveReply::parse) {
                Ok(ReserveReply::Reserved) => return outcome(Gate::Reserved, "reserved"),
                Ok(ReserveReply::Refused {
                    available,
                    in_flight,
                }) => {
                    // Sold out for good only once no reservation is in flight: units held
                    // by orders being written come back if MySQL refuses those orders.
                    if available <= 0 && in_flight == 0 {
                        if let Some(memory) = &self.sold_out {
                            memory.insert(product_id, ()).await;
                        }
                    }
                    return outcome(
                        Gate::Refused {
                            available: available.max(0),
                            in_flight: in_flight > 0,
                        },
                        if in_flight > 0 {
                            "refused_in_flight"
                        } else {
                            "sold_out"
                        },
                    );
                }
                Ok(ReserveReply::LimitReached { limit, held }) => {
                    return outcome(Gate::LimitReached { limit, held }, "limit_reached");
                }
                Ok(ReserveReply::Missing) => {
                    if attempt == 0 && Box::pin(self.rebuild(product_id)).await.is_ok() {
                        continue;
                    }
                    // The rebuild failed, or the key was lost again right after it (Redis
                    // flushed meanwhile): MySQL decides this one, and the repairs build the
                    // key once Redis and MySQL answer, so a sale that ends on the MySQL
                    // path does not leave the product without a counter.
                    self.mark_dirty(product_id);
                    break;
                }
                _ => break,
            }
        }
        outcome(Gate::Bypass, "mysql_fallback")
    }

    /// After orders committed as PENDING: their reservations (hold, units, user) are now
    /// held by them.
    pub async fn settle(&self, product_id: i64, holds: &[(Hold, i64, i64)]) {
        if !self.enabled || holds.is_empty() {
            return;
        }
        let mut call = self.scripts.settle.key(self.product_key(product_id));
        call.key(self.graves_key(product_id));
        for (hold, quantity, user) in holds {
            call.arg(hold.as_str()).arg(*quantity).arg(*user);
        }
        let reply = self.redis.script::<Vec<i64>>(&call).await;
        if let Ok(reply) = &reply {
            self.learn(product_id, reply, 2);
        }
        match reply.as_deref() {
            // Units taken now that Redis had not reserved: a negative count means Redis
            // had drifted below MySQL; bring the product back from MySQL. No key: MySQL
            // changed without Redis; build it, so every instance hears the new figures.
            Ok([taken, avail, ..]) if *avail < 0 || *taken < 0 => self.mark_dirty(product_id),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(product_id, error = %e, "settling reservations failed; re-syncing the product");
                self.mark_dirty(product_id);
            }
        }
    }

    /// Ends reservations after MySQL committed their end (or refused their orders).
    /// Idempotent per hold.
    pub async fn finish(&self, product_id: i64, holds: &[Hold], how: Finish) {
        if !self.enabled || holds.is_empty() {
            return;
        }
        let mut call = self.scripts.finish.key(self.product_key(product_id));
        // A tombstone only where a settle may still come: never for an order never written.
        let keep = match how {
            Finish::Abandoned => 0,
            _ => self.hold_window.as_millis() as u64,
        };
        call.key(self.graves_key(product_id))
            .arg(how.field())
            .arg(keep);
        for hold in holds {
            call.arg(hold.as_str());
        }
        let reply = self.redis.script::<Vec<i64>>(&call).await;
        if let Ok(reply) = &reply {
            self.learn(product_id, reply, 2);
        }
        match reply.as_deref() {
            // No key: MySQL changed without Redis; build it, so every instance hears the
            // new figures.
            Ok([0, -1, ..]) => self.mark_dirty(product_id),
            Ok([0, ..]) => {}
            Ok(_) => {
                metrics::counter!("stock_reservations_total", "outcome" => how.label())
                    .increment(holds.len() as u64);
                if how.returns_units() {
                    // This instance at once; the others (and this one again) by the feed.
                    self.forget_sold_out(product_id).await;
                }
            }
            Err(e) => {
                tracing::debug!(product_id, error = %e, "finishing reservations failed; re-syncing the product");
                self.mark_ended(product_id, holds);
            }
        }
    }

    pub(super) async fn forget_sold_out(&self, product_id: i64) {
        if let Some(memory) = &self.sold_out {
            memory.invalidate(&product_id).await;
        }
    }
}

fn outcome(gate: Gate, label: &'static str) -> Gate {
    metrics::counter!("stock_reservations_total", "outcome" => label).increment(1);
    gate
}

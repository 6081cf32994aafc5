//! The stock gate's calls on a request's path: reserve units for a new order, settle a
//! reservation once its order is written, finish reservations whose orders ended.

use super::{domain::ReserveReply, Finish, Gate, Hold, StockGate};

impl StockGate {
    /// Tries to take `quantity` units for `hold`, ordered by `user_id`.
    pub async fn reserve(&self, product_id: i64, user_id: i64, quantity: i64, hold: &Hold) -> Gate {
        if !self.enabled {
            return Gate::Bypass;
        }
        if let Some(memory) = &self.sold_out {
            if memory.contains_key(&product_id) {
                return outcome(Gate::Refused { available: 0 }, "sold_out_local");
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
                Ok(ReserveReply::Refused { available }) => {
                    if available <= 0 {
                        if let Some(memory) = &self.sold_out {
                            memory.insert(product_id, ()).await;
                        }
                    }
                    return outcome(
                        Gate::Refused {
                            available: available.max(0),
                        },
                        "sold_out",
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
        call.arg(how.field())
            .arg(self.hold_window.as_millis() as u64);
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

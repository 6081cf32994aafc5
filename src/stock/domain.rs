//! Stock gate vocabulary, free of I/O: hold tokens, what the reservation script answers,
//! where a finished reservation's units go.

/// The token that ties a reservation in Redis to its MySQL order (`orders.hold`).
///
/// It exists before the order row does: Redis reserves under it first, then the order is
/// written with it, so the reconciler can tell a reservation whose order committed from one
/// whose order never did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold(String);

impl Hold {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The token stored with an order.
    pub fn stored(token: String) -> Self {
        Self(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Hold {
    fn default() -> Self {
        Self::new()
    }
}

/// The gate's answer to a new order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Redis took the units; the order must now be written (or the units given back).
    Reserved,
    /// Not enough available: refused without touching MySQL. `in_flight`: other
    /// reservations are still being written, and their units may come back (their orders
    /// refused by MySQL), so the refusal is not final.
    Refused { available: i64, in_flight: bool },
    /// The buyer already holds `held` units and the product allows `limit` per customer:
    /// refused without touching MySQL.
    LimitReached { limit: i64, held: i64 },
    /// Redis cannot decide (off, down, or the key is being rebuilt): MySQL decides alone,
    /// under the product's row lock, exactly as without Redis.
    Bypass,
}

/// The reservation script's reply: `{1, avail}`, `{0, avail}`, `{2, held, limit}` or
/// `{-1, 0}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveReply {
    Reserved,
    Refused { available: i64, in_flight: i64 },
    LimitReached { limit: i64, held: i64 },
    Missing,
}

impl ReserveReply {
    pub fn parse(reply: Vec<i64>) -> Self {
        match reply.as_slice() {
            [1, ..] => Self::Reserved,
            [0, avail, in_flight, ..] => Self::Refused {
                available: *avail,
                in_flight: *in_flight,
            },
            [0, avail] => Self::Refused {
                available: *avail,
                in_flight: 0,
            },
            [2, held, limit, ..] => Self::LimitReached {
                limit: *limit,
                held: *held,
            },
            _ => Self::Missing,
        }
    }
}

/// The hash tag of a product's keys: its stock hash, and anything that must be read with it
/// in one round trip (one Redis Cluster slot).
pub fn product_tag(product_id: i64) -> String {
    format!("{{p{product_id}}}")
}

/// What Redis says about a product's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// The counter: units available (never shown below 0) and sold.
    Counter { avail: i64, sold: i64 },
    /// No reservation since Redis last lost the key: the cached row is current.
    NoCounter,
    /// Redis is off, down or slow: read MySQL.
    Unavailable,
}

/// The reply of `HMGET <product> avail sold v`.
pub type Figures = (Option<i64>, Option<i64>, Option<u64>);

impl Live {
    /// The reply of `HMGET <product> avail sold v`: the figures and their version (0 when
    /// there is no counter).
    pub fn read((avail, sold, version): Figures) -> (Live, u64) {
        match Live::from_counter((avail, sold)) {
            Live::Counter { avail, sold } => (Live::Counter { avail, sold }, version.unwrap_or(0)),
            other => (other, 0),
        }
    }

    /// The reply of `HMGET key avail sold`.
    pub fn from_counter(figures: (Option<i64>, Option<i64>)) -> Self {
        match figures {
            (Some(avail), Some(sold)) => Live::Counter {
                avail: avail.max(0),
                sold,
            },
            _ => Live::NoCounter,
        }
    }
}

/// A message of the live feed: `"<product id> <avail> <sold> <version>"` (`lua/live.lua`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveMessage {
    pub product_id: i64,
    pub avail: i64,
    pub sold: i64,
    pub version: u64,
}

impl LiveMessage {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let message = Self {
            product_id: parts.next()?.parse().ok()?,
            avail: parts.next()?.parse().ok()?,
            sold: parts.next()?.parse().ok()?,
            version: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(message)
    }

    /// The figures a script published, appended to its reply after its own `base` fields.
    pub fn appended(product_id: i64, reply: &[i64], base: usize) -> Option<Self> {
        match reply.get(base..)? {
            [avail, sold, version] => Some(Self {
                product_id,
                avail: *avail,
                sold: *sold,
                version: u64::try_from(*version).ok()?,
            }),
            _ => None,
        }
    }
}

/// Why a reservation ends, which decides where its units go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Cancelled by the buyer: back to available.
    Cancelled,
    /// Expired by the sweeper: back to available.
    Expired,
    /// The order was never written (MySQL refused it): back to available.
    Abandoned,
    /// Paid: the units are sold.
    Paid,
}

impl Finish {
    /// The product-hash field the units move to.
    pub fn field(self) -> &'static str {
        match self {
            Self::Paid => "sold",
            Self::Cancelled | Self::Expired | Self::Abandoned => "avail",
        }
    }

    /// Whether the units become available again (someone else may now buy them).
    pub fn returns_units(self) -> bool {
        self.field() == "avail"
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Cancelled => "released",
            Self::Expired => "expired",
            Self::Abandoned => "abandoned",
            Self::Paid => "confirmed",
        }
    }
}

/// The product id of a product-hash key `<prefix>{p<id>}`.
pub fn product_of_key(prefix: &str, key: &str) -> Option<i64> {
    key.strip_prefix(prefix)?
        .strip_prefix("{p")?
        .strip_suffix('}')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_unique_hex_tokens() {
        let (a, b) = (Hold::new(), Hold::new());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn reserve_replies_map_to_outcomes() {
        assert_eq!(ReserveReply::parse(vec![1, 4]), ReserveReply::Reserved);
        assert_eq!(
            ReserveReply::parse(vec![0, 2, 3]),
            ReserveReply::Refused {
                available: 2,
                in_flight: 3
            }
        );
        assert_eq!(
            ReserveReply::parse(vec![2, 1, 1]),
            ReserveReply::LimitReached { limit: 1, held: 1 }
        );
        assert_eq!(ReserveReply::parse(vec![-1, 0]), ReserveReply::Missing);
        assert_eq!(ReserveReply::parse(vec![]), ReserveReply::Missing);
    }

    #[test]
    fn paid_units_become_sold_the_rest_return() {
        assert_eq!(Finish::Paid.field(), "sold");
        for f in [Finish::Cancelled, Finish::Expired, Finish::Abandoned] {
            assert_eq!(f.field(), "avail");
        }
    }

    #[test]
    fn a_counter_below_zero_reads_as_zero() {
        assert_eq!(
            Live::from_counter((Some(-2), Some(5))),
            Live::Counter { avail: 0, sold: 5 }
        );
        assert_eq!(Live::from_counter((None, None)), Live::NoCounter);
    }

    #[test]
    fn live_messages_and_reads_parse() {
        assert_eq!(
            LiveMessage::parse("42 -1 7 1764451200000001"),
            Some(LiveMessage {
                product_id: 42,
                avail: -1,
                sold: 7,
                version: 1_764_451_200_000_001
            })
        );
        for bad in ["", "42 1 2", "42 1 2 3 4", "x 1 2 3", "42 1 2 -3"] {
            assert_eq!(LiveMessage::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Live::read((Some(3), Some(1), Some(9))),
            (Live::Counter { avail: 3, sold: 1 }, 9)
        );
        assert_eq!(Live::read((None, None, None)), (Live::NoCounter, 0));
        assert_eq!(
            LiveMessage::appended(7, &[1, 4, 4, 2, 99], 2).map(|m| (m.avail, m.sold, m.version)),
            Some((4, 2, 99))
        );
        assert_eq!(LiveMessage::appended(7, &[1, 4], 2), None);
    }

    #[test]
    fn product_keys_parse_back_to_ids() {
        assert_eq!(product_tag(42), "{p42}");
        assert_eq!(product_of_key("c:", "c:{p42}"), Some(42));
        assert_eq!(product_of_key("c:", "c:{sales}:20261124"), None);
        assert_eq!(product_of_key("c:", "d:{p42}"), None);
        assert_eq!(product_of_key("c:", "c:{px}"), None);
    }
}

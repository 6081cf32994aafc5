//! Catalog rules and views, free of I/O: page size, ranking window, what a product may
//! hold, and the shapes the catalog answers with.

use chrono::{Duration, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// Products per listing page (SPEC C1).
pub const PAGE_SIZE: i64 = 20;
/// Length of the best-seller list (SPEC C2).
pub const TOP_N: i64 = 10;
pub const DEFAULT_TOP_DAYS: i64 = 3;
pub const MAX_TOP_DAYS: i64 = 30;
/// Upper bounds that keep `price × quantity` and stock arithmetic far from overflow.
pub const MAX_PRICE: i64 = 1_000_000_000;
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Longest product name (the column is VARCHAR(200)).
pub const MAX_NAME_CHARS: usize = 200;
/// Longest user name (the column is VARCHAR(100)).
pub const MAX_USER_NAME_CHARS: usize = 100;

/// A product in a listing page; `stock` is what can still be ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProductSummary {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
    /// The most units one customer may hold (PENDING and PAID orders); `null`: no limit.
    pub per_user_limit: Option<i64>,
    /// RFC 3339; before it the product cannot be ordered. `null`: on sale already.
    #[serde(with = "crate::http::utc_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sale_starts_at: Option<NaiveDateTime>,
    /// RFC 3339; after it the product cannot be ordered. `null`: no end.
    #[serde(with = "crate::http::utc_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sale_ends_at: Option<NaiveDateTime>,
}

/// A product: `stock` is what can still be ordered, `sold` the all-time units in PAID
/// orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProductDetail {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub sold: i64,
    /// The most units one customer may hold (PENDING and PAID orders); `null`: no limit.
    pub per_user_limit: Option<i64>,
    /// RFC 3339; before it the product cannot be ordered. `null`: on sale already.
    #[serde(with = "crate::http::utc_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sale_starts_at: Option<NaiveDateTime>,
    /// RFC 3339; after it the product cannot be ordered. `null`: no end.
    #[serde(with = "crate::http::utc_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sale_ends_at: Option<NaiveDateTime>,
}

impl ProductDetail {
    pub fn window(&self) -> SaleWindow {
        SaleWindow {
            starts_at: self.sale_starts_at,
            ends_at: self.sale_ends_at,
        }
    }
}

/// The columns of [`ProductDetail`] in `products`, in its field order.
pub const PRODUCT_COLUMNS: &str = "id, name, price, stock - reserved AS stock, sold, \
     per_user_limit, sale_starts_at, sale_ends_at";

/// When a product can be ordered (SPEC F3): from `starts_at` (included) until `ends_at`
/// (excluded); either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaleWindow {
    pub starts_at: Option<NaiveDateTime>,
    pub ends_at: Option<NaiveDateTime>,
}

impl SaleWindow {
    /// A window whose end, when both are given, is after its start.
    pub fn new(
        starts_at: Option<NaiveDateTime>,
        ends_at: Option<NaiveDateTime>,
    ) -> Result<Self, AppError> {
        if let (Some(start), Some(end)) = (starts_at, ends_at) {
            if end <= start {
                return Err(AppError::Validation(
                    "sale_ends_at must be after sale_starts_at".into(),
                ));
            }
        }
        Ok(Self { starts_at, ends_at })
    }

    /// Whether an order may be placed at `now`: `SALE_NOT_STARTED` (with the whole seconds
    /// to the start, at least 1) or `SALE_ENDED` otherwise.
    pub fn check(&self, now: NaiveDateTime) -> Result<(), AppError> {
        if let Some(starts_at) = self.starts_at.filter(|s| now < *s) {
            let millis = (starts_at - now).num_milliseconds();
            return Err(AppError::SaleNotStarted {
                starts_at,
                retry_after_secs: u64::try_from((millis + 999) / 1000).unwrap_or(1).max(1),
            });
        }
        if let Some(ends_at) = self.ends_at.filter(|e| now >= *e) {
            return Err(AppError::SaleEnded { ends_at });
        }
        Ok(())
    }

    /// Whether the sale starts after `now` but no later than `lead` from it.
    pub fn starts_within(&self, now: NaiveDateTime, lead: Duration) -> bool {
        self.starts_at.is_some_and(|s| now < s && s <= now + lead)
    }
}

/// SPEC F2: `held` units (PENDING and PAID) plus `quantity` may not pass `limit`.
pub fn check_limit(limit: Option<i64>, held: i64, quantity: i64) -> Result<(), AppError> {
    match limit {
        Some(limit) if held + quantity > limit => {
            Err(AppError::PurchaseLimitReached { limit, held })
        }
        _ => Ok(()),
    }
}

/// A product's `per_user_limit`: at least 1 unit.
pub fn per_user_limit(value: i64) -> Result<i64, AppError> {
    if !(1..=MAX_STOCK).contains(&value) {
        return Err(AppError::Validation(format!(
            "per_user_limit must be between 1 and {MAX_STOCK}"
        )));
    }
    Ok(value)
}

/// An RFC 3339 time with its offset, as UTC.
pub fn instant(field: &str, value: &str) -> Result<NaiveDateTime, AppError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.naive_utc())
        .map_err(|_| {
            AppError::Validation(format!(
                "{field} must be an RFC 3339 time such as 2026-12-01T10:00:00Z"
            ))
        })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProductPage {
    pub page: i64,
    pub page_size: i64,
    pub total_items: i64,
    pub total_pages: i64,
    pub items: Vec<ProductSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopItem {
    pub rank: i64,
    pub product_id: i64,
    pub name: String,
    pub price: i64,
    pub sold: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopSellers {
    pub days: i64,
    pub items: Vec<TopItem>,
}

/// First UTC day of a ranking window of `days` days ending on `today`.
pub fn window_start(today: NaiveDate, days: i64) -> NaiveDate {
    today - Duration::days(days - 1)
}

/// The days of that window, oldest first.
pub fn window(today: NaiveDate, days: i64) -> Vec<NaiveDate> {
    window_start(today, days)
        .iter_days()
        .take(days as usize)
        .collect()
}

/// A 1-based listing page number.
pub fn page(value: Option<i64>) -> Result<i64, AppError> {
    match value.unwrap_or(1) {
        p if p >= 1 => Ok(p),
        _ => Err(AppError::Validation("page must be 1 or more".into())),
    }
}

/// Number of pages needed for `total_items`.
pub fn total_pages(total_items: i64) -> i64 {
    (total_items + PAGE_SIZE - 1) / PAGE_SIZE
}

/// The ranking window in UTC calendar days, today included.
pub fn top_days(value: Option<i64>) -> Result<i64, AppError> {
    match value.unwrap_or(DEFAULT_TOP_DAYS) {
        d if (1..=MAX_TOP_DAYS).contains(&d) => Ok(d),
        _ => Err(AppError::Validation(format!(
            "days must be between 1 and {MAX_TOP_DAYS}"
        ))),
    }
}

/// A product name: 1 to `MAX_NAME_CHARS` characters once trimmed.
pub fn name(value: &str) -> Result<String, AppError> {
    bounded_name(value, MAX_NAME_CHARS)
}

/// A user name: 1 to `MAX_USER_NAME_CHARS` characters once trimmed.
pub fn user_name(value: &str) -> Result<String, AppError> {
    bounded_name(value, MAX_USER_NAME_CHARS)
}

fn bounded_name(value: &str, max: usize) -> Result<String, AppError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > max || trimmed.chars().any(char::is_control)
    {
        return Err(AppError::Validation(format!(
            "name must have 1 to {max} characters, none of them control characters"
        )));
    }
    Ok(trimmed.to_string())
}

pub fn price(value: i64) -> Result<i64, AppError> {
    if !(0..=MAX_PRICE).contains(&value) {
        return Err(AppError::Validation(format!(
            "price must be between 0 and {MAX_PRICE}"
        )));
    }
    Ok(value)
}

pub fn stock(value: i64) -> Result<i64, AppError> {
    if !(0..=MAX_STOCK).contains(&value) {
        return Err(AppError::Validation(format!(
            "stock must be between 0 and {MAX_STOCK}"
        )));
    }
    Ok(value)
}

/// The best `TOP_N` of `(product_id, sold)` totals: most sold first, ties by lower id.
pub fn rank(mut totals: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    totals.retain(|(_, sold)| *sold > 0);
    totals.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    totals.truncate(TOP_N as usize);
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_at_one() {
        assert_eq!(page(None).unwrap(), 1);
        assert!(page(Some(0)).is_err());
        assert!(page(Some(-3)).is_err());
        assert_eq!(page(Some(i64::MAX)).unwrap(), i64::MAX);
    }

    #[test]
    fn page_count_rounds_up() {
        assert_eq!(total_pages(0), 0);
        assert_eq!(total_pages(20), 1);
        assert_eq!(total_pages(21), 2);
    }

    #[test]
    fn ranking_window_is_one_to_thirty_days() {
        assert_eq!(top_days(None).unwrap(), 3);
        assert!(top_days(Some(0)).is_err());
        assert!(top_days(Some(31)).is_err());
        assert_eq!(top_days(Some(30)).unwrap(), 30);
    }

    #[test]
    fn product_fields_are_bounded() {
        assert!(name("  ").is_err());
        assert_eq!(name(" mug ").unwrap(), "mug");
        assert!(price(-1).is_err());
        assert!(stock(MAX_STOCK + 1).is_err());
    }

    #[test]
    fn names_fit_their_columns() {
        assert!(name(&"n".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(name(&"n".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(user_name(&"é".repeat(MAX_USER_NAME_CHARS)).is_ok());
        assert!(user_name(&"é".repeat(MAX_USER_NAME_CHARS + 1)).is_err());
        assert!(user_name("a\u{0}b").is_err());
    }

    fn at(secs: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(secs, 0)
            .unwrap()
            .naive_utc()
    }

    #[test]
    fn a_sale_window_refuses_before_its_start_and_from_its_end() {
        let w = SaleWindow::new(Some(at(1000)), Some(at(2000))).unwrap();
        match w.check(at(997) + Duration::milliseconds(500)).unwrap_err() {
            AppError::SaleNotStarted {
                starts_at,
                retry_after_secs,
            } => assert_eq!((starts_at, retry_after_secs), (at(1000), 3)),
            other => panic!("{other:?}"),
        }
        match w.check(at(1000) - Duration::milliseconds(1)).unwrap_err() {
            AppError::SaleNotStarted {
                retry_after_secs, ..
            } => assert_eq!(retry_after_secs, 1),
            other => panic!("{other:?}"),
        }
        assert!(w.check(at(1000)).is_ok());
        assert!(w.check(at(1999)).is_ok());
        assert_eq!(w.check(at(2000)).unwrap_err().code().code, "SALE_ENDED");
        assert!(SaleWindow::default().check(at(0)).is_ok());
        assert!(SaleWindow::new(Some(at(2)), Some(at(2))).is_err());
        assert!(SaleWindow::new(None, Some(at(2))).is_ok());
    }

    #[test]
    fn a_sale_starting_within_the_lead_is_upcoming() {
        let w = SaleWindow::new(Some(at(100)), None).unwrap();
        assert!(w.starts_within(at(50), Duration::seconds(60)));
        assert!(!w.starts_within(at(30), Duration::seconds(60)));
        assert!(!w.starts_within(at(100), Duration::seconds(60)));
        assert!(!SaleWindow::default().starts_within(at(0), Duration::seconds(60)));
    }

    #[test]
    fn the_limit_counts_what_is_held() {
        assert!(check_limit(None, 100, 5).is_ok());
        assert!(check_limit(Some(3), 1, 2).is_ok());
        match check_limit(Some(3), 2, 2).unwrap_err() {
            AppError::PurchaseLimitReached { limit, held } => assert_eq!((limit, held), (3, 2)),
            other => panic!("{other:?}"),
        }
        assert!(per_user_limit(0).is_err());
        assert_eq!(per_user_limit(1).unwrap(), 1);
        assert_eq!(
            instant("t", "2026-12-01T11:00:00+01:00").unwrap(),
            instant("t", "2026-12-01T10:00:00Z").unwrap()
        );
        assert!(instant("t", "tomorrow").is_err());
    }

    #[test]
    fn a_window_ends_today() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        assert_eq!(window(today, 1), vec![today]);
        let three = window(today, 3);
        assert_eq!(three.len(), 3);
        assert_eq!(three[0], NaiveDate::from_ymd_opt(2026, 11, 26).unwrap());
    }

    #[test]
    fn ranking_breaks_ties_by_lower_id_and_keeps_ten() {
        let totals: Vec<(i64, i64)> = (1..=15)
            .rev()
            .map(|id| (id, 5))
            .chain([(99, 7), (50, 0)])
            .collect();
        let top = rank(totals);
        assert_eq!(top.len(), 10);
        assert_eq!(top[0], (99, 7));
        assert_eq!(
            top[1..].iter().map(|t| t.0).collect::<Vec<_>>(),
            (1..=9).collect::<Vec<_>>()
        );
    }
}

//! Catalog rules and views, free of I/O: page size, ranking window, what a product may
//! hold, and the shapes the catalog answers with.

use chrono::{Duration, NaiveDate};
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

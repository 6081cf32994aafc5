//! Cursor pagination for newest-first lists: `?limit=&cursor=`, answered with
//! `{"items": [...], "next_cursor": "..." | null}`. The cursor is the last id seen.

use serde::{Deserialize, Serialize};

use crate::error::AppError;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Deserialize)]
pub struct CursorParams {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// A validated request for one page: at most `limit` rows with an id below `before`.
#[derive(Clone, Copy, Debug)]
pub struct CursorQuery {
    pub limit: i64,
    pub before: i64,
}

impl CursorParams {
    pub fn parse(&self) -> Result<CursorQuery, AppError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(AppError::Validation(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        let before = match self.cursor.as_deref() {
            None | Some("") => i64::MAX,
            Some(c) => c.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
                AppError::Validation("cursor is not one this API returned".into())
            })?,
        };
        Ok(CursorQuery { limit, before })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CursorPage<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> CursorPage<T> {
    /// `rows` were fetched with `LIMIT limit + 1`; the extra row only says there is more.
    pub fn from_rows(mut rows: Vec<T>, query: CursorQuery, id: impl Fn(&T) -> i64) -> Self {
        let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more {
            rows.last().map(|r| id(r).to_string())
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors_are_validated() {
        let p = |limit, cursor: Option<&str>| {
            CursorParams {
                limit,
                cursor: cursor.map(String::from),
            }
            .parse()
        };
        assert_eq!(p(None, None).unwrap().limit, DEFAULT_LIMIT);
        assert!(p(Some(0), None).is_err());
        assert!(p(Some(101), None).is_err());
        assert!(p(None, Some("abc")).is_err());
        assert!(p(None, Some("-1")).is_err());
        assert_eq!(p(None, Some("17")).unwrap().before, 17);
    }

    #[test]
    fn next_cursor_only_when_more_rows_exist() {
        let q = CursorQuery {
            limit: 2,
            before: i64::MAX,
        };
        let page = CursorPage::from_rows(vec![5, 4, 3], q, |v| *v);
        assert_eq!(page.items, vec![5, 4]);
        assert_eq!(page.next_cursor.as_deref(), Some("4"));
        let last = CursorPage::from_rows(vec![2], q, |v| *v);
        assert!(last.next_cursor.is_none());
    }
}

//! Demo data: on an empty database, a catalog, users with points to browse and buy, and a
//! few days of paid orders so the best sellers show a ranking at once.

use sqlx::{MySqlPool, QueryBuilder};

use crate::{config::bounded, db, points::domain::PointKind};

pub const DEMO_PRODUCTS: i64 = 1000;
pub const DEMO_USERS: i64 = 100;
pub const DEMO_BALANCE: i64 = 500_000;
const ADJECTIVES: &[&str] = &[
    "Classic", "Compact", "Deluxe", "Eco", "Handmade", "Limited", "Smart", "Vintage",
];
const NOUNS: &[&str] = &[
    "Mug",
    "Backpack",
    "Lamp",
    "Notebook",
    "Headphones",
    "Sneakers",
    "Watch",
    "Kettle",
    "Chair",
    "Scarf",
];

/// How much demo data to seed: `SEED_PRODUCTS` / `SEED_USERS` (1000 / 100; the benchmark
/// seeds 100,000 / 10,000).
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub products: i64,
    pub users: i64,
}

/// The most demo rows `serve --seed-demo` writes of each kind.
const MAX_SEED: i64 = 10_000_000;

impl Size {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        Ok(Self {
            products: bounded(
                &get,
                "SEED_PRODUCTS",
                DEMO_PRODUCTS,
                0..=MAX_SEED,
                "products",
            )?,
            users: bounded(&get, "SEED_USERS", DEMO_USERS, 0..=MAX_SEED, "users")?,
        })
    }
}

/// Seeds products and users when there are none; returns whether it seeded.
pub async fn demo_if_empty(pool: &MySqlPool, size: Size) -> anyhow::Result<bool> {
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(pool)
        .await?;
    let products: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
        .fetch_one(pool)
        .await?;
    if users > 0 || products > 0 {
        return Ok(false);
    }
    let now = db::now();
    let mut tx = pool.begin().await?;
    for chunk in (1..=size.products).collect::<Vec<_>>().chunks(500) {
        let mut q =
            QueryBuilder::new("INSERT INTO products (name, price, stock, created_at, updated_at) ");
        q.push_values(chunk, |mut row, i| {
            let name = format!(
                "{} {} #{i}",
                ADJECTIVES[(*i as usize) % ADJECTIVES.len()],
                NOUNS[(*i as usize) % NOUNS.len()]
            );
            row.push_bind(name)
                .push_bind(100 * (1 + (i * 37) % 200))
                .push_bind(10 + (i * 13) % 500)
                .push_bind(now)
                .push_bind(now);
        });
        q.build().execute(&mut *tx).await?;
    }
    for chunk in (1..=size.users).collect::<Vec<_>>().chunks(1000) {
        let mut q = QueryBuilder::new("INSERT INTO users (name, balance, created_at) ");
        q.push_values(chunk, |mut row, i| {
            row.push_bind(format!("demo-user-{i}"))
                .push_bind(DEMO_BALANCE)
                .push_bind(now);
        });
        q.build().execute(&mut *tx).await?;
    }
    // The opening balances are charges, so the history proves every balance.
    sqlx::query(
        "INSERT INTO point_history (user_id, kind, amount, balance_after, created_at) \
         SELECT id, ?, balance, balance, ? FROM users",
    )
    .bind(PointKind::Charge.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sales(&mut tx, size, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// Days of paid orders the demo starts with, so the best sellers show a ranking.
const SALES_DAYS: i64 = 3;
/// Products sold each of those days.
const SALES_PRODUCTS: i64 = 12;

/// Orders of several products the demo starts with (paid today by the first users).
const DEMO_CARTS: i64 = 3;

/// A few days of paid orders, written as the checkout writes them (order rows, payment,
/// USE history row, stock and sold, the day's sales), so every invariant holds from the
/// start; today also a few orders of three products each.
async fn sales(
    tx: &mut sqlx::MySqlConnection,
    size: Size,
    now: chrono::NaiveDateTime,
) -> anyhow::Result<()> {
    if size.users == 0 {
        return Ok(());
    }
    for day in 0..SALES_DAYS {
        let paid_at = now - chrono::Duration::days(SALES_DAYS - 1 - day);
        for product in 1..=SALES_PRODUCTS.min(size.products) {
            let quantity = 1 + (SALES_PRODUCTS - product + day * 3) % 9;
            let user = 1 + (product * 7 + day * 13) % size.users;
            let hold = format!("demo-{day}-{product}");
            paid_order(tx, user, &[(product, quantity)], paid_at, &hold).await?;
        }
    }
    for cart in 1..=DEMO_CARTS.min(size.users) {
        let lines: Vec<(i64, i64)> = [20, 30, 40]
            .iter()
            .map(|base| (base + cart, 1 + cart % 2))
            .filter(|(product, _)| *product <= size.products)
            .collect();
        if lines.len() > 1 {
            paid_order(tx, cart, &lines, now, &format!("demo-cart-{cart}")).await?;
        }
    }
    Ok(())
}

/// One PAID order of `lines` (product, quantity; ascending product ids) by `user`, unless
/// the stock or the user's balance does not cover it.
async fn paid_order(
    tx: &mut sqlx::MySqlConnection,
    user: i64,
    lines: &[(i64, i64)],
    paid_at: chrono::NaiveDateTime,
    hold: &str,
) -> anyhow::Result<()> {
    let mut priced = Vec::with_capacity(lines.len());
    for (product, quantity) in lines {
        let (price, stock): (i64, i64) =
            sqlx::query_as("SELECT price, stock FROM products WHERE id = ?")
                .bind(product)
                .fetch_one(&mut *tx)
                .await?;
        if stock < *quantity {
            return Ok(());
        }
        priced.push((*product, *quantity, price));
    }
    let total: i64 = priced.iter().map(|(_, q, price)| q * price).sum();
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM users WHERE id = ?")
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
    if balance < total {
        return Ok(());
    }
    let after = balance - total;
    let mut order = 0u64;
    for (i, (product, quantity, price)) in priced.iter().enumerate() {
        let (parent, line_count) = match i {
            0 => (None, priced.len() as i64),
            _ => (Some(order), 0),
        };
        let id = sqlx::query(
            "INSERT INTO orders (user_id, product_id, quantity, unit_price, total_amount, status, \
             created_at, expires_at, paid_at, updated_at, hold, parent_id, line_count) \
             VALUES (?, ?, ?, ?, ?, 'PAID', ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(user)
        .bind(product)
        .bind(quantity)
        .bind(price)
        .bind(quantity * price)
        .bind(paid_at)
        .bind(paid_at)
        .bind(paid_at)
        .bind(paid_at)
        .bind(hold)
        .bind(parent)
        .bind(line_count)
        .execute(&mut *tx)
        .await?
        .last_insert_id();
        if i == 0 {
            order = id;
        }
        sqlx::query("UPDATE products SET stock = stock - ?, sold = sold + ? WHERE id = ?")
            .bind(quantity)
            .bind(quantity)
            .bind(product)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO daily_sales (day, product_id, quantity) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE quantity = quantity + VALUES(quantity)",
        )
        .bind(paid_at.date())
        .bind(product)
        .bind(quantity)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO payments (order_id, user_id, amount, status, balance_after, created_at) \
         VALUES (?, ?, ?, 'COMPLETED', ?, ?)",
    )
    .bind(order)
    .bind(user)
    .bind(total)
    .bind(after)
    .bind(paid_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE users SET balance = ? WHERE id = ?")
        .bind(after)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO point_history (user_id, kind, amount, balance_after, order_id, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(user)
    .bind(PointKind::Use.as_str())
    .bind(total)
    .bind(after)
    .bind(order)
    .bind(paid_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(vars: &[(&str, &str)]) -> anyhow::Result<Size> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Size::from_lookup(|key| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    }

    #[test]
    fn seed_sizes_out_of_range_are_refused_naming_the_variable() {
        for (key, bad) in [
            ("SEED_PRODUCTS", "-1"),
            ("SEED_PRODUCTS", "many"),
            ("SEED_USERS", "10000001"),
        ] {
            let err = size(&[(key, bad)]).expect_err(key);
            assert!(err.to_string().starts_with(key), "{key}={bad}: {err}");
        }
        let s = size(&[("SEED_PRODUCTS", "100000"), ("SEED_USERS", "0")]).unwrap();
        assert_eq!((s.products, s.users), (100_000, 0));
        let s = size(&[]).unwrap();
        assert_eq!((s.products, s.users), (DEMO_PRODUCTS, DEMO_USERS));
    }
}

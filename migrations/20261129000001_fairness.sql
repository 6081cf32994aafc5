-- Fairness (issue 18, SPEC F1–F3).
-- F1: a PENDING order holds its total of the user's points; `held` is their sum, kept in
-- the transaction that places, pays, cancels or expires the order. available = balance - held.
ALTER TABLE users ADD COLUMN held BIGINT NOT NULL DEFAULT 0;
UPDATE users u SET held = (
    SELECT COALESCE(SUM(o.total_amount), 0) FROM orders o
    WHERE o.user_id = u.id AND o.status = 'PENDING'
);
ALTER TABLE users ADD CONSTRAINT chk_users_held CHECK (held >= 0);

-- F2: the most units one user may hold of a product across PENDING and PAID orders;
-- F3: the window in which the product can be ordered. NULL: no limit, no bound.
ALTER TABLE products
    ADD COLUMN per_user_limit BIGINT NULL,
    ADD COLUMN sale_starts_at DATETIME(6) NULL,
    ADD COLUMN sale_ends_at DATETIME(6) NULL;
ALTER TABLE products ADD CONSTRAINT chk_products_limit
    CHECK (per_user_limit IS NULL OR per_user_limit >= 1);
ALTER TABLE products ADD CONSTRAINT chk_products_window
    CHECK (sale_starts_at IS NULL OR sale_ends_at IS NULL OR sale_ends_at > sale_starts_at);

-- The units a user holds of a product (the batch's F2 check: product, status in
-- PENDING/PAID, user in the batch's placers; the gate's rebuild: PAID units per user of a
-- product). It also serves what (product_id, status) served: the product foreign key and
-- the PENDING orders of a product.
CREATE INDEX idx_orders_product_status_user ON orders (product_id, status, user_id);
DROP INDEX idx_orders_product_status ON orders;

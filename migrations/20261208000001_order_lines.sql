-- Orders of several products (issue 25, SPEC L1–L5). A row of `orders` is one line:
-- an order of one product is one row, as before; an order of several products is its
-- first row (the order itself: its id is the order's id, `line_count` its number of
-- lines) and one row per further line whose `parent_id` is that id. Every row carries its
-- product, quantity, unit price, line amount (`total_amount`), status, user and the
-- stock gate's hold token, so all that works per product (the gate's sync, the
-- per-customer limit, the reconciler, the ranking's sums) reads lines exactly as it read
-- orders, and a user's `held` is still the sum of their PENDING rows. The order's total
-- is the sum of its rows; its rows change status together, in one transaction.
ALTER TABLE orders
    ADD COLUMN parent_id BIGINT NULL,
    ADD COLUMN line_count INT NOT NULL DEFAULT 1,
    ADD KEY idx_orders_parent (parent_id, id),
    ADD CONSTRAINT fk_orders_parent FOREIGN KEY (parent_id) REFERENCES orders (id);
ALTER TABLE orders ADD CONSTRAINT chk_orders_line_count CHECK (line_count >= 0);

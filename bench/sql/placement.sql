BEGIN;
SET @u = 1 + (CONNECTION_ID() % {blocks}) * {batch};
SELECT id, balance, held FROM users WHERE id BETWEEN @u AND @u + {batch} - 1 ORDER BY id FOR UPDATE;
SELECT price, stock, reserved, sold, per_user_limit, sale_starts_at, sale_ends_at, UTC_TIMESTAMP(6) FROM products WHERE id = {product} FOR UPDATE;
UPDATE products SET reserved = reserved + {batch}, updated_at = NOW(6) WHERE id = {product};
UPDATE users SET balance = balance, held = held + 1 WHERE id BETWEEN @u AND @u + {batch} - 1;
INSERT INTO orders (user_id, product_id, quantity, unit_price, total_amount, status, created_at, expires_at, updated_at, hold) SELECT id, {product}, 1, 1, 1, 'PENDING', NOW(6), NOW(6) + INTERVAL 1 DAY, NOW(6), CONCAT('bench-', REPLACE(UUID(), '-', '')) FROM users WHERE id BETWEEN @u AND @u + {batch} - 1;
SELECT hold, id FROM orders WHERE id >= LAST_INSERT_ID() AND product_id = {product} LIMIT {batch};
COMMIT;

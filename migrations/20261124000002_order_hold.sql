-- The stock gate's reservation token of each order (issue 3): Redis holds a product's
-- PENDING reservations under this token, and the reconciler matches them to MySQL by it.
-- Orders placed before the gate existed get a token derived from their id.
ALTER TABLE orders ADD COLUMN hold VARCHAR(40) NOT NULL DEFAULT '';
UPDATE orders SET hold = CONCAT('o', id) WHERE hold = '';

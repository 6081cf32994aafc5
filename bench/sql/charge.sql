BEGIN;
SET @u = 1 + CONNECTION_ID() % {users};
UPDATE users SET balance = balance + 1 WHERE id = @u AND balance <= 1000000 - 1;
SELECT balance FROM users WHERE id = @u;
INSERT INTO point_history (user_id, kind, amount, balance_after, order_id, created_at) VALUES (@u, 'CHARGE', 1, 0, NULL, NOW(6));
COMMIT;

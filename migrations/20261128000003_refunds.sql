-- Refunds (issue 14): a PAID order can become REFUNDED; its payment's status follows.
ALTER TABLE orders DROP CONSTRAINT chk_orders_status;
ALTER TABLE orders ADD CONSTRAINT chk_orders_status
    CHECK (status IN ('PENDING', 'PAID', 'CANCELLED', 'EXPIRED', 'REFUNDED'));
ALTER TABLE payments ADD CONSTRAINT chk_payments_status CHECK (status IN ('COMPLETED', 'REFUNDED'));
-- A user's payments, newest first (GET /v1/users/{user_id}/payments).
CREATE INDEX idx_payments_user_id ON payments (user_id, id);
-- The example consumer marks refunded orders (order.refunded).
ALTER TABLE platform_paid_orders ADD COLUMN refunded_at DATETIME(6) NULL;

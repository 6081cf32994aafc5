-- The example consumer's store (issue 5): the data platform's view of paid orders, and the
-- event ids it has applied, so a redelivered event changes nothing.
CREATE TABLE platform_events_seen (
    event_id      VARCHAR(100) NOT NULL,
    deliveries    INT          NOT NULL,
    first_seen_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (event_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE platform_paid_orders (
    order_id   BIGINT       NOT NULL,
    event_id   VARCHAR(100) NOT NULL,
    user_id    BIGINT       NOT NULL,
    product_id BIGINT       NOT NULL,
    quantity   BIGINT       NOT NULL,
    amount     BIGINT       NOT NULL,
    paid_at    DATETIME(6)  NOT NULL,
    applied_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (order_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Core schema: MySQL is the source of truth for points, catalog, orders and payments.
-- Runs unchanged on MySQL 8 and MariaDB 10.11 (InnoDB, utf8mb4).

CREATE TABLE users (
    id         BIGINT       NOT NULL AUTO_INCREMENT,
    name       VARCHAR(100) NOT NULL,
    balance    BIGINT       NOT NULL DEFAULT 0,
    created_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT chk_users_balance CHECK (balance BETWEEN 0 AND 1000000)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Every balance change, so balance = sum(CHARGE) - sum(USE) + sum(REFUND) can be proven.
CREATE TABLE point_history (
    id            BIGINT      NOT NULL AUTO_INCREMENT,
    user_id       BIGINT      NOT NULL,
    kind          VARCHAR(8)  NOT NULL,
    amount        BIGINT      NOT NULL,
    balance_after BIGINT      NOT NULL,
    order_id      BIGINT      NULL,
    created_at    DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY idx_point_history_user_id (user_id, id),
    CONSTRAINT fk_point_history_user FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT chk_point_history_kind CHECK (kind IN ('CHARGE', 'USE', 'REFUND')),
    CONSTRAINT chk_point_history_amount CHECK (amount > 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- stock:    units not yet sold (reserved ones included)
-- reserved: units held by PENDING orders; available to order = stock - reserved
-- sold:     all-time units in PAID orders
CREATE TABLE products (
    id         BIGINT       NOT NULL AUTO_INCREMENT,
    name       VARCHAR(200) NOT NULL,
    price      BIGINT       NOT NULL,
    stock      BIGINT       NOT NULL,
    reserved   BIGINT       NOT NULL DEFAULT 0,
    sold       BIGINT       NOT NULL DEFAULT 0,
    created_at DATETIME(6)  NOT NULL,
    updated_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT chk_products_price CHECK (price >= 0),
    CONSTRAINT chk_products_reserved CHECK (reserved >= 0 AND reserved <= stock),
    CONSTRAINT chk_products_sold CHECK (sold >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE orders (
    id           BIGINT      NOT NULL AUTO_INCREMENT,
    user_id      BIGINT      NOT NULL,
    product_id   BIGINT      NOT NULL,
    quantity     BIGINT      NOT NULL,
    unit_price   BIGINT      NOT NULL,
    total_amount BIGINT      NOT NULL,
    status       VARCHAR(16) NOT NULL,
    created_at   DATETIME(6) NOT NULL,
    expires_at   DATETIME(6) NOT NULL,
    paid_at      DATETIME(6) NULL,
    updated_at   DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY idx_orders_user_id (user_id, id),
    KEY idx_orders_status_expires (status, expires_at),
    KEY idx_orders_product_status (product_id, status),
    CONSTRAINT fk_orders_user FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT fk_orders_product FOREIGN KEY (product_id) REFERENCES products (id),
    CONSTRAINT chk_orders_status CHECK (status IN ('PENDING', 'PAID', 'CANCELLED', 'EXPIRED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE payments (
    id            BIGINT      NOT NULL AUTO_INCREMENT,
    order_id      BIGINT      NOT NULL,
    user_id       BIGINT      NOT NULL,
    amount        BIGINT      NOT NULL,
    status        VARCHAR(16) NOT NULL,
    balance_after BIGINT      NOT NULL,
    created_at    DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_payments_order (order_id),
    CONSTRAINT fk_payments_order FOREIGN KEY (order_id) REFERENCES orders (id),
    CONSTRAINT fk_payments_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Units sold per product per UTC day, written in the payment transaction: the ranking source.
CREATE TABLE daily_sales (
    day        DATE   NOT NULL,
    product_id BIGINT NOT NULL,
    quantity   BIGINT NOT NULL,
    PRIMARY KEY (day, product_id),
    CONSTRAINT fk_daily_sales_product FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per (caller scope, Idempotency-Key). DONE rows hold the response to replay.
CREATE TABLE idempotency_keys (
    scope           VARCHAR(96)  NOT NULL,
    idem_key        VARCHAR(128) NOT NULL,
    request_hash    CHAR(64)     NOT NULL,
    status          VARCHAR(16)  NOT NULL,
    response_status SMALLINT     NULL,
    response_body   MEDIUMTEXT   NULL,
    locked_until    DATETIME(6)  NOT NULL,
    created_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (scope, idem_key),
    KEY idx_idempotency_created (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Transactional outbox: events recorded with the change that caused them, published later.
CREATE TABLE outbox (
    id           BIGINT      NOT NULL AUTO_INCREMENT,
    aggregate_id BIGINT      NOT NULL,
    event_type   VARCHAR(64) NOT NULL,
    payload      JSON        NOT NULL,
    created_at   DATETIME(6) NOT NULL,
    published_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    KEY idx_outbox_unpublished (published_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

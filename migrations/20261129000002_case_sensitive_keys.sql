-- Idempotency keys are compared byte for byte (issue 21): "Key-1" and "key-1" are two keys.
-- Keys are visible ASCII (checked when parsed), so an ASCII binary collation holds them all.
ALTER TABLE idempotency_keys
    MODIFY idem_key VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL;

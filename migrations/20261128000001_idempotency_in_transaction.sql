-- Idempotency claims now live inside the business transaction (issue 12): a claim that is
-- not committed is invisible and a committed one always carries its answer, so the lease
-- (locked_until) and the IN_PROGRESS status are gone. Answers older than 24 h are free.
DELETE FROM idempotency_keys WHERE status <> 'DONE';
ALTER TABLE idempotency_keys DROP COLUMN locked_until, DROP COLUMN status;

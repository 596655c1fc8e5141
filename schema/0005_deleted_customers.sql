-- Customers deleted in Stripe, for analysts to leave out: one row per
-- (account_id, customer) named by a customer.deleted event — a snapshot
-- event, or a thin v1.customer.deleted whose related object is the
-- customer — that syncd received (stripe_events keeps every verified event,
-- its customer column filled for these). deleted_at is the event's created
-- time (the first, should Stripe send it again or in both forms). The
-- customer's rows stay in the mirror and the views: filter with
-- `(account_id, customer) NOT IN (SELECT account_id, customer FROM
-- stripe_deleted_customers)` (docs/queries.md).
CREATE VIEW IF NOT EXISTS stripe_deleted_customers AS
SELECT
    account_id,
    customer,
    min(created) AS deleted_at
FROM stripe_events
WHERE type IN ('customer.deleted', 'v1.customer.deleted') AND customer != ''
GROUP BY account_id, customer;

-- The analyst views again, with the ledger's join operands aliased, for
-- databases that applied 0003_analyst_views before its correction: the views
-- they hold were created on a server that accepted unaliased join operands
-- (18.16), and on ClickHouse 20.x and later every query of them fails with
-- code 206 (joined_subquery_requires_alias). The definitions are 0003's,
-- unchanged in meaning. On a database created with the corrected 0003 this
-- recreates identical views.
--
-- DROP … IF EXISTS then CREATE … IF NOT EXISTS (18.16 has no CREATE OR
-- REPLACE VIEW), dependents first: two pods applying this at once both end
-- with the three views present.
DROP TABLE IF EXISTS daily_balance_movements;
DROP TABLE IF EXISTS customer_balances;
DROP TABLE IF EXISTS balance_ledger;

-- One row per transaction of either provider, newest observation only.
--   credit_delta          credit the customer gained (negative: credit used up)
--   credit_balance_before credit the customer held before the transaction
--   credit_balance_after  credit the customer held after it
-- all Decimal(38, 12) in the currency's major unit. kind is Stripe's `type`
-- or Orb's `action`, as sent (open sets). account_id is '' for Orb and for
-- the Stripe key's own account. synced_at is when syncd wrote the newest
-- observation.
CREATE VIEW IF NOT EXISTS balance_ledger AS
SELECT
    'stripe' AS provider,
    account_id,
    customer,
    transaction_id,
    created,
    currency,
    kind,
    -toDecimal128(amount, 12) / intExp10(if(known = 1, exponent, 2)) AS credit_delta,
    -toDecimal128(ending_balance - amount, 12) / intExp10(if(known = 1, exponent, 2)) AS credit_balance_before,
    -toDecimal128(ending_balance, 12) / intExp10(if(known = 1, exponent, 2)) AS credit_balance_after,
    invoice_id,
    credit_note_id,
    description,
    synced_at
FROM (
    SELECT
        account_id,
        customer,
        transaction_id,
        created,
        tupleElement(latest, 1) AS amount,
        lower(tupleElement(latest, 2)) AS currency,
        tupleElement(latest, 3) AS kind,
        tupleElement(latest, 4) AS ending_balance,
        tupleElement(latest, 5) AS invoice_id,
        tupleElement(latest, 6) AS credit_note_id,
        tupleElement(latest, 7) AS description,
        tupleElement(latest, 8) AS synced_at
    FROM (
        SELECT
            account_id,
            customer,
            id AS transaction_id,
            created,
            argMax(tuple(amount, currency, type, ending_balance, invoice, credit_note, description, _synced_at), _version) AS latest
        FROM stripe_customer_balance_transactions
        GROUP BY account_id, customer, created, id
    )
) AS stripe_latest
ANY LEFT JOIN (SELECT currency, exponent, toUInt8(1) AS known FROM currency_exponents FINAL) AS exponents USING currency
UNION ALL
SELECT
    'orb' AS provider,
    '' AS account_id,
    customer,
    transaction_id,
    created,
    lower(tupleElement(latest, 6)) AS currency,
    tupleElement(latest, 1) AS kind,
    multiIf(
        tupleElement(latest, 2) = 'increment', tupleElement(latest, 3),
        tupleElement(latest, 2) = 'decrement', -tupleElement(latest, 3),
        tupleElement(latest, 5) - tupleElement(latest, 4)
    ) AS credit_delta,
    tupleElement(latest, 4) AS credit_balance_before,
    tupleElement(latest, 5) AS credit_balance_after,
    tupleElement(latest, 7) AS invoice_id,
    tupleElement(latest, 8) AS credit_note_id,
    tupleElement(latest, 9) AS description,
    tupleElement(latest, 10) AS synced_at
FROM (
    SELECT
        customer_id AS customer,
        id AS transaction_id,
        created_at AS created,
        argMax(tuple(action, type, amount, starting_balance, ending_balance, currency, invoice_id, credit_note_id, description, _synced_at), _version) AS latest
    FROM orb_customer_balance_transactions
    GROUP BY customer_id, created_at, id
);

-- Each customer's current credit balance per currency: credit_balance_after
-- of the newest transaction, by (created, transaction_id). Positive = credit
-- the customer holds; negative = an amount the customer owes on top of the
-- next invoice (Stripe only).
CREATE VIEW IF NOT EXISTS customer_balances AS
SELECT
    provider,
    account_id,
    customer,
    currency,
    argMax(credit_balance_after, (created, transaction_id)) AS credit_balance,
    max(created) AS last_transaction_at,
    argMax(transaction_id, (created, transaction_id)) AS last_transaction_id,
    count() AS transactions
FROM balance_ledger
GROUP BY provider, account_id, customer, currency;

-- Movements per UTC day, provider, currency and kind. credits and debits are
-- both positive magnitudes; net = credits - debits = the sum of credit_delta.
CREATE VIEW IF NOT EXISTS daily_balance_movements AS
SELECT
    toDate(created) AS day,
    provider,
    currency,
    kind,
    count() AS transactions,
    sumIf(credit_delta, credit_delta > 0) AS credits,
    -sumIf(credit_delta, credit_delta < 0) AS debits,
    sum(credit_delta) AS net
FROM balance_ledger
GROUP BY day, provider, currency, kind;

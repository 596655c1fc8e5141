-- testdata: schema/0003_analyst_views.sql exactly as released in commit 3ec04a8,
-- before its join operands were aliased. TestSchemaOnBothEngines applies it
-- as the previous schema and upgrades from it. Keep it as it is.
--
-- The analyst layer: one ledger over both providers with one sign convention
-- and major units, each customer's current credit balance, and daily movements.
-- ClickHouse 18.16.1 and later.
--
-- Sign conventions, from the providers' own documentation:
--   Stripe customer_balance_transaction (API reference, "The Customer Balance
--   Transaction object"): `amount` — "A negative value is a credit for the
--   customer's balance, and a positive value is a debit to the customer's
--   balance"; `ending_balance` — "The customer's balance after the transaction
--   was applied. A negative value decreases the amount due on the customer's
--   next invoice". Both integers in the currency's minor unit. So the credit
--   gained is -amount / 10^exponent and the credit held after is
--   -ending_balance / 10^exponent.
--   Orb CustomerBalanceTransaction: "All amounts are in the customer's
--   currency", decimal strings in major units ("11.00"); `type` is increment
--   or decrement of the customer's credit balance; `starting_balance` is "the
--   original value of the customer's balance prior to the transaction" and
--   `ending_balance` the new value after it (Orb's reference text for
--   ending_balance says "prior to" too, but its own example — starting 33.00,
--   amount 11.00, ending 22.00 — and every balance Orb reports show it is the
--   value after). A positive Orb balance is credit the customer holds. So the
--   credit gained is +amount for increment and -amount for decrement, and the
--   credit held after is ending_balance, as is.
--
-- Superseded observations never show: every view reads the mirror tables
-- through argMax(tuple(…), _version) per transaction. The tuple matters:
-- argMax over a Nullable column skips NULLs on 18.16, so a description
-- cleared by a newer observation would otherwise show its old text.

-- Digits after the decimal point of each currency's minor unit (ISO 4217 as
-- Stripe uses it). A currency not listed has 2. Codes are lowercase. Add or
-- correct one with INSERT INTO currency_exponents (currency, exponent) VALUES …;
-- the newest row per currency wins (ReplacingMergeTree on updated_at; the
-- views read it with FINAL).
CREATE TABLE IF NOT EXISTS currency_exponents (
    currency String,
    exponent UInt8,
    updated_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY currency;

-- An INSERT … SELECT (not INSERT … VALUES, which clickhouse-go's Exec cannot
-- send to 18.16). Applying it twice only adds identical rows that FINAL folds.
INSERT INTO currency_exponents (currency, exponent, updated_at)
SELECT tupleElement(c, 1), tupleElement(c, 2), toDateTime('2000-01-01 00:00:00', 'UTC')
FROM (SELECT arrayJoin([
    ('bif', 0), ('clp', 0), ('djf', 0), ('gnf', 0), ('jpy', 0), ('kmf', 0),
    ('krw', 0), ('mga', 0), ('pyg', 0), ('rwf', 0), ('ugx', 0), ('vnd', 0),
    ('vuv', 0), ('xaf', 0), ('xof', 0), ('xpf', 0),
    ('bhd', 3), ('jod', 3), ('kwd', 3), ('omr', 3), ('tnd', 3)
]) AS c);

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
)
ANY LEFT JOIN (SELECT currency, exponent, toUInt8(1) AS known FROM currency_exponents FINAL) USING currency
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

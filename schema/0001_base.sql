-- The mirror tables and the durable webhook intake logs.
-- ClickHouse 18.16.1 and later: no Map, JSON, LowCardinality, CODEC, TTL or
-- DateTime64. Every mirror table is a ReplacingMergeTree on _version: read it
-- with FINAL (or the views) to see one row per object.

CREATE TABLE IF NOT EXISTS stripe_customer_balance_transactions (
    account_id String,
    id String,
    livemode UInt8,
    customer String,
    customer_account Nullable(String),
    amount Int64,
    currency String,
    created DateTime('UTC'),
    type String,
    description Nullable(String),
    ending_balance Int64,
    invoice Nullable(String),
    credit_note Nullable(String),
    checkout_session Nullable(String),
    metadata Nested(key String, value String),
    _raw String,
    _source String,
    _event_id Nullable(String),
    _observed_at DateTime('UTC'),
    _version UInt64,
    _synced_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(created)
ORDER BY (account_id, customer, created, id);

CREATE TABLE IF NOT EXISTS orb_customer_balance_transactions (
    id String,
    customer_id String,
    external_customer_id Nullable(String),
    action String,
    type String,
    amount Decimal(38, 12),
    starting_balance Decimal(38, 12),
    ending_balance Decimal(38, 12),
    currency String,
    created_at DateTime('UTC'),
    description Nullable(String),
    invoice_id Nullable(String),
    credit_note_id Nullable(String),
    _raw String,
    _source String,
    _event_id Nullable(String),
    _observed_at DateTime('UTC'),
    _version UInt64,
    _synced_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(created_at)
ORDER BY (customer_id, created_at, id);

-- customer is the customer a trigger event names ('' when none): it is how a
-- restarted process finds refreshes that acknowledged events still owe.
CREATE TABLE IF NOT EXISTS stripe_events (
    id String,
    type String,
    account_id String,
    livemode UInt8,
    created DateTime('UTC'),
    api_version String,
    customer String,
    payload String,
    received_at DateTime('UTC'),
    _version UInt64
) ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(created)
ORDER BY (created, id);

CREATE TABLE IF NOT EXISTS orb_events (
    id String,
    type String,
    created DateTime('UTC'),
    customer_id String,
    payload String,
    received_at DateTime('UTC'),
    _version UInt64
) ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(created)
ORDER BY (created, id);

-- Backfill checkpoints, the newest transaction held per customer, and the
-- refresh completions that let a restarted `syncd serve` find the refreshes
-- acknowledged webhooks still owe. ClickHouse 18.16.1 and later.

-- The newest transaction id held per customer, in the API's order (ids
-- within one second do not sort by time): the ending_before cursor of an
-- incremental read. Written by backfill and refresh only after the rows
-- before it are committed.
CREATE TABLE IF NOT EXISTS sync_cursors (
    provider String,
    account_id String,
    customer String,
    newest_id String,
    updated_at DateTime('UTC'),
    _version UInt64
) ENGINE = ReplacingMergeTree(_version)
ORDER BY (provider, account_id, customer);

-- One row per (provider, account) after FINAL: the latest backfill sweep,
-- its customer-enumeration cursor and whether it finished. An unfinished run
-- is resumed by the next `syncd backfill`; a finished one starts a new sweep.
CREATE TABLE IF NOT EXISTS backfill_runs (
    provider String,
    account_id String,
    run_id String,
    full UInt8,
    customer_cursor String,
    finished UInt8,
    started_at DateTime('UTC'),
    updated_at DateTime('UTC'),
    _version UInt64
) ENGINE = ReplacingMergeTree(_version)
ORDER BY (provider, account_id);

-- Customers a run has finished: a resumed run does not read them again.
CREATE TABLE IF NOT EXISTS backfill_customers (
    provider String,
    account_id String,
    run_id String,
    customer String,
    rows UInt64,
    done_at DateTime('UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(done_at)
ORDER BY (provider, account_id, run_id, customer);

-- A refresh of (account, customer) that started at T records T minus one
-- second: every trigger event received before it announced a change the
-- refresh's list call saw. Events received later are still owed.
CREATE TABLE IF NOT EXISTS stripe_refreshes (
    account_id String,
    customer String,
    refreshed_through DateTime('UTC'),
    _version UInt64
) ENGINE = ReplacingMergeTree(_version)
ORDER BY (account_id, customer);

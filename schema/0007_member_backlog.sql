-- Refreshes first: each serve process also writes how many customers it
-- has owed a refresh for longer than a few seconds (backlog). While any
-- serve process of a pool has a backlog, the backfill and verify processes
-- of that pool spend a smaller share of its API budget, so webhook-triggered
-- refreshes drain first (internal/fleet). 18.16 has no ADD COLUMN IF NOT
-- EXISTS, and a migration must be idempotent, so the table, which holds
-- nothing but heartbeats a few seconds old, is made again with the column:
-- live processes write their next heartbeat into the new one.
DROP TABLE IF EXISTS syncd_members;

CREATE TABLE IF NOT EXISTS syncd_members (
    member String,
    role String,
    pool String,
    heartbeat DateTime('UTC'),
    gone UInt8,
    backlog UInt32,
    _version UInt64
) ENGINE = ReplacingMergeTree(_version)
ORDER BY member;

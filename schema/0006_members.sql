-- The syncd processes sharing this database: each serve and backfill
-- process writes a heartbeat every few seconds (the server's now()), and
-- reads who else is alive to split the source APIs' request budget (pool:
-- the API it spends, stripe or orb) and, among serve processes (role), the
-- work found in the intake log (internal/fleet). A process that stops
-- cleanly writes gone = 1; one that dies stops beating and is dropped by
-- the others after the heartbeat TTL. One row per process after merges.
CREATE TABLE IF NOT EXISTS syncd_members (
    member String,
    role String,
    pool String,
    heartbeat DateTime('UTC'),
    gone UInt8,
    _version UInt64
) ENGINE = ReplacingMergeTree(_version)
ORDER BY member;

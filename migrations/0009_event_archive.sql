-- The event archive: every durable event the workers sync, append-only, one row per
-- (team, offset), written in the same transaction as the rows it changes. Replay and
-- export read it for what a team's stream no longer holds (docs/architecture.md, "Event
-- archive"). Partitioned by the month of the event's time, so whole months can be
-- dropped or moved to cheaper storage; the workers create the partitions as events of a
-- month arrive, and the next month's ahead of it (worker/src/store/archive.rs).
CREATE TABLE events (
    team     text        NOT NULL,
    "offset" bigint      NOT NULL,
    -- The event's time (its data's `ts`), the partition key.
    at       timestamptz NOT NULL,
    kind     text        NOT NULL,
    -- The new message's seq, or the one the event concerns (an edit, a receipt...).
    seq      bigint      NOT NULL,
    user_id  text        NOT NULL,
    -- Credits the event cost its user (0 when it cost none).
    cost     bigint      NOT NULL,
    -- The kind's data, as the stream entry's `d` holds it.
    data     jsonb       NOT NULL,
    -- A partitioned table's keys include the partition key. An event's time never
    -- changes, so a redelivered event meets its row here and is not archived twice.
    PRIMARY KEY (team, "offset", at)
) PARTITION BY RANGE (at);

-- Creates the partition of `events` that holds `at` if it is missing (one month, UTC), and
-- returns its range. Workers call it for a month the first time they archive an event of
-- it, and for the month after it, ahead of time.
CREATE FUNCTION events_partition_for(at timestamptz) RETURNS tstzrange
LANGUAGE plpgsql AS $$
DECLARE
    -- Month arithmetic on UTC wall-clock time: the session's time zone must not move it.
    month timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    lo timestamptz := month AT TIME ZONE 'UTC';
    hi timestamptz := (month + interval '1 month') AT TIME ZONE 'UTC';
BEGIN
    -- Workers starting together would otherwise race on the catalog.
    PERFORM pg_advisory_xact_lock(hashtext('teamchat events partitions'));
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                   'events_' || to_char(month, 'YYYY_MM'), lo, hi);
    RETURN tstzrange(lo, hi);
END
$$;

-- A message's versions (the message, its edits, its delete) for the edit history.
CREATE INDEX events_versions ON events (team, seq, "offset")
    WHERE kind IN ('message', 'edit', 'delete');

-- Messages as the worker syncs them from the ingest streams. Keyed by (team, seq): every
-- write is an idempotent upsert, so replays and concurrent workers cannot double a row.
CREATE TABLE messages (
    team       text    NOT NULL,
    seq        bigint  NOT NULL,
    id         text    NOT NULL,
    client_id  text    NOT NULL,
    user_id    text    NOT NULL,
    name       text,
    body       text    NOT NULL,
    meta       jsonb,
    ts         bigint  NOT NULL,  -- ms since the Unix epoch, as clients see it
    "offset"   bigint  NOT NULL,  -- team-stream offset of the message's message:new
    version    bigint  NOT NULL,  -- offset of the newest event applied to this row
    edited_at  bigint,
    deleted    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (team, seq)
);

-- Per team, the offset up to which every durable event is in PostgreSQL. History reads
-- rows from here and only newer events from the team stream.
CREATE TABLE team_sync (
    team          text   PRIMARY KEY,
    synced_offset bigint NOT NULL DEFAULT 0
);

-- Offsets synced beyond a team's contiguous watermark (workers commit out of order);
-- rows are deleted as the watermark passes them.
CREATE TABLE synced_ahead (
    team     text   NOT NULL,
    "offset" bigint NOT NULL,
    PRIMARY KEY (team, "offset")
);

-- Ingest entries that could not be decoded, kept with the reason instead of being retried.
CREATE TABLE dead_letters (
    stream    text        NOT NULL,
    entry_id  text        NOT NULL,
    fields    jsonb       NOT NULL,
    error     text        NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, entry_id)
);

-- Threads (../shared/PROTOCOL.md, "Chat model"): a reply names its thread's top-level
-- message; the parent's counters are kept apart, counted once per reply when the worker
-- first stores it (so in any order, and exactly once; deleted replies still count).
ALTER TABLE messages ADD COLUMN parent bigint;

-- A thread's replies in order.
CREATE INDEX messages_replies ON messages (team, parent, seq) WHERE parent IS NOT NULL;

CREATE TABLE threads (
    team          text   NOT NULL,
    parent        bigint NOT NULL,
    reply_count   bigint NOT NULL,
    last_reply_ts bigint NOT NULL,
    PRIMARY KEY (team, parent)
);

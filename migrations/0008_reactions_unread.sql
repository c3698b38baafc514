-- Reactions and unread counts (../shared/PROTOCOL.md, "Chat model").

-- Each user's reaction with each emoji on each message: its newest add or remove by offset
-- wins (`version`), whatever order the workers commit them in.
CREATE TABLE reactions (
    team    text    NOT NULL,
    seq     bigint  NOT NULL,
    user_id text    NOT NULL,
    emoji   text    NOT NULL,
    present boolean NOT NULL,
    version bigint  NOT NULL,
    PRIMARY KEY (team, seq, user_id, emoji)
);

-- Per message and emoji, what history pages show: moved by what each batch changed in
-- `reactions`, in the same transaction (a team's batches are serialized on its team_sync
-- row). `first_offset`, the emoji's first add on the message, orders a message's emojis.
CREATE TABLE reaction_counts (
    team         text   NOT NULL,
    seq          bigint NOT NULL,
    emoji        text   NOT NULL,
    count        bigint NOT NULL,
    first_offset bigint NOT NULL,
    PRIMARY KEY (team, seq, emoji)
);

-- Unread counts without scanning a team's history: messages above a read position are
-- `newest seq - read`, less the deleted ones and the user's own there (both indexed), and
-- the mentions of a user above it are a range of this table.
CREATE TABLE mentions (
    team    text   NOT NULL,
    user_id text   NOT NULL,
    seq     bigint NOT NULL,
    PRIMARY KEY (team, user_id, seq)
);
INSERT INTO mentions (team, user_id, seq)
SELECT team, unnest(mentions), seq FROM messages WHERE mentions IS NOT NULL
ON CONFLICT DO NOTHING;

CREATE INDEX messages_deleted ON messages (team, seq) WHERE deleted;
CREATE INDEX messages_by_user ON messages (team, user_id, seq);

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
-- The standing ones only: what `me` and a reload into Redis read. A member adding and
-- taking back emoji after emoji leaves rows that are not standing; they are never read.
CREATE INDEX reactions_standing ON reactions (team, seq, emoji, user_id) WHERE present;

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
-- What history pages read: the emojis with reactions, in their order.
CREATE INDEX reaction_counts_standing ON reaction_counts (team, seq, first_offset, emoji)
    WHERE count > 0;

-- Unread counts without scanning a team's history: per team, counts of messages by seq
-- range, at two levels (level 0: 256 seqs, `bucket = seq >> 8`; level 1: 65,536 seqs,
-- `bucket = seq >> 16`). Kinds: 'd' deleted messages (user_id ''), 'm' a user's messages
-- not deleted, '@' messages by others, not deleted, that mention the user. The messages
-- above a read position are `newest - read`, less the deleted and the user's own there;
-- each count above it is a scan of at most 256 messages, 256 level-0 and n / 65,536
-- level-1 rows. The worker moves them as it first stores a message and as a delete first
-- applies.
CREATE TABLE unread_counts (
    team    text     NOT NULL,
    kind    "char"   NOT NULL,
    user_id text     NOT NULL,
    level   smallint NOT NULL,
    bucket  bigint   NOT NULL,
    n       bigint   NOT NULL,
    PRIMARY KEY (team, kind, user_id, level, bucket)
);
INSERT INTO unread_counts (team, kind, user_id, level, bucket, n)
SELECT c.team, c.kind, c.user_id, l.level, c.seq >> (8 * (l.level + 1)), count(*)
FROM (
    SELECT team, 'd'::"char" AS kind, '' AS user_id, seq FROM messages WHERE deleted
    UNION ALL
    SELECT team, 'm'::"char", user_id, seq FROM messages WHERE NOT deleted AND user_id IS NOT NULL
    UNION ALL
    SELECT DISTINCT m.team, '@'::"char", u.user_id, m.seq
    FROM messages m CROSS JOIN LATERAL unnest(m.mentions) AS u(user_id)
    WHERE NOT m.deleted AND u.user_id <> m.user_id
) c
CROSS JOIN (VALUES (0::smallint), (1::smallint)) AS l(level)
GROUP BY 1, 2, 3, 4, 5;

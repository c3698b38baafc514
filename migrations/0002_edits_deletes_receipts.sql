-- Edits and deletes can reach PostgreSQL before the message they change (several workers
-- commit out of order): such a row is a placeholder with only the change until the message
-- arrives, so the message's columns may be NULL meanwhile. History skips rows without an id.
ALTER TABLE messages
    ALTER COLUMN id DROP NOT NULL,
    ALTER COLUMN client_id DROP NOT NULL,
    ALTER COLUMN user_id DROP NOT NULL,
    ALTER COLUMN body DROP NOT NULL,
    ALTER COLUMN ts DROP NOT NULL,
    ALTER COLUMN "offset" DROP NOT NULL;

-- Each user's read position per team: the highest seq read (receipts only grow).
CREATE TABLE receipts (
    team     text   NOT NULL,
    user_id  text   NOT NULL,
    seq      bigint NOT NULL,
    "offset" bigint NOT NULL,
    PRIMARY KEY (team, user_id)
);

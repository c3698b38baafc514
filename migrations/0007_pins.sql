-- Pinned messages (../shared/PROTOCOL.md, "Chat model"). Pins and unpins of one message
-- apply in offset order whatever order the workers commit them in (pin_version).
ALTER TABLE messages
    ADD COLUMN pinned      boolean NOT NULL DEFAULT false,
    ADD COLUMN pinned_at   bigint,
    ADD COLUMN pin_version bigint  NOT NULL DEFAULT 0;

CREATE INDEX messages_pins ON messages (team, pinned_at DESC) WHERE pinned;

-- The chat model's fields of a message (../shared/PROTOCOL.md, "Chat model"): the users it
-- mentions and the files it links to. Blanked with the body when the message is deleted.
ALTER TABLE messages
    ADD COLUMN mentions    text[],
    ADD COLUMN attachments jsonb;

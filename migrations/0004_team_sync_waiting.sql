-- Whether offsets of the team wait in synced_ahead (past a gap in the watermark). Set and
-- cleared under the team row's lock, so a batch that moves the watermark learns from the
-- row itself, in the same statement, whether waiting offsets may now follow on.
ALTER TABLE team_sync ADD COLUMN waiting boolean NOT NULL DEFAULT false;

UPDATE team_sync s SET waiting = true
WHERE EXISTS (SELECT 1 FROM synced_ahead a WHERE a.team = s.team AND a."offset" > s.synced_offset);

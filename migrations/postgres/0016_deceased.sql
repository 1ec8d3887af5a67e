-- Deceased subjects and the subject's own instructions for after death (PIPL Art. 49):
-- a close relative may exercise the rights of access, copy, correction and deletion for a
-- deceased subject, unless the subject arranged otherwise while alive. Reference codes
-- only (the evidence is kept elsewhere), never free text.
CREATE TABLE subject_status (
    subject_id        TEXT PRIMARY KEY,
    deceased_at       BIGINT,
    deceased_evidence TEXT,
    relatives         TEXT NOT NULL DEFAULT 'allowed' CHECK (relatives IN ('allowed', 'refused'))
);

-- Who made a data-subject request when it was not the subject: the relationship of the
-- close relative and the reference of the evidence of it. NULL: the subject.
ALTER TABLE dsr_requests ADD COLUMN requester TEXT;
ALTER TABLE dsr_requests ADD COLUMN requester_evidence TEXT;

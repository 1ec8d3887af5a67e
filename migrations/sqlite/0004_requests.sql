-- Data-subject requests (PIPL Art. 44-50): received, due, status; rejections carry a reason.

CREATE TABLE dsr_requests (
    id          TEXT    PRIMARY KEY,
    subject_id  TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('access', 'export', 'correct', 'delete', 'withdraw')),
    received_at INTEGER NOT NULL,
    due_date    TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('open', 'in_progress', 'done', 'rejected')),
    reason      TEXT,
    created_by  TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    closed_at   INTEGER
);
CREATE INDEX dsr_requests_status ON dsr_requests (status, due_date);
CREATE INDEX dsr_requests_subject ON dsr_requests (subject_id);

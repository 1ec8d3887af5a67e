-- Legal holds (PIPL Art. 47 ¶2): a held subject is kept past its retention and restricted
-- to storage. The case reference is an opaque code, never a description.
ALTER TABLE subjects ADD COLUMN legal_hold_at INTEGER;
ALTER TABLE subjects ADD COLUMN legal_hold_case TEXT;

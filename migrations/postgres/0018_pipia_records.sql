-- PIPIA records (PIPL Art. 56: kept at least three years). Every record the policy
-- holds is copied here when the policy loads, each version once, so it outlives its
-- removal from pipia.toml. Rows never change; one may be removed only three years after
-- its date.
CREATE TABLE pipia_records (
    id          TEXT NOT NULL,
    digest      TEXT NOT NULL,
    date        TEXT NOT NULL,
    conclusion  TEXT NOT NULL,
    reviewer    TEXT NOT NULL,
    archived_at BIGINT NOT NULL,
    PRIMARY KEY (id, digest)
);

CREATE FUNCTION piivault_pipia_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'PIPIA records are kept as recorded';
    END IF;
    IF TG_OP = 'TRUNCATE' OR OLD.date > to_char(now() - interval '3 years', 'YYYY-MM-DD') THEN
        RAISE EXCEPTION 'PIPIA records are kept at least three years (PIPL Art. 56)';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER pipia_records_kept BEFORE UPDATE OR DELETE ON pipia_records
    FOR EACH ROW EXECUTE FUNCTION piivault_pipia_kept();
CREATE TRIGGER pipia_records_no_truncate BEFORE TRUNCATE ON pipia_records
    FOR EACH STATEMENT EXECUTE FUNCTION piivault_pipia_kept();

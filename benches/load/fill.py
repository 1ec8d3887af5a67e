#!/usr/bin/env python3
"""Grows a vault's tables to N subjects with filler rows (random ids of the real form,
random bytes where ciphertexts, wrapped keys and digests go), so that reads of real
subjects meet B-trees of the size N real subjects would make. Filler rows are never
read. Usage: fill.py sqlite PATH N | fill.py postgres URL N"""
import subprocess
import sys

kind, where, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fields = ["name", "id_number", "phone", "email", "address", "bank_card"]
searchable = ["id_number", "phone", "email"]

if kind == "sqlite":
    import sqlite3
    db = sqlite3.connect(where, timeout=60)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TEMP TABLE fill (id TEXT PRIMARY KEY)")
    db.execute(f"""WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {n})
                   INSERT INTO fill SELECT 'sub_' || lower(hex(randomblob(16))) FROM k""")
    db.execute("INSERT INTO subjects (id, created_at, updated_at) SELECT id, 0, 0 FROM fill")
    db.execute("""INSERT INTO subject_keys (subject_id, version, kek_version, wrapped, encryptions, created_at)
                  SELECT id, 1, 1, randomblob(60), 6, 0 FROM fill""")
    for f in fields:
        db.execute("""INSERT INTO subject_fields (subject_id, field, dek_version, sealed, updated_at)
                      SELECT id, ?, 1, randomblob(48), 0 FROM fill""", (f,))
    for f in searchable:
        db.execute("INSERT INTO blind_index (field, digest, subject_id) SELECT ?, randomblob(32), id FROM fill", (f,))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
else:
    sql = f"""
    CREATE TEMP TABLE fill AS SELECT 'sub_' || md5(random()::text || i::text) AS id FROM generate_series(1, {n}) i;
    INSERT INTO subjects (id, created_at, updated_at) SELECT id, 0, 0 FROM fill;
    INSERT INTO subject_keys (subject_id, version, kek_version, wrapped, encryptions, created_at)
      SELECT id, 1, 1, sha256(id::bytea) || sha256(id::bytea), 6, 0 FROM fill;
    """ + "".join(f"""
    INSERT INTO subject_fields (subject_id, field, dek_version, sealed, updated_at)
      SELECT id, '{f}', 1, sha256((id || '{f}')::bytea) || sha256(id::bytea), 0 FROM fill;""" for f in fields) + "".join(f"""
    INSERT INTO blind_index (field, digest, subject_id) SELECT '{f}', sha256((id || '{f}')::bytea), id FROM fill;""" for f in searchable) + """
    ANALYZE;"""
    subprocess.run(["psql", where, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True)

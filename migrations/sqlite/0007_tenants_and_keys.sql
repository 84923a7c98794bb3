-- API keys: only the SHA-256 of the secret is stored (secrets are 256 random bits, so a slow
-- password hash would add nothing). A key belongs to a tenant and has one role; revocation
-- is a timestamp, effective on the key's next call (every call reads its row).
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    role          TEXT NOT NULL,
    name          TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);
CREATE INDEX api_keys_listing ON api_keys (tenant, created_at DESC, id DESC);

-- The credential a worker registered with: only that key may act as the worker.
ALTER TABLE workers ADD COLUMN key_id TEXT NOT NULL DEFAULT '';

-- Model names are unique per tenant, not globally (SQLite rebuilds the tables to rekey them).
CREATE TABLE models_new (
    name       TEXT NOT NULL,
    tenant     TEXT NOT NULL DEFAULT 'default',
    format     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
INSERT INTO models_new (name, tenant, format, created_at)
    SELECT name, tenant, format, created_at FROM models;
CREATE TABLE model_files_new (
    tenant  TEXT NOT NULL DEFAULT 'default',
    model   TEXT NOT NULL,
    path    TEXT NOT NULL,
    file_id TEXT NOT NULL REFERENCES files (id),
    PRIMARY KEY (tenant, model, path),
    FOREIGN KEY (tenant, model) REFERENCES models_new (tenant, name) ON DELETE CASCADE
);
INSERT INTO model_files_new (tenant, model, path, file_id)
    SELECT m.tenant, mf.model, mf.path, mf.file_id
    FROM model_files mf JOIN models m ON m.name = mf.model;
DROP TABLE model_files;
DROP TABLE models;
ALTER TABLE models_new RENAME TO models;
ALTER TABLE model_files_new RENAME TO model_files;
CREATE INDEX model_files_by_file ON model_files (file_id);

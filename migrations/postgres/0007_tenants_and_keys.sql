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

-- Model names are unique per tenant, not globally.
ALTER TABLE model_files DROP CONSTRAINT model_files_model_fkey;
ALTER TABLE model_files DROP CONSTRAINT model_files_pkey;
ALTER TABLE model_files ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE models DROP CONSTRAINT models_pkey;
ALTER TABLE models ADD PRIMARY KEY (tenant, name);
ALTER TABLE model_files ADD PRIMARY KEY (tenant, model, path);
ALTER TABLE model_files ADD CONSTRAINT model_files_model_fkey
    FOREIGN KEY (tenant, model) REFERENCES models (tenant, name) ON DELETE CASCADE;

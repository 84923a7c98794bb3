-- Tuna schema (SQLite, the embedded backend; kept identical to migrations/postgres). Timestamps are milliseconds since the Unix epoch (BIGINT) so the
-- same queries run on the SQLite backend; JSON columns are TEXT for the same reason.

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL DEFAULT 'default',
    state            TEXT NOT NULL,
    spec             TEXT NOT NULL,
    base_model       TEXT NOT NULL,
    training_file    TEXT NOT NULL,
    validation_file  TEXT,
    priority         INTEGER NOT NULL,
    device           TEXT NOT NULL,
    min_memory_bytes BIGINT NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_token      TEXT,
    lease_expires_at BIGINT,
    worker_id        TEXT,
    run_after        BIGINT NOT NULL,
    failure_kind     TEXT,
    failure_message  TEXT,
    sweep_id         TEXT,
    request_id       TEXT,
    request_hash     TEXT,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    CONSTRAINT jobs_state_valid CHECK (state IN ('queued', 'running', 'succeeded', 'failed',
        'cancelling', 'cancelled', 'pausing', 'paused')),
    CONSTRAINT jobs_finished_iff_terminal CHECK (
        (finished_at IS NOT NULL) = (state IN ('succeeded', 'failed', 'cancelled'))),
    CONSTRAINT jobs_request_unique UNIQUE (tenant, request_id)
);
-- The claim query walks this index: queued jobs by priority, then age.
CREATE INDEX jobs_claimable ON jobs (priority DESC, created_at, id) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state IN ('running', 'cancelling', 'pausing');
CREATE INDEX jobs_listing ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX jobs_sweep ON jobs (sweep_id) WHERE sweep_id IS NOT NULL;

CREATE TABLE job_labels (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE INDEX job_labels_kv ON job_labels (key, value);

-- Events and metric points share the per-job sequence jobs.last_seq.
CREATE TABLE job_events (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    message    TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Append-only; one metric point (one seq) has one row per metric name.
CREATE TABLE job_metrics (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    attempt    INTEGER NOT NULL,
    step       BIGINT NOT NULL,
    name       TEXT NOT NULL,
    value      DOUBLE PRECISION NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq, name)
);

CREATE TABLE files (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL DEFAULT 'default',
    name       TEXT NOT NULL,
    purpose    TEXT NOT NULL,
    format     TEXT,
    size_bytes BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    line_count BIGINT NOT NULL,
    blob_key   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX files_listing ON files (tenant, created_at DESC, id DESC);

CREATE TABLE artifacts (
    id         TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt    INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    step       BIGINT NOT NULL,
    name       TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    blob_key   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX artifacts_by_job ON artifacts (job_id, kind, step);

CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    device        TEXT NOT NULL,
    memory_bytes  BIGINT NOT NULL,
    capabilities  TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL
);

-- Sweeps (DESIGN.md §5). A sweep's controller state is a pure function of its event log
-- (sweep_events: the calls made on the search algorithm, in order) and its trials, so a
-- restarted or newly elected controller rebuilds it by replay.

CREATE TABLE sweeps (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL DEFAULT 'default',
    state        TEXT NOT NULL,
    -- The validated tuna.v1.SweepSpec, protobuf-encoded (defaults filled in).
    spec         BYTEA NOT NULL,
    message      TEXT NOT NULL DEFAULT '',
    request_id   TEXT,
    request_hash TEXT,
    -- Number of sweep_events rows: the controller's optimistic-concurrency fence.
    last_seq     BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    CONSTRAINT sweeps_state_valid CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    CONSTRAINT sweeps_finished_iff_terminal CHECK ((finished_at IS NOT NULL) = (state <> 'running')),
    CONSTRAINT sweeps_request_unique UNIQUE (tenant, request_id)
);
CREATE INDEX sweeps_listing ON sweeps (tenant, created_at DESC, id DESC);
CREATE INDEX sweeps_running ON sweeps (created_at) WHERE state = 'running';

CREATE TABLE sweep_events (
    sweep_id   TEXT NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    -- suggest, observe or report; payload is its JSON.
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (sweep_id, seq)
);

-- One row per run of a trial: run 0 is the first; an ASHA promotion adds run n+1, which
-- resumes run n's checkpoint. job_id is NULL for suggestions dropped because max_trials was
-- reached (kept so replay can be checked against them).
CREATE TABLE sweep_trials (
    sweep_id       TEXT NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
    trial          BIGINT NOT NULL,
    run            INTEGER NOT NULL,
    job_id         TEXT UNIQUE REFERENCES jobs (id),
    params         TEXT NOT NULL,
    budget         DOUBLE PRECISION,
    resume         BOOLEAN NOT NULL,
    -- Metric seq of the job consumed so far (reports fed to the algorithm).
    reported_seq   BIGINT NOT NULL DEFAULT 0,
    steps          BIGINT NOT NULL DEFAULT 0,
    last_value     DOUBLE PRECISION,
    stop_requested BOOLEAN NOT NULL DEFAULT FALSE,
    observed       BOOLEAN NOT NULL DEFAULT FALSE,
    objective      DOUBLE PRECISION,
    cost           DOUBLE PRECISION,
    failed         BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (sweep_id, trial, run)
);

-- An ASHA promotion resumes another job's latest checkpoint.
ALTER TABLE jobs ADD COLUMN resume_from_job TEXT;

-- Leader election for singleton background work (the sweep controller): a row per role, held
-- by one replica until its lease expires.
CREATE TABLE leader_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

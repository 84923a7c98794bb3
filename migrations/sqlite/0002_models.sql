-- The base-model registry: a name over a set of uploaded MODEL files.
CREATE TABLE models (
    name       TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL DEFAULT 'default',
    format     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE model_files (
    model   TEXT NOT NULL REFERENCES models (name) ON DELETE CASCADE,
    path    TEXT NOT NULL,
    file_id TEXT NOT NULL REFERENCES files (id),
    PRIMARY KEY (model, path)
);
CREATE INDEX model_files_by_file ON model_files (file_id);

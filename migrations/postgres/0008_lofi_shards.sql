-- lo-fi jobs (spec.replicas > 1): each shard is a job of its own (leased, retried, resumed like
-- any other) that names the lo-fi job and its shard index. The lo-fi job itself is claimable
-- only once every shard succeeded (its merge step); see docs/design.md §3.10.
ALTER TABLE jobs ADD COLUMN parent_job_id TEXT;
ALTER TABLE jobs ADD COLUMN shard_index INTEGER;
CREATE INDEX jobs_shards ON jobs (parent_job_id, shard_index) WHERE parent_job_id IS NOT NULL;

-- The worker whose attempt last failed as SYSTEM (a crash, a device out of memory): the
-- retry goes to another worker when one asks within queue.retry_elsewhere_ms of the job
-- becoming claimable again; after that, any worker, this one included (docs/design.md §3.5).
ALTER TABLE jobs ADD COLUMN avoid_worker_id TEXT;

-- Claims look up queued jobs per device ('any' and the worker's own), each in priority order
-- straight from this index: no scan or sort of the whole queue per claim, however deep it is
-- or however many of its jobs need another device.
DROP INDEX jobs_claimable;
CREATE INDEX jobs_claimable ON jobs (device, priority DESC, created_at, id) WHERE state = 'queued';

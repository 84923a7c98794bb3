-- W3C trace context (`traceparent`) of the request that created the job, so the claim and
-- the worker's training join the submitter's trace.
ALTER TABLE jobs ADD COLUMN trace_context TEXT;

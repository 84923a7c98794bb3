-- Early stopping (sweeps): the controller marks a running trial; its worker learns it through
-- the heartbeat directive STOP_EARLY and ends the attempt as a success.
ALTER TABLE jobs ADD COLUMN stop_requested BOOLEAN NOT NULL DEFAULT FALSE;

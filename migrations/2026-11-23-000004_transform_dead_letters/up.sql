-- Dead letters of the processor stage: events a user transformation or a destination
-- script could not map. Their payload is the event itself (not a delivery request), so a
-- replay runs them through the destination's transformations again.
ALTER TABLE dlq_jobs ADD COLUMN stage text NOT NULL DEFAULT 'delivery'
    CHECK (stage IN ('delivery', 'transform'));

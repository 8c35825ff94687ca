-- tagpin's pin store, version 6: the webhook outbox. Events are numbered in the order
-- they commit (appends hold a transaction advisory lock), each target's cursor is the
-- last event it is done with, and one replica at a time holds a target's delivery
-- (`holder` until `lease_until`, milliseconds of the database's clock).
CREATE TABLE webhook_events (
    seq BIGINT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    event JSONB NOT NULL
);

CREATE TABLE webhook_cursors (
    target TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    holder TEXT NOT NULL DEFAULT '',
    lease_until BIGINT NOT NULL DEFAULT 0
);

-- The outbox's last `seq` ever given: events may all be gone, numbers are not reused.
CREATE TABLE webhook_head (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    seq BIGINT NOT NULL
);
INSERT INTO webhook_head (seq) VALUES (0);

CREATE TABLE webhook_timers (
    key TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    payload TEXT NOT NULL
);

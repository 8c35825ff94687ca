-- tagpin's pin store, version 5: the history log (an RFC 6962 Merkle tree of every event
-- that binds a tag), appended in the transaction that writes the binding, one total order
-- for every replica: the head row is locked by each append.
CREATE TABLE log_entries (
    idx  BIGINT PRIMARY KEY,
    leaf BYTEA NOT NULL
);
-- Every complete perfect subtree: at `level` k, `idx` i covers entries [i*2^k, (i+1)*2^k).
CREATE TABLE log_nodes (
    level SMALLINT NOT NULL,
    idx   BIGINT NOT NULL,
    hash  BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);
-- The size and right frontier (8-byte big-endian size, then the frontier's hashes).
CREATE TABLE log_head (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    size     BIGINT NOT NULL,
    frontier BYTEA NOT NULL
);
INSERT INTO log_head (id, size, frontier) VALUES (TRUE, 0, '\x0000000000000000'::bytea);

-- A replica of an earlier version would bind tags without log entries: pins are written
-- only by sessions that say they keep the log (tagpin sets this in every transaction).
CREATE FUNCTION tagpin_pins_need_the_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tagpin.log', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'pins are written only by a tagpin that keeps the history log (schema 5): upgrade every replica';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER pins_need_the_log AFTER INSERT OR UPDATE OR DELETE ON pins
    FOR EACH STATEMENT EXECUTE FUNCTION tagpin_pins_need_the_log();

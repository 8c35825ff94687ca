-- tagpin's pin store, version 1. Every table is keyed by repository first, so the
-- per-repository scans (holders, listing one repository) use the primary keys.

CREATE TABLE pins (
    repository TEXT NOT NULL,
    tag        TEXT NOT NULL,
    digest     TEXT NOT NULL,
    source     TEXT NOT NULL,
    pinned_at  BIGINT NOT NULL,
    history    JSONB NOT NULL,
    PRIMARY KEY (repository, tag)
);
CREATE INDEX pins_by_digest ON pins (repository, digest);

-- A push in flight: alone for a free tag, beside the pin for an advance.
CREATE TABLE claims (
    repository TEXT NOT NULL,
    tag        TEXT NOT NULL,
    digest     TEXT NOT NULL,
    request_id TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    PRIMARY KEY (repository, tag)
);
CREATE INDEX claims_by_digest ON claims (repository, digest);

-- Digest deletes forwarded without a known outcome, one row per request.
CREATE TABLE deletes (
    repository TEXT NOT NULL,
    digest     TEXT NOT NULL,
    request_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (repository, digest, request_id)
);

-- Pinned manifest `holder` depends on blob or manifest `ref`.
CREATE TABLE refs (
    repository TEXT NOT NULL,
    ref        TEXT NOT NULL,
    holder     TEXT NOT NULL,
    PRIMARY KEY (repository, ref, holder)
);

-- The references of `holder` are recorded.
CREATE TABLE holders (
    repository TEXT NOT NULL,
    holder     TEXT NOT NULL,
    PRIMARY KEY (repository, holder)
);

-- The last refused attempts per tag.
CREATE TABLE refused (
    id         BIGSERIAL PRIMARY KEY,
    repository TEXT NOT NULL,
    tag        TEXT NOT NULL,
    record     JSONB NOT NULL
);
CREATE INDEX refused_by_tag ON refused (repository, tag, id);

CREATE TABLE releases (
    repository TEXT NOT NULL,
    tag        TEXT NOT NULL,
    record     JSONB NOT NULL,
    PRIMARY KEY (repository, tag)
);

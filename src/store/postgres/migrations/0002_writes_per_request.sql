-- tagpin's pin store, version 2: a tag may have several writes in flight, one per
-- request, and a write may use a release; references are also looked up by holder.

-- One row per write in flight (a push or a delete of the tag whose outcome at the
-- upstream is not known), no longer one per tag.
ALTER TABLE claims DROP CONSTRAINT claims_pkey;
ALTER TABLE claims ADD PRIMARY KEY (repository, tag, request_id);
-- The release the write uses, if any (its id in the release's record).
ALTER TABLE claims ADD COLUMN release_id TEXT NULL;
-- The write's place in its tag's list, so the list reads back in the order written.
ALTER TABLE claims ADD COLUMN position INT NOT NULL DEFAULT 0;

-- `refs_of`: the references recorded for one holder.
CREATE INDEX refs_by_holder ON refs (repository, holder);

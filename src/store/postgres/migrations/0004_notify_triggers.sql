-- tagpin's pin store, version 4: every change to a tag's pin or to its writes in flight
-- notifies `tagpin_tags` with the tag's `repository:tag`, delivered when the transaction
-- commits, whoever makes it: this tagpin's transactions notify too, but a replica of an
-- earlier tagpin still running during a rolling upgrade, or an operator's repair by
-- hand, does not, and a replica would otherwise keep serving a pin they replaced from
-- its read cache. Identical notifications of one transaction are delivered once. A
-- `TRUNCATE` fires no row trigger: it notifies `*`, and every cache is emptied.
CREATE FUNCTION tagpin_notify_tag() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('tagpin_tags', OLD.repository || ':' || OLD.tag);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('tagpin_tags', NEW.repository || ':' || NEW.tag);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER pins_notify AFTER INSERT OR UPDATE OR DELETE ON pins
    FOR EACH ROW EXECUTE FUNCTION tagpin_notify_tag();
CREATE TRIGGER claims_notify AFTER INSERT OR UPDATE OR DELETE ON claims
    FOR EACH ROW EXECUTE FUNCTION tagpin_notify_tag();

CREATE FUNCTION tagpin_notify_every_tag() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tagpin_tags', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER pins_notify_truncate AFTER TRUNCATE ON pins
    FOR EACH STATEMENT EXECUTE FUNCTION tagpin_notify_every_tag();
CREATE TRIGGER claims_notify_truncate AFTER TRUNCATE ON claims
    FOR EACH STATEMENT EXECUTE FUNCTION tagpin_notify_every_tag();

-- tagpin's pin store, version 3: the history of a tag that has no pin yet (an operator
-- cleared the record of its write); it becomes the start of the pin's history once the
-- tag is pinned, and the row goes. No row: no such history.
CREATE TABLE notes (
    repository TEXT NOT NULL,
    tag        TEXT NOT NULL,
    history    JSONB NOT NULL,
    PRIMARY KEY (repository, tag)
);

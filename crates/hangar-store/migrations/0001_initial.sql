-- Apps, machines and their events. JSON columns hold wire types verbatim; timestamps
-- are Unix nanoseconds so that a record read back compares equal to the one written.
CREATE TABLE apps (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    org_slug   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE machines (
    id            TEXT PRIMARY KEY,
    app           TEXT NOT NULL REFERENCES apps(name),
    name          TEXT NOT NULL,
    state         TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    private_ip    TEXT NOT NULL,
    config        TEXT NOT NULL,
    image_ref     TEXT NOT NULL,
    image         TEXT NOT NULL,
    lease         TEXT,
    restart_count INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- A name is unique among an app's machines that still exist.
CREATE UNIQUE INDEX machines_live_name ON machines(app, name) WHERE state != 'destroyed';
CREATE INDEX machines_app ON machines(app);

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    status     TEXT NOT NULL,
    source     TEXT NOT NULL,
    timestamp  INTEGER NOT NULL,
    request    TEXT NOT NULL
);

CREATE INDEX events_machine ON events(machine_id, seq);

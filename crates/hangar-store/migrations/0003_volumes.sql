-- Volumes and their snapshots. The data lives with the runtime driver under the
-- ids; which machine a volume is attached to is read from machines' config.mounts.
CREATE TABLE volumes (
    id                 TEXT PRIMARY KEY,
    app                TEXT NOT NULL,
    name               TEXT NOT NULL,
    size_gb            INTEGER NOT NULL,
    snapshot_retention INTEGER NOT NULL,
    created_at         INTEGER NOT NULL
);

CREATE INDEX volumes_app ON volumes(app);

CREATE TABLE volume_snapshots (
    id         TEXT PRIMARY KEY,
    volume_id  TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE INDEX volume_snapshots_volume ON volume_snapshots(volume_id);

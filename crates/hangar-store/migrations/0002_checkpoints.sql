-- Checkpoints of machines' writable layers. The snapshot itself lives with the
-- runtime driver under the checkpoint's id; this is what the API lists.
CREATE TABLE checkpoints (
    id            TEXT PRIMARY KEY,
    machine_id    TEXT NOT NULL,
    name          TEXT NOT NULL,
    machine_state TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE UNIQUE INDEX checkpoints_machine_name ON checkpoints(machine_id, name);

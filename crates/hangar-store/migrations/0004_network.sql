-- The private network: installation-wide settings (the ULA prefix, the IPv4 range),
-- one slot per org, one address per machine, and each app's egress policy.
CREATE TABLE network_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE network_orgs (
    org  TEXT PRIMARY KEY,
    slot INTEGER NOT NULL UNIQUE
);

-- An address is held from create to destroy; stop, start and restarts keep it.
CREATE TABLE network_addresses (
    machine_id TEXT PRIMARY KEY,
    app        TEXT NOT NULL,
    org        TEXT NOT NULL REFERENCES network_orgs(org),
    host       INTEGER NOT NULL,
    UNIQUE (org, host)
);

CREATE TABLE app_egress (
    app    TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);

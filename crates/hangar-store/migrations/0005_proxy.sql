-- MCP session affinity: the machine that answered with an `Mcp-Session-Id` keeps
-- that session, across daemon restarts, until it is destroyed.
CREATE TABLE mcp_sessions (
    app        TEXT NOT NULL,
    session_id TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    PRIMARY KEY (app, session_id)
);

CREATE INDEX mcp_sessions_machine ON mcp_sessions (machine_id);

//! MCP session affinity for the edge proxy: which machine answered a request with an
//! `Mcp-Session-Id`, kept in the store so a session still reaches the machine that
//! holds it in memory after the daemon restarts. A destroyed machine's sessions go
//! with it.

use super::Service;
use crate::error::Result;
use crate::ids::MachineId;

impl Service {
    /// The machine holding MCP session `session` of `app`, if one was recorded.
    pub async fn mcp_session_machine(&self, app: &str, session: &str) -> Result<Option<MachineId>> {
        Ok(self.store.get_mcp_session(app, session).await?)
    }

    /// Records that `machine` created (or now holds) MCP session `session` of `app`.
    pub async fn remember_mcp_session(
        &self,
        app: &str,
        session: &str,
        machine: &MachineId,
    ) -> Result<()> {
        Ok(self.store.set_mcp_session(app, session, machine).await?)
    }

    /// Forgets the machine's MCP sessions (after it is destroyed). Failures are
    /// logged: a stale entry only makes its session's requests fail with a 503.
    pub(super) async fn forget_mcp_sessions(&self, id: &MachineId) {
        if let Err(err) = self.store.delete_mcp_sessions(id).await {
            tracing::warn!(machine = %id, %err, "could not forget the machine's MCP sessions");
        }
    }
}

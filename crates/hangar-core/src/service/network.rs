//! The private network, from the service layer's side: allocating a machine's
//! addresses in the store, telling the [`Network`](crate::network::Network) what
//! exists, and apps' egress policies.

use std::net::{Ipv4Addr, Ipv6Addr};

use hangar_types::{EgressMode, EgressPolicy, ErrorCode};

use super::Service;
use crate::driver::SandboxSpec;
use crate::error::{Error, Result};
use crate::ids::MachineId;
use crate::model::MachineRecord;
use crate::network::{MachineNet, NetView, NetworkError};
use crate::state::MachineState;
use crate::store::AddressRecord;

impl Service {
    /// The sandbox spec of `machine`, with its private interface when the host has a
    /// network. Allocates the machine's addresses on first use; later calls (start
    /// after a lost sandbox, restore, fork) get the same ones.
    pub(super) async fn sandbox_spec(&self, machine: &MachineRecord) -> Result<SandboxSpec> {
        let mut spec = super::machines::bare_spec(machine);
        if let Some(net) = self.machine_net(machine).await? {
            spec.network = self.network.spec(&net);
        }
        Ok(spec)
    }

    /// Allocates (or finds) the machine's addresses; `None` without a network.
    async fn machine_net(&self, machine: &MachineRecord) -> Result<Option<MachineNet>> {
        let (max_slot, max_host) = self.network.capacity();
        if max_slot == 0 {
            return Ok(None);
        }
        let org = self.app_record(&machine.app).await?.org_slug;
        let Some(record) = self
            .store
            .allocate_address(&machine.id, &machine.app, &org, max_slot, max_host)
            .await?
        else {
            return Err(Error::request(
                ErrorCode::InvalidConfig,
                format!(
                    "the private network has no free address for org {org:?}: destroy machines you no longer need, or give the daemon a larger --private-ipv4-range"
                ),
            ));
        };
        Ok(self.net_of(&record, machine.state == MachineState::Started))
    }

    fn net_of(&self, a: &AddressRecord, started: bool) -> Option<MachineNet> {
        let (ipv4, ipv6) = self.network.addresses(a.slot, a.host)?;
        Some(MachineNet {
            machine_id: a.machine_id.clone(),
            app: a.app.clone(),
            org: a.org.clone(),
            ipv4,
            ipv6,
            started,
        })
    }

    /// The machine's private addresses, if it has any.
    pub(super) async fn addresses_of(
        &self,
        id: &MachineId,
    ) -> Result<Option<(Ipv4Addr, Ipv6Addr)>> {
        Ok(match self.store.get_address(id).await? {
            Some(a) => self.network.addresses(a.slot, a.host),
            None => None,
        })
    }

    /// Frees the machine's addresses (after its sandbox is gone).
    pub(super) async fn release_address(&self, id: &MachineId) {
        if let Err(err) = self.store.release_address(id).await {
            tracing::warn!(machine = %id, %err, "could not release the machine's address");
        }
    }

    /// Brings the firewall and DNS in line with the store. Failures are logged: the
    /// machines keep what they had.
    pub async fn sync_network(&self) -> Result<()> {
        if self.network.capacity().0 == 0 {
            return Ok(());
        }
        let addresses = self.store.list_addresses().await?;
        let machines = self.store.list_machines(None, false).await?;
        let started: std::collections::HashSet<_> = machines
            .iter()
            .filter(|m| m.state == MachineState::Started)
            .map(|m| m.id.clone())
            .collect();
        let mut view = NetView::default();
        for a in &addresses {
            if !view.orgs.iter().any(|(o, _)| *o == a.org) {
                view.orgs.push((a.org.clone(), a.slot));
            }
            if let Some(net) = self.net_of(a, started.contains(&a.machine_id)) {
                view.machines.push(net);
            }
        }
        for (app, policy) in self.store.list_egress().await? {
            let Ok(policy) = serde_json::from_str::<EgressPolicy>(&policy) else {
                tracing::warn!(%app, "ignoring an unreadable egress policy");
                continue;
            };
            let org = match self.store.get_app(&app).await? {
                Some(a) => a.org_slug,
                None => continue,
            };
            view.egress.push((app, org, policy));
        }
        self.network.sync(view).await.map_err(|e| match e {
            NetworkError::Invalid(m) => Error::bad_request(m),
            NetworkError::Host(m) => Error::Internal(format!("updating the private network: {m}")),
        })
    }

    /// Logs instead of failing: for callers whose own work already succeeded.
    pub(super) async fn sync_network_logged(&self) {
        if let Err(err) = self.sync_network().await {
            tracing::error!(error = %err, "syncing the private network");
        }
    }

    pub async fn get_egress(&self, app: &str) -> Result<EgressPolicy> {
        self.app_record(app).await?;
        Ok(match self.store.get_egress(app).await? {
            Some(p) => serde_json::from_str(&p).map_err(|e| Error::Internal(e.to_string()))?,
            None => EgressPolicy::default(),
        })
    }

    /// Replaces the app's egress policy; running machines follow at once.
    pub async fn set_egress(&self, app: &str, mut policy: EgressPolicy) -> Result<EgressPolicy> {
        self.app_record(app).await?;
        self.network
            .validate_egress(&policy)
            .map_err(|e| Error::bad_request(e.to_string()))?;
        if policy.policy != EgressMode::Allowlist {
            policy.allow.clear();
        }
        let json = serde_json::to_string(&policy).map_err(|e| Error::Internal(e.to_string()))?;
        let before = self.store.get_egress(app).await?;
        self.store.set_egress(app, &json).await?;
        if let Err(err) = self.sync_network().await {
            // Keep the store and the firewall telling the same story.
            match before {
                Some(p) => self.store.set_egress(app, &p).await?,
                None => self.store.set_egress(app, "{\"policy\":\"allow\"}").await?,
            }
            return Err(err);
        }
        Ok(policy)
    }
}

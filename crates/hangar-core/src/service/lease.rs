//! Leases: a caller's claim on a machine that others' mutations must respect.

use chrono::{Duration as ChronoDuration, Utc};
use hangar_types::{ErrorCode, Lease};

use super::{Caller, Service};
use crate::error::{Error, Result};
use crate::ids::{instance_id, random_hex};
use crate::model::{LeaseRecord, MachineRecord};

const DEFAULT_LEASE_TTL: u64 = 60;
const MAX_LEASE_TTL: u64 = 24 * 3600;

impl Service {
    /// Takes (or, with the current nonce, extends) the machine's lease.
    pub async fn create_lease(
        &self,
        app: &str,
        id: &str,
        ttl: Option<u64>,
        description: Option<String>,
        caller: &Caller,
    ) -> Result<Lease> {
        let ttl = ttl.unwrap_or(DEFAULT_LEASE_TTL);
        if ttl == 0 || ttl > MAX_LEASE_TTL {
            return Err(Error::bad_request(format!(
                "lease ttl {ttl} is out of range: use 1 to {MAX_LEASE_TTL} seconds"
            )));
        }
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        let lease = match self.active_lease(&machine) {
            Some(current) if caller.lease_nonce.as_deref() == Some(current.nonce.as_str()) => {
                let mut extended = current.clone();
                extended.expires_at = Utc::now() + ChronoDuration::seconds(ttl as i64);
                if let Some(description) = description {
                    extended.description = description;
                }
                extended
            }
            Some(current) => return Err(lease_held(&machine, current)),
            None => self.new_lease(&machine, ttl, description),
        };
        machine.lease = Some(lease.clone());
        self.store.update_machine(&machine).await?;
        Ok(lease.to_api())
    }

    pub async fn get_lease(&self, app: &str, id: &str) -> Result<Lease> {
        let machine = self.live_machine(app, id).await?;
        self.active_lease(&machine)
            .map(LeaseRecord::to_api)
            .ok_or_else(|| {
                Error::request(
                    ErrorCode::LeaseNotFound,
                    format!("machine {id} has no active lease"),
                )
            })
    }

    /// Releases the lease; the caller must present its nonce.
    pub async fn release_lease(&self, app: &str, id: &str, caller: &Caller) -> Result<()> {
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        let Some(current) = self.active_lease(&machine) else {
            return Ok(());
        };
        if caller.lease_nonce.as_deref() != Some(current.nonce.as_str()) {
            return Err(lease_mismatch(&machine));
        }
        machine.lease = None;
        self.store.update_machine(&machine).await?;
        Ok(())
    }

    pub(super) fn new_lease(
        &self,
        machine: &MachineRecord,
        ttl: u64,
        description: Option<String>,
    ) -> LeaseRecord {
        LeaseRecord {
            nonce: random_hex(16),
            owner: "api".to_string(),
            description: description.unwrap_or_default(),
            expires_at: Utc::now() + ChronoDuration::seconds(ttl.min(MAX_LEASE_TTL) as i64),
            version: format!("{}-{}", machine.id, instance_id()),
        }
    }

    fn active_lease<'a>(&self, machine: &'a MachineRecord) -> Option<&'a LeaseRecord> {
        machine.lease.as_ref().filter(|l| l.is_active(Utc::now()))
    }

    /// Refuses a mutation while someone else holds the lease.
    pub(super) fn check_lease(&self, machine: &MachineRecord, caller: &Caller) -> Result<()> {
        match (self.active_lease(machine), caller.lease_nonce.as_deref()) {
            (None, _) => Ok(()),
            (Some(lease), Some(nonce)) if lease.nonce == nonce => Ok(()),
            (Some(lease), None) => Err(lease_held(machine, lease)),
            (Some(_), Some(_)) => Err(lease_mismatch(machine)),
        }
    }
}

fn lease_held(machine: &MachineRecord, lease: &LeaseRecord) -> Error {
    Error::request(
        ErrorCode::LeaseHeld,
        format!(
            "machine {} is leased until {}; pass the lease nonce in the fly-machine-lease-nonce header, or wait for the lease to expire",
            machine.id,
            crate::model::rfc3339(lease.expires_at)
        ),
    )
}

fn lease_mismatch(machine: &MachineRecord) -> Error {
    Error::request(
        ErrorCode::LeaseMismatch,
        format!(
            "the fly-machine-lease-nonce given does not match machine {}'s lease; get the current lease with GET .../lease",
            machine.id
        ),
    )
}

//! hangar's persistent state in SQLite: apps, machines, events, checkpoints, volumes.
//!
//! Implements [`hangar_core::store::Store`] and nothing else: no lifecycle rules live
//! here. The database runs in WAL mode, so a daemon killed at any instant finds every
//! committed write on restart.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hangar_core::MachineId;
use hangar_core::model::{
    AppRecord, CheckpointRecord, EventRecord, MachineRecord, VolumeRecord, VolumeSnapshotRecord,
};
use hangar_core::state::MachineState;
use hangar_core::store::{AddressRecord, Store, StoreError, StoreResult};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(backend)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(SqliteStore { pool })
    }
}

fn backend(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Backend(err.to_string()),
    }
}

fn json_err(err: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("corrupt JSON column: {err}"))
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn time(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(n)
}

fn app_from_row(row: &SqliteRow) -> StoreResult<AppRecord> {
    Ok(AppRecord {
        id: row.try_get("id").map_err(backend)?,
        name: row.try_get("name").map_err(backend)?,
        org_slug: row.try_get("org_slug").map_err(backend)?,
        created_at: time(row.try_get("created_at").map_err(backend)?),
    })
}

fn machine_from_row(row: &SqliteRow) -> StoreResult<MachineRecord> {
    let get = |col: &str| -> StoreResult<String> { row.try_get::<String, _>(col).map_err(backend) };
    let id = get("id")?;
    let lease: Option<String> = row.try_get("lease").map_err(backend)?;
    Ok(MachineRecord {
        id: MachineId::parse(&id)
            .ok_or_else(|| StoreError::Backend(format!("bad machine id {id:?}")))?,
        app: get("app")?,
        name: get("name")?,
        state: MachineState::from_str(&get("state")?).map_err(StoreError::Backend)?,
        instance_id: get("instance_id")?,
        private_ip: get("private_ip")?,
        config: serde_json::from_str(&get("config")?).map_err(json_err)?,
        image_ref: serde_json::from_str(&get("image_ref")?).map_err(json_err)?,
        image: serde_json::from_str(&get("image")?).map_err(json_err)?,
        lease: lease
            .map(|l| serde_json::from_str(&l))
            .transpose()
            .map_err(json_err)?,
        restart_count: row.try_get::<i64, _>("restart_count").map_err(backend)? as u32,
        created_at: time(row.try_get("created_at").map_err(backend)?),
        updated_at: time(row.try_get("updated_at").map_err(backend)?),
    })
}

struct MachineColumns {
    config: String,
    image_ref: String,
    image: String,
    lease: Option<String>,
}

fn machine_columns(m: &MachineRecord) -> StoreResult<MachineColumns> {
    Ok(MachineColumns {
        config: serde_json::to_string(&m.config).map_err(json_err)?,
        image_ref: serde_json::to_string(&m.image_ref).map_err(json_err)?,
        image: serde_json::to_string(&m.image).map_err(json_err)?,
        lease: m
            .lease
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(json_err)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_app(&self, app: &AppRecord) -> StoreResult<()> {
        sqlx::query("INSERT INTO apps (id, name, org_slug, created_at) VALUES (?, ?, ?, ?)")
            .bind(&app.id)
            .bind(&app.name)
            .bind(&app.org_slug)
            .bind(nanos(app.created_at))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_app(&self, name: &str) -> StoreResult<Option<AppRecord>> {
        let row = sqlx::query("SELECT * FROM apps WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(app_from_row).transpose()
    }

    async fn list_apps(&self, org_slug: Option<&str>) -> StoreResult<Vec<AppRecord>> {
        let rows =
            sqlx::query("SELECT * FROM apps WHERE ?1 IS NULL OR org_slug = ?1 ORDER BY name")
                .bind(org_slug)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter().map(app_from_row).collect()
    }

    async fn delete_app(&self, name: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM app_egress WHERE app = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM apps WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn insert_machine(&self, m: &MachineRecord) -> StoreResult<()> {
        let c = machine_columns(m)?;
        sqlx::query(
            "INSERT INTO machines (id, app, name, state, instance_id, private_ip, config, image_ref, image, lease, restart_count, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(m.id.as_str())
        .bind(&m.app)
        .bind(&m.name)
        .bind(m.state.as_str())
        .bind(&m.instance_id)
        .bind(&m.private_ip)
        .bind(c.config)
        .bind(c.image_ref)
        .bind(c.image)
        .bind(c.lease)
        .bind(i64::from(m.restart_count))
        .bind(nanos(m.created_at))
        .bind(nanos(m.updated_at))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn update_machine(&self, m: &MachineRecord) -> StoreResult<()> {
        let c = machine_columns(m)?;
        sqlx::query(
            "UPDATE machines SET name = ?, state = ?, instance_id = ?, private_ip = ?, config = ?, image_ref = ?,
             image = ?, lease = ?, restart_count = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&m.name)
        .bind(m.state.as_str())
        .bind(&m.instance_id)
        .bind(&m.private_ip)
        .bind(c.config)
        .bind(c.image_ref)
        .bind(c.image)
        .bind(c.lease)
        .bind(i64::from(m.restart_count))
        .bind(nanos(m.updated_at))
        .bind(m.id.as_str())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn get_machine(&self, id: &MachineId) -> StoreResult<Option<MachineRecord>> {
        let row = sqlx::query("SELECT * FROM machines WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(machine_from_row).transpose()
    }

    async fn list_machines(
        &self,
        app: Option<&str>,
        include_destroyed: bool,
    ) -> StoreResult<Vec<MachineRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM machines WHERE (?1 IS NULL OR app = ?1) AND (?2 OR state != 'destroyed') ORDER BY created_at",
        )
        .bind(app)
        .bind(include_destroyed)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(machine_from_row).collect()
    }

    async fn delete_machine(&self, id: &MachineId) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("DELETE FROM events WHERE machine_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM checkpoints WHERE machine_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM mcp_sessions WHERE machine_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM machines WHERE id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn insert_event(&self, e: &EventRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO events (id, machine_id, kind, status, source, timestamp, request) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.id)
        .bind(e.machine_id.as_str())
        .bind(&e.kind)
        .bind(&e.status)
        .bind(&e.source)
        .bind(e.timestamp.timestamp_millis())
        .bind(serde_json::to_string(&e.request).map_err(json_err)?)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn list_events(&self, id: &MachineId, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let rows =
            sqlx::query("SELECT * FROM events WHERE machine_id = ? ORDER BY seq DESC LIMIT ?")
                .bind(id.as_str())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let request: String = row.try_get("request").map_err(backend)?;
                Ok(EventRecord {
                    id: row.try_get("id").map_err(backend)?,
                    machine_id: id.clone(),
                    kind: row.try_get("kind").map_err(backend)?,
                    status: row.try_get("status").map_err(backend)?,
                    source: row.try_get("source").map_err(backend)?,
                    timestamp: DateTime::from_timestamp_millis(
                        row.try_get("timestamp").map_err(backend)?,
                    )
                    .unwrap_or_default(),
                    request: serde_json::from_str(&request).map_err(json_err)?,
                })
            })
            .collect()
    }

    async fn insert_checkpoint(&self, c: &CheckpointRecord) -> StoreResult<()> {
        self.checkpoint_insert(c).await
    }

    async fn get_checkpoint(&self, id: &str) -> StoreResult<Option<CheckpointRecord>> {
        let row = sqlx::query("SELECT * FROM checkpoints WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }

    async fn list_checkpoints(&self, machine: &MachineId) -> StoreResult<Vec<CheckpointRecord>> {
        let rows =
            sqlx::query("SELECT * FROM checkpoints WHERE machine_id = ? ORDER BY created_at, id")
                .bind(machine.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    async fn delete_checkpoint(&self, id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM checkpoints WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn insert_volume(&self, v: &VolumeRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO volumes (id, app, name, size_gb, snapshot_retention, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&v.id)
        .bind(&v.app)
        .bind(&v.name)
        .bind(v.size_gb as i64)
        .bind(v.snapshot_retention)
        .bind(nanos(v.created_at))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn update_volume(&self, v: &VolumeRecord) -> StoreResult<()> {
        sqlx::query(
            "UPDATE volumes SET name = ?, size_gb = ?, snapshot_retention = ? WHERE id = ?",
        )
        .bind(&v.name)
        .bind(v.size_gb as i64)
        .bind(v.snapshot_retention)
        .bind(&v.id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn get_volume(&self, id: &str) -> StoreResult<Option<VolumeRecord>> {
        let row = sqlx::query("SELECT * FROM volumes WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(volume_from_row).transpose()
    }

    async fn list_volumes(&self, app: &str) -> StoreResult<Vec<VolumeRecord>> {
        let rows = sqlx::query("SELECT * FROM volumes WHERE app = ? ORDER BY created_at, id")
            .bind(app)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(volume_from_row).collect()
    }

    async fn delete_volume(&self, id: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("DELETE FROM volume_snapshots WHERE volume_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM volumes WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn insert_volume_snapshot(&self, s: &VolumeSnapshotRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO volume_snapshots (id, volume_id, size, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(&s.volume_id)
        .bind(s.size as i64)
        .bind(nanos(s.created_at))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn get_volume_snapshot(&self, id: &str) -> StoreResult<Option<VolumeSnapshotRecord>> {
        let row = sqlx::query("SELECT * FROM volume_snapshots WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(volume_snapshot_from_row).transpose()
    }

    async fn list_volume_snapshots(&self, volume: &str) -> StoreResult<Vec<VolumeSnapshotRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM volume_snapshots WHERE volume_id = ? ORDER BY created_at, id",
        )
        .bind(volume)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(volume_snapshot_from_row).collect()
    }
    async fn network_setting_or_insert(&self, key: &str, value: &str) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO network_settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let row = sqlx::query("SELECT value FROM network_settings WHERE key = ?")
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        row.try_get("value").map_err(backend)
    }

    async fn allocate_address(
        &self,
        machine: &MachineId,
        app: &str,
        org: &str,
        max_slot: u32,
        max_host: u32,
    ) -> StoreResult<Option<AddressRecord>> {
        if let Some(found) = self.get_address(machine).await? {
            return Ok(Some(found));
        }
        // One writer at a time: BEGIN IMMEDIATE takes SQLite's write lock up front, so
        // two creates never pick the same free host.
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        let result = async {
            let slot: Option<i64> =
                sqlx::query_scalar("SELECT slot FROM network_orgs WHERE org = ?")
                    .bind(org)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(backend)?;
            let slot = match slot {
                Some(slot) => slot,
                None => {
                    let taken: Vec<i64> =
                        sqlx::query_scalar("SELECT slot FROM network_orgs ORDER BY slot")
                            .fetch_all(&mut *conn)
                            .await
                            .map_err(backend)?;
                    let Some(free) = lowest_free(&taken, max_slot) else {
                        return Ok(None);
                    };
                    sqlx::query("INSERT INTO network_orgs (org, slot) VALUES (?, ?)")
                        .bind(org)
                        .bind(free)
                        .execute(&mut *conn)
                        .await
                        .map_err(backend)?;
                    free
                }
            };
            let taken: Vec<i64> = sqlx::query_scalar(
                "SELECT host FROM network_addresses WHERE org = ? ORDER BY host",
            )
            .bind(org)
            .fetch_all(&mut *conn)
            .await
            .map_err(backend)?;
            let Some(host) = lowest_free(&taken, max_host) else {
                return Ok(None);
            };
            sqlx::query(
                "INSERT INTO network_addresses (machine_id, app, org, host) VALUES (?, ?, ?, ?)",
            )
            .bind(machine.as_str())
            .bind(app)
            .bind(org)
            .bind(host)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
            Ok(Some(AddressRecord {
                machine_id: machine.clone(),
                app: app.to_string(),
                org: org.to_string(),
                slot: slot as u32,
                host: host as u32,
            }))
        }
        .await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        result
    }

    async fn get_address(&self, machine: &MachineId) -> StoreResult<Option<AddressRecord>> {
        let row = sqlx::query(
            "SELECT a.machine_id, a.app, a.org, o.slot, a.host FROM network_addresses a
             JOIN network_orgs o ON o.org = a.org WHERE a.machine_id = ?",
        )
        .bind(machine.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(address_from_row).transpose()
    }

    async fn list_addresses(&self) -> StoreResult<Vec<AddressRecord>> {
        let rows = sqlx::query(
            "SELECT a.machine_id, a.app, a.org, o.slot, a.host FROM network_addresses a
             JOIN network_orgs o ON o.org = a.org ORDER BY o.slot, a.host",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(address_from_row).collect()
    }

    async fn release_address(&self, machine: &MachineId) -> StoreResult<()> {
        sqlx::query("DELETE FROM network_addresses WHERE machine_id = ?")
            .bind(machine.as_str())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_egress(&self, app: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT policy FROM app_egress WHERE app = ?")
            .bind(app)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn set_egress(&self, app: &str, policy: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO app_egress (app, policy) VALUES (?, ?) ON CONFLICT(app) DO UPDATE SET policy = excluded.policy")
            .bind(app)
            .bind(policy)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn list_egress(&self) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT app, policy FROM app_egress ORDER BY app")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("app").map_err(backend)?,
                    r.try_get("policy").map_err(backend)?,
                ))
            })
            .collect()
    }

    async fn get_mcp_session(&self, app: &str, session: &str) -> StoreResult<Option<MachineId>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT machine_id FROM mcp_sessions WHERE app = ? AND session_id = ?",
        )
        .bind(app)
        .bind(session)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(id.and_then(|id| MachineId::parse(&id)))
    }

    async fn set_mcp_session(
        &self,
        app: &str,
        session: &str,
        machine: &MachineId,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO mcp_sessions (app, session_id, machine_id) VALUES (?, ?, ?)
             ON CONFLICT(app, session_id) DO UPDATE SET machine_id = excluded.machine_id",
        )
        .bind(app)
        .bind(session)
        .bind(machine.as_str())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn delete_mcp_sessions(&self, machine: &MachineId) -> StoreResult<()> {
        sqlx::query("DELETE FROM mcp_sessions WHERE machine_id = ?")
            .bind(machine.as_str())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// The lowest number in `1..=max` not in `taken` (sorted ascending).
fn lowest_free(taken: &[i64], max: u32) -> Option<i64> {
    let mut want = 1i64;
    for &t in taken {
        if t == want {
            want += 1;
        } else if t > want {
            break;
        }
    }
    (want <= i64::from(max)).then_some(want)
}

fn address_from_row(row: &SqliteRow) -> StoreResult<AddressRecord> {
    let id: String = row.try_get("machine_id").map_err(backend)?;
    let slot: i64 = row.try_get("slot").map_err(backend)?;
    let host: i64 = row.try_get("host").map_err(backend)?;
    Ok(AddressRecord {
        machine_id: MachineId::parse(&id)
            .ok_or_else(|| StoreError::Backend(format!("bad machine id {id:?}")))?,
        app: row.try_get("app").map_err(backend)?,
        org: row.try_get("org").map_err(backend)?,
        slot: slot as u32,
        host: host as u32,
    })
}

fn volume_from_row(row: &SqliteRow) -> StoreResult<VolumeRecord> {
    Ok(VolumeRecord {
        id: row.try_get("id").map_err(backend)?,
        app: row.try_get("app").map_err(backend)?,
        name: row.try_get("name").map_err(backend)?,
        size_gb: row.try_get::<i64, _>("size_gb").map_err(backend)? as u64,
        snapshot_retention: row.try_get("snapshot_retention").map_err(backend)?,
        created_at: time(row.try_get("created_at").map_err(backend)?),
    })
}

fn volume_snapshot_from_row(row: &SqliteRow) -> StoreResult<VolumeSnapshotRecord> {
    Ok(VolumeSnapshotRecord {
        id: row.try_get("id").map_err(backend)?,
        volume_id: row.try_get("volume_id").map_err(backend)?,
        size: row.try_get::<i64, _>("size").map_err(backend)? as u64,
        created_at: time(row.try_get("created_at").map_err(backend)?),
    })
}

fn checkpoint_from_row(row: &SqliteRow) -> StoreResult<CheckpointRecord> {
    let get = |col: &str| -> StoreResult<String> { row.try_get::<String, _>(col).map_err(backend) };
    let machine = get("machine_id")?;
    Ok(CheckpointRecord {
        id: get("id")?,
        machine_id: MachineId::parse(&machine)
            .ok_or_else(|| StoreError::Backend(format!("bad machine id {machine:?}")))?,
        name: get("name")?,
        machine_state: MachineState::from_str(&get("machine_state")?)
            .map_err(StoreError::Backend)?,
        created_at: time(row.try_get("created_at").map_err(backend)?),
    })
}

impl SqliteStore {
    async fn checkpoint_insert(&self, c: &CheckpointRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO checkpoints (id, machine_id, name, machine_state, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&c.id)
        .bind(c.machine_id.as_str())
        .bind(&c.name)
        .bind(c.machine_state.as_str())
        .bind(nanos(c.created_at))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::ids::instance_id;
    use hangar_core::model::MachineImage;

    fn machine(app: &str, name: &str) -> MachineRecord {
        let now = Utc::now();
        MachineRecord {
            id: MachineId::generate(),
            app: app.into(),
            name: name.into(),
            state: MachineState::Created,
            instance_id: instance_id(),
            private_ip: String::new(),
            config: serde_json::from_value(
                serde_json::json!({"image": "busybox", "services": [{"internal_port": 80}]}),
            )
            .unwrap(),
            image_ref: Default::default(),
            image: MachineImage::default(),
            lease: None,
            restart_count: 0,
            created_at: now,
            updated_at: now,
        }
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hangar.db"))
            .await
            .unwrap();
        store
            .insert_app(&AppRecord {
                id: "1".into(),
                name: "app".into(),
                org_slug: "personal".into(),
                created_at: Utc::now(),
            })
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn machines_round_trip_exactly() {
        let (_dir, store) = store().await;
        let m = machine("app", "one");
        store.insert_machine(&m).await.unwrap();
        assert_eq!(store.get_machine(&m.id).await.unwrap(), Some(m.clone()));
        let mut changed = m.clone();
        changed.state = MachineState::Starting;
        changed.updated_at = Utc::now();
        store.update_machine(&changed).await.unwrap();
        assert_eq!(store.get_machine(&m.id).await.unwrap(), Some(changed));
    }

    #[tokio::test]
    async fn names_are_unique_among_live_machines() {
        let (_dir, store) = store().await;
        let mut first = machine("app", "dup");
        store.insert_machine(&first).await.unwrap();
        assert!(matches!(
            store.insert_machine(&machine("app", "dup")).await,
            Err(StoreError::Conflict)
        ));
        first.state = MachineState::Destroyed;
        store.update_machine(&first).await.unwrap();
        store.insert_machine(&machine("app", "dup")).await.unwrap();
        assert_eq!(
            store.list_machines(Some("app"), false).await.unwrap().len(),
            1
        );
        assert_eq!(
            store.list_machines(Some("app"), true).await.unwrap().len(),
            2
        );
    }

    #[tokio::test]
    async fn volumes_and_snapshots_round_trip_and_go_together() {
        let (_dir, store) = store().await;
        let mut v = VolumeRecord {
            id: "vol_1".into(),
            app: "app".into(),
            name: "data".into(),
            size_gb: 1,
            snapshot_retention: 5,
            created_at: DateTime::from_timestamp_nanos(nanos(Utc::now())),
        };
        store.insert_volume(&v).await.unwrap();
        v.size_gb = 3;
        store.update_volume(&v).await.unwrap();
        assert_eq!(store.get_volume("vol_1").await.unwrap(), Some(v.clone()));
        assert_eq!(store.list_volumes("app").await.unwrap(), vec![v.clone()]);
        let snap = VolumeSnapshotRecord {
            id: "vs_1".into(),
            volume_id: "vol_1".into(),
            size: 1 << 30,
            created_at: v.created_at,
        };
        store.insert_volume_snapshot(&snap).await.unwrap();
        assert_eq!(
            store.list_volume_snapshots("vol_1").await.unwrap(),
            vec![snap.clone()]
        );
        store.delete_volume("vol_1").await.unwrap();
        assert_eq!(store.get_volume("vol_1").await.unwrap(), None);
        assert_eq!(store.get_volume_snapshot("vs_1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn reopening_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hangar.db");
        {
            let store = SqliteStore::open(&path).await.unwrap();
            store
                .insert_app(&AppRecord {
                    id: "1".into(),
                    name: "keep".into(),
                    org_slug: "o".into(),
                    created_at: Utc::now(),
                })
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        assert!(store.get_app("keep").await.unwrap().is_some());
        assert!(matches!(
            store
                .insert_app(&AppRecord {
                    id: "2".into(),
                    name: "keep".into(),
                    org_slug: "o".into(),
                    created_at: Utc::now()
                })
                .await,
            Err(StoreError::Conflict)
        ));
    }

    #[tokio::test]
    async fn mcp_sessions_survive_reopening_and_go_with_their_machine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hangar.db");
        let a = MachineId::parse(&format!("{:014x}", 1)).unwrap();
        let b = MachineId::parse(&format!("{:014x}", 2)).unwrap();
        {
            let store = SqliteStore::open(&path).await.unwrap();
            store.set_mcp_session("web", "s1", &a).await.unwrap();
            store.set_mcp_session("web", "s2", &b).await.unwrap();
            store.set_mcp_session("other", "s1", &b).await.unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            store.get_mcp_session("web", "s1").await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            store.get_mcp_session("other", "s1").await.unwrap(),
            Some(b.clone())
        );
        store.set_mcp_session("web", "s1", &b).await.unwrap();
        assert_eq!(
            store.get_mcp_session("web", "s1").await.unwrap(),
            Some(b.clone())
        );
        store.delete_mcp_sessions(&b).await.unwrap();
        assert_eq!(store.get_mcp_session("web", "s1").await.unwrap(), None);
        assert_eq!(store.get_mcp_session("web", "s2").await.unwrap(), None);
        assert_eq!(store.get_mcp_session("web", "nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn addresses_are_lowest_free_per_org_and_reused_after_release() {
        let (_dir, store) = store().await;
        let id = |n: u8| MachineId::parse(&format!("{n:014x}")).unwrap();
        let a = store
            .allocate_address(&id(1), "web", "acme", 3, 2)
            .await
            .unwrap()
            .unwrap();
        let b = store
            .allocate_address(&id(2), "web", "acme", 3, 2)
            .await
            .unwrap()
            .unwrap();
        let c = store
            .allocate_address(&id(3), "db", "other", 3, 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.slot, a.host), (1, 1));
        assert_eq!((b.slot, b.host), (1, 2));
        assert_eq!((c.slot, c.host), (2, 1));
        // Asking again gives the same address; a full org gets none.
        assert_eq!(
            store
                .allocate_address(&id(1), "web", "acme", 3, 2)
                .await
                .unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            store
                .allocate_address(&id(4), "web", "acme", 3, 2)
                .await
                .unwrap(),
            None
        );
        store.release_address(&id(1)).await.unwrap();
        let d = store
            .allocate_address(&id(4), "web", "acme", 3, 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((d.slot, d.host), (1, 1));
        assert_eq!(store.list_addresses().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn network_settings_keep_the_first_value() {
        let (_dir, store) = store().await;
        assert_eq!(
            store.network_setting_or_insert("k", "one").await.unwrap(),
            "one"
        );
        assert_eq!(
            store.network_setting_or_insert("k", "two").await.unwrap(),
            "one"
        );
    }

    proptest::proptest! {
        #[test]
        fn lowest_free_is_the_smallest_gap(mut taken in proptest::collection::btree_set(1i64..40, 0..40), max in 1u32..45) {
            let taken: Vec<i64> = std::mem::take(&mut taken).into_iter().collect();
            let got = super::lowest_free(&taken, max);
            let want = (1..=i64::from(max)).find(|n| !taken.contains(n));
            proptest::prop_assert_eq!(got, want);
        }
    }
}

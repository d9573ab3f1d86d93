//! Apps: create, list, get, delete.

use chrono::Utc;
use hangar_types::{App, CreateAppRequest, ErrorCode, ListApp, ListAppsResponse, Organization};

use super::{Caller, Service};
use crate::error::{Error, Result};
use crate::ids::random_hex;
use crate::model::AppRecord;
use crate::store::StoreError;

/// App names are DNS labels: they become `<app>.<base-domain>` and `<app>.internal`.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "{kind} {name:?} is not valid: use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'"
        )))
    }
}

impl Service {
    pub async fn create_app(&self, req: CreateAppRequest) -> Result<App> {
        validate_name("app_name", &req.app_name)?;
        let org = req
            .org_slug
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.options.default_org.clone());
        validate_name("org_slug", &org)?;
        let record = AppRecord {
            id: random_hex(8),
            name: req.app_name,
            org_slug: org,
            created_at: Utc::now(),
        };
        match self.store.insert_app(&record).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(Error::request(
                    ErrorCode::AppExists,
                    format!(
                        "app {:?} already exists; pick another name or use it",
                        record.name
                    ),
                ));
            }
            Err(err) => return Err(err.into()),
        }
        Ok(self.app_view(&record, 0))
    }

    pub async fn get_app(&self, name: &str) -> Result<App> {
        let record = self.app_record(name).await?;
        let count = self.store.list_machines(Some(name), false).await?.len() as u64;
        Ok(self.app_view(&record, count))
    }

    pub async fn list_apps(&self, org_slug: Option<&str>) -> Result<ListAppsResponse> {
        let records = self.store.list_apps(org_slug).await?;
        let mut apps = Vec::with_capacity(records.len());
        for record in records {
            let count = self
                .store
                .list_machines(Some(&record.name), false)
                .await?
                .len() as u64;
            apps.push(ListApp {
                id: record.id,
                name: record.name,
                machine_count: count,
                network: serde_json::Value::String("default".into()),
            });
        }
        Ok(ListAppsResponse {
            total_apps: apps.len() as u64,
            apps,
        })
    }

    /// Deletes an app, destroying its machines and then its volumes first.
    pub async fn delete_app(&self, name: &str) -> Result<()> {
        self.app_record(name).await?;
        for machine in self.store.list_machines(Some(name), false).await? {
            self.destroy_machine(name, machine.id.as_str(), true, &Caller::default())
                .await?;
        }
        self.remove_app_volumes(name).await?;
        for machine in self.store.list_machines(Some(name), true).await? {
            self.store.delete_machine(&machine.id).await?;
        }
        self.store.delete_app(name).await?;
        Ok(())
    }

    pub(super) async fn app_record(&self, name: &str) -> Result<AppRecord> {
        self.store.get_app(name).await?.ok_or_else(|| {
            Error::request(
                ErrorCode::AppNotFound,
                format!("app {name:?} was not found; create it with POST /v1/apps or `hangar app create {name}`"),
            )
        })
    }

    fn app_view(&self, record: &AppRecord, machine_count: u64) -> App {
        App {
            id: record.id.clone(),
            name: record.name.clone(),
            organization: Organization {
                name: record.org_slug.clone(),
                slug: record.org_slug.clone(),
            },
            status: "deployed".to_string(),
            machine_count,
        }
    }
}

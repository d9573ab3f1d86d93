//! `expose`: adds or updates an HTTP service in a machine's config so the edge proxy
//! routes to it, without restarting the machine (the proxy reads services on every
//! request), and says at which URLs it is reachable.

use chrono::Utc;
use hangar_types::{ExposeRequest, ExposeResponse};
use serde_json::{Value, json};

use super::{Caller, Service};
use crate::config;
use crate::error::{Error, Result};

impl Service {
    pub async fn expose_machine(
        &self,
        app: &str,
        id: &str,
        req: ExposeRequest,
        caller: &Caller,
    ) -> Result<ExposeResponse> {
        if req.internal_port == 0 {
            return Err(Error::bad_request(
                "internal_port must be the port your server listens on, from 1 to 65535",
            ));
        }
        let autostop = req.autostop.as_deref().unwrap_or("off");
        if !["off", "stop", "suspend"].contains(&autostop) {
            return Err(Error::bad_request(format!(
                "autostop {autostop:?} is not known: use \"off\", \"stop\" or \"suspend\""
            )));
        }
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;

        let mut services = match machine.config.extra.get("services") {
            Some(Value::Array(list)) => list.clone(),
            _ => Vec::new(),
        };
        let service = json!({
            "protocol": "tcp",
            "internal_port": req.internal_port,
            "autostart": req.autostart.unwrap_or(true),
            "autostop": autostop,
            "ports": [
                {"port": 80, "handlers": ["http"]},
                {"port": 443, "handlers": ["tls", "http"]}
            ]
        });
        // The HTTP service goes first: the proxy serves the first one publishing a port.
        services.retain(|s| {
            s.get("internal_port").and_then(Value::as_u64) != Some(u64::from(req.internal_port))
        });
        services.insert(0, service);
        let mut config = machine.config.clone();
        config
            .extra
            .insert("services".to_string(), Value::Array(services));
        config::services(&config)?;
        machine.config = config;
        machine.updated_at = Utc::now();
        self.store.update_machine(&machine).await?;
        Ok(self.urls(app, &machine.id.to_string()))
    }

    fn urls(&self, app: &str, id: &str) -> ExposeResponse {
        let base = &self.options.base_domain;
        let port = |p: Option<u16>, default: u16| match p {
            Some(p) if p != default => format!(":{p}"),
            _ => String::new(),
        };
        let http = port(self.options.proxy_http_port, 80);
        ExposeResponse {
            url: format!("http://{app}.{base}{http}/"),
            machine_url: format!("http://{id}.{app}.{base}{http}/"),
            https_url: self
                .options
                .proxy_https_port
                .map(|p| format!("https://{app}.{base}{}/", port(Some(p), 443))),
        }
    }
}

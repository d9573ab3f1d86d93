//! A typed client of hangar's REST API, shared by the CLI, MCP over stdio and tests.
//!
//! It finds the API from `HANGAR_API` and authenticates with `HANGAR_TOKEN`, as every
//! hangar client does. API errors keep their stable code and sentence.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hangar_types::*;
use reqwest::RequestBuilder;
pub use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub const DEFAULT_API: &str = "127.0.0.1:4280";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error.
    #[error("{message} ({code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "cannot reach the hangar API at {url}: {reason}; is `hangar serve` running and HANGAR_API right?"
    )]
    Unreachable { url: String, reason: String },
    #[error("unexpected response from the API: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `api` is `host:port` or a URL.
    pub fn new(api: &str, token: &str) -> Self {
        let base = if api.starts_with("http://") || api.starts_with("https://") {
            api.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", api.trim_end_matches('/'))
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a client without TLS always builds");
        Client {
            base,
            token: token.to_string(),
            http,
        }
    }

    /// From `HANGAR_API` (default 127.0.0.1:4280) and `HANGAR_TOKEN`.
    pub fn from_env() -> Self {
        let api = std::env::var("HANGAR_API").unwrap_or_else(|_| DEFAULT_API.to_string());
        let token = std::env::var("HANGAR_TOKEN").unwrap_or_default();
        Client::new(&api, &token)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn send(&self, req: RequestBuilder) -> Result<reqwest::Response> {
        let response = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorResponse>(&body) {
            Ok(err) => ClientError::Api {
                status: status.as_u16(),
                code: err.code,
                message: err.error,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "http_error".into(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let response = self.send(req).await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&body))))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.json(body);
        }
        self.json(req).await
    }

    async fn call_empty<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<()> {
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.json(body);
        }
        self.send(req).await.map(drop)
    }

    pub async fn health(&self) -> Result<()> {
        self.send(self.http.get(format!("{}/healthz", self.base)))
            .await
            .map(drop)
    }

    // Apps.

    pub async fn create_app(&self, name: &str, org: Option<&str>) -> Result<App> {
        let req = CreateAppRequest {
            app_name: name.into(),
            org_slug: org.map(Into::into),
            network: None,
        };
        self.call(Method::POST, "/v1/apps", Some(&req)).await
    }

    pub async fn list_apps(&self) -> Result<ListAppsResponse> {
        self.call::<(), _>(Method::GET, "/v1/apps", None).await
    }

    pub async fn get_app(&self, name: &str) -> Result<App> {
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{name}"), None)
            .await
    }

    pub async fn delete_app(&self, name: &str) -> Result<()> {
        self.call_empty::<()>(Method::DELETE, &format!("/v1/apps/{name}"), None)
            .await
    }

    /// An app's egress policy.
    pub async fn get_egress(&self, app: &str) -> Result<EgressPolicy> {
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{app}/egress"), None)
            .await
    }

    /// Replaces an app's egress policy.
    pub async fn set_egress(&self, app: &str, policy: &EgressPolicy) -> Result<EgressPolicy> {
        self.call(Method::PUT, &format!("/v1/apps/{app}/egress"), Some(policy))
            .await
    }

    // Machines.

    pub async fn create_machine(&self, app: &str, req: &CreateMachineRequest) -> Result<Machine> {
        self.call(Method::POST, &format!("/v1/apps/{app}/machines"), Some(req))
            .await
    }

    pub async fn list_machines(&self, app: &str) -> Result<Vec<Machine>> {
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{app}/machines"), None)
            .await
    }

    pub async fn get_machine(&self, app: &str, id: &str) -> Result<Machine> {
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{app}/machines/{id}"), None)
            .await
    }

    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: &UpdateMachineRequest,
    ) -> Result<Machine> {
        self.call(
            Method::POST,
            &format!("/v1/apps/{app}/machines/{id}"),
            Some(req),
        )
        .await
    }

    pub async fn destroy_machine(&self, app: &str, id: &str, force: bool) -> Result<()> {
        self.call_empty::<()>(
            Method::DELETE,
            &format!("/v1/apps/{app}/machines/{id}?force={force}"),
            None,
        )
        .await
    }

    pub async fn start_machine(&self, app: &str, id: &str) -> Result<Value> {
        self.call::<(), _>(
            Method::POST,
            &format!("/v1/apps/{app}/machines/{id}/start"),
            None,
        )
        .await
    }

    /// Publishes `req.internal_port` of the machine through the edge proxy, without
    /// restarting it; returns the URLs it answers at.
    pub async fn expose(&self, app: &str, id: &str, req: &ExposeRequest) -> Result<ExposeResponse> {
        self.call(
            Method::POST,
            &format!("/v1/apps/{app}/machines/{id}/expose"),
            Some(req),
        )
        .await
    }

    pub async fn stop_machine(&self, app: &str, id: &str, req: &StopRequest) -> Result<()> {
        self.call_empty(
            Method::POST,
            &format!("/v1/apps/{app}/machines/{id}/stop"),
            Some(req),
        )
        .await
    }

    pub async fn restart_machine(&self, app: &str, id: &str) -> Result<()> {
        self.call_empty::<()>(
            Method::POST,
            &format!("/v1/apps/{app}/machines/{id}/restart"),
            None,
        )
        .await
    }

    pub async fn signal_machine(&self, app: &str, id: &str, signal: &str) -> Result<()> {
        let req = SignalRequest {
            signal: signal.into(),
        };
        self.call_empty(
            Method::POST,
            &format!("/v1/apps/{app}/machines/{id}/signal"),
            Some(&req),
        )
        .await
    }

    pub async fn suspend_machine(&self, app: &str, id: &str) -> Result<()> {
        self.call_empty::<()>(
            Method::POST,
            &format!("/v1/apps/{app}/machines/{id}/suspend"),
            None,
        )
        .await
    }

    /// Waits until the machine is in `state`, at most `timeout_secs`.
    pub async fn wait(&self, app: &str, id: &str, state: &str, timeout_secs: u64) -> Result<Value> {
        let path =
            format!("/v1/apps/{app}/machines/{id}/wait?state={state}&timeout={timeout_secs}");
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn exec(
        &self,
        app: &str,
        id: &str,
        req: &MachineExecRequest,
    ) -> Result<MachineExecResponse> {
        self.call(
            Method::POST,
            &format!("/v1/apps/{app}/machines/{id}/exec"),
            Some(req),
        )
        .await
    }

    pub async fn events(&self, app: &str, id: &str) -> Result<Vec<MachineEvent>> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/apps/{app}/machines/{id}/events"),
            None,
        )
        .await
    }

    pub async fn ps(&self, app: &str, id: &str) -> Result<Vec<ProcessStat>> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/apps/{app}/machines/{id}/ps"),
            None,
        )
        .await
    }

    pub async fn logs(&self, app: &str, id: &str, lines: usize) -> Result<Vec<LogLine>> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/apps/{app}/machines/{id}/logs?lines={lines}"),
            None,
        )
        .await
    }

    /// The tail, then new lines as they come, until the stream is dropped.
    pub async fn follow_logs(
        &self,
        app: &str,
        id: &str,
        lines: usize,
    ) -> Result<impl Stream<Item = Result<LogLine>> + use<>> {
        let path = format!("/v1/apps/{app}/machines/{id}/logs?follow=true&lines={lines}");
        let response = self.send(self.request(Method::GET, &path)).await?;
        Ok(sse_data(response.bytes_stream()).map(|data| {
            data.and_then(|d| {
                serde_json::from_str(&d).map_err(|e| ClientError::Protocol(e.to_string()))
            })
        }))
    }

    pub async fn create_lease(
        &self,
        app: &str,
        id: &str,
        ttl: u64,
        nonce: Option<&str>,
    ) -> Result<Lease> {
        let mut req = self
            .request(Method::POST, &format!("/v1/apps/{app}/machines/{id}/lease"))
            .json(&CreateLeaseRequest {
                ttl: Some(ttl),
                description: None,
            });
        if let Some(nonce) = nonce {
            req = req.header("fly-machine-lease-nonce", nonce);
        }
        self.json(req).await
    }

    // Checkpoints.

    pub async fn create_checkpoint(
        &self,
        app: &str,
        id: &str,
        name: Option<&str>,
    ) -> Result<Checkpoint> {
        let req = CreateCheckpointRequest {
            name: name.map(Into::into),
        };
        let path = format!("/v1/apps/{app}/machines/{id}/checkpoints");
        self.call(Method::POST, &path, Some(&req)).await
    }

    pub async fn list_checkpoints(&self, app: &str, id: &str) -> Result<Vec<Checkpoint>> {
        let path = format!("/v1/apps/{app}/machines/{id}/checkpoints");
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `checkpoint` is an id or a name.
    pub async fn get_checkpoint(
        &self,
        app: &str,
        id: &str,
        checkpoint: &str,
    ) -> Result<Checkpoint> {
        let path = format!(
            "/v1/apps/{app}/machines/{id}/checkpoints/{}",
            encode_segment(checkpoint)
        );
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn delete_checkpoint(&self, app: &str, id: &str, checkpoint: &str) -> Result<()> {
        let path = format!(
            "/v1/apps/{app}/machines/{id}/checkpoints/{}",
            encode_segment(checkpoint)
        );
        self.call_empty::<()>(Method::DELETE, &path, None).await
    }

    /// Puts the machine's root filesystem back to `checkpoint`; a started machine is
    /// restarted into it.
    pub async fn restore_checkpoint(
        &self,
        app: &str,
        id: &str,
        checkpoint: &str,
    ) -> Result<Checkpoint> {
        let path = format!(
            "/v1/apps/{app}/machines/{id}/checkpoints/{}/restore",
            encode_segment(checkpoint)
        );
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// What changed from `checkpoint` to `to` (another checkpoint, or the current
    /// state when `None`).
    pub async fn diff_checkpoint(
        &self,
        app: &str,
        id: &str,
        checkpoint: &str,
        to: Option<&str>,
    ) -> Result<CheckpointDiff> {
        let path = format!(
            "/v1/apps/{app}/machines/{id}/checkpoints/{}/diff?to={}",
            encode_segment(checkpoint),
            encode_segment(to.unwrap_or("current"))
        );
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn fork_machine(
        &self,
        app: &str,
        id: &str,
        req: &ForkMachineRequest,
    ) -> Result<ForkMachineResponse> {
        let path = format!("/v1/apps/{app}/machines/{id}/fork");
        self.call(Method::POST, &path, Some(req)).await
    }

    /// Records the machine (or one of its checkpoints) as a local image, and pushes
    /// it when asked.
    pub async fn commit_machine(
        &self,
        app: &str,
        id: &str,
        req: &CommitMachineRequest,
    ) -> Result<CommitMachineResponse> {
        let path = format!("/v1/apps/{app}/machines/{id}/commit");
        self.call(Method::POST, &path, Some(req)).await
    }

    // Files inside a machine, started or stopped.

    fn files_path(app: &str, id: &str, path: &str, extra: &str) -> String {
        format!(
            "/v1/apps/{app}/machines/{id}/files?path={}{extra}",
            encode_segment(path)
        )
    }

    /// A file's bytes and permission bits.
    pub async fn read_file(&self, app: &str, id: &str, path: &str) -> Result<FileContents> {
        let req = self.request(Method::GET, &Self::files_path(app, id, path, ""));
        let response = self.send(req).await?;
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if is_json {
            return Err(ClientError::Api {
                status: 409,
                code: "is_a_directory".into(),
                message: format!("{path:?} inside the machine is a directory; list it instead"),
            });
        }
        let mode = response
            .headers()
            .get("x-hangar-file-mode")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .unwrap_or(0);
        let contents = response
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_vec();
        Ok(FileContents { contents, mode })
    }

    pub async fn list_files(&self, app: &str, id: &str, path: &str) -> Result<Vec<FileEntry>> {
        let path = Self::files_path(app, id, path, "&list=true");
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// Creates or atomically replaces a file.
    pub async fn write_file(
        &self,
        app: &str,
        id: &str,
        path: &str,
        contents: Vec<u8>,
        options: &WriteFileOptions,
    ) -> Result<()> {
        let mut extra = String::new();
        if let Some(mode) = options.mode {
            extra.push_str(&format!("&mode={mode:04o}"));
        }
        if let Some(uid) = options.uid {
            extra.push_str(&format!("&uid={uid}"));
        }
        if let Some(gid) = options.gid {
            extra.push_str(&format!("&gid={gid}"));
        }
        if options.parents {
            extra.push_str("&parents=true");
        }
        let req = self
            .request(Method::PUT, &Self::files_path(app, id, path, &extra))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(contents);
        self.send(req).await.map(drop)
    }

    pub async fn make_dir(
        &self,
        app: &str,
        id: &str,
        path: &str,
        mode: Option<u32>,
        parents: bool,
    ) -> Result<()> {
        let mut extra = String::from("&mkdir=true");
        if let Some(mode) = mode {
            extra.push_str(&format!("&mode={mode:04o}"));
        }
        if parents {
            extra.push_str("&parents=true");
        }
        let path = Self::files_path(app, id, path, &extra);
        self.call_empty::<()>(Method::POST, &path, None).await
    }

    /// Removes a file or symlink, or with `recursive` a directory and its contents.
    pub async fn remove_file(
        &self,
        app: &str,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<()> {
        let extra = if recursive { "&recursive=true" } else { "" };
        let path = Self::files_path(app, id, path, extra);
        self.call_empty::<()>(Method::DELETE, &path, None).await
    }

    // Background jobs.

    /// Starts `req.command` in the machine and returns at once.
    pub async fn create_job(&self, app: &str, id: &str, req: &CreateJobRequest) -> Result<Job> {
        let path = format!("/v1/apps/{app}/machines/{id}/jobs");
        self.call(Method::POST, &path, Some(req)).await
    }

    pub async fn list_jobs(&self, app: &str, id: &str) -> Result<Vec<Job>> {
        let path = format!("/v1/apps/{app}/machines/{id}/jobs");
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// The job and its output from the cursors on; with `wait_secs`, after waiting
    /// that long (at most 50 s) for it to end.
    pub async fn get_job(
        &self,
        app: &str,
        id: &str,
        job: &str,
        cursor: u64,
        stderr_cursor: u64,
        wait_secs: Option<u64>,
    ) -> Result<Job> {
        let mut path = format!(
            "/v1/apps/{app}/machines/{id}/jobs/{}?cursor={cursor}&stderr_cursor={stderr_cursor}",
            encode_segment(job)
        );
        if let Some(wait) = wait_secs {
            path.push_str(&format!("&wait={wait}"));
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn cancel_job(&self, app: &str, id: &str, job: &str) -> Result<Job> {
        let path = format!("/v1/apps/{app}/machines/{id}/jobs/{}", encode_segment(job));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// Sends `signal` (`SIGTERM`, `TERM` or `15`) to a running job's processes.
    pub async fn signal_job(&self, app: &str, id: &str, job: &str, signal: &str) -> Result<Job> {
        let path = format!(
            "/v1/apps/{app}/machines/{id}/jobs/{}/signal",
            encode_segment(job)
        );
        let body = SignalJobRequest {
            signal: serde_json::Value::String(signal.to_string()),
        };
        self.call(Method::POST, &path, Some(&body)).await
    }

    /// Sends `data` to the stdin of a running job started with `stdin_open`; `eof`
    /// closes its stdin afterwards.
    pub async fn send_job_stdin(
        &self,
        app: &str,
        id: &str,
        job: &str,
        data: impl Into<Bytes>,
        eof: bool,
    ) -> Result<Job> {
        let path = format!(
            "/v1/apps/{app}/machines/{id}/jobs/{}/stdin?eof={eof}",
            encode_segment(job)
        );
        let req = self
            .request(Method::POST, &path)
            .header("content-type", "application/octet-stream")
            .body(data.into());
        self.json(req).await
    }

    // Images.

    pub async fn list_images(&self) -> Result<Vec<ImageSummary>> {
        self.call::<(), _>(Method::GET, "/v1/images", None).await
    }

    /// Uploads an archive (any stream of bytes) as `reference`.
    pub async fn import_image<S>(&self, reference: &str, archive: S) -> Result<ImageSummary>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let req = self
            .request(Method::POST, "/v1/images/import")
            .query(&[("reference", reference)])
            .header("content-type", "application/x-tar")
            .body(reqwest::Body::wrap_stream(archive));
        self.json(req).await
    }

    /// Pulls `reference` from its registry and waits for it.
    pub async fn pull_image(&self, reference: &str) -> Result<ImageSummary> {
        let req = PullImageRequest {
            reference: reference.into(),
        };
        self.call(Method::POST, "/v1/images/pull", Some(&req)).await
    }

    /// Pulls `reference`, reporting progress as it goes. The stream ends after a
    /// [`PullEvent::Done`] or [`PullEvent::Error`].
    pub async fn pull_image_events(
        &self,
        reference: &str,
    ) -> Result<impl Stream<Item = Result<PullEvent>> + use<>> {
        let req = self
            .request(Method::POST, "/v1/images/pull")
            .header("accept", "text/event-stream")
            .json(&PullImageRequest {
                reference: reference.into(),
            });
        let response = self.send(req).await?;
        Ok(sse_data(response.bytes_stream()).map(|data| {
            data.and_then(|d| {
                serde_json::from_str(&d).map_err(|e| ClientError::Protocol(e.to_string()))
            })
        }))
    }

    /// Pushes the local image `reference` to `destination` (its own registry when
    /// `None`).
    pub async fn push_image(
        &self,
        reference: &str,
        destination: Option<&str>,
    ) -> Result<PushImageResponse> {
        let req = PushImageRequest {
            reference: reference.into(),
            destination: destination.map(str::to_string),
        };
        self.call(Method::POST, "/v1/images/push", Some(&req)).await
    }

    pub async fn inspect_image(&self, reference: &str) -> Result<ImageDetails> {
        let path = format!("/v1/images/{}", encode_segment(reference));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// Forgets an image; refused with `image_in_use` while a machine uses it.
    pub async fn remove_image(&self, reference: &str) -> Result<()> {
        let path = format!("/v1/images/{}", encode_segment(reference));
        self.call_empty::<()>(Method::DELETE, &path, None).await
    }

    pub async fn prune_images(&self) -> Result<PruneImagesResponse> {
        self.call::<(), _>(Method::POST, "/v1/images/prune", None)
            .await
    }

    /// Stores credentials for `registry` (`host[:port]`) in the daemon.
    pub async fn registry_login(
        &self,
        registry: &str,
        req: &RegistryLoginRequest,
    ) -> Result<RegistryLoginResponse> {
        let path = format!("/v1/registries/{}/login", encode_segment(registry));
        self.call(Method::POST, &path, Some(req)).await
    }

    // Volumes.

    pub async fn create_volume(&self, app: &str, req: &CreateVolumeRequest) -> Result<Volume> {
        self.call(Method::POST, &format!("/v1/apps/{app}/volumes"), Some(req))
            .await
    }

    pub async fn list_volumes(&self, app: &str) -> Result<Vec<Volume>> {
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{app}/volumes"), None)
            .await
    }

    /// `id` is a volume id or a name the app uses once.
    pub async fn get_volume(&self, app: &str, id: &str) -> Result<Volume> {
        let path = format!("/v1/apps/{app}/volumes/{}", encode_segment(id));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn update_volume(
        &self,
        app: &str,
        id: &str,
        req: &UpdateVolumeRequest,
    ) -> Result<Volume> {
        let path = format!("/v1/apps/{app}/volumes/{}", encode_segment(id));
        self.call(Method::POST, &path, Some(req)).await
    }

    pub async fn delete_volume(&self, app: &str, id: &str) -> Result<Volume> {
        let path = format!("/v1/apps/{app}/volumes/{}", encode_segment(id));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    pub async fn extend_volume(
        &self,
        app: &str,
        id: &str,
        size_gb: u64,
    ) -> Result<ExtendVolumeResponse> {
        let path = format!("/v1/apps/{app}/volumes/{}/extend", encode_segment(id));
        self.call(Method::PUT, &path, Some(&ExtendVolumeRequest { size_gb }))
            .await
    }

    pub async fn create_volume_snapshot(&self, app: &str, id: &str) -> Result<VolumeSnapshot> {
        let path = format!("/v1/apps/{app}/volumes/{}/snapshots", encode_segment(id));
        self.call::<(), _>(Method::POST, &path, None).await
    }

    pub async fn list_volume_snapshots(&self, app: &str, id: &str) -> Result<Vec<VolumeSnapshot>> {
        let path = format!("/v1/apps/{app}/volumes/{}/snapshots", encode_segment(id));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// A raw request, for tests and tools that need a status code.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, value))
    }
}

/// A file read from inside a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContents {
    pub contents: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// How [`Client::write_file`] writes: mode 0644 and root's ownership unless given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteFileOptions {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub parents: bool,
}

impl ClientError {
    /// The API's stable error code, if the API answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a reference
/// (`host:port/repo:tag`) is one path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `data:` payloads of a server-sent event stream.
fn sse_data(
    bytes: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
) -> impl Stream<Item = Result<String>> + Send + 'static {
    futures::stream::unfold(
        (Box::pin(bytes), String::new()),
        |(mut bytes, mut buf)| async move {
            loop {
                if let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    let data: Vec<&str> = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if data.is_empty() {
                        continue;
                    }
                    return Some((Ok(data.join("\n")), (bytes, buf)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk)),
                    Some(Err(e)) => {
                        return Some((Err(ClientError::Protocol(e.to_string())), (bytes, buf)));
                    }
                    None => return None,
                }
            }
        },
    )
}

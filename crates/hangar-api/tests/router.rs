//! The API without sockets: requests go through the real router, service layer and
//! SQLite store, with an in-memory driver and image store underneath.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use hangar_api::{AppState, auth::Token};
use hangar_core::driver::ExitStatus;
use hangar_core::image::{
    Image, ImageConfig, ImageError, ImageSource, ImageStore, ProgressFn, PruneStats, TarStream,
};
use hangar_core::{MachineId, Service};
use hangar_runtime::FakeDriver;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-token";

#[derive(Default)]
struct MemoryImages {
    images: Mutex<HashMap<String, Image>>,
}

#[async_trait]
impl ImageStore for MemoryImages {
    async fn resolve(
        &self,
        reference: &str,
        _progress: Option<ProgressFn>,
    ) -> Result<Image, ImageError> {
        self.images
            .lock()
            .unwrap()
            .get(reference)
            .cloned()
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.into(),
            })
    }
    async fn import(&self, reference: &str, _tar: TarStream) -> Result<Image, ImageError> {
        let image = Image {
            reference: reference.into(),
            source: ImageSource {
                repository: reference.into(),
                digest: "sha256:00".into(),
                ..Default::default()
            },
            layers: vec![PathBuf::from("/nonexistent/layer")],
            config: ImageConfig {
                cmd: vec!["sleep".into(), "inf".into()],
                ..Default::default()
            },
            size: 0,
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        self.images
            .lock()
            .unwrap()
            .insert(reference.into(), image.clone());
        Ok(image)
    }
    async fn list(&self) -> Result<Vec<Image>, ImageError> {
        Ok(self.images.lock().unwrap().values().cloned().collect())
    }
    async fn remove(&self, reference: &str) -> Result<(), ImageError> {
        self.images.lock().unwrap().remove(reference);
        Ok(())
    }
    async fn prune(&self, _keep: &[PathBuf]) -> Result<PruneStats, ImageError> {
        Ok(PruneStats::default())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    router: axum::Router,
    driver: Arc<FakeDriver>,
    service: Arc<Service>,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        hangar_store::SqliteStore::open(&dir.path().join("db"))
            .await
            .unwrap(),
    );
    let driver = Arc::new(FakeDriver::with_log_dir(dir.path().join("logs")));
    let images = Arc::new(MemoryImages::default());
    let service = Service::new(store, driver.clone(), images, Default::default());
    service.spawn_event_loop(tokio_util::sync::CancellationToken::new());
    let router = hangar_api::router(AppState {
        service: service.clone(),
        token: Token::new(TOKEN),
        metrics: None,
    });
    let h = Harness {
        _dir: dir,
        router,
        driver,
        service,
    };
    let (status, _) = h
        .call(
            Method::POST,
            "/v1/images/import?reference=busybox:latest",
            Some(Value::Null),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call(Method::POST, "/v1/apps", Some(json!({"app_name": "demo"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    h
}

impl Harness {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(method, path, body, &[]).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some(Value::Null) | None => Body::empty(),
            Some(v) => Body::from(serde_json::to_vec(&v).unwrap()),
        };
        let response = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())),
        )
    }

    async fn create(&self, config: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v1/apps/demo/machines",
            Some(json!({"config": config})),
        )
        .await
    }
}

#[tokio::test]
async fn requests_without_the_token_are_refused() {
    let h = harness().await;
    for (uri, auth) in [
        ("/v1/apps", None),
        ("/v1/apps", Some("Bearer wrong")),
        ("/metrics", None),
    ] {
        let mut req = Request::builder().uri(uri);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let response = h
            .router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{uri} {auth:?}"
        );
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
    let response = h
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/healthz")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn machine_lifecycle_through_the_api() {
    let h = harness().await;
    let (status, machine) = h.create(json!({"image": "busybox:latest", "env": {"A": "1"}, "services": [{"internal_port": 80}]})).await;
    assert_eq!(status, StatusCode::OK, "{machine}");
    assert_eq!(machine["state"], "started");
    assert_eq!(
        machine["config"]["services"][0]["internal_port"], 80,
        "unknown fields round-trip"
    );
    let id = machine["id"].as_str().unwrap().to_string();
    let base = format!("/v1/apps/demo/machines/{id}");

    let (status, out) = h
        .call(
            Method::POST,
            &format!("{base}/exec"),
            Some(json!({"command": ["echo", "hi"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["exit_code"], 0);

    let (status, _) = h.call(Method::POST, &format!("{base}/stop"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, waited) = h
        .call(
            Method::GET,
            &format!("{base}/wait?state=stopped&timeout=5"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(waited["state"], "stopped");

    let (status, err) = h
        .call(
            Method::POST,
            &format!("{base}/exec"),
            Some(json!({"cmd": "true"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["code"], "invalid_state");
    assert!(err["error"].as_str().unwrap().contains("start it"), "{err}");

    let (status, prev) = h.call(Method::POST, &format!("{base}/start"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(prev["previous_state"], "stopped");

    let (status, err) = h.call(Method::DELETE, &base, None).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a started machine needs force: {err}"
    );
    let (status, _) = h
        .call(Method::DELETE, &format!("{base}?force=true"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, gone) = h.call(Method::GET, &base, None).await;
    assert_eq!(gone["state"], "destroyed");
    let (status, err) = h.call(Method::POST, &format!("{base}/start"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(err["error"].as_str().unwrap().contains("destroyed"));

    let (_, events) = h.call(Method::GET, &format!("{base}/events"), None).await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for kind in ["launch", "start", "stop", "destroy"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_creates_nothing() {
    let h = harness().await;
    let cases = [
        (
            json!({"image": "nope:1"}),
            StatusCode::NOT_FOUND,
            "image_not_found",
        ),
        (
            json!({"image": "busybox:latest", "guest": {"cpus": 1, "memory_mb": 0}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
        ),
        (
            json!({"image": "busybox:latest", "guest": {"cpus": -2, "memory_mb": 256}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
        ),
        (
            json!({"image": "busybox:latest", "restart": {"policy": "sometimes"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
        ),
        (
            json!({"image": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
        ),
    ];
    for (config, status, code) in cases {
        let (got, body) = h.create(config.clone()).await;
        assert_eq!(got, status, "{config} -> {body}");
        assert_eq!(body["code"], code, "{config} -> {body}");
        assert!(
            body["error"].as_str().unwrap().len() > 20,
            "a sentence, not a word: {body}"
        );
    }
    let (_, machines) = h
        .call(
            Method::GET,
            "/v1/apps/demo/machines?include_deleted=true",
            None,
        )
        .await;
    assert_eq!(machines, json!([]), "nothing half-created");

    // Malformed JSON and wrong types.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/apps/demo/machines")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from("{not json"))
        .unwrap();
    let response = h.router.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, body) = h.call(Method::POST, "/v1/apps/demo/machines", Some(json!({"config": {"image": "busybox:latest", "guest": {"cpus": "two", "memory_mb": 1}}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "bad_request");

    // Oversized body.
    let big = "x".repeat(hangar_api::MAX_JSON_BODY + 10);
    let (status, body) = h
        .call(Method::POST, "/v1/apps", Some(json!({"app_name": big})))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "payload_too_large");

    // Unknown app and machine.
    let (status, body) = h.call(Method::GET, "/v1/apps/ghost/machines", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("app_not_found"))
    );
    let (status, body) = h
        .call(Method::GET, "/v1/apps/demo/machines/0123456789abcd", None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("machine_not_found"))
    );
    let (status, _) = h
        .call(Method::GET, "/v1/apps/demo/machines/..%2F..%2Fetc", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_failed_sandbox_create_leaves_no_machine() {
    let h = harness().await;
    h.driver
        .fail_next(hangar_runtime::fake::Verb::Create, "disk on fire");
    let (status, body) = h.create(json!({"image": "busybox:latest"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !body["error"].as_str().unwrap().contains("disk on fire"),
        "internal causes stay in the log"
    );
    let (_, machines) = h
        .call(
            Method::GET,
            "/v1/apps/demo/machines?include_deleted=true",
            None,
        )
        .await;
    assert_eq!(machines, json!([]));
}

#[tokio::test]
async fn leases_guard_mutations() {
    let h = harness().await;
    let (_, machine) = h.create(json!({"image": "busybox:latest"})).await;
    let base = format!("/v1/apps/demo/machines/{}", machine["id"].as_str().unwrap());
    let (status, lease) = h
        .call(
            Method::POST,
            &format!("{base}/lease"),
            Some(json!({"ttl": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let nonce = lease["nonce"].as_str().unwrap().to_string();

    let (status, body) = h
        .call(
            Method::POST,
            &format!("{base}/lease"),
            Some(json!({"ttl": 60})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("lease_held"))
    );
    let (status, _) = h.call(Method::POST, &format!("{base}/stop"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = h
        .call_with(
            Method::POST,
            &format!("{base}/stop"),
            None,
            &[("fly-machine-lease-nonce", "bogus")],
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("lease_mismatch"))
    );
    let (status, _) = h
        .call_with(
            Method::POST,
            &format!("{base}/stop"),
            None,
            &[("fly-machine-lease-nonce", &nonce)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call_with(
            Method::DELETE,
            &format!("{base}/lease"),
            None,
            &[("fly-machine-lease-nonce", &nonce)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h.call(Method::GET, &format!("{base}/lease"), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("lease_not_found"))
    );
}

#[tokio::test]
async fn metadata_round_trips() {
    let h = harness().await;
    let (_, machine) = h
        .create(json!({"image": "busybox:latest", "metadata": {"a": "1"}}))
        .await;
    let base = format!("/v1/apps/demo/machines/{}", machine["id"].as_str().unwrap());
    let (status, _) = h
        .call(
            Method::POST,
            &format!("{base}/metadata/b"),
            Some(json!({"value": "2"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, meta) = h.call(Method::GET, &format!("{base}/metadata"), None).await;
    assert_eq!(meta, json!({"a": "1", "b": "2"}));
    let (status, _) = h
        .call(Method::DELETE, &format!("{base}/metadata/a"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, meta) = h.call(Method::GET, &format!("{base}/metadata"), None).await;
    assert_eq!(meta, json!({"b": "2"}));
}

async fn wait_for(h: &Harness, base: &str, state: &str) {
    let (status, body) = h
        .call(
            Method::GET,
            &format!("{base}/wait?state={state}&timeout=10"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn restart_policies_act_on_exits() {
    let h = harness().await;
    // on-failure: a failing exit restarts, up to max_retries.
    let (_, machine) = h.create(json!({"image": "busybox:latest", "restart": {"policy": "on-failure", "max_retries": 1}})).await;
    let id = MachineId::parse(machine["id"].as_str().unwrap()).unwrap();
    let base = format!("/v1/apps/demo/machines/{id}");
    let mut changes = h.service.subscribe();
    assert!(h.driver.exit(
        &id,
        ExitStatus {
            code: 3,
            ..Default::default()
        }
    ));
    // stopped, then started again by the policy.
    loop {
        let change = changes.recv().await.unwrap();
        if change.machine_id == id && change.state == hangar_core::state::MachineState::Started {
            break;
        }
    }
    assert!(h.driver.exit(
        &id,
        ExitStatus {
            code: 3,
            ..Default::default()
        }
    ));
    wait_for(&h, &base, "stopped").await;
    let (_, events) = h.call(Method::GET, &format!("{base}/events"), None).await;
    let exits = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "exit")
        .count();
    assert_eq!(exits, 2);

    // auto_destroy with no restart: an exit destroys the machine.
    let (_, machine) = h
        .create(json!({"image": "busybox:latest", "auto_destroy": true}))
        .await;
    let id = MachineId::parse(machine["id"].as_str().unwrap()).unwrap();
    assert!(h.driver.exit(&id, ExitStatus::default()));
    wait_for(&h, &format!("/v1/apps/demo/machines/{id}"), "destroyed").await;
}

#[tokio::test]
async fn openapi_document_lists_the_machine_paths() {
    let h = harness().await;
    let (status, doc) = h.call(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/apps/{app}/machines",
        "/v1/apps/{app}/machines/{id}/exec",
        "/v1/apps/{app}/machines/{id}/lease",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    assert!(doc["components"]["schemas"].get("MachineConfig").is_some());
}

#[tokio::test]
async fn push_is_routed_and_a_store_that_cannot_push_says_so() {
    let h = harness().await;
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/images/push",
            Some(json!({"reference": "busybox:latest", "destination": "127.0.0.1:5000/b:1"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_eq!(body["code"], "unsupported");
    assert!(body["error"].as_str().unwrap().contains("push"), "{body}");
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/images/push",
            Some(json!({"reference": " "})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, doc) = h.call(Method::GET, "/v1/openapi.json", None).await;
    assert!(doc["paths"].get("/v1/images/push").is_some());
    assert!(
        doc["components"]["schemas"]
            .get("PushImageRequest")
            .is_some()
    );
}

#[tokio::test]
async fn checkpoint_routes_report_missing_and_unsupported_clearly() {
    let h = harness().await;
    let (status, machine) = h.create(json!({"image": "busybox:latest"})).await;
    assert_eq!(status, StatusCode::OK, "{machine}");
    let base = format!("/v1/apps/demo/machines/{}", machine["id"].as_str().unwrap());

    // The fake driver has no snapshots: a host without btrfs answers the same way.
    let (status, body) = h
        .call(Method::POST, &format!("{base}/checkpoints"), None)
        .await;
    assert_eq!(status.as_u16(), 501, "{body}");
    assert_eq!(body["code"], "unsupported");
    let (status, body) = h
        .call(Method::GET, &format!("{base}/checkpoints"), None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));

    for (method, path) in [
        (Method::GET, "checkpoints/nope"),
        (Method::DELETE, "checkpoints/nope"),
        (Method::POST, "checkpoints/nope/restore"),
        (Method::GET, "checkpoints/nope/diff?to=current"),
    ] {
        let (status, body) = h.call(method, &format!("{base}/{path}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["code"], "checkpoint_not_found");
        assert!(
            body["error"].as_str().unwrap().contains("checkpoints"),
            "{body}"
        );
    }
    let (status, body) = h
        .call(
            Method::POST,
            &format!("{base}/fork"),
            Some(json!({"count": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = h
        .call(
            Method::POST,
            &format!("{base}/fork"),
            Some(json!({"checkpoint": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "checkpoint_not_found");

    let (_, doc) = h.call(Method::GET, "/v1/openapi.json", None).await;
    assert!(doc["paths"]["/v1/apps/{app}/machines/{id}/fork"].is_object());
    assert!(
        doc["paths"]["/v1/apps/{app}/machines/{id}/checkpoints/{checkpoint}/restore"].is_object()
    );
}

#[tokio::test]
async fn commit_route_reports_bad_input_and_unsupported_clearly() {
    let h = harness().await;
    let (status, machine) = h.create(json!({"image": "busybox:latest"})).await;
    assert_eq!(status, StatusCode::OK, "{machine}");
    let base = format!("/v1/apps/demo/machines/{}", machine["id"].as_str().unwrap());
    let commit = format!("{base}/commit");

    let (status, body) = h.call(Method::POST, &commit, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("reference"),
        "{body}"
    );
    let (status, body) = h
        .call(
            Method::POST,
            &commit,
            Some(json!({"reference": "built:v1", "checkpoint": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "checkpoint_not_found");
    // The fake driver has no snapshots: a host without btrfs answers the same way.
    let (status, body) = h
        .call(
            Method::POST,
            &commit,
            Some(json!({"reference": "built:v1"})),
        )
        .await;
    assert_eq!(status.as_u16(), 501, "{body}");
    assert_eq!(body["code"], "unsupported");
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/apps/demo/machines/d0000000000000/commit",
            Some(json!({"reference": "built:v1"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "machine_not_found");

    let (_, doc) = h.call(Method::GET, "/v1/openapi.json", None).await;
    assert!(doc["paths"]["/v1/apps/{app}/machines/{id}/commit"]["post"].is_object());
    assert!(
        doc["components"]["schemas"]
            .get("CommitMachineRequest")
            .is_some()
    );
}

#[tokio::test]
async fn files_routes_report_bad_input_in_hangars_format() {
    let h = harness().await;
    let (status, machine) = h.create(json!({"image": "busybox:latest"})).await;
    assert_eq!(status, StatusCode::OK, "{machine}");
    let base = format!(
        "/v1/apps/demo/machines/{}/files",
        machine["id"].as_str().unwrap()
    );

    for (method, query, code) in [
        (Method::GET, "", "invalid_path"),
        (Method::DELETE, "?path=", "invalid_path"),
        (Method::PUT, "?path=/a&mode=rw", "bad_request"),
        (Method::POST, "?path=/a", "bad_request"),
        (Method::GET, "?path=/a&list=maybe", "bad_request"),
    ] {
        let (status, body) = h.call(method, &format!("{base}{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["code"], code, "{query}: {body}");
    }
    // The in-memory driver has no files: it says so instead of pretending.
    let (status, body) = h
        .call(Method::GET, &format!("{base}?path=/etc"), None)
        .await;
    assert_eq!(status.as_u16(), 501, "{body}");
    assert_eq!(body["code"], "unsupported");

    // A body past the limit is refused before any of it reaches a machine.
    let big = vec![0u8; hangar_api::MAX_FILE_BODY + 1];
    let response = h
        .router
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::PUT)
                .uri(format!("{base}?path=/big"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::from(big))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], "payload_too_large", "{body}");

    let (status, body) = h
        .call(
            Method::DELETE,
            "/v1/apps/demo/machines/nope/files?path=/a",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "machine_not_found");

    let (status, body) = h
        .call(
            Method::DELETE,
            &format!(
                "/v1/apps/demo/machines/{}?force=true",
                machine["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h
        .call(Method::GET, &format!("{base}?path=/etc"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "invalid_state");

    let (_, doc) = h.call(Method::GET, "/v1/openapi.json", None).await;
    assert!(doc["paths"]["/v1/apps/{app}/machines/{id}/files"]["put"].is_object());
    assert!(doc["components"]["schemas"].get("FileEntry").is_some());
}

#[tokio::test]
async fn volume_routes_speak_flys_shapes_and_codes() {
    let h = harness().await;
    let (status, vol) = h
        .call(
            Method::POST,
            "/v1/apps/demo/volumes",
            Some(json!({"name": "data", "size_gb": 3, "region": "anywhere"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{vol}");
    let id = vol["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("vol_"), "{id}");
    for (field, want) in [
        ("name", json!("data")),
        ("size_gb", json!(3)),
        ("state", json!("created")),
        ("fstype", json!("ext4")),
        ("encrypted", json!(false)),
        ("snapshot_retention", json!(5)),
    ] {
        assert_eq!(vol[field], want, "{field} in {vol}");
    }
    assert!(vol.get("attached_machine_id").is_none(), "{vol}");
    assert_eq!(h.driver.volume_size(&id), Some(3 << 30));

    // Bad input says what to do and creates nothing.
    for (body, code) in [
        (json!({"name": "data"}), "bad_request"),
        (json!({"name": "Bad Name", "size_gb": 1}), "bad_request"),
        (json!({"name": "x", "size_gb": 0}), "bad_request"),
        (
            json!({"name": "x", "size_gb": 1, "fstype": "xfs"}),
            "bad_request",
        ),
        (
            json!({"name": "x", "snapshot_id": "vs_nope"}),
            "volume_snapshot_not_found",
        ),
        (
            json!({"name": "x", "source_volume_id": "vol_nope"}),
            "volume_not_found",
        ),
        (
            json!({"name": "x", "source_volume_id": id, "size_gb": 1}),
            "bad_request",
        ),
    ] {
        let (status, err) = h
            .call(Method::POST, "/v1/apps/demo/volumes", Some(body.clone()))
            .await;
        assert_eq!(err["code"], code, "{body} -> {err}");
        assert_eq!(status.as_u16() / 100, 4, "{body}");
        assert!(err["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (_, list) = h.call(Method::GET, "/v1/apps/demo/volumes", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Update, extend (only up), snapshots.
    let (status, updated) = h
        .call(
            Method::POST,
            &format!("/v1/apps/demo/volumes/{id}"),
            Some(json!({"snapshot_retention": 10})),
        )
        .await;
    assert_eq!(
        (status, &updated["snapshot_retention"]),
        (StatusCode::OK, &json!(10))
    );
    let (status, err) = h
        .call(
            Method::PUT,
            &format!("/v1/apps/demo/volumes/{id}/extend"),
            Some(json!({"size_gb": 2})),
        )
        .await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    let (status, grown) = h
        .call(
            Method::PUT,
            &format!("/v1/apps/demo/volumes/{id}/extend"),
            Some(json!({"size_gb": 4})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{grown}");
    assert_eq!(
        (&grown["volume"]["size_gb"], &grown["needs_restart"]),
        (&json!(4), &json!(false))
    );
    let (status, snap) = h
        .call(
            Method::POST,
            &format!("/v1/apps/demo/volumes/{id}/snapshots"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{snap}");
    assert_eq!(snap["size"], json!(4u64 << 30));
    let (_, snaps) = h
        .call(
            Method::GET,
            &format!("/v1/apps/demo/volumes/{id}/snapshots"),
            None,
        )
        .await;
    assert_eq!(snaps[0]["id"], snap["id"]);
    let (status, restored) = h
        .call(
            Method::POST,
            "/v1/apps/demo/volumes",
            Some(json!({"name": "again", "snapshot_id": snap["id"]})),
        )
        .await;
    assert_eq!((status, &restored["size_gb"]), (StatusCode::OK, &json!(4)));

    // Mounting: unknown volume, bad path, one machine at a time.
    let mount = |volume: &str, path: &str| json!({"image": "busybox:latest", "mounts": [{"volume": volume, "path": path}]});
    let (status, err) = h.create(mount("vol_nope", "/data")).await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::NOT_FOUND, &json!("volume_not_found"))
    );
    for path in ["data", "/", "/proc/x", "/a/../b"] {
        let (status, err) = h.create(mount(&id, path)).await;
        assert_eq!(
            (status, &err["code"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_config")),
            "{path}: {err}"
        );
    }
    let (status, m) = h.create(mount("data", "/data")).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    let machine = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["config"]["mounts"][0]["volume"], json!(id));
    let spec = h
        .driver
        .sandbox_spec(&MachineId::parse(&machine).unwrap())
        .unwrap();
    assert_eq!(spec.mounts[0].volume, id);
    assert_eq!(spec.mounts[0].path, "/data");
    let (_, seen) = h
        .call(Method::GET, &format!("/v1/apps/demo/volumes/{id}"), None)
        .await;
    assert_eq!(seen["attached_machine_id"], json!(machine));

    let (status, err) = h.create(mount(&id, "/data")).await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::CONFLICT, &json!("volume_attached"))
    );
    assert!(err["error"].as_str().unwrap().contains(&machine), "{err}");
    let (status, err) = h
        .call(Method::DELETE, &format!("/v1/apps/demo/volumes/{id}"), None)
        .await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::CONFLICT, &json!("volume_attached"))
    );

    // An update that drops the mount rebuilds the sandbox without it and frees the
    // volume; one that adds it back takes it again.
    let (status, updated) = h
        .call(
            Method::POST,
            &format!("/v1/apps/demo/machines/{machine}"),
            Some(json!({"config": {"image": "busybox:latest"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let machine_id = MachineId::parse(&machine).unwrap();
    assert!(
        h.driver
            .sandbox_spec(&machine_id)
            .unwrap()
            .mounts
            .is_empty()
    );
    let (_, seen) = h
        .call(Method::GET, &format!("/v1/apps/demo/volumes/{id}"), None)
        .await;
    assert!(seen.get("attached_machine_id").is_none(), "{seen}");
    let (status, updated) = h
        .call(
            Method::POST,
            &format!("/v1/apps/demo/machines/{machine}"),
            Some(json!({"config": mount(&id, "/srv/data")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        h.driver.sandbox_spec(&machine_id).unwrap().mounts[0].path,
        "/srv/data"
    );

    let (status, _) = h
        .call(
            Method::DELETE,
            &format!("/v1/apps/demo/machines/{machine}?force=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, gone) = h
        .call(Method::DELETE, &format!("/v1/apps/demo/volumes/{id}"), None)
        .await;
    assert_eq!(
        (status, &gone["state"]),
        (StatusCode::OK, &json!("destroyed"))
    );
    assert_eq!(h.driver.volume_size(&id), None);
    let (status, err) = h
        .call(Method::GET, &format!("/v1/apps/demo/volumes/{id}"), None)
        .await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::NOT_FOUND, &json!("volume_not_found"))
    );

    let (_, doc) = h.call(Method::GET, "/v1/openapi.json", None).await;
    for path in [
        "/v1/apps/{app}/volumes",
        "/v1/apps/{app}/volumes/{id}",
        "/v1/apps/{app}/volumes/{id}/extend",
        "/v1/apps/{app}/volumes/{id}/snapshots",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}

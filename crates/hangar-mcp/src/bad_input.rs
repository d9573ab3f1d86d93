//! Property test: whatever JSON a model sends as a tool's arguments, the server
//! answers with a result or an `isError` result carrying a code, or with a
//! JSON-RPC invalid-params error; it never panics.
//!
//! The API behind the tools is a fake answering a few routes (an app with one
//! machine `work`, jobs that finish at once with output) and 404 for the rest, so
//! calls that parse get past the first request and through the answer shaping.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::tools::{self, Ctx, InvalidParams, Toolset};

const MACHINE_ID: &str = "0123456789abcd";

fn machine() -> Value {
    json!({
        "id": MACHINE_ID, "name": "work", "state": "started", "region": "local",
        "instance_id": "i", "private_ip": "fdaa::2", "config": {"image": "busybox"},
        "image_ref": {"registry": "", "repository": "busybox", "tag": "latest", "digest": ""},
        "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00",
    })
}

/// A job that has ended, its output from the query's cursors.
fn job(q: &std::collections::HashMap<String, String>) -> Value {
    let stdout = "0123456789".repeat(5000);
    let stderr = "é".repeat(3000);
    let at = |key: &str, data: &str| {
        let cursor = q
            .get(key)
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(0)
            .min(data.len());
        let start = (cursor..=data.len())
            .find(|&i| data.is_char_boundary(i))
            .unwrap_or(data.len());
        (data[start..].to_string(), start, data.len())
    };
    let (out, cursor, out_len) = at("cursor", &stdout);
    let (err, err_cursor, err_len) = at("stderr_cursor", &stderr);
    json!({
        "id": "job_1", "machine_id": MACHINE_ID, "command": ["sh"], "state": "exited",
        "exit_code": 3, "created_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:00:01.5+00:00",
        "stdout": out, "stderr": err, "cursor": cursor, "next_cursor": out_len,
        "stderr_cursor": err_cursor, "next_stderr_cursor": err_len,
        "stdout_bytes": out_len, "stderr_bytes": err_len,
    })
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "nothing here in the fake API", "code": "not_found"})),
    )
        .into_response()
}

/// The fake API's address, served from its own thread for the whole test run.
fn fake_api() -> &'static str {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let machines = "/v1/apps/{app}/machines";
                let jobs = "/v1/apps/{app}/machines/{id}/jobs";
                let app = Router::new()
                    .route(machines, get(|| async { Json(json!([machine()])) }))
                    .route(
                        jobs,
                        post(|| async {
                            (StatusCode::CREATED, Json(job(&Default::default())))
                        }),
                    )
                    .route(
                        &format!("{jobs}/{{job}}"),
                        get(
                            |_: Path<(String, String, String)>,
                             Query(q): Query<std::collections::HashMap<String, String>>| async move {
                                Json(job(&q))
                            },
                        ),
                    )
                    .fallback(|| async { not_found() });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("addr").to_string())
                    .expect("send");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        rx.recv().expect("the fake API's address")
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

const ALL: [Toolset; 3] = [Toolset::Images, Toolset::Apps, Toolset::Volumes];

fn tool_names() -> Vec<String> {
    tools::catalogue(&ALL)
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// Each tool's argument names, from its input schema.
fn argument_names() -> Vec<(String, Vec<String>)> {
    tools::catalogue(&ALL)
        .into_iter()
        .map(|t| {
            let names = t
                .input_schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            (t.name.to_string(), names)
        })
        .collect()
}

/// Values of the types tools take, often ones they accept, so that many calls parse
/// and go on to the API and the shaping of its answer.
fn plausible() -> impl Strategy<Value = Value> {
    let word = prop::sample::select(vec![
        "work",
        MACHINE_ID,
        "job_1",
        "/root/x",
        "create",
        "list",
        "stdin",
        "signal",
        "cancel",
        "restore",
        "destroy",
        "start",
        "stop",
        "SIGTERM",
        "644",
        "aGk=",
        "data",
        "vs_1",
        "busybox:latest",
        "agent",
        "",
    ]);
    prop_oneof![
        word.clone().prop_map(Value::from),
        prop::collection::vec(word, 0..3).prop_map(|w| json!(w)),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(63),
            Just(64),
            Just(65_535),
            Just(u64::MAX),
            any::<u64>()
        ]
        .prop_map(Value::from),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,16}".prop_map(Value::from),
        plausible(),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values fitting `schema` (a tool's input schema or part of it), so that whole
/// calls parse and reach the API and the shaping of its answers.
fn typed(schema: &Value, root: &Value) -> BoxedStrategy<Value> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        let def = root["$defs"].get(name).cloned().unwrap_or(Value::Null);
        return typed(&def, root);
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return prop::sample::select(values.clone()).boxed();
    }
    if let Some(c) = schema.get("const") {
        return Just(c.clone()).boxed();
    }
    if let Some(options) = ["oneOf", "anyOf"]
        .iter()
        .find_map(|k| schema.get(*k).and_then(Value::as_array))
        .filter(|o| !o.is_empty())
    {
        let options: Vec<_> = options.iter().map(|o| typed(o, root)).collect();
        return prop::strategy::Union::new(options).boxed();
    }
    let types: Vec<String> = match &schema["type"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    let word = || {
        prop::sample::select(vec![
            "work", MACHINE_ID, "job_1", "/root/x", "SIGTERM", "644", "data", "x",
        ])
        .prop_map(Value::from)
    };
    let options: Vec<BoxedStrategy<Value>> = types
        .iter()
        .map(|t| match t.as_str() {
            "string" => word().boxed(),
            "integer" => prop_oneof![Just(0u64), Just(1), Just(64), Just(u64::MAX), any::<u64>()]
                .prop_map(Value::from)
                .boxed(),
            "boolean" => any::<bool>().prop_map(Value::from).boxed(),
            "null" => Just(Value::Null).boxed(),
            "array" => {
                let item = schema
                    .get("items")
                    .map_or_else(|| word().boxed(), |i| typed(i, root));
                prop::collection::vec(item, 1..3)
                    .prop_map(Value::Array)
                    .boxed()
            }
            "object" => prop::collection::btree_map("[A-Z]{1,3}", word(), 0..2)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
                .boxed(),
            _ => plausible().boxed(),
        })
        .collect();
    if options.is_empty() {
        return plausible().boxed();
    }
    prop::strategy::Union::new(options).boxed()
}

/// Arguments for tool `i` of the catalogue that fit its schema, with each field
/// sometimes left out and, now and then, one replaced by anything.
fn well_typed(i: usize) -> BoxedStrategy<(String, Value)> {
    let tool = tools::catalogue(&ALL).swap_remove(i);
    let name = tool.name.to_string();
    let schema = Value::Object(tool.input_schema.as_ref().clone());
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = schema["properties"]
        .as_object()
        .map(|p| {
            p.iter()
                .map(|(key, sub)| {
                    let key = key.clone();
                    prop::option::weighted(0.85, typed(sub, &schema))
                        .prop_map(move |v| v.map(|v| (key.clone(), v)))
                        .boxed()
                })
                .collect()
        })
        .unwrap_or_default();
    (
        fields,
        prop::option::weighted(0.2, (any::<prop::sample::Index>(), any_json())),
    )
        .prop_map(move |(fields, spoil)| {
            let mut args: serde_json::Map<String, Value> = fields.into_iter().flatten().collect();
            if let Some((at, value)) = spoil
                && !args.is_empty()
            {
                let key = args
                    .keys()
                    .nth(at.index(args.len()))
                    .cloned()
                    .unwrap_or_default();
                args.insert(key, value);
            }
            (name.clone(), Value::Object(args))
        })
        .boxed()
}

/// What a call must come to: a result, an error result with a code, or invalid params.
fn check(name: &str, args: Value) -> Result<(), TestCaseError> {
    let ctx = Ctx {
        client: hangar_client::Client::new(fake_api(), "token"),
        default_app: Some("agent".into()),
    };
    let outcome = runtime().block_on(tools::call(&ctx, &ALL, name, args.clone(), None));
    match outcome {
        None => prop_assert!(false, "{name} is in the catalogue but not callable"),
        Some(Err(InvalidParams(message))) => {
            prop_assert!(!message.is_empty(), "{name}({args}): empty invalid-params")
        }
        Some(Ok(Err(err))) => {
            let result = crate::error_result(&err);
            prop_assert_eq!(result.is_error, Some(true));
            let body = result.structured_content.unwrap_or_default();
            prop_assert!(
                body["code"].as_str().is_some_and(|c| !c.is_empty()),
                "{name}({args}): no code in {body}"
            );
            prop_assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{name}({args}): no sentence in {body}"
            );
        }
        Some(Ok(Ok(output))) => prop_assert!(
            output.structured.is_object(),
            "{name}({args}): structured content {} is not an object",
            output.structured
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_json_as_arguments_is_answered(tool in prop::sample::select(tool_names()), args in any_json()) {
        check(&tool, args)?;
    }

    #[test]
    fn the_tools_own_argument_names_with_any_values_are_answered(
        which in any::<prop::sample::Index>(),
        fields in prop::collection::vec(
            (any::<prop::sample::Index>(), prop_oneof![3 => plausible(), 1 => any_json()]),
            0..10,
        ),
    ) {
        let tools = argument_names();
        let (name, names) = which.get(&tools);
        let mut args = serde_json::Map::new();
        for (field, value) in fields {
            if !names.is_empty() {
                args.insert(field.get(names).clone(), value);
            }
        }
        check(name, Value::Object(args))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arguments_of_the_right_shape_are_answered(
        (tool, args) in (0..tools::catalogue(&ALL).len()).prop_flat_map(well_typed),
    ) {
        check(&tool, args)?;
    }
}

#[test]
fn the_fake_serves_what_the_tools_expect() {
    let _: hangar_types::Machine = serde_json::from_value(machine()).unwrap();
    let _: hangar_types::Job = serde_json::from_value(job(&Default::default())).unwrap();
}

#[test]
fn an_unknown_tool_is_none() {
    let ctx = Ctx {
        client: hangar_client::Client::new(fake_api(), "token"),
        default_app: None,
    };
    for name in ["no_such_tool", "machine_get", "job_cancel"] {
        let outcome = runtime().block_on(tools::call(&ctx, &[], name, json!({}), None));
        assert!(outcome.is_none(), "{name}");
    }
    // Opt-in tools are unknown without their toolset.
    let outcome = runtime().block_on(tools::call(&ctx, &[], "volume_list", json!({}), None));
    assert!(outcome.is_none());
}

//! Black-box tests of background jobs' processes: a cancel kills what the job
//! started, a signal reaches it, and input sent to it is read.

mod common;

use std::time::Duration;

use common::{busybox, eventually, launch, setup};
use hangar_client::{Client, ClientError};
use hangar_types::{CreateJobRequest, Job};

async fn running(client: &Client, app: &str, id: &str, needle: &str) -> bool {
    client
        .ps(app, id)
        .await
        .unwrap()
        .iter()
        .any(|p| p.command.contains(needle))
}

fn job(script: &str) -> CreateJobRequest {
    CreateJobRequest {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_job_kills_its_processes() {
    let app = "jobs-cancel";
    let Some((_daemon, client)) = setup(app).await else {
        return;
    };
    let id = launch(&client, app, busybox(&["sleep", "100000"])).await;
    let started = client
        .create_job(app, &id, &job("echo started; sleep 300"))
        .await
        .unwrap();
    eventually("the job's sleep to run", Duration::from_secs(20), || {
        running(&client, app, &id, "sleep 300")
    })
    .await;

    let cancelled = client.cancel_job(app, &id, &started.id).await.unwrap();
    assert_eq!(cancelled.state, "cancelled");
    eventually(
        "the cancelled job's sleep to be gone",
        Duration::from_secs(20),
        || async { !running(&client, app, &id, "sleep 300").await },
    )
    .await;
    // What the job printed before it was killed is kept, and it stays cancelled.
    eventually("the killed job's output", Duration::from_secs(20), || {
        let (client, id, job) = (client.clone(), id.clone(), started.id.clone());
        async move {
            let j = client.get_job(app, &id, &job, 0, 0, None).await.unwrap();
            assert_eq!(j.state, "cancelled", "{j:?}");
            j.stdout.contains("started")
        }
    })
    .await;
    // The machine's own process is untouched.
    assert!(running(&client, app, &id, "sleep 100000").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signalled_job_runs_its_trap() {
    let app = "jobs-signal";
    let Some((_daemon, client)) = setup(app).await else {
        return;
    };
    let id = launch(&client, app, busybox(&["sleep", "100000"])).await;
    let script = "trap 'echo got-term; exit 7' TERM; while :; do sleep 299; done";
    let started = client.create_job(app, &id, &job(script)).await.unwrap();
    // The sleep runs only once the trap is set.
    eventually("the job's sleep to run", Duration::from_secs(20), || {
        running(&client, app, &id, "sleep 299")
    })
    .await;

    let signalled = client
        .signal_job(app, &id, &started.id, "SIGTERM")
        .await
        .unwrap();
    assert_eq!(signalled.id, started.id);
    let done = client
        .get_job(app, &id, &started.id, 0, 0, Some(30))
        .await
        .unwrap();
    assert_eq!(done.state, "exited", "{done:?}");
    assert_eq!(done.exit_code, Some(7), "{done:?}");
    assert!(done.stdout.contains("got-term"), "{done:?}");

    // An ended job cannot be signalled; a bad signal name is refused.
    let err = client
        .signal_job(app, &id, &started.id, "15")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 409, code, .. } if code == "invalid_state"),
        "{err:?}"
    );
    let another = client
        .create_job(app, &id, &job("sleep 298"))
        .await
        .unwrap();
    let err = client
        .signal_job(app, &id, &another.id, "SIGNOPE")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 400, .. }),
        "{err:?}"
    );
    client.cancel_job(app, &id, &another.id).await.unwrap();

    // A number works as well as a name, over plain JSON.
    let third = client.create_job(app, &id, &job(script)).await.unwrap();
    eventually(
        "the third job's sleep to run",
        Duration::from_secs(20),
        || running(&client, app, &id, "sleep 299"),
    )
    .await;
    let path = format!("/v1/apps/{app}/machines/{id}/jobs/{}/signal", third.id);
    let (status, _) = client
        .raw(
            reqwest::Method::POST,
            &path,
            Some(serde_json::json!({"signal": 15})),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{status}");
    let done = client
        .get_job(app, &id, &third.id, 0, 0, Some(30))
        .await
        .unwrap();
    assert_eq!(done.exit_code, Some(7), "{done:?}");

    let (_, doc) = client
        .raw(reqwest::Method::GET, "/v1/openapi.json", None)
        .await
        .unwrap();
    let signal = &doc["paths"]["/v1/apps/{app}/machines/{id}/jobs/{job}/signal"];
    assert!(
        signal.get("post").is_some(),
        "the signal route is not documented"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn output_shows_while_the_job_runs() {
    let app = "jobs-stream";
    let Some((_daemon, client)) = setup(app).await else {
        return;
    };
    let id = launch(&client, app, busybox(&["sleep", "100000"])).await;
    let script = "echo early; echo oops >&2; sleep 297; echo late";
    let started = client.create_job(app, &id, &job(script)).await.unwrap();
    eventually("output of the running job", Duration::from_secs(20), || {
        let (client, id, job) = (client.clone(), id.clone(), started.id.clone());
        async move {
            let j = client.get_job(app, &id, &job, 0, 0, None).await.unwrap();
            assert_eq!(j.state, "running", "{j:?}");
            j.stdout == "early\n" && j.stderr == "oops\n"
        }
    })
    .await;
    // The cursor moves on past what was read.
    let j = client
        .get_job(app, &id, &started.id, 6, 5, None)
        .await
        .unwrap();
    assert_eq!((j.stdout.as_str(), j.next_cursor), ("", 6), "{j:?}");
    client.cancel_job(app, &id, &started.id).await.unwrap();
}

async fn job_now(client: &Client, app: &str, id: &str, job: &str) -> Job {
    client.get_job(app, id, job, 0, 0, None).await.unwrap()
}

fn conflict(err: &ClientError) -> bool {
    matches!(err, ClientError::Api { status: 409, code, .. } if code == "invalid_state")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_reads_the_stdin_it_is_sent() {
    let app = "jobs-stdin";
    let Some((_daemon, client)) = setup(app).await else {
        return;
    };
    let id = launch(&client, app, busybox(&["sleep", "100000"])).await;
    let req = CreateJobRequest {
        stdin_open: true,
        ..job("read line; echo got:$line; exec cat")
    };
    let started = client.create_job(app, &id, &req).await.unwrap();
    assert!(started.stdin_open, "{started:?}");

    let sent = client
        .send_job_stdin(app, &id, &started.id, "hello\n", false)
        .await
        .unwrap();
    assert_eq!((sent.state.as_str(), sent.stdin_open), ("running", true));
    eventually(
        "the job's answer to its input",
        Duration::from_secs(20),
        || async {
            let j = job_now(&client, app, &id, &started.id).await;
            assert_eq!(j.state, "running", "{j:?}");
            j.stdout == "got:hello\n"
        },
    )
    .await;
    // `cat` copies what comes next and ends at end of file, with code 0.
    client
        .send_job_stdin(app, &id, &started.id, "more\n", true)
        .await
        .unwrap();
    let done = client
        .get_job(app, &id, &started.id, 0, 0, Some(30))
        .await
        .unwrap();
    assert_eq!(done.state, "exited", "{done:?}");
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(done.stdout, "got:hello\nmore\n");
    assert!(!done.stdin_open);
    let err = client
        .send_job_stdin(app, &id, &started.id, "late\n", false)
        .await
        .unwrap_err();
    assert!(conflict(&err), "an ended job: {err:?}");

    // Without stdin_open a job reads end of file and takes no input.
    let plain = client
        .create_job(app, &id, &job("cat; sleep 296"))
        .await
        .unwrap();
    assert!(!plain.stdin_open);
    let err = client
        .send_job_stdin(app, &id, &plain.id, "x", false)
        .await
        .unwrap_err();
    assert!(conflict(&err), "a job without stdin: {err:?}");
    client.cancel_job(app, &id, &plain.id).await.unwrap();

    // Too much at once is refused whole; an empty body with eof only closes stdin.
    let cat = CreateJobRequest {
        stdin_open: true,
        ..job("exec cat")
    };
    let cat = client.create_job(app, &id, &cat).await.unwrap();
    let big = vec![b'x'; hangar_core::service::MAX_JOB_STDIN + 1];
    let err = client
        .send_job_stdin(app, &id, &cat.id, big, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 413, code, .. } if code == "payload_too_large"),
        "{err:?}"
    );
    client
        .send_job_stdin(app, &id, &cat.id, Vec::new(), true)
        .await
        .unwrap();
    let done = client
        .get_job(app, &id, &cat.id, 0, 0, Some(30))
        .await
        .unwrap();
    assert_eq!((done.state.as_str(), done.exit_code), ("exited", Some(0)));
    assert_eq!(done.stdout, "");
    let err = client
        .send_job_stdin(app, &id, "job_nope", "x", false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, code, .. } if code == "job_not_found"),
        "{err:?}"
    );

    let (_, doc) = client
        .raw(reqwest::Method::GET, "/v1/openapi.json", None)
        .await
        .unwrap();
    assert!(
        doc["paths"]["/v1/apps/{app}/machines/{id}/jobs/{job}/stdin"]
            .get("post")
            .is_some(),
        "the stdin route is not documented"
    );
}

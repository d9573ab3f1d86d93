//! Background jobs: a command started in a machine that outlives the request which
//! started it. The job runs in a task of the daemon, so a caller that disconnects
//! (an MCP client timing out, a closed terminal) loses nothing: its output and exit
//! status wait here to be fetched from a cursor.
//!
//! Jobs are kept in memory, bounded per machine, and forgotten with the machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hangar_types::{CreateJobRequest, ErrorCode, Job};
use tokio::sync::watch;

use super::Service;
use crate::config;
use crate::driver::{DriverError, ExecSpec};
use crate::error::{Error, Result};
use crate::ids::{MachineId, random_hex};

pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Jobs kept per machine; the oldest finished one is forgotten past this.
pub const MAX_JOBS_PER_MACHINE: usize = 64;
/// Most output bytes of each stream returned by one poll.
pub const MAX_JOB_CHUNK: usize = 1 << 20;
/// Most bytes one `POST .../jobs/{job}/stdin` sends.
pub const MAX_JOB_STDIN: usize = 1 << 20;

const SIGKILL: i32 = 9;

/// A parsed job request.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub argv: Vec<String>,
    pub stdin: Vec<u8>,
    /// Keep stdin open for [`Service::send_job_stdin`].
    pub stdin_open: bool,
    pub timeout: Duration,
}

impl TryFrom<CreateJobRequest> for JobRequest {
    type Error = Error;

    fn try_from(req: CreateJobRequest) -> Result<Self> {
        if req.command.is_empty() || req.command[0].is_empty() {
            return Err(Error::bad_request(
                "a job needs a command: pass \"command\": [\"make\", \"test\"]",
            ));
        }
        if req.command.iter().any(|a| a.contains('\0')) {
            return Err(Error::bad_request(
                "job command arguments cannot contain NUL bytes",
            ));
        }
        let timeout = match req.timeout {
            None | Some(0) => DEFAULT_JOB_TIMEOUT,
            Some(secs) if Duration::from_secs(secs) <= MAX_JOB_TIMEOUT => Duration::from_secs(secs),
            Some(secs) => {
                return Err(Error::bad_request(format!(
                    "job timeout {secs}s is too long: use at most {}s",
                    MAX_JOB_TIMEOUT.as_secs()
                )));
            }
        };
        Ok(JobRequest {
            argv: req.command,
            stdin: req.stdin.unwrap_or_default().into_bytes(),
            stdin_open: req.stdin_open,
            timeout,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum JobState {
    Running,
    Exited { code: i32, signal: Option<i32> },
    TimedOut { code: i32, signal: Option<i32> },
    Cancelled,
    Failed(String),
}

struct JobEntry {
    id: String,
    machine_id: MachineId,
    argv: Vec<String>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    state: JobState,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Input can still be sent: started with `stdin_open`, no end of file sent yet.
    stdin_open: bool,
    task: Option<tokio::task::AbortHandle>,
    done: watch::Sender<bool>,
}

/// Every machine's jobs.
#[derive(Default)]
pub(crate) struct JobTable {
    jobs: Mutex<HashMap<MachineId, Vec<JobEntry>>>,
}

impl JobTable {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<MachineId, Vec<JobEntry>>) -> T) -> T {
        f(&mut self.jobs.lock().expect("job table poisoned"))
    }

    fn finish(
        &self,
        machine: &MachineId,
        job: &str,
        state: JobState,
        out: Option<(Vec<u8>, Vec<u8>)>,
    ) {
        self.with(|jobs| {
            if let Some(entry) = jobs
                .get_mut(machine)
                .and_then(|list| list.iter_mut().find(|j| j.id == job))
            {
                // A cancel got there first: keep its verdict, and the output the
                // killed process left.
                if entry.state != JobState::Running {
                    if entry.state == JobState::Cancelled
                        && let Some((stdout, stderr)) = out
                    {
                        entry.stdout = stdout;
                        entry.stderr = stderr;
                    }
                    entry.task = None;
                    return;
                }
                entry.state = state;
                entry.finished_at = Some(Utc::now());
                if let Some((stdout, stderr)) = out {
                    entry.stdout = stdout;
                    entry.stderr = stderr;
                }
                entry.task = None;
                let _ = entry.done.send(true);
            }
        });
    }

    /// Adds output a running job just wrote; the final output replaces it all.
    fn append(&self, machine: &MachineId, job: &str, stderr: bool, data: &[u8]) {
        self.with(|jobs| {
            if let Some(entry) = jobs
                .get_mut(machine)
                .and_then(|list| list.iter_mut().find(|j| j.id == job))
            {
                let buf = if stderr {
                    &mut entry.stderr
                } else {
                    &mut entry.stdout
                };
                buf.extend_from_slice(data);
            }
        });
    }

    /// Forgets a machine's jobs (it was destroyed), stopping the ones that run.
    pub(crate) fn forget(&self, machine: &MachineId) {
        self.with(|jobs| {
            for job in jobs.remove(machine).unwrap_or_default() {
                if let Some(task) = job.task {
                    task.abort();
                }
            }
        });
    }
}

fn not_found(app: &str, id: &str, job: &str) -> Error {
    Error::request(
        ErrorCode::JobNotFound,
        format!(
            "job {job:?} was not found on machine {id}; list its jobs with GET /v1/apps/{app}/machines/{id}/jobs"
        ),
    )
}

fn slice_from(data: &[u8], cursor: u64) -> (&[u8], u64) {
    let start = (cursor as usize).min(data.len());
    let end = data.len().min(start + MAX_JOB_CHUNK);
    (&data[start..end], end as u64)
}

fn render(entry: &JobEntry, cursor: u64, stderr_cursor: u64) -> Job {
    let (stdout, next_cursor) = slice_from(&entry.stdout, cursor);
    let (stderr, next_stderr_cursor) = slice_from(&entry.stderr, stderr_cursor);
    let (state, exit_code, exit_signal, error) = match &entry.state {
        JobState::Running => ("running", None, None, None),
        JobState::Exited { code, signal } => ("exited", Some(*code), *signal, None),
        JobState::TimedOut { code, signal } => ("timed_out", Some(*code), *signal, None),
        JobState::Cancelled => ("cancelled", None, None, None),
        JobState::Failed(message) => ("failed", None, None, Some(message.clone())),
    };
    Job {
        id: entry.id.clone(),
        machine_id: entry.machine_id.to_string(),
        command: entry.argv.clone(),
        state: state.to_string(),
        exit_code,
        exit_signal,
        error,
        created_at: entry.created_at.to_rfc3339(),
        finished_at: entry.finished_at.map(|t| t.to_rfc3339()),
        stdout: String::from_utf8_lossy(stdout).into_owned(),
        stderr: String::from_utf8_lossy(stderr).into_owned(),
        cursor: cursor.min(entry.stdout.len() as u64),
        next_cursor,
        stderr_cursor: stderr_cursor.min(entry.stderr.len() as u64),
        next_stderr_cursor,
        stdout_bytes: entry.stdout.len() as u64,
        stderr_bytes: entry.stderr.len() as u64,
        stdin_open: entry.stdin_open && entry.state == JobState::Running,
    }
}

/// How long creating a job waits to hear its process runs before answering anyway
/// (a machine started by an older init never says).
const JOB_START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Service {
    /// Starts a command in a started machine and returns at once.
    pub async fn create_job(self: &Arc<Self>, app: &str, id: &str, req: JobRequest) -> Result<Job> {
        let machine = self.live_machine(app, id).await?;
        self.require_started(&machine, "run a job in")?;
        let job_id = format!("job_{}", random_hex(8));
        let spec = ExecSpec {
            // Named after the job so a cancel or signal can reach its process.
            id: job_id.clone(),
            argv: req.argv.clone(),
            env: config::environment(
                machine.id.as_str(),
                app,
                &machine.config,
                &machine.image.config,
            ),
            cwd: machine.image.config.working_dir.clone(),
            user: machine.image.config.user.clone(),
            stdin: req.stdin,
            keep_stdin: req.stdin_open,
            timeout: req.timeout,
        };
        let (done, _) = watch::channel(false);
        let entry = JobEntry {
            id: job_id.clone(),
            machine_id: machine.id.clone(),
            argv: req.argv,
            created_at: Utc::now(),
            finished_at: None,
            state: JobState::Running,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdin_open: req.stdin_open,
            task: None,
            done,
        };
        let rendered = render(&entry, 0, 0);
        self.jobs.with(|jobs| {
            let list = jobs.entry(machine.id.clone()).or_default();
            while list.len() >= MAX_JOBS_PER_MACHINE {
                match list.iter().position(|j| j.state != JobState::Running) {
                    Some(oldest) => drop(list.remove(oldest)),
                    None => break,
                }
            }
            list.push(entry);
        });
        if self.jobs.with(|jobs| jobs[&machine.id].len()) > MAX_JOBS_PER_MACHINE {
            self.jobs.with(|jobs| {
                if let Some(list) = jobs.get_mut(&machine.id) {
                    list.retain(|j| j.id != job_id);
                }
            });
            return Err(Error::request(
                ErrorCode::InvalidState,
                format!(
                    "machine {id} already runs {MAX_JOBS_PER_MACHINE} jobs; wait for one to end or cancel one"
                ),
            ));
        }
        let service = Arc::clone(self);
        let (machine_id, job) = (machine.id.clone(), job_id.clone());
        // Told when the process runs (the driver's empty first output) or the job
        // ended, whichever comes first.
        let running = Arc::new(tokio::sync::Notify::new());
        let ended = Arc::clone(&running);
        let task = tokio::spawn(async move {
            let sink = {
                let (service, machine_id, job) =
                    (Arc::clone(&service), machine_id.clone(), job.clone());
                let running = Arc::clone(&ended);
                move |stderr: bool, data: &[u8]| {
                    if data.is_empty() {
                        running.notify_one();
                    } else {
                        service.jobs.append(&machine_id, &job, stderr, data)
                    }
                }
            };
            let result = service
                .driver
                .exec_streaming(&machine_id, &spec, &sink)
                .await;
            let (state, out) = match result {
                Ok(out) if out.timed_out => (
                    JobState::TimedOut {
                        code: out.status.code,
                        signal: out.status.signal,
                    },
                    Some((out.stdout, out.stderr)),
                ),
                Ok(out) => (
                    JobState::Exited {
                        code: out.status.code,
                        signal: out.status.signal,
                    },
                    Some((out.stdout, out.stderr)),
                ),
                Err(err) => (JobState::Failed(Error::from(err).public_message()), None),
            };
            service.jobs.finish(&machine_id, &job, state, out);
            ended.notify_one();
        });
        self.jobs.with(|jobs| {
            if let Some(entry) = jobs
                .get_mut(&machine.id)
                .and_then(|l| l.iter_mut().find(|j| j.id == job_id))
                && entry.state == JobState::Running
            {
                entry.task = Some(task.abort_handle());
            }
        });
        metrics::counter!("hangar_jobs_started_total").increment(1);
        // Input sent once this returns must find the process, not race its start.
        let _ = tokio::time::timeout(JOB_START_WAIT, running.notified()).await;
        Ok(rendered)
    }

    /// The machine's jobs, newest last, without their output.
    pub async fn list_jobs(&self, app: &str, id: &str) -> Result<Vec<Job>> {
        let machine = self.machine(app, id).await?;
        Ok(self.jobs.with(|jobs| {
            jobs.get(&machine.id)
                .map(|list| {
                    list.iter()
                        .map(|j| {
                            let mut job = render(j, u64::MAX, u64::MAX);
                            job.cursor = 0;
                            job.stderr_cursor = 0;
                            job
                        })
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    /// A job and its output from the cursors on. With `wait`, waits up to that long
    /// for the job to end first.
    pub async fn get_job(
        &self,
        app: &str,
        id: &str,
        job: &str,
        cursor: u64,
        stderr_cursor: u64,
        wait: Option<Duration>,
    ) -> Result<Job> {
        let machine = self.machine(app, id).await?;
        let find = || {
            self.jobs.with(|jobs| {
                jobs.get(&machine.id)
                    .and_then(|list| list.iter().find(|j| j.id == job))
                    .map(|j| (render(j, cursor, stderr_cursor), j.done.subscribe()))
            })
        };
        let (rendered, mut done) = find().ok_or_else(|| not_found(app, id, job))?;
        let Some(wait) = wait.filter(|_| rendered.is_running()) else {
            return Ok(rendered);
        };
        let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        find()
            .map(|(job, _)| job)
            .ok_or_else(|| not_found(app, id, job))
    }

    /// Kills a running job's process group and marks it cancelled; a finished job
    /// is forgotten.
    pub async fn cancel_job(&self, app: &str, id: &str, job: &str) -> Result<Job> {
        let machine = self.machine(app, id).await?;
        // Marked cancelled before the kill, so the job's own end (killed by us)
        // cannot win the race and call it `exited`.
        let (rendered, was_running) = self
            .jobs
            .with(|jobs| {
                let list = jobs.get_mut(&machine.id)?;
                let at = list.iter().position(|j| j.id == job)?;
                let entry = &mut list[at];
                if entry.state == JobState::Running {
                    entry.state = JobState::Cancelled;
                    entry.finished_at = Some(Utc::now());
                    let _ = entry.done.send(true);
                    Some((render(entry, 0, 0), true))
                } else {
                    let entry = list.remove(at);
                    Some((render(&entry, 0, 0), false))
                }
            })
            .ok_or_else(|| not_found(app, id, job))?;
        // Killed rather than abandoned: the job's task then collects what the
        // process printed, and nothing is left running in the machine.
        if was_running
            && self
                .driver
                .signal_exec(&machine.id, job, SIGKILL)
                .await
                .is_err()
        {
            // No way to reach the process (or it just ended): stop waiting;
            // dropping the connection makes init kill what is left.
            self.jobs.with(|jobs| {
                if let Some(task) = jobs
                    .get_mut(&machine.id)
                    .and_then(|list| list.iter_mut().find(|j| j.id == job))
                    .and_then(|entry| entry.task.take())
                {
                    task.abort();
                }
            });
        }
        Ok(rendered)
    }

    /// Sends a signal (`SIGTERM`, `15`) to a running job's process group; the job
    /// keeps running until its process ends.
    pub async fn signal_job(&self, app: &str, id: &str, job: &str, signal: &str) -> Result<Job> {
        let signal = config::parse_signal(signal)?;
        let machine = self.machine(app, id).await?;
        let ended = || {
            Error::request(
                ErrorCode::InvalidState,
                format!("job {job} has already ended; start a new one to signal it"),
            )
        };
        let running = self
            .jobs
            .with(|jobs| {
                jobs.get(&machine.id)?
                    .iter()
                    .find(|j| j.id == job)
                    .map(|j| j.state == JobState::Running)
            })
            .ok_or_else(|| not_found(app, id, job))?;
        if !running {
            return Err(ended());
        }
        match self.driver.signal_exec(&machine.id, job, signal).await {
            Ok(()) => {}
            Err(DriverError::NotRunning(_)) => return Err(ended()),
            Err(e) => return Err(e.into()),
        }
        self.jobs
            .with(|jobs| {
                jobs.get(&machine.id)?
                    .iter()
                    .find(|j| j.id == job)
                    .map(|j| render(j, 0, 0))
            })
            .ok_or_else(|| not_found(app, id, job))
    }
}

impl Service {
    /// Sends `data` to the stdin of a running job started with `stdin_open`; `eof`
    /// closes its stdin afterwards (a `cat` then ends).
    pub async fn send_job_stdin(
        &self,
        app: &str,
        id: &str,
        job: &str,
        data: &[u8],
        eof: bool,
    ) -> Result<Job> {
        if data.len() > MAX_JOB_STDIN {
            return Err(Error::request(
                ErrorCode::PayloadTooLarge,
                format!(
                    "{} bytes of stdin in one request is too much: send at most {MAX_JOB_STDIN} bytes at a time",
                    data.len()
                ),
            ));
        }
        let machine = self.machine(app, id).await?;
        let (running, open) = self
            .jobs
            .with(|jobs| {
                jobs.get(&machine.id)?
                    .iter()
                    .find(|j| j.id == job)
                    .map(|j| (j.state == JobState::Running, j.stdin_open))
            })
            .ok_or_else(|| not_found(app, id, job))?;
        let closed = |why: &str| {
            Error::request(
                ErrorCode::InvalidState,
                format!(
                    "job {job} {why}; start a new job with \"stdin_open\": true to send it input"
                ),
            )
        };
        if !running {
            return Err(closed("has already ended"));
        }
        if !open {
            return Err(closed(
                "takes no input (it was started without \"stdin_open\": true, or its stdin was closed)",
            ));
        }
        match self
            .driver
            .write_exec_stdin(&machine.id, job, data, eof)
            .await
        {
            Ok(()) => {}
            Err(DriverError::NotRunning(_)) => {
                self.jobs.with(|jobs| {
                    if let Some(entry) = jobs
                        .get_mut(&machine.id)
                        .and_then(|list| list.iter_mut().find(|j| j.id == job))
                    {
                        entry.stdin_open = false;
                    }
                });
                return Err(closed("has ended or closed its stdin"));
            }
            Err(e) => return Err(e.into()),
        }
        self.jobs
            .with(|jobs| {
                let entry = jobs
                    .get_mut(&machine.id)?
                    .iter_mut()
                    .find(|j| j.id == job)?;
                if eof {
                    entry.stdin_open = false;
                }
                Some(render(
                    entry,
                    entry.stdout.len() as u64,
                    entry.stderr.len() as u64,
                ))
            })
            .ok_or_else(|| not_found(app, id, job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        assert!(JobRequest::try_from(CreateJobRequest::default()).is_err());
        let too_long = CreateJobRequest {
            command: vec!["sleep".into(), "1".into()],
            timeout: Some(MAX_JOB_TIMEOUT.as_secs() + 1),
            ..Default::default()
        };
        assert!(JobRequest::try_from(too_long).is_err());
        let ok = CreateJobRequest {
            command: vec!["true".into()],
            ..Default::default()
        };
        assert_eq!(
            JobRequest::try_from(ok).unwrap().timeout,
            DEFAULT_JOB_TIMEOUT
        );
    }

    #[test]
    fn output_is_sliced_from_the_cursor() {
        let data = b"hello world";
        assert_eq!(slice_from(data, 6), (&b"world"[..], 11));
        assert_eq!(slice_from(data, 99), (&b""[..], 11));
    }
}

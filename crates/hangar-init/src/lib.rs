//! `hangar init`: PID 1 inside every machine.
//!
//! It lives for the whole life of a machine's sandbox, also while the machine is
//! stopped: it holds the PID namespace, so starting the machine's process is one
//! request and one `fork`+`exec`. It runs the main process, reaps every zombie with
//! one central `waitpid(-1)`, forwards signals, runs `exec` commands beside the main
//! process, lists processes and writes the main process's output as JSON log lines.
//!
//! The binary is linked statically so it runs in any image (glibc, musl, busybox) and
//! is never copied into the image: the sandbox executes it from a file descriptor
//! opened on the host. It speaks [`proto`] over a unix socket it inherits.
//!
//! The library half is the protocol, shared with the runtime driver; [`run`] is the
//! binary's entry point.

pub mod proto;
pub mod time;

mod logs;
mod ps;
mod server;
mod spawn;
mod sys;
mod users;

pub use server::run;

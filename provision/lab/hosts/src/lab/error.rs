//! Errors of the lab module. Each names the lab host (or slot) and the step that failed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lab: `{program}` is needed to run lab hosts but was not found ({hint})")]
    MissingProgram { program: String, hint: String },
    #[error("lab: bad host name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("lab: bad path {path:?} for lab host {host}: {reason}")]
    BadPath { host: String, path: String, reason: String },
    #[error("lab: every lab address 127.0.1.2-254 is in use (slot locks in {dir})")]
    NoFreeSlot { dir: PathBuf },
    #[error("lab: lab host {host} ({addr}) failed to start: {detail}")]
    Start { host: String, addr: String, detail: String },
    #[error(
        "lab: sshd of lab host {host} is not listening on {addr} after {secs} s; its log ends with:\n{log_tail}"
    )]
    SshdNotReady { host: String, addr: String, secs: u64, log_tail: String },
    #[error("lab: sshd of lab host {host} still accepts connections on {addr} after {secs} s")]
    SshdStillUp { host: String, addr: String, secs: u64 },
    #[error("lab: on lab host {host}, `{command}` exited with {status}; stderr:\n{stderr}")]
    Command { host: String, command: String, status: String, stderr: String },
    #[error("lab: on lab host {host}, {what} is malformed: {detail}")]
    Malformed { host: String, what: String, detail: String },
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

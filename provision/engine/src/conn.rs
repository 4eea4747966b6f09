//! A connection to one host: SSH, or this machine (`local`, Ansible's `connection: local`).
//! Read-only commands go through [`Conn::read`]; commands that change a host are only issued
//! from `apply.rs` through [`Conn::mutate`].

use std::time::Duration;

use provision_ssh::{Output, Session, SshError, Target};

pub enum Conn {
    Ssh(Box<Session>),
    Local { name: String },
}

impl Conn {
    pub async fn connect(
        target: &Target,
        opts: &provision_ssh::Options,
        local: bool,
    ) -> Result<Conn, SshError> {
        if local {
            return Ok(Conn::Local { name: target.name.clone() });
        }
        Ok(Conn::Ssh(Box::new(Session::connect(target, opts).await?)))
    }

    /// Runs a command that must not change the host (facts, probes, captures, waits).
    pub async fn read(&self, cmd: &str, timeout: Duration) -> Result<Output, SshError> {
        self.run(cmd, None, timeout).await
    }

    /// Runs a command that changes the host. Only `apply::apply_change` calls this.
    pub(crate) async fn mutate(
        &self,
        cmd: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        self.run(cmd, stdin, timeout).await
    }

    async fn run(&self, cmd: &str, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output, SshError> {
        match self {
            Conn::Ssh(s) => s.exec(cmd, stdin, timeout).await,
            Conn::Local { name } => local_exec(name, cmd, stdin, timeout).await,
        }
    }

    /// Takes the host's provisioning lock for the life of this connection (SSH only).
    pub async fn lock(&mut self, owner: &str) -> Result<(), SshError> {
        match self {
            Conn::Ssh(s) => s.lock(owner).await,
            Conn::Local { .. } => Ok(()),
        }
    }

    /// Whether the transport is gone (always false for local).
    pub fn is_closed(&self) -> bool {
        match self {
            Conn::Ssh(s) => s.is_closed(),
            Conn::Local { .. } => false,
        }
    }

    pub async fn reconnect(&self) -> Result<Conn, SshError> {
        match self {
            Conn::Ssh(s) => Ok(Conn::Ssh(Box::new(s.reconnect().await?))),
            Conn::Local { name } => Ok(Conn::Local { name: name.clone() }),
        }
    }

    pub async fn close(self) {
        if let Conn::Ssh(s) = self {
            s.close().await;
        }
    }
}

async fn local_exec(
    name: &str,
    cmd: &str,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, SshError> {
    use tokio::io::AsyncWriteExt;
    let lost = |e: std::io::Error| SshError::Disconnected { host: name.to_string(), reason: e.to_string() };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(lost)?;
    if let Some(mut w) = child.stdin.take() {
        if let Some(data) = stdin {
            w.write_all(data).await.map_err(lost)?;
        }
        drop(w);
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.map_err(lost)?;
            Ok(Output {
                status: out.status.code().map(|c| c as u32),
                signal: None,
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
        Err(_) => Err(SshError::CommandTimeout {
            host: name.to_string(),
            command: cmd.chars().take(120).collect(),
            secs: timeout.as_secs(),
        }),
    }
}

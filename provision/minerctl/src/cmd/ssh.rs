//! The SSH flags every command that reaches hosts shares, and the one place they become
//! `provision_ssh::Options`.

use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct SshArgs {
    /// Trust and record host keys of hosts not yet in known_hosts (changed keys are still refused).
    #[arg(long)]
    pub accept_new: bool,
    /// known_hosts file [default: ~/.ssh/known_hosts].
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Seconds to wait for each SSH connection.
    #[arg(long, default_value_t = 15)]
    pub connect_timeout: u64,
}

impl SshArgs {
    pub fn options(&self) -> provision_ssh::Options {
        let mut ssh = provision_ssh::Options::new();
        if let Some(k) = &self.known_hosts {
            ssh.known_hosts = k.clone();
        }
        if self.accept_new {
            ssh.policy = provision_ssh::HostKeyPolicy::AcceptNew;
        }
        ssh.connect_timeout = Duration::from_secs(self.connect_timeout);
        ssh
    }
}

//! Step kinds: the desired state of one thing on a host. Roles build these as plain data.

use std::time::Duration;

/// One desired-state step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Shown in progress, recap and JSON; unique within a phase.
    pub name: String,
    pub action: Action,
    /// Handlers (by name) to run once at the end of the phase if this step changed something.
    pub notify: Vec<String>,
    /// Limit for each remote command of this step.
    pub timeout: Duration,
    /// `--tags` name for this step; `None`: the phase's tag.
    pub tag: Option<String>,
}

impl Step {
    pub fn new(name: impl Into<String>, action: Action) -> Step {
        let timeout = match &action {
            Action::Apt { .. } | Action::Command { .. } | Action::CommandWithInput { .. } => {
                Duration::from_secs(1800)
            }
            Action::Reboot { timeout } | Action::WaitFor { timeout, .. } => {
                *timeout + Duration::from_secs(30)
            }
            _ => Duration::from_secs(120),
        };
        Step { name: name.into(), action, notify: vec![], timeout, tag: None }
    }

    pub fn tag(mut self, tag: &str) -> Step {
        self.tag = Some(tag.to_string());
        self
    }

    pub fn notify(mut self, handler: &str) -> Step {
        self.notify.push(handler.to_string());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Step {
        self.timeout = t;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageState {
    Present,
    Absent,
}

/// Ownership and permissions of a managed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Octal permission bits, e.g. 0o644.
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

impl Meta {
    pub fn root(mode: u32) -> Meta {
        Meta { mode, owner: "root".into(), group: "root".into() }
    }
    pub fn owned(mode: u32, user: &str) -> Meta {
        Meta { mode, owner: user.into(), group: user.into() }
    }
}

#[derive(Debug, Clone)]
pub enum WaitTarget {
    /// A TCP port answers (from the host itself).
    Port { host: String, port: u16 },
    /// A command exits 0.
    Command(String),
}

#[derive(Debug, Clone)]
pub enum Action {
    /// apt packages present or absent. With `update_cache`, `apt-get update` runs first, and only
    /// when something has to be installed (so a converged host stays "ok").
    Apt { packages: Vec<String>, state: PackageState, update_cache: bool },
    /// Whole-file content (also what templates render to). `secret` hides the diff.
    File { path: String, content: String, meta: Meta, secret: bool },
    /// A line present in a file: lines whose trimmed start begins with `matches` are replaced
    /// by `line` (later duplicates dropped); without `matches`, `line` itself is looked for;
    /// if nothing matches, `line` is appended.
    /// With `absent`, matching lines are removed instead. A missing file is created with
    /// `create`'s mode and owner, or left alone when `create` is None.
    Line { path: String, line: String, matches: Option<String>, absent: bool, create: Option<Meta> },
    /// A directory with mode and owner (parents created as needed).
    Directory { path: String, meta: Meta },
    /// A path that must not exist (file or symlink; directories only when `recursive`).
    Absent { paths: Vec<String>, recursive: bool },
    /// A user with shell, supplementary groups and (added, never removed) authorized keys.
    User { name: String, shell: String, groups: Vec<String>, authorized_keys: Vec<String> },
    /// `user` is a member of `group` (added with `usermod -aG`, never removed).
    GroupMember { user: String, group: String },
    /// `/etc/sudoers.d/<name>`, checked with `visudo -c` before it is installed.
    Sudoers { name: String, content: String },
    /// A systemd unit enabled and/or started (`None` leaves that aspect alone).
    Service { unit: String, enabled: Option<bool>, started: Option<bool> },
    /// `/etc/sysctl.d/<file>` with these settings, applied with `sysctl -p` when it changes.
    Sysctl { file: String, settings: Vec<(String, String)> },
    /// A command, guarded: skipped when `creates` exists or `unless` exits 0. Without guards it
    /// always runs and reports changed (as Ansible's `command`).
    Command { run: String, creates: Option<String>, unless: Option<String> },
    /// As a guarded `Command`, with `input` (a secret, e.g. a join token) on its standard
    /// input rather than in the script: a script is an argument of `sudo sh -c`, visible in
    /// `ps` and logged by sudo (`COMMAND=` in auth.log), stdin is neither.
    CommandWithInput { run: String, input: SecretInput, unless: String },
    /// Reboot and wait until SSH answers again with a new boot id.
    Reboot { timeout: Duration },
    /// Wait until something answers; never changes anything.
    WaitFor { target: WaitTarget, timeout: Duration, interval: Duration },
    /// Read-only command whose trimmed stdout is stored as a host variable for later phases
    /// (e.g. a WireGuard public key). `secret` values are redacted from logs and output.
    /// A precondition decided while planning (e.g. "every peer's public key is known"):
    /// fails the host with `message` when false. Never changes anything.
    Assert { ok: bool, message: String },
    /// Without `read_only` the command itself changes something (e.g. `microk8s add-node`
    /// mints a token): it is then skipped in check mode.
    ///
    /// The value is the trimmed output, or with `pick`, the first occurrence of that prefix
    /// together with the non-blank characters that follow it (what `grep -o 'PREFIX[^ ]*'`
    /// would print). The output is matched here rather than by a pipeline on the host, so a
    /// failing command is never hidden behind a pipe's last exit status. An empty value, a
    /// missing match or a non-zero exit fails the step, naming what was expected and what
    /// the command printed (with tokens redacted for secret captures).
    Capture { var: String, run: String, secret: bool, read_only: bool, pick: Option<String> },
}

/// A secret a step hands to its host on stdin; `Debug` shows no part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretInput(String);

impl SecretInput {
    pub fn new(value: impl Into<String>) -> Self {
        SecretInput(value.into())
    }

    /// The value itself, for the one place that sends it (and tests).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretInput(<redacted>)")
    }
}

impl Action {
    /// The kind as shown in JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Apt { .. } => "apt",
            Action::File { .. } => "file",
            Action::Line { .. } => "line",
            Action::Directory { .. } => "directory",
            Action::Absent { .. } => "absent",
            Action::User { .. } => "user",
            Action::GroupMember { .. } => "group_member",
            Action::Sudoers { .. } => "sudoers",
            Action::Service { .. } => "service",
            Action::Sysctl { .. } => "sysctl",
            Action::Command { .. } | Action::CommandWithInput { .. } => "command",
            Action::Reboot { .. } => "reboot",
            Action::WaitFor { .. } => "wait_for",
            Action::Capture { .. } => "capture",
            Action::Assert { .. } => "assert",
        }
    }
}

/// Result of one step on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Changed,
    Failed,
    Skipped,
}

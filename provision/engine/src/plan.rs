//! Read-only probes and the decision of what (if anything) a step must change.
//!
//! Each step kind has a probe (a read-only shell snippet) and an `evaluate` that compares the
//! probed state with the desired one. Probes of a whole phase are sent as one script (one
//! round trip per host), which is what makes a no-op rerun cheap. The resulting [`Change`]
//! carries the exact mutation; nothing here mutates a host.

use std::time::Duration;

use base64::Engine as _;

use crate::step::{Action, Meta, PackageState, WaitTarget};
use provision_ssh::shell_quote as q;

/// What a step would change, and how.
#[derive(Debug, Clone)]
pub struct Change {
    /// One line, e.g. "install hello" or "write /etc/x (mode 644 -> 600)".
    pub summary: String,
    /// Unified diff of file contents, when contents change (None for secrets).
    pub diff: Option<String>,
    pub mutation: Mutation,
}

#[derive(Debug, Clone)]
pub enum Mutation {
    /// A shell script run as root, with optional stdin.
    Script { script: String, stdin: Option<Vec<u8>> },
    /// Reboot, then reconnect within the timeout.
    Reboot { timeout: Duration },
}

#[derive(Debug, Clone)]
pub enum Decision {
    /// Already in the desired state.
    Ok,
    Change(Change),
    /// Captured value for a host variable.
    Captured(String),
    /// A read-only wait to perform (not a change).
    Wait {
        target: WaitTarget,
        timeout: Duration,
        interval: Duration,
    },
}

/// Output of one probe: its exit status and combined output.
#[derive(Debug, Clone, Default)]
pub struct ProbeOut {
    pub rc: i32,
    pub text: String,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn file_probe(path: &str) -> String {
    let p = q(path);
    format!("if [ -f {p} ]; then stat -c 'META %a %U %G' {p}; base64 -w0 {p}; echo; else echo MISSING; fi")
}

/// State of a regular file as probed by [`file_probe`].
struct FileState {
    meta: Option<Meta>,
    content: Option<String>,
}

fn parse_file(out: &ProbeOut) -> Result<FileState, String> {
    let mut lines = out.text.lines();
    match lines.next() {
        Some("MISSING") | None => Ok(FileState { meta: None, content: None }),
        Some(l) if l.starts_with("META ") => {
            let f: Vec<&str> = l.split_whitespace().collect();
            let mode = u32::from_str_radix(f.get(1).unwrap_or(&"0"), 8).map_err(|e| e.to_string())?;
            let meta = Meta {
                mode,
                owner: f.get(2).unwrap_or(&"").to_string(),
                group: f.get(3).unwrap_or(&"").to_string(),
            };
            let raw = B64
                .decode(lines.next().unwrap_or("").trim())
                .map_err(|e| format!("bad probe output: {e}"))?;
            Ok(FileState { meta: Some(meta), content: Some(String::from_utf8_lossy(&raw).into_owned()) })
        }
        Some(other) => Err(format!("unexpected probe output: {other}")),
    }
}

pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{path} (current)"), &format!("{path} (desired)"))
        .to_string()
}

/// Script that writes stdin to `path` atomically with mode and owner.
pub(crate) fn write_script(path: &str, meta: &Meta) -> String {
    let p = q(path);
    let tmp = q(&format!("{path}.minerctl-tmp"));
    format!(
        "set -e; mkdir -p \"$(dirname {p})\"; umask 077; cat > {tmp}; chown {o}:{g} {tmp}; chmod {m:o} {tmp}; mv -f {tmp} {p}",
        o = q(&meta.owner),
        g = q(&meta.group),
        m = meta.mode
    )
}

fn meta_words(m: &Meta) -> String {
    format!("{:o} {}:{}", m.mode, m.owner, m.group)
}

/// Decision for a whole-file step: content and metadata against the probed file.
fn file_decision(path: &str, content: &str, meta: &Meta, secret: bool, st: FileState) -> Decision {
    let same_content = st.content.as_deref() == Some(content);
    let same_meta = st.meta.as_ref() == Some(meta);
    if same_content && same_meta {
        return Decision::Ok;
    }
    let summary = match (&st.meta, same_content) {
        (None, _) => format!("create {path} ({})", meta_words(meta)),
        (Some(m), true) => format!("set {path} {} -> {}", meta_words(m), meta_words(meta)),
        (Some(_), false) => format!("update {path}"),
    };
    let diff = if same_content || secret {
        None
    } else {
        Some(unified_diff(path, st.content.as_deref().unwrap_or(""), content))
    };
    Decision::Change(Change {
        summary,
        diff,
        mutation: Mutation::Script {
            script: write_script(path, meta),
            stdin: Some(content.as_bytes().to_vec()),
        },
    })
}

/// Whether a line is one that a `Line` step manages.
fn line_matches(existing: &str, line: &str, matches: Option<&str>) -> bool {
    match matches {
        Some(m) => existing.trim_start().starts_with(m),
        None => existing == line,
    }
}

/// New file content for a `Line` step, or None when the file already complies.
pub fn edit_lines(old: &str, line: &str, matches: Option<&str>, absent: bool) -> Option<String> {
    let lines: Vec<&str> = old.lines().collect();
    let hit = |l: &&str| line_matches(l, line, matches);
    let new_lines: Vec<&str> = if absent {
        if !lines.iter().any(hit) {
            return None;
        }
        lines.iter().copied().filter(|l| !hit(l)).collect()
    } else if lines.iter().any(hit) {
        // Replace the first match, drop later duplicates.
        let mut seen = false;
        let mut out = vec![];
        for l in &lines {
            if hit(l) {
                if !seen {
                    out.push(line);
                    seen = true;
                }
            } else {
                out.push(l);
            }
        }
        if out == lines {
            return None;
        }
        out
    } else {
        let mut out = lines.clone();
        out.push(line);
        out
    };
    let mut s = new_lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    Some(s)
}

impl Action {
    /// The read-only probe, or None when the step needs none.
    pub fn probe(&self) -> Option<String> {
        Some(match self {
            Action::Apt { packages, .. } if packages.is_empty() => return None,
            Action::Apt { packages, .. } => {
                let names: Vec<String> = packages.iter().map(|p| q(p)).collect();
                format!(
                    "dpkg-query -W -f='${{Package}} ${{db:Status-Abbrev}}\\n' {} 2>/dev/null; true",
                    names.join(" ")
                )
            }
            Action::File { path, .. } | Action::Line { path, .. } => file_probe(path),
            Action::Sudoers { name, .. } => file_probe(&format!("/etc/sudoers.d/{name}")),
            Action::Sysctl { file, .. } => file_probe(&format!("/etc/sysctl.d/{file}")),
            Action::Directory { path, .. } => {
                format!("stat -c '%F|%a|%U|%G' {} 2>/dev/null || echo MISSING", q(path))
            }
            Action::Absent { paths, .. } => {
                let list: Vec<String> = paths.iter().map(|p| q(p)).collect();
                format!(
                    "for p in {}; do if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"$p\"; fi; done",
                    list.join(" ")
                )
            }
            Action::User { name, .. } => {
                let n = q(name);
                format!(
                    "getent passwd {n} || echo MISSING; id -nG {n} 2>/dev/null || echo; \
                     h=$(getent passwd {n} | cut -d: -f6); if [ -n \"$h\" ] && [ -f \"$h/.ssh/authorized_keys\" ]; \
                     then base64 -w0 \"$h/.ssh/authorized_keys\"; fi; echo"
                )
            }
            Action::GroupMember { user, .. } => format!("id -nG {}", q(user)),
            Action::Service { unit, .. } => {
                let u = q(unit);
                format!(
                    "echo \"enabled=$(systemctl is-enabled {u} 2>/dev/null)\"; echo \"active=$(systemctl is-active {u} 2>/dev/null)\""
                )
            }
            Action::Command { creates, unless, .. } => match (creates, unless) {
                (Some(c), _) => format!("if [ -e {} ]; then echo DONE; else echo TODO; fi", q(c)),
                (None, Some(u)) => format!("if ( {u} ) >/dev/null 2>&1; then echo DONE; else echo TODO; fi"),
                (None, None) => return None,
            },
            Action::CommandWithInput { unless, .. } => {
                format!("if ( {unless} ) >/dev/null 2>&1; then echo DONE; else echo TODO; fi")
            }
            Action::Capture { run, .. } => run.clone(),
            // The first attempt rides with the phase's probes: a converged host needs no extra round trip.
            Action::WaitFor { target, .. } => wait_command(target),
            Action::Reboot { .. } | Action::Assert { .. } => return None,
        })
    }

    /// Compares the probed state with the desired one.
    pub fn evaluate(&self, out: &ProbeOut) -> Result<Decision, String> {
        Ok(match self {
            Action::Apt { packages, state, update_cache } => {
                let installed: Vec<&str> = out
                    .text
                    .lines()
                    .filter_map(|l| {
                        let mut f = l.split_whitespace();
                        let name = f.next()?;
                        // `ii`, or `hi` when held; half-installed (`iU`, `iF`) counts as missing.
                        crate::state::installed(f.next()?).then_some(name.split(':').next().unwrap_or(name))
                    })
                    .collect();
                let todo: Vec<&String> = packages
                    .iter()
                    .filter(|p| installed.contains(&p.as_str()) != (*state == PackageState::Present))
                    .collect();
                if todo.is_empty() {
                    return Ok(Decision::Ok);
                }
                let names: Vec<String> = todo.iter().map(|p| q(p)).collect();
                let env = "DEBIAN_FRONTEND=noninteractive";
                let opts = "-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold";
                let install =
                    format!("{env} apt-get install {opts} --no-install-recommends {}", names.join(" "));
                let script = match state {
                    // Package lists younger than a day are reused (Ansible's cache_valid_time);
                    // an install that fails on them is retried once after a fresh update.
                    PackageState::Present if *update_cache => format!(
                        "set -e; if [ -z \"$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n 1)\" ]; \
                         then {env} apt-get update -q; fi; {install} || {{ {env} apt-get update -q && {install}; }}"
                    ),
                    PackageState::Present => install,
                    PackageState::Absent => format!("{env} apt-get purge {opts} {}", names.join(" ")),
                };
                let verb = if *state == PackageState::Present { "install" } else { "purge" };
                let plain: Vec<&str> = todo.iter().map(|s| s.as_str()).collect();
                Decision::Change(Change {
                    summary: format!("{verb} {}", plain.join(" ")),
                    diff: None,
                    mutation: Mutation::Script { script, stdin: None },
                })
            }
            Action::File { path, content, meta, secret } => {
                file_decision(path, content, meta, *secret, parse_file(out)?)
            }
            Action::Sudoers { name, content } => {
                let path = format!("/etc/sudoers.d/{name}");
                match file_decision(&path, content, &Meta::root(0o440), false, parse_file(out)?) {
                    Decision::Change(mut c) => {
                        let tmp = q(&format!("/etc/sudoers.d/.{name}.minerctl-check"));
                        // visudo checks the candidate before it can lock anyone out.
                        c.mutation = Mutation::Script {
                            script: format!(
                                "set -e; umask 077; cat > {tmp}; if ! visudo -cf {tmp} >&2; then rm -f {tmp}; echo 'visudo rejected the sudoers snippet' >&2; exit 1; fi; \
                                 chown root:root {tmp}; chmod 440 {tmp}; mv -f {tmp} {p}",
                                p = q(&path)
                            ),
                            stdin: Some(content.as_bytes().to_vec()),
                        };
                        Decision::Change(c)
                    }
                    d => d,
                }
            }
            Action::Sysctl { file, settings } => {
                let path = format!("/etc/sysctl.d/{file}");
                let content: String = settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
                match file_decision(&path, &content, &Meta::root(0o644), false, parse_file(out)?) {
                    Decision::Change(mut c) => {
                        if let Mutation::Script { script, .. } = &mut c.mutation {
                            for (k, v) in settings {
                                script.push_str(&format!("; sysctl -q -w {}", q(&format!("{k}={v}"))));
                            }
                        }
                        Decision::Change(c)
                    }
                    d => d,
                }
            }
            Action::Line { path, line, matches, absent, create } => {
                let st = parse_file(out)?;
                let meta = match (&st.meta, create) {
                    (Some(m), _) => m.clone(),
                    (None, Some(m)) if !absent => m.clone(),
                    // Nothing to remove from, or a file that is not ours to create (e.g. cloud.cfg
                    // on a host without cloud-init).
                    (None, _) => return Ok(Decision::Ok),
                };
                let old = st.content.clone().unwrap_or_default();
                match edit_lines(&old, line, matches.as_deref(), *absent) {
                    None => Decision::Ok,
                    Some(new) => Decision::Change(Change {
                        summary: if *absent {
                            format!("remove lines from {path}")
                        } else {
                            format!("ensure line in {path}: {line}")
                        },
                        diff: Some(unified_diff(path, &old, &new)),
                        mutation: Mutation::Script {
                            script: write_script(path, &meta),
                            stdin: Some(new.into_bytes()),
                        },
                    }),
                }
            }
            Action::Directory { path, meta } => {
                let t = out.text.trim();
                let want = format!("directory|{:o}|{}|{}", meta.mode, meta.owner, meta.group);
                if t == want {
                    return Ok(Decision::Ok);
                }
                if t != "MISSING" && !t.starts_with("directory|") {
                    return Err(format!(
                        "{path} exists and is not a directory ({})",
                        t.split('|').next().unwrap_or(t)
                    ));
                }
                Decision::Change(Change {
                    summary: if t == "MISSING" {
                        format!("create directory {path}")
                    } else {
                        format!("set {path} to {}", meta_words(meta))
                    },
                    diff: None,
                    mutation: Mutation::Script {
                        script: format!(
                            "set -e; mkdir -p {p}; chown {o}:{g} {p}; chmod {m:o} {p}",
                            p = q(path),
                            o = q(&meta.owner),
                            g = q(&meta.group),
                            m = meta.mode
                        ),
                        stdin: None,
                    },
                })
            }
            Action::Absent { recursive, .. } => {
                let present: Vec<&str> = out.text.lines().filter(|l| !l.is_empty()).collect();
                if present.is_empty() {
                    return Ok(Decision::Ok);
                }
                let list: Vec<String> = present.iter().map(|p| q(p)).collect();
                Decision::Change(Change {
                    summary: format!("remove {}", present.join(", ")),
                    diff: None,
                    mutation: Mutation::Script {
                        script: format!("rm -f{} -- {}", if *recursive { "r" } else { "" }, list.join(" ")),
                        stdin: None,
                    },
                })
            }
            Action::User { name, shell, groups, authorized_keys } => {
                let mut lines = out.text.lines();
                let passwd = lines.next().unwrap_or("MISSING");
                let have_groups: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
                let keys_b64 = lines.next().unwrap_or("").trim();
                let keys = String::from_utf8_lossy(&B64.decode(keys_b64).unwrap_or_default()).into_owned();
                let exists = passwd != "MISSING";
                let shell_ok = passwd.rsplit(':').next() == Some(shell.as_str());
                let missing_groups: Vec<&String> =
                    groups.iter().filter(|g| !have_groups.contains(&g.as_str())).collect();
                let missing_keys: Vec<&String> =
                    authorized_keys.iter().filter(|k| !keys.lines().any(|l| l.trim() == k.trim())).collect();
                if exists && shell_ok && missing_groups.is_empty() && missing_keys.is_empty() {
                    return Ok(Decision::Ok);
                }
                let n = q(name);
                let mut script = format!(
                    "set -e; id {n} >/dev/null 2>&1 || useradd -m -s {s} {n}; usermod -s {s} {n}",
                    s = q(shell)
                );
                if !groups.is_empty() {
                    script.push_str(&format!("; usermod -aG {} {n}", q(&groups.join(","))));
                }
                let mut new_keys = keys.clone();
                if !new_keys.is_empty() && !new_keys.ends_with('\n') {
                    new_keys.push('\n');
                }
                for k in &missing_keys {
                    new_keys.push_str(k.trim());
                    new_keys.push('\n');
                }
                script.push_str(&format!(
                    "; h=$(getent passwd {n} | cut -d: -f6); install -d -m 700 -o {n} -g $(id -gn {n}) \"$h/.ssh\"; \
                     cat > \"$h/.ssh/authorized_keys\"; chown {n}:$(id -gn {n}) \"$h/.ssh/authorized_keys\"; chmod 600 \"$h/.ssh/authorized_keys\""
                ));
                let mut what = vec![];
                if !exists {
                    what.push(format!("create user {name}"));
                } else if !shell_ok {
                    what.push(format!("set shell {shell}"));
                }
                if !missing_groups.is_empty() {
                    what.push(format!(
                        "add to {}",
                        missing_groups.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(",")
                    ));
                }
                if !missing_keys.is_empty() {
                    what.push(format!("authorize {} key(s)", missing_keys.len()));
                }
                Decision::Change(Change {
                    summary: format!("user {name}: {}", what.join(", ")),
                    diff: None,
                    mutation: Mutation::Script { script, stdin: Some(new_keys.into_bytes()) },
                })
            }
            Action::GroupMember { user, group } => {
                if out.rc == 0 && out.text.split_whitespace().any(|g| g == group) {
                    return Ok(Decision::Ok);
                }
                Decision::Change(Change {
                    summary: format!("add {user} to group {group}"),
                    diff: None,
                    mutation: Mutation::Script {
                        script: format!("usermod -aG {} {}", q(group), q(user)),
                        stdin: None,
                    },
                })
            }
            Action::Service { unit, enabled, started } => {
                let field = |k: &str| {
                    out.text.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").trim().to_string()
                };
                let is_enabled =
                    matches!(field("enabled=").as_str(), "enabled" | "static" | "alias" | "enabled-runtime");
                let is_active = field("active=") == "active";
                let u = q(unit);
                let mut cmds = vec![];
                let mut what = vec![];
                match enabled {
                    Some(true) if !is_enabled => {
                        cmds.push(format!(
                            "systemctl unmask {u} >/dev/null 2>&1 || true; systemctl enable {u}"
                        ));
                        what.push("enable");
                    }
                    Some(false) if is_enabled => {
                        cmds.push(format!("systemctl disable {u}"));
                        what.push("disable");
                    }
                    _ => {}
                }
                match started {
                    Some(true) if !is_active => {
                        cmds.push(format!("systemctl start {u}"));
                        what.push("start");
                    }
                    Some(false) if is_active => {
                        cmds.push(format!("systemctl stop {u}"));
                        what.push("stop");
                    }
                    _ => {}
                }
                if cmds.is_empty() {
                    return Ok(Decision::Ok);
                }
                Decision::Change(Change {
                    summary: format!("{} {unit}", what.join(" + ")),
                    diff: None,
                    mutation: Mutation::Script {
                        script: format!("set -e; {}", cmds.join("; ")),
                        stdin: None,
                    },
                })
            }
            Action::Command { run, creates, unless } => {
                if (creates.is_some() || unless.is_some()) && out.text.trim() == "DONE" {
                    return Ok(Decision::Ok);
                }
                Decision::Change(Change {
                    summary: format!("run: {}", first_line(run)),
                    diff: None,
                    mutation: Mutation::Script { script: run.clone(), stdin: None },
                })
            }
            Action::CommandWithInput { run, input, .. } => {
                if out.text.trim() == "DONE" {
                    return Ok(Decision::Ok);
                }
                Decision::Change(Change {
                    summary: format!("run: {}", first_line(run)),
                    diff: None,
                    mutation: Mutation::Script {
                        script: run.clone(),
                        stdin: Some(input.expose().as_bytes().to_vec()),
                    },
                })
            }
            Action::Capture { run, secret, pick, .. } => {
                Decision::Captured(captured_value(run, out, pick.as_deref(), *secret)?)
            }
            Action::Assert { ok: true, .. } => Decision::Ok,
            Action::Assert { ok: false, message } => return Err(message.clone()),
            Action::Reboot { timeout } => Decision::Change(Change {
                summary: "reboot".into(),
                diff: None,
                mutation: Mutation::Reboot { timeout: *timeout },
            }),
            Action::WaitFor { target, timeout, interval } => {
                if out.rc == 0 {
                    return Ok(Decision::Ok);
                }
                Decision::Wait { target: target.clone(), timeout: *timeout, interval: *interval }
            }
        })
    }
}

/// The value of a capture from its command's output (see [`Action::Capture`]).
fn captured_value(run: &str, out: &ProbeOut, pick: Option<&str>, secret: bool) -> Result<String, String> {
    let printed = || {
        let text = if secret { redact_tokens(&out.text) } else { out.text.trim().to_string() };
        if text.is_empty() { "nothing".to_string() } else { format!("\n{}", tail(&text, 2000)) }
    };
    if out.rc != 0 {
        return Err(format!("`{}` exited {}; it printed {}", first_line(run), out.rc, printed()));
    }
    let value = match pick {
        None => out.text.trim().to_string(),
        Some(prefix) => out
            .text
            .lines()
            .find_map(|l| {
                let rest = &l[l.find(prefix)? + prefix.len()..];
                let word = rest.split(char::is_whitespace).next().unwrap_or("");
                (!word.is_empty()).then(|| format!("{prefix}{word}"))
            })
            .ok_or_else(|| {
                format!(
                    "expected a line with `{prefix}...` from `{}`; it printed {}",
                    first_line(run),
                    printed()
                )
            })?,
    };
    if value.is_empty() {
        return Err(format!("`{}` printed nothing", first_line(run)));
    }
    Ok(value)
}

/// Output of a secret capture as it may be shown: every word with a `/` keeps only what comes
/// before it (`microk8s join 10.0.0.1:25000/<redacted>`), which still shows the addresses offered.
fn redact_tokens(text: &str) -> String {
    text.trim()
        .lines()
        .map(|l| {
            l.split(' ')
                .map(|w| match w.split_once('/') {
                    Some((head, _)) => format!("{head}/<redacted>"),
                    None => w.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` bytes of trimmed `s` (at a character boundary), marked when cut.
pub(crate) fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    if s.len() <= n { s.to_string() } else { format!("...{}", &s[s.ceil_char_boundary(s.len() - n)..]) }
}

/// The read-only check behind a wait: exits 0 once the target answers.
pub fn wait_command(target: &WaitTarget) -> String {
    match target {
        WaitTarget::Port { host, port } => {
            format!("timeout 5 bash -c {} >/dev/null 2>&1", q(&format!("</dev/tcp/{host}/{port}")))
        }
        WaitTarget::Command(c) => c.clone(),
    }
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    if l.len() > 100 { format!("{}...", &l[..l.floor_char_boundary(100)]) } else { l.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_lines_replaces_appends_and_removes() {
        assert_eq!(
            edit_lines("a\n--node-ip=1\nb\n", "--node-ip=2", Some("--node-ip="), false).unwrap(),
            "a\n--node-ip=2\nb\n"
        );
        assert_eq!(edit_lines("a\n--node-ip=2\n", "--node-ip=2", Some("--node-ip="), false), None);
        assert_eq!(edit_lines("a", "x", None, false).unwrap(), "a\nx\n");
        assert_eq!(edit_lines("", "x", None, false).unwrap(), "x\n");
        // The containerd fix: every `disabled_plugins` line goes, indented or not.
        assert_eq!(
            edit_lines(
                "version = 2\n  disabled_plugins = [\"cri\"]\nroot = 1\n",
                "",
                Some("disabled_plugins"),
                true
            )
            .unwrap(),
            "version = 2\nroot = 1\n"
        );
        assert_eq!(
            edit_lines("version = 2\n#disabled_plugins = []\n", "", Some("disabled_plugins"), true),
            None
        );
    }

    #[test]
    fn apt_probe_output_decides_what_to_install() {
        let a = Action::Apt {
            packages: vec!["hello".into(), "jq".into()],
            state: PackageState::Present,
            update_cache: true,
        };
        let out = ProbeOut { rc: 0, text: "hello ii \njq un \n".into() };
        match a.evaluate(&out).unwrap() {
            Decision::Change(c) => {
                assert_eq!(c.summary, "install jq");
                let Mutation::Script { script, .. } = c.mutation else { panic!() };
                assert!(
                    script.contains("apt-get update") && script.contains("--no-install-recommends jq"),
                    "{script}"
                );
            }
            d => panic!("{d:?}"),
        }
        let out = ProbeOut { rc: 0, text: "hello ii \njq ii \n".into() };
        assert!(matches!(a.evaluate(&out).unwrap(), Decision::Ok));
    }

    /// A held package (`apt-mark hold`, common for drivers) is installed: installing it again
    /// would report a change every run, or fail once a newer version exists.
    #[test]
    fn held_packages_count_as_installed_half_installed_ones_do_not() {
        let present = |p: &str| Action::Apt {
            packages: vec![p.into()],
            state: PackageState::Present,
            update_cache: true,
        };
        let out = |t: &str| ProbeOut { rc: 0, text: t.into() };
        let d = present("nvidia-open").evaluate(&out("nvidia-open hi \n")).unwrap();
        assert!(matches!(d, Decision::Ok), "{d:?}");
        let d = present("libc6").evaluate(&out("libc6:amd64 hi \n")).unwrap();
        assert!(matches!(d, Decision::Ok), "{d:?}");
        for broken in ["iU ", "iF ", "hF ", "iiR", "hiR", "rc ", "hn "] {
            let d = present("nvidia-open").evaluate(&out(&format!("nvidia-open {broken}\n"))).unwrap();
            assert!(matches!(d, Decision::Change(_)), "{broken:?}: {d:?}");
        }
        // Wanted absent, a held package is still there: purging it is planned (apt then
        // names the hold), not skipped as if it were gone.
        let absent = Action::Apt {
            packages: vec!["containerd.io".into()],
            state: PackageState::Absent,
            update_cache: false,
        };
        let d = absent.evaluate(&out("containerd.io hi \n")).unwrap();
        assert!(matches!(&d, Decision::Change(c) if c.summary == "purge containerd.io"), "{d:?}");
    }

    #[test]
    fn file_change_shows_a_unified_diff_unless_secret() {
        let a = Action::File {
            path: "/etc/x".into(),
            content: "a\nB\n".into(),
            meta: Meta::root(0o644),
            secret: false,
        };
        let out = ProbeOut { rc: 0, text: format!("META 644 root root\n{}\n", B64.encode("a\nb\n")) };
        let Decision::Change(c) = a.evaluate(&out).unwrap() else { panic!() };
        expect_test::expect![[r#"
            --- /etc/x (current)
            +++ /etc/x (desired)
            @@ -1,2 +1,2 @@
             a
            -b
            +B
        "#]]
        .assert_eq(&c.diff.unwrap());
        let secret = Action::File {
            path: "/etc/x".into(),
            content: "k\n".into(),
            meta: Meta::root(0o600),
            secret: true,
        };
        let Decision::Change(c) = secret.evaluate(&out).unwrap() else { panic!() };
        assert!(c.diff.is_none());
    }
}

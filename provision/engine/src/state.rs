//! A host's state, read once in one round trip and decided on here.
//!
//! A converged host should cost almost nothing, and on a host most of the cost of a probe
//! is starting processes (a shell, `stat`, `base64`, `dpkg-query`, `systemctl` for every
//! step). So before the first phase, one command reads everything every phase's steps
//! will look at, with one process per *kind* of state rather than one per step:
//!
//! | state | read with | answers |
//! |---|---|---|
//! | facts | the facts script | planning |
//! | packages | one `grep` of `/var/lib/dpkg/status` | apt |
//! | file contents, mode, owner | one `tar` of the managed files (plus `/etc/passwd`, `/etc/group`, authorized_keys) | file, line, sudoers, sysctl, user, group member |
//! | type, mode, owner | one `stat` | directory |
//! | existence | shell built-ins (`[ -e ]`), no process | absent, command `creates` |
//! | units | one `systemctl show` | service |
//! | anything else | its own shell probe, in the same command | command `unless`, capture, first attempt of a wait |
//!
//! [`Snapshot::answer`] turns this into exactly the text each step's own probe would have
//! printed, so `evaluate` (and with it `--check`) decides the same way whichever read it.
//! Contents are only read for files a step writes or edits: a `creates` path (such as a
//! private key) is only tested for existence.
//!
//! A snapshot is only as good as the moment it was taken: the runner drops it once anything
//! changed on any host, and steps it cannot answer are probed as before.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;

use crate::plan::ProbeOut;
use crate::step::Action;
use provision_ssh::shell_quote as q;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Where an action's probe is answered from.
enum Source {
    /// The snapshot's structured reads.
    Structured,
    /// Its own shell probe (run inside the snapshot command).
    Shell(String),
    /// Nothing to read.
    None,
}

fn home(user: &str) -> String {
    if user == "root" { "/root".into() } else { format!("/home/{user}") }
}

fn source(action: &Action) -> Source {
    match action {
        Action::Apt { packages, .. } if packages.is_empty() => Source::None,
        Action::Apt { .. }
        | Action::File { .. }
        | Action::Line { .. }
        | Action::Sudoers { .. }
        | Action::Sysctl { .. }
        | Action::Directory { .. }
        | Action::Absent { .. }
        | Action::User { .. }
        | Action::GroupMember { .. }
        | Action::Service { .. }
        | Action::Command { creates: Some(_), .. } => Source::Structured,
        // A capture that mints something is not a read.
        Action::Capture { read_only: false, .. } => Source::None,
        _ => match action.probe() {
            Some(p) => Source::Shell(p),
            None => Source::None,
        },
    }
}

/// What a snapshot reads: collected from every step that the run's phases plan.
#[derive(Default, Debug, Clone)]
pub struct Request {
    packages: bool,
    /// Files whose contents are read.
    contents: BTreeSet<String>,
    /// Paths whose type and metadata are read (never their contents).
    meta: BTreeSet<String>,
    /// Paths only tested for existence (shell built-ins: no process at all).
    exists: BTreeSet<String>,
    units: Vec<String>,
    shell: Vec<String>,
}

impl Request {
    pub fn add(&mut self, action: &Action) {
        match source(action) {
            Source::None => {}
            Source::Shell(p) => {
                if !self.shell.contains(&p) {
                    self.shell.push(p);
                }
            }
            Source::Structured => match action {
                Action::Apt { .. } => self.packages = true,
                Action::File { path, .. } | Action::Line { path, .. } => {
                    self.contents.insert(path.clone());
                }
                Action::Sudoers { name, .. } => {
                    self.contents.insert(format!("/etc/sudoers.d/{name}"));
                }
                Action::Sysctl { file, .. } => {
                    self.contents.insert(format!("/etc/sysctl.d/{file}"));
                }
                Action::Directory { path, .. } => {
                    self.meta.insert(path.clone());
                }
                Action::Absent { paths, .. } => self.exists.extend(paths.iter().cloned()),
                Action::Command { creates: Some(c), .. } => {
                    self.exists.insert(c.clone());
                }
                Action::GroupMember { .. } => {
                    self.contents.insert("/etc/passwd".into());
                    self.contents.insert("/etc/group".into());
                }
                Action::User { name, .. } => {
                    self.contents.insert("/etc/passwd".into());
                    self.contents.insert("/etc/group".into());
                    self.contents.insert(format!("{}/.ssh/authorized_keys", home(name)));
                }
                Action::Service { unit, .. } if !self.units.contains(unit) => self.units.push(unit.clone()),
                _ => {}
            },
        }
    }

    /// The one command: facts, then each read in its own section. With `profile`, each
    /// section is followed by the shell's `times` (CPU of the processes it waited for).
    pub fn script(&self, marker: &str, facts: Option<&str>, profile: bool) -> String {
        let times = if profile { format!("printf '%s\\n' '{marker} cpu'; times\n") } else { String::new() };
        let mut s = String::new();
        if let Some(facts) = facts {
            s.push_str(&format!("printf '%s\\n' '{marker} facts'\n{{\n{facts}\n}} 2>/dev/null\n{times}"));
        }
        if self.packages {
            s.push_str(&format!(
                "printf '%s\\n' '{marker} dpkg'\ngrep -E '^(Package|Status):' /var/lib/dpkg/status 2>/dev/null\n{times}"
            ));
        }
        if !self.units.is_empty() {
            let units: Vec<String> = self.units.iter().map(|u| q(u)).collect();
            s.push_str(&format!(
                "printf '%s\\n' '{marker} units'\nsystemctl show -p UnitFileState -p ActiveState -- {} 2>/dev/null\n{times}",
                units.join(" ")
            ));
        }
        if !self.meta.is_empty() {
            let paths: Vec<String> = self.meta.iter().map(|p| q(p)).collect();
            s.push_str(&format!(
                "printf '%s\\n' '{marker} stat'\nstat -c '%F|%a|%U|%G|%n' -- {} 2>/dev/null\n{times}",
                paths.join(" ")
            ));
        }
        if !self.exists.is_empty() {
            let paths: Vec<String> = self.exists.iter().map(|p| q(p)).collect();
            // `E`: exists (links followed, as `[ -e ]`); `L`: is a symbolic link.
            s.push_str(&format!(
                "printf '%s\\n' '{marker} exists'\nfor p in {}; do e=; [ ! -e \"$p\" ] || e=E; [ ! -L \"$p\" ] || e=${{e}}L; [ -z \"$e\" ] || printf '%s %s\\n' \"$e\" \"$p\"; done\n{times}",
                paths.join(" ")
            ));
        }
        for (i, p) in self.shell.iter().enumerate() {
            s.push_str(&format!(
                "printf '%s\\n' '{marker} sh {i}'; ( {p}\n) 2>&1; printf '\\n%s %s\\n' '{marker}-rc' \"$?\"\n{times}"
            ));
        }
        if !self.contents.is_empty() {
            let paths: Vec<String> = self.contents.iter().map(|p| q(p)).collect();
            // Binary, so last: everything after this line up to the end marker is the archive.
            s.push_str(&format!(
                "printf '%s\\n' '{marker} tar'\ntar -c -P --no-recursion -f - -- {} 2>/dev/null\nprintf '\\n%s\\n' '{marker} end'\n{times}",
                paths.join(" ")
            ));
        }
        s
    }

    /// Reads this file's contents too, for the engine itself (see [`Snapshot::contents`]).
    pub fn add_contents(&mut self, path: &str) {
        self.contents.insert(path.to_string());
    }

    /// A step's own shell probe, run as it is (when the snapshot cannot answer).
    pub fn add_shell(&mut self, probe: String) {
        if !self.shell.contains(&probe) {
            self.shell.push(probe);
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.packages
            && self.contents.is_empty()
            && self.meta.is_empty()
            && self.exists.is_empty()
            && self.units.is_empty()
            && self.shell.is_empty()
    }

    /// (kind, label) of the sections, in order, for profiles.
    fn labels(&self, facts: bool, steps: &HashMap<String, (String, String)>) -> Vec<(String, String)> {
        let read = |l: &str| ("state read".to_string(), l.to_string());
        let mut l = vec![];
        if facts {
            l.push(("facts".to_string(), "facts".to_string()));
        }
        if self.packages {
            l.push(read("packages (dpkg status)"));
        }
        if !self.units.is_empty() {
            l.push(read("units (systemctl show)"));
        }
        if !self.meta.is_empty() {
            l.push(read("paths (stat)"));
        }
        if !self.exists.is_empty() {
            l.push(read("paths (exist)"));
        }
        for p in &self.shell {
            l.push(steps.get(p).cloned().unwrap_or_else(|| ("shell".into(), "shell probe".into())));
        }
        if !self.contents.is_empty() {
            l.push(read("file contents (tar)"));
        }
        l
    }
}

/// A file as read by `tar` (contents) or `stat` (metadata only).
#[derive(Debug, Clone)]
struct PathState {
    /// `regular file`, `directory`, `symbolic link`, ... as `stat -c %F` says.
    kind: String,
    mode: u32,
    owner: String,
    group: String,
    content: Option<Vec<u8>>,
}

/// The state of one host at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub facts_text: String,
    request: Request,
    /// Package name -> best `${db:Status-Abbrev}` (`ii ` when any architecture is installed).
    packages: HashMap<String, String>,
    units: HashMap<String, (String, String)>,
    paths: HashMap<String, PathState>,
    /// Path -> (exists, is a symbolic link), for `exists` paths.
    exists: HashMap<String, (bool, bool)>,
    shell: HashMap<String, ProbeOut>,
    /// (step kind, probe, CPU seconds) per section, when profiled.
    pub cpu: Vec<(String, String, f64)>,
}

impl Snapshot {
    /// Parses the output of [`Request::script`]. `labels` names shell probes for profiles.
    pub fn parse(
        out: &[u8],
        marker: &str,
        req: &Request,
        facts: bool,
        labels: &HashMap<String, (String, String)>,
    ) -> Snapshot {
        let mut snap = Snapshot { request: req.clone(), ..Default::default() };
        // The archive is binary; everything else is text.
        let tar_tag = format!("{marker} tar\n");
        let (text_part, tar_part) = match find(out, tar_tag.as_bytes()) {
            Some(i) => (&out[..i], Some(&out[i + tar_tag.len()..])),
            None => (out, None),
        };
        let mut after_tar = String::new();
        if let Some(rest) = tar_part {
            let end_tag = format!("\n{marker} end\n");
            let (archive, tail) = match rfind(rest, end_tag.as_bytes()) {
                Some(i) => (&rest[..i], &rest[i + end_tag.len()..]),
                None => (rest, &[][..]),
            };
            for (name, st) in parse_tar(archive) {
                snap.paths.insert(name, st);
            }
            after_tar = String::from_utf8_lossy(tail).into_owned();
        }
        let text = String::from_utf8_lossy(text_part).into_owned();
        let mut cpu_marks = vec![];
        let mut section = String::new();
        let mut body = String::new();
        let head = format!("{marker} ");
        let rc_tag = format!("{marker}-rc ");
        let finish = |name: &str, body: &str, snap: &mut Snapshot| {
            if name == "facts" {
                snap.facts_text = body.to_string();
            } else if name == "dpkg" {
                parse_dpkg(body, &mut snap.packages);
            } else if name == "units" {
                let blocks: Vec<&str> = body.split("\n\n").filter(|b| !b.trim().is_empty()).collect();
                if blocks.len() == snap.request.units.len() {
                    for (u, b) in snap.request.units.iter().zip(blocks) {
                        let get = |k: &str| {
                            b.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").trim().to_string()
                        };
                        snap.units.insert(u.clone(), (get("UnitFileState="), get("ActiveState=")));
                    }
                }
            } else if name == "stat" {
                for l in body.lines() {
                    let mut f = l.splitn(5, '|');
                    let (Some(kind), Some(mode), Some(owner), Some(group), Some(path)) =
                        (f.next(), f.next(), f.next(), f.next(), f.next())
                    else {
                        continue;
                    };
                    let Ok(mode) = u32::from_str_radix(mode, 8) else { continue };
                    snap.paths.entry(path.to_string()).or_insert(PathState {
                        kind: kind.into(),
                        mode,
                        owner: owner.into(),
                        group: group.into(),
                        content: None,
                    });
                }
            } else if name == "exists" {
                for l in body.lines() {
                    if let Some((flags, path)) = l.split_once(' ') {
                        snap.exists.insert(path.to_string(), (flags.contains('E'), flags.contains('L')));
                    }
                }
            } else if let Some(i) = name.strip_prefix("sh ").and_then(|i| i.parse::<usize>().ok())
                && let Some(p) = snap.request.shell.get(i).cloned()
            {
                // `( probe ) 2>&1; printf '\n<marker>-rc N\n'`
                if let Some(end) = body.rfind(&format!("\n{rc_tag}")) {
                    let rc = body[end + rc_tag.len() + 1..].trim().parse().unwrap_or(1);
                    snap.shell.insert(p, ProbeOut { rc, text: body[..end].to_string() });
                }
            }
        };
        for line in text.split_inclusive('\n') {
            if let Some(rest) = line.strip_prefix(&head) {
                finish(&section, &body, &mut snap);
                body.clear();
                section = rest.trim_end().to_string();
                if section == "cpu" {
                    section.clear();
                }
                continue;
            }
            if section.is_empty() {
                // `times` output after a section: the children's line is the second.
                cpu_marks.push(line.to_string());
                continue;
            }
            body.push_str(line);
        }
        finish(&section, &body, &mut snap);
        // CPU per section: `times` prints two lines, the shell's own (user sys) and its
        // children's, cumulative; the second of each pair counts.
        let all_times = cpu_marks.concat() + &after_tar;
        let pairs: Vec<&str> =
            all_times.lines().filter(|l| !l.starts_with(marker) && l.trim_end().ends_with('s')).collect();
        let children: Vec<f64> = pairs.chunks(2).filter(|c| c.len() == 2).map(|c| seconds(c[1])).collect();
        let mut prev = 0.0;
        for ((kind, label), total) in req.labels(facts, labels).into_iter().zip(children) {
            snap.cpu.push((kind, label, (total - prev).max(0.0)));
            prev = total;
        }
        snap
    }

    /// The output of a shell probe run by this snapshot.
    pub fn shell(&self, probe: &str) -> Option<ProbeOut> {
        self.shell.get(probe).cloned()
    }

    /// A file read for [`Request::add_contents`]: None when it was not asked for, `Some(None)`
    /// when it is missing or not a regular file.
    pub fn contents(&self, path: &str) -> Option<Option<&[u8]>> {
        if !self.request.contents.contains(path) {
            return None;
        }
        Some(self.paths.get(path).filter(|p| p.kind == "regular file").and_then(|p| p.content.as_deref()))
    }

    /// The text `action`'s own probe would have printed, or None when it must be probed.
    pub fn answer(&self, action: &Action) -> Option<ProbeOut> {
        let text = match action {
            Action::Apt { packages, .. } => {
                let mut t = String::new();
                for p in packages {
                    if let Some(s) = self.packages.get(p) {
                        t.push_str(&format!("{p} {s}\n"));
                    }
                }
                t
            }
            Action::File { path, .. } | Action::Line { path, .. } => self.file_text(path)?,
            Action::Sudoers { name, .. } => self.file_text(&format!("/etc/sudoers.d/{name}"))?,
            Action::Sysctl { file, .. } => self.file_text(&format!("/etc/sysctl.d/{file}"))?,
            Action::Directory { path, .. } => match self.paths.get(path) {
                None => "MISSING\n".into(),
                Some(p) => format!("{}|{:o}|{}|{}\n", p.kind, p.mode, p.owner, p.group),
            },
            Action::Absent { paths, .. } => {
                if !paths.iter().all(|p| self.request.exists.contains(p)) {
                    return None;
                }
                paths.iter().filter(|p| self.exists.contains_key(*p)).map(|p| format!("{p}\n")).collect()
            }
            Action::Command { creates: Some(c), .. } => {
                if !self.request.exists.contains(c) {
                    return None;
                }
                match self.exists.get(c) {
                    Some((true, _)) => "DONE\n".into(),
                    _ => "TODO\n".into(),
                }
            }
            Action::GroupMember { user, .. } => {
                let (_, _, groups) = self.account(user)?;
                format!("{}\n", groups.join(" "))
            }
            Action::User { name, .. } => self.user_text(name)?,
            Action::Service { unit, .. } => {
                let (enabled, active) = self.units.get(unit)?;
                // `systemctl show` says "" for a unit without a unit file; is-enabled printed nothing.
                format!("enabled={enabled}\nactive={active}\n")
            }
            _ => return self.shell.get(&action.probe()?).cloned(),
        };
        Some(ProbeOut { rc: 0, text })
    }

    /// A file probe's text (`META mode owner group` + base64, or MISSING).
    fn file_text(&self, path: &str) -> Option<String> {
        if !self.request.contents.contains(path) {
            return None;
        }
        match self.paths.get(path) {
            None => Some("MISSING\n".into()),
            Some(p) if p.kind == "regular file" => Some(format!(
                "META {:o} {} {}\n{}\n",
                p.mode,
                p.owner,
                p.group,
                B64.encode(p.content.as_deref().unwrap_or_default())
            )),
            // `[ -f ]` follows links; anything else is not a regular file.
            Some(p) if p.kind == "symbolic link" => None,
            Some(_) => Some("MISSING\n".into()),
        }
    }

    /// A local account from /etc/passwd and /etc/group: (passwd line, home, `id -nG`).
    /// None for a user only another NSS source knows (LDAP, ...): `getent` and `id` decide then.
    fn account(&self, name: &str) -> Option<(String, String, Vec<String>)> {
        let passwd = String::from_utf8_lossy(self.paths.get("/etc/passwd")?.content.as_deref()?).into_owned();
        let group = String::from_utf8_lossy(self.paths.get("/etc/group")?.content.as_deref()?).into_owned();
        let line = passwd.lines().find(|l| l.split(':').next() == Some(name))?;
        let f: Vec<&str> = line.split(':').collect();
        let (gid, user_home) = (*f.get(3)?, *f.get(5)?);
        let mut groups = vec![];
        for g in group.lines() {
            let gf: Vec<&str> = g.split(':').collect();
            let (Some(gname), Some(ggid), Some(members)) = (gf.first(), gf.get(2), gf.get(3)) else {
                continue;
            };
            if *ggid == gid {
                groups.insert(0, gname.to_string());
            } else if members.split(',').any(|m| m == name) {
                groups.push(gname.to_string());
            }
        }
        Some((line.to_string(), user_home.to_string(), groups))
    }

    /// The user probe's text: passwd line, `id -nG`, base64 authorized_keys.
    fn user_text(&self, name: &str) -> Option<String> {
        let (line, user_home, groups) = self.account(name)?;
        let keys_path = format!("{}/.ssh/authorized_keys", home(name));
        if user_home != home(name) || !self.request.contents.contains(&keys_path) {
            return None;
        }
        let keys = match self.paths.get(&keys_path) {
            Some(p) if p.kind == "regular file" => B64.encode(p.content.as_deref().unwrap_or_default()),
            Some(_) => return None,
            None => String::new(),
        };
        Some(format!("{line}\n{}\n{keys}\n", groups.join(" ")))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// `0m0.012s` (bash) or `0m0.012000s` (dash) pairs; the sum of the pair.
fn seconds(line: &str) -> f64 {
    line.split_whitespace()
        .filter_map(|t| {
            let (m, s) = t.strip_suffix('s')?.split_once('m')?;
            Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
        })
        .sum()
}

/// `Package:` / `Status:` lines of the dpkg status file into name -> `${db:Status-Abbrev}`.
fn parse_dpkg(text: &str, out: &mut HashMap<String, String>) {
    let mut name: Option<&str> = None;
    for l in text.lines() {
        if let Some(n) = l.strip_prefix("Package:") {
            name = Some(n.trim());
        } else if let (Some(st), Some(n)) = (l.strip_prefix("Status:"), name) {
            let abbrev = status_abbrev(st);
            // Several architectures of one package: installed if any is.
            let e = out.entry(n.to_string()).or_insert_with(|| abbrev.clone());
            if installed(abbrev.trim_end()) && !installed(e.trim_end()) {
                *e = abbrev;
            }
        }
    }
}

/// Whether a `${db:Status-Abbrev}` (trailing blank trimmed) means installed and usable:
/// `ii`, or `hi` (held with `apt-mark hold`, as drivers often are). Half-installed or
/// half-configured (`iU`, `iF`, ...) and any error flag (`iiR`) are not.
pub(crate) fn installed(abbrev: &str) -> bool {
    abbrev == "ii" || abbrev == "hi"
}

/// `install ok installed` -> `ii ` (what dpkg-query's `${db:Status-Abbrev}` prints).
fn status_abbrev(status: &str) -> String {
    let f: Vec<&str> = status.split_whitespace().collect();
    let want = match f.first().copied() {
        Some("install") => 'i',
        Some("hold") => 'h',
        Some("deinstall") => 'r',
        Some("purge") => 'p',
        _ => 'u',
    };
    let err = if f.get(1) == Some(&"reinstreq") { 'R' } else { ' ' };
    let state = match f.get(2).copied() {
        Some("installed") => 'i',
        Some("config-files") => 'c',
        Some("unpacked") => 'U',
        Some("half-configured") => 'F',
        Some("half-installed") => 'H',
        Some("triggers-awaited") => 'W',
        Some("triggers-pending") => 't',
        _ => 'n',
    };
    format!("{want}{state}{err}")
}

/// Entries of a tar archive (GNU or POSIX ustar, with GNU long names and pax paths).
/// Written here rather than with a crate: only reading headers and contents of a few
/// small files is needed.
fn parse_tar(data: &[u8]) -> BTreeMap<String, PathState> {
    let mut out = BTreeMap::new();
    let mut pos = 0;
    let mut long_name: Option<String> = None;
    while pos + 512 <= data.len() {
        let h = &data[pos..pos + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let size = octal(&h[124..136]) as usize;
        let kind = h[156];
        let body_start = pos + 512;
        let body_end = (body_start + size).min(data.len());
        let body = &data[body_start..body_end];
        pos = body_start + size.div_ceil(512) * 512;
        match kind {
            b'L' => {
                long_name = Some(cstr(body));
                continue;
            }
            b'x' => {
                long_name = pax_path(body).or(long_name);
                continue;
            }
            b'K' | b'g' => continue,
            _ => {}
        }
        let mut name = match long_name.take() {
            Some(n) => n,
            None => {
                let n = cstr(&h[0..100]);
                let prefix = cstr(&h[345..500]);
                // POSIX ustar keeps the start of long names in `prefix`; GNU uses that space otherwise.
                if &h[257..263] == b"ustar\0" && !prefix.is_empty() { format!("{prefix}/{n}") } else { n }
            }
        };
        while name.len() > 1 && name.ends_with('/') {
            name.pop();
        }
        let kind_word = match kind {
            b'0' | 0 | b'7' => "regular file",
            b'5' => "directory",
            b'2' => "symbolic link",
            b'1' => "hard link",
            b'3' => "character special file",
            b'4' => "block special file",
            b'6' => "fifo",
            _ => "other",
        };
        out.insert(
            name,
            PathState {
                kind: kind_word.into(),
                mode: (octal(&h[100..108]) & 0o7777) as u32,
                owner: cstr(&h[265..297]),
                group: cstr(&h[297..329]),
                content: (kind_word == "regular file").then(|| body.to_vec()),
            },
        );
    }
    out
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A numeric header field: octal text, or GNU's base-256 for large values.
fn octal(b: &[u8]) -> u64 {
    if b.first().is_some_and(|c| c & 0x80 != 0) {
        return b[1..].iter().fold(0u64, |acc, c| (acc << 8) | u64::from(*c));
    }
    let s = cstr(b);
    u64::from_str_radix(s.trim_matches(|c: char| c == ' ' || c == '\0'), 8).unwrap_or(0)
}

/// `path=` from pax extended header records (`LEN key=value\n`).
fn pax_path(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    text.lines().find_map(|l| l.split_once(' ')?.1.strip_prefix("path=").map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_becomes_the_abbreviation_dpkg_query_prints() {
        let mut m = HashMap::new();
        parse_dpkg(
            "Package: hello\nStatus: install ok installed\nPackage: jq\nStatus: deinstall ok config-files\n\
             Package: libc6\nStatus: install ok half-configured\nPackage: libc6\nStatus: install ok installed\n",
            &mut m,
        );
        assert_eq!(m["hello"], "ii ");
        assert_eq!(m["jq"], "rc ");
        assert_eq!(m["libc6"], "ii ");
    }

    #[test]
    fn held_packages_read_as_held_and_installed() {
        let mut m = HashMap::new();
        parse_dpkg(
            "Package: nvidia-open\nStatus: hold ok installed\n\
             Package: libfoo\nStatus: deinstall ok config-files\nPackage: libfoo\nStatus: hold ok installed\n\
             Package: libbar\nStatus: hold ok installed\nPackage: libbar\nStatus: install ok half-configured\n",
            &mut m,
        );
        assert_eq!(m["nvidia-open"], "hi ");
        // Several architectures: installed (held) wins over one that is not.
        assert_eq!(m["libfoo"], "hi ");
        assert_eq!(m["libbar"], "hi ");
    }

    #[test]
    fn times_lines_are_summed() {
        assert!((seconds("0m0.012000s 0m0.004000s") - 0.016).abs() < 1e-9);
        assert!((seconds("1m2.5s 0m0.5s") - 63.0).abs() < 1e-9);
    }
}

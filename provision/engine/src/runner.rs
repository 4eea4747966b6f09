//! Runs phases over hosts: connect, gather facts, then for each phase plan the steps from
//! facts and shared variables, probe them in one round trip, and apply what differs.
//!
//! Hosts run in parallel (at most `forks` at a time) and meet at a barrier between phases,
//! so a phase can use what earlier phases captured on every host (WireGuard public keys,
//! the join token). A failing host stops only itself unless `fail_fast`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use provision_inventory::{Host, Inventory};
use provision_ssh::{SshError, Target};
use tokio::sync::{Barrier, RwLock, Semaphore};

use crate::apply::{ApplyError, apply_change, changing_capture};
use crate::conn::Conn;
use crate::facts::{self, Facts};
use crate::pending::{self, Pending};
use crate::plan::{Decision, ProbeOut};
use crate::report::{HostRecap, Log, Reporter, StepEvent};
use crate::state::{Request, Snapshot};
use crate::step::{Action, Status, Step, WaitTarget};

/// Variables captured per host: host name -> variable -> value.
pub type HostVars = BTreeMap<String, BTreeMap<String, String>>;

/// What a phase plans for one host.
pub struct PlanCtx<'a> {
    pub inventory: &'a Inventory,
    pub host: &'a Host,
    pub facts: &'a Facts,
    /// Everything captured so far, on every host.
    pub vars: &'a HostVars,
    pub check: bool,
    /// The engine is planning only to learn what to read in the state read before the run:
    /// facts are defaults and nothing is captured yet. A planner whose steps depend on a value
    /// it captures in bulk during the run (instead of asking per item) leaves them out here.
    pub before_run: bool,
    /// The hosts this run may change (`--limit`); `None`: every host. Hosts outside it are only
    /// observed, so a step about another host (e.g. waiting for its node) can leave them out.
    pub limit: Option<&'a [String]>,
}

impl PlanCtx<'_> {
    /// Whether this run may change host `name` (it is inside `--limit`).
    pub fn changes(&self, name: &str) -> bool {
        self.limit.is_none_or(|l| l.iter().any(|n| n == name))
    }
}

#[derive(Default)]
pub struct PhasePlan {
    pub steps: Vec<Step>,
    /// Run once at the end of the phase, in this order, if a step notified them by name.
    pub handlers: Vec<Step>,
}

pub type Planner = Arc<dyn Fn(&PlanCtx) -> PhasePlan + Send + Sync>;

pub struct Phase {
    pub name: String,
    /// Selected by `--tags` (steps may carry their own tag instead).
    pub tag: String,
    pub plan: Planner,
    /// One host at a time (Ansible's `serial: 1`): the primary first, then the inventory's
    /// order. A host that fails (or does not come back from a reboot) stops the rollout: every
    /// later host with something planned in this phase is stopped untouched, naming it.
    pub serial: bool,
}

impl Phase {
    pub fn new(name: impl Into<String>, tag: impl Into<String>, plan: Planner) -> Phase {
        Phase { name: name.into(), tag: tag.into(), plan, serial: false }
    }

    /// This phase runs on one host at a time (see [`Phase::serial`]).
    pub fn one_host_at_a_time(mut self) -> Phase {
        self.serial = true;
        self
    }
}

#[derive(Clone)]
pub struct RunOptions {
    pub forks: usize,
    pub check: bool,
    pub fail_fast: bool,
    /// Host names to change; others are only observed (read-only captures) so that their
    /// variables (public keys, join token) are still known. `None`: every host.
    pub limit: Option<Vec<String>>,
    /// Phase tags to run; empty: all.
    pub tags: Vec<String>,
    pub ssh: provision_ssh::Options,
    /// Run commands on this machine instead of over SSH (tests of the engine itself).
    pub local: bool,
    /// Connection attempts before a host counts as unreachable.
    pub connect_attempts: u32,
    /// Measure the host-side CPU of every read (facts, state reads, probes): see
    /// [`RunResult::profile`].
    pub profile: bool,
}

/// Host-side CPU of one read, as the host's shell measured it (`times`: the processes it
/// started and waited for; not sshd itself).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProfileRow {
    pub host: String,
    /// Step kind (`apt`, `command`, ...), `facts`, or `state read` for the snapshot's reads.
    pub kind: String,
    /// The step or read.
    pub probe: String,
    pub seconds: f64,
}

pub struct RunResult {
    pub recap: Vec<HostRecap>,
    pub elapsed: Duration,
    pub vars: HostVars,
    pub facts: BTreeMap<String, Facts>,
    /// With [`RunOptions::profile`]: one row per read per host.
    pub profile: Vec<ProfileRow>,
    /// Hosts outside `--limit` that could not be read (not in the recap, which lists the
    /// hosts the run changes): name and why. Their captured variables are missing.
    pub not_observed: Vec<(String, String)>,
}

impl RunResult {
    pub fn success(&self) -> bool {
        self.recap.iter().all(|h| h.failed == 0 && !h.unreachable)
    }
}

/// SSH target for an inventory host (the jump host inherits user and key unless it names a user).
pub fn target_for(inv: &Inventory, h: &Host) -> Target {
    let user = h.ssh_user(&inv.vars).to_string();
    let jump = h.ssh.jump.as_ref().map(|j| {
        Box::new(Target {
            name: format!("{} (jump {})", h.name, j.host),
            address: j.host.clone(),
            port: j.port,
            user: j.user.clone().unwrap_or_else(|| user.clone()),
            key: h.ssh.key.clone(),
            pinned_host_key: None,
            jump: None,
        })
    });
    Target {
        name: h.name.clone(),
        address: h.address.clone(),
        port: h.ssh_port(),
        user,
        key: h.ssh.key.clone(),
        pinned_host_key: h.ssh.host_key.clone(),
        jump,
    }
}

struct Shared {
    inv: Arc<Inventory>,
    phases: Vec<Phase>,
    opts: RunOptions,
    reporter: Reporter,
    log: Log,
    vars: RwLock<HostVars>,
    facts: RwLock<BTreeMap<String, Facts>>,
    forks: Semaphore,
    barrier: Barrier,
    abort: AtomicBool,
    /// Something changed on some host: snapshots taken before may be stale (a join changes
    /// the primary's node list, a restarted wg0 what a worker's ping sees).
    changed_any: AtomicBool,
    profile: std::sync::Mutex<Vec<ProfileRow>>,
    not_observed: std::sync::Mutex<Vec<(String, String)>>,
    /// Per phase (by index): the turn of its serial rollout, `None` for parallel phases.
    rollouts: Vec<Option<Rollout>>,
    /// Each host's place in a serial rollout: the primary first, then the inventory's order.
    rollout_order: HashMap<String, usize>,
}

/// The state of one serial phase: whose turn it is, and the host that stopped it.
struct Rollout {
    turn: tokio::sync::watch::Sender<usize>,
    stopped_by: std::sync::Mutex<Option<String>>,
}

/// Passes the turn of a serial phase to the next host when dropped (however the phase ended).
struct Turn<'a>(&'a Rollout);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.turn.send_modify(|t| *t += 1);
    }
}

/// Why a host stopped.
struct Stop {
    unreachable: bool,
    message: String,
}

impl From<SshError> for Stop {
    fn from(e: SshError) -> Stop {
        Stop { unreachable: e.is_unreachable(), message: e.to_string() }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Plan and apply.
    Full,
    /// Outside --limit: only read-only captures, nothing reported.
    Observe,
}

pub async fn run(
    inv: Arc<Inventory>,
    phases: Vec<Phase>,
    opts: RunOptions,
    reporter: Reporter,
    log: Log,
) -> RunResult {
    let start = Instant::now();
    let names: Vec<(String, Mode)> = inv
        .hosts
        .iter()
        .map(|h| {
            let full = opts.limit.as_ref().is_none_or(|l| l.contains(&h.name));
            (h.name.clone(), if full { Mode::Full } else { Mode::Observe })
        })
        .collect();
    let rollouts = phases
        .iter()
        .map(|p| {
            p.serial
                .then(|| Rollout { turn: tokio::sync::watch::channel(0).0, stopped_by: Default::default() })
        })
        .collect();
    let mut order: Vec<&Host> = inv.hosts.iter().collect();
    order.sort_by_key(|h| !h.is_primary); // stable: the inventory's order otherwise
    let rollout_order = order.iter().enumerate().map(|(i, h)| (h.name.clone(), i)).collect();
    let shared = Arc::new(Shared {
        inv: inv.clone(),
        phases,
        rollouts,
        rollout_order,
        not_observed: Default::default(),
        forks: Semaphore::new(opts.forks.max(1)),
        barrier: Barrier::new(names.len()),
        opts,
        reporter,
        log,
        vars: RwLock::new(BTreeMap::new()),
        facts: RwLock::new(BTreeMap::new()),
        abort: AtomicBool::new(false),
        changed_any: AtomicBool::new(false),
        profile: std::sync::Mutex::new(vec![]),
    });
    let mut tasks = vec![];
    for (name, mode) in names {
        let s = shared.clone();
        tasks.push((mode, tokio::spawn(async move { lane(s, name, mode).await })));
    }
    let mut recap = vec![];
    for (mode, t) in tasks {
        match t.await {
            Ok(r) if mode == Mode::Full => recap.push(r),
            Ok(_) => {}
            Err(e) => recap.push(HostRecap {
                host: "?".into(),
                failed: 1,
                error: Some(format!("internal error: {e}")),
                ..Default::default()
            }),
        }
    }
    let elapsed = start.elapsed();
    let vars = shared.vars.read().await.clone();
    let facts = shared.facts.read().await.clone();
    let profile = shared.profile.lock().map(|p| p.clone()).unwrap_or_default();
    let not_observed = shared.not_observed.lock().map(|p| p.clone()).unwrap_or_default();
    RunResult { recap, elapsed, vars, facts, profile, not_observed }
}

/// Who holds a host lock: shown to a second operator who finds the host busy.
fn lock_owner() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "?".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("minerctl run by {user}@{host}, pid {}, since unix time {since}", std::process::id())
}

/// Connects (with retries on transport errors); with `lock`, takes the host lock.
async fn connect(s: &Shared, host: &Host, lock: bool) -> Result<Conn, SshError> {
    let target = target_for(&s.inv, host);
    let mut last = None;
    for attempt in 0..s.opts.connect_attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        match Conn::connect(&target, &s.opts.ssh, s.opts.local).await {
            // A real run holds the host lock so that two operators cannot interleave changes.
            Ok(mut c) if lock => {
                c.lock(&lock_owner()).await?;
                return Ok(c);
            }
            Ok(c) => return Ok(c),
            // Only transport failures are worth retrying; a wrong host key is not.
            Err(e) if e.is_unreachable() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(SshError::Disconnected { host: host.name.clone(), reason: "no attempt made".into() }))
}

async fn lane(s: Arc<Shared>, name: String, mode: Mode) -> HostRecap {
    let start = Instant::now();
    let mut recap = HostRecap { host: name.clone(), ..Default::default() };
    let Some(host) = s.inv.host(&name).cloned() else { return recap };
    let mut conn: Option<Conn> = None;
    let mut facts = Facts::default();
    let mut snapshot: Option<Snapshot> = None;
    let mut pending = Pending::default();
    // Handlers the phases of this run have, to tell which pending names none of them runs.
    let mut handlers_seen = BTreeSet::new();
    let selected = |tag: &str| s.opts.tags.is_empty() || s.opts.tags.iter().any(|t| t == tag);
    {
        let _permit = s.forks.acquire().await;
        if !s.abort.load(Ordering::SeqCst) {
            // Hosts outside --limit are only read, and check mode changes nothing: no lock for them.
            match connect(&s, &host, mode == Mode::Full && !s.opts.check).await {
                Ok(c) => match read_state(&s, &c, &host, mode, &selected).await {
                    Ok(snap) => {
                        if mode == Mode::Full {
                            let (p, warnings) = Pending::load(&c, snap.contents(pending::PATH).flatten());
                            for w in warnings {
                                warn(&s, &name, &w);
                            }
                            pending = p;
                        }
                        facts = facts::parse(&snap.facts_text);
                        s.facts.write().await.insert(name.clone(), facts.clone());
                        snapshot = Some(snap);
                        conn = Some(c);
                    }
                    Err(e) => stop(&s, &mut recap, mode, e.into()),
                },
                Err(e) => stop(&s, &mut recap, mode, e.into()),
            }
        }
    }
    for (index, phase) in s.phases.iter().enumerate() {
        s.barrier.wait().await;
        // A serial phase waits for this host's turn; the turn passes on when `_turn` is
        // dropped, at the end of this iteration however it ends.
        let rollout = s.rollouts.get(index).and_then(Option::as_ref);
        let _turn = match rollout {
            Some(r) => {
                let mine = s.rollout_order.get(&name).copied().unwrap_or(0);
                let mut rx = r.turn.subscribe();
                let _ = rx.wait_for(|t| *t >= mine).await;
                Some(Turn(r))
            }
            None => None,
        };
        let Some(c) = conn.as_mut() else { continue };
        if s.abort.load(Ordering::SeqCst) {
            continue;
        }
        if s.changed_any.load(Ordering::SeqCst) {
            snapshot = None;
        }
        let _permit = s.forks.acquire().await;
        let vars = s.vars.read().await.clone();
        let mut plan = (phase.plan)(&PlanCtx {
            inventory: &s.inv,
            host: &host,
            facts: &facts,
            vars: &vars,
            check: s.opts.check,
            before_run: false,
            limit: s.opts.limit.as_deref(),
        });
        handlers_seen.extend(plan.handlers.iter().map(|h| h.name.clone()));
        // --tags: steps carry their own tag or inherit the phase's.
        plan.steps.retain(|st| selected(st.tag.as_deref().unwrap_or(&phase.tag)));
        if plan.steps.is_empty() {
            continue;
        }
        // A rollout that stopped at an earlier host leaves this one untouched.
        if let Some(by) = rollout.and_then(|r| r.stopped_by.lock().ok().and_then(|g| g.clone())) {
            if mode == Mode::Full {
                let message = format!(
                    "{}: not started here: this phase runs one host at a time and stopped at {by}",
                    phase.name
                );
                stop(&s, &mut recap, mode, Stop { unreachable: false, message });
            }
            if let Some(c) = conn.take() {
                c.close().await;
            }
            continue;
        }
        if mode == Mode::Full {
            s.reporter.phase(&name, &phase.name);
        }
        if let Err(stop_reason) = run_phase(
            &s,
            c,
            &host.name,
            &phase.name,
            &plan,
            mode,
            snapshot.as_ref(),
            &mut pending,
            &mut recap,
        )
        .await
        {
            if mode == Mode::Full {
                if let Some(r) = rollout
                    && let Ok(mut by) = r.stopped_by.lock()
                {
                    *by = Some(name.clone());
                }
                stop(&s, &mut recap, mode, stop_reason);
            }
            if let Some(c) = conn.take() {
                c.close().await;
            }
        }
    }
    if let Some(c) = conn {
        c.close().await;
    }
    // Only a run that planned every phase knows that no phase has the handler.
    if mode == Mode::Full && recap.failed == 0 && !recap.unreachable && !s.abort.load(Ordering::SeqCst) {
        for n in pending.names().filter(|n| !handlers_seen.contains(*n)) {
            warn(
                &s,
                &name,
                &format!("{}: `{n}` is no handler of this run, left for one that has it", pending::PATH),
            );
        }
    }
    recap.seconds = start.elapsed().as_secs_f64();
    if mode == Mode::Full {
        let word = if recap.unreachable {
            "UNREACHABLE"
        } else if recap.failed > 0 {
            "FAILED"
        } else {
            "done"
        };
        s.reporter.host_done(
            &name,
            &format!(
                "{word}: ok={} changed={} failed={} ({:.1} s)",
                recap.ok, recap.changed, recap.failed, recap.seconds
            ),
        );
    }
    recap
}

fn warn(s: &Shared, host: &str, text: &str) {
    s.log.line(host, &format!("warning: {text}"));
    s.reporter.host_note(host, &format!("warning: {text}"));
}

fn stop(s: &Shared, recap: &mut HostRecap, mode: Mode, why: Stop) {
    if mode == Mode::Observe {
        // Outside --limit: not in the recap, but the operator learns that its variables
        // (e.g. its WireGuard key) could not be read.
        s.log.line(&recap.host, &format!("not observed: {}", why.message));
        s.reporter
            .host_note(&recap.host, &format!("not reached (outside --limit, only read): {}", why.message));
        if let Ok(mut v) = s.not_observed.lock() {
            v.push((recap.host.clone(), why.message));
        }
        return;
    }
    if why.unreachable {
        recap.unreachable = true;
    } else if recap.failed == 0 {
        recap.failed = 1;
    }
    s.log.line(&recap.host, &format!("host stopped: {}", why.message));
    s.reporter.host_note(
        &recap.host,
        &format!("{}: {}", if why.unreachable { "UNREACHABLE" } else { "stopped" }, why.message),
    );
    recap.error = Some(why.message);
    if s.opts.fail_fast {
        s.abort.store(true, Ordering::SeqCst);
    }
}

/// A marker that no probe's output contains: separates the sections of one command's output.
fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("@@minerctl-{:x}", std::process::id() as u64 ^ nanos ^ 0x5eed)
}

/// What a step's probe is called in profiles.
fn label(step: &Step) -> (String, String) {
    (step.action.kind().to_string(), step.name.clone())
}

fn record_profile(s: &Shared, host: &str, snap: &Snapshot) {
    if let Ok(mut p) = s.profile.lock() {
        p.extend(snap.cpu.iter().map(|(kind, probe, seconds)| ProfileRow {
            host: host.to_string(),
            kind: kind.clone(),
            probe: probe.clone(),
            seconds: *seconds,
        }));
    }
}

/// Facts and everything every phase will look at, in one command (see `state.rs`). The
/// phases are planned here with what is known before any fact or capture: whatever a later
/// plan needs beyond that is probed in its phase.
async fn read_state(
    s: &Shared,
    conn: &Conn,
    host: &Host,
    mode: Mode,
    selected: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Snapshot, SshError> {
    let facts = Facts::default();
    let vars = HostVars::new();
    let mut req = Request::default();
    let mut labels = HashMap::new();
    if mode == Mode::Full && Pending::kept_on(conn) {
        req.add_contents(pending::PATH);
    }
    for phase in &s.phases {
        let plan = (phase.plan)(&PlanCtx {
            inventory: &s.inv,
            host,
            facts: &facts,
            vars: &vars,
            check: s.opts.check,
            before_run: true,
            limit: s.opts.limit.as_deref(),
        });
        for st in plan.steps.iter().filter(|st| selected(st.tag.as_deref().unwrap_or(&phase.tag))) {
            if mode == Mode::Observe && !matches!(st.action, Action::Capture { read_only: true, .. }) {
                continue;
            }
            req.add(&st.action);
            if let Some(p) = st.action.probe() {
                labels.entry(p).or_insert_with(|| label(st));
            }
        }
    }
    let m = marker();
    let out =
        conn.read(&req.script(&m, Some(facts::SCRIPT), s.opts.profile), Duration::from_secs(120)).await?;
    let snap = Snapshot::parse(&out.stdout, &m, &req, true, &labels);
    record_profile(s, &host.name, &snap);
    Ok(snap)
}

/// Runs the given probes in one command; the result answers by probe text.
async fn batch_probe(s: &Shared, conn: &Conn, host: &str, steps: &[&Step]) -> Result<Snapshot, SshError> {
    let mut req = Request::default();
    let mut labels = HashMap::new();
    for st in steps {
        if let Some(p) = st.action.probe() {
            labels.entry(p.clone()).or_insert_with(|| label(st));
            req.add_shell(p);
        }
    }
    if req.is_empty() {
        return Ok(Snapshot::default());
    }
    let m = marker();
    let out = conn.read(&req.script(&m, None, s.opts.profile), Duration::from_secs(120)).await?;
    let snap = Snapshot::parse(&out.stdout, &m, &req, false, &labels);
    record_profile(s, host, &snap);
    Ok(snap)
}

async fn single_probe(conn: &Conn, probe: &str) -> Result<ProbeOut, SshError> {
    let out = conn.read(&format!("( {probe}\n) 2>&1"), Duration::from_secs(120)).await?;
    Ok(ProbeOut { rc: out.status.map(|s| s as i32).unwrap_or(-1), text: out.stdout_str() })
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    s: &Shared,
    conn: &mut Conn,
    host: &str,
    phase: &str,
    plan: &PhasePlan,
    mode: Mode,
    snapshot: Option<&Snapshot>,
    pending: &mut Pending,
    recap: &mut HostRecap,
) -> Result<(), Stop> {
    let check = s.opts.check;
    let steps: Vec<&Step> = match mode {
        Mode::Full => plan.steps.iter().collect(),
        Mode::Observe => plan
            .steps
            .iter()
            .filter(|st| matches!(st.action, Action::Capture { read_only: true, .. }))
            .collect(),
    };
    let probes: Vec<Option<String>> = steps.iter().map(|st| st.action.probe()).collect();
    // A capture that changes the host is not a probe: it runs on its own, in order, and never
    // in check mode. Everything else is answered by the snapshot while it is valid, or probed
    // here, all in one command.
    let batchable = |st: &Step| !matches!(st.action, Action::Capture { read_only: false, .. });
    let mut batch: Vec<Option<ProbeOut>> = steps
        .iter()
        .map(|st| if batchable(st) { snapshot.and_then(|snap| snap.answer(&st.action)) } else { None })
        .collect();
    let missing: Vec<&Step> = steps
        .iter()
        .zip(&batch)
        .filter(|(st, b)| b.is_none() && batchable(st) && st.action.probe().is_some())
        .map(|(st, _)| *st)
        .collect();
    if !missing.is_empty() {
        let probed = batch_probe(s, conn, host, &missing).await?;
        for (i, st) in steps.iter().enumerate() {
            if batch[i].is_none() && batchable(st) {
                batch[i] = probes[i].as_deref().and_then(|p| probed.shell(p));
            }
        }
    }
    let mut dirty = false;
    let has_handler = |n: &String| plan.handlers.iter().any(|h| &h.name == n);
    // Handlers notified by an earlier run that did not get to run them.
    let mut notified: BTreeSet<String> = pending.names().filter(|n| has_handler(n)).cloned().collect();
    for (i, step) in steps.iter().enumerate() {
        if s.abort.load(Ordering::SeqCst) {
            return Err(Stop {
                unreachable: false,
                message: "stopped: another host failed (--fail-fast)".into(),
            });
        }
        let notifies: Vec<String> = step.notify.iter().filter(|n| has_handler(n)).cloned().collect();
        let changed = run_step(
            s,
            conn,
            host,
            phase,
            step,
            probes[i].as_deref(),
            batch[i].clone(),
            dirty,
            mode,
            Some((&mut *pending, &notifies)),
            recap,
        )
        .await?;
        if changed {
            dirty |= !check;
            if !check {
                s.changed_any.store(true, Ordering::SeqCst);
            }
            notified.extend(notifies);
        }
    }
    for handler in plan.handlers.iter().filter(|h| notified.contains(&h.name)) {
        let probe = handler.action.probe();
        run_step(s, conn, host, phase, handler, probe.as_deref(), None, true, mode, None, recap).await?;
        // A handler that failed returned above: it stays pending for the next run.
        pending.remove(conn, &handler.name, check, &s.log, host).await.map_err(|e| Stop {
            unreachable: matches!(&e, ApplyError::Transport(t) if t.is_unreachable()),
            message: format!(
                "{phase} / {}: ran, but {} could not be updated: {e}",
                handler.name,
                pending::PATH
            ),
        })?;
    }
    Ok(())
}

/// Probes (unless the batch result is still valid), decides and applies one step.
/// Returns whether it changed something (or would, in check mode). The handlers in `notify`
/// are recorded as pending once it changed, before it is reported.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    s: &Shared,
    conn: &mut Conn,
    host: &str,
    phase: &str,
    step: &Step,
    probe: Option<&str>,
    batched: Option<ProbeOut>,
    dirty: bool,
    mode: Mode,
    mut notify: Option<(&mut Pending, &[String])>,
    recap: &mut HostRecap,
) -> Result<bool, Stop> {
    let check = s.opts.check;
    let mut ev = StepEvent {
        host: host.to_string(),
        phase: phase.to_string(),
        step: step.name.clone(),
        kind: step.action.kind().to_string(),
        status: Status::Ok,
        summary: None,
        diff: None,
        error: None,
        check,
    };
    let skip_mutating_capture =
        matches!(step.action, Action::Capture { read_only: false, .. }) && (check || mode == Mode::Observe);
    let result: Result<Status, Stop> = async {
        if skip_mutating_capture {
            ev.summary = Some("would run (changes the host)".into());
            return Ok(Status::Skipped);
        }
        // A batched probe is stale once an earlier step of this phase changed the host.
        let out = match (probe, batched) {
            (Some(cmd), _) if matches!(step.action, Action::Capture { read_only: false, .. }) => {
                match changing_capture(conn, cmd, step.timeout, &s.log, host).await {
                    Ok(out) => out,
                    Err(ApplyError::Transport(e)) => return Err(e.into()),
                    Err(e) => {
                        ev.error = Some(e.to_string());
                        return Ok(Status::Failed);
                    }
                }
            }
            (None, _) => ProbeOut::default(),
            (Some(_), Some(b)) if !dirty => b,
            (Some(p), _) => single_probe(conn, p).await?,
        };
        let decision = match step.action.evaluate(&out) {
            Ok(d) => d,
            // In check mode a value may not exist yet because an earlier step only *would* have
            // created it (a fresh host's WireGuard key): report that instead of failing.
            Err(e) if check && matches!(step.action, Action::Capture { .. }) => {
                ev.summary = Some(format!("not available before the steps above have run ({e})"));
                return Ok(Status::Skipped);
            }
            Err(e) => {
                ev.error = Some(e);
                return Ok(Status::Failed);
            }
        };
        match decision {
            Decision::Ok => Ok(Status::Ok),
            Decision::Captured(v) => {
                if let Action::Capture { var, secret, .. } = &step.action {
                    if *secret {
                        s.log.redactor.add(&v);
                    }
                    s.vars.write().await.entry(host.to_string()).or_default().insert(var.clone(), v);
                }
                Ok(Status::Ok)
            }
            Decision::Wait { target, timeout, interval } => {
                if check {
                    ev.summary = Some("wait skipped in check mode".into());
                    return Ok(Status::Skipped);
                }
                wait_for(conn, &target, timeout, interval).await.map(|_| Status::Ok).or_else(|e| {
                    ev.error = Some(e);
                    Ok(Status::Failed)
                })
            }
            Decision::Change(c) => {
                ev.summary = Some(c.summary.clone());
                ev.diff = c.diff.clone();
                match apply_change(conn, &c, check, step.timeout, &s.log, host).await {
                    Ok(()) => {
                        let Some((pending, names)) = notify.as_mut() else { return Ok(Status::Changed) };
                        match pending.add(conn, names, check, &s.log, host).await {
                            Ok(()) => Ok(Status::Changed),
                            Err(ApplyError::Transport(e)) if e.is_unreachable() => Err(e.into()),
                            Err(e) => {
                                ev.error = Some(format!(
                                    "changed, but the handlers it notifies could not be recorded in {}: {e}",
                                    pending::PATH
                                ));
                                Ok(Status::Failed)
                            }
                        }
                    }
                    Err(ApplyError::Transport(e)) if e.is_unreachable() => Err(e.into()),
                    Err(e) => {
                        ev.error = Some(e.to_string());
                        Ok(Status::Failed)
                    }
                }
            }
        }
    }
    .await;
    let status = match result {
        Ok(st) => st,
        Err(stop) => {
            ev.status = Status::Failed;
            ev.error = Some(stop.message.clone());
            if mode == Mode::Full {
                s.log.line(host, &format!("{phase} / {}: unreachable: {}", step.name, stop.message));
            }
            return Err(stop);
        }
    };
    ev.status = status;
    if mode == Mode::Full {
        match status {
            Status::Ok => recap.ok += 1,
            Status::Changed => recap.changed += 1,
            Status::Failed => recap.failed += 1,
            Status::Skipped => recap.skipped += 1,
        }
        s.log.line(host, &serde_json::to_string(&ev).unwrap_or_default());
        s.reporter.step(&ev);
    }
    if status == Status::Failed {
        return Err(Stop {
            unreachable: false,
            message: format!("{phase} / {}: {}", step.name, ev.error.unwrap_or_default()),
        });
    }
    Ok(status == Status::Changed)
}

async fn wait_for(
    conn: &Conn,
    target: &WaitTarget,
    timeout: Duration,
    interval: Duration,
) -> Result<(), String> {
    let cmd = crate::plan::wait_command(target);
    let start = Instant::now();
    loop {
        let last = match conn.read(&cmd, Duration::from_secs(60)).await {
            Ok(out) if out.success() => return Ok(()),
            Ok(out) => format!("{}{}", out.stdout_str().trim(), out.stderr_str().trim()),
            Err(e) if e.is_unreachable() => return Err(e.to_string()),
            Err(e) => e.to_string(),
        };
        if start.elapsed() + interval > timeout {
            let what = match target {
                WaitTarget::Port { host, port } => format!("{host}:{port}"),
                WaitTarget::Command(c) => format!("`{c}`"),
            };
            return Err(format!("gave up waiting for {what} after {} s (last: {last})", timeout.as_secs()));
        }
        tokio::time::sleep(interval).await;
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! The engine over the local transport: idempotence, check mode with diffs, handlers, capture
//! across hosts, failure isolation, fail-fast, JSON output and secret redaction. Steps only
//! touch a temporary directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use provision_engine::*;
use test_support::Captured;

fn inventory(hosts: &[&str]) -> Arc<provision_inventory::Inventory> {
    let mut y = String::from("hosts:\n");
    for (i, h) in hosts.iter().enumerate() {
        y.push_str(&format!(
            "  {h}:\n    address: 127.0.0.{n}\n    external_ip: 10.0.0.{n}\n    wireguard_ip: 192.168.0.{n}\n    is_primary: {p}\n",
            n = i + 1,
            p = i == 0
        ));
    }
    Arc::new(provision_inventory::parse_str(&y, Path::new("test.yml")).unwrap())
}

fn opts(check: bool) -> RunOptions {
    RunOptions {
        forks: 4,
        check,
        fail_fast: false,
        limit: None,
        tags: vec![],
        ssh: provision_ssh::Options::new(),
        local: true,
        connect_attempts: 1,
        profile: false,
    }
}

async fn run_with(
    inv: &Arc<provision_inventory::Inventory>,
    phases: Vec<Phase>,
    o: RunOptions,
    format: OutputFormat,
    log: Option<&Path>,
) -> (RunResult, String) {
    let buf = Captured::default();
    let red = Redactor::default();
    let reporter = Reporter::new(format, red.clone(), false, Box::new(buf.clone()));
    let log = match log {
        Some(p) => Log::open(p, red).unwrap(),
        None => Log::none(red),
    };
    let r = run(inv.clone(), phases, o, reporter.clone(), log.clone()).await;
    reporter.recap(&r.recap, r.elapsed, log.path.as_deref(), false);
    (r, buf.text())
}

/// Files, lines, directories and a guarded command under `dir`, per host.
fn files_phase(dir: &Path) -> Phase {
    let dir = dir.to_path_buf();
    Phase {
        serial: false,
        name: "files".into(),
        tag: "files".into(),
        plan: Arc::new(move |c: &PlanCtx| {
            let d = dir.join(&c.host.name);
            let p = |n: &str| d.join(n).display().to_string();
            PhasePlan {
                steps: vec![
                    Step::new("dir", Action::Directory { path: p("etc"), meta: Meta::root(0o750) }),
                    Step::new(
                        "config",
                        Action::File {
                            path: p("etc/app.conf"),
                            content: format!("name = {}\nport = 80\n", c.host.name),
                            meta: Meta::root(0o640),
                            secret: false,
                        },
                    )
                    .notify("restart"),
                    Step::new(
                        "limits",
                        Action::Line {
                            path: p("etc/limits.conf"),
                            line: "* soft nofile 40000".into(),
                            matches: Some("* soft nofile".into()),
                            absent: false,
                            create: Some(Meta::root(0o644)),
                        },
                    )
                    .notify("restart"),
                    Step::new(
                        "init",
                        Action::Command {
                            run: format!("echo done > {}", p("initialised")),
                            creates: Some(p("initialised")),
                            unless: None,
                        },
                    ),
                ],
                handlers: vec![Step::new(
                    "restart",
                    Action::Command {
                        run: format!("echo restart >> {}", p("restarts")),
                        creates: None,
                        unless: None,
                    },
                )],
            }
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_then_noop_then_check_reports_drift_with_diff_then_repairs() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = inventory(&["h1", "h2"]);
    let (r, _) = run_with(&inv, vec![files_phase(tmp.path())], opts(false), OutputFormat::Human, None).await;
    assert!(r.success());
    for h in &r.recap {
        // dir, config, limits, init + the handler, notified twice, run once.
        assert_eq!((h.changed, h.failed), (5, 0), "{h:?}");
    }
    let restarts = tmp.path().join("h1/restarts");
    assert_eq!(std::fs::read_to_string(&restarts).unwrap(), "restart\n");

    let (r, _) = run_with(&inv, vec![files_phase(tmp.path())], opts(false), OutputFormat::Human, None).await;
    assert!(r.recap.iter().all(|h| h.changed == 0 && h.ok == 4), "{:?}", r.recap);
    assert_eq!(std::fs::read_to_string(&restarts).unwrap(), "restart\n");

    // Someone edits a managed file on h2.
    let conf = tmp.path().join("h2/etc/app.conf");
    std::fs::write(&conf, "name = h2\nport = 8080\n").unwrap();
    let (r, out) = run_with(&inv, vec![files_phase(tmp.path())], opts(true), OutputFormat::Human, None).await;
    let h1 = &r.recap[0];
    let h2 = &r.recap[1];
    assert_eq!((h1.changed, h2.changed), (0, 2), "config + its handler: {:?}", r.recap);
    assert!(out.contains("[h2] files / config: would change (update"), "{out}");
    assert!(out.contains("-port = 8080\n") && out.contains("+port = 80\n"), "{out}");
    assert!(!out.contains("[h1] files / config"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "name = h2\nport = 8080\n",
        "check mode changed the file"
    );

    let (r, _) = run_with(&inv, vec![files_phase(tmp.path())], opts(false), OutputFormat::Human, None).await;
    assert_eq!(r.recap[1].changed, 2);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "name = h2\nport = 80\n");
    assert_eq!(std::fs::read_to_string(tmp.path().join("h2/restarts")).unwrap(), "restart\nrestart\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_drift_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = inventory(&["h1"]);
    run_with(&inv, vec![files_phase(tmp.path())], opts(false), OutputFormat::Human, None).await;
    use std::os::unix::fs::PermissionsExt;
    let conf = tmp.path().join("h1/etc/app.conf");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (r, out) =
        run_with(&inv, vec![files_phase(tmp.path())], opts(false), OutputFormat::Human, None).await;
    assert_eq!(r.recap[0].changed, 2, "{out}");
    assert!(out.contains("666 root:root -> 640 root:root"), "{out}");
    assert_eq!(std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777, 0o640);
}

fn failing_phase(bad_host: &'static str, marker_dir: &Path) -> Vec<Phase> {
    let d = marker_dir.to_path_buf();
    let d2 = marker_dir.to_path_buf();
    vec![
        Phase {
            serial: false,
            name: "one".into(),
            tag: "one".into(),
            plan: Arc::new(move |c: &PlanCtx| PhasePlan {
                steps: vec![Step::new(
                    "maybe-fail",
                    Action::Command {
                        run: if c.host.name == bad_host {
                            "echo 'disk on fire' >&2; exit 7".into()
                        } else {
                            format!("sleep 0.3; touch {}/{}-one", d.display(), c.host.name)
                        },
                        creates: None,
                        unless: None,
                    },
                )],
                handlers: vec![],
            }),
        },
        Phase {
            serial: false,
            name: "two".into(),
            tag: "two".into(),
            plan: Arc::new(move |c: &PlanCtx| PhasePlan {
                steps: vec![Step::new(
                    "after",
                    Action::Command {
                        run: format!("touch {}/{}-two", d2.display(), c.host.name),
                        creates: None,
                        unless: None,
                    },
                )],
                handlers: vec![],
            }),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_host_stops_only_itself_and_log_path_is_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = inventory(&["h1", "h2", "h3"]);
    let log = tmp.path().join("run.log");
    let (r, out) =
        run_with(&inv, failing_phase("h2", tmp.path()), opts(false), OutputFormat::Human, Some(&log)).await;
    assert!(!r.success());
    assert_eq!(r.recap[1].failed, 1);
    assert!(r.recap[1].error.as_deref().unwrap().contains("disk on fire"), "{:?}", r.recap[1]);
    assert!(tmp.path().join("h1-two").exists() && tmp.path().join("h3-two").exists());
    assert!(!tmp.path().join("h2-two").exists());
    assert!(out.contains(&format!("full log: {}", log.display())), "{out}");
    assert!(out.contains("HOST") && out.contains("UNREACHABLE"), "{out}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("[h2] stderr: disk on fire"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_stops_the_others_before_the_next_phase() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = inventory(&["h1", "h2", "h3"]);
    let o = RunOptions { fail_fast: true, ..opts(false) };
    let (r, _) = run_with(&inv, failing_phase("h2", tmp.path()), o, OutputFormat::Human, None).await;
    assert!(!r.success());
    assert!(!tmp.path().join("h1-two").exists() && !tmp.path().join("h3-two").exists());
}

/// A serial phase (`serial: 1`): one host at a time, the primary first, then the inventory's
/// order; the host that fails stops the rollout, and the hosts after it are left untouched
/// and told why, while a parallel phase after it still runs on the hosts that are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_phase_runs_one_host_at_a_time_and_a_failure_stops_the_rollout() {
    let tmp = tempfile::tempdir().unwrap();
    // The primary is listed second; h0 has nothing to do in the rollout.
    let y = ["h0", "p", "h1", "h2", "h3"]
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!(
                "  {h}:\n    address: 127.0.0.{n}\n    external_ip: 10.0.0.{n}\n    wireguard_ip: 192.168.0.{n}\n    is_primary: {p}\n",
                n = i + 1,
                p = *h == "p"
            )
        })
        .collect::<String>();
    let inv = Arc::new(provision_inventory::parse_str(&format!("hosts:\n{y}"), Path::new("t.yml")).unwrap());
    let journal = tmp.path().join("journal");
    let (j, d) = (journal.clone(), tmp.path().to_path_buf());
    let rollout = Phase::new(
        "rollout",
        "t",
        Arc::new(move |c: &PlanCtx| {
            let h = &c.host.name;
            if h == "h0" {
                return PhasePlan::default();
            }
            // Each host writes its start, works a while, and writes its end: interleaved lines
            // would mean two hosts at once.
            let work = if h == "h2" { "exit 3".to_string() } else { "sleep 0.2".to_string() };
            let run = format!("echo start {h} >> {j}; {work}; echo end {h} >> {j}", j = j.display());
            PhasePlan {
                steps: vec![Step::new("upgrade", Action::Command { run, creates: None, unless: None })],
                handlers: vec![],
            }
        }),
    )
    .one_host_at_a_time();
    let after = Phase::new(
        "after",
        "t",
        Arc::new(move |c: &PlanCtx| PhasePlan {
            steps: vec![Step::new(
                "after",
                Action::Command {
                    run: format!("touch {}/{}-after", d.display(), c.host.name),
                    creates: None,
                    unless: None,
                },
            )],
            handlers: vec![],
        }),
    );
    let (r, out) = run_with(&inv, vec![rollout, after], opts(false), OutputFormat::Human, None).await;
    assert!(!r.success());
    let lines = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(lines, "start p\nend p\nstart h1\nend h1\nstart h2\n", "{out}");
    let recap = |h: &str| r.recap.iter().find(|x| x.host == h).unwrap().clone();
    assert_eq!((recap("p").changed, recap("h1").changed), (2, 2), "rollout and after: {out}");
    assert!(recap("h2").error.as_deref().unwrap().contains("rollout / upgrade"), "{:?}", recap("h2"));
    let h3 = recap("h3");
    assert_eq!(h3.changed, 0, "{h3:?}");
    assert!(
        h3.error
            .as_deref()
            .unwrap()
            .contains("not started here: this phase runs one host at a time and stopped at h2"),
        "{h3:?}"
    );
    assert!(out.contains("h3: rollout: not started here"), "{out}");
    for (h, ran) in [("h0", true), ("p", true), ("h1", true), ("h2", false), ("h3", false)] {
        assert_eq!(tmp.path().join(format!("{h}-after")).exists(), ran, "{h}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_values_reach_later_phases_on_other_hosts_and_secrets_are_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = inventory(&["h1", "h2"]);
    let d = tmp.path().to_path_buf();
    let phases = vec![
        Phase {
            serial: false,
            name: "capture".into(),
            tag: "c".into(),
            plan: Arc::new(|c: &PlanCtx| PhasePlan {
                steps: vec![
                    Step::new(
                        "id",
                        Action::Capture {
                            var: "id".into(),
                            run: format!("echo id-of-{}", c.host.name),
                            secret: false,
                            read_only: true,
                            pick: None,
                        },
                    ),
                    Step::new(
                        "token",
                        Action::Capture {
                            var: "token".into(),
                            run: "echo supersecret$(echo token-0123456789)".into(),
                            secret: true,
                            read_only: false,
                            pick: None,
                        },
                    ),
                ],
                handlers: vec![],
            }),
        },
        Phase {
            serial: false,
            name: "use".into(),
            tag: "u".into(),
            plan: Arc::new(move |c: &PlanCtx| {
                let other = if c.host.name == "h1" { "h2" } else { "h1" };
                let peer = c.vars.get(other).and_then(|v| v.get("id")).cloned().unwrap_or_default();
                let token = c.vars.get(other).and_then(|v| v.get("token")).cloned().unwrap_or_default();
                PhasePlan {
                    steps: vec![Step::new(
                        "peer-file",
                        Action::File {
                            path: d.join(format!("{}.peer", c.host.name)).display().to_string(),
                            content: format!("{peer} {token}\n"),
                            meta: Meta::root(0o600),
                            secret: false,
                        },
                    )],
                    handlers: vec![],
                }
            }),
        },
    ];
    let log = tmp.path().join("run.log");
    let (r, out) = run_with(&inv, phases, opts(false), OutputFormat::Json, Some(&log)).await;
    assert!(r.success(), "{out}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("h1.peer")).unwrap(),
        "id-of-h2 supersecrettoken-0123456789\n"
    );
    // Every line of the JSON output parses; the recap comes last.
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.last().unwrap()["event"], "recap");
    assert!(
        events.iter().any(|e| e["event"] == "step" && e["status"] == "changed" && e["step"] == "peer-file")
    );
    assert!(!out.contains("supersecrettoken"), "{out}");
    assert!(out.contains("<redacted>"), "the diff should show the redacted token: {out}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("supersecrettoken"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_mode_skips_host_changing_captures_and_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("minted");
    let inv = inventory(&["h1"]);
    let m = marker.display().to_string();
    let phases = vec![Phase {
        serial: false,
        name: "p".into(),
        tag: "p".into(),
        plan: Arc::new(move |_c: &PlanCtx| PhasePlan {
            steps: vec![
                Step::new(
                    "mint",
                    Action::Capture {
                        var: "t".into(),
                        run: format!("touch {m}; echo token"),
                        secret: true,
                        read_only: false,
                        pick: None,
                    },
                ),
                Step::new(
                    "wait",
                    Action::WaitFor {
                        target: WaitTarget::Command("false".into()),
                        timeout: Duration::from_secs(1),
                        interval: Duration::from_millis(100),
                    },
                ),
            ],
            handlers: vec![],
        }),
    }];
    let (r, _) = run_with(&inv, phases, opts(true), OutputFormat::Human, None).await;
    assert_eq!((r.recap[0].skipped, r.recap[0].failed), (2, 0));
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_board_shows_one_line_per_host_and_its_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = inventory(&["h1", "h2"]);
    let buf = Captured::default();
    let red = Redactor::default();
    let reporter = Reporter::new(OutputFormat::Human, red.clone(), false, Box::new(buf.clone()))
        .with_live_board(&["h1".to_string(), "h2".to_string()]);
    let r = run(inv.clone(), failing_phase("h2", tmp.path()), opts(false), reporter, Log::none(red)).await;
    assert!(!r.success());
    let out = buf.text();
    // Redrawn in place: cursor-up + erase-line before each redraw.
    assert!(out.contains("\x1b[1A\x1b[2K"), "{out:?}");
    assert!(out.contains("  h1  one ...") && out.contains("  h1  done: ok=0 changed=2 failed=0"), "{out:?}");
    assert!(out.contains("  h2  FAILED: ok=0 changed=0 failed=1"), "{out:?}");
}

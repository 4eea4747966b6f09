#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! Notified handlers over real SSH survive a failed phase: a step changes and notifies a
//! handler, a later step of the phase fails, and the handler must still run on the next run,
//! where nothing notifies it any more (the host remembers it in
//! `/var/lib/minerctl/pending-handlers`).

mod common;

use std::sync::Arc;

use lab_hosts::lab::{Lab, LabHost};
use provision_engine::*;
use test_support::Captured;

const PENDING: &str = "/var/lib/minerctl/pending-handlers";

/// One phase as the GPU host setup: "driver" changes and notifies "load module"; "snap
/// install" fails while `/root/snap-fails` exists; the handler fails while
/// `/root/handler-fails` exists and otherwise appends to `/root/handled`.
fn phases() -> Vec<Phase> {
    vec![Phase::new(
        "host setup",
        "t",
        Arc::new(|_: &PlanCtx| {
            PhasePlan {
            steps: vec![
                Step::new(
                    "driver",
                    Action::Command {
                        run: "touch /root/driver".into(),
                        creates: Some("/root/driver".into()),
                        unless: None,
                    },
                )
                .notify("load module"),
                Step::new(
                    "snap install",
                    Action::Command {
                        run: "if [ -e /root/snap-fails ]; then echo 'snap store unreachable' >&2; exit 1; fi; touch /root/snap".into(),
                        creates: Some("/root/snap".into()),
                        unless: None,
                    },
                ),
            ],
            handlers: vec![Step::new(
                "load module",
                Action::Command {
                    run: "if [ -e /root/handler-fails ]; then echo 'module busy' >&2; exit 1; fi; echo ran >> /root/handled".into(),
                    creates: None,
                    unless: None,
                },
            )],
        }
        }),
    )]
}

/// One run; its result and what it printed.
async fn provision(h: &LabHost, check: bool) -> (RunResult, String) {
    let buf = Captured::default();
    let r = common::run_on(h, phases(), check, Box::new(buf.clone())).await;
    (r, buf.text())
}

/// What the host says about the handler: its pending list and how often it ran.
fn seen(h: &LabHost) -> (String, String) {
    let pending = h.sh(&format!("cat {PENDING} 2>/dev/null || echo NONE")).unwrap();
    let handled = h.sh("cat /root/handled 2>/dev/null || echo NEVER").unwrap();
    (pending, handled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_notified_before_a_failure_runs_on_the_next_run() {
    let lab = Lab::start(1).unwrap();
    let h = &lab[0];
    h.sh("rm -f /var/lib/minerctl/pending-handlers; touch /root/snap-fails").unwrap();

    // The driver changes, then the snap install fails: the handler has not run, but the
    // host remembers it.
    let (r, _) = provision(h, false).await;
    assert!(!r.success(), "{:?}", r.recap);
    assert!(r.recap[0].error.as_deref().unwrap().contains("snap store unreachable"), "{:?}", r.recap);
    assert_eq!(seen(h), ("load module\n".into(), "NEVER\n".into()));

    // Check mode: the handler would run, though no step notifies it; nothing is written.
    h.sh("rm /root/snap-fails").unwrap();
    let (r, _) = provision(h, true).await;
    assert!(r.success(), "{:?}", r.recap);
    assert_eq!((r.recap[0].ok, r.recap[0].changed), (1, 2), "snap install and the handler: {:?}", r.recap);
    assert_eq!(seen(h), ("load module\n".into(), "NEVER\n".into()));

    // The driver step is ok now and the handler itself fails: it stays pending.
    h.sh("touch /root/handler-fails").unwrap();
    let (r, _) = provision(h, false).await;
    assert!(!r.success(), "{:?}", r.recap);
    assert!(r.recap[0].error.as_deref().unwrap().contains("load module"), "{:?}", r.recap);
    assert_eq!(seen(h), ("load module\n".into(), "NEVER\n".into()));

    // Nothing notifies it, yet it runs once, and is forgotten.
    h.sh("rm /root/handler-fails").unwrap();
    let (r, _) = provision(h, false).await;
    assert!(r.success(), "{:?}", r.recap);
    assert_eq!((r.recap[0].ok, r.recap[0].changed), (2, 1), "{:?}", r.recap);
    assert_eq!(seen(h), ("NONE\n".into(), "ran\n".into()));

    let (r, _) = provision(h, false).await;
    assert_eq!((r.recap[0].ok, r.recap[0].changed), (2, 0), "{:?}", r.recap);
    assert_eq!(seen(h), ("NONE\n".into(), "ran\n".into()));
}

/// A pending list with a name no phase of this run has, and a line that is no handler name:
/// both are ignored with a warning, the run does not fail, and a known name still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pending_names_are_ignored_with_a_warning() {
    let lab = Lab::start(1).unwrap();
    let h = &lab[0];
    h.sh("mkdir -p /var/lib/minerctl; touch /root/driver /root/snap").unwrap();
    h.write_file(PENDING, "restart gone\n\u{1b}[2Jbad\n\nload module\n").unwrap();
    let (r, out) = provision(h, false).await;
    assert!(r.success(), "{:?}\n{out}", r.recap);
    assert!(
        out.contains(&format!(
            "{PENDING}: `restart gone` is no handler of this run, left for one that has it"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("{PENDING}: line 2 is no handler name, dropped")), "{out}");
    assert_eq!((r.recap[0].ok, r.recap[0].changed), (2, 1), "{:?}", r.recap);
    // The unknown name is left for a run that has it; the unreadable line is dropped.
    assert_eq!(seen(h), ("restart gone\n".into(), "ran\n".into()));
}

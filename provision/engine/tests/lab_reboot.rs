#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! Reboot-and-wait over real SSH: a lab host whose `reboot` (the harness's stand-in: a lab host
//! has no kernel of its own) drops every SSH connection and brings sshd back a moment later. The
//! engine must notice, reconnect, and carry on with the next phase on the new connection.

mod common;

use std::sync::Arc;
use std::time::Duration;

use lab_hosts::lab::{Lab, Standin};
use provision_engine::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_handler_reconnects_and_the_run_goes_on() {
    let lab = Lab::start(1).unwrap();
    let h = &lab[0];
    // The harness's modelled reboot: every process killed, sshd back, a new boot id.
    h.install_standins(&[Standin::Systemctl, Standin::Reboot]).unwrap();
    let r = run_two_phases(h, Duration::from_secs(60)).await;
    let rc = &r.recap[0];
    // On failure, what the host saw of its boot (the stand-in's log, sshd's own).
    let seen = || {
        h.sh("cat /var/lib/lab-standins/boot.log; tail -n 20 /var/log/lab-sshd.log")
            .unwrap_or_else(|e| e.to_string())
    };
    assert!(r.success(), "{rc:?}\n{}", seen());
    assert_eq!(rc.changed, 3, "install, reboot, after: {rc:?}");
    assert_eq!(h.boot_count().unwrap(), 1);
    assert!(seen().contains("boot 1: sshd up (try "), "{}", seen());
    assert_eq!(h.sh("test -e /root/after && echo yes").unwrap().trim(), "yes");
}

/// `reboot` does nothing here, and one read of the boot id fails after it was called (a
/// slow or failing command on a live connection). That is no reboot: the step must fail
/// when the time is up, and nothing after it may run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_boot_id_read_is_not_a_reboot() {
    let lab = Lab::start(1).unwrap();
    let h = &lab[0];
    h.write_file("/usr/local/sbin/reboot", "#!/bin/sh\ntouch /run/fail-boot-id-once\n").unwrap();
    h.write_file(
        "/usr/local/sbin/cat",
        "#!/bin/sh\ncase \"$*\" in *boot_id*) if [ -e /run/fail-boot-id-once ]; then rm -f /run/fail-boot-id-once; exit 1; fi ;; esac\nexec /bin/cat \"$@\"\n",
    )
    .unwrap();
    h.sh("chmod 755 /usr/local/sbin/reboot /usr/local/sbin/cat; ln -sf /bin/false /usr/local/sbin/systemctl")
        .unwrap();
    let r = run_two_phases(h, Duration::from_secs(6)).await;
    let rc = &r.recap[0];
    assert!(!r.success(), "a failed read was taken for a reboot: {rc:?}");
    let err = rc.error.as_deref().unwrap_or_default();
    assert!(err.contains("no reboot seen within 6 s"), "{err}");
    assert_eq!(h.sh("test -e /root/after && echo yes || echo no").unwrap().trim(), "no");
}

/// Phase "driver" (a command that notifies the reboot handler) then phase "after".
async fn run_two_phases(h: &lab_hosts::lab::LabHost, reboot_timeout: Duration) -> RunResult {
    let phases = vec![
        Phase {
            serial: false,
            name: "driver".into(),
            tag: "t".into(),
            plan: Arc::new(move |_: &PlanCtx| PhasePlan {
                steps: vec![
                    Step::new(
                        "install",
                        Action::Command {
                            run: "touch /root/driver".into(),
                            creates: Some("/root/driver".into()),
                            unless: None,
                        },
                    )
                    .notify("reboot"),
                ],
                handlers: vec![Step::new("reboot", Action::Reboot { timeout: reboot_timeout })],
            }),
        },
        Phase {
            serial: false,
            name: "after".into(),
            tag: "t".into(),
            plan: Arc::new(|_: &PlanCtx| PhasePlan {
                steps: vec![Step::new(
                    "after",
                    Action::Command {
                        run: "touch /root/after".into(),
                        creates: Some("/root/after".into()),
                        unless: None,
                    },
                )],
                handlers: vec![],
            }),
        },
    ];
    common::run_on(h, phases, false, Box::new(std::io::sink())).await
}

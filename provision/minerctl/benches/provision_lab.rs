#![allow(clippy::unwrap_used, clippy::expect_used)] // bench support: panics are the failure report
//! `minerctl provision` on 4, 16 and 32 lab hosts with an inventory as a miner would write it
//! (every role, the default step set, only package lists shortened): a first run, no-op
//! reruns of all roles and of the base role, the host-side CPU of a no-op (machine CPU from
//! /proc/stat minus minerctl's own, which includes whatever else the machine runs; and,
//! exactly, the CPU of each host's sshd and all it started), a `--profile` of one no-op, and
//! ansible-playbook doing
//! the base role on the same hosts in the same run (`benches/ansible/run.sh`; it installs
//! ansible-core from PyPI once).
//!
//! Run with `cargo bench -p minerctl --bench provision_lab` (needs root: lab hosts).
//! PROVISION_BENCH_SIZES=4,16 chooses sizes; PROVISION_BENCH_ANSIBLE=0 leaves Ansible out.
//! The machine is shared: the /proc/stat figure includes whatever else runs; medians of 3.

use std::process::Command;
use std::time::Instant;

#[path = "../tests/support/lab.rs"]
mod lab;

/// Busy CPU seconds of the whole machine since boot.
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<f64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    (f[0] + f[1] + f[2] + f[5] + f[6] + f.get(7).copied().unwrap_or(0.0)) / 100.0
}

/// CPU seconds the lab hosts' sshd listeners and everything they started used: the
/// listener's own time plus its reaped children's (each connection's sshd, the shells and
/// every process they waited for). Exact and unaffected by other work on the machine.
fn sshd_tree_cpu(setup: &lab::Setup) -> f64 {
    let mut total = 0.0;
    for h in setup.lab.hosts() {
        let stat = h.sh("read -r p </run/sshd.pid && cat /proc/$p/stat").unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<f64> = after.split_whitespace().skip(11).take(4).map(|x| x.parse().unwrap()).collect();
        total += f.iter().sum::<f64>() / 100.0;
    }
    total
}

/// CPU seconds of this process's waited-for children (minerctl runs).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[13].parse::<f64>().unwrap() + f[14].parse::<f64>().unwrap()) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    n: usize,
    first: f64,
    noop: f64,
    host_cpu_ms: f64,
    sshd_cpu_ms: f64,
    own_cpu_ms: f64,
    base: f64,
    ansible: Option<f64>,
}

fn ansible_inventory(setup: &lab::Setup) -> std::path::PathBuf {
    let h0 = &setup.lab.hosts()[0];
    let mut ini = String::from("[lab]\n");
    for h in setup.lab.hosts() {
        ini.push_str(&format!("{} ansible_host={}\n", h.name(), h.addr()));
    }
    ini.push_str(&format!(
        "[all:vars]\nansible_user=root\nansible_python_interpreter=/usr/bin/python3\n\
         ansible_ssh_private_key_file={}\nansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes'\n\
         ssh_keys=['{}']\n",
        h0.client_key_path().display(),
        setup.known_hosts().display(),
        h0.client_public_key()
    ));
    let p = setup.dir.path().join("ansible.ini");
    std::fs::write(&p, ini).unwrap();
    p
}

fn ansible(setup: &lab::Setup, forks: &str) -> Option<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/ansible/run.sh");
    let inv = ansible_inventory(setup);
    let run = || {
        let t = Instant::now();
        let out = Command::new(script).arg(&inv).arg(forks).output().unwrap();
        let secs = t.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            eprintln!("ansible-playbook failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some((secs, text))
    };
    // The first run converges what Ansible does differently (python3-apt for its apt module).
    run()?;
    let (secs, text) = run()?;
    let recap: Vec<&str> = text.lines().filter(|l| l.contains("changed=")).collect();
    if recap.iter().any(|l| !l.contains("changed=0")) {
        eprintln!("note: ansible's second run still changed something:\n{}", recap.join("\n"));
    }
    Some(secs)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("PROVISION_BENCH_SIZES")
        .unwrap_or_else(|_| "4,16,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let with_ansible = std::env::var("PROVISION_BENCH_ANSIBLE").map(|v| v != "0").unwrap_or(true);
    let mut rows = vec![];
    for n in sizes {
        let setup = lab::Setup::start_realistic(n - 1);
        let forks = n.to_string();
        let t = Instant::now();
        let first = setup.run(&["--forks", &forks]);
        let first_s = t.elapsed().as_secs_f64();
        first.assert_ok();
        let (mut wall, mut host, mut own, mut tree) = (vec![], vec![], vec![], vec![]);
        for _ in 0..3 {
            let s0 = sshd_tree_cpu(&setup);
            let (m0, c0, t) = (machine_cpu(), children_cpu(), Instant::now());
            let r = setup.run(&["--forks", &forks]);
            let secs = t.elapsed().as_secs_f64();
            let (m1, c1) = (machine_cpu(), children_cpu());
            tree.push((sshd_tree_cpu(&setup) - s0) * 1000.0 / n as f64);
            r.assert_ok();
            assert!(r.changed_steps().is_empty(), "no-op rerun changed something: {:?}", r.changed_steps());
            wall.push(secs);
            own.push((c1 - c0) * 1000.0 / n as f64);
            host.push(((m1 - m0) - (c1 - c0)).max(0.0) * 1000.0 / n as f64);
        }
        let profiled = setup.run(&["--forks", &forks, "--profile"]);
        profiled.assert_ok();
        eprintln!("{n} hosts, no-op, --profile:{}", profiled.stderr);
        let mut base = vec![];
        for _ in 0..3 {
            let t = Instant::now();
            setup.run(&["--forks", &forks, "--tags", "base"]).assert_ok();
            base.push(t.elapsed().as_secs_f64());
        }
        let ansible = if with_ansible { ansible(&setup, &forks) } else { None };
        rows.push(Row {
            n,
            first: first_s,
            noop: median(wall),
            host_cpu_ms: median(host),
            sshd_cpu_ms: median(tree),
            own_cpu_ms: median(own),
            base: median(base),
            ansible,
        });
        eprintln!("{n} hosts done");
    }
    println!("\nminerctl provision on lab hosts, realistic inventory (forks = host count; medians of 3)");
    println!(
        "{:>5}  {:>9}  {:>9}  {:>18}  {:>17}  {:>16}  {:>10}  {:>12}  {:>13}",
        "hosts",
        "first s",
        "no-op s",
        "/proc/stat ms/host",
        "sshd tree ms/host",
        "minerctl ms/host",
        "base no-op s",
        "ansible base s",
        "ansible/minerctl"
    );
    for r in rows {
        let (a, ratio) = match r.ansible {
            Some(a) => (format!("{a:.2}"), format!("{:.0}x", a / r.base)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:>5}  {:>9.2}  {:>9.2}  {:>18.1}  {:>17.1}  {:>16.1}  {:>10.2}  {:>12}  {:>13}",
            r.n, r.first, r.noop, r.host_cpu_ms, r.sshd_cpu_ms, r.own_cpu_ms, r.base, a, ratio
        );
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench support: panics are the failure report
//! Wall time of `minerctl provision` on 4, 16 and 32 lab hosts: a first run (converging
//! fresh hosts: real apt-get, users, files; stand-ins for systemd/snap/nvidia) and a no-op
//! rerun. Run with `cargo bench -p minerctl --bench provision_lab` (needs root: lab hosts).
//! Set PROVISION_BENCH_SIZES=4,16 to choose sizes, and MINERCTL_WRAPPER="/usr/bin/time -f
//! TIME,%e,%U,%S" to see minerctl's own CPU time (wall, user, system) per no-op run.

use std::time::Instant;

#[path = "../tests/support/lab.rs"]
mod lab;

fn main() {
    let sizes: Vec<usize> = std::env::var("PROVISION_BENCH_SIZES")
        .unwrap_or_else(|_| "4,16,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut rows = vec![];
    for n in sizes {
        let t = Instant::now();
        let setup = lab::Setup::start(n - 1);
        let lab_start = t.elapsed().as_secs_f64();
        let forks = n.to_string();
        let t = Instant::now();
        let first = setup.run(&["--forks", &forks]);
        let first_s = t.elapsed().as_secs_f64();
        first.assert_ok();
        let mut noop = vec![];
        for _ in 0..3 {
            let t = Instant::now();
            let r = setup.run(&["--forks", &forks]);
            noop.push(t.elapsed().as_secs_f64());
            r.assert_ok();
            // Lines a MINERCTL_WRAPPER profiler printed (e.g. /usr/bin/time).
            for l in r.stderr.lines().filter(|l| l.starts_with("TIME")) {
                eprintln!("{n} hosts no-op: {l}");
            }
            assert!(r.changed_steps().is_empty(), "no-op rerun changed something: {:?}", r.changed_steps());
        }
        noop.sort_by(|a, b| a.total_cmp(b));
        rows.push((n, lab_start, first_s, noop[1], noop[0]));
        eprintln!("{n} hosts done");
    }
    println!("\nminerctl provision on lab hosts (forks = host count; no-op: median and best of 3)");
    println!(
        "{:>5}  {:>12}  {:>12}  {:>14}  {:>12}  {:>16}",
        "hosts", "lab start s", "first run s", "no-op median s", "no-op best s", "no-op ms / host"
    );
    for (n, lab_s, first, med, best) in rows {
        println!(
            "{n:>5}  {lab_s:>12.2}  {first:>12.2}  {med:>14.2}  {best:>12.2}  {:>16.1}",
            med * 1000.0 / n as f64
        );
    }
}

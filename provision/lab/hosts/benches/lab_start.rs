//! How long lab hosts take to start and to tear down (prints figures; no asserts).
//! `cargo bench -p lab-hosts --bench lab_start` (needs root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lab_hosts::lab::{Lab, LabHost};

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "median {}, min {}, max {} ({} runs)",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

fn main() {
    // The first start of a process may generate the shared client key.
    drop(LabHost::start("warm-up").unwrap());

    let (mut starts, mut stops, mut execs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let t = Instant::now();
        let host = LabHost::start("bench").unwrap();
        starts.push(t.elapsed());
        for _ in 0..5 {
            let t = Instant::now();
            host.sh("true").unwrap();
            execs.push(t.elapsed());
        }
        let t = Instant::now();
        drop(host);
        stops.push(t.elapsed());
    }
    println!("one lab host: start (sshd listening) {}", summary(starts));
    println!("one lab host: teardown              {}", summary(stops));
    println!("exec(\"true\") via nsenter          {}", summary(execs));

    for n in [4, 32] {
        let t = Instant::now();
        let lab = Lab::start(n).unwrap();
        let started = t.elapsed();
        let t = Instant::now();
        drop(lab);
        println!(
            "Lab::start({n}): {} ({} per host); teardown {}",
            ms(started),
            ms(started / n as u32),
            ms(t.elapsed())
        );
    }
}

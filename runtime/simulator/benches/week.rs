//! A 7-day trace for 100 servers (the generator's defaults), every strategy: prints
//! how long generation and each simulation take (medians of 3). The target (under a
//! minute per strategy on a 2-core machine) is read from the output, never asserted.
//!
//! `cargo bench -p miner-simulator --bench week` (release; builds Gepetto's whole
//! dependency tree optimised), or `cargo test -p miner-simulator --bench week` to time
//! the unoptimised build, as the README's figures do.

use std::time::{Duration, Instant};

use miner_simulator::{GenParams, STRATEGIES, Simulator, generate, strategy};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let params = GenParams { seed: 1, days: 7.0, servers: 100, ..GenParams::default() };
    let mut gen_times = Vec::new();
    let mut trace = None;
    for _ in 0..3 {
        let t = Instant::now();
        trace = Some(generate(&params));
        gen_times.push(t.elapsed());
    }
    let Some(trace) = trace else { return Ok(()) };
    println!(
        "trace: {} days, {} servers, {} chutes, {} events; generated in {:?} (median of 3)",
        params.days,
        trace.servers.len(),
        trace.chutes.len(),
        trace.events.len(),
        median(gen_times)
    );
    for name in STRATEGIES {
        let mut times = Vec::new();
        let mut value = 0.0;
        for _ in 0..3 {
            let s = strategy(name)?;
            let t = Instant::now();
            let r = Simulator::new(&trace, s.as_ref())?.run()?;
            times.push(t.elapsed());
            value = r.value_per_dollar;
        }
        println!(
            "{name:>10}: simulated 7 days x 100 servers in {:?} (median of 3), value/$ {value:.4}",
            median(times)
        );
    }
    Ok(())
}

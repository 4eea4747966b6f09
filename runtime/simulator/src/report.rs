//! Results: per-strategy figures, the comparison table, JSON, and the SVG plot of
//! value over time.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What one strategy did over one trace. Value is in compute-unit-hours (compute
/// seconds × multiplier / 3600), the validator's currency (README: "Value model").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyResult {
    pub strategy: String,
    pub value: f64,
    pub value_compute: f64,
    pub value_bounties: f64,
    pub value_jobs: f64,
    /// Compute value over what the same time would have earned at the chutes' base
    /// `compute_multiplier`: the bonuses (urgency, private, bounty age) the strategy's
    /// instances were paid (locked in when they activated, or drifting under
    /// `multiplier_drift_s`), weighted by what each was paid for. 1.0: none; 0 when no
    /// instance served.
    pub multiplier_bonus: f64,
    /// The fleet's hourly cost over the period (servers are paid whether busy or not).
    pub cost_usd: f64,
    pub value_per_dollar: f64,
    /// Value per dollar over the trace's last day alone (the whole trace when it is a
    /// day or shorter): the level a strategy holds once the fleet has settled, which
    /// a miner running for months lives with, and the current chutes validator's
    /// scoring window.
    pub last_day_value_per_dollar: f64,
    pub gpu_hours: f64,
    /// GPU-hours doing paid work (an instance's GPUs × its utilisation, job runs).
    pub busy_gpu_hours: f64,
    /// GPU-hours held by a deployment (warming up, idle or busy).
    pub allocated_gpu_hours: f64,
    pub idle_gpu_hours: f64,
    pub utilisation: f64,
    pub launches: u64,
    pub refusals_423: u64,
    pub failed_launches: u64,
    pub validator_removals: u64,
    pub lost_to_node_failures: u64,
    pub preemptions: u64,
    /// What the preempted instances were earning, for the hour after (CU-h).
    pub preemption_value_lost: f64,
    /// The warm-up (pull, download, verification) of preempted instances, thrown
    /// away, at the servers' hourly cost.
    pub preemption_sunk_usd: f64,
    pub jobs_completed: u64,
    pub jobs_refused: u64,
    pub jobs_lost_race: u64,
    pub bounties_claimed: u64,
    pub autoscale_calls: u64,
    /// Low-earning instances replaced by a busier chute (`Strategy::rebalance`).
    pub rebalances: u64,
    /// (hours since start, cumulative value) every hour.
    pub series: Vec<(f64, f64)>,
}

/// Every strategy over one trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub seed: u64,
    pub source: String,
    pub days: f64,
    pub servers: usize,
    pub gpus: usize,
    pub chutes: usize,
    pub results: Vec<StrategyResult>,
}

impl Comparison {
    /// The table `minerctl simulate` prints; the last column is value per dollar
    /// relative to the first strategy listed.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "trace: {} (seed {}), {:.1} days, {} servers / {} GPUs, {} chutes",
            self.source, self.seed, self.days, self.servers, self.gpus, self.chutes
        );
        let headers = [
            "strategy",
            "value CU-h",
            "compute",
            "bounties",
            "jobs",
            "cost $",
            "value/$",
            "last day",
            "util %",
            "bonus x",
            "idle GPU-h",
            "preempt",
            "lost CU-h",
            "sunk $",
            "423s",
            "vs first",
        ];
        let base = self.results.first().map_or(0.0, |r| r.value_per_dollar);
        let rows: Vec<Vec<String>> = self
            .results
            .iter()
            .map(|r| {
                vec![
                    r.strategy.clone(),
                    format!("{:.1}", r.value),
                    format!("{:.1}", r.value_compute),
                    format!("{:.1}", r.value_bounties),
                    format!("{:.1}", r.value_jobs),
                    format!("{:.0}", r.cost_usd),
                    format!("{:.4}", r.value_per_dollar),
                    format!("{:.4}", r.last_day_value_per_dollar),
                    format!("{:.1}", r.utilisation * 100.0),
                    format!("{:.2}", r.multiplier_bonus),
                    format!("{:.0}", r.idle_gpu_hours),
                    r.preemptions.to_string(),
                    format!("{:.1}", r.preemption_value_lost),
                    format!("{:.1}", r.preemption_sunk_usd),
                    r.refusals_423.to_string(),
                    if base > 0.0 { format!("{:.2}x", r.value_per_dollar / base) } else { "-".into() },
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..headers.len())
            .map(|i| rows.iter().map(|r| r[i].len()).chain([headers[i].len()]).max().unwrap_or(0))
            .collect();
        let line = |cells: Vec<&str>| -> String {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i == 0 {
                    let _ = write!(l, "{c:<w$}", w = widths[i]);
                } else {
                    let _ = write!(l, "  {c:>w$}", w = widths[i]);
                }
            }
            l
        };
        out.push_str(&line(headers.to_vec()));
        out.push('\n');
        for r in &rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
            out.push('\n');
        }
        out
    }

    /// Pretty JSON, stable field order.
    pub fn json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// An SVG line chart of cumulative value per strategy over time.
    pub fn svg(&self) -> String {
        const W: f64 = 800.0;
        const H: f64 = 450.0;
        const L: f64 = 80.0;
        const R: f64 = 170.0;
        const T: f64 = 40.0;
        const B: f64 = 50.0;
        const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
        let max_x = self.days * 24.0;
        let max_y = self
            .results
            .iter()
            .flat_map(|r| r.series.iter().map(|(_, v)| *v))
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let (pw, ph) = (W - L - R, H - T - B);
        let x = |h: f64| L + if max_x > 0.0 { h / max_x * pw } else { 0.0 };
        let y = |v: f64| T + ph - v / max_y * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" font-size="15" text-anchor="middle">Cumulative value (CU-h) — {} seed {}, {} servers</text>"#,
            L + pw / 2.0,
            xml(&self.source),
            self.seed,
            self.servers
        );
        // axes and grid
        for i in 0..=5 {
            let v = max_y * i as f64 / 5.0;
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{L}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
                L + pw,
                L - 6.0,
                yy + 4.0
            );
        }
        let days = self.days.ceil().max(1.0) as usize;
        for d in 0..=days {
            let xx = x(d as f64 * 24.0);
            if xx > L + pw + 0.5 {
                break;
            }
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" y1="{T}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">day {d}</text>"##,
                T + ph,
                T + ph + 18.0
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{L}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><line x1="{L}" y1="{T}" x2="{L}" y2="{:.1}" stroke="black"/>"#,
            T + ph,
            L + pw,
            T + ph,
            T + ph
        );
        for (i, r) in self.results.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
            for (h, v) in &r.series {
                let _ = write!(points, " {:.1},{:.1}", x(*h), y(*v));
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>"#
            );
            let ly = T + 10.0 + i as f64 * 20.0;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{} ({:.3}/$)</text>"#,
                L + pw + 12.0,
                L + pw + 32.0,
                L + pw + 38.0,
                ly + 4.0,
                xml(&r.strategy),
                r.value_per_dollar
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

//! `minerctl simulate`: score Gepetto's strategies on a seeded or recorded trace
//! before they touch paid GPUs (crate `miner-simulator`; its README holds the model
//! and every assumption).

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use miner_simulator::trace::Scoring;
use miner_simulator::{GenParams, STRATEGIES, Trace, compare, generate};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// What the validator pays an instance for (`miner_trace::Scoring`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringArg {
    /// Compute served: utilisation × multiplier (the reference's model).
    BusyTime,
    /// Active time × multiplier, busy or not; nothing for an instance the miner ends
    /// within an hour of activation (the current chutes validator).
    Lifetime,
}

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Generator seed (ignored with --trace).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated days (ignored with --trace).
    #[arg(long, default_value_t = 7.0)]
    pub days: f64,
    /// Servers in the generated fleet (ignored with --trace).
    #[arg(long, default_value_t = 100)]
    pub servers: usize,
    /// Generator parameters as JSON (the fields of GenParams; missing ones keep their
    /// defaults); --seed, --days and --servers still apply.
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// Replay a trace (JSON lines, generated or recorded by Gepetto) instead of generating one.
    #[arg(long, value_name = "FILE", conflicts_with = "params")]
    pub trace: Option<PathBuf>,
    /// Also write the trace that was simulated (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub write_trace: Option<PathBuf>,
    /// Let instances' multipliers drift toward what their chute pays now, as the current
    /// chutes validator does (`7200,28800`: kept for two hours after activation, equal by
    /// hour eight), instead of keeping the one they activated with. Overrides the
    /// trace's validator model, recorded traces included.
    #[arg(long, value_name = "HOLD_S,FULL_S", value_delimiter = ',')]
    pub multiplier_drift: Option<Vec<u64>>,
    /// What instances are paid for; overrides the trace's validator model (default:
    /// the trace's, busy time for generated traces).
    #[arg(long, value_enum)]
    pub scoring: Option<ScoringArg>,
    /// Strategies to compare, the first is the baseline of the `vs first` column.
    #[arg(long = "strategy", value_delimiter = ',', default_values_t = STRATEGIES.map(String::from))]
    pub strategies: Vec<String>,
    /// Table for people, JSON for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Write an SVG plot of cumulative value over time per strategy.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut trace = match &args.trace {
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("cannot open trace {}", path.display()))?;
            Trace::read(BufReader::new(file))
                .with_context(|| format!("cannot read trace {}", path.display()))?
        }
        None => {
            let base = match &args.params {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read parameters {}", path.display()))?;
                    serde_json::from_str::<GenParams>(&text)
                        .with_context(|| format!("invalid parameters in {}", path.display()))?
                }
                None => GenParams::default(),
            };
            anyhow::ensure!(args.days > 0.0 && args.days.is_finite(), "--days must be a positive number");
            generate(&GenParams { seed: args.seed, days: args.days, servers: args.servers, ..base })
        }
    };
    if let Some(drift) = &args.multiplier_drift {
        let &[hold, full] = drift.as_slice() else {
            anyhow::bail!("--multiplier-drift takes two numbers of seconds, HOLD_S,FULL_S");
        };
        trace.header.validator.multiplier_drift_s = Some([hold, full]);
    }
    if let Some(scoring) = args.scoring {
        trace.header.validator.scoring = match scoring {
            ScoringArg::BusyTime => Scoring::BusyTime,
            ScoringArg::Lifetime => Scoring::Lifetime,
        };
    }
    if let Some(path) = &args.write_trace {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        );
        trace.write(&mut out)?;
        out.flush().with_context(|| format!("cannot write {}", path.display()))?;
    }
    let cmp = compare(&trace, &args.strategies)?;
    if let Some(path) = &args.svg {
        std::fs::write(path, cmp.svg()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let text = match args.output {
        Output::Table => cmp.table(),
        Output::Json => cmp.json()? + "\n",
    };
    super::write_result(&text)?;
    Ok(ExitCode::SUCCESS)
}

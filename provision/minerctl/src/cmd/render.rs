//! `minerctl render`: print the miner's Kubernetes manifests (the `helm template` of this
//! project) for the given values, byte-for-byte deterministic. Secrets are rendered
//! without data; `minerctl deploy` fills them.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use minerctl_manifests::{Layer, Values};

/// Values layering shared by `render` and `deploy`: defaults < `-f` files < `--set`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ValuesArgs {
    /// Values file; repeat for several (later files win), like `helm -f`.
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Override a value: `--set a.b=c,x[0].y=z` (repeatable; `\,` and `\.` escape).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Like --set, but the value is always a string.
    #[arg(long = "set-string", value_name = "KEY=VALUE")]
    pub set_string: Vec<String>,
}

impl ValuesArgs {
    pub fn load(&self) -> anyhow::Result<Values> {
        let layers: Vec<Layer> = self
            .values
            .iter()
            .cloned()
            .map(Layer::File)
            .chain(self.set.iter().cloned().map(Layer::Set))
            .chain(self.set_string.iter().cloned().map(Layer::SetString))
            .collect();
        Ok(Values::load(&layers)?)
    }
}

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    #[command(flatten)]
    pub values: ValuesArgs,
    /// Write the YAML to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let values = args.values.load()?;
    let yaml = minerctl_manifests::render(&values)?.to_yaml();
    match &args.output {
        Some(path) => {
            std::fs::write(path, &yaml).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => std::io::stdout().lock().write_all(yaml.as_bytes()).context("cannot write to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

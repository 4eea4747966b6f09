//! `minerctl render`: print the miner's Kubernetes manifests (the `helm template` of this
//! project) for the given values, byte-for-byte deterministic. Secrets are rendered
//! without data; `minerctl deploy` fills them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use minerctl_images::Lock;
use minerctl_images::registry::RegistryRef;
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
    /// The lock file `minerctl images build` wrote: the images default to those builds,
    /// by digest (values files and --set still win). Without it, the images stay
    /// `chutes.local/...:unbuilt` placeholders and a warning says so.
    #[arg(long, value_name = "FILE", default_value = "images/images.lock.json")]
    pub images_lock: PathBuf,
}

impl ValuesArgs {
    /// The layers: the lock's images (named in `registry`, if any) < files < --set.
    fn layers(&self, lock: Option<&Lock>, registry: Option<&RegistryRef>) -> Vec<Layer> {
        let lock_layer = lock.map(|l| Layer::Yaml {
            source: format!("images lock {}", self.images_lock.display()),
            text: l.values_overlay(registry),
        });
        lock_layer
            .into_iter()
            .chain(self.values.iter().cloned().map(Layer::File))
            .chain(self.set.iter().cloned().map(Layer::Set))
            .chain(self.set_string.iter().cloned().map(Layer::SetString))
            .collect()
    }

    /// The registry named by `images.registry` in `values`, if any.
    pub fn registry(values: &Values) -> anyhow::Result<Option<RegistryRef>> {
        let value = values.images.registry.trim();
        if value.is_empty() {
            return Ok(None);
        }
        Ok(Some(RegistryRef::parse(value)?))
    }

    /// The values files and --set alone, without the lock: what `images push` reads
    /// `images.registry` from.
    pub fn load_without_lock(&self) -> anyhow::Result<Values> {
        Ok(Values::load(&self.layers(None, None))?)
    }

    pub fn load(&self) -> anyhow::Result<Values> {
        let lock = Lock::read_if_present(&self.images_lock)?;
        let mut values = Values::load(&self.layers(lock.as_ref(), None))?;
        // The registry is a value itself: once known, the lock's images are named there.
        if let Some(registry) = Self::registry(&values)?
            && lock.is_some()
        {
            values = Values::load(&self.layers(lock.as_ref(), Some(&registry)))?;
        }
        let unbuilt: Vec<&str> = [
            ("minerApi.image", &values.miner_api.image),
            ("gepetto.image", &values.gepetto.image),
            ("porter.image", &values.porter.image),
            ("auditExporter.image", &values.audit_exporter.image),
            ("graval.image", &values.graval.image),
        ]
        .into_iter()
        .filter(|(_, image)| image.ends_with(":unbuilt"))
        .map(|(key, _)| key)
        .collect();
        if !unbuilt.is_empty() {
            // A warning, not an error: rendering to read the manifests needs no build.
            eprintln!(
                "warning: {} still name the `:unbuilt` placeholder ({} has no such image): run \
                 `minerctl images build` (with --cuda-binary/--cuda-wheels for graval.image) or set them",
                unbuilt.join(", "),
                self.images_lock.display()
            );
        }
        Ok(values)
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
        None => super::write_result(&yaml)?,
    }
    Ok(ExitCode::SUCCESS)
}

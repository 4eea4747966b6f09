//! The miner's Kubernetes manifests: the typed values schema (`values`), the Tera templates
//! in `templates/` rendered into checked objects (`render`), and the k8s-openapi check that
//! no rendered field is unknown to Kubernetes (`typed`). Values load also refuses what
//! the cluster or the runtime would refuse after a deploy: resource quantities (`quantity`),
//! Prometheus' scrape interval and retention (`duration`), CronJob schedules (`cron`)
//! and the rendered environment, run through the runtime's own loaders (`runtime_env`). This crate never talks to a cluster
//! and never sees a secret value: secrets are rendered without data.

mod cron;
mod duration;
pub mod error;
mod quantity;
pub mod render;
mod runtime_env;
mod typed;
pub mod values;

pub use error::{RenderError, ValuesError};
pub use render::{
    CREATE_ONCE, GENERATE_ANNOTATION, LIFECYCLE_ANNOTATION, Lifecycle, MANAGED_BY, MANAGED_BY_LABEL,
    Manifest, Object, ObjectKey, PART_OF, PART_OF_LABEL, canonical, kind_order, render,
};
pub use values::{Layer, Values};

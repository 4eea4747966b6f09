//! Errors of this crate. Each names what was wrong and where (file, `--set` argument,
//! template, object), and none carries a secret: values files hold no secrets.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error("cannot read values file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{source_name}: not valid YAML: {message}")]
    Yaml { source_name: String, message: String },
    #[error("{source_name}: key `{key}`: {message}")]
    Schema { source_name: String, key: String, message: String },
    #[error("--set {arg}: {message}")]
    Set { arg: String, message: String },
    #[error("values: key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {template}: {message}")]
    Template { template: String, message: String },
    #[error("template {template} rendered invalid YAML: {message}")]
    Yaml { template: String, message: String },
    #[error("template {template}: {object}: {message}")]
    Object { template: String, object: String, message: String },
    #[error("{object} is rendered twice (by {first} and {second})")]
    Duplicate { object: String, first: String, second: String },
}

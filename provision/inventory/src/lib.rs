//! The minerctl inventory: hosts and variables read from YAML, checked completely before any
//! connection is made.
//!
//! Invariants:
//! - An [`Inventory`] value is always valid: exactly one primary, unique names, wireguard and
//!   external IPs, every wireguard IP inside the mesh subnet, no unknown keys.
//! - Loading never stops at the first mistake: [`InventoryError::Invalid`] lists every
//!   problem, each with file, line, column and (when it has one) the host.
//! - Pure: no I/O beyond reading the file.

mod model;
mod parse;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use model::{Host, Inventory, Ipv4Net, JumpHost, SshSettings, Vars};
pub use yaml::Pos;

/// One thing wrong with the inventory, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub pos: Pos,
    pub host: Option<String>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{pos}: YAML syntax error: {message}", file.display())]
    Syntax { file: PathBuf, pos: Pos, message: String },
    #[error("{}", render_problems(file, problems))]
    Invalid { file: PathBuf, problems: Vec<Problem> },
}

impl InventoryError {
    /// The located problems (one for a syntax error, none for an I/O error).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            InventoryError::Io { .. } => vec![],
            InventoryError::Syntax { pos, message, .. } => {
                vec![Problem { pos: *pos, host: None, message: message.clone() }]
            }
            InventoryError::Invalid { problems, .. } => problems.clone(),
        }
    }
}

fn render_problems(file: &Path, problems: &[Problem]) -> String {
    let mut out = format!("{} has {} problem(s):", file.display(), problems.len());
    for p in problems {
        out.push_str(&format!("\n  {}:{}: ", file.display(), p.pos));
        if let Some(h) = &p.host {
            out.push_str(&format!("host `{h}`: "));
        }
        out.push_str(&p.message);
    }
    out
}

/// Reads and validates an inventory file.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| InventoryError::Io { path: path.to_path_buf(), source })?;
    parse_str(&text, path)
}

/// Parses and validates inventory text; `file` is only used in messages.
pub fn parse_str(text: &str, file: &Path) -> Result<Inventory, InventoryError> {
    let root = yaml::parse(text).map_err(|e| InventoryError::Syntax {
        file: file.to_path_buf(),
        pos: e.pos,
        message: e.message,
    })?;
    parse::inventory(root, file).map_err(|mut problems| {
        problems.sort_by_key(|p| p.pos);
        InventoryError::Invalid { file: file.to_path_buf(), problems }
    })
}

//! One module per subcommand.

pub mod deploy;
pub mod keys;
pub mod provision;
pub mod render;

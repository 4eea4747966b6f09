//! One module per subcommand.

pub mod add_node;
pub mod deploy;
pub mod images;
pub mod keys;
pub mod node_common;
pub mod provision;
pub mod remove_node;
pub mod render;
pub mod ssh;

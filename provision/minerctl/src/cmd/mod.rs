//! One module per subcommand.

pub mod add_node;
pub mod deploy;
pub mod images;
pub mod keys;
#[cfg(feature = "lab")]
pub mod lab;
pub mod node_common;
pub mod provision;
pub mod remove_node;
pub mod render;
pub mod simulate;
pub mod ssh;
pub mod status;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout failed: the reader went away (`| head`) or the file it
/// went to did. Later output is dropped rather than panicking (as `println!` does) or
/// stopping a command halfway through changing machines because nobody reads its
/// progress any more.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Writes the operator's output (the `outln!` macro) to stdout; see
/// [`STDOUT_GONE`]. A failure other than a closed pipe is said once on stderr.
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush())
        && !STDOUT_GONE.swap(true, Ordering::Relaxed)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("minerctl: writing to stdout failed ({e}); further output is dropped");
    }
}

/// Loads the inventory, every command's first step. A missing file is the first
/// thing a new user meets, so it says what to do instead of only what failed.
pub fn load_inventory(path: &Path) -> anyhow::Result<provision_inventory::Inventory> {
    match provision_inventory::load(path) {
        Err(provision_inventory::InventoryError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            anyhow::bail!(
                "no inventory at {}: copy inventory.example.yml (in the repository root) to {} and describe \
                 your hosts in it, or name another file (minerctl provision FILE)",
                path.display(),
                path.display()
            )
        }
        other => Ok(other?),
    }
}

/// The error and its causes on one line, each cause once. Library errors often
/// print their source in their own message too (`cannot read X: <io error>`), and
/// anyhow's `{:#}` would then repeat it (`...: No such file (os error 2): No such file
/// (os error 2)`); a cause whose text the line already holds is left out.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

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

/// Writes the operator's output (the `outln!` macro) to stdout through [`Progress`].
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = Progress.write_fmt(args).and_then(|()| Progress.flush());
}

/// Writes a command's result (`render`'s manifests, `simulate`'s table, a `status`
/// screen) to stdout. A reader that went away (`minerctl render | head`) took what it
/// wanted: that is success, and [`stdout_gone`] says so from then on (so `status
/// --watch` stops). Any other failure (a full disk) is an error: the result was lost.
pub fn write_result(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    // Tried even when earlier output failed: only a closed pipe makes losing it fine.
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_GONE.store(true, Ordering::Relaxed);
            Ok(())
        }
        r => r.map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}")),
    }
}

/// Whether stdout's reader has gone (or writing to it failed).
pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// Stdout for what a command prints while it changes machines (`outln!`, deploy's and
/// drain's progress, add-node's events, the provisioning report). It never fails: once
/// the reader is gone (`| head`) or a write failed otherwise (said once on stderr), output
/// is dropped and the change carries on, rather than stopping halfway with some objects
/// applied or a node cordoned but not drained. A command whose output *is* the result
/// writes it with [`write_result`], which fails on a write error other than a closed pipe.
pub struct Progress;

impl Progress {
    /// Runs one write or flush on the locked stdout, applying [`STDOUT_GONE`].
    fn attempt(f: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) {
        if STDOUT_GONE.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = f(&mut std::io::stdout().lock())
            && !STDOUT_GONE.swap(true, Ordering::Relaxed)
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("minerctl: writing to stdout failed ({e}); further output is dropped");
        }
    }
}

impl std::io::Write for Progress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // All or nothing: a short write would make `write_all` call again anyway.
        Self::attempt(|out| out.write_all(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::attempt(|out| out.flush());
        Ok(())
    }
}

/// The live report of a provisioning run, sharing the log's redactor: the runner registers
/// captured secrets (the join token) with the log's only, so a reporter with a redactor of its
/// own would print them.
pub fn reporter(
    log: &provision_engine::Log,
    format: provision_engine::OutputFormat,
    verbose: bool,
    out: Box<dyn std::io::Write + Send>,
) -> provision_engine::Reporter {
    provision_engine::Reporter::new(format, log.redactor.clone(), verbose, out)
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

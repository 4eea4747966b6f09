//! Handlers notified but not yet run, remembered on the host.
//!
//! A step that changes something notifies its handlers, which run at the end of the phase.
//! If a later step fails (or the connection drops) first, the next run finds that step ok and
//! nothing would notify them again: a new driver whose module is never loaded. So each name is
//! written to [`PATH`] before the notifying step is reported, read back with the host's state
//! on the next run, and removed once its handler has run; until then the first phase that has
//! a handler of that name runs it, whether or not a step notifies it.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::apply::{ApplyError, apply_change};
use crate::conn::Conn;
use crate::plan::{Change, Mutation, write_script};
use crate::report::Log;
use crate::step::Meta;

/// One handler name a line.
pub const PATH: &str = "/var/lib/minerctl/pending-handlers";

/// Longest line taken for a handler name (step names are one short line).
const MAX_NAME: usize = 200;

/// The handler names pending on one host.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Whether the list is kept on the host: not over a local connection, where the engine's
    /// own tests run many "hosts" on this one machine.
    persist: bool,
    names: BTreeSet<String>,
}

impl Pending {
    /// The list as read with the host's state (`None`: it was not read); the warnings name
    /// each line that is no handler name (dropped).
    pub fn load(conn: &Conn, text: Option<&[u8]>) -> (Pending, Vec<String>) {
        let (names, warnings) = parse(&String::from_utf8_lossy(text.unwrap_or_default()));
        (Pending { persist: matches!(conn, Conn::Ssh(_)), names }, warnings)
    }

    /// Whether the host has a read of the list to give (see [`Pending::load`]).
    pub fn kept_on(conn: &Conn) -> bool {
        matches!(conn, Conn::Ssh(_))
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.names.iter()
    }

    /// Remembers `names` (on the host, unless in check mode) until their handlers have run.
    pub async fn add(
        &mut self,
        conn: &mut Conn,
        names: &[String],
        check: bool,
        log: &Log,
        host: &str,
    ) -> Result<(), ApplyError> {
        let before = self.names.len();
        self.names.extend(names.iter().cloned());
        if self.names.len() == before {
            return Ok(());
        }
        self.save(conn, check, log, host).await
    }

    /// Forgets `name` once its handler has run.
    pub async fn remove(
        &mut self,
        conn: &mut Conn,
        name: &str,
        check: bool,
        log: &Log,
        host: &str,
    ) -> Result<(), ApplyError> {
        if !self.names.remove(name) {
            return Ok(());
        }
        self.save(conn, check, log, host).await
    }

    /// Writes the whole list (or removes the file when it is empty): idempotent, and through
    /// `apply_change`, so check mode writes nothing.
    async fn save(&self, conn: &mut Conn, check: bool, log: &Log, host: &str) -> Result<(), ApplyError> {
        if !self.persist {
            return Ok(());
        }
        let change = if self.names.is_empty() {
            Change {
                summary: format!("no handler pending: remove {PATH}"),
                diff: None,
                mutation: Mutation::Script { script: format!("rm -f {PATH}"), stdin: None },
            }
        } else {
            let list: Vec<&str> = self.names.iter().map(String::as_str).collect();
            Change {
                summary: format!("handlers pending: {} (in {PATH})", list.join(", ")),
                diff: None,
                mutation: Mutation::Script {
                    script: write_script(PATH, &Meta::root(0o600)),
                    stdin: Some(format!("{}\n", list.join("\n")).into_bytes()),
                },
            }
        };
        apply_change(conn, &change, check, Duration::from_secs(60), log, host).await
    }
}

/// The names in the list's text, and a warning for each line that is no handler name.
fn parse(text: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut names = BTreeSet::new();
    let mut warnings = vec![];
    for (i, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() {
            continue;
        }
        if name.len() > MAX_NAME || name.chars().any(char::is_control) {
            warnings.push(format!("{PATH}: line {} is no handler name, dropped", i + 1));
            continue;
        }
        names.insert(name.to_string());
    }
    (names, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_handler_names_and_the_rest_is_dropped_with_a_warning() {
        let long = "x".repeat(MAX_NAME + 1);
        let (names, warnings) = parse(&format!("reboot\n\n  restart wg0 \r\nbad\u{7}name\n{long}\nreboot\n"));
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["reboot", "restart wg0"]);
        assert_eq!(
            warnings,
            [
                format!("{PATH}: line 4 is no handler name, dropped"),
                format!("{PATH}: line 5 is no handler name, dropped")
            ]
        );
        assert_eq!(parse(""), (BTreeSet::new(), vec![]));
    }
}

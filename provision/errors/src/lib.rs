//! `provision-errors`: one home for what minerctl's crates need to say about an error.
//!
//! Client libraries (reqwest, Tera) put the useful part of an error in its `source`
//! chain: reqwest's own message says "error sending request for url (...)", the
//! reason (connection refused, unknown certificate issuer) is a level or two down;
//! Tera says which template failed and nests the variable that was missing. An
//! operator reading one line of output needs the whole chain.

use std::error::Error;

/// The error's message followed by each cause in its `source` chain, joined with
/// `": "`. A cause whose text the line already holds is skipped: many errors repeat
/// their source in their own message, and the line should not say it twice.
pub fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[derive(Debug, thiserror::Error)]
    #[error("error trying to connect")]
    struct Connect(#[source] Refused);

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request for url (https://registry.example/v2/)")]
    struct Send(#[source] Connect);

    #[derive(Debug, thiserror::Error)]
    #[error("pushing failed: {0}")]
    struct Repeats(#[source] Refused);

    #[test]
    fn every_cause_is_on_the_line_in_order() {
        assert_eq!(
            chain(&Send(Connect(Refused))),
            "error sending request for url (https://registry.example/v2/): error trying to connect: \
             connection refused"
        );
    }

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        assert_eq!(chain(&Repeats(Refused)), "pushing failed: connection refused");
    }

    #[test]
    fn an_error_without_a_source_is_its_message() {
        assert_eq!(chain(&Refused), "connection refused");
    }
}

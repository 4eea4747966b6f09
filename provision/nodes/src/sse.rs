//! Server-sent events as the miner API writes them: `data: {"timestamp", "message"}` blocks
//! separated by a blank line. Chunks from the network may split a block (or a UTF-8
//! character) anywhere, so bytes are buffered until a block is complete.

use serde::Deserialize;

/// One progress line of the add flow.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub timestamp: String,
    pub message: String,
}

#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Feeds bytes; returns the events completed by them. A `data:` payload that is not
    /// the API's JSON is passed on as the message itself rather than dropped.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut out = vec![];
        while let Some((end, sep)) = block_end(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end + sep).take(end).collect();
            if let Some(e) = parse_block(&String::from_utf8_lossy(&block)) {
                out.push(e);
            }
        }
        out
    }

    /// What is left when the stream ends (a last block without its blank line).
    pub fn finish(&mut self) -> Option<Event> {
        let rest = std::mem::take(&mut self.buf);
        parse_block(&String::from_utf8_lossy(&rest))
    }
}

/// Position and length of the first blank-line separator (`\n\n` or `\r\n\r\n`).
fn block_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_block(block: &str) -> Option<Event> {
    // Several `data:` lines of one event are joined with newlines (the SSE rule).
    let data: Vec<&str> = block
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    Some(serde_json::from_str::<Event>(&data).unwrap_or(Event { timestamp: String::new(), message: data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.message.as_str()).collect()
    }

    #[test]
    fn blocks_split_anywhere_come_out_whole_and_in_order() {
        let stream = "data: {\"timestamp\": \"2026-01-01T00:00:00\", \"message\": \"labelled ü\"}\n\n\
                      : comment\n\ndata: {\"timestamp\": \"t\", \"message\": \"done\"}\r\n\r\n";
        for cut in 0..stream.len() {
            let mut p = Parser::default();
            let mut got = p.push(&stream.as_bytes()[..cut]);
            got.extend(p.push(&stream.as_bytes()[cut..]));
            assert_eq!(messages(&got), ["labelled ü", "done"], "cut at {cut}");
            assert_eq!(got[0].timestamp, "2026-01-01T00:00:00");
            assert!(p.finish().is_none());
        }
    }

    #[test]
    fn a_last_block_without_blank_line_and_plain_text_data_are_kept() {
        let mut p = Parser::default();
        assert!(p.push(b"data: not json").is_empty());
        assert_eq!(p.finish().map(|e| e.message), Some("not json".to_string()));
    }
}

//! The `/miner/*` listings: a streamed body of `data: {json}\n\n` lines, where
//! `data: NO_ITEMS` says "explicitly nothing". Items can be megabytes (chute code),
//! so lines are assembled across chunks without a line-length cap below the total.

use serde_json::Value;

/// The `/miner/*` listings and the key each item is identified by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listing {
    Chutes,
    Images,
    Nodes,
    Instances,
    Metrics,
    /// [successor] all miners' active instances.
    ActiveInstances,
}

impl Listing {
    /// Path and query exactly as the original requested them.
    pub fn path(self) -> &'static str {
        match self {
            Listing::Chutes => "/miner/chutes/",
            Listing::Images => "/miner/images/",
            Listing::Nodes => "/miner/nodes/",
            Listing::Instances => "/miner/instances/?explicit_null=True",
            Listing::Metrics => "/miner/metrics/",
            Listing::ActiveInstances => "/miner/active_instances/",
        }
    }

    /// The field that identifies an item of this listing.
    pub fn key(self) -> &'static str {
        match self {
            Listing::Chutes | Listing::Metrics => "chute_id",
            Listing::Images => "image_id",
            Listing::Nodes => "uuid",
            Listing::Instances | Listing::ActiveInstances => "instance_id",
        }
    }
}

/// What a listing said. Gepetto replaces its cache for `Items` and `NoItems`, and
/// keeps it for `Nothing` (a body with neither: the validator had a problem).
#[derive(Debug, Clone, PartialEq)]
pub enum ListingReply {
    Items(Vec<Value>),
    NoItems,
    Nothing,
}

impl ListingReply {
    /// `Some(items)` when the reply is authoritative (possibly empty).
    pub fn authoritative(self) -> Option<Vec<Value>> {
        match self {
            ListingReply::Items(items) => Some(items),
            ListingReply::NoItems => Some(Vec::new()),
            ListingReply::Nothing => None,
        }
    }
}

/// Incremental parser over body chunks.
#[derive(Debug, Default)]
pub struct ListingParser {
    line: Vec<u8>,
    items: Vec<Value>,
    no_items: bool,
    bytes: usize,
    max_bytes: usize,
}

impl ListingParser {
    pub fn new(max_bytes: usize) -> Self {
        ListingParser { max_bytes, ..ListingParser::default() }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.bytes += chunk.len();
        if self.bytes > self.max_bytes {
            return Err(format!("listing is larger than {} bytes", self.max_bytes));
        }
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            self.line.extend_from_slice(&rest[..pos]);
            let line = std::mem::take(&mut self.line);
            self.line_done(&line)?;
            rest = &rest[pos + 1..];
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    pub fn finish(mut self) -> Result<ListingReply, String> {
        let line = std::mem::take(&mut self.line);
        self.line_done(&line)?;
        Ok(if !self.items.is_empty() {
            ListingReply::Items(self.items)
        } else if self.no_items {
            ListingReply::NoItems
        } else {
            ListingReply::Nothing
        })
    }

    fn line_done(&mut self, line: &[u8]) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else { return Ok(()) }; // blank lines, comments, other fields
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"NO_ITEMS" {
            self.no_items = true;
            return Ok(());
        }
        let item: Value = serde_json::from_slice(data).map_err(|e| {
            let shown: String = String::from_utf8_lossy(&data[..data.len().min(120)]).into_owned();
            format!("item {} is not JSON ({e}): {shown}", self.items.len() + 1)
        })?;
        self.items.push(item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_in_chunks(body: &[u8], chunk: usize) -> Result<ListingReply, String> {
        let mut p = ListingParser::new(1 << 30);
        for c in body.chunks(chunk) {
            p.feed(c)?;
        }
        p.finish()
    }

    #[test]
    fn items_split_anywhere_across_chunks() {
        let body = b"data: {\"chute_id\": \"a\", \"code\": \"x\\ny\"}\n\ndata: {\"chute_id\": \"b\"}\r\n\r\n";
        for size in [1, 2, 3, 7, 1000] {
            assert_eq!(
                parse_in_chunks(body, size).unwrap(),
                ListingReply::Items(vec![json!({"chute_id": "a", "code": "x\ny"}), json!({"chute_id": "b"})]),
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn no_items_is_an_explicit_empty_set_and_silence_is_not() {
        assert_eq!(parse_in_chunks(b"data: NO_ITEMS\n\n", 4).unwrap(), ListingReply::NoItems);
        assert_eq!(parse_in_chunks(b"data: NO_ITEMS\n\n", 4).unwrap().authoritative(), Some(vec![]));
        assert_eq!(parse_in_chunks(b"", 4).unwrap(), ListingReply::Nothing);
        assert_eq!(parse_in_chunks(b": keep-alive\n\n", 4).unwrap().authoritative(), None);
        // A last line without its newline still counts.
        assert_eq!(
            parse_in_chunks(b"data: {\"uuid\":\"g\"}", 4).unwrap(),
            ListingReply::Items(vec![json!({"uuid": "g"})])
        );
    }

    #[test]
    fn a_broken_item_fails_the_listing_rather_than_truncating_it() {
        let err =
            parse_in_chunks(b"data: {\"chute_id\": \"a\"}\n\ndata: {\"chute_id\": \n\n", 5).unwrap_err();
        assert!(err.contains("item 2 is not JSON"), "{err}");
        let mut p = ListingParser::new(10);
        assert!(p.feed(b"data: 0123456789").unwrap_err().contains("larger than 10 bytes"));
    }

    #[test]
    fn paths_and_keys_match_the_original() {
        assert_eq!(Listing::Instances.path(), "/miner/instances/?explicit_null=True");
        assert_eq!(Listing::Nodes.key(), "uuid");
        assert_eq!(Listing::Metrics.key(), "chute_id");
    }
}

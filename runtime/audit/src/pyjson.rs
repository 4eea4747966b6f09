//! JSON bytes exactly as Python's `json.dumps(obj)` writes them with default
//! arguments: `", "` and `": "` separators and every non-ASCII character escaped
//! as `\uXXXX` (`ensure_ascii=True`). The validator checks a sha256 over these
//! bytes, so the format has to be byte-exact.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};

struct PyFormatter;

impl Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + io::Write>(&mut self, w: &mut W, escape: CharEscape) -> io::Result<()> {
        // Python writes control characters as \u00XX like serde_json, and the
        // short forms for \b \f \n \r \t, also like serde_json.
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return write!(w, "\\u{byte:04x}"),
            // serde_json may add variants; Solidus is not escaped by Python.
            #[allow(unreachable_patterns)]
            _ => b"",
        };
        w.write_all(s)
    }
}

/// Serialises `value` as Python's `json.dumps(value)` would.
pub fn dumps<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, PyFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn matches_python_json_dumps() {
        // python3 -c 'import json; print(json.dumps({"a": [1, 2.5, None, True], "b": "é😀\n\"x\"", "c": {}}))'
        let v = serde_json::json!({"a": [1, 2.5, null, true], "b": "é😀\n\"x\"", "c": {}});
        assert_eq!(
            String::from_utf8(dumps(&v).unwrap()).unwrap(),
            r#"{"a": [1, 2.5, null, true], "b": "\u00e9\ud83d\ude00\n\"x\"", "c": {}}"#
        );
    }
}

//! JSON bytes exactly as Python's `json.dumps(obj)` writes them with default
//! arguments (`ensure_ascii=True`, `allow_nan=True`). The validator checks a sha256
//! over these bytes, so the format has to be byte-exact:
//! - `", "` and `": "` separators, `[]`/`{}` when empty;
//! - strings: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, and every other character
//!   outside `' '..='~'` (controls, DEL 0x7F, non-ASCII) as lowercase `\uXXXX`, a
//!   surrogate pair above U+FFFF (CPython's `ESCAPE_ASCII = ([\\"]|[^\ -~])`);
//! - floats as `float.__repr__`: the shortest round-trip digits, in exponent form
//!   when the decimal exponent is below -4 or at least 16 (`5e-05`, `1e+16`, sign
//!   and at least two exponent digits), otherwise positional with `.0` when
//!   integral (`4.0`); NaN and infinities as `NaN`, `Infinity`, `-Infinity`;
//! - map keys as Python converts them: strings as is, integers, floats, booleans
//!   and `None` as their JSON text in quotes.
//!
//! The serde data model maps as in `serde_json` (unit and `None` → `null`, enum
//! variants externally tagged, bytes as an array of integers). An `f32` is widened
//! to the `f64` Python would hold.

use serde::Serialize;
use serde::ser::{self, Impossible};

type Error = serde_json::Error;

fn error(msg: &str) -> Error {
    <Error as ser::Error>::custom(msg)
}

/// Serialises `value` as Python's `json.dumps(value)` would.
pub fn dumps<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut ser = PySerializer { out: Vec::new() };
    value.serialize(&mut ser)?;
    Ok(ser.out)
}

/// `repr(value)` of a Python float, or `NaN`/`Infinity`/`-Infinity` as `json.dumps`
/// writes the non-finite ones.
pub fn float_repr(value: f64) -> Result<String, Error> {
    if value.is_nan() {
        return Ok("NaN".to_owned());
    }
    if value.is_infinite() {
        return Ok(if value > 0.0 { "Infinity" } else { "-Infinity" }.to_owned());
    }
    let (digits, decpt) = shortest_digits(value.abs())?;
    let mut out = String::with_capacity(digits.len() + 8);
    if value.is_sign_negative() {
        out.push('-');
    }
    // CPython's format_float_short, mode 'r': value = 0.<digits> × 10^decpt,
    // positional when -4 < decpt <= 16.
    let exp = decpt - 1;
    let n = digits.len();
    if !(-4 < decpt && decpt <= 16) {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.unsigned_abs()));
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', decpt.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let decpt = decpt.unsigned_abs() as usize;
        if decpt >= n {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', decpt - n));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt]);
            out.push('.');
            out.push_str(&digits[decpt..]);
        }
    }
    Ok(out)
}

/// The shortest round-trip decimal digits of a finite, non-negative `value` (no
/// leading or trailing zeros; `"0"` for zero) and `decpt`, with
/// `value = 0.<digits> × 10^decpt`.
///
/// The digits come from `serde_json`'s float writer (zmij): shortest round-trip,
/// with an exact tie between two shortest candidates broken to the even digit, as
/// Python's `repr` (David Gay's dtoa, mode 0) does. Rust's own `{:e}` breaks such
/// ties upwards (84562277191822.625 → `...22.63`, Python `...22.62`). Only the
/// layout of that output (`0.00005`, `1e16`, `1.5e300`, `123.0`) is parsed here.
fn shortest_digits(value: f64) -> Result<(String, i32), Error> {
    let text = serde_json::to_string(&value)?;
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().map_err(|_| error("unexpected float exponent"))?),
        None => (text.as_str(), 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !(int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit())) {
        return Err(error("unexpected float format"));
    }
    let all = format!("{int_part}{frac_part}");
    let leading = all.bytes().take_while(|b| *b == b'0').count();
    let digits = all[leading..].trim_end_matches('0');
    if digits.is_empty() {
        return Ok(("0".to_owned(), 1));
    }
    let int_len = i32::try_from(int_part.len()).map_err(|_| error("unexpected float format"))?;
    let leading = i32::try_from(leading).map_err(|_| error("unexpected float format"))?;
    Ok((digits.to_owned(), int_len + exp - leading))
}

/// A JSON string as Python writes it with `ensure_ascii=True`.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut units = [0u16; 2];
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            // Printable ASCII, one byte each.
            ' '..='~' => out.push(c as u8),
            _ => {
                for &unit in c.encode_utf16(&mut units).iter() {
                    out.extend_from_slice(b"\\u");
                    for shift in [12u16, 8, 4, 0] {
                        out.push(HEX[usize::from((unit >> shift) & 0xf)]);
                    }
                }
            }
        }
    }
    out.push(b'"');
}

struct PySerializer {
    out: Vec<u8>,
}

impl PySerializer {
    fn raw(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn float(&mut self, v: f64) -> Result<(), Error> {
        let text = float_repr(v)?;
        self.raw(&text);
        Ok(())
    }

    /// Opens `{"<variant>": ` of an externally tagged variant.
    fn variant_key(&mut self, variant: &str) {
        self.out.push(b'{');
        write_str(&mut self.out, variant);
        self.raw(": ");
    }
}

/// An array or object being written; `close` ends it (and a variant's wrapper).
struct Compound<'a> {
    ser: &'a mut PySerializer,
    first: bool,
    close: &'static str,
}

impl Compound<'_> {
    fn separator(&mut self) {
        if !self.first {
            self.ser.raw(", ");
        }
        self.first = false;
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.separator();
        value.serialize(&mut *self.ser)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        self.separator();
        write_str(&mut self.ser.out, key);
        self.ser.raw(": ");
        value.serialize(&mut *self.ser)
    }

    fn finish(self) -> Result<(), Error> {
        self.ser.raw(self.close);
        Ok(())
    }
}

impl<'a> ser::Serializer for &'a mut PySerializer {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.raw(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.raw(&v.to_string());
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.raw(&v.to_string());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.raw(&v.to_string());
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.raw(&v.to_string());
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.float(v)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        write_str(&mut self.out, v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_str(&mut self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        use ser::SerializeSeq;
        let mut seq = self.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(b)?;
        }
        seq.end()
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.raw("null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.variant_key(variant);
        value.serialize(&mut *self)?;
        self.raw("}");
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, Error> {
        self.raw("[");
        Ok(Compound { ser: self, first: true, close: "]" })
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        self.variant_key(variant);
        self.raw("[");
        Ok(Compound { ser: self, first: true, close: "]}" })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, Error> {
        self.raw("{");
        Ok(Compound { ser: self, first: true, close: "}" })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a>, Error> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        self.variant_key(variant);
        self.raw("{");
        Ok(Compound { ser: self, first: true, close: "}}" })
    }
}

/// The sequence-like compounds: each element through `element`, closed by `finish`.
macro_rules! elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                self.finish()
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.separator();
        key.serialize(KeySerializer { out: &mut self.ser.out })
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.ser.raw(": ");
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

/// The struct-like compounds: each field through `field`, closed by `finish`.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), Error> {
                self.finish()
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

/// A map key: Python's `json.dumps` turns str, int, float, bool and None keys into
/// strings and refuses anything else.
struct KeySerializer<'a> {
    out: &'a mut Vec<u8>,
}

impl KeySerializer<'_> {
    fn quoted(self, text: &str) -> Result<(), Error> {
        write_str(self.out, text);
        Ok(())
    }
}

fn key_error() -> Error {
    error("keys must be str, int, float, bool or None")
}

impl ser::Serializer for KeySerializer<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.quoted(if v { "true" } else { "false" })
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.quoted(&v.to_string())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        let text = float_repr(v)?;
        self.quoted(&text)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.quoted(v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.quoted(v)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), Error> {
        Err(key_error())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.quoted("null")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.quoted("null")
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.quoted("null")
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.quoted(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Error> {
        Err(key_error())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_error())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_error())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_error())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_error())
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct, Error> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_error())
    }
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

    fn text<T: Serialize + ?Sized>(v: &T) -> String {
        String::from_utf8(dumps(v).unwrap()).unwrap()
    }

    #[test]
    fn floats_are_written_as_python_repr() {
        // Each right-hand side is Python 3.11's `json.dumps(value)` for the value on
        // the left (generated once with python3, then copied here).
        let table: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (5e-05, "5e-05"),
            (1e-07, "1e-07"),
            (123456789012345.6, "123456789012345.6"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (2.5e-300, "2.5e-300"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e22, "1e+22"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-1.5e-10, "-1.5e-10"),
            (9007199254740993.0, "9007199254740992.0"),
            (12.5, "12.5"),
            (1e-5, "1e-05"),
            (0.0001234, "0.0001234"),
            (-123.456, "-123.456"),
            (9.223372036854776e18, "9.223372036854776e+18"),
            (1e21, "1e+21"),
            (0.5, "0.5"),
            // Exact ties between two shortest candidates go to the even digit:
            // 84562277191822.625 and 1292260936553674.25, written by their bits.
            (f64::from_bits(0x42d3_3a2c_1f94_23a8), "84562277191822.62"),
            (f64::from_bits(0x4312_5d37_c852_5329), "1292260936553674.2"),
        ];
        for (value, python) in table {
            assert_eq!(text(value), *python, "{value:?}");
        }
        let all: Vec<f64> = table.iter().map(|(v, _)| *v).collect();
        let joined: Vec<&str> = table.iter().map(|(_, p)| *p).collect();
        assert_eq!(text(&all), format!("[{}]", joined.join(", ")));
    }

    #[test]
    fn strings_are_escaped_as_python_ensure_ascii() {
        // python3 -c 'import json; print(json.dumps(["\x7f", "\x00", "\x1f", "\U0001F600",
        //   "\U00010000\U0010FFFF", "say \"hi\"", "back\\slash", "\x08\x0c\n\r\t", "a/b",
        //   "\u2028", "\u00e9", "\x80", "\uffff", "~ plain ascii"]))'
        let strings = [
            "\u{7f}",
            "\u{0}",
            "\u{1f}",
            "\u{1F600}",
            "\u{10000}\u{10FFFF}",
            "say \"hi\"",
            "back\\slash",
            "\u{8}\u{c}\n\r\t",
            "a/b",
            "\u{2028}",
            "\u{e9}",
            "\u{80}",
            "\u{ffff}",
            "~ plain ascii",
        ];
        assert_eq!(
            text(&strings),
            r#"["\u007f", "\u0000", "\u001f", "\ud83d\ude00", "\ud800\udc00\udbff\udfff", "say \"hi\"", "back\\slash", "\b\f\n\r\t", "a/b", "\u2028", "\u00e9", "\u0080", "\uffff", "~ plain ascii"]"#
        );
        // A DEL inside an otherwise plain string is escaped too.
        assert_eq!(text("a\u{7f}b"), r#""a\u007fb""#);
        assert_eq!(text(&'\u{7f}'), r#""\u007f""#);
    }

    /// A map with float keys, as a Python dict would hold them.
    struct FloatKeys(Vec<(f64, u8)>);

    impl Serialize for FloatKeys {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }

    #[test]
    fn map_keys_are_written_as_python_writes_them() {
        // python3 -c 'import json; print(json.dumps({-2: 1e16, 1: 0.5}))'
        let ints = std::collections::BTreeMap::from([(-2i64, 1e16), (1, 0.5)]);
        assert_eq!(text(&ints), r#"{"-2": 1e+16, "1": 0.5}"#);
        // python3 -c 'import json; print(json.dumps({0.5: 1, 1e16: 2, float("nan"): 3, float("-inf"): 4}))'
        let floats = FloatKeys(vec![(0.5, 1), (1e16, 2), (f64::NAN, 3), (f64::NEG_INFINITY, 4)]);
        assert_eq!(text(&floats), r#"{"0.5": 1, "1e+16": 2, "NaN": 3, "-Infinity": 4}"#);
        // python3 -c 'import json; print(json.dumps({True: 1, None: 2}))'
        let odd = std::collections::BTreeMap::from([(Some(true), 1), (None, 2)]);
        assert_eq!(text(&odd), r#"{"null": 2, "true": 1}"#);
    }

    #[test]
    fn nesting_and_integers_match_python() {
        // python3 -c 'import json; print(json.dumps({"a": [], "b": {}, "c": [None, True, False, -7, 18446744073709551615]}))'
        let v = serde_json::json!({"a": [], "b": {}, "c": [null, true, false, -7, u64::MAX]});
        assert_eq!(text(&v), r#"{"a": [], "b": {}, "c": [null, true, false, -7, 18446744073709551615]}"#);
        // python3 -c 'import json; print(json.dumps([[[1, "x"]], [], {"k": [0.25]}]))'
        type Nested<'a> = (Vec<(u8, &'a str)>, Vec<u8>, std::collections::BTreeMap<&'a str, Vec<f32>>);
        let nested: Nested =
            (vec![(1, "x")], vec![], std::collections::BTreeMap::from([("k", vec![0.25f32])]));
        assert_eq!(text(&nested), r#"[[[1, "x"]], [], {"k": [0.25]}]"#);
    }
}

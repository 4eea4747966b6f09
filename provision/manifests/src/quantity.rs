//! Kubernetes resource quantities (`4Gi`, `500m`, `1e3`), checked at values load.
//!
//! k8s-openapi's `Quantity` is a plain string, so a quantity the API server refuses
//! (`4GB`) would pass `render` and fail `deploy` half-way with a 422 naming the object's
//! field. This is the grammar of `k8s.io/apimachinery/pkg/api/resource`:
//!
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <signedNumber>    ::= <number> | <sign><number>
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <sign>            ::= "+" | "-"
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>
//! ```
//!
//! One difference from the comment above, following the Go code: the exponent is a
//! signed *integer* (`strconv.ParseInt`), so `1e1.5` is refused as the API server does.

/// A quantity that parsed: what the callers need to know beyond "it is one".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    pub negative: bool,
    /// Every digit of the number is 0 (`0`, `0.0Gi`, `0e3`).
    pub zero: bool,
}

const SUFFIXES: &[&str] =
    &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", ""];

/// Parses `text` as a Kubernetes quantity; `None` when the API server would refuse it.
pub fn parse(text: &str) -> Option<Quantity> {
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let int_len = digits(rest);
    let (frac_len, after_number) = match rest[int_len..].strip_prefix('.') {
        Some(after_dot) => {
            let n = digits(after_dot);
            (n, &after_dot[n..])
        }
        None => (0, &rest[int_len..]),
    };
    if int_len + frac_len == 0 {
        return None;
    }
    let number = &rest[..rest.len() - after_number.len()];
    let suffix_ok = SUFFIXES.contains(&after_number) || exponent(after_number);
    suffix_ok.then(|| Quantity { negative, zero: number.bytes().all(|b| b == b'0' || b == b'.') })
}

/// Length of the leading ASCII digits.
fn digits(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

/// `e`/`E` followed by a signed integer (`E` alone is the exa suffix, handled above).
fn exponent(suffix: &str) -> bool {
    let Some(rest) = suffix.strip_prefix(['e', 'E']) else { return false };
    let unsigned = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    !unsigned.is_empty() && digits(unsigned) == unsigned.len() && rest.parse::<i64>().is_ok()
}

/// What to write instead of a size with a byte unit (`4GB` → `4G or 4Gi`), if it is one.
pub fn suggestion(text: &str) -> Option<String> {
    let without_b = text.strip_suffix(['B', 'b'])?;
    if parse(without_b).is_some() && without_b.ends_with('i') {
        return Some(without_b.to_string()); // 512MiB
    }
    let unit = without_b.chars().last()?;
    let number = &without_b[..without_b.len() - unit.len_utf8()];
    parse(number)?;
    let decimal = match unit.to_ascii_uppercase() {
        'K' => "k",
        'M' => "M",
        'G' => "G",
        'T' => "T",
        'P' => "P",
        'E' => "E",
        _ => return None,
    };
    let binary = unit.to_ascii_uppercase();
    Some(format!("{number}{decimal} or {number}{binary}i"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_api_server_accepts() {
        for q in [
            "0", "1", "4Gi", "4G", "500m", "1.5", "1.5Gi", ".5", "5.", "+1", "-1", "100Ki", "1k", "1E",
            "2Ei", "1e3", "1E3", "1e-3", "1e+3", "3n", "7u", "007", "0.0001m",
        ] {
            assert!(parse(q).is_some(), "{q} is a quantity");
        }
    }

    #[test]
    fn refuses_what_the_api_server_refuses() {
        for q in [
            "",
            "4GB",
            "4gb",
            "4gi",
            "4K",
            "1Ki5",
            "Gi",
            ".",
            "-",
            "+",
            "1..5",
            "1.5.2",
            " 1",
            "1 ",
            "4 Gi",
            "1e",
            "1e1.5",
            "1e+",
            "1ee3",
            "1e99999999999999999999",
            "1Gii",
            "ten",
            "1core",
            "--1",
            "1m1",
            "0x10",
            "١",
        ] {
            assert!(parse(q).is_none(), "{q:?} is not a quantity");
        }
    }

    #[test]
    fn sign_and_zero_are_reported() {
        assert_eq!(parse("-1"), Some(Quantity { negative: true, zero: false }));
        assert_eq!(parse("0.0Gi"), Some(Quantity { negative: false, zero: true }));
        assert_eq!(parse("0e3"), Some(Quantity { negative: false, zero: true }));
        assert_eq!(parse("0.01"), Some(Quantity { negative: false, zero: false }));
    }

    #[test]
    fn byte_units_get_the_quantity_meant() {
        assert_eq!(suggestion("4GB").as_deref(), Some("4G or 4Gi"));
        assert_eq!(suggestion("128mb").as_deref(), Some("128M or 128Mi"));
        assert_eq!(suggestion("1kB").as_deref(), Some("1k or 1Ki"));
        assert_eq!(suggestion("512MiB").as_deref(), Some("512Mi"));
        assert_eq!(suggestion("ten"), None);
        assert_eq!(suggestion("4XB"), None);
    }
}

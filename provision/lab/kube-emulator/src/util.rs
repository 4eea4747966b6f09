//! Small helpers: RFC 3339 timestamps without a date crate, quantities, JSON paths.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Now as `2026-11-26T14:53:38Z`.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    rfc3339(secs)
}

/// `secs` seconds from now, as RFC 3339 (deletion timestamps).
pub fn rfc3339_in(secs: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    rfc3339(now + secs)
}

pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A Kubernetes quantity in milli-units (`500m` = 500, `2` = 2000, `1Gi` = 1073741824000).
/// None for what we cannot parse; callers treat that as "no constraint".
pub fn milli(q: &Value) -> Option<u128> {
    let s = match q {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1000.0,
        "m" => 1.0,
        "k" => 1e6,
        "M" => 1e9,
        "G" => 1e12,
        "T" => 1e15,
        "Ki" => 1024.0 * 1000.0,
        "Mi" => 1024.0 * 1024.0 * 1000.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0 * 1000.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1000.0,
        _ => return None,
    };
    Some((num * factor).round() as u128)
}

/// The string form of the value at a dotted path (`spec.nodeName`), as field selectors see it.
pub fn field_string(obj: &Value, dotted: &str) -> String {
    let mut node = obj;
    for part in dotted.split('.') {
        match node.get(part) {
            Some(v) => node = v,
            None => return String::new(),
        }
    }
    match node {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Short stable hash (FNV-1a) of a JSON value, for pod-template hashes and names.
pub fn short_hash(v: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    for _ in 0..10 {
        out.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
        h /= ALPHABET.len() as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_and_quantities() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_704_818), "2026-11-26T14:53:38Z");
        assert_eq!(milli(&json!("500m")), Some(500));
        assert_eq!(milli(&json!("2")), Some(2000));
        assert_eq!(milli(&json!(8)), Some(8000));
        assert_eq!(milli(&json!("1Gi")), Some(1_073_741_824_000));
        assert_eq!(milli(&json!("weird")), None);
    }
}

//! Prometheus durations (`30s`, `1m30s`, `15d`), checked at values load.
//!
//! `prometheus.scrapeInterval` lands in `prometheus.yml` and `prometheus.retention` in
//! `--storage.tsdb.retention.time`; both are plain strings to Kubernetes, so a bad one
//! would deploy and only show as a Prometheus pod in CrashLoopBackOff. This is the
//! grammar of `model.ParseDuration` (github.com/prometheus/common), which both go through:
//!
//! ```text
//! <duration> ::= "0" | (<digits><unit>)+      units strictly from largest to smallest
//! <unit>     ::= y | w | d | h | m | s | ms   (y = 365d, w = 7d, d = 24h)
//! ```
//!
//! and, as there, a total above `i64::MAX` nanoseconds (about 292 years) is refused.

use std::time::Duration;

/// Why a text is not a Prometheus duration; each says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("it is empty")]
    Empty,
    #[error("`{0}` needs a unit, e.g. `{0}s`")]
    MissingUnit(String),
    #[error("a duration starts with a whole number (no sign, no decimal point)")]
    MissingNumber,
    #[error("numbers must be whole: combine units instead (e.g. 1m30s, not 1.5m)")]
    Fraction,
    #[error("`{0}` is not a unit (y, w, d, h, m, s or ms, lowercase)")]
    UnknownUnit(String),
    #[error("units must go from the largest to the smallest, each at most once (e.g. 1h30m)")]
    UnitOrder,
    #[error("it is longer than Prometheus can hold (about 292 years)")]
    OutOfRange,
}

/// `(unit, nanoseconds)`, largest first: a unit's index is its place in the order.
const UNITS: &[(&str, u64)] = &[
    ("y", 365 * DAY),
    ("w", 7 * DAY),
    ("d", DAY),
    ("h", 3_600 * SECOND),
    ("m", 60 * SECOND),
    ("s", SECOND),
    ("ms", 1_000_000),
];
const SECOND: u64 = 1_000_000_000;
const DAY: u64 = 86_400 * SECOND;
/// Go's `time.Duration` is an `int64` of nanoseconds.
const MAX_NANOS: u64 = i64::MAX as u64;

/// Parses `text` as Prometheus does; `Err` says why Prometheus would refuse it.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    match text {
        "" => return Err(DurationError::Empty),
        // Prometheus allows a bare zero, and only that one bare number.
        "0" => return Ok(Duration::ZERO),
        _ => {}
    }
    let mut rest = text;
    let mut total: u64 = 0;
    // Index into UNITS of the last unit seen; the next must come strictly later.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::MissingNumber);
        }
        let (number, after) = rest.split_at(digits);
        // Digits are ASCII, so every split here falls on a character boundary.
        let unit_len = after.bytes().take_while(|b| !b.is_ascii_digit()).count();
        let (unit, after_unit) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(number.to_string()));
        }
        // Prometheus calls `.` an unknown unit; the decimal point is what was meant.
        if unit.starts_with('.') {
            return Err(DurationError::Fraction);
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit(unit.to_string()));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(DurationError::UnitOrder);
        }
        last_unit = Some(index);
        let value: u64 = number.parse().map_err(|_| DurationError::OutOfRange)?;
        total = value
            .checked_mul(UNITS[index].1)
            .and_then(|nanos| total.checked_add(nanos))
            .filter(|t| *t <= MAX_NANOS)
            .ok_or(DurationError::OutOfRange)?;
        rest = after_unit;
    }
    Ok(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_prometheus_accepts() {
        for (text, secs) in [
            ("0", 0),
            ("15s", 15),
            ("30s", 30),
            ("1m30s", 90),
            ("15d", 15 * 86_400),
            ("2w", 14 * 86_400),
            ("1y", 365 * 86_400),
            ("1y2w3d4h5m6s", 365 * 86_400 + 17 * 86_400 + 4 * 3_600 + 5 * 60 + 6),
            ("0s", 0),
            ("007m", 420),
            ("1h", 3_600),
            ("292y", 292 * 365 * 86_400),
            ("292y24w", (292 * 365 + 24 * 7) * 86_400),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1_500)));
    }

    #[test]
    fn refuses_what_prometheus_refuses_and_says_why() {
        use DurationError::*;
        for (text, why) in [
            ("", Empty),
            ("15", MissingUnit("15".into())),
            ("1m30", MissingUnit("30".into())),
            ("1.5m", Fraction),
            ("1.m", Fraction),
            ("15S", UnknownUnit("S".into())),
            ("15D", UnknownUnit("D".into())),
            ("10sec", UnknownUnit("sec".into())),
            ("1M", UnknownUnit("M".into())),
            ("15 s", UnknownUnit(" s".into())),
            ("1s1m", UnitOrder),
            ("1m1m", UnitOrder),
            ("1ms1s", UnitOrder),
            ("m", MissingNumber),
            ("-1s", MissingNumber),
            ("+1s", MissingNumber),
            (" 1s", MissingNumber),
            ("ms", MissingNumber),
            ("293y", OutOfRange),
            ("99999999999999999999s", OutOfRange),
            ("292y25w", OutOfRange),
        ] {
            assert_eq!(parse(text), Err(why), "{text:?}");
        }
    }

    #[test]
    fn the_reasons_say_what_to_write() {
        assert_eq!(parse("15").unwrap_err().to_string(), "`15` needs a unit, e.g. `15s`");
        assert!(parse("10sec").unwrap_err().to_string().contains("y, w, d, h, m, s or ms"));
        assert!(parse("1s1m").unwrap_err().to_string().contains("largest to the smallest"));
    }
}

//! CronJob schedules (`1 * * * *`, `*/5 * * * MON-FRI`, `@daily`), checked at values load.
//!
//! A CronJob's `schedule` is a plain string to k8s-openapi, so one the API server refuses
//! would pass `render` and fail `deploy` half-way with a 422. The API server parses it with
//! robfig/cron v3's `ParseStandard` and refuses any schedule containing `TZ`; this is that
//! grammar:
//!
//! ```text
//! <schedule> ::= <macro> | <field> <field> <field> <field> <field>   (split on whitespace)
//! <macro>    ::= @yearly | @annually | @monthly | @weekly | @daily | @midnight | @hourly
//! <field>    ::= <item> ("," <item>)*
//! <item>     ::= ("*" | <value> | <value> "-" <value>) ["/" <step>]     ("?" as "*" in day fields)
//! ```
//!
//! minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-6 or
//! SUN-SAT (names in any case). Note robfig's day of week stops at 6: the `7` for Sunday
//! that Vixie cron takes is refused by the API server, so it is refused here too.
//!
//! Stricter than robfig on purpose, where what it accepts is a typo rather than a schedule:
//! `@every <duration>` (Go's duration grammar is not checked here; cron fields say the same),
//! empty list items (`1,,2`, or `,` alone, which never fires), `*-5` (robfig ignores
//! the `-5`), a `?` outside the day fields, and a sign on a number (`+5`).

/// Why a schedule is refused (by the API server, or here where robfig would take a typo);
/// each says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("it is empty")]
    Empty,
    #[error(
        "Kubernetes refuses a time zone in the schedule (TZ= or CRON_TZ=); it belongs in the CronJob's \
         timeZone field, which these values do not set: schedules run in the kube-controller-manager's \
         time zone (usually UTC)"
    )]
    TimeZone,
    #[error(
        "`@every` intervals are not accepted here (their Go duration is not checked before deploy): \
         write the interval as cron fields, e.g. `*/5 * * * *` for every 5 minutes"
    )]
    Every,
    #[error(
        "`{0}` is not one of @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly (lowercase)"
    )]
    UnknownMacro(String),
    #[error(
        "it has {0} fields; Kubernetes wants exactly 5, `minute hour day-of-month month day-of-week` \
         (no seconds field), e.g. `*/5 * * * *`, or a macro such as @hourly"
    )]
    FieldCount(usize),
    #[error("{field} field `{text}`: {problem}")]
    Field { field: &'static str, text: String, problem: FieldProblem },
}

/// What is wrong in one of the five fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error("{value} is outside {accepted}")]
    OutOfRange { value: u32, accepted: &'static str },
    #[error("7 is outside 0-6: Kubernetes counts Sunday as 0 (or SUN) only")]
    Sunday7,
    #[error("the range {start}-{end} runs backwards (write the smaller value first)")]
    Reversed { start: u32, end: u32 },
    #[error("a step must be more than 0")]
    ZeroStep,
    #[error("`{text}` is not a value of this field ({accepted})")]
    NotAValue { text: String, accepted: &'static str },
    #[error("step `{0}` is not a whole number")]
    NotAStep(String),
    #[error("`?` is allowed only in the day-of-month and day-of-week fields; use `*`")]
    Question,
    #[error("{0}")]
    Malformed(&'static str),
}

/// One of the five fields: its bounds, its names (valued from `min` up) and whether `?`
/// may stand for `*` in it.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    question: bool,
    accepted: &'static str,
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[], question: false, accepted: "0-59" },
    Field { name: "hour", min: 0, max: 23, names: &[], question: false, accepted: "0-23" },
    Field { name: "day-of-month", min: 1, max: 31, names: &[], question: true, accepted: "1-31" },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
        question: false,
        accepted: "1-12 or JAN-DEC",
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 6,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
        question: true,
        accepted: "0-6 or SUN-SAT",
    },
];

const MACROS: &[&str] = &["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];

/// Checks `text` as the API server checks a CronJob's `schedule`.
pub fn check(text: &str) -> Result<(), ScheduleError> {
    if text.trim().is_empty() {
        return Err(ScheduleError::Empty);
    }
    // The API server refuses `TZ` anywhere in a new CronJob's schedule, not only as a prefix.
    if text.contains("TZ") {
        return Err(ScheduleError::TimeZone);
    }
    // As robfig: a macro only when `@` is the very first character, matched exactly.
    if text.starts_with('@') {
        if text == "@every" || text.starts_with("@every ") {
            return Err(ScheduleError::Every);
        }
        return if MACROS.contains(&text) {
            Ok(())
        } else {
            Err(ScheduleError::UnknownMacro(text.to_string()))
        };
    }
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() != FIELDS.len() {
        return Err(ScheduleError::FieldCount(fields.len()));
    }
    for (field_text, field) in fields.into_iter().zip(&FIELDS) {
        check_field(field_text, field).map_err(|problem| ScheduleError::Field {
            field: field.name,
            text: field_text.to_string(),
            problem,
        })?;
    }
    Ok(())
}

fn check_field(text: &str, field: &Field) -> Result<(), FieldProblem> {
    for item in text.split(',') {
        if item.is_empty() {
            return Err(FieldProblem::Malformed("a list has an empty item (write `1,2`)"));
        }
        check_item(item, field)?;
    }
    Ok(())
}

fn check_item(item: &str, field: &Field) -> Result<(), FieldProblem> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (item, None),
    };
    if let Some(step) = step {
        if step.contains('/') {
            return Err(FieldProblem::Malformed("an item has at most one `/` (e.g. `*/5` or `0-30/10`)"));
        }
        match number(step) {
            None => return Err(FieldProblem::NotAStep(step.to_string())),
            Some(0) => return Err(FieldProblem::ZeroStep),
            Some(_) => {}
        }
    }
    match range {
        "*" => return Ok(()),
        "?" if field.question => return Ok(()),
        "?" => return Err(FieldProblem::Question),
        _ => {}
    }
    let Some((start, end)) = range.split_once('-') else {
        // A single value; with a step it runs to the field's maximum (`5/15`), as in robfig.
        return value(range, field).map(drop);
    };
    if start.is_empty() || end.is_empty() || end.contains('-') {
        return Err(FieldProblem::Malformed("a range is two values joined by one `-` (e.g. `1-5`)"));
    }
    let (start, end) = (value(start, field)?, value(end, field)?);
    if start > end {
        return Err(FieldProblem::Reversed { start, end });
    }
    Ok(())
}

/// A value of `field`: a number within its bounds or one of its names.
fn value(text: &str, field: &Field) -> Result<u32, FieldProblem> {
    let named = field.names.iter().position(|name| name.eq_ignore_ascii_case(text));
    // At most 12 names: the index always fits.
    let parsed = match named {
        Some(index) => u32::try_from(index).ok().map(|i| field.min + i),
        None => number(text),
    };
    let Some(v) = parsed else {
        return Err(if text == "*" || text == "?" {
            FieldProblem::Malformed("`*` and `?` stand alone or with a step (`*/5`), not in a range")
        } else {
            FieldProblem::NotAValue { text: text.to_string(), accepted: field.accepted }
        });
    };
    if field.name == "day-of-week" && v == 7 {
        return Err(FieldProblem::Sunday7);
    }
    if v < field.min || v > field.max {
        return Err(FieldProblem::OutOfRange { value: v, accepted: field.accepted });
    }
    Ok(v)
}

/// Unsigned decimal digits; a number too large for `u32` reads as `u32::MAX`, which every
/// bound refuses as out of range (it is one, not a typo of a name).
fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_kubernetes_accepts() {
        for s in [
            "* * * * *",
            "1 * * * *",
            "*/5 * * * *",
            "0 0 * * *",
            "59 23 31 12 6",
            "0 0 1 1 0",
            "0-30/10 * * * *",
            "5/15 * * * *",
            "0,15,30,45 * * * *",
            "1-5,10-15 */2 * * *",
            "0 9 * * MON-FRI",
            "0 9 * * mon,Wed,FRI",
            "0 0 1 JAN-MAR/1 *",
            "0 0 1 jan,jul *",
            "0 0 ? * SUN",
            "0 0 1 * ?",
            "0 0 5-5 * *",
            "*/61 * * * *",
            "00 09 * * *",
            "  1   *\t* * *  ",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ] {
            assert_eq!(check(s), Ok(()), "{s:?}");
        }
    }

    fn problem(schedule: &str) -> (String, FieldProblem) {
        match check(schedule) {
            Err(ScheduleError::Field { field, problem, .. }) => (field.to_string(), problem),
            other => panic!("{schedule:?}: expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn values_out_of_bounds_name_the_field_and_its_range() {
        for (schedule, field, value) in [
            ("60 * * * *", "minute", 60),
            ("* 24 * * *", "hour", 24),
            ("* * 0 * *", "day-of-month", 0),
            ("* * 32 * *", "day-of-month", 32),
            ("* * * 0 *", "month", 0),
            ("* * * 13 *", "month", 13),
            ("0-60 * * * *", "minute", 60),
            ("1,99 * * * *", "minute", 99),
            ("99999999999 * * * *", "minute", u32::MAX),
        ] {
            let (f, p) = problem(schedule);
            assert_eq!(f, field, "{schedule}");
            assert!(
                matches!(p, FieldProblem::OutOfRange { value: v, .. } if v == value),
                "{schedule}: {p:?}"
            );
        }
        assert_eq!(problem("* * * * 7").1, FieldProblem::Sunday7);
        assert_eq!(problem("* * * * 5-7").1, FieldProblem::Sunday7);
        let err = check("60 * * * *").unwrap_err().to_string();
        assert_eq!(err, "minute field `60`: 60 is outside 0-59");
        let err = check("* * * 13 *").unwrap_err().to_string();
        assert!(err.contains("1-12 or JAN-DEC"), "{err}");
    }

    #[test]
    fn wrong_field_counts_are_refused() {
        for (schedule, n) in
            [("* * * *", 4), ("0 * * * * *", 6), ("*", 1), (" @daily", 1), ("1 2 3 4 5 6 7", 7)]
        {
            assert_eq!(check(schedule), Err(ScheduleError::FieldCount(n)), "{schedule:?}");
        }
        let err = check("0 * * * * *").unwrap_err().to_string();
        assert!(err.contains("exactly 5") && err.contains("no seconds field"), "{err}");
    }

    #[test]
    fn steps_ranges_and_lists_must_be_well_formed() {
        assert_eq!(problem("*/0 * * * *").1, FieldProblem::ZeroStep);
        assert_eq!(problem("0-30/0 * * * *").1, FieldProblem::ZeroStep);
        assert_eq!(problem("5-1 * * * *").1, FieldProblem::Reversed { start: 5, end: 1 });
        assert_eq!(problem("* * * * FRI-MON").1, FieldProblem::Reversed { start: 5, end: 1 });
        assert_eq!(problem("*/x * * * *").1, FieldProblem::NotAStep("x".into()));
        assert_eq!(problem("*/-1 * * * *").1, FieldProblem::NotAStep("-1".into()));
        assert_eq!(problem("? * * * *").1, FieldProblem::Question);
        assert_eq!(
            problem("* * * * FUN").1,
            FieldProblem::NotAValue { text: "FUN".into(), accepted: "0-6 or SUN-SAT" }
        );
        // Names belong to their own field only.
        assert!(matches!(problem("* * * MON *").1, FieldProblem::NotAValue { .. }));
        assert!(matches!(problem("JAN * * * *").1, FieldProblem::NotAValue { .. }));
        for schedule in [
            "1,,2 * * * *",
            ", * * * *",
            "1, * * * *",
            "1-2-3 * * * *",
            "-5 * * * *",
            "1- * * * *",
            "*/5/2 * * * *",
            "*-5 * * * *",
            "+5 * * * *",
            "1.5 * * * *",
            "L * * * *",
        ] {
            assert!(check(schedule).is_err(), "{schedule:?}");
        }
        let err = check("5-1 * * * *").unwrap_err().to_string();
        assert!(err.contains("minute field `5-1`") && err.contains("backwards"), "{err}");
    }

    #[test]
    fn macros_are_exact_and_every_and_time_zones_get_a_hint() {
        for m in ["@Daily", "@DAILY", "@daily ", "@reboot", "@", "@dayly", "@everyday"] {
            assert_eq!(check(m), Err(ScheduleError::UnknownMacro(m.into())), "{m:?}");
        }
        assert_eq!(check("@every 5m"), Err(ScheduleError::Every));
        assert!(check("@every 5m").unwrap_err().to_string().contains("*/5 * * * *"));
        for s in ["TZ=UTC 0 * * * *", "CRON_TZ=Europe/Paris 0 3 * * *", "TZ=UTC @daily"] {
            assert_eq!(check(s), Err(ScheduleError::TimeZone), "{s:?}");
        }
        assert!(check("TZ=UTC 0 * * * *").unwrap_err().to_string().contains("timeZone"));
        assert_eq!(check(""), Err(ScheduleError::Empty));
        assert_eq!(check("   "), Err(ScheduleError::Empty));
    }
}

//! Masking secrets in connection strings before they reach an error or a log line.
//!
//! One home for every crate that prints a URL it was configured with (settings
//! errors, Redis and Postgres connection errors). It errs on the side of hiding:
//! a URL that is not well formed still has everything that could be a password
//! replaced, because a typo in a URL is exactly when it ends up in an error message.

/// Query parameters whose value is a secret (matched case-insensitively, as a
/// substring of the name: `password`, `sslpassword`, `auth_token`, `api_key`, ...).
const SECRET_PARAMS: &[&str] = &["pass", "pwd", "secret", "token", "key", "auth", "credential", "sig"];

const MASK: &str = "***";

/// The URL with every password replaced by `***`:
/// * `scheme://user:pass@host/..` → `scheme://user:***@host/..`, and a lone
///   userinfo (`scheme://token@host`, which some clients read as a password) → `***@host`;
/// * the same without `scheme://` (`user:pass@host:5432/db`, a forgotten scheme);
/// * query parameters that carry secrets (`?password=..`, `?sslpassword=..`,
///   `?token=..`) → `?password=***`.
///
/// Everything else is kept, so the message still says which host and database
/// were meant.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    // The userinfo ends at the last `@` before the query: a password may hold an
    // unencoded `/` or `@`, and hiding part of a path is better than showing a password.
    let query_start = rest.find(['?', '#']).unwrap_or(rest.len());
    let (authority, tail) = match rest[..query_start].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = match userinfo.find(':') {
                Some(colon) => format!("{}:{MASK}", &userinfo[..colon]),
                None => MASK.to_owned(),
            };
            (format!("{user}@"), &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    format!("{scheme}{authority}{}", redact_query(tail))
}

/// `/path?a=1&password=x#f` → `/path?a=1&password=***#f`.
fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else { return tail.to_owned() };
    let (path, query) = tail.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let params: Vec<String> = query
        .split(['&', ';'])
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}={MASK}"),
            _ => pair.to_owned(),
        })
        .collect();
    // `;` separators are rare; rejoining with `&` keeps the meaning and hides nothing.
    format!("{path}{}{fragment}", params.join("&"))
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_wherever_they_sit() {
        for (raw, shown) in [
            ("postgresql://chutes:hunter2@pg:5432/chutes", "postgresql://chutes:***@pg:5432/chutes"),
            ("redis://:hunter2@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0"),
            ("redis://hunter2@h/", "redis://***@h/"),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            // no scheme separator: a forgotten or mistyped scheme
            ("chutes:hunter2@pg:5432/chutes", "chutes:***@pg:5432/chutes"),
            ("postgresql:chutes:hunter2@pg/db", "postgresql:***@pg/db"),
            ("postgres:/u:hunter2@pg/db", "postgres:***@pg/db"),
            ("redis://:pa/ss@wd@h:6379", "redis://:***@h:6379"),
            // passwords in the query string
            ("postgresql://pg/db?user=u&password=hunter2", "postgresql://pg/db?user=u&password=***"),
            (
                "postgresql://pg/db?sslmode=require&sslpassword=hunter2#x",
                "postgresql://pg/db?sslmode=require&sslpassword=***#x",
            ),
            ("redis://h:6379/0?Password=hunter2", "redis://h:6379/0?Password=***"),
            ("pg/db?auth_token=hunter2;user=u", "pg/db?auth_token=***&user=u"),
            ("redis://u:hunter2@h?password=hunter2", "redis://u:***@h?password=***"),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
            assert!(!redact_url(raw).contains("hunter2"), "{raw}");
        }
    }
}

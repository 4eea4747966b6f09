//! `/remote_token`: fetch the validator's token URL from this node, so the validator
//! can compare the egress address with the ingress one. A minimal HTTP/1.0 GET over
//! plain TCP keeps the dependency tree small; `https://` URLs are refused by name.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token_url must be http://host[:port]/path (https is not supported by this build): {0}")]
    Url(String),
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{url} answered status {status}")]
    Status { url: String, status: u16 },
    #[error("{url} did not answer JSON with a \"token\" field")]
    NoToken { url: String },
    #[error(
        "token_url {url} leads to {addr}, a private address; sign the body (sha256) to fetch from there, a purpose signature does not cover the URL"
    )]
    NotPublic { url: String, addr: std::net::IpAddr },
}

/// Where a `token_url` may lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The signature covers the URL: fetch it wherever it points.
    Anywhere,
    /// The URL is not signed: public addresses only.
    PublicOnly,
}

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: u64 = 1 << 20;

/// `(host, port, path)` of an `http://` URL.
fn parse_url(url: &str) -> Result<(String, u16, String), TokenError> {
    let bad = || TokenError::Url(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().map_err(|_| bad())?),
        _ => (authority, 80),
    };
    if host.is_empty() || path.contains(['\r', '\n', ' ']) {
        return Err(bad());
    }
    Ok((host.to_string(), port, path.to_string()))
}

/// GETs `url` and returns its JSON `token` field (a string as is, anything else as JSON).
/// With [`Reach::PublicOnly`] every address the host resolves to must be public, and
/// the connection goes to the address that was checked (no second lookup to rebind).
pub async fn fetch_token(url: &str, reach: Reach) -> Result<String, TokenError> {
    let (host, port, path) = parse_url(url)?;
    let fetch = |reason: String| TokenError::Fetch { url: url.to_string(), reason };
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| fetch(format!("resolving {host}: {e}")))?
        .collect();
    if reach == Reach::PublicOnly
        && let Some(private) = addrs.iter().find(|a| chutes_protocol::netaddr::is_internal(a.ip()))
    {
        return Err(TokenError::NotPublic { url: url.to_string(), addr: private.ip() });
    }
    let io = async {
        let mut stream = TcpStream::connect(&addrs[..]).await?;
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, io)
        .await
        .map_err(|_| fetch(format!("no answer within {} s", TIMEOUT.as_secs())))?
        .map_err(|e| fetch(e.to_string()))?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| fetch("malformed HTTP response".into()))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fetch("malformed status line".into()))?;
    if status != 200 {
        return Err(TokenError::Status { url: url.to_string(), status });
    }
    let json: serde_json::Value = serde_json::from_slice(&buf[split + 4..])
        .map_err(|_| TokenError::NoToken { url: url.to_string() })?;
    match json.get("token") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => Err(TokenError::NoToken { url: url.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://10.0.0.1:8080/t?x=1").unwrap(),
            ("10.0.0.1".into(), 8080, "/t?x=1".into())
        );
        assert_eq!(parse_url("http://example.org").unwrap(), ("example.org".into(), 80, "/".into()));
        assert!(matches!(parse_url("https://example.org/"), Err(TokenError::Url(_))));
        assert!(matches!(parse_url("http://h:x/"), Err(TokenError::Url(_))));
        assert!(matches!(parse_url("http://h/a b"), Err(TokenError::Url(_))));
    }
}

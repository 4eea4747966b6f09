//! Helpers several crates' tests share (a dev-dependency only; nothing here ships).
//!
//! * [`try_http`] / [`http`]: one HTTP/1.1 request over a plain TCP socket, for servers
//!   that tests start as processes or containers (no client library, no pooling: what
//!   goes over the wire is exactly what the test wrote).
//! * [`signed`]: the management headers a hotkey signs, as a list to send with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;

use chutes_protocol::Hotkey;
use chutes_protocol::auth::Payload;

/// One HTTP/1.1 request to `addr` (`127.0.0.1:PORT`) with `Connection: close`; returns
/// the status and the body. `None` while nothing listens there (or the answer is cut).
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    Some((head.split_whitespace().nth(1)?.parse().ok()?, rest.to_string()))
}

/// [`try_http`] to a server that must be listening: panics naming the request otherwise.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    try_http(addr, method, path, headers, body)
        .unwrap_or_else(|| panic!("{method} {path} to {addr}: no HTTP answer"))
}

/// The management headers `signer` signs for the miner `miner` over `payload`.
pub fn signed(signer: &Hotkey, miner: &str, payload: Payload<'_>) -> Vec<(&'static str, String)> {
    signer.sign_management(miner, payload).iter().map(|(k, v)| (k, v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reaches_a_server_and_its_status_and_body_come_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("{\"a\":1}") {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok").unwrap();
            String::from_utf8_lossy(&got).to_string()
        });
        let (status, body) = http(&addr, "POST", "/x", &[("X-A", "b".into())], br#"{"a":1}"#);
        assert_eq!((status, body.as_str()), (201, "ok"));
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /x HTTP/1.1\r\n") && request.contains("X-A: b\r\n"), "{request}");
        assert!(request.contains("Content-Length: 7\r\n"), "{request}");
        assert!(try_http("127.0.0.1:9", "GET", "/", &[], b"").is_none(), "nothing listens on port 9");
    }
}

//! Helpers several crates' tests share (a dev-dependency only; nothing here ships).
//!
//! * [`try_http`] / [`http`]: one HTTP/1.1 request over a plain TCP socket, for servers
//!   that tests start as processes or containers (no client library, no pooling: what
//!   goes over the wire is exactly what the test wrote).
//! * [`signed`]: the management headers a hotkey signs, as a list to send with it.
//! * [`proptest_config`]: the configuration every property test runs under: a fixed
//!   seed, so CI sees the same inputs on every run.
//! * [`Captured`]: a writer whose clones share what was written, for reports and logs a
//!   test hands away as `Box<dyn Write>` and reads back.
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

/// The configuration every property test in the workspace runs under.
///
/// `default_cases` inputs unless `PROPTEST_CASES` says otherwise; no persistence file (a
/// failure prints its minimal input). The generator's seed is fixed unless
/// `PROPTEST_RNG_SEED` names another: CI must see the same inputs on every run, so a
/// red run means a change broke something, never that the dice fell differently. Set
/// `PROPTEST_RNG_SEED` (any `u64`) to explore further; a failure found that way names
/// its input, which then belongs in a plain test.
pub fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    /// Any constant would do; this one is the workspace's.
    const SEED: u64 = 0x6d69_6e65_7263_746c;
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    // `Config::default()` reads the PROPTEST_* variables; it is `Random` only when
    // PROPTEST_RNG_SEED is unset.
    let base = Config::default();
    let rng_seed = match base.rng_seed {
        RngSeed::Random => RngSeed::Fixed(SEED),
        chosen => chosen,
    };
    Config { cases, failure_persistence: None, rng_seed, ..base }
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

    #[test]
    fn property_tests_see_the_same_inputs_on_every_run() {
        use proptest::strategy::{Strategy, ValueTree};
        use proptest::test_runner::TestRunner;
        let draw = || {
            let mut runner = TestRunner::new(super::proptest_config(10));
            (0..20).map(|_| ".{0,30}".new_tree(&mut runner).unwrap().current()).collect::<Vec<String>>()
        };
        let first = draw();
        assert_eq!(first, draw(), "two runners drew different inputs");
        assert!(first.iter().any(|s| !s.is_empty()), "the generator drew nothing: {first:?}");
    }
}

/// A `Write` whose clones share one buffer: give one away, read what it got.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

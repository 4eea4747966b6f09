//! The token service of a registry that asks for Bearer tokens (distribution's `auth:
//! token`), as Docker Hub, GHCR, GitLab and Harbor do. `GET /token?service=S&scope=
//! repository:NAME:ACTIONS` with the user's Basic credentials is answered with a JWT
//! granting what was asked; missing or wrong credentials get 401.
//!
//! The JWT is RS256, signed by `openssl dgst` with a key whose self-signed certificate
//! rides in the token's `x5c` header and is the registry's `rootcertbundle`, so the
//! registry checks every token as it would a real token service's. Plain HTTP on
//! 127.0.0.1 (the registry itself speaks TLS); one request per connection.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

use super::{openssl, run};
use crate::{HarnessError, io};

/// The `iss` of every token, and the registry's `issuer`.
pub(super) const ISSUER: &str = "lab-token-service";
/// The `aud` of every token, and the registry's `service`.
pub(super) const SERVICE: &str = "lab-registry";
/// How long a token is good for.
const LIFETIME_S: u64 = 300;

pub(super) struct TokenService {
    port: u16,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// What every request is checked and answered with.
struct Issuer {
    /// The `Authorization` header the user's credentials make.
    expected: String,
    key: PathBuf,
    /// The certificate's DER, base64 (standard alphabet, as `x5c` wants it).
    certificate: String,
}

impl TokenService {
    /// Makes the signing key and certificate (`token.key`, `token.crt`) in `dir` and
    /// starts answering for `user` with `password`.
    pub(super) fn start(dir: &Path, user: &str, password: &str) -> Result<TokenService, HarnessError> {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.crt",
                "-days",
                "2",
                "-subj",
                "/CN=lab token service",
            ],
        )?;
        let pem = std::fs::read_to_string(dir.join("token.crt")).map_err(io("read token.crt"))?;
        let issuer = Issuer {
            expected: format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))),
            key: dir.join("token.key"),
            certificate: pem.lines().filter(|l| !l.starts_with("-----")).collect(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind the token service"))?;
        let port = listener.local_addr().map_err(io("read the token service's address"))?.port();
        let (stop, issued) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (stop2, issued2) = (stop.clone(), issued.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = conn
                    && serve(stream, &issuer)
                {
                    issued2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(TokenService { port, stop, issued, thread: Some(thread) })
    }

    /// The URL the registry's Bearer challenge names.
    pub(super) fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub(super) fn issued(&self) -> usize {
        self.issued.load(Ordering::Relaxed)
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // wake the accept loop, which then sees the flag
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request; true when it issued a token.
fn serve(mut stream: TcpStream, issuer: &Issuer) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let mut lines = request.lines();
    let target = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = if path != "/token" {
        ("404 Not Found", r#"{"errors":[{"code":"NOT_FOUND","message":"no such path"}]}"#.to_string())
    } else if authorization.as_deref() != Some(issuer.expected.as_str()) {
        (
            "401 Unauthorized",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong credentials"}]}"#.to_string(),
        )
    } else {
        match token(issuer, query) {
            Ok(t) => {
                ("200 OK", format!(r#"{{"token":"{t}","access_token":"{t}","expires_in":{LIFETIME_S}}}"#))
            }
            Err(e) => ("500 Internal Server Error", json!({"errors": [{"message": e}]}).to_string()),
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("401") {
        head.push_str(&format!("WWW-Authenticate: Basic realm=\"{ISSUER}\"\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes()));
    status.starts_with("200")
}

/// A signed token granting every scope the query asks for.
fn token(issuer: &Issuer, query: &str) -> Result<String, String> {
    let mut access = Vec::new();
    for (k, scope) in form_urlencoded::parse(query.as_bytes()) {
        if k != "scope" {
            continue;
        }
        for one in scope.split(' ') {
            // type:name:actions (a name holds no ':', a registry host with a port is not in it)
            let Some((kind, rest)) = one.split_once(':') else { continue };
            let Some((name, actions)) = rest.rsplit_once(':') else { continue };
            access
                .push(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}));
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [issuer.certificate]});
    let claims = json!({
        "iss": ISSUER, "sub": "lab", "aud": SERVICE,
        "exp": now + LIFETIME_S, "nbf": now.saturating_sub(10), "iat": now,
        "jti": format!("{now}-{}", std::process::id()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sign = Command::new("openssl");
    sign.args(["dgst", "-sha256", "-sign"]).arg(&issuer.key);
    let signature = run(sign, "openssl dgst", signing_input.as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

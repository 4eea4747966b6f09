//! Runs the real `graval-bootstrap` binary (CPU backend, small matrices) and talks to
//! it over HTTP as a validator would: signed requests, a PoVW challenge checked with
//! the graval verifier, the device-info challenge, and every way auth must refuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

use chutes_protocol::Hotkey;
use chutes_protocol::auth::{Payload, now_unix};
use graval::{DeviceInfo, ProofParams, SpotCheck, Verifier, WorkProduct};

/// The validator's fresh value for one `/prove`.
const NONCE: graval::Nonce = graval::Nonce([0x6e; 32]);
use test_support::{http, signed};

const N: usize = 32;

fn key(byte: u8) -> Hotkey {
    Hotkey::from_seed(&[byte; 32], "test").unwrap()
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server binary: this build's, or a CUDA build named by GRAVAL_BOOTSTRAP_BIN.
fn binary() -> String {
    std::env::var("GRAVAL_BOOTSTRAP_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_graval-bootstrap").to_string())
}

fn start(miner: &str, whitelist: &str) -> Server {
    let n = N.to_string();
    start_with(miner, whitelist, &["--backend", "cpu", "--cpu-memory-mib", "1", "--matrix-size", &n])
}

fn start_with(miner: &str, whitelist: &str, args: &[&str]) -> Server {
    let mut child = Command::new(binary())
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env("MINER_HOTKEY_SS58", miner)
        .env("VALIDATOR_WHITELIST", whitelist)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").expect("listening line").to_string();
    Server { child, addr }
}

fn devices(server: &Server, miner: &Hotkey) -> Vec<DeviceInfo> {
    let h = signed(miner, miner.ss58(), Payload::Purpose("graval"));
    let (status, body) = http(&server.addr, "GET", "/devices", &h, b"");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    serde_json::from_value(v["devices"].clone()).unwrap()
}

#[test]
fn validator_povw_flow_round_trip() {
    let (miner, validator) = (key(1), key(2));
    let server = start(miner.ss58(), &format!(" {} ,", validator.ss58()));
    assert_eq!(http(&server.addr, "GET", "/ping", &[], b""), (200, "pong".to_string()));

    let devs = devices(&server, &miner);
    assert_eq!(devs.len(), 1);
    let dev = &devs[0];
    dev.validate().unwrap();

    // The validator encrypts per GPU, sends one /prove, checks plaintexts and proofs.
    let (seed, iterations) = (987_654_321u64, 2u64);
    let v = Verifier::new(ProofParams::with_matrix_size(N));
    let plaintext = "decrypt me please: 0b7e";
    let transport = v.encrypt_challenge(dev, seed, &NONCE, iterations, plaintext).unwrap();
    let b64 = transport.split_once('|').unwrap().1;
    let body = serde_json::json!({"seed": seed, "nonce": NONCE.to_hex(), "iterations": iterations, "ciphertext": {&dev.uuid: b64}});
    let body = serde_json::to_vec(&body).unwrap();
    let h = signed(&validator, miner.ss58(), Payload::Body(&body));
    let (status, text) = http(&server.addr, "POST", "/prove", &h, &body);
    assert_eq!(status, 200, "{text}");
    let resp: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(resp["seed"], seed);
    assert_eq!(resp["plaintext"][&dev.uuid], plaintext);
    let p = &resp["proof"][&dev.uuid];
    assert_eq!(p["device_id"], 0);
    assert_eq!(p["device_uuid"], dev.uuid.as_str());
    assert_eq!(p["device_name"], dev.name.as_str());
    assert_eq!(p["work_product"]["version"], graval::WORK_PRODUCT_VERSION, "the node serves v2 proofs");
    let wp: WorkProduct = serde_json::from_value(p["work_product"].clone()).unwrap();
    v.check_proof(dev, seed, &NONCE, iterations, &wp, &SpotCheck::Random(3)).unwrap();
    assert_eq!(serde_json::from_value::<Vec<DeviceInfo>>(resp["devices"].clone()).unwrap(), devs);

    // Replaying the exact signed request is refused.
    let (status, text) = http(&server.addr, "POST", "/prove", &h, &body);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("already used"), "{text}");
}

#[test]
fn device_info_challenge_answers_verify() {
    let (miner, validator) = (key(3), key(4));
    let server = start(miner.ss58(), validator.ss58());
    let devs = devices(&server, &miner);
    for _ in 0..3 {
        let c = graval::challenge::generate(devs.len());
        let h = signed(&validator, miner.ss58(), Payload::Purpose("graval"));
        let (status, answer) = http(&server.addr, "GET", &format!("/info?challenge={c}"), &h, b"");
        assert_eq!(status, 200, "{answer}");
        assert!(graval::challenge::verify(&c, &answer, &devs));
    }
    let h = signed(&validator, miner.ss58(), Payload::Purpose("graval"));
    let (status, text) = http(&server.addr, "GET", "/info?challenge=zz", &h, b"");
    assert_eq!(status, 400, "{text}");
}

#[test]
fn auth_refusals() {
    let (miner, validator, stranger) = (key(5), key(6), key(7));
    let server = start(miner.ss58(), validator.ss58());
    let body = br#"{"seed": 1, "iterations": 1, "ciphertext": {}}"#;

    // Unsigned.
    let (status, text) = http(&server.addr, "POST", "/prove", &[], body);
    assert_eq!(status, 401, "{text}");
    // Signed by a key not on the whitelist.
    let h = signed(&stranger, miner.ss58(), Payload::Body(body));
    assert_eq!(http(&server.addr, "POST", "/prove", &h, body).0, 401);
    // Addressed to another miner.
    let h = signed(&validator, stranger.ss58(), Payload::Body(body));
    let (status, text) = http(&server.addr, "POST", "/prove", &h, body);
    assert_eq!(status, 401);
    assert!(text.contains("X-Chutes-Miner"), "{text}");
    // Signature over another body.
    let h = signed(&validator, miner.ss58(), Payload::Body(br#"{"seed": 2}"#));
    assert_eq!(http(&server.addr, "POST", "/prove", &h, body).0, 401);
    // A stale nonce.
    let stale = validator.sign_management_at(miner.ss58(), Payload::Body(body), now_unix() - 120);
    let h: Vec<_> = stale.iter().map(|(k, v)| (k, v.to_string())).collect();
    let (status, text) = http(&server.addr, "POST", "/prove", &h, body);
    assert_eq!(status, 401);
    assert!(text.contains("old"), "{text}");
    // /devices is for the miner only, not validators.
    let h = signed(&validator, miner.ss58(), Payload::Purpose("graval"));
    assert_eq!(http(&server.addr, "GET", "/devices", &h, b"").0, 401);
    // Validators sign GET endpoints with the purpose, not a body hash.
    let h = signed(&validator, miner.ss58(), Payload::Purpose("management"));
    assert_eq!(http(&server.addr, "GET", &format!("/info?challenge={}", "0".repeat(64)), &h, b"").0, 401);
}

#[test]
fn empty_whitelist_refuses_every_validator_call() {
    let (miner, validator) = (key(8), key(9));
    let server = start(miner.ss58(), "");
    let body = br#"{"seed": 1, "iterations": 1, "ciphertext": {}}"#;
    let h = signed(&validator, miner.ss58(), Payload::Body(body));
    let (status, text) = http(&server.addr, "POST", "/prove", &h, body);
    assert_eq!(status, 401, "{text}");
    let h = signed(&validator, miner.ss58(), Payload::Purpose("graval"));
    assert_eq!(http(&server.addr, "GET", &format!("/info?challenge={}", "0".repeat(64)), &h, b"").0, 401);
    // The miner can still list its devices, and /ping answers.
    assert_eq!(devices(&server, &miner).len(), 1);
    assert_eq!(http(&server.addr, "GET", "/ping", &[], b"").0, 200);
}

#[test]
fn bad_challenges_get_clear_400s() {
    let (miner, validator) = (key(10), key(11));
    let server = start(miner.ss58(), validator.ss58());
    let n = NONCE.to_hex();
    let cases: [(String, &str); 7] = [
        (format!(r#"{{"seed": 1, "nonce": "{n}", "iterations": 65}}"#), "iterations must be in 1..=64"),
        (format!(r#"{{"seed": -1, "nonce": "{n}"}}"#), "invalid challenge body"),
        (
            format!(
                r#"{{"seed": 1, "nonce": "{n}", "ciphertext": {{"00000000000000000000000000000000": "AAAA"}}}}"#
            ),
            "does not have",
        ),
        (format!(r#"{{"seed": 1, "nonce": "{n}", "extra": 1}}"#), "unknown field"),
        // Without a fresh nonce the work could have been done before the request.
        (r#"{"seed": 1}"#.to_owned(), "missing field `nonce`"),
        (r#"{"seed": 1, "nonce": "zz"}"#.to_owned(), "nonce must be 64 hex characters"),
        (format!(r#"{{"seed": 1, "nonce": "{}"}}"#, &n[..62]), "nonce must be 64 hex characters"),
    ];
    for (body, want) in cases {
        let body = body.as_bytes();
        let h = signed(&validator, miner.ss58(), Payload::Body(body));
        let (status, text) = http(&server.addr, "POST", "/prove", &h, body);
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(want), "{text}");
    }
    // A ciphertext for another seed does not decrypt: 400 naming the device.
    let dev = &devices(&server, &miner)[0];
    let v = Verifier::new(ProofParams::with_matrix_size(N));
    let other = v.encrypt_challenge(dev, 2, &NONCE, 1, "x").unwrap();
    let body = serde_json::to_vec(
        &serde_json::json!({"seed": 1, "nonce": NONCE.to_hex(), "ciphertext": {&dev.uuid: other.split_once('|').unwrap().1}}),
    )
    .unwrap();
    let h = signed(&validator, miner.ss58(), Payload::Body(&body));
    let (status, text) = http(&server.addr, "POST", "/prove", &h, &body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(&dev.uuid) && text.contains("decryption failed"), "{text}");
    // Text that is no ciphertext, or one that names another seed, is refused as such.
    for (ct, want) in
        [("not base64!", "ciphertext for device"), (other.as_str(), "its seed is not the request's")]
    {
        let body = serde_json::to_vec(
            &serde_json::json!({"seed": 1, "nonce": NONCE.to_hex(), "ciphertext": {&dev.uuid: ct}}),
        )
        .unwrap();
        let h = signed(&validator, miner.ss58(), Payload::Body(&body));
        let (status, text) = http(&server.addr, "POST", "/prove", &h, &body);
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(&dev.uuid) && text.contains(want), "{text}");
    }
}

#[test]
fn remote_token_fetches_the_url_from_the_node() {
    let (miner, validator) = (key(12), key(13));
    let server = start(miner.ss58(), validator.ss58());
    // A one-shot token server on loopback.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let token_server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let req = String::from_utf8_lossy(&buf[..n]).to_string();
        s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"token\": \"abc-123\"}")
            .unwrap();
        req
    });
    let body =
        serde_json::to_vec(&serde_json::json!({"token_url": format!("http://127.0.0.1:{port}/token?x=1")}))
            .unwrap();
    // The original's purpose signature does not cover token_url: a loopback (or any
    // private) target is refused, so a redirected fetch cannot reach inside the cluster.
    let h = signed(&validator, miner.ss58(), Payload::Purpose("graval"));
    let (status, text) = http(&server.addr, "POST", "/remote_token", &h, &body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("private address") && text.contains("127.0.0.1"), "{text}");
    // Signed over the body, the URL is the validator's choice: fetched.
    let h = signed(&validator, miner.ss58(), Payload::Body(&body));
    let (status, text) = http(&server.addr, "POST", "/remote_token", &h, &body);
    assert_eq!((status, text.as_str()), (200, "abc-123"));
    assert!(token_server.join().unwrap().starts_with("GET /token?x=1 HTTP/1.0"));
    // A body-signed request whose token_url was changed on the way is refused.
    let forged = serde_json::to_vec(&serde_json::json!({"token_url": "http://203.0.113.7/steal"})).unwrap();
    let h = signed(&validator, miner.ss58(), Payload::Body(&body));
    assert_eq!(http(&server.addr, "POST", "/remote_token", &h, &forged).0, 401);

    let body = br#"{"token_url": "https://example.invalid/"}"#;
    let h = signed(&validator, miner.ss58(), Payload::Purpose("graval"));
    let (status, text) = http(&server.addr, "POST", "/remote_token", &h, body);
    assert_eq!(status, 400, "a token_url this node cannot fetch is the caller's error: {text}");
    assert!(text.contains("https is not supported"), "{text}");
}

/// A stale nonce is refused from the headers: the announced body never arrives, so
/// only an answer proves it was not waited for. A body over the limit is 413.
#[test]
fn requests_are_refused_before_their_body_is_read_and_bodies_are_bounded() {
    let (miner, validator) = (key(14), key(15));
    let server = start(miner.ss58(), validator.ss58());
    let body = br#"{"seed": 1}"#;
    let stale = validator.sign_management_at(miner.ss58(), Payload::Body(body), now_unix() - 120);
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let mut req = String::from("POST /prove HTTP/1.1\r\nHost: g\r\nContent-Length: 60000\r\n");
    for (k, v) in stale.iter() {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(&body[..4]).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut answer = [0u8; 2048];
    let n = s.read(&mut answer).expect("no answer: the server waited for the body of a stale request");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 401") && text.contains("old"), "{text}");

    // Validly signed, but larger than MAX_BODY.
    let big = vec![b' '; graval_bootstrap::MAX_BODY + 1];
    let h = signed(&validator, miner.ss58(), Payload::Body(&big));
    assert_eq!(http(&server.addr, "POST", "/prove", &h, &big).0, 413);
}

#[test]
fn missing_hotkey_fails_at_startup_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_graval-bootstrap"))
        .args(["--backend", "cpu", "--port", "0"])
        .env_remove("MINER_HOTKEY_SS58")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--hotkey") || err.contains("MINER_HOTKEY_SS58"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_graval-bootstrap"))
        .args(["--backend", "cpu", "--port", "0", "--hotkey", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SS58"), "{err}");
}

#[test]
#[ignore = "needs a CUDA GPU and a CUDA build named by GRAVAL_BOOTSTRAP_BIN; run graval/gpu-check.sh"]
fn cuda_node_povw_flow() {
    let (miner, validator) = (key(14), key(15));
    let server = start_with(miner.ss58(), validator.ss58(), &["--backend", "cuda"]);
    let devs = devices(&server, &miner);
    assert!(!devs.is_empty());
    let mut v = Verifier::for_device(&devs[0]);
    let (seed, iterations) = (4_242_424_242u64, 4u64);
    // A CPU budget of 2 x iterations full products (at 8192, seconds each), positions
    // drawn over every iteration (graval's tests/proof.rs holds it against a forgery).
    v.max_full_products = 2 * iterations as usize;
    let mut cts = serde_json::Map::new();
    for d in &devs {
        let t = v
            .encrypt_challenge(d, seed, &NONCE, iterations, &format!("decrypt me please: {}", d.uuid))
            .unwrap();
        cts.insert(d.uuid.clone(), t.split_once('|').unwrap().1.into());
    }
    let body =
        serde_json::to_vec(&serde_json::json!({"seed": seed, "nonce": NONCE.to_hex(), "iterations": iterations, "ciphertext": cts}))
            .unwrap();
    let h = signed(&validator, miner.ss58(), Payload::Body(&body));
    let t = std::time::Instant::now();
    let (status, text) = http(&server.addr, "POST", "/prove", &h, &body);
    let elapsed = t.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{text}");
    let resp: serde_json::Value = serde_json::from_str(&text).unwrap();
    for d in &devs {
        assert_eq!(resp["plaintext"][&d.uuid], format!("decrypt me please: {}", d.uuid));
        let wp: WorkProduct = serde_json::from_value(resp["proof"][&d.uuid]["work_product"].clone()).unwrap();
        let report = v.check_proof(d, seed, &NONCE, iterations, &wp, &SpotCheck::default()).unwrap();
        println!(
            "RESULT bootstrap_prove device={:?} version={} slots={} n={} iterations={iterations} e2e_s={elapsed:.2} \
             cpu_checked={:?} full_products={}",
            d.name, wp.version, wp.num_matrices, wp.matrix_size, report.checked, report.full_products
        );
    }
    let c = graval::challenge::generate(devs.len());
    let h = signed(&validator, miner.ss58(), Payload::Purpose("graval"));
    let (status, answer) = http(&server.addr, "GET", &format!("/info?challenge={c}"), &h, b"");
    assert_eq!(status, 200);
    assert!(graval::challenge::verify(&c, &answer, &devs));
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let (miner, validator) = (key(16), key(17));
    let mut server = start(miner.ss58(), validator.ss58());
    assert_eq!(http(&server.addr, "GET", "/ping", &[], b"").0, 200);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Bad input at scale for the validator's bodies and queries (signed correctly, so
/// they reach the parsers): every answer is 200, 400 or 413 with a reason, never a
/// 500, a panic or a hang. Cases: 300 `/prove` bodies and 300 `/info` challenges
/// (`PROPTEST_CASES` overrides).
#[test]
fn arbitrary_challenge_bodies_and_queries_get_clear_answers() {
    use proptest::prelude::*;
    use proptest::test_runner::TestRunner;

    let (miner, validator) = (key(16), key(17));
    let server = start(miner.ss58(), validator.ss58());
    let uuid = devices(&server, &miner)[0].uuid.clone();
    let config = test_support::proptest_config(300);

    let number = prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("\"1\"".to_owned()),
        Just("null".to_owned()),
        (0u64..12).prop_map(|n| n.to_string()),
    ];
    let text = prop_oneof![Just(uuid.clone()), "[ -~]{0,40}", any::<String>()];
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (number.clone(), number, text.clone(), text).prop_map(|(seed, iterations, id, ct)| {
            format!(
                r#"{{"seed": {seed}, "iterations": {iterations}, "ciphertext": {{{}: {}}}}}"#,
                serde_json::Value::from(id),
                serde_json::Value::from(ct)
            )
            .into_bytes()
        }),
    ];
    TestRunner::new(config.clone())
        .run(&body, |body| {
            let h = signed(&validator, miner.ss58(), Payload::Body(&body));
            let (status, text) = http(&server.addr, "POST", "/prove", &h, &body);
            prop_assert!(matches!(status, 200 | 400 | 413), "{status}: {text}");
            if status != 200 {
                prop_assert!(!text.is_empty());
            }
            Ok(())
        })
        .unwrap();

    TestRunner::new(config)
        .run(&"[ -~]{0,100}", |challenge| {
            let h = signed(&validator, miner.ss58(), Payload::Purpose("graval"));
            let query: String = challenge.bytes().map(|b| format!("%{b:02X}")).collect();
            let (status, text) = http(&server.addr, "GET", &format!("/info?challenge={query}"), &h, b"");
            prop_assert!(matches!(status, 200 | 400), "{status}: {text}");
            Ok(())
        })
        .unwrap();
}

#[test]
fn cpu_devices_stand_in_for_a_multi_gpu_node_with_stable_distinct_uuids() {
    let miner = key(9);
    let n = N.to_string();
    let args = ["--backend", "cpu", "--cpu-memory-mib", "1", "--matrix-size", &n, "--cpu-devices", "3"];
    let uuids = |server: &Server| -> Vec<String> {
        let devs = devices(server, &miner);
        for d in &devs {
            d.validate().unwrap();
        }
        devs.into_iter().map(|d| d.uuid).collect()
    };
    let first = uuids(&start_with(miner.ss58(), "", &args));
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(first.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "distinct: {first:?}");
    // The same host presents the same devices on every start (the miner registered them).
    assert_eq!(uuids(&start_with(miner.ss58(), "", &args)), first);
}

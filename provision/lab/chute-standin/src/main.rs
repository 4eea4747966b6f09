//! `chute-standin`: what a chute pod runs in the lab instead of a real chute image.
//!
//! Invoked as the chute Job invokes a chute (`chutes run <ref> --port 8000 --miner-ss58 ..
//! --validator-ss58 ..`; the image links `chutes` to this binary) or as
//! `chute-standin run ...`. With `CHUTES_LAUNCH_JWT` set it does the launch-config
//! handshake the chutes library does (reference section 10): it claims the config with
//! `POST {api}/instances/launch_config/{config_id}` (Bearer token; host
//! `CHUTES_EXTERNAL_HOST`, the Service's node ports from `CHUTES_PORT_PRIMARY`/`_LOGGING`,
//! the GPUs of `NVIDIA_VISIBLE_DEVICES`), starts serving, then activates with
//! `GET .../activate`. A refused claim ends the process with status 1, as a chute whose
//! launch fails does. When the claim's reply names a `job_id`, the chute runs that job: it
//! serves for [`JOB_SECONDS`] after activation, then exits 0, as a finished job's chute
//! does (its pod turns Succeeded and the miner undeploys it). `{api}` is `CHUTES_API_URL` (the lab sets it; the chutes library
//! derives it from the token).
//!
//! It serves, on `--port` and on the logging port (`--logging-port`, default port + 1,
//! the probe port of chutes >= 0.3.3): `GET /_alive`, `GET /_metrics` (Prometheus text),
//! and any other path as an invocation that echoes its JSON body.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

#[derive(Debug, Default)]
struct Args {
    chute_ref: String,
    host: String,
    port: u16,
    logging_port: Option<u16>,
}

fn parse_args(argv: &[String]) -> anyhow::Result<Args> {
    let mut args = Args { host: "0.0.0.0".into(), port: 8000, ..Args::default() };
    let mut it = argv.iter().skip(1).peekable();
    if it.peek().is_some_and(|a| *a == "run") {
        it.next();
    }
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--port" => args.port = value("--port")?.parse().context("--port")?,
            "--logging-port" => {
                args.logging_port = Some(value("--logging-port")?.parse().context("--logging-port")?)
            }
            "--host" => args.host = value("--host")?.clone(),
            // What the real `chutes run` takes and this stand-in has no use for.
            "--miner-ss58" | "--validator-ss58" | "--graval-seed" => {
                value(a)?;
            }
            flag if flag.starts_with("--") => bail!("unknown option {flag}"),
            chute_ref => args.chute_ref = chute_ref.to_owned(),
        }
    }
    Ok(args)
}

/// The launch config id in a launch token: the `config_id` claim of a JWT, or the middle
/// part of the validator emulator's `emulator.<config_id>.<mac>` tokens.
fn config_id_of(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, middle, _) = (parts.next()?, parts.next()?, parts.next()?);
    if let Some(claims) = base64url(middle).and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
        return claims.get("config_id").and_then(Value::as_str).map(str::to_owned);
    }
    (!middle.is_empty()).then(|| middle.to_owned())
}

fn base64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// How long a job's chute "works" after activation before it exits 0.
const JOB_SECONDS: u64 = 5;

/// A GPU of `NVIDIA_VISIBLE_DEVICES` (`GPU-<dashed uuid>`, as the miner pins it) as the
/// chute reports it: the uuid GraVal reads from the device, 32 lowercase hex digits, the
/// form the miner registered the GPU with (reference 6.3, 11.2).
fn graval_uuid(visible: &str) -> String {
    visible.strip_prefix("GPU-").unwrap_or(visible).replace('-', "").to_ascii_lowercase()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// What the handshake needs from the pod's environment.
struct Launch {
    api: String,
    token: String,
    config_id: String,
    body: Value,
}

fn launch_from_env(args: &Args, logging_port: u16) -> anyhow::Result<Option<Launch>> {
    let Some(token) = env("CHUTES_LAUNCH_JWT") else {
        return Ok(None);
    };
    let api = env("CHUTES_API_URL").context("CHUTES_LAUNCH_JWT is set but CHUTES_API_URL is not")?;
    let config_id = config_id_of(&token).context("CHUTES_LAUNCH_JWT: no launch config id in the token")?;
    let host = env("CHUTES_EXTERNAL_HOST").context("CHUTES_EXTERNAL_HOST is not set")?;
    let node_port = |name: &str, default: u16| -> anyhow::Result<u16> {
        env(name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name}={v} is not a port")))
    };
    let gpus: Vec<Value> = env("NVIDIA_VISIBLE_DEVICES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty() && *g != "all")
        .map(|g| json!({"uuid": graval_uuid(g)}))
        .collect();
    let body = json!({
        "host": host,
        "port_mappings": [
            {"proto": "tcp", "internal_port": args.port, "external_port": node_port("CHUTES_PORT_PRIMARY", args.port)?},
            {"proto": "tcp", "internal_port": logging_port, "external_port": node_port("CHUTES_PORT_LOGGING", logging_port)?},
        ],
        "gpus": gpus,
    });
    Ok(Some(Launch { api: api.trim_end_matches('/').to_owned(), token, config_id, body }))
}

/// One request to the validator, retried while it cannot be reached (the lab may start
/// the pod before its forwarders listen); any HTTP answer is final.
async fn validator_call(req: impl Fn() -> reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let mut last = None;
    for _ in 0..30 {
        match req().send().await {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if !status.is_success() {
                    bail!("{what}: the validator answered {status}: {text}");
                }
                return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("{what}: the validator cannot be reached: {}", last.map(|e| e.to_string()).unwrap_or_default())
}

#[derive(Default)]
struct Counters {
    invocations: AtomicU64,
    errors: AtomicU64,
    active: AtomicBool,
}

type Shared = Arc<(String, Counters)>;

async fn alive() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let (chute, c) = &*s;
    let body = format!(
        "# HELP chute_standin_invocations_total Invocations served.\n\
         # TYPE chute_standin_invocations_total counter\n\
         chute_standin_invocations_total{{chute=\"{chute}\"}} {}\n\
         # HELP chute_standin_invocation_errors_total Invocations refused (body not JSON).\n\
         # TYPE chute_standin_invocation_errors_total counter\n\
         chute_standin_invocation_errors_total{{chute=\"{chute}\"}} {}\n\
         # HELP chute_standin_active Whether the validator activated this instance.\n\
         # TYPE chute_standin_active gauge\n\
         chute_standin_active{{chute=\"{chute}\"}} {}\n",
        c.invocations.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        u8::from(c.active.load(Ordering::Relaxed)),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Any other path: an invocation of the cord at that path; echoes the JSON body.
async fn invoke(State(s): State<Shared>, uri: Uri, body: Bytes) -> axum::response::Response {
    let (chute, c) = &*s;
    let input: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                return (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")).into_response();
            }
        }
    };
    let n = c.invocations.fetch_add(1, Ordering::Relaxed) + 1;
    axum::Json(json!({"chute": chute, "cord": uri.path(), "invocation": n, "echo": input})).into_response()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let argv: Vec<String> = std::env::args().collect();
    let args = parse_args(&argv)?;
    let logging_port = args.logging_port.unwrap_or(args.port.saturating_add(1));
    let launch = launch_from_env(&args, logging_port)?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;

    let mut job = None;
    if let Some(l) = &launch {
        let url = format!("{}/instances/launch_config/{}", l.api, l.config_id);
        let reply = validator_call(
            || client.post(&url).bearer_auth(&l.token).json(&l.body),
            "claiming the launch config",
        )
        .await?;
        job = reply.get("job_id").and_then(Value::as_str).map(str::to_owned);
        println!("launch config {} claimed: job {}", l.config_id, job.as_deref().unwrap_or("none"));
    }

    let shared: Shared = Arc::new((args.chute_ref.clone(), Counters::default()));
    let app = Router::new()
        .route("/_alive", axum::routing::get(alive))
        .route("/_metrics", axum::routing::get(metrics))
        .fallback(invoke)
        .with_state(shared.clone());
    let mut servers = Vec::new();
    for port in [args.port, logging_port] {
        let addr = format!("{}:{port}", args.host);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
        println!("listening on {}", listener.local_addr()?);
        servers.push(tokio::spawn(axum::serve(listener, app.clone()).into_future()));
    }

    if let Some(l) = &launch {
        let url = format!("{}/instances/launch_config/{}/activate", l.api, l.config_id);
        validator_call(|| client.get(&url).bearer_auth(&l.token), "activating the instance").await?;
        shared.1.active.store(true, Ordering::Relaxed);
        println!("instance active");
    }
    if let Some(job) = job {
        tokio::time::sleep(Duration::from_secs(JOB_SECONDS)).await;
        println!("job {job} done");
        return Ok(());
    }

    tokio::select! {
        r = futures_first(servers) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn futures_first(servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>) -> anyhow::Result<()> {
    for s in servers {
        s.await??;
    }
    bail!("the server stopped")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chutes_run_arguments_and_launch_tokens() {
        let argv: Vec<String> =
            ["chutes", "run", "m:chute", "--port", "8000", "--miner-ss58", "5x", "--validator-ss58", "5y"]
                .map(String::from)
                .to_vec();
        let a = parse_args(&argv).unwrap();
        assert_eq!((a.chute_ref.as_str(), a.port, a.host.as_str()), ("m:chute", 8000, "0.0.0.0"));
        let err = parse_args(&["chutes".into(), "--bogus".into()]).unwrap_err().to_string();
        assert!(err.contains("--bogus"), "{err}");

        assert_eq!(config_id_of("emulator.cfg-7.abcdef").as_deref(), Some("cfg-7"));
        // A JWT: header.{"config_id":"c1"}.signature
        assert_eq!(config_id_of("eyJhbGciOiJIUzI1NiJ9.eyJjb25maWdfaWQiOiJjMSJ9.sig").as_deref(), Some("c1"));
        assert_eq!(config_id_of("opaque"), None);

        // The miner pins GPU-<dashed uuid>; GraVal (and the miner's records) say 32 hex digits.
        assert_eq!(
            graval_uuid("GPU-8F0A0F3C-1b2d-4e5f-8a9b-0c1d2e3f4a5b"),
            "8f0a0f3c1b2d4e5f8a9b0c1d2e3f4a5b"
        );
    }
}

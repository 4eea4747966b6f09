#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! A running API on 127.0.0.1 with a fresh database (shared Postgres server) and its
//! own stream on a shared Redis server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chutes_protocol::Hotkey;
use chutes_protocol::auth::Payload;
use lab_hosts::{Postgres, Redis};
use miner_api::{AppState, NodeBootstrap};
use miner_config::Validators;
use miner_db::{Chute, Db, NewDeployment, NewGpu, NewServer};
use miner_events::{Producer, StreamConfig};
use serde_json::{Value, json};

pub const MINER_SEED: &str = "0x9f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
pub const OTHER_SEED: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
pub const VALIDATOR_SEED: &str = "0x2222222222222222222222222222222222222222222222222222222222222222";

pub fn pg() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| Postgres::start().expect("postgres"))
}

pub fn redis() -> &'static Redis {
    static R: OnceLock<Redis> = OnceLock::new();
    R.get_or_init(|| Redis::start().expect("redis"))
}

pub fn hotkey(seed: &str) -> Hotkey {
    Hotkey::from_seed_hex(seed, "test").unwrap()
}

pub fn validators() -> Validators {
    let v = hotkey(VALIDATOR_SEED);
    Validators::parse(&format!(
        r#"{{"supported":[{{"hotkey":"{}","registry":"registry.example","api":"http://127.0.0.1:9","socket":"ws://127.0.0.1:9"}}]}}"#,
        v.ss58()
    ))
    .unwrap()
}

static N: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

pub struct Api {
    pub addr: SocketAddr,
    pub db: Db,
    pub miner: Arc<Hotkey>,
    pub stream: String,
    pub redis_url: String,
    pub http: reqwest::Client,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

pub type MakeBootstrap = Box<dyn FnOnce(Db) -> Arc<dyn NodeBootstrap> + Send>;

pub struct Options {
    pub redis_url: Option<String>,
    pub bootstrap: Option<Arc<dyn NodeBootstrap>>,
    /// Builds the bootstrap once the API's database exists.
    pub make_bootstrap: Option<MakeBootstrap>,
    pub event_timeout: Duration,
    /// `AppState::bound_management_only`.
    pub bound_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            redis_url: None,
            bootstrap: None,
            make_bootstrap: None,
            event_timeout: Duration::from_secs(5),
            bound_only: false,
        }
    }
}

impl Api {
    pub async fn start() -> Api {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = pg().create_database(&unique("api")).unwrap();
        let db = Db::connect(&url).await.unwrap();
        db.migrate().await.unwrap();
        let redis_url = opts.redis_url.unwrap_or_else(|| redis().url());
        let stream = unique("events");
        let producer =
            Producer::connect(&redis_url, StreamConfig { stream: stream.clone(), ..StreamConfig::default() })
                .unwrap();
        let miner = Arc::new(hotkey(MINER_SEED));
        let mut state = AppState::new(db.clone(), miner.clone(), producer, validators()).unwrap();
        state.event_timeout = opts.event_timeout;
        state = state.with_bound_management_only(opts.bound_only);
        if let Some(b) = opts.bootstrap {
            state = state.with_bootstrap(b);
        }
        if let Some(make) = opts.make_bootstrap {
            state = state.with_bootstrap(make(db.clone()));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(miner_api::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Api { addr, db, miner, stream, redis_url, http: reqwest::Client::new(), shutdown: Some(tx) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A management request signed by `signer` for this miner.
    pub fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        signer: &Hotkey,
    ) -> reqwest::RequestBuilder {
        self.signed_bytes(method, path, body.map(|b| serde_json::to_vec(b).unwrap()), signer)
    }

    /// As [`Api::signed`], with the body's exact bytes (which need not be JSON).
    pub fn signed_bytes(
        &self,
        method: reqwest::Method,
        path: &str,
        bytes: Option<Vec<u8>>,
        signer: &Hotkey,
    ) -> reqwest::RequestBuilder {
        let payload = match &bytes {
            Some(b) => Payload::Body(b),
            None => Payload::Purpose("management"),
        };
        let headers = signer.sign_management(self.miner.ss58(), payload);
        let mut req = self.http.request(method, self.url(path));
        for (k, v) in headers.iter() {
            req = req.header(k, v);
        }
        if let Some(b) = bytes {
            req = req.header("content-type", "application/json").body(b);
        }
        req
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.signed(reqwest::Method::GET, path, None, &self.miner)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.signed(reqwest::Method::DELETE, path, None, &self.miner)
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.signed(reqwest::Method::POST, path, Some(body), &self.miner)
    }

    /// Every event on this API's stream, as `(event JSON)`, oldest first.
    pub async fn events(&self) -> Vec<Value> {
        let client = redis::Client::open(self.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let reply: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(&self.stream).arg("-").arg("+").query_async(&mut conn).await.unwrap();
        reply
            .ids
            .iter()
            .map(|e| {
                let text: String = e.get("event").expect("entry has an event field");
                serde_json::from_str(&text).unwrap()
            })
            .collect()
    }

    /// One server `gpu-1` (uid-1) with two verified GPUs, a chute, one service
    /// deployment `d-svc` and one job deployment `d-job`.
    pub async fn seed_inventory(&self) {
        let v = validators().supported[0].hotkey.clone();
        self.db
            .insert_server(&NewServer {
                server_id: "uid-1".into(),
                validator: v.clone(),
                name: "gpu-1".into(),
                ip_address: Some("203.0.113.7".into()),
                labels: json!({"gpu-short-ref": "a6000"}),
                gpu_count: 2,
                cpu_per_gpu: 4,
                memory_per_gpu: 40,
                hourly_cost: 0.5,
            })
            .await
            .unwrap();
        let gpus: Vec<NewGpu> = ["GPU-a", "GPU-b"]
            .iter()
            .map(|id| NewGpu {
                gpu_id: (*id).into(),
                device_info: json!({"name": "A6000"}),
                model_short_ref: "a6000".into(),
            })
            .collect();
        self.db.insert_gpus("uid-1", &v, &gpus).await.unwrap();
        self.db.verify_server_gpus("uid-1").await.unwrap();
        self.db
            .upsert_chute(&Chute {
                chute_id: "chute-1".into(),
                validator: v.clone(),
                name: Some("sdxl".into()),
                image: "u/sdxl:1".into(),
                code: "x".into(),
                filename: "sdxl.py".into(),
                ref_str: "sdxl:chute".into(),
                version: "v1".into(),
                supported_gpus: vec!["a6000".into()],
                gpu_count: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        for (id, job) in [("d-svc", None), ("d-job", Some("job-1".to_owned()))] {
            self.db
                .create_deployment(
                    &NewDeployment {
                        deployment_id: id.into(),
                        validator: v.clone(),
                        chute_id: "chute-1".into(),
                        server_id: "uid-1".into(),
                        version: "v1".into(),
                        job_id: job,
                        config_id: None,
                    },
                    1,
                )
                .await
                .unwrap();
        }
    }
}

pub async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

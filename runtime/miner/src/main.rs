//! `chutes-miner`: every in-cluster process of the miner in one binary.
//!
//! Each subcommand loads only the settings it needs (see `miner-config`), so a
//! missing or malformed variable stops start-up with a message naming it, and
//! `migrate` does not ask for the hotkey. SIGTERM and SIGINT start a graceful
//! shutdown: servers finish in-flight requests, the event producer flushes.

mod cache_clean;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use miner_config::{
    ApiSettings, AuditSettings, DatabaseSettings, GepettoSettings, Identity, PorterSettings, ProcessEnv,
    RedisSettings, StrategyKind, Validators,
};
use miner_db::Db;
use miner_events::{Producer, StreamConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "chutes-miner", version, about = "The chutes miner's in-cluster services.")]
struct Cli {
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A chute Job's init container: makes the starting chute's cache directory (with
    /// hub/ and civitai/, open to the chute's user), removes other chutes' caches unused
    /// for CACHE_MAX_AGE_DAYS, then the least recently used while the node's cache is over
    /// CACHE_MAX_SIZE_GB. Always exits 0: a cache problem must not keep a chute from starting.
    CacheClean {
        /// The node's cache root as mounted (/var/snap/cache on the host).
        #[arg(long, default_value = "/cache")]
        root: std::path::PathBuf,
        /// The chute about to start (kept, whatever its age).
        #[arg(long)]
        chute_id: String,
        #[arg(long, env = "CACHE_MAX_AGE_DAYS", default_value_t = 7)]
        max_age_days: u32,
        #[arg(long, env = "CACHE_MAX_SIZE_GB", default_value_t = 500)]
        max_size_gb: u32,
    },
    /// The miner API: inventory management, registry auth, /openapi.json, /metrics, and one
    /// socket.io connection per validator in VALIDATORS, whose events go to the Redis stream.
    /// Needs POSTGRESQL, REDIS_URL, MINER_SS58, MINER_SEED, VALIDATORS.
    Api {
        /// Address to listen on.
        #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8000")]
        listen: SocketAddr,
        /// Do not connect to the validators' sockets (serve the API only).
        #[arg(long)]
        no_sockets: bool,
    },
    /// Gepetto, the scheduler: consumes the durable event stream (consumer group) and turns
    /// validator events into chute Jobs, with the activator, autoscaler and reconciler loops.
    /// Needs POSTGRESQL, REDIS_URL, MINER_SS58, MINER_SEED, VALIDATORS and a Kubernetes client
    /// (in-cluster or KUBECONFIG); optional GEPETTO_STRATEGY (multiplier|heuristic),
    /// GEPETTO_*_INTERVAL, GEPETTO_DISK_RESERVE_GB, PROMETHEUS_URL, GEPETTO_RECORD_TRACE (an
    /// absolute path to record the week into, for `minerctl simulate --trace`).
    Gepetto {
        /// Consumer group shared by all Gepetto replicas.
        #[arg(long, env = "GEPETTO_GROUP", default_value = "gepetto")]
        group: String,
        /// This replica's consumer name; keep it stable across restarts (the pod name).
        #[arg(long, env = "GEPETTO_CONSUMER")]
        consumer: Option<String>,
    },
    /// Porter: answers GET /axon with REAL_AXON_HOST/REAL_AXON_PORT to whitelisted, signed validators
    /// (VALIDATOR_WHITELIST, MINER_HOTKEY_SS58 or MINER_SS58) and nothing to anyone else.
    Porter {
        #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8000")]
        listen: SocketAddr,
        /// Signature checks at once (8 per source address); more are refused with 503.
        #[arg(long, default_value_t = 256)]
        max_in_flight: usize,
    },
    /// Uploads the previous hour of deployment_audit (run hourly at :01). Needs POSTGRESQL,
    /// MINER_SS58, MINER_SEED; optional AUDIT_URL, PROMETHEUS_URL, SUBTENSOR_HTTP/SUBTENSOR_ADDRESS.
    AuditExport {
        /// Report the hour ending at the last full hour before this RFC 3339 time (default: now).
        #[arg(long)]
        at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Applies pending database migrations (under an advisory lock) and exits. Needs POSTGRESQL.
    Migrate,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins; otherwise the original's DEBUG switch picks debug over info.
    let debug = std::env::var("DEBUG")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if debug { "debug" } else { "info" }));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Cancelled on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}

async fn connect_db() -> Result<Db> {
    let settings = DatabaseSettings::from_env(&ProcessEnv)?;
    Db::connect(settings.url.expose()).await.with_context(|| format!("connecting to {}", settings.url))
}

async fn migrate(db: &Db) -> Result<()> {
    let applied = db.migrate().await.context("migrating the database")?;
    if applied.is_empty() {
        tracing::info!("database schema is up to date");
    } else {
        tracing::info!(?applied, "database migrated");
    }
    Ok(())
}

async fn run_api(listen: SocketAddr, no_sockets: bool) -> Result<()> {
    let identity = Identity::from_env(&ProcessEnv)?;
    let validators = Validators::from_env(&ProcessEnv)?;
    let redis = RedisSettings::from_env(&ProcessEnv)?;
    let api_settings = ApiSettings::from_env(&ProcessEnv)?;
    let db = connect_db().await?;
    migrate(&db).await?;
    let shutdown = shutdown_signal()?;

    let producer = Producer::connect(redis.url.expose(), StreamConfig::default())
        .with_context(|| format!("event stream at {}", redis.url))?;
    let mut sockets = Vec::new();
    if !no_sockets {
        for v in &validators.supported {
            let target = miner_validator::ValidatorTarget {
                hotkey: v.hotkey.clone(),
                api: v.api.clone(),
                socket: v.socket.clone(),
            };
            tracing::info!(validator = %v.hotkey, socket = %v.socket, "connecting to validator socket");
            sockets.push(miner_validator::socket::spawn(
                target,
                identity.hotkey.clone(),
                producer.clone(),
                shutdown.clone(),
            ));
        }
    }

    let validators_hotkeys: Vec<String> =
        if no_sockets { Vec::new() } else { validators.hotkeys().map(str::to_owned).collect() };
    let bootstrap = node_bootstrap(&db, &identity, &validators, &api_settings).await;
    let mut state = miner_api::AppState::new(db, identity.hotkey.clone(), producer.clone(), validators)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_bound_management_only(api_settings.bound_management_only);
    if api_settings.bound_management_only {
        tracing::info!("management signatures must be bound to method and path (MANAGEMENT_BOUND_ONLY)");
    }
    if let Some(b) = bootstrap {
        state = state.with_bootstrap(b);
    }
    register_metrics(&state.metrics, &sockets, &validators_hotkeys, &producer);
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, miner = %identity.ss58(), "miner API listening");
    let stop = shutdown.clone();
    miner_api::serve(listener, state, async move { stop.cancelled().await })
        .await
        .context("serving the API")?;

    shutdown.cancel();
    for s in sockets {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.join).await;
    }
    match tokio::time::timeout(Duration::from_secs(5), producer.flush()).await {
        Ok(Ok(())) => tracing::info!("event stream flushed"),
        _ => tracing::warn!(queued = producer.queued(), "events still queued at exit (Redis unreachable)"),
    }
    Ok(())
}

/// Socket client counters and the producer's queue on the API's /metrics.
fn register_metrics(
    metrics: &miner_api::Metrics,
    sockets: &[miner_validator::socket::SocketHandle],
    hotkeys: &[String],
    producer: &Producer,
) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let stats: Vec<(String, Arc<miner_validator::socket::SocketStats>)> =
        hotkeys.iter().cloned().zip(sockets.iter().map(|s| s.stats.clone())).collect();
    metrics.add_source(Box::new(move |out: &mut String| {
        for (name, help, pick) in [
            ("miner_validator_socket_connects_total", "Socket connections opened, by validator.", 0),
            (
                "miner_validator_socket_authenticated_total",
                "Successful authenticate handshakes, by validator.",
                1,
            ),
            ("miner_validator_events_accepted_total", "miner_broadcast events appended to the stream.", 2),
            (
                "miner_validator_events_dropped_total",
                "miner_broadcast events dropped (unknown or malformed).",
                3,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (validator, s) in &stats {
                let n = [&s.connects, &s.authenticated, &s.events_accepted, &s.events_dropped][pick]
                    .load(Relaxed);
                let _ = writeln!(out, "{name}{{validator=\"{validator}\"}} {n}");
            }
        }
    }));
    let producer = producer.clone();
    metrics.add_source(Box::new(move |out: &mut String| {
        let _ = writeln!(
            out,
            "# HELP miner_events_queued Events accepted but not yet in Redis.\n# TYPE miner_events_queued gauge\nminer_events_queued {}",
            producer.queued()
        );
    }));
}

/// The add-node flow, when a Kubernetes client can be built (in-cluster or KUBECONFIG).
/// Without one the API still serves everything else; `POST /servers/` answers 503.
async fn node_bootstrap(
    db: &Db,
    identity: &Identity,
    validators: &Validators,
    settings: &ApiSettings,
) -> Option<Arc<dyn miner_api::NodeBootstrap>> {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no Kubernetes client: adding servers is disabled");
            return None;
        }
    };
    let mut clients = std::collections::HashMap::new();
    for v in &validators.supported {
        let target = miner_validator::ValidatorTarget {
            hotkey: v.hotkey.clone(),
            api: v.api.clone(),
            socket: v.socket.clone(),
        };
        match miner_validator::rest::ValidatorClient::new(&target, identity.hotkey.clone()) {
            Ok(c) => {
                clients.insert(v.hotkey.clone(), c);
            }
            Err(e) => tracing::warn!(validator = %v.hotkey, error = %e, "validator REST client unavailable"),
        }
    }
    let timings = miner_api::bootstrap::BootstrapTimings {
        timeout: Duration::from_secs(settings.graval_bootstrap_timeout_secs),
        ..Default::default()
    };
    Some(Arc::new(miner_api::bootstrap::KubeBootstrap {
        client,
        namespace: settings.namespace.clone(),
        db: db.clone(),
        hotkey: identity.hotkey.clone(),
        validators: clients,
        graval_image: settings.graval_bootstrap_image.clone(),
        image_pull_secrets: settings.image_pull_secrets.clone(),
        graval_address: Arc::new(|ip: &str, port: u16| format!("http://{ip}:{port}")),
        timings,
        http: reqwest::Client::new(),
    }))
}

async fn run_gepetto(group: String, consumer: Option<String>) -> Result<()> {
    let identity = Identity::from_env(&ProcessEnv)?;
    let validators = Validators::from_env(&ProcessEnv)?;
    let redis = RedisSettings::from_env(&ProcessEnv)?;
    let api = ApiSettings::from_env(&ProcessEnv)?;
    let settings = GepettoSettings::from_env(&ProcessEnv)?;
    let name = match consumer {
        Some(n) => n,
        None => {
            std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "gepetto-0".to_owned())
        }
    };
    let db = connect_db().await?;
    migrate(&db).await?;
    let client = kube::Client::try_default()
        .await
        .context("Gepetto needs a Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    let shutdown = shutdown_signal()?;
    let consumer = miner_events::Consumer::new(redis.url.expose(), &group, &name, StreamConfig::default())
        .with_context(|| format!("event stream at {}", redis.url))?;
    let mut links = Vec::new();
    for v in &validators.supported {
        let target = miner_validator::ValidatorTarget {
            hotkey: v.hotkey.clone(),
            api: v.api.clone(),
            socket: v.socket.clone(),
        };
        let rest = miner_validator::rest::ValidatorClient::new(&target, identity.hotkey.clone())
            .with_context(|| format!("validator {}", v.hotkey))?;
        links.push(miner_gepetto::ValidatorLink {
            hotkey: v.hotkey.clone(),
            client: rest,
            // Each validator's registry proxy has its own NodePort (VALIDATORS' registryNodePort).
            registry_port: v.registry_node_port.unwrap_or(api.registry_proxy_port),
        });
    }
    let strategy: Arc<dyn miner_gepetto::Strategy> = match settings.strategy {
        StrategyKind::Heuristic => Arc::new(miner_gepetto::Heuristic),
        StrategyKind::Multiplier => Arc::new(miner_gepetto::Multiplier::default()),
    };
    let mut cfg = miner_gepetto::Config::new(&api.namespace, identity.ss58());
    cfg.default_disk_gb = settings.default_disk_gb;
    cfg.disk_reserve_gb = settings.disk_reserve_gb;
    cfg.cache_max_age_days = api.cache.max_age_days;
    cfg.cache_max_size_gb = api.cache.max_size_gb;
    cfg.cache_overrides = api.cache.overrides.clone();
    if let Some(image) = &api.cache_cleaner_image {
        cfg.cache_cleaner_image = image.clone();
    }
    cfg.image_pull_secrets = api.image_pull_secrets.clone();
    cfg.activator_interval = Duration::from_secs(settings.activator_interval_secs);
    cfg.autoscaler_interval = Duration::from_secs(settings.autoscaler_interval_secs);
    cfg.reconcile_interval = Duration::from_secs(settings.reconcile_interval_secs);
    cfg.max_concurrent_deploys = settings.max_concurrent_deploys;
    cfg.prometheus_url = Some(settings.prometheus_url.clone());
    cfg.pod_exit_wait = Duration::from_secs(settings.pod_exit_wait_secs);
    let cluster = miner_gepetto::cluster::Cluster::start(client.clone(), &api.namespace, shutdown.clone());
    let gepetto = miner_gepetto::Gepetto::new(db, client, cluster, cfg, strategy.clone(), links);
    if let Some(path) = &settings.record_trace {
        gepetto.record_to(path).with_context(|| format!("GEPETTO_RECORD_TRACE={}", path.display()))?;
        tracing::info!(path = %path.display(), "recording a trace for minerctl simulate --trace");
    }
    tracing::info!(%group, consumer = %name, strategy = strategy.name(), "gepetto scheduling");
    gepetto.run(consumer, shutdown).await;
    Ok(())
}

async fn run_porter(listen: SocketAddr, max_in_flight: usize) -> Result<()> {
    let s = PorterSettings::from_env(&ProcessEnv)?;
    let cfg = miner_porter::PorterConfig {
        real_host: s.real_host,
        real_port: s.real_port,
        miner_ss58: s.miner_ss58,
        whitelist: s.whitelist,
        limits: miner_porter::Limits { max_in_flight, ..Default::default() },
    };
    let shutdown = shutdown_signal()?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "porter listening");
    miner_porter::serve(listener, &cfg, async move { shutdown.cancelled().await })
        .await
        .context("serving porter")
}

async fn run_audit(at: Option<chrono::DateTime<chrono::Utc>>) -> Result<()> {
    let identity = Identity::from_env(&ProcessEnv)?;
    let settings = AuditSettings::from_env(&ProcessEnv)?;
    let db = connect_db().await?;
    let cfg = miner_audit::ExporterConfig::new(
        settings.upload_url,
        settings.prometheus_url,
        settings.subtensor_rpc,
    );
    let exporter = miner_audit::Exporter::new(db, identity.hotkey.clone(), cfg)?;
    let window = miner_audit::Window::previous_hour(at.unwrap_or_else(chrono::Utc::now));
    let done = exporter.run(window).await?;
    tracing::info!(block = done.block, sha256 = %done.sha256, rows = done.rows, attempts = done.attempts,
        start = %window.start, end = %window.end, "audit report uploaded");
    Ok(())
}

/// The chute Job's init container: prepares the starting chute's cache directory and
/// ages out or trims the others. Never fails the pod: problems are logged.
fn run_cache_clean(root: std::path::PathBuf, chute_id: String, max_age_days: u32, max_size_gb: u32) {
    use cache_clean::{Reason, human_bytes};
    let opts = cache_clean::Options {
        root,
        chute_id,
        max_age: Duration::from_secs(u64::from(max_age_days) * 86_400),
        max_bytes: u64::from(max_size_gb) << 30,
        now: std::time::SystemTime::now(),
    };
    let report = cache_clean::clean(&opts);
    for r in &report.removed {
        let why = match r.reason {
            Reason::Unused => format!("unused for more than {max_age_days} days"),
            Reason::OverBudget => format!("the cache is over its {max_size_gb} GB budget"),
        };
        tracing::info!(chute = %r.name, size = %human_bytes(r.bytes), idle_days = r.idle.as_secs() / 86_400,
            "removed a chute's cache: {why}");
    }
    for e in &report.errors {
        tracing::warn!(error = %e, "cache clean-up");
    }
    tracing::info!(root = %opts.root.display(), chute = %opts.chute_id, removed = report.removed.len(),
        kept = %human_bytes(report.kept_bytes), errors = report.errors.len(), "cache ready");
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::CacheClean { root, chute_id, max_age_days, max_size_gb } => {
            run_cache_clean(root, chute_id, max_age_days, max_size_gb);
            Ok(())
        }
        Command::Api { listen, no_sockets } => run_api(listen, no_sockets).await,
        Command::Gepetto { group, consumer } => run_gepetto(group, consumer).await,
        Command::Porter { listen, max_in_flight } => run_porter(listen, max_in_flight).await,
        Command::AuditExport { at } => run_audit(at).await,
        Command::Migrate => migrate(&connect_db().await?).await,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // kube and reqwest are built without a rustls provider; pick ring once for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chutes-miner: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line; no setting's value is in it.
            tracing::error!("chutes-miner: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

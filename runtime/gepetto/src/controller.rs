//! Event handlers (reference 11.3), the deployment primitive (11.2, 12) and undeploy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment as KubeDeployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use miner_db::{Chute, Db, DbError, DeploymentKey, FleetRows, NewDeployment};
use miner_events::payloads::{self as ev, Event};
use miner_k8s::chute::{self as objects, ChuteJob, ExtraPort, LaunchToken, ServicePorts, version_at_least};
use miner_k8s::quantity::{pod_ephemeral_gib, pod_holds_disk};
use miner_validator::rest::{LaunchError, RemoteChute, RemoteInstance, RemoteMetrics, ValidatorClient};
use tokio::sync::{OnceCell, RwLock, Semaphore};
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::inventory::Inventory;
use crate::prometheus::Prometheus;
use crate::recording::Recording;
use crate::snapshot::{
    ChuteSnap, DeploymentSnap, FleetSnapshot, GpuSnap, RemoteChuteInfo, ServerSnap, ValidatorView,
};
use crate::strategy::{JobDecision, JobOffer, Strategy};

#[derive(Debug, thiserror::Error)]
pub enum GepettoError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("Kubernetes: {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("validator {validator}: {reason}")]
    Validator { validator: String, reason: String },
    #[error("trace recording: {0}")]
    Recording(#[from] miner_trace::TraceError),
    #[error("{0}")]
    Invalid(String),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> GepettoError {
    let what = what.into();
    move |source| GepettoError::Kube { what, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Settings of the controller (from `GepettoSettings` and `ApiSettings` in the binary).
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub miner_ss58: String,
    pub default_disk_gb: u32,
    pub disk_reserve_gb: u32,
    pub cache_max_age_days: u32,
    pub cache_max_size_gb: u32,
    pub cache_overrides: BTreeMap<String, u32>,
    /// The chute Jobs' `cache-init` image (`CACHE_CLEANER_IMAGE`): the runtime image.
    pub cache_cleaner_image: String,
    /// `IMAGE_PULL_SECRETS`: named on chute Jobs (the cache-init image may sit in a
    /// private registry).
    pub image_pull_secrets: Vec<String>,
    pub activator_interval: Duration,
    pub autoscaler_interval: Duration,
    pub reconcile_interval: Duration,
    pub max_concurrent_deploys: usize,
    /// A stub deployment with no Job older than this is removed by reconcile (its
    /// deploy task died with a previous process).
    pub stub_grace: Duration,
    pub prometheus_url: Option<String>,
    /// How long a deploy onto GPUs just freed (preemption, rolling update) waits for
    /// the old pods to go (reference 11.2 waits 45 s); zero: no wait.
    pub pod_exit_wait: Duration,
}

impl Config {
    pub fn new(namespace: &str, miner_ss58: &str) -> Config {
        Config {
            namespace: namespace.to_owned(),
            miner_ss58: miner_ss58.to_owned(),
            default_disk_gb: 10,
            disk_reserve_gb: 20,
            cache_max_age_days: 7,
            cache_max_size_gb: 500,
            cache_overrides: BTreeMap::new(),
            cache_cleaner_image: miner_k8s::chute::DEFAULT_RUNTIME_IMAGE.to_owned(),
            image_pull_secrets: Vec::new(),
            activator_interval: Duration::from_secs(5),
            autoscaler_interval: Duration::from_secs(15),
            reconcile_interval: Duration::from_secs(60),
            max_concurrent_deploys: 16,
            stub_grace: Duration::from_secs(600),
            prometheus_url: None,
            pod_exit_wait: Duration::from_secs(45),
        }
    }
}

/// One validator this miner serves: its REST client and registry proxy NodePort.
#[derive(Clone, Debug)]
pub struct ValidatorLink {
    pub hotkey: String,
    pub client: ValidatorClient,
    pub registry_port: u16,
}

/// What Gepetto remembers of one validator between listings.
#[derive(Debug, Default, Clone)]
pub struct RemoteState {
    /// The validator's chutes: its last listing's answer plus what events stored since,
    /// or (before any listing has answered) only what events stored.
    pub chutes: Option<HashMap<String, RemoteChute>>,
    /// Whether a chutes listing has answered since this process started: only then is a
    /// chute missing from `chutes` gone at the validator, rather than not yet seen.
    pub chutes_listed: bool,
    pub instances: Option<HashMap<String, RemoteInstance>>,
    pub metrics: HashMap<String, RemoteMetrics>,
    pub capped: HashSet<String>,
    /// Chutes the validator marks mid-update (`update_in_progress`); `None` until its
    /// utilization listing has answered once (after a restart, "none updating" is not
    /// known yet).
    pub updating: Option<HashSet<String>>,
    pub active_instances: HashMap<String, Vec<miner_validator::rest::ActiveInstance>>,
    /// Chutes mid rolling update (`/chutes/rolling_updates`); `None` until that listing has
    /// answered, and again after it fails: an old version is then not judged "moved".
    pub rolling: Option<HashSet<String>>,
    pub images: Option<HashMap<String, crate::loops::RemoteImage>>,
}

/// A job claim carried through a deploy.
#[derive(Debug, Clone)]
struct JobCtx {
    job_id: String,
    /// The disk the job asked for (`disk_gb`, else Gepetto's default): a preempting
    /// deploy chooses its server and sizes its Job by it, as a direct one does.
    disk_gb: f64,
}

pub(crate) struct Inner {
    pub(crate) db: Db,
    pub(crate) kube: kube::Client,
    pub(crate) cfg: Config,
    pub(crate) strategy: Arc<dyn Strategy>,
    pub(crate) validators: HashMap<String, ValidatorLink>,
    pub(crate) cluster: Cluster,
    /// Serializes decide + allocate, so every decision sees the previous allocation.
    placement: tokio::sync::Mutex<()>,
    deploys: Arc<Semaphore>,
    pub(crate) tasks: TaskTracker,
    /// `instance_created` that named a launch config no row had yet.
    early: Mutex<HashMap<String, String>>,
    /// The disk each deployment was placed with (a job's `disk_gb`), held in the
    /// snapshot until a pod of it exists (the node's disk then counts its request).
    /// Process memory: after a restart, `default_disk_gb` stands in.
    disk_reserved: Mutex<HashMap<String, f64>>,
    pub(crate) remote: RwLock<HashMap<String, RemoteState>>,
    pub(crate) prometheus: Prometheus,
    /// The inventory decisions read (kept current from Gepetto's own writes).
    pub(crate) inv: Inventory,
    /// Code ConfigMaps known to exist, by name; a cell shared by concurrent deploys of
    /// one chute, so it is created once. Cleared by reconcile.
    pub(crate) code_maps: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
    /// `GEPETTO_RECORD_TRACE`: the trace being recorded, once started.
    recording: OnceLock<Recording>,
}

/// The controller. Cheap to clone.
#[derive(Clone)]
pub struct Gepetto {
    pub(crate) inner: Arc<Inner>,
}

impl Gepetto {
    pub fn new(
        db: Db,
        kube: kube::Client,
        cluster: Cluster,
        cfg: Config,
        strategy: Arc<dyn Strategy>,
        validators: Vec<ValidatorLink>,
    ) -> Gepetto {
        let prometheus = Prometheus::new(cfg.prometheus_url.clone());
        Gepetto {
            inner: Arc::new(Inner {
                inv: Inventory::new(db.clone()),
                code_maps: Mutex::new(HashMap::new()),
                db,
                kube,
                deploys: Arc::new(Semaphore::new(cfg.max_concurrent_deploys.max(1))),
                cfg,
                strategy,
                validators: validators.into_iter().map(|v| (v.hotkey.clone(), v)).collect(),
                cluster,
                placement: tokio::sync::Mutex::new(()),
                tasks: TaskTracker::new(),
                early: Mutex::new(HashMap::new()),
                disk_reserved: Mutex::new(HashMap::new()),
                remote: RwLock::new(HashMap::new()),
                prometheus,
                recording: OnceLock::new(),
            }),
        }
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// Waits for the background deploys still running (at shutdown, and in tests).
    pub async fn wait_idle(&self) {
        loop {
            if self.inner.tasks.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts recording a trace into `path` (continuing it if it holds an earlier
    /// run's), for `minerctl simulate --trace`. Call before [`Gepetto::run`].
    pub fn record_to(&self, path: &Path) -> Result<(), GepettoError> {
        let cfg = &self.inner.cfg;
        // The header carries this miner's own settings, so the replay ticks and sizes as it did.
        let settings = miner_trace::ValidatorModel {
            autoscale_s: cfg.autoscaler_interval.as_secs().max(1),
            default_disk_gb: f64::from(cfg.default_disk_gb),
            ..miner_trace::ValidatorModel::default()
        };
        let recording = Recording::open(path, &cfg.miner_ss58, &settings)?;
        self.inner
            .recording
            .set(recording)
            .map_err(|r| GepettoError::Invalid(format!("already recording into {}", r.path().display())))
    }

    pub(crate) fn recording(&self) -> Option<&Recording> {
        self.inner.recording.get()
    }

    fn validator(&self, hotkey: &str) -> Result<&ValidatorLink, GepettoError> {
        self.inner
            .validators
            .get(hotkey)
            .ok_or_else(|| GepettoError::Invalid(format!("validator {hotkey} is not in VALIDATORS")))
    }

    fn ours(&self, miner_hotkey: &Option<String>) -> bool {
        miner_hotkey.as_deref().is_none_or(|h| h == self.inner.cfg.miner_ss58)
    }

    /// Handles one bus entry. `Ok` means its effect is durable and it may be acked;
    /// an `Err` has it redelivered. A payload that can never be handled is logged
    /// and acknowledged.
    pub async fn handle_entry(&self, event: &miner_events::MinerEvent) -> Result<(), GepettoError> {
        match Event::parse(event) {
            Ok(e) => self.handle(&e).await,
            Err(e) => {
                tracing::warn!(error = %e, "dropping an event Gepetto cannot read");
                Ok(())
            }
        }
    }

    pub async fn handle(&self, event: &Event) -> Result<(), GepettoError> {
        tracing::debug!(event = event.event_type(), "handling");
        match event {
            Event::ChuteCreated(e) => self.chute_created(e).await,
            Event::ChuteUpdated(e) => {
                self.ensure_chute(&e.validator, &e.chute_id, &e.version, true).await.map(drop)
            }
            Event::ChuteDeleted(e) => {
                self.chute_deleted(&e.validator, &e.chute_id, e.version.as_deref()).await
            }
            Event::BountyChange(e) => self.bounty_change(e).await,
            Event::ImageCreated(e) | Event::ImageDeleted(e) => {
                // No pre-pull yet (the original only logged too).
                tracing::info!(image = %e.image_id, event = event.event_type(), "image event");
                Ok(())
            }
            Event::ImageUpdated(e) => {
                let n = self
                    .inner
                    .inv
                    .update_chute_images(&e.chute_ids, &e.image, e.chutes_version.as_deref())
                    .await?;
                tracing::info!(image = %e.image, chutes = n, "chute images updated");
                Ok(())
            }
            Event::GpuVerified(e) => {
                if self.ours(&e.miner_hotkey) && !self.inner.inv.set_gpu_verified(&e.gpu_id).await? {
                    tracing::warn!(gpu = %e.gpu_id, "gpu_verified for a GPU this miner does not track");
                }
                Ok(())
            }
            Event::ServerDeleted(e) => self.server_deleted(&e.server_id).await,
            Event::InstanceCreated(e) => self.instance_created(e).await,
            Event::InstanceVerified(e) => {
                if self.ours(&e.miner_hotkey) {
                    self.inner.inv.verify_instance(&e.instance_id).await?;
                }
                Ok(())
            }
            Event::InstanceActivated(e) => {
                if self.ours(&e.miner_hotkey) {
                    self.inner.inv.activate_instance(e.config_id.as_deref(), &e.instance_id).await?;
                }
                Ok(())
            }
            Event::InstanceDeleted(e) => {
                if self.ours(&e.miner_hotkey) {
                    let mut gone =
                        self.inner.db.deployments_where(DeploymentKey::Instance, &e.instance_id).await?;
                    // A deployment whose `instance_created` never arrived knows only its
                    // launch config: matched by that, or it would hold its GPUs for good.
                    if let Some(config) = &e.config_id {
                        gone.extend(self.inner.db.deployments_where(DeploymentKey::Config, config).await?);
                    }
                    gone.sort_by(|a, b| a.deployment_id.cmp(&b.deployment_id));
                    gone.dedup_by(|a, b| a.deployment_id == b.deployment_id);
                    for d in gone {
                        self.undeploy(&d.deployment_id).await?;
                    }
                }
                Ok(())
            }
            Event::RollingUpdate(e) => self.rolling_update(e).await,
            Event::JobCreated(e) => self.job_created(e).await,
            Event::JobDeleted(e) => {
                if let Some(r) = self.recording() {
                    r.job_deleted(&e.job_id);
                }
                for d in self.inner.db.deployments_where(DeploymentKey::Job, &e.job_id).await? {
                    self.undeploy(&d.deployment_id).await?;
                }
                Ok(())
            }
            Event::Undeploy(e) => self.undeploy(&e.deployment_id).await,
        }
    }

    // ---- chutes ----

    /// The local chute row at `version`, fetched and stored (with its code
    /// ConfigMap) when missing or on another version. `force`: refetch anyway
    /// (`chute_updated`).
    pub(crate) async fn ensure_chute(
        &self,
        validator: &str,
        chute_id: &str,
        version: &str,
        force: bool,
    ) -> Result<(Chute, Option<RemoteChute>), GepettoError> {
        let (chute, remote) = self.ensure_chute_row(validator, chute_id, version, force).await?;
        self.ensure_code(&chute, remote.as_ref().map(|r| r.code.as_str())).await?;
        Ok((chute, remote))
    }

    /// [`Gepetto::ensure_chute`] without the ConfigMap (the caller creates it, maybe
    /// beside other work). The remote chute is returned when it was fetched.
    async fn ensure_chute_row(
        &self,
        validator: &str,
        chute_id: &str,
        version: &str,
        force: bool,
    ) -> Result<(Chute, Option<RemoteChute>), GepettoError> {
        if !force
            && let Some(c) = self.inner.inv.chute(chute_id).await?
            && c.version == version
            && c.validator == validator
        {
            return Ok((c, None));
        }
        let link = self.validator(validator)?;
        let remote = link.client.remote_chute(chute_id, version).await.map_err(|e| {
            GepettoError::Validator { validator: validator.to_owned(), reason: e.to_string() }
        })?;
        let chute = self.store_remote_chute(validator, &remote).await?;
        Ok((chute, Some(remote)))
    }

    /// Stores the validator's chute record as the local chute row (without its
    /// ConfigMap) and remembers it in the validator's view.
    pub(crate) async fn store_remote_chute(
        &self,
        validator: &str,
        remote: &RemoteChute,
    ) -> Result<Chute, GepettoError> {
        let (chute_id, version) = (remote.chute_id.as_str(), remote.version.as_str());
        let chute = Chute {
            chute_id: remote.chute_id.clone(),
            validator: validator.to_owned(),
            name: remote.name.clone(),
            image: remote.image.clone(),
            code: remote.code.clone(),
            filename: remote.filename.clone(),
            ref_str: remote.ref_str.clone(),
            version: remote.version.clone(),
            supported_gpus: remote.supported_gpus.clone(),
            gpu_count: i32::try_from(remote.gpu_count()).map_err(|_| {
                GepettoError::Invalid(format!(
                    "chute {chute_id}: node_selector.gpu_count {} out of range",
                    remote.gpu_count()
                ))
            })?,
            created_at: None,
            updated_at: None,
            ban_reason: remote.ban_reason.clone(),
            chutes_version: remote.chutes_version.clone(),
        };
        if chute.gpu_count < 1 || chute.image.is_empty() || chute.filename.is_empty() {
            return Err(GepettoError::Invalid(format!(
                "chute {chute_id} version {version}: gpu_count, image and filename are required"
            )));
        }
        self.inner.inv.upsert_chute(&chute, remote.preemptible.unwrap_or(true)).await?;
        {
            let mut remote_state = self.inner.remote.write().await;
            let st = remote_state.entry(validator.to_owned()).or_default();
            st.chutes.get_or_insert_with(HashMap::new).insert(chute_id.to_owned(), remote.clone());
            if let Some(r) = self.recording() {
                r.chute(remote);
            }
        }
        Ok(chute)
    }

    /// Creates the code ConfigMap of a chute version (409: already there) unless this
    /// process knows it exists. `code`: the chute's code when the caller has it; else
    /// it is read from the database, only when the ConfigMap must be created.
    async fn ensure_code(&self, c: &Chute, code: Option<&str>) -> Result<(), GepettoError> {
        let name = miner_k8s::code_configmap_name(&c.chute_id, &c.version);
        let cell = match self.inner.code_maps.lock() {
            Ok(mut maps) => maps.entry(name).or_default().clone(),
            Err(_) => Arc::new(OnceCell::new()),
        };
        cell.get_or_try_init(|| async {
            let code = match code {
                Some(code) => code.to_owned(),
                None => self.inner.db.chute_code(&c.chute_id, &c.version).await?.ok_or_else(|| {
                    GepettoError::Invalid(format!(
                        "chute {} is not stored at version {}",
                        c.chute_id, c.version
                    ))
                })?,
            };
            let cm = objects::code_configmap(&c.chute_id, &c.version, &c.filename, &code)
                .map_err(|e| GepettoError::Invalid(e.to_string()))?;
            let api: Api<ConfigMap> = Api::namespaced(self.inner.kube.clone(), &self.inner.cfg.namespace);
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(()),
                Err(e) if is_status(&e, 409) => Ok(()),
                Err(e) => Err(kube_err(format!("creating ConfigMap for chute {}", c.chute_id))(e)),
            }
        })
        .await
        .map(drop)
    }

    /// Forgets which code ConfigMaps exist (reconcile), so one deleted by hand is
    /// created again by the next deploy that needs it.
    pub(crate) fn forget_code_maps(&self) {
        if let Ok(mut maps) = self.inner.code_maps.lock() {
            maps.clear();
        }
    }

    async fn chute_created(&self, e: &ev::ChuteChanged) -> Result<(), GepettoError> {
        let (chute, remote) = self.ensure_chute_row(&e.validator, &e.chute_id, &e.version, false).await?;
        self.deploy_new_chute(&chute, remote.as_ref().map(|r| r.code.as_str()), e.job_only).await
    }

    /// The rest of `chute_created` once the row is stored: its code ConfigMap and, for
    /// a chute with cords, the first instance when the strategy deploys on create.
    pub(crate) async fn deploy_new_chute(
        &self,
        chute: &Chute,
        code: Option<&str>,
        job_only: bool,
    ) -> Result<(), GepettoError> {
        let code = self.ensure_code(chute, code);
        if job_only {
            return code.await;
        }
        // The ConfigMap and the placement are independent: both are done before the ack.
        let view = self.view().await;
        let placed = self.place(chute, None, None, |strategy, fleet, snap, disk| {
            if strategy.deploy_on_create(snap, fleet, &view) {
                strategy.scale_up_server(snap, fleet, disk)
            } else {
                None
            }
        });
        let (code, placed) = tokio::join!(code, placed);
        code?;
        placed?;
        Ok(())
    }

    async fn chute_deleted(
        &self,
        validator: &str,
        chute_id: &str,
        version: Option<&str>,
    ) -> Result<(), GepettoError> {
        let row = self
            .inner
            .inv
            .chute(chute_id)
            .await?
            .filter(|c| c.validator == validator && version.is_none_or(|v| v == c.version));
        // Deleting the chute's row deletes every deployment row of it (a foreign key
        // cascade), a job's still running at an older version included: those are
        // undeployed too, or their Jobs would run on GPUs the inventory shows free.
        let deployments = self.inner.db.deployments_where(DeploymentKey::Chute, chute_id).await?;
        for d in deployments
            .iter()
            .filter(|d| d.validator == validator && (row.is_some() || version.is_none_or(|v| v == d.version)))
        {
            self.undeploy(&d.deployment_id).await?;
        }
        if let Some(c) = row {
            self.inner.inv.delete_chute(chute_id).await?;
            let api: Api<ConfigMap> = Api::namespaced(self.inner.kube.clone(), &self.inner.cfg.namespace);
            let name = miner_k8s::code_configmap_name(&c.chute_id, &c.version);
            if let Ok(mut maps) = self.inner.code_maps.lock() {
                maps.remove(&name);
            }
            match api.delete(&name, &background()).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(kube_err(format!("deleting ConfigMap {name}"))(e)),
            }
        }
        Ok(())
    }

    async fn bounty_change(&self, e: &ev::BountyChange) -> Result<(), GepettoError> {
        if let Some(r) = self.recording() {
            r.bounty(&e.chute_id, e.bounty);
        }
        let Some(chute) = self.inner.inv.chute(&e.chute_id).await? else {
            tracing::info!(chute = %e.chute_id, "bounty for a chute not stored here; the reconciler adds it");
            return Ok(());
        };
        let view = self.view().await;
        let placed = self
            .place(&chute, None, None, |strategy, fleet, snap, disk| {
                if strategy.claim_bounty(snap, fleet, &view) {
                    strategy.scale_up_server(snap, fleet, disk)
                } else {
                    None
                }
            })
            .await?;
        if placed.is_none() {
            let fleet = self.snapshot().await?;
            if let Some(snap) = fleet.chutes.get(&chute.chute_id)
                && self.inner.strategy.claim_bounty(snap, &fleet, &view)
            {
                self.preempting_deploy(&chute, None).await?;
            }
        }
        Ok(())
    }

    /// The chute's new version first (a validator that cannot serve it leaves the old
    /// instance running and the event for redelivery), then the old instance makes way
    /// for the new one on the same server, in one placement: nothing else can take its
    /// GPUs in between.
    async fn rolling_update(&self, e: &ev::RollingUpdate) -> Result<(), GepettoError> {
        let old: Vec<_> = self
            .inner
            .db
            .deployments_where(DeploymentKey::Instance, &e.instance_id)
            .await?
            .into_iter()
            .filter(|d| d.job_id.is_none())
            .collect();
        let (chute, _) = self.ensure_chute(&e.validator, &e.chute_id, &e.new_version, false).await?;
        let Some(d) = old.first() else { return Ok(()) };
        let gpus = self.inner.db.server_gpus(&d.server_id).await?;
        let model = gpus
            .iter()
            .find(|g| g.deployment_id.as_deref() == Some(&d.deployment_id))
            .map(|g| g.model_short_ref.clone());
        let replacing = std::slice::from_ref(&d.deployment_id);
        match model {
            Some(model) if chute.supported_gpus.contains(&model) => {
                // Same server when its GPU type still fits; otherwise the autoscaler places it.
                let server_id = d.server_id.clone();
                let disk = f64::from(self.inner.cfg.default_disk_gb);
                let placed = self
                    .place_with_disk(&chute, None, None, disk, replacing, move |_, fleet, snap, _| {
                        let s = fleet.server(&server_id)?;
                        (!s.locked && s.free_gpus(&snap.supported_gpus) >= snap.gpu_count)
                            .then(|| server_id.clone())
                    })
                    .await?;
                if placed.is_none() {
                    // The server is locked, or the new version needs more GPUs than the
                    // old one frees: the old version goes anyway, and the autoscaler
                    // places the new one where it fits.
                    self.undeploy(&d.deployment_id).await?;
                }
            }
            _ => self.undeploy(&d.deployment_id).await?,
        }
        Ok(())
    }

    async fn job_created(&self, e: &ev::JobCreated) -> Result<(), GepettoError> {
        let excluded = e.exclude.iter().any(|h| *h == self.inner.cfg.miner_ss58);
        if let Some(r) = self.recording() {
            r.job_created(e, excluded, f64::from(self.inner.cfg.default_disk_gb));
        }
        if excluded {
            return Ok(());
        }
        if !self.inner.db.deployments_where(DeploymentKey::Job, &e.job_id).await?.is_empty() {
            return Ok(()); // delivered again: already placed
        }
        let Some(chute) = self.inner.inv.chute(&e.chute_id).await? else {
            tracing::info!(chute = %e.chute_id, job = %e.job_id, "job for a chute not stored here; ignored");
            return Ok(());
        };
        let offer = JobOffer {
            job_id: e.job_id.clone(),
            chute_id: e.chute_id.clone(),
            exclude: e.exclude.clone(),
            disk_gb: f64::from(e.disk_gb.unwrap_or(self.inner.cfg.default_disk_gb)),
        };
        let miner = self.inner.cfg.miner_ss58.clone();
        let decision = Arc::new(Mutex::new(None));
        let seen = decision.clone();
        let job = JobCtx { job_id: e.job_id.clone(), disk_gb: offer.disk_gb };
        let placed = self
            .place_with_disk(
                &chute,
                Some(job.clone()),
                None,
                offer.disk_gb,
                &[],
                move |strategy, fleet, snap, _| {
                    let d = strategy.accept_job(&offer, &miner, snap, fleet);
                    let server = match &d {
                        JobDecision::Deploy { server_id } => Some(server_id.clone()),
                        _ => None,
                    };
                    if let Ok(mut slot) = seen.lock() {
                        *slot = Some(d);
                    }
                    server
                },
            )
            .await?;
        if placed.is_some() {
            return Ok(());
        }
        let decision = decision.lock().ok().and_then(|mut d| d.take());
        match decision {
            Some(JobDecision::Preempt) => {
                self.preempting_deploy(&chute, Some(job)).await?;
            }
            Some(JobDecision::Refuse { why }) => tracing::info!(job = %e.job_id, %why, "job refused"),
            _ => {}
        }
        Ok(())
    }

    async fn instance_created(&self, e: &ev::InstanceEvent) -> Result<(), GepettoError> {
        if !self.ours(&e.miner_hotkey) {
            return Ok(());
        }
        let Some(config_id) = &e.config_id else { return Ok(()) };
        if self.inner.inv.set_instance(DeploymentKey::Config, config_id, &e.instance_id).await?.is_none() {
            // The deploy task stores the config id before it creates the Job, so this is
            // rare (a redelivery racing a restart); remember it for when the row gets it,
            // and the reconciler matches it from the validator's listing otherwise.
            if let Ok(mut early) = self.inner.early.lock() {
                early.insert(config_id.clone(), e.instance_id.clone());
            }
        }
        Ok(())
    }

    /// One GPU leaving the inventory (the original's `gpu_deleted` handler, which
    /// nothing published: here it is a step of `server_deleted`, the only way a GPU
    /// leaves): undeploy its deployment, remove it at the validator, delete the row.
    async fn remove_gpu(&self, gpu_id: &str, validator: Option<&str>) -> Result<(), GepettoError> {
        let Some(gpu) = self.inner.db.gpu(gpu_id).await? else { return Ok(()) };
        if let Some(d) = &gpu.deployment_id {
            self.undeploy(d).await?;
        }
        let validator = validator.map(str::to_owned).or(gpu.validator.clone());
        if let Some(v) = validator.as_deref().and_then(|v| self.inner.validators.get(v)) {
            match v.client.delete_node(gpu_id).await {
                Ok(()) => {}
                // Already gone there (an earlier delivery removed it before the row went,
                // or the validator never registered it): done, or the event could never
                // be acknowledged and the server never removed.
                Err(e) if e.status() == Some(404) => {
                    tracing::info!(gpu = %gpu_id, validator = %v.hotkey, "GPU already unknown to the validator");
                }
                Err(e) => {
                    return Err(GepettoError::Validator {
                        validator: v.hotkey.clone(),
                        reason: format!("removing GPU {gpu_id}: {e}"),
                    });
                }
            }
        }
        self.inner.inv.delete_gpu(gpu_id).await?;
        Ok(())
    }

    async fn server_deleted(&self, server_id: &str) -> Result<(), GepettoError> {
        let Some(server) = self.inner.db.find_server(server_id).await? else { return Ok(()) };
        if server.server_id != server_id {
            return Ok(()); // matched by name: not this event's server
        }
        if let Some(r) = self.recording() {
            r.server_removed(server_id);
        }
        for gpu in self.inner.db.server_gpus(server_id).await? {
            self.remove_gpu(&gpu.gpu_id, Some(&server.validator)).await?;
        }
        for d in self.inner.db.server_deployments(server_id, None).await? {
            self.undeploy(&d.deployment.deployment_id).await?;
        }
        self.inner.inv.delete_server(server_id).await?;
        Ok(())
    }

    // ---- snapshot ----

    /// The fleet as strategies see it: rows plus disk from the cluster watches.
    pub async fn snapshot(&self) -> Result<FleetSnapshot, GepettoError> {
        let rows = self.inner.inv.rows().await?;
        let disk = self.inner.cluster.disk(f64::from(self.inner.cfg.disk_reserve_gb));
        let with_pods = self.inner.cluster.deployments_with_pods();
        let reserved = match self.inner.disk_reserved.lock() {
            Ok(mut r) => {
                // A pod exists: the node's disk counts it from now on.
                r.retain(|d, _| !with_pods.contains(d));
                r.clone()
            }
            Err(_) => HashMap::new(),
        };
        let pending = PendingDisk { with_pods: &with_pods, reserved: &reserved };
        Ok(fleet_from_rows(rows, &disk, &pending, f64::from(self.inner.cfg.default_disk_gb)))
    }

    /// The validators' view merged for strategies.
    pub async fn view(&self) -> ValidatorView {
        let remote = self.inner.remote.read().await;
        let mut view = ValidatorView::default();
        for st in remote.values() {
            for (id, c) in st.chutes.iter().flatten() {
                view.chutes.insert(
                    id.clone(),
                    RemoteChuteInfo {
                        version: c.version.clone(),
                        has_cords: c.has_cords(),
                        effective_compute_multiplier: c.effective_compute_multiplier,
                    },
                );
            }
            view.metrics.extend(st.metrics.iter().map(|(k, v)| (k.clone(), v.clone())));
            view.capped.extend(st.capped.iter().cloned());
            for (k, v) in &st.active_instances {
                view.active_instances.entry(k.clone()).or_default().extend(v.iter().cloned());
            }
        }
        view
    }

    // ---- placement ----

    async fn place<F>(
        &self,
        chute: &Chute,
        job: Option<JobCtx>,
        token: Option<LaunchToken>,
        choose: F,
    ) -> Result<Option<String>, GepettoError>
    where
        F: Fn(&dyn Strategy, &FleetSnapshot, &ChuteSnap, f64) -> Option<String>,
    {
        let disk = f64::from(self.inner.cfg.default_disk_gb);
        self.place_with_disk(chute, job, token, disk, &[], choose).await
    }

    /// Decides and allocates under the placement lock, then runs the deploy in the
    /// background. Returns the new deployment id, `None` when nothing was placed.
    ///
    /// `replacing` are deployments to remove first (preemption's victims, a rolling
    /// update's old instance): they are undeployed under the same lock as the
    /// allocation, so no other placement can take the GPUs they free. Every deploy's
    /// Job is created once no other pod runs on its GPUs ([`Gepetto::wait_gpus_released`]). The decision
    /// is made before any of them is touched, on the fleet as it will be without them:
    /// a plan made earlier, outside the lock, may no longer fit (another placement took
    /// a GPU it counted on, the server was locked), and then nothing is removed.
    async fn place_with_disk<F>(
        &self,
        chute: &Chute,
        job: Option<JobCtx>,
        token: Option<LaunchToken>,
        disk_gb: f64,
        replacing: &[String],
        choose: F,
    ) -> Result<Option<String>, GepettoError>
    where
        F: Fn(&dyn Strategy, &FleetSnapshot, &ChuteSnap, f64) -> Option<String>,
    {
        // Waiting for a deploy slot here (before acking) is the back-pressure that
        // bounds concurrent deploys.
        let permit = self
            .inner
            .deploys
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GepettoError::Invalid("deploys are shutting down".into()))?;
        let guard = self.inner.placement.lock().await;
        let mut decided = None;
        if !replacing.is_empty() {
            // Removing running instances rests on this decision: made on the database's
            // rows, not a copy another replica or the API may have outdated.
            self.inner.inv.reload().await?;
            let mut fleet = self.snapshot().await?;
            fleet.without_deployments(replacing, |d| self.disk_held(d));
            let Some(snap) = fleet.chutes.get(&chute.chute_id) else { return Ok(None) };
            let Some(server_id) = choose(self.inner.strategy.as_ref(), &fleet, snap, disk_gb) else {
                tracing::info!(chute = %chute.chute_id, replacing = ?replacing,
                    "the fleet changed since the plan and it no longer fits; nothing removed");
                return Ok(None);
            };
            for old in replacing {
                self.undeploy(old).await?;
            }
            // The pods of what was just undeployed may still be in the watch (and on
            // the disk): the decision above already counts them gone.
            decided = Some(server_id);
        }
        let deployment_id = miner_k8s::uuid4(rand::random());
        let mut attempt = 0;
        let (new, gpus) = loop {
            attempt += 1;
            let server_id = match decided.take() {
                Some(server_id) => server_id,
                None => {
                    let fleet = self.snapshot().await?;
                    let Some(snap) = fleet.chutes.get(&chute.chute_id) else { return Ok(None) };
                    let Some(server_id) = choose(self.inner.strategy.as_ref(), &fleet, snap, disk_gb) else {
                        return Ok(None);
                    };
                    server_id
                }
            };
            let new = NewDeployment {
                deployment_id: deployment_id.clone(),
                validator: chute.validator.clone(),
                chute_id: chute.chute_id.clone(),
                server_id,
                version: chute.version.clone(),
                job_id: job.as_ref().map(|j| j.job_id.clone()),
                config_id: token.as_ref().map(|t| t.config_id.clone()),
            };
            match self.inner.inv.create_deployment(&new, chute.gpu_count.max(0) as usize).await {
                Ok(gpus) => break (new, gpus),
                Err(DbError::NotEnoughGpus { .. }) => {
                    // Someone else (another replica, a server changed by the API) holds
                    // what the in-memory copy showed free: reload it and decide again, once.
                    tracing::warn!(chute = %chute.chute_id, server = %new.server_id,
                        "the chosen server had no free GPUs left; reloading the inventory");
                    self.inner.inv.reload().await?;
                    if attempt >= 2 {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        let server_id = new.server_id.clone();
        if let Ok(mut reserved) = self.inner.disk_reserved.lock() {
            reserved.insert(deployment_id.clone(), disk_gb);
        }
        drop(guard);
        tracing::info!(chute = %chute.chute_id, server = %server_id, deployment = %deployment_id,
            job = ?new.job_id, "deploying");
        let me = self.clone();
        let chute = chute.clone();
        let dep = deployment_id.clone();
        let replacing = replacing.to_vec();
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            me.wait_gpus_released(&dep, &gpus, &replacing).await;
            if let Err(e) = me.run_deploy(&chute, &dep, &server_id, &gpus, job.clone(), token, disk_gb).await {
                tracing::warn!(deployment = %dep, chute = %chute.chute_id, error = %e, "deploy failed; undoing");
                if let Err(e) = me.undeploy(&dep).await {
                    tracing::warn!(deployment = %dep, error = %e, "undo failed; the reconciler retries");
                }
                if let Some(j) = job {
                    me.release_job(&chute.validator, &j.job_id).await;
                }
            }
        });
        Ok(Some(deployment_id))
    }

    /// Disk a deployment holds on its node: its pods' ephemeral-storage requests, or
    /// what it reserved while it has no pod yet (as [`fleet_from_rows`] counts it).
    fn disk_held(&self, deployment_id: &str) -> f64 {
        let pods = self.inner.cluster.deployment_pods(deployment_id);
        if pods.is_empty() {
            let reserved = self.inner.disk_reserved.lock().ok().and_then(|r| r.get(deployment_id).copied());
            return reserved.unwrap_or(f64::from(self.inner.cfg.default_disk_gb));
        }
        pods.iter().filter(|p| pod_holds_disk(p)).map(|p| pod_ephemeral_gib(p)).sum()
    }

    async fn release_job(&self, validator: &str, job_id: &str) {
        if let Some(v) = self.inner.validators.get(validator)
            && let Err(e) = v.client.release_job(job_id).await
        {
            tracing::warn!(job = %job_id, error = %e, "could not release the job");
        }
    }

    /// Section 11.7: make room by removing lower-value deployments. The launch token
    /// comes first (only one miner holds a job), then the victims go, then the deploy.
    async fn preempting_deploy(&self, chute: &Chute, job: Option<JobCtx>) -> Result<bool, GepettoError> {
        let view = self.view().await;
        let last = self.inner.prometheus.last_invocations().await;
        let fleet = self.snapshot().await?;
        let Some(snap) = fleet.chutes.get(&chute.chute_id) else { return Ok(false) };
        let disk = job.as_ref().map_or(f64::from(self.inner.cfg.default_disk_gb), |j| j.disk_gb);
        let Some(plan) = self.inner.strategy.preempt(snap, &fleet, &view, &last, Utc::now(), disk) else {
            return Ok(false);
        };
        self.carry_out(chute, job, plan, disk).await
    }

    /// Carries out a strategy's rebalance: the same path as a preempting deploy.
    pub(crate) async fn rebalance(&self, r: &crate::strategy::Rebalance) -> Result<bool, GepettoError> {
        let Some(chute) = self.inner.inv.chute(&r.chute_id).await? else { return Ok(false) };
        let disk = f64::from(self.inner.cfg.default_disk_gb);
        self.carry_out(&chute, None, r.plan.clone(), disk).await
    }

    /// A launch token first (a refusal removes nothing), then the victims and the
    /// deploy on the freed server, under one placement lock. A job that could not be
    /// placed goes back to the validator: its launch token was taken, so the event's
    /// redelivery would only hear "already tried".
    async fn carry_out(
        &self,
        chute: &Chute,
        job: Option<JobCtx>,
        plan: crate::strategy::Preemption,
        disk_gb: f64,
    ) -> Result<bool, GepettoError> {
        let token = match self.launch_token(chute, job.as_ref()).await {
            Ok(t) => t,
            Err(why) => {
                tracing::info!(chute = %chute.chute_id, %why, "no launch token; not preempting");
                return Ok(false);
            }
        };
        for victim in &plan.victims {
            tracing::info!(victim = %victim, chute = %chute.chute_id, server = %plan.server_id, "preempting");
        }
        let server = plan.server_id.clone();
        let placed = self
            .place_with_disk(
                chute,
                job.clone(),
                token,
                disk_gb,
                &plan.victims,
                move |_, fleet, snap, disk| {
                    let s = fleet.server(&server)?;
                    // Locked since the plan was made: the operator's word wins.
                    (!s.locked && s.has_disk(disk) && s.free_gpus(&snap.supported_gpus) >= snap.gpu_count)
                        .then(|| server.clone())
                },
            )
            .await;
        if !matches!(placed, Ok(Some(_)))
            && let Some(j) = &job
        {
            self.release_job(&chute.validator, &j.job_id).await;
        }
        Ok(placed?.is_some())
    }

    /// A launch token for chutes >= 0.3.0; `Ok(None)` for legacy chutes.
    async fn launch_token(&self, chute: &Chute, job: Option<&JobCtx>) -> Result<Option<LaunchToken>, String> {
        if !version_at_least(chute.chutes_version.as_deref(), (0, 3, 0)) {
            return Ok(None);
        }
        let link = self.validator(&chute.validator).map_err(|e| e.to_string())?;
        match link.client.launch_config(&chute.chute_id, job.map(|j| j.job_id.as_str())).await {
            Ok(c) => Ok(Some(LaunchToken { token: c.token, config_id: c.config_id })),
            Err(e @ (LaunchError::AtCapacity | LaunchError::AlreadyTried | LaunchError::JobNotFound)) => {
                Err(e.to_string())
            }
            Err(LaunchError::Other(e)) => {
                // A 5xx or a timeout can come after the validator granted the job (chutes-api
                // records the miner in the job's history first): give it back, or it stays
                // locked to this miner until the validator's own timeout. One never granted
                // is answered 404, which costs a log line.
                if let Some(j) = job {
                    self.release_job(&chute.validator, &j.job_id).await;
                }
                Err(e.to_string())
            }
        }
    }

    /// The deploy's launch token (fetched unless preemption got it first), stored on
    /// the row before the Job exists. The inner `Err` is the validator's refusal.
    async fn deploy_token(
        &self,
        chute: &Chute,
        deployment_id: &str,
        job: Option<&JobCtx>,
        token: Option<LaunchToken>,
    ) -> Result<Result<Option<LaunchToken>, String>, GepettoError> {
        let token = match token {
            Some(t) => Some(t),
            None => match self.launch_token(chute, job).await {
                Ok(t) => t,
                Err(why) => return Ok(Err(why)),
            },
        };
        if let Some(t) = &token {
            self.inner.inv.set_deployment_config(deployment_id, &t.config_id).await?;
            let early = self.inner.early.lock().ok().and_then(|mut m| m.remove(&t.config_id));
            if let Some(instance) = early {
                self.inner.inv.set_instance(DeploymentKey::Config, &t.config_id, &instance).await?;
            }
        }
        Ok(Ok(token))
    }

    /// The deployment's Service (an existing one is read back: a retried deploy).
    async fn ensure_service(
        &self,
        chute: &Chute,
        deployment_id: &str,
        extra: &[ExtraPort],
    ) -> Result<Service, GepettoError> {
        let services: Api<Service> = Api::namespaced(self.inner.kube.clone(), &self.inner.cfg.namespace);
        let svc = objects::service(deployment_id, &chute.chute_id, &chute.version, extra)
            .map_err(|e| GepettoError::Invalid(e.to_string()))?;
        match services.create(&PostParams::default(), &svc).await {
            Ok(s) => Ok(s),
            Err(e) if is_status(&e, 409) => services
                .get(&objects::service_name(deployment_id))
                .await
                .map_err(kube_err(format!("reading Service of {deployment_id}"))),
            Err(e) => Err(kube_err(format!("creating Service of {deployment_id}"))(e)),
        }
    }

    /// The deploy of section 11.2 after allocation: token, code, Service, Job, row.
    #[allow(clippy::too_many_arguments)]
    async fn run_deploy(
        &self,
        chute: &Chute,
        deployment_id: &str,
        server_id: &str,
        gpus: &[String],
        job: Option<JobCtx>,
        token: Option<LaunchToken>,
        disk_gb: f64,
    ) -> Result<(), GepettoError> {
        let link = self.validator(&chute.validator)?.clone();
        let server = self
            .inner
            .inv
            .server(server_id)
            .await?
            .ok_or_else(|| GepettoError::Invalid(format!("server {server_id} is gone")))?;
        let extra = {
            let remote = self.inner.remote.read().await;
            let ports = remote
                .get(&chute.validator)
                .and_then(|st| st.chutes.as_ref()?.get(&chute.chute_id).map(|c| c.job_ports()))
                .unwrap_or_default();
            ExtraPort::dedup(ports.into_iter().map(|(p, proto)| ExtraPort::new(p, &proto)))
        };
        let extra = if job.is_some() { extra } else { Vec::new() };
        // The launch token, the Service and the code ConfigMap do not depend on one
        // another: they are made side by side; the Job needs all three.
        let (token, svc, code) = tokio::join!(
            self.deploy_token(chute, deployment_id, job.as_ref(), token),
            self.ensure_service(chute, deployment_id, &extra),
            self.ensure_code(chute, None),
        );
        let token = match token? {
            Ok(t) => t,
            Err(why) => {
                // 423 (at capacity), 403 (tried already), 404 (no such job): not ours to run.
                tracing::info!(chute = %chute.chute_id, deployment = %deployment_id, %why, "validator declined the launch");
                self.undeploy(deployment_id).await?;
                return Ok(());
            }
        };
        let svc = svc?;
        code?;
        let ports = ServicePorts::from_service(&svc, &extra)
            .ok_or_else(|| GepettoError::Invalid(format!("Service of {deployment_id} got no node ports")))?;
        let ip = server.ip_address.clone().unwrap_or_default();
        let spec = ChuteJob {
            deployment_id: deployment_id.to_owned(),
            chute_id: chute.chute_id.clone(),
            version: chute.version.clone(),
            image: chute.image.clone(),
            ref_str: chute.ref_str.clone(),
            filename: chute.filename.clone(),
            chutes_version: chute.chutes_version.clone(),
            gpu_count: i64::from(chute.gpu_count),
            node_name: server.name.clone(),
            server_ip: ip.clone(),
            server_seed: server.seed,
            cpu_per_gpu: i64::from(server.cpu_per_gpu),
            memory_per_gpu: i64::from(server.memory_per_gpu),
            gpu_ids: gpus.to_vec(),
            miner_ss58: self.inner.cfg.miner_ss58.clone(),
            validator_ss58: chute.validator.clone(),
            registry_port: link.registry_port,
            ports: ports.clone(),
            launch: token.clone(),
            job_id: job.as_ref().map(|j| j.job_id.clone()),
            disk_gb: disk_gb.ceil() as u32,
            cache_max_age_days: self.inner.cfg.cache_max_age_days,
            cache_max_size_gb: self
                .inner
                .cfg
                .cache_overrides
                .get(&server.name)
                .copied()
                .unwrap_or(self.inner.cfg.cache_max_size_gb),
            cache_cleaner_image: self.inner.cfg.cache_cleaner_image.clone(),
            pull_secrets: self.inner.cfg.image_pull_secrets.clone(),
        };
        let job_object = spec.build().map_err(|e| GepettoError::Invalid(e.to_string()))?;
        let jobs: Api<Job> = Api::namespaced(self.inner.kube.clone(), &self.inner.cfg.namespace);
        match jobs.create(&PostParams::default(), &job_object).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(kube_err(format!("creating Job of {deployment_id}"))(e)),
        }
        if !self.inner.inv.mark_deployed(deployment_id, &ip, ports.primary).await? {
            // Undeployed while we were creating objects: remove what we made.
            self.delete_objects(deployment_id).await?;
            return Ok(());
        }
        if token.is_none() {
            // Legacy (chutes < 0.3.0): announce; the activator activates once the pod is ready.
            let port = u16::try_from(ports.primary).unwrap_or_default();
            let reply =
                link.client.announce_instance(&chute.chute_id, gpus, &ip, port).await.map_err(|e| {
                    GepettoError::Validator { validator: link.hotkey.clone(), reason: e.to_string() }
                })?;
            if let Some(instance) = reply.get("instance_id").and_then(|v| v.as_str()) {
                self.inner.inv.set_instance(DeploymentKey::Deployment, deployment_id, instance).await?;
            }
        }
        tracing::info!(deployment = %deployment_id, chute = %chute.chute_id, node = %server.name, "chute Job applied");
        Ok(())
    }

    /// Section 11.2 undeploy, in the documented order: row (frees the GPUs, stamps
    /// the audit), validator instance, Job (else a legacy Deployment), Service.
    /// Idempotent: every step tolerates "already gone".
    pub async fn undeploy(&self, deployment_id: &str) -> Result<(), GepettoError> {
        if let Ok(mut reserved) = self.inner.disk_reserved.lock() {
            reserved.remove(deployment_id);
        }
        if let Some(row) = self.inner.inv.take_deployment(deployment_id).await?
            && let Some(instance) = &row.instance_id
            && let Some(v) = self.inner.validators.get(&row.validator)
            && let Err(e) = v.client.delete_instance(&row.chute_id, instance).await
        {
            // The reconciler purges instances the validator still lists.
            tracing::warn!(deployment = %deployment_id, instance = %instance, error = %e, "validator instance not deleted");
        }
        self.delete_objects(deployment_id).await
    }

    /// Undeploy's last step (reference 11.2), run before a deploy's Job is created:
    /// until no other pod runs on one of its GPUs, at most `pod_exit_wait`. A GPU is
    /// free in the inventory the moment its deployment's row goes (a preemption's
    /// victim, a rolling update's old instance, an instance the validator removed), but
    /// the pod takes its grace period to stop, and nothing else keeps a new pod off it:
    /// chute pods are pinned to GPUs by `NVIDIA_VISIBLE_DEVICES` and `nodeName`, not by
    /// an `nvidia.com/gpu` request the scheduler would count. Reads the pod watch (a
    /// condition, not a fixed sleep; no wait when no pod holds them); at the bound it
    /// logs and goes on. The pods of `replacing` are waited for whatever their env says:
    /// an instance from before 2025-07-17 (a legacy Deployment) got its GPUs through an
    /// `nvidia.com/gpu` request, with no `NVIDIA_VISIBLE_DEVICES` in its spec.
    pub(crate) async fn wait_gpus_released(
        &self,
        deployment_id: &str,
        gpu_ids: &[String],
        replacing: &[String],
    ) {
        let wait = self.inner.cfg.pod_exit_wait;
        let devices: Vec<String> = gpu_ids.iter().filter_map(|g| objects::gpu_device(g).ok()).collect();
        if (devices.is_empty() && replacing.is_empty()) || wait.is_zero() {
            return;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut left = self.inner.cluster.pods_on_gpus(&devices, deployment_id);
            for old in replacing {
                left.extend(
                    self.inner.cluster.deployment_pods(old).iter().filter_map(|p| p.metadata.name.clone()),
                );
            }
            left.sort_unstable();
            left.dedup();
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(deployment = %deployment_id, pods = ?left, waited = ?wait,
                    "pods of removed deployments still run on this deployment's GPUs; going on");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn delete_objects(&self, deployment_id: &str) -> Result<(), GepettoError> {
        let ns = &self.inner.cfg.namespace;
        let jobs: Api<Job> = Api::namespaced(self.inner.kube.clone(), ns);
        let name = objects::job_name(deployment_id);
        match jobs.delete(&name, &foreground()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {
                // Instances from before 2025-07-17 ran as apps/v1 Deployments.
                let legacy: Api<KubeDeployment> = Api::namespaced(self.inner.kube.clone(), ns);
                match legacy.delete(&name, &foreground()).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(kube_err(format!("deleting Deployment {name}"))(e)),
                }
            }
            Err(e) => return Err(kube_err(format!("deleting Job {name}"))(e)),
        }
        let services: Api<Service> = Api::namespaced(self.inner.kube.clone(), ns);
        let svc = objects::service_name(deployment_id);
        match services.delete(&svc, &foreground()).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(kube_err(format!("deleting Service {svc}"))(e)),
        }
    }

    /// Scale a chute up by one through the strategy (autoscaler); true when placed.
    pub(crate) async fn scale_up(
        &self,
        chute_id: &str,
        server_hint: Option<String>,
    ) -> Result<bool, GepettoError> {
        let Some(chute) = self.inner.inv.chute(chute_id).await? else { return Ok(false) };
        let placed = self
            .place(&chute, None, None, move |strategy, fleet, snap, disk| match &server_hint {
                Some(id) => fleet
                    .server(id)
                    .filter(|s| {
                        !s.locked && s.free_gpus(&snap.supported_gpus) >= snap.gpu_count && s.has_disk(disk)
                    })
                    .map(|s| s.server_id.clone())
                    .or_else(|| strategy.scale_up_server(snap, fleet, disk)),
                None => strategy.scale_up_server(snap, fleet, disk),
            })
            .await?;
        Ok(placed.is_some())
    }
}

fn foreground() -> DeleteParams {
    DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..DeleteParams::default() }
}

fn background() -> DeleteParams {
    DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() }
}

/// Builds the strategies' snapshot from database rows and the cluster's disk
/// accounting. Deployments whose Job has no pod yet still hold their disk
/// (`pending_disk_gb` each), so a burst of deploys cannot overfill a node.
/// What the nodes' disk does not count yet: deployments with no pod (placed, their Job
/// still to be made or its pod still to be created), each holding what it was placed
/// with, else the default.
pub struct PendingDisk<'a> {
    /// Deployments with a pod (any phase): the node's disk has counted it, or it ended.
    pub with_pods: &'a HashSet<String>,
    /// The disk each deployment was placed with, where known.
    pub reserved: &'a HashMap<String, f64>,
}

pub fn fleet_from_rows(
    rows: FleetRows,
    disk: &HashMap<String, miner_k8s::DiskUsage>,
    pending_disk: &PendingDisk<'_>,
    default_disk_gb: f64,
) -> FleetSnapshot {
    let FleetRows { servers, gpus, deployments, chutes, private_chutes } = rows;
    let mut gpu_counts: HashMap<&str, usize> = HashMap::new();
    for g in &gpus {
        if let Some(d) = &g.deployment_id {
            *gpu_counts.entry(d.as_str()).or_default() += 1;
        }
    }
    let deployment_snaps: Vec<DeploymentSnap> = deployments
        .iter()
        .map(|d| DeploymentSnap {
            deployment_id: d.deployment_id.clone(),
            chute_id: d.chute_id.clone(),
            version: d.version.clone(),
            validator: d.validator.clone(),
            server_id: d.server_id.clone(),
            gpu_count: gpu_counts.get(d.deployment_id.as_str()).copied().unwrap_or(0),
            job_id: d.job_id.clone(),
            instance_id: d.instance_id.clone(),
            active: d.active,
            stub: d.stub,
            verified_at: d.verified_at,
            activated_at: d.activated_at,
            created_at: d.created_at,
            preemptible: d.preemptible,
        })
        .collect();
    let mut by_server: HashMap<String, Vec<GpuSnap>> = HashMap::new();
    for g in gpus {
        by_server.entry(g.server_id.clone()).or_default().push(GpuSnap {
            gpu_id: g.gpu_id,
            model: g.model_short_ref,
            verified: g.verified,
            deployment_id: g.deployment_id,
        });
    }
    let mut pending: HashMap<&str, f64> = HashMap::new();
    for d in &deployments {
        if !pending_disk.with_pods.contains(&d.deployment_id) {
            let gb = pending_disk.reserved.get(&d.deployment_id).copied().unwrap_or(default_disk_gb);
            *pending.entry(d.server_id.as_str()).or_default() += gb;
        }
    }
    let server_snaps = servers
        .into_iter()
        .map(|s| ServerSnap {
            disk_available_gb: disk.get(&s.name).map(|u| {
                (u.available_gib - pending.get(s.server_id.as_str()).copied().unwrap_or(0.0)).max(0.0)
            }),
            gpus: by_server.remove(&s.server_id).unwrap_or_default(),
            server_id: s.server_id,
            name: s.name,
            validator: s.validator,
            hourly_cost: s.hourly_cost,
            locked: s.locked,
        })
        .collect();
    let private: HashSet<String> = private_chutes.into_iter().collect();
    FleetSnapshot {
        servers: server_snaps,
        deployments: deployment_snaps,
        chutes: chutes
            .into_iter()
            .map(|c| {
                (
                    c.chute_id.clone(),
                    ChuteSnap {
                        preemptible: !private.contains(&c.chute_id),
                        chute_id: c.chute_id,
                        validator: c.validator,
                        version: c.version,
                        supported_gpus: c.supported_gpus,
                        gpu_count: c.gpu_count.max(0) as usize,
                        banned: c.ban_reason.is_some(),
                        chutes_version: c.chutes_version,
                    },
                )
            })
            .collect(),
    }
}

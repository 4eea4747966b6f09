//! The three loops of reference 11.1 — activator, autoscaler, reconciler — and
//! [`Gepetto::run`], which starts them beside the event consumer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment as KubeDeployment;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use miner_k8s::chute::{self as objects, version_at_least};
use miner_validator::rest::{Listing, RemoteChute, RemoteInstance, RemoteMetrics};
use tokio_util::sync::CancellationToken;

use crate::cluster::{job_finished, job_succeeded, pods_ready};
use crate::controller::{Gepetto, GepettoError, RemoteState};
use crate::snapshot::{FleetSnapshot, ValidatorView};
use crate::strategy::AutoscaleMode;

/// How long a deployed Job may go without the validator listing an instance for it before
/// reconcile undeploys it (the original's 30 minutes, 11.8 step 7).
pub const NO_INSTANCE_GRACE: Duration = Duration::from_secs(30 * 60);

/// An item of `/miner/images/`: what reconcile's image sync (reference 11.8 step 6)
/// needs of it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RemoteImage {
    pub image_id: String,
    #[serde(alias = "user")]
    pub username: String,
    pub name: String,
    pub tag: String,
    #[serde(default)]
    pub patch_version: Option<String>,
    #[serde(default)]
    pub chutes_version: Option<String>,
}

impl RemoteImage {
    /// `user/name:tag`, with `-<patch_version>` unless the patch is `initial`.
    pub fn reference(&self) -> String {
        match self.patch_version.as_deref() {
            Some(p) if !p.is_empty() && p != "initial" => {
                format!("{}/{}:{}-{}", self.username, self.name, self.tag, p)
            }
            _ => format!("{}/{}:{}", self.username, self.name, self.tag),
        }
    }
}

/// What one reconcile pass repaired, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReconcileReport {
    /// `(deployment_id, why)` for every deployment removed.
    pub undeployed: Vec<(String, String)>,
    /// Deployment ids whose Job/Service had no row and were deleted.
    pub orphans_deleted: Vec<String>,
    pub instances_filled: usize,
    pub instances_purged: usize,
    pub chutes_updated: usize,
    pub chutes_deleted: usize,
    pub servers_deleted: usize,
    /// Chutes whose image or chutes version followed the validator's image (11.8 step 6).
    pub images_synced: usize,
    /// Remote chutes that had no local row and were created (11.8 step 11).
    pub chutes_created: Vec<String>,
    /// Chutes placed again because their deploy died with a previous process.
    pub redeployed: Vec<String>,
}

impl Gepetto {
    /// Refreshes the validator listings. `full` adds chutes, instances and rolling
    /// updates (the reconciler's); the autoscaler only needs metrics, utilization and
    /// active instances. A listing that fails keeps the previous one.
    pub async fn refresh(&self, full: bool) {
        for (hotkey, link) in &self.inner.validators {
            let c = &link.client;
            let (metrics, utilization, active) = tokio::join!(
                c.typed_listing::<RemoteMetrics>(Listing::Metrics),
                c.utilization_typed(),
                c.active_instances()
            );
            let (chutes, instances, rolling, images) = if full {
                let (a, b, r, i) = tokio::join!(
                    c.typed_listing::<RemoteChute>(Listing::Chutes),
                    c.typed_listing::<RemoteInstance>(Listing::Instances),
                    c.rolling_updates(),
                    c.typed_listing::<RemoteImage>(Listing::Images)
                );
                (Some(a), Some(b), Some(r), Some(i))
            } else {
                (None, None, None, None)
            };
            let mut remote = self.inner.remote.write().await;
            let st = remote.entry(hotkey.clone()).or_default();
            match metrics {
                Ok(Some(m)) => st.metrics = m.into_iter().map(|m| (m.chute_id.clone(), m)).collect(),
                Ok(None) => {}
                Err(e) => tracing::warn!(validator = %hotkey, error = %e, "metrics listing failed"),
            }
            match utilization {
                Ok(u) => {
                    st.updating = Some(
                        u.iter()
                            .filter(|u| u.update_in_progress == Some(true))
                            .map(|u| u.chute_id.clone())
                            .collect(),
                    );
                    st.capped = u.into_iter().filter(|u| u.capped()).map(|u| u.chute_id).collect();
                }
                Err(e) => tracing::debug!(validator = %hotkey, error = %e, "utilization unavailable"),
            }
            match active {
                Ok(Some(a)) => {
                    st.active_instances = HashMap::new();
                    for i in a {
                        st.active_instances.entry(i.chute_id.clone()).or_default().push(i);
                    }
                }
                Ok(None) => {}
                // Older validators lack it; the heuristic falls back to metrics counts.
                Err(e) => tracing::debug!(validator = %hotkey, error = %e, "active instances unavailable"),
            }
            match chutes {
                Some(Ok(Some(list))) => {
                    // Chutes that existed before the recording started (or were missed)
                    // come in here; the recording writes only those it has not seen.
                    if let Some(rec) = self.recording() {
                        for c in &list {
                            rec.chute(c);
                        }
                    }
                    st.chutes = Some(list.into_iter().map(|c| (c.chute_id.clone(), c)).collect());
                    st.chutes_listed = true;
                }
                Some(Err(e)) => tracing::warn!(validator = %hotkey, error = %e, "chutes listing failed"),
                _ => {}
            }
            match instances {
                Some(Ok(Some(list))) => {
                    st.instances = Some(list.into_iter().map(|i| (i.instance_id.clone(), i)).collect())
                }
                Some(Err(e)) => {
                    // Without an authoritative list no instance is judged missing this pass.
                    st.instances = None;
                    tracing::warn!(validator = %hotkey, error = %e, "instances listing failed");
                }
                _ => {}
            }
            match images {
                Some(Ok(Some(list))) => {
                    st.images = Some(list.into_iter().map(|i| (i.image_id.clone(), i)).collect())
                }
                Some(Err(e)) => tracing::warn!(validator = %hotkey, error = %e, "images listing failed"),
                _ => {}
            }
            match rolling {
                Some(Ok(r)) => {
                    st.rolling =
                        Some(r.iter().filter_map(|v| v["chute_id"].as_str().map(str::to_owned)).collect())
                }
                Some(Err(e)) => {
                    // Without it, every instance of a chute mid-update would read as "moved".
                    st.rolling = None;
                    tracing::warn!(validator = %hotkey, error = %e, "rolling updates listing failed");
                }
                None => {}
            }
        }
    }

    /// Whether a deployment row names this instance (by config or instance id) now. A
    /// deploy stores its config id before its Job exists, so any instance of it a listing
    /// shows is found here.
    async fn has_row_for(&self, i: &RemoteInstance) -> Result<bool, GepettoError> {
        use miner_db::DeploymentKey;
        if let Some(c) = &i.config_id
            && !self.inner.db.deployments_where(DeploymentKey::Config, c).await?.is_empty()
        {
            return Ok(true);
        }
        Ok(!self.inner.db.deployments_where(DeploymentKey::Instance, &i.instance_id).await?.is_empty())
    }

    /// One autoscaler tick (11.5 / 20.7); returns how many instances it placed.
    pub async fn autoscale_once(&self) -> Result<usize, GepettoError> {
        self.refresh(false).await;
        // Servers the API added or locked since the last tick come in here.
        self.inner.inv.reload().await?;
        let view = self.view().await;
        let fleet = self.snapshot().await?;
        if let Some(rec) = self.recording() {
            self.record_tick(rec, &view, &fleet).await;
        }
        let disk = f64::from(self.inner.cfg.default_disk_gb);
        let candidates = self.inner.strategy.autoscale(&fleet, &view, disk);
        let mode = self.inner.strategy.autoscale_mode();
        for c in candidates {
            if self.scale_up(&c.chute_id, Some(c.server_id.clone())).await? {
                tracing::info!(chute = %c.chute_id, server = %c.server_id, value = c.value, "autoscaler scaled up");
                return Ok(1);
            }
            if mode == AutoscaleMode::BestOnly {
                break;
            }
        }
        // Nothing placed: move GPUs from instances that earn little to a chute that
        // would earn much more, if the strategy sees one (one per tick). A scale-up that
        // returned false placed nothing, so the snapshot taken above still holds.
        let Some(r) = self.inner.strategy.rebalance(&fleet, &view, Utc::now(), disk) else { return Ok(0) };
        tracing::info!(chute = %r.chute_id, server = %r.plan.server_id, victims = ?r.plan.victims, "rebalancing");
        Ok(usize::from(self.rebalance(&r).await?))
    }

    /// What the recording takes from an autoscaler tick: new servers, the validator's
    /// figures, rolling updates and node outages.
    async fn record_tick(
        &self,
        rec: &crate::recording::Recording,
        view: &ValidatorView,
        fleet: &FleetSnapshot,
    ) {
        rec.servers(fleet, || self.inner.cluster.disk(f64::from(self.inner.cfg.disk_reserve_gb)));
        // Known only once every validator's utilization listing has answered: before that
        // (a restart whose first listing failed), an update the recording continues from
        // before the restart has not ended, it is just not seen yet.
        let updating = updating_everywhere(&*self.inner.remote.read().await, self.inner.validators.keys());
        let nodes = self.inner.cluster.nodes();
        let down = fleet
            .servers
            .iter()
            .filter(|s| nodes.get(&s.name).is_some_and(|n| !node_ready(n)))
            .map(|s| s.server_id.clone())
            .collect();
        rec.observe(view, fleet, updating.as_ref(), &down);
    }

    /// One activator tick: legacy (chutes < 0.3.0) instances whose pod is ready are
    /// activated at the validator (newer ones activate themselves via the JWT flow).
    pub async fn activate_once(&self) -> Result<usize, GepettoError> {
        let rows = self.inner.inv.rows().await?;
        let chutes: HashMap<&str, &miner_db::Chute> =
            rows.chutes.iter().map(|c| (c.chute_id.as_str(), c)).collect();
        let mut n = 0;
        for d in rows.deployments.iter().filter(|d| !d.active && !d.stub) {
            let (Some(instance), Some(chute)) = (&d.instance_id, chutes.get(d.chute_id.as_str())) else {
                continue;
            };
            if version_at_least(chute.chutes_version.as_deref(), (0, 3, 0)) {
                continue;
            }
            if !pods_ready(&self.inner.cluster.deployment_pods(&d.deployment_id)) {
                continue;
            }
            let Some(link) = self.inner.validators.get(&d.validator) else { continue };
            match link.client.activate_instance(&d.chute_id, instance).await {
                Ok(_) => {
                    self.inner.inv.activate_instance(None, instance).await?;
                    n += 1;
                }
                Err(e) => tracing::warn!(deployment = %d.deployment_id, error = %e, "activation failed"),
            }
        }
        Ok(n)
    }

    /// One reconcile pass (11.8): repairs drift between the database, the cluster
    /// and the validator in both directions.
    pub async fn reconcile_once(&self) -> Result<ReconcileReport, GepettoError> {
        let mut report = ReconcileReport::default();
        // Cluster first, rows second: a Job seen here had its row created before it,
        // so it is an orphan only if that row is gone by the time rows are read.
        let jobs = self.inner.cluster.chute_jobs();
        let services = self.inner.cluster.chute_services();
        let rows = self.inner.db.fleet_rows().await?;
        // The validator's listings last: whatever a row says was learned from the
        // validator before the rows were read, so a listing made after them knows it
        // too. A listing made before (listings stream for seconds) would miss an
        // instance or a chute version an event stored in between, and the row would be
        // judged gone at the validator and undeployed, or its chute reverted.
        self.refresh(true).await;
        let remote: HashMap<String, RemoteState> = self.inner.remote.read().await.clone();
        let now = Utc::now();
        let grace =
            chrono::Duration::from_std(self.inner.cfg.stub_grace).unwrap_or(chrono::Duration::minutes(10));
        let job_api: Api<Job> = Api::namespaced(self.inner.kube.clone(), &self.inner.cfg.namespace);
        let legacy_api: Api<KubeDeployment> =
            Api::namespaced(self.inner.kube.clone(), &self.inner.cfg.namespace);
        let mut known: HashSet<String> = HashSet::new();
        let mut ours_instances: HashSet<String> = HashSet::new();
        let mut ours_configs: HashSet<String> = HashSet::new();
        let mut dead_stubs: Vec<String> = Vec::new();
        for d in &rows.deployments {
            known.insert(d.deployment_id.clone());
            let st = remote.get(&d.validator);
            let mut instance = d.instance_id.clone();
            if instance.is_none()
                && let (Some(cfg), Some(instances)) = (&d.config_id, st.and_then(|s| s.instances.as_ref()))
                && let Some(found) = instances.values().find(|i| i.config_id.as_deref() == Some(cfg))
            {
                self.inner.inv.set_instance(miner_db::DeploymentKey::Config, cfg, &found.instance_id).await?;
                instance = Some(found.instance_id.clone());
                report.instances_filled += 1;
            }
            if let Some(i) = &instance {
                ours_instances.insert(i.clone());
            }
            if let Some(c) = &d.config_id {
                ours_configs.insert(c.clone());
            }
            let mut why: Option<String> = None;
            if let (Some(i), Some(instances)) = (&instance, st.and_then(|s| s.instances.as_ref()))
                && !instances.contains_key(i)
            {
                why = Some("the validator no longer knows its instance".into());
            }
            if why.is_none()
                && d.job_id.is_none()
                && let Some(st) = st
                && st.chutes_listed
                && let Some(chutes) = &st.chutes
                && st.rolling.as_ref().is_some_and(|r| !r.contains(&d.chute_id))
            {
                match chutes.get(&d.chute_id) {
                    None => why = Some("its chute is gone at the validator".into()),
                    Some(c) if c.version != d.version => {
                        why = Some(format!("its chute moved from version {} to {}", d.version, c.version))
                    }
                    _ => {}
                }
            }
            // A validator job whose chute did not run to completion here goes back to
            // the validator, so another miner (or this one) can take it again; one that
            // completed stays with us, and the validator's own `job_deleted` ends it.
            let mut give_back_job = d.stub;
            let age = d.created_at.map(|c| now - c).unwrap_or_default();
            if why.is_none() {
                match jobs.get(&d.deployment_id) {
                    Some(job) => {
                        why = job_finished(job, &self.inner.cluster.deployment_pods(&d.deployment_id));
                        give_back_job |= why.is_some() && !job_succeeded(job);
                        // A chute registers its instance as it starts; a Job that has none
                        // after NO_INSTANCE_GRACE (its pod stuck Pending on an image pull
                        // or a node, say) would hold its GPUs for ever (11.8 step 7). Only
                        // judged against an instances listing that answered, which would
                        // have filled the instance above.
                        if why.is_none()
                            && instance.is_none()
                            && st.is_some_and(|s| s.instances.is_some())
                            && age.to_std().is_ok_and(|age| age >= NO_INSTANCE_GRACE)
                        {
                            why = Some(format!(
                                "no instance {} min after its deploy",
                                NO_INSTANCE_GRACE.as_secs() / 60
                            ));
                            give_back_job = true;
                        }
                    }
                    None => {
                        if d.stub && age >= grace {
                            why = Some("its deploy never created a Job".into());
                            if d.job_id.is_none() {
                                dead_stubs.push(d.chute_id.clone());
                            }
                        } else if !d.stub {
                            // The watch may lag a Job created a moment ago: ask before acting.
                            let name = objects::job_name(&d.deployment_id);
                            let kube_err = |what: String| move |e| GepettoError::Kube { what, source: e };
                            // Instances from before 2025-07-17 run as apps/v1 Deployments
                            // of the same name: kept, as the original's reconcile keeps them.
                            if job_api
                                .get_opt(&name)
                                .await
                                .map_err(kube_err(format!("reading Job {name}")))?
                                .is_none()
                                && legacy_api
                                    .get_opt(&name)
                                    .await
                                    .map_err(kube_err(format!("reading Deployment {name}")))?
                                    .is_none()
                            {
                                why = Some("its Job is gone".into());
                                // A finished Job is deleted 300 s after it ends (its TTL),
                                // so after a longer downtime "gone" may be a success. A job
                                // that never activated never ran: give it back. One that
                                // did has an outcome we cannot read any more; handing a
                                // completed job back could cost its pay, so the
                                // validator's own `job_deleted` (or its timeout) ends it.
                                give_back_job = d.activated_at.is_none();
                            }
                        }
                    }
                }
            }
            if let Some(why) = why {
                tracing::info!(deployment = %d.deployment_id, chute = %d.chute_id, %why, "reconcile: undeploying");
                self.undeploy(&d.deployment_id).await?;
                if give_back_job
                    && let Some(job) = &d.job_id
                    && let Some(link) = self.inner.validators.get(&d.validator)
                {
                    match link.client.release_job(job).await {
                        Ok(_) => {
                            tracing::info!(job = %job, deployment = %d.deployment_id, "released the job")
                        }
                        Err(e) => tracing::warn!(job = %job, error = %e, "could not release the job"),
                    }
                }
                report.undeployed.push((d.deployment_id.clone(), why));
            }
        }
        // A deploy that died with a previous process was acknowledged: place it again,
        // so the event that asked for it is not lost (jobs were released above and
        // come back from the validator).
        for chute_id in dead_stubs {
            let fleet = self.snapshot().await?;
            let Some(chute) = fleet.chutes.get(&chute_id) else { continue };
            if fleet.non_job_count(chute) == 0 && self.scale_up(&chute_id, None).await? {
                report.redeployed.push(chute_id);
            }
        }
        let orphans: HashSet<&String> =
            jobs.keys().chain(services.keys()).filter(|id| !known.contains(*id)).collect();
        for id in orphans {
            tracing::info!(deployment = %id, "reconcile: deleting a Job/Service with no deployment row");
            self.undeploy(id).await?;
            report.orphans_deleted.push(id.clone());
        }
        // Validator instances that are ours by neither instance nor config id.
        for (hotkey, st) in &remote {
            let (Some(instances), Some(link)) = (&st.instances, self.inner.validators.get(hotkey)) else {
                continue;
            };
            for i in instances.values() {
                let ours = ours_instances.contains(&i.instance_id)
                    || i.config_id.as_ref().is_some_and(|c| ours_configs.contains(c));
                // A deploy placed while this pass ran is in neither set: its row came after
                // `rows` was read. Only such candidates are looked up again.
                let ours = ours || self.has_row_for(i).await?;
                if !ours && let Some(chute) = &i.chute_id {
                    match link.client.delete_instance(chute, &i.instance_id).await {
                        Ok(_) => report.instances_purged += 1,
                        Err(e) => {
                            tracing::warn!(instance = %i.instance_id, error = %e, "purging instance failed")
                        }
                    }
                }
            }
        }
        // Chutes: gone remotely → chute_deleted; version moved → refetch.
        for c in &rows.chutes {
            let Some(st) = remote.get(&c.validator) else { continue };
            let Some(chutes) = &st.chutes else { continue };
            if !st.chutes_listed || st.rolling.as_ref().is_none_or(|r| r.contains(&c.chute_id)) {
                continue;
            }
            match chutes.get(&c.chute_id) {
                None => {
                    self.handle(&miner_events::Event::ChuteDeleted(miner_events::payloads::ChuteDeleted {
                        chute_id: c.chute_id.clone(),
                        version: Some(c.version.clone()),
                        validator: c.validator.clone(),
                    }))
                    .await?;
                    report.chutes_deleted += 1;
                }
                Some(r) if r.version != c.version => {
                    self.ensure_chute(&c.validator, &c.chute_id, &r.version, true).await?;
                    report.chutes_updated += 1;
                }
                _ => {}
            }
        }
        // Remote chutes with no local row (and not mid-update): created as
        // `chute_created` would (11.8 step 11), from the listing's record.
        let local: HashSet<&str> = rows.chutes.iter().map(|c| c.chute_id.as_str()).collect();
        for (hotkey, st) in &remote {
            let Some(chutes) = &st.chutes else { continue };
            let mut missing: Vec<&RemoteChute> = chutes
                .values()
                .filter(|r| {
                    !local.contains(r.chute_id.as_str())
                        && st.rolling.as_ref().is_some_and(|rolling| !rolling.contains(&r.chute_id))
                })
                .collect();
            missing.sort_by(|a, b| a.chute_id.cmp(&b.chute_id));
            for r in missing {
                let chute = match self.store_remote_chute(hotkey, r).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(chute = %r.chute_id, error = %e, "reconcile: remote chute not stored");
                        continue;
                    }
                };
                tracing::info!(chute = %r.chute_id, version = %r.version, "reconcile: creating a chute missing here");
                self.deploy_new_chute(&chute, Some(&r.code), !r.has_cords()).await?;
                report.chutes_created.push(r.chute_id.clone());
            }
        }
        // Image sync (11.8 step 6): a chute follows its remote image's reference and
        // chutes version (the validator rebuilds images in place, with a new patch).
        // After the creations above, so a chute just created follows its image too.
        for c in &self.inner.inv.rows().await?.chutes {
            let Some(st) = remote.get(&c.validator) else { continue };
            let Some(image) = st
                .chutes
                .as_ref()
                .and_then(|chutes| chutes.get(&c.chute_id))
                .filter(|r| r.version == c.version)
                .and_then(|r| r.image_id.as_ref())
                .and_then(|id| st.images.as_ref()?.get(id))
            else {
                continue;
            };
            let reference = image.reference();
            let version_moved = image.chutes_version.is_some() && image.chutes_version != c.chutes_version;
            if reference != c.image || version_moved {
                tracing::info!(chute = %c.chute_id, from = %c.image, to = %reference, "reconcile: image sync");
                self.inner
                    .inv
                    .update_chute_images(
                        std::slice::from_ref(&c.chute_id),
                        &reference,
                        image.chutes_version.as_deref(),
                    )
                    .await?;
                report.images_synced += 1;
            }
        }
        // Servers whose node left the cluster.
        let nodes = self.inner.cluster.nodes();
        if !nodes.is_empty() {
            for s in &rows.servers {
                let present = nodes.values().any(|n| n.metadata.uid.as_deref() == Some(s.server_id.as_str()));
                if !present {
                    tracing::info!(server = %s.name, "reconcile: the node is gone; removing the server");
                    self.handle(&miner_events::Event::ServerDeleted(miner_events::payloads::ServerDeleted {
                        server_id: s.server_id.clone(),
                    }))
                    .await?;
                    report.servers_deleted += 1;
                }
            }
        }
        // The database is the authority: the in-memory copy starts again from it.
        self.forget_code_maps();
        self.inner.inv.reload().await?;
        Ok(report)
    }

    /// Runs everything until `shutdown`: one reconcile first, the three loops, and
    /// the event consumer; then waits (bounded) for deploys in flight.
    pub async fn run(self, consumer: miner_events::Consumer, shutdown: CancellationToken) {
        if !self.inner.cluster.ready().await {
            tracing::warn!("cluster watches stopped before their first listing");
        }
        let cfg = &self.inner.cfg;
        let mut loops = Vec::new();
        for (name, every) in [
            ("activator", cfg.activator_interval),
            ("autoscaler", cfg.autoscaler_interval),
            ("reconciler", cfg.reconcile_interval),
        ] {
            let me = self.clone();
            let stop = shutdown.clone();
            loops.push(tokio::spawn(async move {
                // The reconciler runs once at start-up (beside the consumer, so a slow
                // validator does not delay events), then every interval.
                let mut first = name == "reconciler";
                loop {
                    if !first {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(every) => {}
                        }
                    }
                    first = false;
                    let outcome = match name {
                        "activator" => me.activate_once().await.map(|n| format!("{n} activated")),
                        "autoscaler" => me.autoscale_once().await.map(|n| format!("{n} placed")),
                        _ => me.reconcile_once().await.map(|r| format!("{r:?}")),
                    };
                    match outcome {
                        Ok(what) => tracing::debug!(loop_name = name, %what, "tick"),
                        Err(e) => tracing::warn!(loop_name = name, error = %e, "tick failed"),
                    }
                }
            }));
        }
        let me = self.clone();
        consumer
            .run(
                move |d: miner_events::Delivery| {
                    let me = me.clone();
                    tracing::info!(
                        stream_id = %d.id,
                        event_id = %d.event_id,
                        attempt = d.attempt,
                        event_type = %d.event.event_type,
                        event_data = %d.event.event_data,
                        "event received"
                    );
                    async move { me.handle_entry(&d.event).await }
                },
                shutdown.clone(),
            )
            .await;
        for l in loops {
            let _ = l.await;
        }
        self.inner.tasks.close();
        if tokio::time::timeout(Duration::from_secs(30), self.inner.tasks.wait()).await.is_err() {
            tracing::warn!("deploys still running at exit; the next reconcile cleans up after them");
        }
    }
}

/// The chutes mid-update at any of `hotkeys`' validators; `None` while one of them has
/// no answered utilization listing yet (whether its chutes are updating is unknown).
fn updating_everywhere<'a>(
    remote: &HashMap<String, RemoteState>,
    hotkeys: impl IntoIterator<Item = &'a String>,
) -> Option<HashSet<String>> {
    hotkeys.into_iter().try_fold(HashSet::new(), |mut all, hotkey| {
        all.extend(remote.get(hotkey)?.updating.as_ref()?.iter().cloned());
        Some(all)
    })
}

/// A node whose `Ready` condition is `True` (a node that never reported is not down).
fn node_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_none_or(|c| c.iter().filter(|c| c.type_ == "Ready").all(|c| c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_unknown_until_every_validators_utilization_listing_has_answered() {
        let hotkeys = ["5A".to_owned(), "5B".to_owned()];
        let answered = |ids: &[&str]| RemoteState {
            updating: Some(ids.iter().map(|id| (*id).to_owned()).collect()),
            ..RemoteState::default()
        };
        let mut remote = HashMap::from([("5A".to_owned(), answered(&["llm"]))]);
        assert_eq!(updating_everywhere(&remote, &hotkeys), None, "5B never refreshed");
        remote.insert("5B".into(), RemoteState::default());
        assert_eq!(updating_everywhere(&remote, &hotkeys), None, "5B's listings answered, not utilization");
        remote.insert("5B".into(), answered(&["tts"]));
        let both = updating_everywhere(&remote, &hotkeys);
        assert_eq!(both, Some(HashSet::from(["llm".to_owned(), "tts".to_owned()])));
        remote.insert("5B".into(), answered(&[]));
        assert_eq!(updating_everywhere(&remote, &hotkeys), Some(HashSet::from(["llm".to_owned()])));
    }
}

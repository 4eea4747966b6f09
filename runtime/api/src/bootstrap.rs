//! The add-node steps (section 6.3) against Kubernetes, GraVal's bootstrap server
//! and the validator: [`KubeBootstrap`] is the [`NodeBootstrap`] the API runs with.
//!
//! 1. Track: label the node (`gpu-short-ref`, `chutes/validator`, `chutes/worker`),
//!    require it Ready, derive the per-GPU resources (section 13), insert the server.
//! 2. GraVal: refuse when a GraVal Job already runs for this node, create its
//!    NodePort Service and Job, remember the node port.
//! 3. Wait until the GraVal pod is Running and ready, fetch `/devices` (signed by
//!    the miner, purpose `graval`), check the count, insert the GPUs unverified.
//! 4. Advertise the GPUs to the validator (`POST /nodes/`), store the seed.
//! 5. Poll `verification_status` until it is no longer pending.
//! 6. Always remove the GraVal Job and Service; on success mark the GPUs verified;
//!    on failure delete the server row and tell the validator to drop each GPU.
//!
//! Fixes over the original: the existing-Job check uses the labels GraVal Jobs
//! really carry (`app=graval,graval-node=<node>`; the original's selector never
//! matched); a node without `chutes/external-ip` or without GPUs is refused before
//! anything is created; a missing `nvidia.com/gpu.memory` label no longer gives
//! `memory_per_gpu = 0`; the validator poll has a deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chutes_protocol::Hotkey;
use chutes_protocol::auth::Payload;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use miner_db::{Db, NewGpu, NewServer};
use miner_k8s::{parse_cpu, parse_gib, per_gpu_resources};
use miner_validator::rest::{ValidatorClient, Verification};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::add_node::{NodeBootstrap, Progress, ServerArgs};
use crate::error::ApiError;

/// Where GraVal's bootstrap server of a node is reached: `http://<external ip>:<node port>`.
pub type GravalAddress = Arc<dyn Fn(&str, u16) -> String + Send + Sync>;

/// Timings of the add-node flow. `Default` is the original's.
#[derive(Clone, Debug)]
pub struct BootstrapTimings {
    /// Whole wait for the GraVal pod, and for the validator's verification.
    pub timeout: Duration,
    /// Pod and verification poll interval.
    pub poll: Duration,
    /// `/devices` attempts and the pause between them (original: 5, 3 s).
    pub devices_attempts: u32,
    pub devices_retry: Duration,
    /// Wait for GraVal pods to go after deleting the Job.
    pub cleanup_wait: Duration,
}

impl Default for BootstrapTimings {
    fn default() -> Self {
        BootstrapTimings {
            timeout: Duration::from_secs(900),
            poll: Duration::from_secs(1),
            devices_attempts: 5,
            devices_retry: Duration::from_secs(3),
            cleanup_wait: Duration::from_secs(120),
        }
    }
}

pub struct KubeBootstrap {
    pub client: kube::Client,
    pub namespace: String,
    pub db: Db,
    pub hotkey: Arc<Hotkey>,
    /// One REST client per supported validator, by hotkey.
    pub validators: HashMap<String, ValidatorClient>,
    pub graval_image: String,
    /// Secrets the GraVal Job names to pull `graval_image` from a private registry.
    pub image_pull_secrets: Vec<String>,
    pub graval_address: GravalAddress,
    pub timings: BootstrapTimings,
    pub http: reqwest::Client,
}

fn fail(what: impl std::fmt::Display) -> String {
    what.to_string()
}

impl KubeBootstrap {
    async fn mark_verified(&self, server_id: &str) -> Result<(), String> {
        let mut attempt = 1;
        loop {
            match self.db.verify_server_gpus(server_id).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt >= 3 => return Err(format!("recording the verified GPUs failed: {e}")),
                Err(e) => {
                    tracing::warn!(server = %server_id, attempt, error = %e, "recording the verified GPUs failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    attempt += 1;
                }
            }
        }
    }

    fn validator(&self, hotkey: &str) -> Result<&ValidatorClient, String> {
        self.validators.get(hotkey).ok_or_else(|| format!("validator {hotkey} is not supported"))
    }

    async fn track(&self, args: &ServerArgs, progress: &Progress) -> Result<(NewServer, i64), String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let labels = json!({"metadata": {"labels": {
            "gpu-short-ref": args.gpu_short_ref,
            "chutes/validator": args.validator,
            "chutes/worker": "true",
        }}});
        let node = nodes
            .patch(&args.name, &PatchParams::default(), &Patch::Merge(&labels))
            .await
            .map_err(|e| format!("labelling node {}: {e}", args.name))?;
        progress.say(format!("labelled node {} for validator {}", args.name, args.validator)).await;
        let node = serde_json::to_value(&node).map_err(fail)?;
        let ready = node["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        if !ready {
            return Err(format!("node {} is not Ready", args.name));
        }
        let uid = node["metadata"]["uid"].as_str().ok_or("node has no uid")?.to_owned();
        let node_labels = &node["metadata"]["labels"];
        let ip = node_labels["chutes/external-ip"]
            .as_str()
            .ok_or_else(|| {
                format!("node {} has no chutes/external-ip label (set by provisioning)", args.name)
            })?
            .to_owned();
        let capacity = &node["status"]["capacity"];
        let gpu_count: i64 = capacity["nvidia.com/gpu"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("node {} reports no nvidia.com/gpu capacity", args.name))?;
        let cpu = capacity["cpu"].as_str().and_then(parse_cpu).ok_or("node reports no cpu capacity")?;
        let memory =
            capacity["memory"].as_str().and_then(parse_gib).ok_or("node reports no memory capacity")?;
        let gpu_mib = node_labels["nvidia.com/gpu.memory"].as_str().and_then(|s| s.parse().ok());
        let (cpu_per_gpu, memory_per_gpu) = per_gpu_resources(gpu_count, cpu, memory, gpu_mib);
        let label_count = node_labels["nvidia.com/gpu.count"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|n| (1..=10).contains(n))
            .ok_or_else(|| {
                format!("node {} label nvidia.com/gpu.count must be an integer from 1 to 10", args.name)
            })?;
        let server = NewServer {
            server_id: uid,
            validator: args.validator.clone(),
            name: args.name.clone(),
            ip_address: Some(ip),
            labels: node_labels.clone(),
            gpu_count: gpu_count as i32,
            cpu_per_gpu,
            memory_per_gpu,
            hourly_cost: args.hourly_cost,
        };
        self.db.insert_server(&server).await.map_err(fail)?;
        progress
            .say(format!(
                "tracking server {} ({}): {gpu_count} GPUs, {cpu_per_gpu} CPUs and {memory_per_gpu} GiB per GPU",
                server.name, server.server_id
            ))
            .await;
        Ok((server, label_count))
    }

    async fn deploy_graval(&self, server: &NewServer, gpu_count: i64) -> Result<u16, String> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = miner_k8s::graval::job_selector(&server.name);
        let existing = jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("listing GraVal jobs: {e}"))?;
        if !existing.items.is_empty() {
            return Err(format!("a GraVal job is already running for node {}", server.name));
        }
        let service = miner_k8s::graval::service(&server.name).map_err(fail)?;
        let service = services
            .create(&PostParams::default(), &service)
            .await
            .map_err(|e| format!("creating GraVal service: {e}"))?;
        let port = service
            .spec
            .and_then(|s| s.ports)
            .and_then(|p| p.first().and_then(|p| p.node_port))
            .ok_or("the GraVal service got no node port")?;
        let job = miner_k8s::graval::GravalJob {
            node: &server.name,
            image: &self.graval_image,
            validator: &server.validator,
            miner_ss58: self.hotkey.ss58(),
            gpu_count,
            cpu_per_gpu: server.cpu_per_gpu.into(),
            memory_per_gpu: server.memory_per_gpu.into(),
            pull_secrets: &self.image_pull_secrets,
        }
        .build()
        .map_err(fail)?;
        jobs.create(&PostParams::default(), &job).await.map_err(|e| format!("creating GraVal job: {e}"))?;
        self.db.set_verification_port(&server.server_id, port).await.map_err(fail)?;
        u16::try_from(port).map_err(|_| format!("node port {port} out of range"))
    }

    async fn wait_for_graval(
        &self,
        node: &str,
        progress: &Progress,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = miner_k8s::graval::pod_selector(node);
        let deadline = Instant::now() + self.timings.timeout;
        progress.say("waiting for the GraVal pod to be ready").await;
        loop {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| format!("listing GraVal pods: {e}"))?;
            for pod in &list.items {
                let pod = serde_json::to_value(pod).map_err(fail)?;
                let phase = pod["status"]["phase"].as_str().unwrap_or_default();
                if phase == "Failed" {
                    return Err(format!(
                        "GraVal pod failed: {}",
                        pod["status"]["message"].as_str().unwrap_or("no message")
                    ));
                }
                let statuses = pod["status"]["containerStatuses"].as_array();
                let ready = statuses.is_some_and(|s| !s.is_empty() && s.iter().all(|c| c["ready"] == true));
                if phase == "Running" && ready {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the GraVal pod was not ready within {} s",
                    self.timings.timeout.as_secs()
                ));
            }
            self.pause(stop).await?;
        }
    }

    /// One poll interval, cut short by a stop.
    async fn pause(&self, stop: &CancellationToken) -> Result<(), String> {
        tokio::select! {
            () = tokio::time::sleep(self.timings.poll) => Ok(()),
            () = stop.cancelled() => Err(STOPPING.to_owned()),
        }
    }

    async fn fetch_devices(&self, base: &str) -> Result<Vec<Value>, String> {
        let url = format!("{}/devices", base.trim_end_matches('/'));
        let mut last = String::new();
        for attempt in 1..=self.timings.devices_attempts.max(1) {
            let signed = self.hotkey.sign_management(self.hotkey.ss58(), Payload::Purpose("graval"));
            let mut req = self.http.get(&url).timeout(Duration::from_secs(5));
            for (k, v) in signed.iter() {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let body: Value = resp.json().await.map_err(|e| format!("{url}: {e}"))?;
                    return body["devices"]
                        .as_array()
                        .cloned()
                        .ok_or_else(|| format!("{url}: no devices list in {body}"));
                }
                Ok(resp) => {
                    last = format!("HTTP {}: {}", resp.status(), resp.text().await.unwrap_or_default())
                }
                Err(e) => last = e.to_string(),
            }
            if attempt < self.timings.devices_attempts {
                tokio::time::sleep(self.timings.devices_retry).await;
            }
        }
        Err(format!("GraVal {url}: {last}"))
    }

    async fn remove_graval(&self, node: &str, progress: &Progress, wait: bool) {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let foreground = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..DeleteParams::default()
        };
        for (what, result) in [
            (
                "service",
                services.delete(&miner_k8s::graval::service_name(node), &foreground).await.map(|_| ()),
            ),
            ("job", jobs.delete(&miner_k8s::graval::job_name(node), &foreground).await.map(|_| ())),
        ] {
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => progress.say(format!("warning: deleting the GraVal {what}: {e}")).await,
            }
        }
        if !wait {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let deadline = Instant::now() + self.timings.cleanup_wait;
        let selector = miner_k8s::graval::pod_selector(node);
        while Instant::now() < deadline {
            match pods.list(&ListParams::default().labels(&selector)).await {
                Ok(list) if list.items.is_empty() => return,
                _ => tokio::time::sleep(self.timings.poll).await,
            }
        }
        progress.say("warning: GraVal pods still present after cleanup").await;
    }

    /// The steps, each run whole: a stop is seen between them and in the waits (GraVal
    /// coming up, the validator verifying), never inside a call, so what a step made is
    /// always recorded for the undo.
    async fn steps(
        &self,
        args: &ServerArgs,
        progress: &Progress,
        stop: &CancellationToken,
        server_id: &mut Option<String>,
        gpu_ids: &mut Vec<String>,
        graval_created: &mut bool,
    ) -> Result<(), String> {
        // track() inserts the row last, so on its failure there is nothing of ours to delete
        // (in particular not a server of the same name tracked before).
        stopped(stop)?;
        let (server, expected) = self.track(args, progress).await?;
        *server_id = Some(server.server_id.clone());
        let ip = server.ip_address.clone().unwrap_or_default();

        stopped(stop)?;
        *graval_created = true;
        let port = self.deploy_graval(&server, expected).await?;
        progress.say(format!("GraVal bootstrap deployed on node port {port}")).await;
        self.wait_for_graval(&server.name, progress, stop).await?;

        let devices = self.fetch_devices(&(self.graval_address)(&ip, port)).await?;
        if devices.len() as i64 != expected {
            return Err(format!(
                "GraVal found {} GPUs, the node label nvidia.com/gpu.count says {expected}",
                devices.len()
            ));
        }
        let gpus = devices
            .iter()
            .map(|d| {
                let id = d["uuid"].as_str().ok_or_else(|| format!("device without uuid: {d}"))?;
                Ok(NewGpu {
                    gpu_id: id.to_owned(),
                    device_info: d.clone(),
                    model_short_ref: args.gpu_short_ref.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        self.db.insert_gpus(&server.server_id, &server.validator, &gpus).await.map_err(fail)?;
        gpu_ids.extend(gpus.iter().map(|g| g.gpu_id.clone()));
        progress.say(format!("found {} GPUs: {}", gpus.len(), gpu_ids.join(", "))).await;

        let nodes: Vec<Value> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut n = d.clone();
                n["device_index"] = json!(i);
                n["gpu_identifier"] = json!(args.gpu_short_ref);
                n["verification_host"] = json!(ip);
                n["verification_port"] = json!(port);
                n
            })
            .collect();
        let validator = self.validator(&args.validator)?;
        stopped(stop)?;
        let reply = validator
            .post_nodes(&json!({"nodes": nodes, "server_id": server.server_id}))
            .await
            .map_err(|e| format!("advertising the GPUs: {e}"))?;
        let seeds: Vec<Option<i64>> = reply.nodes.iter().map(|n| n["seed"].as_i64()).collect();
        let seed = match seeds.first() {
            Some(Some(s)) if seeds.iter().all(|x| *x == Some(*s)) => *s,
            _ => return Err(format!("the validator returned inconsistent seeds: {seeds:?}")),
        };
        self.db.set_seed(&server.server_id, seed).await.map_err(fail)?;
        progress
            .say(format!("GPUs advertised to validator {}, task {}", args.validator, reply.task_id))
            .await;

        let deadline = Instant::now() + self.timings.timeout;
        loop {
            match validator
                .verification_status(&reply.task_id)
                .await
                .map_err(|e| format!("verification status: {e}"))?
            {
                Verification::Pending => {}
                Verification::Failed(status) => {
                    return Err(format!("the validator's verification ended with {status:?}"));
                }
                Verification::Done(status) => {
                    progress.say(format!("validator verification finished: {status}")).await;
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the validator did not finish verifying within {} s",
                    self.timings.timeout.as_secs()
                ));
            }
            progress.say("waiting for the validator to verify the GPUs...").await;
            self.pause(stop).await?;
        }
    }
}

/// Why a bootstrap stopped when the API shuts down.
const STOPPING: &str = "the miner API is shutting down; add the node again once it is back";

/// `Err` once the API is shutting down.
fn stopped(stop: &CancellationToken) -> Result<(), String> {
    if stop.is_cancelled() { Err(STOPPING.to_owned()) } else { Ok(()) }
}

#[async_trait]
impl NodeBootstrap for KubeBootstrap {
    async fn preflight(&self, args: &ServerArgs) -> Result<(), ApiError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.get_opt(&args.name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(ApiError::not_found(format!("No kubernetes node named {} found!", args.name)));
            }
            Err(e) => return Err(ApiError::bad_gateway(format!("Kubernetes API: {e}"))),
        }
        let validator = self.validator(&args.validator).map_err(ApiError::bad_request)?;
        let supported = validator
            .nodes_supported()
            .await
            .map_err(|e| ApiError::bad_gateway(format!("validator {}: {e}", args.validator)))?;
        if !supported.iter().any(|s| s == &args.gpu_short_ref) {
            return Err(ApiError::bad_request(format!(
                "gpu_short_ref {} is not supported by validator {} (supported: {})",
                args.gpu_short_ref,
                args.validator,
                supported.join(", ")
            )));
        }
        Ok(())
    }

    async fn run(&self, args: ServerArgs, progress: Progress, stop: CancellationToken) -> Result<(), String> {
        let mut server_id = None;
        let mut gpu_ids = Vec::new();
        let mut graval_created = false;
        let result =
            self.steps(&args, &progress, &stop, &mut server_id, &mut gpu_ids, &mut graval_created).await;
        if graval_created {
            progress.say("removing the GraVal bootstrap job").await;
            // Shutting down: the Job and Service are deleted, their pods not waited for.
            self.remove_graval(&args.name, &progress, !stop.is_cancelled()).await;
        }
        let result = match (result, &server_id) {
            // The validator verified the GPUs; a database that fails to record it gets a few
            // tries, then the whole add is undone rather than left tracked but unusable.
            (Ok(()), Some(id)) => self.mark_verified(id).await,
            (other, _) => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(why) => {
                progress.say(format!("bootstrap failed: {why}; undoing")).await;
                // The validator first, the row last: while the row exists, a new add of the
                // same node is refused (409), so it cannot advertise these GPUs again only to
                // have this undo remove them from the validator behind it.
                if !gpu_ids.is_empty()
                    && let Ok(validator) = self.validator(&args.validator)
                {
                    for gpu in &gpu_ids {
                        if let Err(e) = validator.delete_node(gpu).await {
                            progress
                                .say(format!("warning: could not remove GPU {gpu} from the validator: {e}"))
                                .await;
                        }
                    }
                }
                if let Some(id) = &server_id
                    && let Err(e) = self.db.delete_server(id).await
                {
                    progress.say(format!("warning: could not delete server {id}: {e}")).await;
                }
                Err(why)
            }
        }
    }
}

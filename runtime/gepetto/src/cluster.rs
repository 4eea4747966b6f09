//! The cluster as Gepetto sees it: kube-runtime watches feeding reflector stores
//! (Nodes, every Pod for disk accounting, chute Jobs and Services), so decisions
//! read memory instead of listing the API server each time. A watch that breaks is
//! restarted with kube-runtime's default backoff; the stores stay readable meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use miner_k8s::chute::pod_gpu_devices;
use miner_k8s::labels as l;
use miner_k8s::quantity::{DiskUsage, node_disk_gib, pod_ephemeral_gib, pod_holds_disk};
use tokio_util::sync::CancellationToken;

/// Reflector stores over the chute namespace and the nodes.
#[derive(Clone)]
pub struct Cluster {
    pub namespace: String,
    nodes: Store<Node>,
    pods: Store<Pod>,
    jobs: Store<Job>,
    services: Store<Service>,
}

fn watch<K>(api: Api<K>, config: watcher::Config, shutdown: CancellationToken) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(api, config).default_backoff().reflect(writer).applied_objects();
    let kind = std::any::type_name::<K>();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                next = stream.next() => match next {
                    None => return,
                    Some(Err(e)) => tracing::warn!(kind, error = %e, "cluster watch error; retrying"),
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    reader
}

impl Cluster {
    /// Starts the watches; [`Cluster::ready`] waits for their first listing.
    pub fn start(client: kube::Client, namespace: &str, shutdown: CancellationToken) -> Cluster {
        let chutes = watcher::Config::default().labels(l::CHUTE_SELECTOR);
        Cluster {
            namespace: namespace.to_owned(),
            nodes: watch(Api::all(client.clone()), watcher::Config::default(), shutdown.clone()),
            pods: watch(Api::all(client.clone()), watcher::Config::default(), shutdown.clone()),
            jobs: watch(Api::namespaced(client.clone(), namespace), chutes.clone(), shutdown.clone()),
            services: watch(Api::namespaced(client, namespace), chutes, shutdown),
        }
    }

    pub async fn ready(&self) -> bool {
        self.nodes.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await.is_ok()
            && self.jobs.wait_until_ready().await.is_ok()
            && self.services.wait_until_ready().await.is_ok()
    }

    pub fn job(&self, name: &str) -> Option<Arc<Job>> {
        self.jobs.get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Chute Jobs by deployment id.
    pub fn chute_jobs(&self) -> HashMap<String, Arc<Job>> {
        self.jobs
            .state()
            .into_iter()
            .filter_map(|j| Some((j.metadata.labels.as_ref()?.get(l::DEPLOYMENT_ID)?.clone(), j)))
            .collect()
    }

    /// Chute Services by deployment id.
    pub fn chute_services(&self) -> HashMap<String, Arc<Service>> {
        self.services
            .state()
            .into_iter()
            .filter_map(|s| Some((s.metadata.labels.as_ref()?.get(l::DEPLOYMENT_ID)?.clone(), s)))
            .collect()
    }

    /// Pods in the chute namespace.
    fn namespace_pods(&self) -> impl Iterator<Item = Arc<Pod>> + '_ {
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(self.namespace.as_str()))
    }

    /// Deployments with at least one pod in the namespace, whatever its phase.
    pub fn deployments_with_pods(&self) -> std::collections::HashSet<String> {
        self.namespace_pods().filter_map(|p| deployment_of(&p).map(str::to_owned)).collect()
    }

    /// Pods of one deployment.
    pub fn deployment_pods(&self, deployment_id: &str) -> Vec<Arc<Pod>> {
        self.namespace_pods().filter(|p| deployment_of(p) == Some(deployment_id)).collect()
    }

    /// Pods in the namespace, of a deployment other than `except`, that still run on
    /// one of `devices` (`GPU-<uuid>`, as [`miner_k8s::chute::gpu_device`] names them):
    /// a pod that is being deleted holds its GPUs until its containers have stopped.
    pub fn pods_on_gpus(&self, devices: &[String], except: &str) -> Vec<String> {
        self.namespace_pods()
            .filter(|p| {
                deployment_of(p) != Some(except)
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                    && pod_gpu_devices(p).iter().any(|d| devices.iter().any(|m| m == d))
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    }

    /// Nodes by name.
    pub fn nodes(&self) -> HashMap<String, Arc<Node>> {
        self.nodes.state().into_iter().filter_map(|n| Some((n.metadata.name.clone()?, n))).collect()
    }

    /// Disk of every node: ephemeral-storage requests of its Running/Pending pods
    /// against its capacity, minus `reserve_gb` (reference section 13; no cache to
    /// invalidate, the watch keeps it current).
    pub fn disk(&self, reserve_gb: f64) -> HashMap<String, DiskUsage> {
        let mut used: HashMap<String, f64> = HashMap::new();
        for pod in self.pods.state() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            if pod_holds_disk(&pod) {
                *used.entry(node).or_default() += pod_ephemeral_gib(&pod);
            }
        }
        self.nodes
            .state()
            .into_iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                let u = used.get(&name).copied().unwrap_or(0.0);
                Some((name, DiskUsage::new(node_disk_gib(&n), u, reserve_gb)))
            })
            .collect()
    }
}

/// The deployment a chute pod belongs to (its label).
fn deployment_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(l::DEPLOYMENT_ID).map(String::as_str)
}

/// Whether a chute Job ran to completion (a finished validator job).
pub fn job_succeeded(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.succeeded.unwrap_or(0) > 0 && s.failed.unwrap_or(0) == 0)
}

/// Whether a chute Job or its pod has ended or failed (reconcile undeploys those).
pub fn job_finished(job: &Job, pods: &[Arc<Pod>]) -> Option<String> {
    if let Some(status) = &job.status {
        if status.failed.unwrap_or(0) > 0 {
            return Some("its Job failed".into());
        }
        if status.succeeded.unwrap_or(0) > 0 {
            return Some("its Job completed".into());
        }
    }
    for pod in pods {
        let status = pod.status.as_ref();
        if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
            return Some("its pod failed".into());
        }
        let terminated = status
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.state.as_ref().is_some_and(|st| st.terminated.is_some())));
        if terminated {
            return Some("its container terminated".into());
        }
    }
    None
}

/// Whether a pod of the deployment is Running and ready (the legacy activator).
pub fn pods_ready(pods: &[Arc<Pod>]) -> bool {
    pods.iter().any(|p| {
        let s = p.status.as_ref();
        s.and_then(|s| s.phase.as_deref()) == Some("Running")
            && s.and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
    })
}

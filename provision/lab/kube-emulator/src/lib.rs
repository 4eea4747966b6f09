//! A stateful Kubernetes API server emulator for tests, served on 127.0.0.1 so the real
//! `kube` client (or `kubectl`, or `minerctl`) talks to it over HTTP through a generated
//! kubeconfig. It keeps objects, field ownership (server-side apply), a resourceVersion
//! clock and a watch log, and runs small controllers so Deployments, StatefulSets,
//! DaemonSets and Jobs get pods that are scheduled onto emulated nodes and become Ready.
//!
//! ```no_run
//! let emu = kube_emulator::Emulator::start().unwrap();
//! emu.add_node(kube_emulator::Node::new("gpu-0").gpus(8).label("nvidia.com/gpu.present", "true"));
//! let kubeconfig = emu.kubeconfig_yaml(); // hand this to kube::Config::from_custom_kubeconfig
//! # drop(kubeconfig);
//! ```
//!
//! What it models and what it does not: see README.md next to this crate.

mod apply;
mod controllers;
mod defaults;
mod forward;
mod kinds;
mod merge;
mod runner;
mod selectors;
mod server;
mod store;
mod strict;
mod util;
mod validate;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

pub use kinds::{KINDS, Kind};
pub use runner::{ImageAlias, LAB_LABEL, PodmanRunner, RunnerError};
pub use store::{ApiError, Fault};

use server::Shared;
use store::State;

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("kube emulator: {0}")]
    Io(#[from] std::io::Error),
    #[error("kube emulator: `{0}` is not a kind the emulator serves")]
    UnknownKind(String),
    #[error("kube emulator: {}", .0.message)]
    Api(ApiError),
}

/// A node to add: name, labels, capacity. Ready unless said otherwise.
#[derive(Debug, Clone)]
pub struct Node {
    name: String,
    labels: Vec<(String, String)>,
    capacity: Vec<(String, String)>,
    address: String,
    ready: bool,
    taints: Vec<Value>,
}

impl Node {
    /// 16 CPUs, 64Gi memory, 500Gi ephemeral storage, 110 pods; hostname/os/arch labels.
    pub fn new(name: &str) -> Node {
        Node {
            name: name.to_string(),
            labels: vec![
                ("kubernetes.io/hostname".into(), name.into()),
                ("kubernetes.io/os".into(), "linux".into()),
                ("kubernetes.io/arch".into(), "amd64".into()),
            ],
            capacity: vec![
                ("cpu".into(), "16".into()),
                ("memory".into(), "64Gi".into()),
                ("ephemeral-storage".into(), "500Gi".into()),
                ("pods".into(), "110".into()),
            ],
            address: "127.0.0.1".into(),
            ready: true,
            taints: Vec::new(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Node {
        self.labels.retain(|(k, _)| k != key);
        self.labels.push((key.into(), value.into()));
        self
    }

    pub fn capacity(mut self, resource: &str, quantity: &str) -> Node {
        self.capacity.retain(|(k, _)| k != resource);
        self.capacity.push((resource.into(), quantity.into()));
        self
    }

    /// `nvidia.com/gpu` capacity plus the GPU operator's labels.
    pub fn gpus(self, count: u32) -> Node {
        self.capacity("nvidia.com/gpu", &count.to_string())
            .label("nvidia.com/gpu.present", "true")
            .label("nvidia.com/gpu.count", &count.to_string())
    }

    pub fn address(mut self, ip: &str) -> Node {
        self.address = ip.into();
        self
    }

    /// A taint (`NoSchedule`, `PreferNoSchedule` or `NoExecute`): pods that do not
    /// tolerate a NoSchedule/NoExecute taint are not scheduled there.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Node {
        self.taints.push(json!({"key": key, "value": value, "effect": effect}));
        self
    }

    pub fn not_ready(mut self) -> Node {
        self.ready = false;
        self
    }

    fn to_object(&self) -> Value {
        let labels: serde_json::Map<String, Value> =
            self.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let capacity: serde_json::Map<String, Value> =
            self.capacity.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": if self.taints.is_empty() { json!({}) } else { json!({"taints": self.taints}) },
            "status": {
                "capacity": capacity, "allocatable": capacity,
                "conditions": [ready_condition(self.ready)],
                "addresses": [{"type": "InternalIP", "address": self.address}, {"type": "Hostname", "address": self.name}],
                "nodeInfo": {"kubeletVersion": "v1.33.0", "containerRuntimeVersion": "containerd://1.7.0",
                             "osImage": "Ubuntu 24.04 LTS", "architecture": "amd64", "operatingSystem": "linux",
                             "kernelVersion": "6.8.0", "kubeProxyVersion": "v1.33.0", "machineID": "", "systemUUID": "", "bootID": ""},
            },
        })
    }
}

fn ready_condition(ready: bool) -> Value {
    json!({
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
        "message": if ready { "kubelet is posting ready status" } else { "container runtime is down" },
    })
}

impl Fault {
    /// Pods using an image containing `image` never pull it (`ErrImagePull`).
    pub fn image_pull(image: &str, message: &str) -> Fault {
        Fault { image: image.into(), reason: "ErrImagePull".into(), message: message.into() }
    }

    /// Pods using an image containing `image` start and crash over and over.
    pub fn crash_loop(image: &str) -> Fault {
        Fault {
            image: image.into(),
            reason: "CrashLoopBackOff".into(),
            message: "back-off 5m0s restarting failed container".into(),
        }
    }
}

/// How to start an emulator; `Default` is what [`Emulator::start`] does.
#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    /// Run pods whose image is in the local podman store as containers (README,
    /// "Workloads in podman"). Off: every pod is simulated.
    pub podman: Option<PodmanRunner>,
}

/// A running emulator. Dropping it stops the server (and removes the runner's containers).
pub struct Emulator {
    shared: Shared,
    runner: Mutex<Option<runner::RunnerThread>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Emulator {
    /// Starts on a free port of 127.0.0.1, on its own thread and runtime, so it serves
    /// sync tests, async tests and child processes alike.
    pub fn start() -> Result<Emulator, EmulatorError> {
        Emulator::start_with(EmulatorOptions::default())
    }

    /// [`Emulator::start`] with options, e.g. the podman runner.
    pub fn start_with(options: EmulatorOptions) -> Result<Emulator, EmulatorError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Shared { state: Arc::new(Mutex::new(State::new())), addr };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let serve_shared = shared.clone();
        let thread = std::thread::Builder::new().name("kube-emulator".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                // Time-driven behaviour (start delays, grace periods, Job deadlines and TTLs)
                // needs a clock tick; with nothing due it costs a look at the timer queue.
                let ticker = serve_shared.clone();
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(Duration::from_millis(50));
                    loop {
                        every.tick().await;
                        ticker.lock().reconcile();
                    }
                });
                let router = axum::Router::new().fallback(server::handle).with_state(serve_shared);
                tokio::select! {
                    _ = axum::serve(listener, router) => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime here cancels open watch streams.
        })?;
        ready_rx.recv().map_err(|_| std::io::Error::other("emulator thread ended before serving"))??;
        let emulator =
            Emulator { shared, runner: Mutex::new(None), stop: Some(stop_tx), thread: Some(thread) };
        if let Some(podman) = options.podman {
            emulator.start_podman(podman)?;
        }
        Ok(emulator)
    }

    /// Starts the podman runner on a running emulator (e.g. once the images it runs are
    /// loaded): pods the kubelet starts from now on may run as containers; pods already
    /// started stay simulated. A runner already there is stopped first (its containers
    /// removed).
    pub fn start_podman(&self, podman: PodmanRunner) -> Result<(), EmulatorError> {
        let mut slot = self.runner.lock().unwrap_or_else(|p| p.into_inner());
        drop(slot.take());
        *slot = Some(runner::spawn(self.shared.clone(), podman)?);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig whose current context points at this emulator (namespace `default`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-emulator\n  cluster:\n    server: {}\ncontexts:\n- name: kube-emulator\n  context:\n    cluster: kube-emulator\n    user: kube-emulator\n    namespace: default\ncurrent-context: kube-emulator\nusers:\n- name: kube-emulator\n  user:\n    token: kube-emulator\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), EmulatorError> {
        std::fs::write(path, self.kubeconfig_yaml())?;
        Ok(())
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.shared.lock();
        let r = f(&mut state);
        state.reconcile();
        r
    }

    pub fn add_node(&self, node: Node) {
        self.with(|s| {
            let k = store::kind("v1", "Node");
            let obj = node.to_object();
            match s.get(k, "", &node.name).cloned() {
                Some(old) => {
                    let mut new = obj;
                    new["metadata"] = old["metadata"].clone();
                    new["metadata"]["labels"] = node.to_object()["metadata"]["labels"].clone();
                    // Cordoning (spec.unschedulable) is the cluster's, not the builder's.
                    if let Some(u) = old.pointer("/spec/unschedulable") {
                        new["spec"]["unschedulable"] = u.clone();
                    }
                    let _ = s.update(k, &old, new, false);
                }
                None => {
                    let _ = s.create(k, obj, "kubelet", false);
                }
            }
        })
    }

    /// Flips a node's Ready condition (pods on a not-ready node stop progressing).
    pub fn set_node_ready(&self, name: &str, ready: bool) -> bool {
        self.with(|s| {
            let k = store::kind("v1", "Node");
            let Some(node) = s.get(k, "", name).cloned() else {
                return false;
            };
            let mut status = node["status"].clone();
            status["conditions"] = json!([ready_condition(ready)]);
            s.set_status(k, "", name, status)
        })
    }

    /// Deletes a node and, like the pod garbage collector, the pods bound to it (at once:
    /// no kubelet is left to wait for).
    pub fn remove_node(&self, name: &str) -> bool {
        self.with(|s| {
            let pods: Vec<store::Key> = s
                .list_keyed(store::kind("v1", "Pod"), None)
                .into_iter()
                .filter(|(_, p)| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(name))
                .map(|(k, _)| k.clone())
                .collect();
            for k in pods {
                s.remove(&k);
            }
            s.delete(store::kind("v1", "Node"), "", name, store::DeleteOptions::default()).is_ok()
        })
    }

    /// While held, deleted pods on a node stay Terminating (with their deletionTimestamp,
    /// still counted on the node) until their grace period ends or
    /// [`finish_pod_termination`](Self::finish_pod_termination). Released, every
    /// terminating pod goes. By default terminations are not held: the kubelet stops a
    /// deleted pod at once, so a delete shows a MODIFIED (deletionTimestamp) and a DELETED.
    pub fn hold_pod_terminations(&self, hold: bool) {
        self.with(|s| {
            s.hold_terminations = hold;
            s.mark_all(store::kind("v1", "Pod"));
        })
    }

    /// Ends one terminating pod's grace period now (the pod goes). False when no such pod
    /// is terminating.
    pub fn finish_pod_termination(&self, namespace: &str, name: &str) -> bool {
        self.with(|s| s.finish_termination(namespace, name))
    }

    /// Ends a pod as `Failed` with this reason and message (a Job counts the failure and
    /// retries up to its backoffLimit; a Deployment replaces the pod).
    pub fn fail_pod(&self, namespace: &str, name: &str, reason: &str, message: &str) -> bool {
        self.with(|s| s.finish_pod(namespace, name, Some((reason, message))))
    }

    /// Ends a pod as `Succeeded` (a Job completes).
    pub fn succeed_pod(&self, namespace: &str, name: &str) -> bool {
        self.with(|s| s.finish_pod(namespace, name, None))
    }

    pub fn add_fault(&self, fault: Fault) {
        self.with(|s| {
            s.faults.push(fault);
            s.mark_all(store::kind("v1", "Pod"));
        });
    }

    pub fn clear_faults(&self) {
        self.with(|s| {
            s.faults.clear();
            s.mark_all(store::kind("v1", "Pod"));
        });
    }

    /// Pods become Running/Ready only this long after the kubelet first sees them.
    pub fn set_pod_start_delay(&self, delay: Duration) {
        self.with(|s| {
            s.pod_start_delay = delay;
            s.mark_all(store::kind("v1", "Pod"));
        });
    }

    pub fn set_pod_log(&self, namespace: &str, name: &str, text: &str) {
        self.with(|s| s.pod_logs.insert((namespace.to_string(), name.to_string()), text.to_string()));
    }

    fn kind(api_version: &str, kind: &str) -> Result<&'static Kind, EmulatorError> {
        kinds::by_kind(api_version, kind)
            .ok_or_else(|| EmulatorError::UnknownKind(format!("{api_version}/{kind}")))
    }

    /// One object as stored, or None.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, EmulatorError> {
        let k = Self::kind(api_version, kind)?;
        Ok(self.shared.lock().get(k, namespace.unwrap_or_default(), name).cloned())
    }

    /// All objects of a kind (in one namespace, or everywhere), ordered by namespace/name.
    pub fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, EmulatorError> {
        let k = Self::kind(api_version, kind)?;
        Ok(self.shared.lock().list(k, namespace).into_iter().cloned().collect())
    }

    /// Adds a StorageClass, as a cluster's storage addon does (microk8s'
    /// `hostpath-storage` makes `microk8s-hostpath`, the default). Claims of that class
    /// are bound from then on (every class has a provisioner here).
    pub fn add_storage_class(&self, name: &str, default: bool) -> Result<(), EmulatorError> {
        let mut class = serde_json::json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": "microk8s.io/hostpath", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
        });
        if default {
            class["metadata"]["annotations"] =
                serde_json::json!({"storageclass.kubernetes.io/is-default-class": "true"});
        }
        self.create(class).map(|_| ())
    }

    /// Creates an object directly (as manager `emulator`), e.g. to seed a test.
    pub fn create(&self, object: Value) -> Result<Value, EmulatorError> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let k = Self::kind(&api_version, &kind)?;
        self.with(|s| s.create(k, object, "emulator", false)).map_err(EmulatorError::Api)
    }

    /// Ends every open watch stream (clients reconnect from their last resourceVersion).
    pub fn close_watches(&self) {
        self.shared.lock().close_watches();
    }

    /// How many change events are kept for resuming watches; a watch from an older
    /// resourceVersion gets 410 Expired and must list again. Default 10 000.
    pub fn set_watch_history(&self, events: usize) {
        self.shared.lock().set_watch_history(events);
    }

    /// The resourceVersion clock: unchanged means nothing in the cluster changed.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Every request served so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// How long each write request held the emulator (its handling plus the controllers it
    /// set off), oldest first, last 100 000: the emulator's own share of a client's latency.
    pub fn write_costs(&self) -> Vec<Duration> {
        self.shared.lock().write_costs.iter().copied().collect()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // First the containers, while the state they report to is still there.
        drop(self.runner.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

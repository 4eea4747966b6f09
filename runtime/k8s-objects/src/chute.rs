//! The objects of one chute deployment (reference section 12.1-12.3): Job
//! `chute-<deployment_id>`, Service `chute-service-<deployment_id>` and the code
//! ConfigMap `chute-code-<uuid5>` shared by every deployment of a chute version.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use serde_json::{Value, json};

use crate::ids::{canonical_gpu_uuid, code_configmap_name};
use crate::labels as l;
use crate::{ObjectError, typed};

pub fn job_name(deployment_id: &str) -> String {
    format!("chute-{deployment_id}")
}

pub fn service_name(deployment_id: &str) -> String {
    format!("chute-service-{deployment_id}")
}

/// Selector of the pods of one deployment.
pub fn deployment_selector(deployment_id: &str) -> String {
    format!("{}={deployment_id}", l::DEPLOYMENT_ID)
}

/// One extra port a job chute exposes (`jobs[].ports` of the remote chute).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExtraPort {
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
}

impl ExtraPort {
    /// The validator's proto: `tcp`/`http` are TCP, anything else UDP (as the original).
    pub fn new(port: u16, proto: &str) -> ExtraPort {
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" | "http" => "TCP",
            _ => "UDP",
        };
        ExtraPort { port, protocol }
    }

    /// Dedups by `proto:port`, keeping first-seen order (the order NodePorts are listed in).
    pub fn dedup(ports: impl IntoIterator<Item = ExtraPort>) -> Vec<ExtraPort> {
        let mut seen = BTreeSet::new();
        ports.into_iter().filter(|p| seen.insert(p.clone())).collect()
    }

    /// 8000/TCP or 8001/TCP: already a port of every chute. Such an extra port is
    /// not added to the Service or the container a second time (Kubernetes refuses a
    /// repeated port); its `CHUTES_PORT_TCP_<port>` is the fixed port's NodePort.
    pub fn is_fixed(&self) -> bool {
        self.protocol == "TCP" && FIXED_PORTS.contains(&self.port)
    }

    /// Its Service port name: `chute-<port>` (section 12.2), or `chute-<port>-udp`
    /// for a UDP port whose number is also used over TCP (a fixed port or another
    /// extra port in `all`), since Service port names must be unique.
    pub fn service_port_name(&self, all: &[ExtraPort]) -> String {
        let tcp_twin = FIXED_PORTS.contains(&self.port)
            || all.iter().any(|p| p.port == self.port && p.protocol == "TCP");
        if self.protocol == "UDP" && tcp_twin {
            format!("chute-{}-udp", self.port)
        } else {
            format!("chute-{}", self.port)
        }
    }
}

/// The ports every chute Service and container has (primary and logging), over TCP.
pub const FIXED_PORTS: [u16; 2] = [8000, 8001];

/// The chute Service: 8000 and 8001, then one port per distinct extra job port
/// (8000/TCP and 8001/TCP are not repeated), named by [`ExtraPort::service_port_name`].
pub fn service(
    deployment_id: &str,
    chute_id: &str,
    version: &str,
    extra: &[ExtraPort],
) -> Result<Service, ObjectError> {
    let mut ports = vec![
        json!({"name": "chute-8000", "port": 8000, "targetPort": 8000, "protocol": "TCP"}),
        json!({"name": "chute-8001", "port": 8001, "targetPort": 8001, "protocol": "TCP"}),
    ];
    let extra = ExtraPort::dedup(extra.iter().filter(|p| !p.is_fixed()).cloned());
    for p in &extra {
        ports.push(json!({"name": p.service_port_name(&extra), "port": p.port, "targetPort": p.port,
                          "protocol": p.protocol}));
    }
    typed(
        "chute service",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(deployment_id), "labels": {
                l::DEPLOYMENT_ID: deployment_id, l::CHUTE: "true", l::CHUTE_ID: chute_id, l::VERSION: version,
            }},
            "spec": {"type": "NodePort", "externalTrafficPolicy": "Local",
                     "selector": {l::DEPLOYMENT_ID: deployment_id}, "ports": ports}
        }),
    )
}

/// The NodePorts Kubernetes assigned to a chute Service, by port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePorts {
    pub primary: i32,
    pub logging: i32,
    /// `(extra port, node port)`, in the Service's order.
    pub extra: Vec<(ExtraPort, i32)>,
}

impl ServicePorts {
    /// Reads the node ports back from a created Service, matching each port by
    /// number and protocol; `None` when one is missing.
    pub fn from_service(service: &Service, extra: &[ExtraPort]) -> Option<ServicePorts> {
        let ports = service.spec.as_ref()?.ports.as_ref()?;
        // A port without a protocol is TCP (the API server's default).
        let node_port = |port: u16, protocol: &str| {
            ports
                .iter()
                .find(|p| p.port == i32::from(port) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                .and_then(|p| p.node_port)
        };
        Some(ServicePorts {
            primary: node_port(8000, "TCP")?,
            logging: node_port(8001, "TCP")?,
            extra: extra
                .iter()
                .map(|p| Some((p.clone(), node_port(p.port, p.protocol)?)))
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

/// The code ConfigMap of a chute version: `{<filename>: <code>}`.
pub fn code_configmap(
    chute_id: &str,
    version: &str,
    filename: &str,
    code: &str,
) -> Result<ConfigMap, ObjectError> {
    typed(
        "chute code configmap",
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": code_configmap_name(chute_id, version),
                         "labels": {l::CHUTE_ID: chute_id, l::VERSION: version}},
            "data": {filename: code}
        }),
    )
}

/// A launch token from `GET /instances/launch_config` (chutes >= 0.3.0). The token
/// is a bearer credential: `Debug` hides it.
#[derive(Clone)]
pub struct LaunchToken {
    pub token: String,
    pub config_id: String,
}

impl std::fmt::Debug for LaunchToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchToken").field("config_id", &self.config_id).finish_non_exhaustive()
    }
}

/// `8001` when the core semver of `chutes_version` is at least 0.3.3, else 8000.
pub fn probe_port(chutes_version: Option<&str>) -> u16 {
    if version_at_least(chutes_version, (0, 3, 3)) { 8001 } else { 8000 }
}

/// Whether `^(\d+\.\d+\.\d+)` of the version is at least `min` (absent or
/// unparsable: no).
pub fn version_at_least(version: Option<&str>, min: (u64, u64, u64)) -> bool {
    let Some(v) = version else { return false };
    let mut parts = v.trim().splitn(3, '.');
    let mut next = |last: bool| -> Option<u64> {
        let p = parts.next()?;
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() || (!last && digits.len() != p.len()) {
            return None;
        }
        digits.parse().ok()
    };
    match (next(false), next(false), next(true)) {
        (Some(a), Some(b), Some(c)) => (a, b, c) >= min,
        _ => false,
    }
}

/// Everything the chute Job depends on. Built by Gepetto from the chute and server
/// rows, the allocated GPUs, the Service's node ports and the launch token.
#[derive(Debug, Clone)]
pub struct ChuteJob {
    pub deployment_id: String,
    pub chute_id: String,
    pub version: String,
    /// `username/name:tag[-patch]`.
    pub image: String,
    pub ref_str: String,
    pub filename: String,
    pub chutes_version: Option<String>,
    pub gpu_count: i64,
    /// Kubernetes node name (the pod is bound to it directly).
    pub node_name: String,
    pub server_ip: String,
    pub server_seed: Option<i64>,
    pub cpu_per_gpu: i64,
    pub memory_per_gpu: i64,
    /// The GPUs allocated by `create_deployment` (ids as GraVal reported them).
    pub gpu_ids: Vec<String>,
    pub miner_ss58: String,
    pub validator_ss58: String,
    /// This validator's registry proxy NodePort (30500 by default; one per validator).
    pub registry_port: u16,
    pub ports: ServicePorts,
    pub launch: Option<LaunchToken>,
    pub job_id: Option<String>,
    pub disk_gb: u32,
    pub cache_max_age_days: u32,
    /// `CACHE_OVERRIDES[node]` or `CACHE_MAX_SIZE_GB`.
    pub cache_max_size_gb: u32,
    /// The image of the `cache-init` container: this workspace's runtime image, whose
    /// `chutes-miner cache-clean` prepares and trims the node's chute caches.
    pub cache_cleaner_image: String,
    /// Secrets for a private registry holding the cache-init image (values
    /// `imagePullSecrets`); empty: none.
    pub pull_secrets: Vec<String>,
}

/// The runtime image when none is configured; `minerctl deploy` sets
/// `CACHE_CLEANER_IMAGE` to the locked digest of the image it installs.
pub const DEFAULT_RUNTIME_IMAGE: &str = "chutes-miner:latest";

fn env(name: &str, value: impl ToString) -> Value {
    json!({"name": name, "value": value.to_string()})
}

/// A GPU as `NVIDIA_VISIBLE_DEVICES` names it: `GPU-<uuid>`.
pub fn gpu_device(gpu_id: &str) -> Result<String, ObjectError> {
    canonical_gpu_uuid(gpu_id).map(|u| format!("GPU-{u}"))
}

/// The GPUs a chute pod is pinned to: its containers' `NVIDIA_VISIBLE_DEVICES`, as
/// [`ChuteJob::build`] writes it (nothing for a pod without one).
pub fn pod_gpu_devices(pod: &Pod) -> Vec<&str> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.env.iter().flatten())
        .filter(|e| e.name == "NVIDIA_VISIBLE_DEVICES")
        .filter_map(|e| e.value.as_deref())
        .flat_map(|v| v.split(',').map(str::trim).filter(|d| !d.is_empty()))
        .collect()
}

impl ChuteJob {
    /// Labels of the Job and its pod.
    pub fn labels(&self) -> Value {
        let mut labels = json!({
            l::DEPLOYMENT_ID: self.deployment_id, l::CHUTE: "true",
            l::CHUTE_ID: self.chute_id, l::VERSION: self.version,
        });
        if let Some(t) = &self.launch {
            labels[l::CONFIG_ID] = json!(t.config_id);
        }
        if let Some(job) = &self.job_id {
            labels[l::JOB_ID] = json!(job);
            labels[l::JOB] = json!("true");
        }
        labels
    }

    /// The Job of section 12.1. GPUs are pinned with NVIDIA_VISIBLE_DEVICES, not
    /// requested as `nvidia.com/gpu` (the original's commit e08e8fd).
    pub fn build(&self) -> Result<Job, ObjectError> {
        let devices = self.gpu_ids.iter().map(|g| gpu_device(g)).collect::<Result<Vec<_>, _>>()?;
        if devices.len() as i64 != self.gpu_count {
            return Err(ObjectError::Invalid {
                object: job_name(&self.deployment_id),
                reason: format!("{} GPUs allocated for a chute that needs {}", devices.len(), self.gpu_count),
            });
        }
        let probe = probe_port(self.chutes_version.as_deref());
        let mut command =
            vec!["chutes".to_owned(), "run".into(), self.ref_str.clone(), "--port".into(), "8000".into()];
        if self.launch.is_none()
            && let Some(seed) = self.server_seed
        {
            command.extend(["--graval-seed".into(), seed.to_string()]);
        }
        command.extend([
            "--miner-ss58".into(),
            self.miner_ss58.clone(),
            "--validator-ss58".into(),
            self.validator_ss58.clone(),
        ]);
        let mut envs = vec![
            env("NCCL_P2P_DISABLE", "1"),
            env("NCCL_IB_DISABLE", "1"),
            env("NCCL_SHM_DISABLE", "0"),
            env("NCCL_NET_GDR_LEVEL", "0"),
            env("NVIDIA_VISIBLE_DEVICES", devices.join(",")),
            env("CHUTES_PORT_PRIMARY", self.ports.primary),
            env("CHUTES_PORT_LOGGING", self.ports.logging),
            env("CHUTES_EXECUTION_CONTEXT", "REMOTE"),
            env("VLLM_DISABLE_TELEMETRY", "1"),
            env("NCCL_DEBUG", "INFO"),
            env("NCCL_SOCKET_IFNAME", "lo"),
            env("NCCL_SOCKET_FAMILY", "AF_INET"),
            env("HF_HOME", "/cache"),
            env("CIVITAI_HOME", "/cache/civitai"),
        ];
        if let Some(t) = &self.launch {
            envs.push(env("CHUTES_LAUNCH_JWT", &t.token));
            envs.push(env("CHUTES_EXTERNAL_HOST", &self.server_ip));
        }
        let mut container_ports = vec![
            json!({"containerPort": 8000, "protocol": "TCP"}),
            json!({"containerPort": 8001, "protocol": "TCP"}),
        ];
        let mut declared: BTreeSet<ExtraPort> = BTreeSet::new();
        for (p, node_port) in &self.ports.extra {
            envs.push(env(&format!("CHUTES_PORT_{}_{}", p.protocol, p.port), node_port));
            if !p.is_fixed() && declared.insert(p.clone()) {
                container_ports.push(json!({"containerPort": p.port, "protocol": p.protocol}));
            }
        }
        let resources = json!({
            "cpu": (self.cpu_per_gpu * self.gpu_count).to_string(),
            "memory": format!("{}Gi", self.memory_per_gpu * self.gpu_count),
            "ephemeral-storage": format!("{}Gi", self.disk_gb),
        });
        let labels = self.labels();
        let mut job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name(&self.deployment_id), "labels": labels},
            "spec": {
                "parallelism": 1, "completions": 1, "backoffLimit": 0, "ttlSecondsAfterFinished": 300,
                "template": {
                    "metadata": {"labels": labels, "annotations": {
                        "prometheus.io/scrape": "true", "prometheus.io/path": "/_metrics",
                        "prometheus.io/port": "8000",
                    }},
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeName": self.node_name,
                        "runtimeClassName": "nvidia-container-runtime",
                        "volumes": [
                            {"name": "code", "configMap": {"name": code_configmap_name(&self.chute_id, &self.version)}},
                            {"name": "cache", "hostPath": {"path": format!("/var/snap/cache/{}", self.chute_id),
                                                           "type": "DirectoryOrCreate"}},
                            {"name": "raw-cache", "hostPath": {"path": "/var/snap/cache"}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": format!("{}Gi", self.disk_gb)}},
                            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                        ],
                        "initContainers": [{
                            "name": "cache-init",
                            // Our own runtime image's `cache-clean` (the original ran a
                            // Python script from a ConfigMap in parachutes/cache-cleaner).
                            "image": self.cache_cleaner_image,
                            "command": ["/usr/local/bin/chutes-miner", "cache-clean",
                                        "--root", "/cache", "--chute-id", self.chute_id],
                            "securityContext": {"runAsUser": 0, "runAsGroup": 0},
                            "env": [
                                env("CACHE_MAX_AGE_DAYS", self.cache_max_age_days),
                                env("CACHE_MAX_SIZE_GB", self.cache_max_size_gb),
                            ],
                            "volumeMounts": [
                                {"name": "raw-cache", "mountPath": "/cache"},
                            ],
                        }],
                        "containers": [{
                            "name": "chute",
                            "image": format!("{}.localregistry.chutes.ai:{}/{}",
                                             self.validator_ss58.to_lowercase(), self.registry_port, self.image),
                            "imagePullPolicy": "Always",
                            "command": command,
                            "env": envs,
                            "resources": {"requests": resources, "limits": resources},
                            "volumeMounts": [
                                {"name": "code", "mountPath": format!("/app/{}", self.filename), "subPath": self.filename},
                                {"name": "cache", "mountPath": "/cache"},
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "shm", "mountPath": "/dev/shm"},
                            ],
                            "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}},
                            "ports": container_ports,
                            "readinessProbe": {
                                "exec": {"command": ["curl", "-f", format!("http://127.0.0.1:{probe}/_alive")]},
                                "initialDelaySeconds": 15, "periodSeconds": 15, "timeoutSeconds": 1,
                                "failureThreshold": 60,
                            },
                        }],
                    }
                }
            }
        });
        if !self.pull_secrets.is_empty() {
            job["spec"]["template"]["spec"]["imagePullSecrets"] =
                self.pull_secrets.iter().map(|n| json!({"name": n})).collect();
        }
        typed(&job_name(&self.deployment_id), job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_port_follows_the_chutes_version() {
        assert_eq!(probe_port(Some("0.3.3")), 8001);
        assert_eq!(probe_port(Some("0.3.10.rc1")), 8001);
        assert_eq!(probe_port(Some("0.3.2")), 8000);
        assert_eq!(probe_port(Some("garbage")), 8000);
        assert_eq!(probe_port(None), 8000);
        assert!(version_at_least(Some("1.0.0"), (0, 3, 0)));
        assert!(!version_at_least(Some("0.2.99"), (0, 3, 0)));
    }

    #[test]
    fn extra_ports_map_protocols_and_dedup() {
        let p = ExtraPort::dedup([
            ExtraPort::new(9000, "http"),
            ExtraPort::new(9000, "tcp"),
            ExtraPort::new(9001, "udp"),
        ]);
        assert_eq!(p, vec![ExtraPort::new(9000, "TCP"), ExtraPort::new(9001, "UDP")]);
    }

    /// `(name, port, protocol)` of each Service port, in order.
    fn service_ports(svc: &Service) -> Vec<(String, i32, String)> {
        let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref()).cloned().unwrap_or_default();
        ports
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.port, p.protocol.unwrap_or_default()))
            .collect()
    }

    fn assert_unique(ports: &[(String, i32, String)]) {
        let names: BTreeSet<&str> = ports.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(names.len(), ports.len(), "duplicate port names in {ports:?}");
        let keys: BTreeSet<(i32, &str)> = ports.iter().map(|p| (p.1, p.2.as_str())).collect();
        assert_eq!(keys.len(), ports.len(), "duplicate port/protocol in {ports:?}");
    }

    #[test]
    fn one_port_over_tcp_and_udp_gets_unique_service_port_names() {
        let extra = ExtraPort::dedup([ExtraPort::new(9000, "udp"), ExtraPort::new(9000, "tcp")]);
        let ports = service_ports(&service("d", "c", "v", &extra).unwrap_or_else(|e| panic!("{e}")));
        assert_unique(&ports);
        let s = |n: &str, p: i32, proto: &str| (n.to_owned(), p, proto.to_owned());
        assert_eq!(
            ports,
            vec![
                s("chute-8000", 8000, "TCP"),
                s("chute-8001", 8001, "TCP"),
                s("chute-9000-udp", 9000, "UDP"),
                s("chute-9000", 9000, "TCP"),
            ]
        );
    }

    /// A Service as the API server answers it: `service(...)` with node ports filled in.
    fn with_node_ports(mut svc: Service, node_ports: &[((i32, &str), i32)]) -> Service {
        for p in svc.spec.as_mut().and_then(|s| s.ports.as_mut()).into_iter().flatten() {
            let key = (p.port, p.protocol.as_deref().unwrap_or("TCP"));
            p.node_port = node_ports.iter().find(|(k, _)| *k == key).map(|(_, n)| *n);
        }
        svc
    }

    #[test]
    fn from_service_maps_each_protocol_to_its_own_node_port() {
        let extra = vec![ExtraPort::new(9000, "tcp"), ExtraPort::new(9000, "udp")];
        let svc = service("d", "c", "v", &extra).unwrap_or_else(|e| panic!("{e}"));
        let svc = with_node_ports(
            svc,
            &[((8000, "TCP"), 31000), ((8001, "TCP"), 31001), ((9000, "UDP"), 31003), ((9000, "TCP"), 31002)],
        );
        let got = ServicePorts::from_service(&svc, &extra).unwrap_or_else(|| panic!("no node ports"));
        assert_eq!(
            got,
            ServicePorts {
                primary: 31000,
                logging: 31001,
                extra: vec![(ExtraPort::new(9000, "tcp"), 31002), (ExtraPort::new(9000, "udp"), 31003)],
            }
        );
        // A UDP-only port is not answered by a TCP one of the same number.
        let tcp_only = with_node_ports(
            service("d", "c", "v", &extra[..1]).unwrap_or_else(|e| panic!("{e}")),
            &[((8000, "TCP"), 31000), ((8001, "TCP"), 31001), ((9000, "TCP"), 31002)],
        );
        assert_eq!(ServicePorts::from_service(&tcp_only, &extra[1..]), None);
    }

    #[test]
    fn extra_ports_equal_to_the_fixed_ones_keep_the_fixed_ones() {
        let extra = ExtraPort::dedup([
            ExtraPort::new(8000, "tcp"),
            ExtraPort::new(8001, "http"),
            ExtraPort::new(8000, "udp"),
        ]);
        let svc = service("d", "c", "v", &extra).unwrap_or_else(|e| panic!("{e}"));
        let ports = service_ports(&svc);
        assert_unique(&ports);
        let s = |n: &str, p: i32, proto: &str| (n.to_owned(), p, proto.to_owned());
        assert_eq!(
            ports,
            vec![
                s("chute-8000", 8000, "TCP"),
                s("chute-8001", 8001, "TCP"),
                s("chute-8000-udp", 8000, "UDP")
            ]
        );
        // The chute still learns where each requested port is reachable.
        let svc =
            with_node_ports(svc, &[((8000, "TCP"), 31000), ((8001, "TCP"), 31001), ((8000, "UDP"), 31002)]);
        let got = ServicePorts::from_service(&svc, &extra).unwrap_or_else(|| panic!("no node ports"));
        assert_eq!(
            got.extra,
            vec![
                (ExtraPort::new(8000, "tcp"), 31000),
                (ExtraPort::new(8001, "tcp"), 31001),
                (ExtraPort::new(8000, "udp"), 31002)
            ]
        );
    }
}

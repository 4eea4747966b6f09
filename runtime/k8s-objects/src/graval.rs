//! The GraVal bootstrap Job `graval-<nice>` and Service `graval-service-<nice>`
//! that add-node runs on a new server (reference section 12.4).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use crate::{ObjectError, typed};

/// `<node name with . replaced by ->`.
pub fn nice_name(node: &str) -> String {
    node.replace('.', "-")
}

pub fn job_name(node: &str) -> String {
    format!("graval-{}", nice_name(node))
}

pub fn service_name(node: &str) -> String {
    format!("graval-service-{}", nice_name(node))
}

/// Label selector matching the GraVal Jobs of one node. The original's check used
/// `chute/chute=true,app=graval`, which never matched (its Jobs carry `chute/chute=false`).
pub fn job_selector(node: &str) -> String {
    format!("app=graval,graval-node={node}")
}

/// Label selector of the pods of a node's GraVal Job.
pub fn pod_selector(node: &str) -> String {
    format!("job-name={}", job_name(node))
}

/// The port graval-bootstrap serves on (its `--port`; `/ping` answers `pong` unsigned).
pub const GRAVAL_PORT: u16 = 8000;

/// The NodePort Service in front of GraVal's port 8000.
pub fn service(node: &str) -> Result<Service, ObjectError> {
    typed(
        "GraVal service",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(node), "labels": {"app": "graval", "graval-node": node}},
            "spec": {"type": "NodePort", "selector": {"app": "graval", "graval-node": node},
                     "ports": [{"port": GRAVAL_PORT, "targetPort": GRAVAL_PORT, "protocol": "TCP"}]}
        }),
    )
}

/// What the GraVal Job needs to know about the server.
#[derive(Debug, Clone)]
pub struct GravalJob<'a> {
    pub node: &'a str,
    pub image: &'a str,
    pub validator: &'a str,
    pub miner_ss58: &'a str,
    pub gpu_count: i64,
    pub cpu_per_gpu: i64,
    pub memory_per_gpu: i64,
    /// Secrets for a private registry (values `imagePullSecrets`); empty: none.
    pub pull_secrets: &'a [String],
}

impl GravalJob<'_> {
    pub fn build(&self) -> Result<Job, ObjectError> {
        let cpu = self.gpu_count * self.cpu_per_gpu;
        let memory = format!("{}Gi", self.gpu_count * self.memory_per_gpu);
        let resources =
            json!({"cpu": cpu.to_string(), "memory": memory, "nvidia.com/gpu": self.gpu_count.to_string()});
        let mut job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name(self.node),
                         "labels": {"app": "graval", "chute/chute": "false", "graval-node": self.node}},
            "spec": {
                "parallelism": 1, "completions": 1, "backoffLimit": 3, "ttlSecondsAfterFinished": 300,
                "template": {
                    "metadata": {"labels": {"app": "graval", "graval-node": self.node}},
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "nodeName": self.node,
                        "runtimeClassName": "nvidia-container-runtime",
                        "containers": [{
                            "name": "graval",
                            "image": self.image,
                            // Images reach nodes by `minerctl images push`: imported into
                            // containerd (`chutes.local` is no registry, a pull would fail)
                            // or pulled once from values `images.registry`.
                            "imagePullPolicy": "IfNotPresent",
                            // The image's entrypoint is graval-bootstrap; every GPU by CUDA.
                            "args": ["--backend", "cuda", "--port", GRAVAL_PORT.to_string()],
                            "env": [
                                {"name": "VALIDATOR_WHITELIST", "value": self.validator},
                                {"name": "MINER_HOTKEY_SS58", "value": self.miner_ss58},
                            ],
                            "resources": {"requests": resources, "limits": resources},
                            "ports": [{"containerPort": GRAVAL_PORT, "protocol": "TCP"}],
                            // The kubelet asks; the image has no curl (nor a shell).
                            "readinessProbe": {
                                "httpGet": {"path": "/ping", "port": GRAVAL_PORT, "scheme": "HTTP"},
                                "initialDelaySeconds": 15, "periodSeconds": 10, "timeoutSeconds": 1,
                                "failureThreshold": 3
                            }
                        }]
                    }
                }
            }
        });
        if !self.pull_secrets.is_empty() {
            job["spec"]["template"]["spec"]["imagePullSecrets"] =
                self.pull_secrets.iter().map(|n| json!({"name": n})).collect();
        }
        typed("GraVal job", job)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn graval_names_replace_dots() {
        assert_eq!(nice_name("gpu-1.example.com"), "gpu-1-example-com");
        assert_eq!(service_name("a.b"), "graval-service-a-b");
    }

    #[test]
    fn graval_job_requests_every_gpu_of_the_node() {
        let job = GravalJob {
            node: "gpu-1",
            image: "img",
            validator: "5V",
            miner_ss58: "5M",
            gpu_count: 8,
            cpu_per_gpu: 4,
            memory_per_gpu: 80,
            pull_secrets: &[],
        }
        .build()
        .unwrap();
        let v = serde_json::to_value(&job).unwrap();
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"], json!({"cpu": "32", "memory": "640Gi", "nvidia.com/gpu": "8"}));
        assert_eq!(v["metadata"]["labels"]["chute/chute"], "false");
        assert_eq!(v["spec"]["template"]["spec"]["nodeName"], "gpu-1");
    }

    #[test]
    fn a_private_registry_gets_its_pull_secrets_and_none_are_named_otherwise() {
        let secrets = vec!["regcred".to_owned()];
        let with = |pull_secrets: &[String]| {
            let job = GravalJob {
                node: "gpu-1",
                image: "registry.example:5000/graval-bootstrap-cuda@sha256:0123",
                validator: "5V",
                miner_ss58: "5M",
                gpu_count: 1,
                cpu_per_gpu: 4,
                memory_per_gpu: 80,
                pull_secrets,
            }
            .build()
            .unwrap();
            serde_json::to_value(&job).unwrap()["spec"]["template"]["spec"]["imagePullSecrets"].clone()
        };
        assert_eq!(with(&secrets), json!([{"name": "regcred"}]));
        assert_eq!(with(&[]), serde_json::Value::Null);
    }

    /// The whole Job as the API creates it: a change to the image policy, arguments,
    /// probe or labels shows up here as a diff to review.
    #[test]
    fn graval_job_snapshot() {
        let job = GravalJob {
            node: "gpu-1.lab",
            image: "chutes.local/graval-bootstrap-cuda@sha256:0123",
            validator: "5Validator",
            miner_ss58: "5Miner",
            gpu_count: 2,
            cpu_per_gpu: 4,
            memory_per_gpu: 80,
            pull_secrets: &[],
        }
        .build()
        .unwrap();
        let resources = json!({"cpu": "8", "memory": "160Gi", "nvidia.com/gpu": "2"});
        let expected = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "graval-gpu-1-lab",
                         "labels": {"app": "graval", "chute/chute": "false", "graval-node": "gpu-1.lab"}},
            "spec": {
                "parallelism": 1, "completions": 1, "backoffLimit": 3, "ttlSecondsAfterFinished": 300,
                "template": {
                    "metadata": {"labels": {"app": "graval", "graval-node": "gpu-1.lab"}},
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "nodeName": "gpu-1.lab",
                        "runtimeClassName": "nvidia-container-runtime",
                        "containers": [{
                            "name": "graval",
                            "image": "chutes.local/graval-bootstrap-cuda@sha256:0123",
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["--backend", "cuda", "--port", "8000"],
                            "env": [
                                {"name": "VALIDATOR_WHITELIST", "value": "5Validator"},
                                {"name": "MINER_HOTKEY_SS58", "value": "5Miner"},
                            ],
                            "resources": {"requests": resources, "limits": resources},
                            "ports": [{"containerPort": 8000, "protocol": "TCP"}],
                            "readinessProbe": {
                                "httpGet": {"path": "/ping", "port": 8000, "scheme": "HTTP"},
                                "initialDelaySeconds": 15, "periodSeconds": 10, "timeoutSeconds": 1,
                                "failureThreshold": 3
                            }
                        }]
                    }
                }
            }
        });
        assert_eq!(serde_json::to_value(&job).unwrap(), expected);
    }
}

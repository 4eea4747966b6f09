//! The kinds the emulator serves: what discovery lists and what CRUD accepts. Adding a kind
//! here is enough for plain CRUD/apply/watch; lifecycle behaviour lives in `controllers`.

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    /// Writes to the main resource leave `.status` alone; `/status` writes only `.status`.
    pub has_status: bool,
}

impl Kind {
    /// Whether the real server keeps `metadata.generation` (workloads do; ConfigMaps,
    /// Secrets, Services, Pods and the like do not).
    pub fn has_generation(&self) -> bool {
        matches!(self.kind, "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" | "NetworkPolicy")
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

macro_rules! kind {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $namespaced:expr, $status:expr) => {
        Kind {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            has_status: $status,
        }
    };
}

pub const KINDS: &[Kind] = &[
    kind!("", "v1", "Namespace", "namespaces", "namespace", false, true),
    kind!("", "v1", "Node", "nodes", "node", false, true),
    kind!("", "v1", "Pod", "pods", "pod", true, true),
    kind!("", "v1", "Service", "services", "service", true, true),
    kind!("", "v1", "ConfigMap", "configmaps", "configmap", true, false),
    kind!("", "v1", "Secret", "secrets", "secret", true, false),
    kind!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true, false),
    kind!("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", true, true),
    kind!("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", false, false),
    kind!("", "v1", "Event", "events", "event", true, false),
    kind!("apps", "v1", "Deployment", "deployments", "deployment", true, true),
    kind!("apps", "v1", "StatefulSet", "statefulsets", "statefulset", true, true),
    kind!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, true),
    kind!("batch", "v1", "Job", "jobs", "job", true, true),
    kind!("batch", "v1", "CronJob", "cronjobs", "cronjob", true, true),
    kind!("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", true, false),
    kind!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true, false),
    kind!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", true, false),
    kind!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", false, false),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        false
    ),
    kind!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, false),
    kind!("events.k8s.io", "v1", "Event", "events", "event", true, false),
];

/// By group and plural, as URLs name them.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// By apiVersion and kind, as objects name themselves.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.api_version() == api_version && k.kind == kind)
}

/// Groups in discovery order (core excluded).
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KINDS {
        if !k.group.is_empty() && !out.contains(&k.group) {
            out.push(k.group);
        }
    }
    out
}

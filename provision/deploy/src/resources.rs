//! apiVersion/kind -> the REST resource to call, from the k8s-openapi types themselves, so
//! no discovery round trip is needed and a typo cannot name a plural that does not exist.

use k8s_openapi::api::{apps, batch, core, networking, rbac, storage};
use kube::discovery::ApiResource;

pub fn api_resource(api_version: &str, kind: &str) -> Option<ApiResource> {
    let r = match (api_version, kind) {
        ("v1", "Namespace") => ApiResource::erase::<core::v1::Namespace>(&()),
        ("v1", "ServiceAccount") => ApiResource::erase::<core::v1::ServiceAccount>(&()),
        ("v1", "Secret") => ApiResource::erase::<core::v1::Secret>(&()),
        ("v1", "ConfigMap") => ApiResource::erase::<core::v1::ConfigMap>(&()),
        ("v1", "Service") => ApiResource::erase::<core::v1::Service>(&()),
        ("v1", "PersistentVolumeClaim") => ApiResource::erase::<core::v1::PersistentVolumeClaim>(&()),
        ("v1", "Pod") => ApiResource::erase::<core::v1::Pod>(&()),
        ("storage.k8s.io/v1", "StorageClass") => ApiResource::erase::<storage::v1::StorageClass>(&()),
        ("apps/v1", "Deployment") => ApiResource::erase::<apps::v1::Deployment>(&()),
        ("apps/v1", "StatefulSet") => ApiResource::erase::<apps::v1::StatefulSet>(&()),
        ("apps/v1", "DaemonSet") => ApiResource::erase::<apps::v1::DaemonSet>(&()),
        ("batch/v1", "Job") => ApiResource::erase::<batch::v1::Job>(&()),
        ("batch/v1", "CronJob") => ApiResource::erase::<batch::v1::CronJob>(&()),
        ("networking.k8s.io/v1", "NetworkPolicy") => ApiResource::erase::<networking::v1::NetworkPolicy>(&()),
        ("rbac.authorization.k8s.io/v1", "Role") => ApiResource::erase::<rbac::v1::Role>(&()),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => ApiResource::erase::<rbac::v1::RoleBinding>(&()),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => ApiResource::erase::<rbac::v1::ClusterRole>(&()),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            ApiResource::erase::<rbac::v1::ClusterRoleBinding>(&())
        }
        _ => return None,
    };
    Some(r)
}

//! Rendered output: deterministic, typed, secret-free, and held by snapshots.
//! Update snapshots with `UPDATE_EXPECT=1 cargo test -p minerctl-manifests`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeSet;

use minerctl_manifests::{Layer, Lifecycle, MANAGED_BY, MANAGED_BY_LABEL, Values, render};
use serde_json::Value;

fn full_values() -> Values {
    Values::load(&[Layer::File(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/full-values.yaml").into(),
    )])
    .unwrap()
}

#[test]
fn default_render_matches_snapshot() {
    let yaml = render(&Values::defaults().unwrap()).unwrap().to_yaml();
    expect_test::expect_file!["snapshots/default.yaml"].assert_eq(&yaml);
}

#[test]
fn full_render_matches_snapshot() {
    let yaml = render(&full_values()).unwrap().to_yaml();
    expect_test::expect_file!["snapshots/full.yaml"].assert_eq(&yaml);
}

#[test]
fn render_is_byte_for_byte_deterministic() {
    let v = full_values();
    let a = render(&v).unwrap().to_yaml();
    let b = render(&v.clone()).unwrap().to_yaml();
    assert_eq!(a, b);
}

#[test]
fn output_parses_back_into_the_same_objects() {
    let m = render(&full_values()).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&m.to_yaml()).unwrap();
    let values: Vec<&Value> = m.objects.iter().map(|o| &o.value).collect();
    assert_eq!(docs.iter().collect::<Vec<_>>(), values);
}

#[test]
fn every_object_is_labelled_and_namespaced_where_it_must_be() {
    let m = render(&full_values()).unwrap();
    let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"];
    for o in &m.objects {
        assert_eq!(o.value["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY, "{}", o.key());
        assert_eq!(o.namespace().is_none(), cluster_scoped.contains(&o.kind()), "{}", o.key());
        if let Some(ns) = o.namespace() {
            assert_eq!(ns, "miner", "{}", o.key());
        }
    }
}

#[test]
fn rendered_manifests_carry_no_secret_values() {
    let m = render(&full_values()).unwrap();
    let secrets: Vec<_> = m.objects.iter().filter(|o| o.kind() == "Secret").collect();
    assert_eq!(secrets.len(), 2);
    for s in secrets {
        assert!(s.value.get("data").is_none() && s.value.get("stringData").is_none());
        assert_eq!(s.lifecycle(), Lifecycle::CreateOnce);
        assert_eq!(s.generated_keys().len(), 1);
    }
    // Every credential reaches pods by reference only.
    fn walk(v: &Value, found: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let (Some(Value::String(name)), Some(_)) = (m.get("name"), m.get("value"))
                    && ["SEED", "PASSWORD", "SS58"].iter().any(|s| name.contains(s))
                {
                    found.push(name.clone());
                }
                m.values().for_each(|v| walk(v, found));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut literal = Vec::new();
    m.objects.iter().for_each(|o| walk(&o.value, &mut literal));
    assert!(literal.is_empty(), "credentials given as literals: {literal:?}");
}

#[test]
fn two_validators_get_their_own_registry_service_and_nginx_route() {
    let m = render(&full_values()).unwrap();
    let ports: BTreeSet<i64> = m
        .objects
        .iter()
        .filter(|o| o.kind() == "Service")
        .flat_map(|o| o.value["spec"]["ports"].as_array().unwrap().clone())
        .filter_map(|p| p["nodePort"].as_i64())
        .collect();
    assert_eq!(ports, BTreeSet::from([30500, 30501, 31000, 32000]));
    let conf =
        m.objects.iter().find(|o| o.name() == "registry-nginx-config").unwrap().value["data"]["nginx.conf"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(conf.contains(r#""~*^5dt7hz7zpw4dpppxfm7ke3cm7sdawhszxmm5zame7dsvjbcq\.localregistry\.chutes\.ai(:[0-9]+)?$" registry.chutes.ai;"#));
    assert!(conf.contains("registry.other.example;"));
    assert!(conf.contains("listen 5000;"));
}

/// `/registry/auth` trusts private source addresses. Behind a NodePort with the
/// default policy kube-proxy rewrites outside callers to a node address, so the API
/// Service must keep client addresses.
#[test]
fn the_api_service_keeps_client_addresses_for_registry_auth() {
    for values in [Values::defaults().unwrap(), full_values()] {
        let m = render(&values).unwrap();
        let api = m.objects.iter().find(|o| o.kind() == "Service" && o.name() == "api").unwrap();
        assert_eq!(api.value["spec"]["type"], "NodePort");
        assert_eq!(api.value["spec"]["externalTrafficPolicy"], "Local", "{}", api.value);
    }
}

/// Porter limits connections and requests per peer address. Behind a NodePort with the
/// default policy kube-proxy rewrites every outside caller to a node address, so one
/// caller's connections would use up every validator's share.
#[test]
fn the_porter_service_keeps_client_addresses_for_its_per_peer_limits() {
    let m = render(&full_values()).unwrap();
    let porter = m.objects.iter().find(|o| o.kind() == "Service" && o.name() == "porter").unwrap();
    assert_eq!(porter.value["spec"]["type"], "NodePort");
    assert_eq!(porter.value["spec"]["externalTrafficPolicy"], "Local", "{}", porter.value);
}

#[test]
fn optional_components_follow_their_switches() {
    let names = |v: &Values| -> BTreeSet<String> {
        render(v).unwrap().objects.iter().map(|o| format!("{}/{}", o.kind(), o.name())).collect()
    };
    let defaults = names(&Values::defaults().unwrap());
    assert!(!defaults.contains("Deployment/porter"));
    assert!(defaults.contains("CronJob/audit-exporter"));
    let full = names(&full_values());
    assert!(full.contains("Deployment/porter") && full.contains("Service/porter"));
    let off = names(
        &Values::load(&[Layer::Set("auditExporter.enabled=false,failedChuteCleanup.enabled=false".into())])
            .unwrap(),
    );
    assert!(!off.iter().any(|n| n.starts_with("CronJob/")));
}

#[test]
fn host_path_persistence_replaces_the_claim() {
    let postgres = |m: &minerctl_manifests::Manifest| {
        m.objects.iter().find(|o| o.kind() == "StatefulSet" && o.name() == "postgres").unwrap().clone()
    };
    let m = render(&full_values()).unwrap();
    let pg = postgres(&m);
    assert!(pg.value["spec"].get("volumeClaimTemplates").is_none());
    assert_eq!(
        pg.value["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"],
        "/var/snap/postgres-data"
    );
    let m = render(&Values::defaults().unwrap()).unwrap();
    let pg = postgres(&m);
    assert_eq!(
        pg.value["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "100Gi"
    );
}

#[test]
fn gepetto_gets_its_strategy_and_records_into_the_host_directory_when_asked() {
    let gepetto = |v: &Values| {
        let m = render(v).unwrap();
        m.objects.iter().find(|o| o.kind() == "Deployment" && o.name() == "gepetto").unwrap().value.clone()
    };
    let env = |d: &Value, name: &str| {
        let env = d["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
        env.iter().find(|e| e["name"] == name).map(|e| e["value"].as_str().unwrap().to_owned())
    };
    let d = gepetto(&full_values());
    assert_eq!(env(&d, "GEPETTO_STRATEGY").as_deref(), Some("heuristic"));
    let file = env(&d, "GEPETTO_RECORD_TRACE").unwrap();
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/var/lib/chutes-miner/gepetto");
    let mount = spec["containers"][0]["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(file, format!("{mount}/trace.jsonl"), "the file is inside the mounted host directory");

    let d = gepetto(&Values::defaults().unwrap());
    assert_eq!(env(&d, "GEPETTO_STRATEGY").as_deref(), Some("multiplier"));
    assert_eq!(env(&d, "GEPETTO_RECORD_TRACE"), None);
    assert!(d["spec"]["template"]["spec"].get("volumes").is_none());
}

#[test]
fn objects_come_in_dependency_order() {
    let m = render(&full_values()).unwrap();
    let kinds: Vec<&str> = m.objects.iter().map(|o| o.kind()).collect();
    let pos = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert_eq!(pos("Namespace"), 0);
    assert!(pos("ServiceAccount") < pos("Deployment"));
    assert!(pos("Secret") < pos("StatefulSet"));
    assert!(pos("ConfigMap") < pos("DaemonSet"));
    assert!(pos("Service") < pos("DaemonSet"));
}

fn object<'m>(m: &'m minerctl_manifests::Manifest, kind: &str, name: &str) -> &'m Value {
    &m.objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
        .value
}

/// Every container (init containers too) of every workload, with the object it is in.
fn containers(m: &minerctl_manifests::Manifest) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for o in &m.objects {
        let spec = match o.kind() {
            "CronJob" => &o.value["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => &o.value["spec"]["template"]["spec"],
        };
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                out.push((format!("{}/{}", o.kind(), o.name()), c.clone()));
            }
        }
    }
    out
}

#[test]
fn redis_keeps_an_fsynced_append_only_file_on_a_claim() {
    let m = render(&full_values()).unwrap();
    let redis = object(&m, "StatefulSet", "redis");
    assert_eq!(redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data");
    assert_eq!(redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "10Gi");
    let server = &redis["spec"]["template"]["spec"]["containers"][0];
    assert!(
        server["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "data" && v["mountPath"] == "/data"),
        "{server}"
    );
    let conf = object(&m, "ConfigMap", "redis-config")["data"]["redis.conf"].as_str().unwrap().to_string();
    for line in ["dir /data", "appendonly yes", "appendfsync always"] {
        assert!(conf.lines().any(|l| l == line), "{line} missing from:\n{conf}");
    }
    // The config file the server is started with includes that one, then the password.
    assert_eq!(server["args"], serde_json::json!(["/run/redis/redis.conf", "--maxmemory", "512mb"]));

    let everysec = render(
        &Values::load(&[Layer::Set("redis.appendfsync=everysec,redis.persistence.storageClass=fast".into())])
            .unwrap(),
    )
    .unwrap();
    let conf =
        object(&everysec, "ConfigMap", "redis-config")["data"]["redis.conf"].as_str().unwrap().to_string();
    assert!(conf.lines().any(|l| l == "appendfsync everysec"), "{conf}");
    assert_eq!(
        object(&everysec, "StatefulSet", "redis")["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast"
    );
    let err = Values::load(&[Layer::Set("redis.appendfsync=no".into())]).unwrap_err().to_string();
    assert!(err.contains("redis.appendfsync"), "{err}");
}

#[test]
fn the_redis_password_reaches_the_server_only_through_a_file_from_the_secret() {
    let m = render(&full_values()).unwrap();
    let redis = object(&m, "StatefulSet", "redis");
    let pod = &redis["spec"]["template"]["spec"];
    for (_, c) in containers(&m).iter().filter(|(o, _)| o == "StatefulSet/redis") {
        let text = format!("{} {}", c["command"], c["args"]);
        assert!(!text.contains("requirepass\", \"$("), "password in arguments: {text}");
        assert!(!text.contains("--requirepass"), "password in arguments: {text}");
        assert!(c.get("env").is_none(), "no environment carries the password: {c}");
    }
    let secret = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "secret").unwrap();
    assert_eq!(secret["secret"]["secretName"], "redis-secret");
    let init = &pod["initContainers"][0];
    let script = init["command"][2].as_str().unwrap();
    assert!(
        script.contains("/secret/redis-password") && script.contains("> /run/redis/redis.conf"),
        "{script}"
    );
    let memory = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "runtime-config").unwrap();
    assert_eq!(memory["emptyDir"]["medium"], "Memory", "the password file never reaches a disk");
}

#[test]
fn every_runtime_component_runs_this_projects_binary() {
    let m = render(&full_values()).unwrap();
    let yaml = m.to_yaml();
    for python in [
        "poetry",
        "uvicorn",
        "gepetto.py",
        "audit_exporter.py",
        "parachutes/miner",
        "parachutes/porter",
        "opencl:0.2.6-cuda",
    ] {
        assert!(!yaml.contains(python), "{python} still in the render");
    }
    let miner = "chutes.local/chutes-miner:unbuilt";
    let mut seen = BTreeSet::new();
    for (owner, c) in containers(&m) {
        if c["image"] != miner {
            continue;
        }
        assert_eq!(c["command"][0], "/usr/local/bin/chutes-miner", "{owner}");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{owner}: imported images are never pulled");
        seen.insert(format!("{owner} {}", c["command"][1].as_str().unwrap()));
    }
    let expected = [
        "CronJob/audit-exporter audit-export",
        "Deployment/api api",
        "Deployment/api migrate",
        "Deployment/gepetto gepetto",
        "Deployment/gepetto migrate",
        "Deployment/porter porter",
    ];
    assert_eq!(seen, expected.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
    // Migrations run before the API and Gepetto start, with the database settings only.
    for name in ["api", "gepetto"] {
        let init = &object(&m, "Deployment", name)["spec"]["template"]["spec"]["initContainers"][0];
        assert_eq!(init["command"][1], "migrate");
        let env: Vec<&str> =
            init["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(env, ["POSTGRES_PASSWORD", "POSTGRESQL"]);
    }
    let api = &object(&m, "Deployment", "api")["spec"]["template"]["spec"]["containers"][0];
    let graval =
        api["env"].as_array().unwrap().iter().find(|e| e["name"] == "GRAVAL_BOOTSTRAP_IMAGE").unwrap();
    assert_eq!(graval["value"], "chutes.local/graval-bootstrap-cuda:unbuilt");
}

#[test]
fn bound_only_management_reaches_the_api_only_when_asked() {
    let api_env = |values: &Values| {
        let m = render(values).unwrap();
        containers(&m)
            .into_iter()
            .find(|(owner, c)| owner == "Deployment/api" && c["name"] == "api")
            .map(|(_, c)| c["env"].clone())
            .unwrap()
    };
    let has_flag = |env: &Value| {
        env.as_array().unwrap().iter().any(|e| e["name"] == "MANAGEMENT_BOUND_ONLY" && e["value"] == "true")
    };
    let mut values = Values::defaults().unwrap();
    assert!(!has_flag(&api_env(&values)), "off by default: the original CLI must keep working");
    values.miner_api.bound_management_only = true;
    assert!(has_flag(&api_env(&values)));
}

#[test]
fn prometheus_server_scrapes_chute_pods_metrics_on_the_control_node_without_persistence() {
    let m = render(&full_values()).unwrap();
    // The names the runtime uses: Gepetto's and the audit exporter's URL, the audit
    // exporter's pod labels and container name.
    let svc = object(&m, "Service", "prometheus-server");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 9090);
    let dep = object(&m, "Deployment", "prometheus-server");
    let pod = &dep["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/name"], "prometheus");
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/component"], "server");
    assert_eq!(pod["spec"]["containers"][0]["name"], "prometheus-server");
    // Placed as the other control components: the control node selector, never a GPU node.
    let api = &object(&m, "Deployment", "api")["spec"]["template"]["spec"];
    assert_eq!(pod["spec"]["nodeSelector"], api["nodeSelector"]);
    assert!(!pod["spec"]["nodeSelector"].is_null(), "the full values pin control components");
    assert_eq!(pod["spec"]["affinity"], api["affinity"]);
    // Persistence off by default, as in the original: an emptyDir, no claim.
    let data = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "data").unwrap();
    assert!(data.get("emptyDir").is_some(), "{data}");
    assert!(
        !m.objects.iter().any(|o| o.kind() == "PersistentVolumeClaim" && o.name() == "prometheus-server")
    );
    // The scrape job: pods of this namespace, by their prometheus.io annotations (the chute
    // Job's /_metrics on 8000); it may read pods of its namespace only.
    let cfg = object(&m, "ConfigMap", "prometheus-server")["data"]["prometheus.yml"].as_str().unwrap();
    let cfg: Value = serde_saphyr::from_str(cfg).unwrap();
    let job = &cfg["scrape_configs"][0];
    assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
    assert_eq!(job["kubernetes_sd_configs"][0]["namespaces"]["names"][0], full_values().namespace.as_str());
    let relabel = job["relabel_configs"].as_array().unwrap();
    assert!(
        relabel
            .iter()
            .any(|r| r["source_labels"][0] == "__meta_kubernetes_pod_annotation_prometheus_io_scrape"
                && r["action"] == "keep")
    );
    assert!(relabel.iter().any(|r| r["target_label"] == "__metrics_path__"));
    assert!(relabel.iter().any(|r| r["target_label"] == "__address__" && r["replacement"] == "$1:$2"));
    let role = object(&m, "Role", "prometheus-server");
    assert_eq!(role["rules"][0]["resources"][0], "pods");
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "list", "watch"]));

    // Asked for: a claim of the given size holds the data.
    let v = Values::load(&[Layer::Set(
        "prometheus.persistence.enabled=true,prometheus.persistence.size=5Gi".into(),
    )])
    .unwrap();
    let m = render(&v).unwrap();
    assert_eq!(
        object(&m, "PersistentVolumeClaim", "prometheus-server")["spec"]["resources"]["requests"]["storage"],
        "5Gi"
    );
    let pod = &object(&m, "Deployment", "prometheus-server")["spec"]["template"]["spec"];
    let data = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "data").unwrap();
    assert_eq!(data["persistentVolumeClaim"]["claimName"], "prometheus-server");
}

/// Every Kubernetes type the runtime's code names (`k8s_openapi::api::<group>::<version>::<Kind>`)
/// is granted by the miner's Role or ClusterRole: with RBAC on (microk8s leaves it off by
/// default, so nothing else would notice), a missing rule is a 403 at run time.
#[test]
fn the_miner_roles_grant_every_resource_the_runtime_uses() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../runtime");
    let mut sources = vec![std::path::PathBuf::from(root)];
    let mut text = String::new();
    while let Some(dir) = sources.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() && name != "tests" && name != "target" {
                sources.push(path);
            } else if name.ends_with(".rs") {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    // (path in k8s_openapi, API group, resource)
    let known = [
        ("batch::v1::Job", "batch", "jobs"),
        ("core::v1::Pod", "", "pods"),
        ("core::v1::Service", "", "services"),
        ("core::v1::ConfigMap", "", "configmaps"),
        ("core::v1::Node", "", "nodes"),
        ("apps::v1::Deployment", "apps", "deployments"),
    ];
    let m = render(&Values::defaults().unwrap()).unwrap();
    let granted: Vec<(String, String)> = m
        .objects
        .iter()
        .filter(|o| (o.kind() == "Role" && o.name() == "chutes") || o.kind() == "ClusterRole")
        .flat_map(|o| o.value["rules"].as_array().unwrap().clone())
        .filter(|r| r["verbs"].as_array().unwrap().iter().any(|v| v == "get"))
        .flat_map(|r| {
            let groups: Vec<String> =
                r["apiGroups"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_owned()).collect();
            let resources: Vec<String> =
                r["resources"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect();
            groups.into_iter().flat_map(move |g| resources.clone().into_iter().map(move |x| (g.clone(), x)))
        })
        .collect();
    let mut used = 0;
    for (path, group, resource) in known {
        let kind = path.rsplit("::").next().unwrap();
        let named = text.contains(&format!("api::{path}")) || {
            let (module, _) = path.rsplit_once("::").unwrap();
            text.contains(&format!("api::{module}::{{")) && text.contains(kind)
        };
        if named {
            used += 1;
            assert!(
                granted.iter().any(|(g, r)| g == group && r == resource),
                "the runtime uses {path} but no miner role grants get on {group}/{resource}"
            );
        }
    }
    assert!(used >= 5, "the scan found the runtime's Kubernetes types ({used})");
}

/// The API's pod outlives its own shutdown: stopping add-node bootstraps (up to
/// `miner_api::BOOTSTRAP_CLEANUP_BOUND`, 30 s) and flushing events (10 s) before a SIGKILL.
#[test]
fn the_api_has_time_to_undo_an_add_node_when_it_stops() {
    let m = render(&Values::defaults().unwrap()).unwrap();
    let api = object(&m, "Deployment", "api");
    let grace = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(grace >= 30 + 10 + 5, "terminationGracePeriodSeconds {grace}");
}

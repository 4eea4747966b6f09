#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The chute objects exactly as Gepetto applies them, compared with committed
//! snapshots. A change to a name, label, env var, probe or volume shows up as a diff
//! here; regenerate with `UPDATE_SNAPSHOTS=1 cargo test -p miner-k8s` and review it.

use std::path::PathBuf;

use miner_k8s::chute::{self, ChuteJob, ExtraPort, LaunchToken, ServicePorts};
use serde_json::Value;

fn check(name: &str, actual: Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    let text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(text, expected, "{name} differs from its snapshot");
}

fn job(launch: bool) -> ChuteJob {
    let extra = vec![ExtraPort::new(9000, "http"), ExtraPort::new(9100, "udp")];
    ChuteJob {
        deployment_id: "0b5c7bde-4a4e-4f4c-9a57-2f6d1c0e9a11".into(),
        chute_id: "8d7a5b1e-0d6f-5e0a-9c43-7f1e2b3c4d5e".into(),
        version: "a1b2c3".into(),
        image: "chutes/vllm:0.9.2-p1".into(),
        ref_str: "vllm_chute:chute".into(),
        filename: "vllm_chute.py".into(),
        chutes_version: Some("0.3.41".into()),
        gpu_count: 2,
        node_name: "gpu-7".into(),
        server_ip: "203.0.113.7".into(),
        server_seed: Some(42),
        cpu_per_gpu: 4,
        memory_per_gpu: 80,
        gpu_ids: vec![
            "0A1B2C3D4E5F60718293A4B5C6D7E8F9".into(),
            "1a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9".into(),
        ],
        miner_ss58: "5MinerHotkey".into(),
        validator_ss58: "5DValidatorHotkey".into(),
        registry_port: 30501,
        ports: ServicePorts {
            primary: 31000,
            logging: 31001,
            extra: extra.into_iter().zip([31002, 31003]).collect(),
        },
        launch: launch.then(|| LaunchToken { token: "jwt.token.value".into(), config_id: "cfg-1".into() }),
        job_id: launch.then(|| "job-9".into()),
        disk_gb: 50,
        cache_max_age_days: 7,
        cache_max_size_gb: 500,
        cache_cleaner_image: "chutes-miner@sha256:0123".into(),
        pull_secrets: if launch { vec!["regcred".into()] } else { Vec::new() },
    }
}

#[test]
fn chute_job_with_launch_token_and_job_ports() {
    check("chute_job_launch.json", serde_json::to_value(job(true).build().unwrap()).unwrap());
}

#[test]
fn legacy_chute_job_passes_the_graval_seed() {
    let built = serde_json::to_value(job(false).build().unwrap()).unwrap();
    check("chute_job_legacy.json", built);
}

#[test]
fn chute_service_and_code_configmap() {
    let extra = [ExtraPort::new(9000, "http"), ExtraPort::new(9100, "udp")];
    let svc = chute::service("0b5c7bde-4a4e-4f4c-9a57-2f6d1c0e9a11", "c1", "a1b2c3", &extra).unwrap();
    check("chute_service.json", serde_json::to_value(&svc).unwrap());
    let cm = chute::code_configmap("c1", "a1b2c3", "vllm_chute.py", "print('hi')\n").unwrap();
    check("chute_code_configmap.json", serde_json::to_value(&cm).unwrap());
}

#[test]
fn a_gpu_count_mismatch_or_bad_gpu_id_is_refused() {
    let mut j = job(true);
    j.gpu_ids.pop();
    assert!(j.build().unwrap_err().to_string().contains("1 GPUs allocated for a chute that needs 2"));
    let mut j = job(true);
    j.gpu_ids[0] = "not-a-uuid".into();
    assert!(j.build().unwrap_err().to_string().contains("not-a-uuid"));
}

#[test]
fn the_launch_token_stays_out_of_debug_output() {
    let j = job(true);
    assert!(!format!("{j:?}").contains("jwt.token.value"));
}

#[test]
fn an_extra_port_equal_to_a_fixed_one_is_not_a_second_container_port() {
    let mut j = job(true);
    j.ports.extra = vec![(ExtraPort::new(8000, "tcp"), 31000), (ExtraPort::new(8000, "udp"), 31004)];
    let built = serde_json::to_value(j.build().unwrap()).unwrap();
    let container = &built["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<(i64, &str)> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["containerPort"].as_i64().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(ports, vec![(8000, "TCP"), (8001, "TCP"), (8000, "UDP")]);
    // The env still names every requested port.
    let env: Vec<(&str, &str)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert!(env.contains(&("CHUTES_PORT_TCP_8000", "31000")), "{env:?}");
    assert!(env.contains(&("CHUTES_PORT_UDP_8000", "31004")), "{env:?}");
}

/// Gepetto tells which GPUs a running chute pod holds from its env alone: what the Job
/// pins is read back, in the canonical form, from a pod made from its template.
#[test]
fn a_chute_pods_gpus_read_back_from_its_template() {
    let built = job(false).build().unwrap();
    let template = built.spec.unwrap().template;
    let pod = k8s_openapi::api::core::v1::Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        status: None,
    };
    let expected: Vec<String> = job(false).gpu_ids.iter().map(|g| chute::gpu_device(g).unwrap()).collect();
    assert_eq!(
        expected,
        ["GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9", "GPU-1a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"]
    );
    assert_eq!(chute::pod_gpu_devices(&pod), expected);
    assert!(chute::pod_gpu_devices(&k8s_openapi::api::core::v1::Pod::default()).is_empty());
}

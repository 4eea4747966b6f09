#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `minerctl status`'s tables and JSON from a fixed `GET /servers/` answer (shaped as the
//! real API writes it, extra fields included) and a fixed time; and what a bad answer says.
//! (The real API and binary: provision/minerctl/tests/status.rs.)

use chrono::{DateTime, Utc};
use expect_test::expect;
use minerctl_nodes::status::{age, parse_servers, render};

const NOW: &str = "2026-12-06T12:00:00Z";

fn now() -> DateTime<Utc> {
    NOW.parse().unwrap()
}

fn gpu(id: &str, server: &str, deployment: Option<&str>, verified: bool) -> serde_json::Value {
    serde_json::json!({
        "gpu_id": id, "validator": "5Validator", "server_id": server, "deployment_id": deployment,
        "device_info": {"name": "NVIDIA RTX A6000", "memory": 51_050_315_776u64},
        "model_short_ref": "a6000", "verified": verified,
    })
}

/// Two servers: gpu-1 with a serving deployment (active) and a job (verified), gpu-2 with
/// one GPU still unverified and a stub deployment whose chute row is gone.
fn answer() -> String {
    let chute = |id: &str, name: &str, version: &str| {
        serde_json::json!({
            "chute_id": id, "validator": "5Validator", "name": name, "image": "chutes/x:1", "code": "",
            "filename": "x.py", "ref_str": "x:chute", "version": version, "supported_gpus": ["a6000"],
            "gpu_count": 1, "created_at": "2026-12-01T00:00:00+00:00", "updated_at": null,
            "ban_reason": null, "chutes_version": "0.3.1",
        })
    };
    let deployment = |id: &str, chute_id: &str, server: &str, created: &str| {
        serde_json::json!({
            "deployment_id": id, "instance_id": null, "validator": "5Validator", "host": "203.0.113.2",
            "port": 30001, "chute_id": chute_id, "server_id": server, "version": "v1", "active": false,
            "verified_at": null, "stub": false, "job_id": null, "config_id": null, "created_at": created,
        })
    };
    let mut serving = deployment(
        "aaaaaaaa-1111-4000-8000-000000000001",
        "chute-llm",
        "s1",
        "2026-12-06T11:57:00.123456+00:00",
    );
    serving["active"] = true.into();
    serving["verified_at"] = "2026-12-06T11:58:00+00:00".into();
    serving["instance_id"] = "inst-1".into();
    serving["chute"] = chute("chute-llm", "llama-3-8b", "v1");
    serving["gpus"] =
        serde_json::json!([gpu("gpu-uuid-0001", "s1", Some("aaaaaaaa-1111-4000-8000-000000000001"), true)]);
    let mut job =
        deployment("bbbbbbbb-2222-4000-8000-000000000002", "chute-tts", "s1", "2026-12-06T10:00:00+00:00");
    job["verified_at"] = "2026-12-06T10:01:00+00:00".into();
    job["job_id"] = "job-7".into();
    job["version"] = "v2".into();
    job["chute"] = chute("chute-tts", "kokoro-tts", "v2");
    job["gpus"] =
        serde_json::json!([gpu("gpu-uuid-0002", "s1", Some("bbbbbbbb-2222-4000-8000-000000000002"), true)]);
    let mut stub =
        deployment("cccccccc-3333-4000-8000-000000000003", "chute-gone", "s2", "2026-12-06T11:59:30+00:00");
    stub["stub"] = true.into();
    stub["chute"] = serde_json::Value::Null;
    stub["gpus"] =
        serde_json::json!([gpu("gpu-uuid-0003", "s2", Some("cccccccc-3333-4000-8000-000000000003"), true)]);
    let server = |id: &str, name: &str, ip: &str, cost: f64, created: &str| {
        serde_json::json!({
            "server_id": id, "validator": "5Validator", "name": name, "ip_address": ip,
            "verification_port": 31000, "status": null, "created_at": created, "labels": {"gpu-short-ref": "a6000"},
            "seed": 42, "gpu_count": 2, "cpu_per_gpu": 8, "memory_per_gpu": 64, "hourly_cost": cost, "locked": false,
        })
    };
    let mut s1 = server("s1", "gpu-1", "203.0.113.2", 0.8, "2026-12-03T12:00:00+00:00");
    s1["gpus"] = serde_json::json!([
        gpu("gpu-uuid-0001", "s1", Some("aaaaaaaa-1111-4000-8000-000000000001"), true),
        gpu("gpu-uuid-0002", "s1", Some("bbbbbbbb-2222-4000-8000-000000000002"), true),
    ]);
    s1["deployments"] = serde_json::json!([serving, job]);
    let mut s2 = server("s2", "gpu-2", "203.0.113.3", 1.25, "2026-12-06T11:00:00+00:00");
    s2["locked"] = true.into();
    s2["gpus"] = serde_json::json!([
        gpu("gpu-uuid-0003", "s2", Some("cccccccc-3333-4000-8000-000000000003"), true),
        gpu("gpu-uuid-0004", "s2", None, false),
    ]);
    s2["deployments"] = serde_json::json!([stub]);
    serde_json::json!([s1, s2]).to_string()
}

#[test]
fn the_tables_show_servers_gpus_and_deployments_with_age_and_state() {
    let servers = parse_servers(answer().as_bytes()).unwrap();
    expect![[r#"
        SERVER  IP           VERIFIED/GPUS  $/GPU/H  LOCK    DEPLOYMENTS  AGE
        gpu-1   203.0.113.2  2/2            0.80             2            3d
        gpu-2   203.0.113.3  1/2            1.25     locked  1            1h

        GPU            SERVER  MODEL  VERIFIED  DEPLOYMENT
        gpu-uuid-0001  gpu-1   a6000  yes       aaaaaaaa
        gpu-uuid-0002  gpu-1   a6000  yes       bbbbbbbb
        gpu-uuid-0003  gpu-2   a6000  yes       cccccccc
        gpu-uuid-0004  gpu-2   a6000  no        -

        DEPLOYMENT  CHUTE       VERSION  SERVER  GPUS  AGE  STATE
        aaaaaaaa    llama-3-8b  v1       gpu-1   1     2m   active
        bbbbbbbb    kokoro-tts  v2       gpu-1   1     2h   verified (job)
        cccccccc    chute-gone  v1       gpu-2   1     30s  stub
    "#]]
    .assert_eq(&render(&servers, now()));
}

#[test]
fn json_output_is_the_typed_servers_with_stable_keys() {
    let servers = parse_servers(answer().as_bytes()).unwrap();
    let json = serde_json::to_string_pretty(&servers[1]).unwrap();
    expect![[r#"
        {
          "server_id": "s2",
          "name": "gpu-2",
          "ip_address": "203.0.113.3",
          "hourly_cost": 1.25,
          "locked": true,
          "created_at": "2026-12-06T11:00:00Z",
          "gpus": [
            {
              "gpu_id": "gpu-uuid-0003",
              "model_short_ref": "a6000",
              "verified": true,
              "deployment_id": "cccccccc-3333-4000-8000-000000000003"
            },
            {
              "gpu_id": "gpu-uuid-0004",
              "model_short_ref": "a6000",
              "verified": false,
              "deployment_id": null
            }
          ],
          "deployments": [
            {
              "deployment_id": "cccccccc-3333-4000-8000-000000000003",
              "chute_id": "chute-gone",
              "version": "v1",
              "chute": null,
              "instance_id": null,
              "job_id": null,
              "stub": true,
              "verified_at": null,
              "active": false,
              "created_at": "2026-12-06T11:59:30Z",
              "gpus": [
                {
                  "gpu_id": "gpu-uuid-0003"
                }
              ]
            }
          ]
        }"#]]
    .assert_eq(&json);
    // What --output json prints reads back as the same servers.
    let again = parse_servers(serde_json::to_string(&servers).unwrap().as_bytes()).unwrap();
    assert_eq!(again, servers);
}

#[test]
fn no_servers_says_how_to_add_one() {
    expect![[r#"
        no servers tracked by the miner API (add one with `minerctl add-node`)
    "#]]
    .assert_eq(&render(&[], now()));
}

#[test]
fn a_missing_or_mistyped_field_is_named_by_its_path() {
    let mut v: serde_json::Value = serde_json::from_str(&answer()).unwrap();
    v[1]["gpus"][1]["verified"] = "yes".into();
    let e = parse_servers(v.to_string().as_bytes()).unwrap_err();
    assert!(e.starts_with("[1].gpus[1].verified: invalid type: string \"yes\", expected a boolean"), "{e}");

    let mut v: serde_json::Value = serde_json::from_str(&answer()).unwrap();
    v[0]["deployments"][0]["chute"].as_object_mut().unwrap().remove("version");
    let e = parse_servers(v.to_string().as_bytes()).unwrap_err();
    assert!(e.starts_with("[0].deployments[0].chute: missing field `version`"), "{e}");

    let mut v: serde_json::Value = serde_json::from_str(&answer()).unwrap();
    v[0]["created_at"] = "yesterday".into();
    let e = parse_servers(v.to_string().as_bytes()).unwrap_err();
    assert!(e.starts_with("[0].created_at: "), "{e}");

    let e = parse_servers(br#"{"detail": "not a list"}"#).unwrap_err();
    assert!(e.contains("expected a sequence"), "{e}");
}

#[test]
fn ages_read_like_kubectl() {
    let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
    let cases = [
        (at("2026-12-06T11:59:18Z"), "42s"),
        (at("2026-12-06T11:57:00Z"), "3m"),
        (at("2026-12-06T10:00:00Z"), "2h"),
        (at("2026-12-04T12:00:01Z"), "47h"),
        (at("2026-12-01T12:00:00Z"), "5d"),
        (at("2026-12-06T12:05:00Z"), "0s"),
        (None, "-"),
    ];
    for (created, want) in cases {
        assert_eq!(age(created, now()), want, "{created:?}");
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! What the roles plan for each kind of host, and the rendered files (snapshots).

use std::collections::BTreeMap;
use std::path::Path;

use provision_engine::{Action, Facts, HostVars, PhasePlan, PlanCtx};
use provision_inventory::Inventory;

const INV: &str = r#"vars:
  user: chutes
  ssh_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBexampleexampleexampleexampleexample ops]
  validator: 5Dt7HZ7Zpw4DppPxFM7Ke3Cm7sDAWhsZXmM5ZAmE7dSVJbcQ
  wireguard_subnet: 10.77.0.0/24
  ipv6_enabled: false
hosts:
  cpu-0: {address: 10.0.0.1, external_ip: 1.2.3.4, wireguard_ip: 10.77.0.1, is_primary: true, gpu_enabled: false}
  gpu-0: {address: 10.0.0.2, external_ip: 1.2.3.5, wireguard_ip: 10.77.0.3}
  gpu-1: {address: 10.0.0.3, external_ip: 1.2.3.6, wireguard_ip: 10.77.0.4}
"#;

fn inv() -> Inventory {
    provision_inventory::parse_str(INV, Path::new("inv.yml")).unwrap()
}

fn vars() -> HostVars {
    let mut v: HostVars = BTreeMap::new();
    for (h, k) in [("cpu-0", "PRIMARYKEY="), ("gpu-0", "GPU0KEY="), ("gpu-1", "GPU1KEY=")] {
        v.entry(h.into()).or_default().insert("wg_public_key".into(), k.into());
    }
    v.entry("gpu-0".into()).or_default().insert("joined".into(), "yes".into());
    v.entry("gpu-1".into()).or_default().insert("joined".into(), "no".into());
    v.entry("cpu-0".into())
        .or_default()
        .insert("join_command".into(), "microk8s join 10.77.0.1:25000/abc/def".into());
    v
}

fn plan(host: &str, phase: &str) -> PhasePlan {
    plan_in(&inv(), host, phase)
}

/// [`plan`] for another inventory.
fn plan_in(inv: &Inventory, host: &str, phase: &str) -> PhasePlan {
    let vars = vars();
    let facts = Facts { os_id: "ubuntu".into(), os_version: "22.04".into(), ..Default::default() };
    let h = inv.host(host).unwrap();
    // The wireguard check, base, nvidia, microk8s and primary are tagged sections of the
    // "host setup" phase.
    let (name, tag) = match phase {
        "base" | "nvidia" | "microk8s" | "primary" => ("host setup", Some(phase)),
        "wireguard check" => ("host setup", Some("wireguard")),
        other => (other, None),
    };
    let p = provision_roles::phases().into_iter().find(|p| p.name == name).unwrap();
    let mut plan = (p.plan)(&PlanCtx {
        inventory: inv,
        host: h,
        facts: &facts,
        vars: &vars,
        check: false,
        before_run: false,
        limit: None,
    });
    if let Some(t) = tag {
        plan.steps.retain(|s| s.tag.as_deref() == Some(t));
    }
    plan
}

fn names(p: &PhasePlan) -> Vec<String> {
    p.steps.iter().map(|s| s.name.clone()).collect()
}

fn file_content(p: &PhasePlan, path: &str) -> String {
    p.steps
        .iter()
        .find_map(|s| match &s.action {
            Action::File { path: p, content, .. } if p == path => Some(content.clone()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn primary_wireguard_config_lists_every_worker_without_private_key() {
    let p = plan("cpu-0", "wireguard config");
    expect_test::expect![[r#"
        # Managed by minerctl; edits are reverted on the next `minerctl provision`.
        [Interface]
        Address = 10.77.0.1/24
        ListenPort = 51820
        MTU = 1380
        PostUp = wg set %i private-key /etc/wireguard/private.key

        # gpu-0
        [Peer]
        PublicKey = GPU0KEY=
        AllowedIPs = 10.77.0.3/32, 10.0.0.0/8
        Endpoint = 1.2.3.5:51820

        # gpu-1
        [Peer]
        PublicKey = GPU1KEY=
        AllowedIPs = 10.77.0.4/32, 10.0.0.0/8
        Endpoint = 1.2.3.6:51820
    "#]]
    .assert_eq(&file_content(&p, "/etc/wireguard/wg0.conf"));
}

#[test]
fn worker_wireguard_config_points_at_the_primary() {
    let p = plan("gpu-0", "wireguard config");
    expect_test::expect![[r#"
        # Managed by minerctl; edits are reverted on the next `minerctl provision`.
        [Interface]
        Address = 10.77.0.3/24
        ListenPort = 51820
        MTU = 1380
        PostUp = wg set %i private-key /etc/wireguard/private.key

        # cpu-0 (primary)
        [Peer]
        PublicKey = PRIMARYKEY=
        AllowedIPs = 10.77.0.0/24, 10.0.0.0/8
        Endpoint = 1.2.3.4:51820
        PersistentKeepalive = 25
    "#]]
    .assert_eq(&file_content(&p, "/etc/wireguard/wg0.conf"));
}

#[test]
fn registry_mirror_uses_the_lowercased_validator_and_port() {
    let p = plan("gpu-0", "microk8s");
    let path = "/var/snap/microk8s/current/args/certs.d/\
                5dt7hz7zpw4dpppxfm7ke3cm7sdawhszxmm5zame7dsvjbcq.localregistry.chutes.ai:30500/hosts.toml";
    expect_test::expect![[r#"
        # Managed by minerctl.
        server = "http://5dt7hz7zpw4dpppxfm7ke3cm7sdawhszxmm5zame7dsvjbcq.localregistry.chutes.ai:30500"

        [host."http://5dt7hz7zpw4dpppxfm7ke3cm7sdawhszxmm5zame7dsvjbcq.localregistry.chutes.ai:30500"]
          capabilities = ["pull", "resolve"]
    "#]]
    .assert_eq(&file_content(&p, path));
}

#[test]
fn nvidia_phase_only_on_gpu_hosts_and_includes_the_real_containerd_fix() {
    assert!(plan("cpu-0", "nvidia").steps.is_empty());
    let p = plan("gpu-0", "nvidia");
    let n = names(&p);
    assert!(n.contains(&"driver and cuda".to_string()), "{n:?}");
    let fix = p.steps.iter().find(|s| s.name == "containerd: cri plugin enabled").unwrap();
    assert!(
        matches!(&fix.action, Action::Line { matches: Some(m), absent: true, .. } if m == "disabled_plugins")
    );
    // The driver install triggers the reboot handler; the handler exists because facts say no container.
    let driver = p.steps.iter().find(|s| s.name == "driver and cuda").unwrap();
    assert_eq!(driver.notify, vec!["reboot"]);
    assert!(p.handlers.iter().any(|h| h.name == "reboot"));
    let keyring = p.steps.iter().find(|s| s.name == "cuda keyring").unwrap();
    let Action::Command { run, .. } = &keyring.action else { panic!() };
    assert!(run.contains("/repos/ubuntu2204/x86_64/cuda-keyring_1.1-1_all.deb"), "{run}");
    let Action::Apt { packages, .. } = &driver.action else { panic!() };
    assert_eq!(packages, &["cuda-toolkit-13-0", "nvidia-open", "nvidia-fabricmanager-580"]);
}

#[test]
fn join_token_only_when_a_worker_has_not_joined_and_matches_the_primary_ip() {
    let p = plan("cpu-0", "join token");
    let tok = p.steps.iter().find(|s| s.name == "join token").unwrap();
    let Action::Capture { secret, read_only, pick, .. } = &tok.action else { panic!() };
    assert!(*secret && !*read_only);
    assert_eq!(pick.as_deref(), Some("microk8s join 10.77.0.1:"));
    let j = plan("gpu-1", "join");
    let step = j.steps.iter().find(|s| s.name == "join cluster").unwrap();
    let Action::CommandWithInput { run, input, unless } = &step.action else { panic!() };
    // The token travels on stdin, never in the script (an argument of `sudo sh -c`).
    assert_eq!(input.expose(), "microk8s join 10.77.0.1:25000/abc/def\n");
    assert!(!format!("{:?}", step.action).contains("abc/def"), "Debug shows the token");
    assert!(!run.contains("abc/def") && run.ends_with("--worker --skip-verify"), "{run}");
    assert!(unless.contains("acting as a node in a cluster"));
}

#[test]
fn an_unjoined_worker_without_a_token_fails_clearly_instead_of_running_a_placeholder() {
    let inv = inv();
    let facts = Facts::default();
    let mut vars = vars();
    vars.get_mut("cpu-0").unwrap().remove("join_command");
    let join = provision_roles::phases().into_iter().find(|p| p.name == "join").unwrap();
    let assert_of = |host: &str, check: bool| {
        let h = inv.host(host).unwrap();
        let p = (join.plan)(&PlanCtx {
            inventory: &inv,
            host: h,
            facts: &facts,
            vars: &vars,
            check,
            before_run: false,
            limit: None,
        });
        match &p.steps.iter().find(|s| s.name == "join token known").unwrap().action {
            Action::Assert { ok, message } => (*ok, message.clone()),
            other => panic!("{other:?}"),
        }
    };
    let (ok, message) = assert_of("gpu-1", false);
    assert!(!ok && message.contains("no join token from the primary cpu-0"), "{message}");
    // Check mode shows the plan; a node that already joined needs no token.
    assert!(assert_of("gpu-1", true).0);
    assert!(assert_of("gpu-0", false).0);
}

#[test]
fn labels_every_node_with_its_external_ip_and_ipv6_off_is_a_sysctl() {
    let p = plan("cpu-0", "label nodes");
    let labels: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Command { run, .. } if run.contains("label node") => Some(run.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(labels.len(), 3);
    assert!(labels[2].contains("chutes/external-ip=1.2.3.6 "), "{labels:?}");
    let base = plan("gpu-0", "base");
    assert!(
        base.steps
            .iter()
            .any(|s| matches!(&s.action, Action::Sysctl { file, .. } if file == "99-disable-ipv6.conf"))
    );
}

/// Runs the primary's "join token" capture as the engine's local transport does (`sh -c`),
/// with a `microk8s` that prints `add_node_output`, and decides on its output.
fn join_token_capture(add_node_output: &str) -> Result<provision_engine::plan::Decision, String> {
    let p = plan("cpu-0", "join token");
    let tok = p.steps.iter().find(|s| s.name == "join token").unwrap();
    let Action::Capture { run, .. } = &tok.action else { panic!() };
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("microk8s");
    std::fs::write(&fake, format!("#!/bin/sh\ncat <<'EOF'\n{add_node_output}EOF\n")).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let out = std::process::Command::new("sh").arg("-c").arg(run).env("PATH", path).output().unwrap();
    let probe = provision_engine::plan::ProbeOut {
        rc: out.status.code().unwrap_or(-1),
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    tok.action.evaluate(&probe)
}

#[test]
fn join_token_without_a_line_for_the_primary_wireguard_ip_fails_naming_what_add_node_printed() {
    // wg0 not up yet: add-node offers only the other addresses.
    let err = join_token_capture(
        "From the node you wish to join to this cluster, run the following:\n\
         microk8s join 10.0.0.1:25000/0123456789abcdef0123456789abcdef/a1b2c3d4e5f6\n",
    )
    .unwrap_err();
    assert!(err.contains("expected a line with `microk8s join 10.77.0.1:...`"), "{err}");
    assert!(err.contains("microk8s join 10.0.0.1:25000/<redacted>"), "{err}");
    assert!(!err.contains("0123456789abcdef"), "the token leaked into the error: {err}");
    // add-node printing nothing at all is said as such.
    let err = join_token_capture("").unwrap_err();
    assert!(err.contains("it printed nothing"), "{err}");
    // With wg0 up the line is there and its join string is the value.
    let ok = join_token_capture(
        "microk8s join 10.0.0.1:25000/aaaa/bbbb\nmicrok8s join 10.77.0.1:25000/cccc/dddd\n",
    )
    .unwrap();
    assert!(
        matches!(&ok, provision_engine::plan::Decision::Captured(v) if v == "microk8s join 10.77.0.1:25000/cccc/dddd"),
        "{ok:?}"
    );
}

#[test]
fn nodes_read_ready_and_labelled_are_not_asked_again() {
    let inv = inv();
    let facts = Facts::default();
    let mut vars = vars();
    // As the primary's "node states" capture read them: gpu-0 done, gpu-1 labelled with an old IP.
    vars.get_mut("cpu-0").unwrap().insert(
        "node_states".into(),
        "nodes:\ncpu-0 True 1.2.3.4\ngpu-0 True 1.2.3.5\ngpu-1 True 9.9.9.9\n".into(),
    );
    let p = provision_roles::phases().into_iter().find(|p| p.name == "label nodes").unwrap();
    let plan = (p.plan)(&PlanCtx {
        inventory: &inv,
        host: inv.host("cpu-0").unwrap(),
        facts: &facts,
        vars: &vars,
        check: false,
        before_run: false,
        limit: None,
    });
    let kind = |name: &str| plan.steps.iter().find(|s| s.name == name).unwrap().action.kind();
    assert_eq!(kind("gpu-0 Ready"), "assert");
    assert_eq!(kind("gpu-0 external-ip label"), "assert");
    assert_eq!(kind("gpu-1 Ready"), "wait_for");
    assert_eq!(kind("gpu-1 external-ip label"), "command");
    // Before the run (the engine planning what to read), nothing is asked per node.
    let before = (p.plan)(&PlanCtx {
        inventory: &inv,
        host: inv.host("cpu-0").unwrap(),
        facts: &facts,
        vars: &vars,
        check: false,
        before_run: true,
        limit: None,
    });
    assert!(before.steps.is_empty(), "{:?}", names(&before));
    // The read itself: one capture on the primary, never failing on a fresh one.
    let setup = plan_join_token_primary(&inv, &facts, &vars);
    let Action::Capture { run, read_only, .. } =
        &setup.steps.iter().find(|s| s.name == "node states").unwrap().action
    else {
        panic!()
    };
    assert!(*read_only && run.starts_with("echo nodes:;") && run.ends_with("; true"), "{run}");
}

fn plan_join_token_primary(inv: &Inventory, facts: &Facts, vars: &HostVars) -> PhasePlan {
    let p = provision_roles::phases().into_iter().find(|p| p.name == "join token").unwrap();
    (p.plan)(&PlanCtx {
        inventory: inv,
        host: inv.host("cpu-0").unwrap(),
        facts,
        vars,
        check: false,
        before_run: false,
        limit: None,
    })
}

fn verify_gpu(state: Option<&str>, check: bool) -> Result<provision_engine::plan::Decision, String> {
    verify_gpu_limited(state, check, None)
}

/// [`verify_gpu`] in a run limited to `limit` (`--limit`, or add-node's worker and primary).
fn verify_gpu_limited(
    state: Option<&str>,
    check: bool,
    limit: Option<&[String]>,
) -> Result<provision_engine::plan::Decision, String> {
    let inv = inv();
    let mut vars = vars();
    if let Some(s) = state {
        vars.entry("cpu-0".into()).or_default().insert("gpu_layer".into(), s.into());
    }
    let p = provision_roles::phases().into_iter().find(|p| p.name == "verify gpu layer").unwrap();
    let plan = (p.plan)(&PlanCtx {
        inventory: &inv,
        host: inv.host("cpu-0").unwrap(),
        facts: &Facts::default(),
        vars: &vars,
        check,
        before_run: false,
        limit,
    });
    assert_eq!(names(&plan), ["gpu nodes ready for chutes"]);
    plan.steps[0].action.evaluate(&Default::default())
}

#[test]
fn gpu_layer_uses_microk8s_addons_and_its_verify_names_each_node_and_what_it_lacks() {
    let p = plan("cpu-0", "gpu layer");
    assert_eq!(
        names(&p),
        ["nvidia addon", "metrics-server addon", "gpu operator running", "gpu layer state"]
    );
    let Action::Command { run, unless: Some(unless), .. } = &p.steps[0].action else { panic!() };
    assert!(
        run.contains("microk8s enable nvidia --gpu-operator-driver host")
            && run.contains("operator.runtimeClass=nvidia-container-runtime"),
        "{run}"
    );
    assert!(unless.contains("microk8s status -a nvidia"), "{unless}");
    assert!(plan("gpu-0", "gpu layer").steps.is_empty(), "primary only");

    let complete = "addon=enabled\nruntimeclass=runtimeclass.node.k8s.io/nvidia-container-runtime\n\
                    node=cpu-0\t\t\t\t\nnode=gpu-0\t8\ttrue\t8\t81559\nnode=gpu-1\t1\ttrue\t1\t49152";
    assert!(verify_gpu(Some(complete), false).is_ok());
    let broken = "addon=enabled\nruntimeclass=\nnode=cpu-0\t\t\t\t\nnode=gpu-0\t8\ttrue\t\t";
    let err = verify_gpu(Some(broken), false).unwrap_err();
    assert_eq!(
        err,
        "the GPU layer is incomplete: RuntimeClass nvidia-container-runtime does not exist; \
         gpu-0 lacks labels nvidia.com/gpu.count, nvidia.com/gpu.memory; gpu-1: no such node in the cluster"
    );
    let no_gpu = "addon=enabled\nruntimeclass=x\nnode=gpu-0\t0\t\t\t\nnode=gpu-1\t1\ttrue\t1\t49152";
    assert_eq!(
        verify_gpu(Some(no_gpu), false).unwrap_err(),
        "the GPU layer is incomplete: gpu-0 lacks nvidia.com/gpu capacity and labels nvidia.com/gpu.present, \
         nvidia.com/gpu.count, nvidia.com/gpu.memory"
    );
    // --check before the addon is enabled: the run would enable it first, nothing to judge yet;
    // once it is enabled, --check judges as a run would.
    assert!(verify_gpu(Some(&broken.replace("addon=enabled", "addon=disabled")), true).is_ok());
    assert!(verify_gpu(Some(broken), true).is_err());

    // A run limited to some hosts (add-node's worker and the primary) judges only those: a
    // broken node elsewhere is named by a full run, and does not stop adding another.
    let one_broken = "addon=enabled\nruntimeclass=x\nnode=gpu-0\t8\ttrue\t\t\nnode=gpu-1\t1\ttrue\t1\t49152";
    let limit = |hosts: &[&str]| hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>();
    assert!(verify_gpu_limited(Some(one_broken), false, Some(&limit(&["gpu-1", "cpu-0"]))).is_ok());
    assert_eq!(
        verify_gpu_limited(Some(one_broken), false, Some(&limit(&["gpu-0", "cpu-0"]))).unwrap_err(),
        "the GPU layer is incomplete: gpu-0 lacks labels nvidia.com/gpu.count, nvidia.com/gpu.memory"
    );
    assert!(verify_gpu(Some(one_broken), false).is_err());
    // --check of a run that would join a node: it is not in the cluster yet, nothing to judge.
    let not_joined = "addon=enabled\nruntimeclass=x\nnode=gpu-0\t8\ttrue\t8\t81559";
    assert!(verify_gpu(Some(not_joined), true).is_ok());
    assert!(verify_gpu(Some(not_joined), false).unwrap_err().contains("gpu-1: no such node in the cluster"));
}

/// The phase `phase` for `host` with these captured variables and `--limit`.
fn plan_with(host: &str, phase: &str, vars: &HostVars, limit: Option<&[String]>) -> PhasePlan {
    let inv = inv();
    let facts = Facts { os_id: "ubuntu".into(), os_version: "22.04".into(), ..Default::default() };
    let p = provision_roles::phases().into_iter().find(|p| p.name == phase).unwrap();
    (p.plan)(&PlanCtx {
        inventory: &inv,
        host: inv.host(host).unwrap(),
        facts: &facts,
        vars,
        check: false,
        before_run: false,
        limit,
    })
}

fn with_var(host: &str, key: &str, value: &str) -> HostVars {
    let mut v = vars();
    v.entry(host.into()).or_default().insert(key.into(), value.into());
    v
}

#[test]
fn upgrades_run_one_host_at_a_time() {
    let serial: Vec<String> =
        provision_roles::phases().into_iter().filter(|p| p.serial).map(|p| p.name).collect();
    assert_eq!(serial, ["microk8s channel", "nvidia upgrade"]);
}

#[test]
fn a_new_microk8s_channel_refreshes_an_installed_snap_and_nothing_else_does() {
    let listed = |ch: &str| {
        format!(
            "snap:\nName      Version   Rev    Tracking       Publisher   Notes\nmicrok8s  v1.31.9   8148   {ch}    canonical✓  classic\n"
        )
    };
    assert_eq!(provision_roles::tracked_channel(&listed("1.30/stable")), Some("1.30/stable"));
    let p = plan_with(
        "gpu-0",
        "microk8s channel",
        &with_var("gpu-0", "microk8s_tracking", &listed("1.30/stable")),
        None,
    );
    assert_eq!(
        names(&p),
        ["snap refresh microk8s 1.30/stable -> 1.31/stable", "microk8s ready after refresh"]
    );
    let Action::Command { run, .. } = &p.steps[0].action else { panic!() };
    assert_eq!(run, "snap refresh microk8s --channel=1.31/stable");
    // Same channel, not installed (first install is host setup's), or not read: nothing.
    for snap in [Some(listed("1.31/stable")), Some("snap:".to_string()), None] {
        let v = match &snap {
            Some(s) => with_var("gpu-0", "microk8s_tracking", s),
            None => vars(),
        };
        assert!(plan_with("gpu-0", "microk8s channel", &v, None).steps.is_empty(), "{snap:?}");
    }
}

#[test]
fn other_driver_versions_upgrade_in_their_own_phase_and_host_setup_leaves_the_driver_to_it() {
    let inv = inv();
    // dpkg-query's lines: the wanted 13-0 toolkit's dependencies do not count, 12-6 does.
    let installed = "packages:\nii  cuda-toolkit-12-6\nii  cuda-toolkit-13-0-config-common\nrc  cuda-toolkit-11-8\n\
                     ii  nvidia-fabricmanager-580\nii  nvidia-fabricmanager-dev-570\n";
    assert_eq!(provision_roles::other_driver_versions(&inv, installed), ["cuda-toolkit-12-6"]);
    assert!(
        provision_roles::other_driver_versions(
            &inv,
            "packages:\nii  cuda-toolkit-13-0\nii  nvidia-fabricmanager-580\n"
        )
        .is_empty()
    );
    let v =
        with_var("gpu-0", "nvidia_stack", "packages:\nii  cuda-toolkit-13-0\nii  nvidia-fabricmanager-570\n");
    let up = plan_with("gpu-0", "nvidia upgrade", &v, None);
    assert_eq!(
        names(&up),
        [
            "purge cuda/nvidia packages (nvidia-fabricmanager-570 installed)",
            "curl",
            "cuda keyring",
            "driver and cuda",
            "fabricmanager",
            "container toolkit",
            "nvidia runtime for docker",
            "nvidia runtime for containerd",
            "nvidia runtime for crio",
            "containerd: cri plugin enabled",
            "reboot",
            "microk8s back",
        ]
    );
    // The runtimes are configured again for the reinstalled toolkit, unguarded as the original.
    assert!(matches!(&up.steps[7].action, Action::Command { unless: None, creates: None, .. }));
    assert!(up.handlers.is_empty(), "the reboot restarts everything");
    // Host setup keeps only the device links for it; a host without the stack installs it there.
    let setup = |v: &HostVars| {
        let mut p = plan_with("gpu-0", "host setup", v, None);
        p.steps.retain(|s| s.tag.as_deref() == Some("nvidia"));
        names(&p)
    };
    assert_eq!(setup(&v), ["/dev/char links script", "/dev/char links"]);
    assert!(setup(&vars()).contains(&"driver and cuda".to_string()));
    assert!(plan_with("gpu-0", "nvidia upgrade", &vars(), None).steps.is_empty());
    assert!(plan_with("cpu-0", "nvidia upgrade", &v, None).steps.is_empty());
}

#[test]
fn an_unread_worker_keeps_the_key_the_primary_has_for_it() {
    let mut v = vars();
    v.get_mut("gpu-1").unwrap().remove("wg_public_key");
    let kept = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    v.entry("cpu-0".into()).or_default().insert(
        "wg0_peers".into(),
        format!(
            "peers:\nPublicKey = {}\nAllowedIPs = 10.77.0.3/32, 10.0.0.0/8\nPublicKey = {kept}\nAllowedIPs = 10.77.0.4/32, 10.0.0.0/8\n",
            "B".repeat(43) + "="
        ),
    );
    let p = plan_with("cpu-0", "wireguard config", &v, None);
    let Action::Assert { ok, .. } = &p.steps[0].action else { panic!() };
    assert!(ok);
    let conf = file_content(&p, "/etc/wireguard/wg0.conf");
    // gpu-0's key is read from gpu-0 in this run; gpu-1's comes from the current config.
    assert!(conf.contains("PublicKey = GPU0KEY=") && conf.contains(&format!("PublicKey = {kept}")), "{conf}");
    // Without it in the current config either: refused, naming the worker.
    v.get_mut("cpu-0").unwrap().remove("wg0_peers");
    let p = plan_with("cpu-0", "wireguard config", &v, None);
    let Action::Assert { ok, message } = &p.steps[0].action else { panic!() };
    assert!(!ok && message.contains("WireGuard public key unknown for gpu-1"), "{message}");
}

#[test]
fn the_label_phase_handles_only_the_nodes_of_hosts_the_run_changes() {
    let limit = ["gpu-1".to_string(), "cpu-0".to_string()];
    let steps = names(&plan_with("cpu-0", "label nodes", &vars(), Some(&limit)));
    assert!(
        steps.iter().any(|s| s == "gpu-1 Ready") && steps.iter().any(|s| s == "cpu-0 Ready"),
        "{steps:?}"
    );
    assert!(!steps.iter().any(|s| s.starts_with("gpu-0")), "{steps:?}");
}

/// Runs `script` with `sh -c`, the stand-ins (name, shell script body) first in PATH.
fn sh_with(script: &str, standins: &[(&str, &str)]) -> std::process::Output {
    let bin = tempfile::tempdir().unwrap();
    for (name, body) in standins {
        let path = bin.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    std::process::Command::new("sh").arg("-c").arg(script).env("PATH", path).output().unwrap()
}

fn command_of<'a>(p: &'a PhasePlan, step: &str) -> (&'a str, Option<&'a str>, Option<&'a str>) {
    match &p.steps.iter().find(|s| s.name == step).unwrap().action {
        Action::Command { run, creates, unless } => (run, creates.as_deref(), unless.as_deref()),
        other => panic!("{step}: {other:?}"),
    }
}

#[test]
fn a_cuda_keyring_url_with_an_ampersand_reaches_curl_whole() {
    let url = "https://mirror.example.com/cuda-keyring.deb?a=1&b=2";
    let inv = provision_inventory::parse_str(
        &INV.replace("hosts:\n", &format!("  cuda_keyring_url: \"{url}\"\nhosts:\n")),
        Path::new("inv.yml"),
    )
    .unwrap();
    let p = plan_in(&inv, "gpu-0", "nvidia");
    let (run, _, _) = command_of(&p, "cuda keyring");
    assert!(run.contains(&format!("curl -fsSL -o \"$t\" '{url}';")), "{run}");
    // As the host's shell runs it: curl gets the URL as one argument, nothing is backgrounded.
    let log = tempfile::tempdir().unwrap();
    let args = log.path().join("curl-args");
    let out =
        sh_with(run, &[("curl", &format!("printf '%s\\n' \"$@\" > {}", args.display())), ("dpkg", "exit 0")]);
    assert!(out.status.success(), "{out:?}");
    let args = std::fs::read_to_string(&args).unwrap();
    assert_eq!(args.lines().last(), Some(url), "{args}");
}

#[test]
fn package_names_reach_the_shell_quoted() {
    // A package list entry may carry what a shell reads (only whitespace is refused there).
    let inv = provision_inventory::parse_str(
        &INV.replace(
            "hosts:\n",
            "  cuda_packages: [\"cuda-toolkit-{cuda_version}$(id)\", \"nvidia-fabricmanager-{nvidia_version}\"]\nhosts:\n",
        ),
        Path::new("inv.yml"),
    )
    .unwrap();
    let p = plan_in(&inv, "gpu-0", "nvidia");
    let (_, _, unless) = command_of(&p, "purge other cuda/nvidia packages");
    assert!(unless.unwrap().contains(" 'cuda-toolkit-13-0$(id)' "), "{unless:?}");
    let keys = plan_in(&inv, "gpu-0", "wireguard keys");
    let Action::Capture { run, .. } =
        &keys.steps.iter().find(|s| s.name == "driver packages installed").unwrap().action
    else {
        panic!()
    };
    assert!(run.contains(" 'cuda-toolkit-*$(id)' 'nvidia-fabricmanager-*' "), "{run}");
}

#[test]
fn a_failed_microk8s_config_leaves_no_kubeconfig_behind() {
    let p = plan("gpu-0", "microk8s");
    let (run, creates, _) = command_of(&p, "kubeconfig");
    // The step is skipped once this exists: it must only ever appear complete.
    assert_eq!(creates, Some("/home/chutes/.kube/config"));
    // Run as the host would, with the user's home moved into a temporary directory.
    let home = tempfile::tempdir().unwrap();
    let kube = home.path().join(".kube");
    std::fs::create_dir(&kube).unwrap();
    let run = run.replace("/home/chutes", &home.path().display().to_string());
    let chown = home.path().join("chown-args");
    let chown_standin = format!("echo \"$@\" >> {}", chown.display());
    let out = sh_with(
        &run,
        &[
            ("microk8s", "echo 'apiVersion: v1'; echo 'cannot reach the API' >&2; exit 1"),
            ("chown", &chown_standin),
        ],
    );
    assert!(!out.status.success(), "a failed `microk8s config` must fail the step: {out:?}");
    let left: Vec<_> = std::fs::read_dir(&kube).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind in ~/.kube: {left:?}");
    // The next run succeeds: the whole config, readable by its owner only.
    let config = "apiVersion: v1\nclusters: []\n";
    let out = sh_with(
        &run,
        &[("microk8s", &format!("printf '{}'", config.replace('\n', "\\n"))), ("chown", &chown_standin)],
    );
    assert!(out.status.success(), "{out:?}");
    let written = kube.join("config");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), config);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&written).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_dir(&kube).unwrap().count(), 1, "only the config is left");
    assert!(std::fs::read_to_string(&chown).unwrap().starts_with("chutes:chutes "));
}

#[test]
fn a_held_cuda_toolkit_counts_as_installed_so_nothing_is_purged_again() {
    let p = plan("gpu-0", "nvidia");
    let (_, _, unless) = command_of(&p, "purge other cuda/nvidia packages");
    let unless = unless.unwrap();
    // dpkg's status of the wanted toolkit: the purge is skipped (guard succeeds) when it is
    // installed, held (`apt-mark hold`) or not; it runs when the toolkit is half-installed
    // or absent.
    for (status, skipped) in [("ii ", true), ("hi ", true), ("iF ", false), ("un ", false)] {
        let out = sh_with(unless, &[("dpkg-query", &format!("printf '{status}'"))]);
        assert_eq!(out.status.success(), skipped, "toolkit status {status:?}: {out:?}");
    }
}

/// The join token is minted in its own phase, right before the join: a token minted at the
/// end of the primary's host setup (600 s TTL) expired while a fresh GPU worker was still
/// installing CUDA and rebooting, and that worker's join failed. An unjoined worker also
/// waits for its microk8s (back from that reboot) before it joins.
#[test]
fn the_join_token_is_minted_right_before_workers_join() {
    let phases: Vec<String> = provision_roles::phases().into_iter().map(|p| p.name).collect();
    let at = |name: &str| phases.iter().position(|p| p == name).unwrap();
    assert_eq!(at("join token"), at("host setup") + 1, "{phases:?}");
    assert_eq!(at("join"), at("join token") + 1, "{phases:?}");
    let setup = plan("cpu-0", "host setup");
    assert!(!names(&setup).iter().any(|n| n == "join token"), "{:?}", names(&setup));
    let steps = names(&plan("gpu-1", "join"));
    let ready = steps.iter().position(|n| n == "microk8s ready to join").expect("a readiness wait");
    assert_eq!(steps.get(ready + 1).map(String::as_str), Some("join cluster"), "{steps:?}");
    // A joined worker has nothing to wait for.
    assert!(!names(&plan("gpu-0", "join")).iter().any(|n| n == "microk8s ready to join"));
}

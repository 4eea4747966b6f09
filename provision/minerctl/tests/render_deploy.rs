//! The real `minerctl render` and `minerctl deploy` binaries: against the Kubernetes API
//! emulator through a kubeconfig file, and through a lab host's `microk8s config` over SSH.
//! One ignored test deploys to a real cluster (`tests/e2e-deploy.sh` runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kube_emulator::{Emulator, Node};
use lab_hosts::lab::{Lab, Standin};

const SEED_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

fn minerctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minerctl")).args(args).output().unwrap()
}

/// `minerctl ARGS` with its stdout going to `out` (a pipe, a device).
fn minerctl_into(args: &[&str], out: impl Into<Stdio>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minerctl")).args(args).stdout(out).output().unwrap()
}

/// The writing end of a pipe whose reader is already gone (`| head -0`).
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn hotkey_file(dir: &Path) -> PathBuf {
    let p = dir.join("hotkey");
    std::fs::write(&p, format!("0x{SEED_HEX}\n")).unwrap();
    p
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An emulated cluster with a CPU and a GPU node, its kubeconfig and a hotkey in `dir`.
fn emulated_cluster(dir: &Path) -> (Emulator, PathBuf, PathBuf) {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("cpu-0"));
    emu.add_node(Node::new("gpu-0").gpus(8));
    // What `minerctl provision` enables on the primary (hostpath-storage).
    emu.add_storage_class("microk8s-hostpath", true).unwrap();
    let kc = dir.join("kubeconfig");
    emu.write_kubeconfig(&kc).unwrap();
    (emu, kc, hotkey_file(dir))
}

#[test]
fn render_prints_the_same_yaml_every_time_and_honours_values() {
    let a = minerctl(&["render"]);
    assert!(a.status.success(), "{}", text(&a));
    let b = minerctl(&["render"]);
    assert_eq!(a.stdout, b.stdout);
    let yaml = String::from_utf8(a.stdout).unwrap();
    assert!(yaml.starts_with("---\n# Source: templates/namespace.yaml\n"), "{yaml}");

    let dir = tempfile::tempdir().unwrap();
    let f1 = dir.path().join("a.yaml");
    std::fs::write(&f1, "minerApi:\n  nodePort: 32001\nnamespace: miner\n").unwrap();
    let f2 = dir.path().join("b.yaml");
    std::fs::write(&f2, "minerApi:\n  nodePort: 32002\n").unwrap();
    let out = dir.path().join("out.yaml");
    let o = minerctl(&[
        "render",
        "-f",
        path(&f1),
        "-f",
        path(&f2),
        "--set",
        "porter.enabled=true",
        "-o",
        path(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let yaml = std::fs::read_to_string(&out).unwrap();
    assert!(yaml.contains("nodePort: 32002") && !yaml.contains("nodePort: 32001"));
    assert!(yaml.contains("namespace: miner") && yaml.contains("name: porter"));
}

#[test]
fn render_into_a_pipe_nobody_reads_succeeds_and_into_a_full_disk_fails() {
    // `minerctl render | head -0`: the reader took what it wanted; not an error.
    let o = minerctl_into(&["render"], closed_pipe());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}: {stderr}", o.status);
    assert!(!stderr.contains("error"), "{stderr}");

    // A disk that is full loses the manifests: that is an error, said.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = minerctl_into(&["render"], full);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot write to stdout"), "{}", text(&o));
}

#[test]
fn render_refuses_bad_values_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("typo.yaml");
    std::fs::write(&f, "redis:\n  imag: redis:8\n").unwrap();
    let o = minerctl(&["render", "-f", path(&f)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("typo.yaml") && err.contains("redis.imag"), "{err}");
    assert!(o.stdout.is_empty(), "nothing rendered on error");
    let o = minerctl(&["render", "--set", "minerApi.nodePort=99999"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--set minerApi.nodePort=99999") && err.contains("minerApi.nodePort"), "{err}");
}

#[test]
fn deploy_with_a_kubeconfig_twice_then_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, kc, hotkey) = emulated_cluster(dir.path());
    let args = ["deploy", "--kubeconfig", path(&kc), "--hotkey", path(&hotkey), "--timeout", "20"];

    let o = minerctl(&args);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("created Deployment chutes/api") && out.contains("all 6 workloads ready"), "{out}");
    assert!(
        out.contains("Deployment chutes/prometheus-server: 1/1 ready"),
        "prometheus-server is deployed: {out}"
    );
    assert!(!out.contains(SEED_HEX));
    let secret = emu.get("v1", "Secret", Some("chutes"), "miner-credentials").unwrap().unwrap();
    assert!(secret["data"]["seed"].is_string() && secret["data"]["ss58"].is_string());

    let clock = emu.resource_version();
    let o = minerctl(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 created, 0 configured"), "{}", text(&o));
    assert_eq!(emu.resource_version(), clock, "the second deploy changed something");

    let o = minerctl(&["deploy", "--kubeconfig", path(&kc), "--dry-run", "--set", "redis.image=redis:8"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("~ configure StatefulSet chutes/redis"), "{out}");
    assert!(out.contains("+          image: redis:8") || out.contains("+        image: redis:8"), "{out}");
    assert_eq!(emu.resource_version(), clock, "the dry run changed something");
}

/// The nodes pull chute images through the registry mirror `minerctl provision` made from
/// the inventory; values that disagree with it are refused before the cluster changes,
/// naming both settings, and a validator the mirror does not cover is warned about.
#[test]
fn deploy_refuses_values_whose_registry_port_the_nodes_mirror_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, kc, hotkey) = emulated_cluster(dir.path());
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../inventory.example.yml");
    let inventory = dir.path().join("inventory.yml");
    std::fs::copy(&example, &inventory).unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["deploy", "--kubeconfig", path(&kc), "-i", path(&inventory)]
            .into_iter()
            .chain(["--hotkey", path(&hotkey), "--timeout", "20"])
            .map(str::to_owned)
            .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let run = |a: Vec<String>| Command::new(env!("CARGO_BIN_EXE_minerctl")).args(&a).output().unwrap();

    let o = run(args(&["--set", "validators.supported[0].registryNodePort=30600"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("validators.supported[0].registryNodePort is 30600 but the nodes' registry mirror")
            && err.contains("vars.registry_port in")
            && err.contains("inventory.yml"),
        "{err}"
    );
    assert!(emu.get("v1", "Namespace", None, "chutes").unwrap().is_none(), "nothing applied");

    let o = run(args(&[
        "--set",
        "validators.supported[0].hotkey=5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("which values do not list in validators.supported"));

    // Agreeing values deploy; a second validator has no mirror, which is said.
    let two = dir.path().join("two.yaml");
    std::fs::write(
        &two,
        "validators:\n  supported:\n  - {hotkey: 5Dt7HZ7Zpw4DppPxFM7Ke3Cm7sDAWhsZXmM5ZAmE7dSVJbcQ, registry: r, \
         api: http://a, socket: ws://s, registryNodePort: 30500}\n  - {hotkey: \
         5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty, registry: r, api: http://a, socket: ws://s, \
         registryNodePort: 30501}\n",
    )
    .unwrap();
    let o = run(args(&["-f", path(&two)]));
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: validators.supported[1] (5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty) has no registry mirror"),
        "{err}"
    );
    assert!(!err.contains("supported[0]"), "{err}");
}

#[test]
fn deploy_whose_reader_went_away_still_applies_everything() {
    // `minerctl deploy | head -1`: nobody reads the progress after the first line. The
    // deploy must not stop halfway (some objects applied, nothing pruned).
    let dir = tempfile::tempdir().unwrap();
    let (emu, kc, hotkey) = emulated_cluster(dir.path());
    let args = ["deploy", "--kubeconfig", path(&kc), "--hotkey", path(&hotkey), "--timeout", "20"];

    let o = minerctl_into(&args, closed_pipe());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}: {stderr}", o.status);
    assert!(!stderr.contains("error"), "a closed pipe is not an error to report: {stderr}");
    assert!(emu.get("apps/v1", "Deployment", Some("chutes"), "api").unwrap().is_some());

    // Everything was applied: a second deploy, read this time, has nothing to do.
    let o = minerctl(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 created, 0 configured"), "{}", text(&o));
}

#[test]
fn deploy_reads_the_kubeconfig_from_the_primary_over_ssh() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("cpu-0"));
    emu.add_storage_class("microk8s-hostpath", true).unwrap();
    let lab = Lab::start_named(&["cpu-0"]).unwrap();
    let h = &lab.hosts()[0];
    h.install_standins(&[Standin::Snap, Standin::Microk8s]).unwrap();
    // microk8s is "installed", and its `config` points at the emulator.
    h.sh("mkdir -p /var/lib/lab-standins/snaps /var/lib/lab-standins/microk8s && touch /var/lib/lab-standins/snaps/microk8s")
        .unwrap();
    h.write_file("/var/lib/lab-standins/microk8s/api-server", emu.url()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yml");
    std::fs::write(
        &inventory,
        format!(
            "vars:\n  user: chutes\n  login_user: root\n  ssh_keys: ['{key}']\n  ssh:\n    key: {keypath}\nhosts:\n  cpu-0:\n    address: {addr}\n    external_ip: 203.0.113.1\n    wireguard_ip: 192.168.0.1\n    is_primary: true\n    gpu_enabled: false\n",
            key = h.client_public_key(),
            keypath = h.client_key_path().display(),
            addr = h.addr(),
        ),
    )
    .unwrap();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, h.known_hosts_line() + "\n").unwrap();
    let hotkey = hotkey_file(dir.path());
    let o = minerctl(&[
        "deploy",
        "-i",
        path(&inventory),
        "--known-hosts",
        path(&known_hosts),
        "--hotkey",
        path(&hotkey),
        "--set",
        "failedChuteCleanup.enabled=false",
        "--timeout",
        "20",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(h.calls("microk8s").unwrap().iter().any(|c| c.first().map(String::as_str) == Some("config")));
    assert!(emu.get("apps/v1", "Deployment", Some("chutes"), "api").unwrap().is_some());
    assert!(emu.get("batch/v1", "CronJob", Some("chutes"), "failed-chute-cleanup").unwrap().is_none());

    // A wrong host key stops before anything is read or applied.
    std::fs::write(
        &known_hosts,
        format!(
            "{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk1ZXhhbXBsZWtleWV4YW1wbGVrZXlleGFtcGxlMQ==\n",
            h.addr()
        ),
    )
    .unwrap();
    let clock = emu.resource_version();
    let o = minerctl(&[
        "deploy",
        "-i",
        path(&inventory),
        "--known-hosts",
        path(&known_hosts),
        "--set",
        "redis.image=redis:8",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("reading the kubeconfig from the primary"),
        "{}",
        text(&o)
    );
    assert_eq!(emu.resource_version(), clock);
}

/// Deploys to a real cluster: `MINERCTL_E2E_KUBECONFIG` names its kubeconfig and
/// `MINERCTL_E2E_HOTKEY` a hotkey file. Run it with `provision/minerctl/tests/e2e-deploy.sh`.
#[test]
#[ignore = "needs a real cluster: run provision/minerctl/tests/e2e-deploy.sh with MINERCTL_E2E_KUBECONFIG and MINERCTL_E2E_HOTKEY"]
fn deploy_to_a_real_cluster_when_one_is_given() {
    let kc = std::env::var("MINERCTL_E2E_KUBECONFIG")
        .expect("MINERCTL_E2E_KUBECONFIG: the kubeconfig of the cluster to deploy to");
    let hotkey =
        std::env::var("MINERCTL_E2E_HOTKEY").expect("MINERCTL_E2E_HOTKEY: a hotkey file for the test miner");
    let ns = std::env::var("MINERCTL_E2E_NAMESPACE").unwrap_or_else(|_| "minerctl-e2e".into());
    let set = format!("namespace={ns}");
    let args = ["deploy", "--kubeconfig", &kc, "--hotkey", &hotkey, "--set", &set, "--no-wait"];
    let o = minerctl(&args);
    assert!(o.status.success(), "{}", text(&o));
    let o = minerctl(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 created, 0 configured"), "{}", text(&o));
}

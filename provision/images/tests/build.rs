//! Image builds from small stand-in binaries (a copy of the machine's `true`): what the
//! layer holds, that two builds are byte-identical, and the CUDA variant from wheels.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use minerctl_images::{BuildInput, LOCK_FILE, Lock, build_all};

fn binaries(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["chutes-miner", "graval-bootstrap"] {
        std::fs::copy("/usr/bin/true", bin.join(name)).unwrap();
    }
    bin
}

fn input(bin: &Path, out: PathBuf) -> BuildInput {
    BuildInput {
        binary_dir: bin.to_path_buf(),
        cuda_binary: None,
        cuda_wheels: None,
        ca_bundle: "/etc/ssl/certs/ca-certificates.crt".into(),
        out_dir: out,
        lab: false,
    }
}

/// (path, mode, uid, type flag, size) of every entry of a tar.
fn listing(tar: &[u8]) -> Vec<(String, u32, u32, u8, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at] != 0 {
        let h = &tar[at..at + 512];
        let field =
            |r: std::ops::Range<usize>| String::from_utf8_lossy(&h[r]).trim_end_matches('\0').to_string();
        let num = |r: std::ops::Range<usize>| usize::from_str_radix(field(r).trim(), 8).unwrap();
        let prefix = field(345..500);
        let name = field(0..100);
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let size = num(124..136);
        assert_eq!(num(136..148), 0, "mtime of {path}");
        out.push((path, num(100..108) as u32, num(108..116) as u32, h[156], size));
        at += 512 + size.next_multiple_of(512);
    }
    out
}

fn file_in<'a>(tar: &'a [u8], path: &str) -> &'a [u8] {
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at] != 0 {
        let h = &tar[at..at + 512];
        let name = String::from_utf8_lossy(&h[..100]).trim_end_matches('\0').to_string();
        let size = usize::from_str_radix(String::from_utf8_lossy(&h[124..135]).trim(), 8).unwrap();
        if name == path {
            return &tar[at + 512..at + 512 + size];
        }
        at += 512 + size.next_multiple_of(512);
    }
    panic!("{path} not in archive")
}

fn layer_of(archive: &[u8]) -> Vec<u8> {
    let index: serde_json::Value = serde_json::from_slice(file_in(archive, "index.json")).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let manifest: serde_json::Value =
        serde_json::from_slice(file_in(archive, &format!("blobs/sha256/{manifest_digest}"))).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(file_in(archive, &format!("blobs/sha256/{layer}")))
        .read_to_end(&mut tar)
        .unwrap();
    tar
}

#[test]
fn two_builds_of_the_same_inputs_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let bin = binaries(dir.path());
    let first = build_all(&input(&bin, dir.path().join("a"))).unwrap();
    let second = build_all(&input(&bin, dir.path().join("b"))).unwrap();
    let digests =
        |r: &[minerctl_images::Report]| r.iter().map(|r| r.locked.digest.clone()).collect::<Vec<_>>();
    assert_eq!(digests(&first), digests(&second));
    for name in ["chutes-miner", "graval-bootstrap"] {
        let a = std::fs::read(dir.path().join(format!("a/{name}.oci.tar"))).unwrap();
        let b = std::fs::read(dir.path().join(format!("b/{name}.oci.tar"))).unwrap();
        assert!(a == b, "{name}: archives differ");
    }
    let lock = Lock::read(&dir.path().join("a").join(LOCK_FILE)).unwrap();
    let miner = &lock.images["chutes-miner"];
    assert_eq!(miner.reference, format!("chutes.local/chutes-miner@{}", miner.digest));
    assert_eq!(miner.archive, "chutes-miner.oci.tar");

    // A different binary is a different image.
    std::fs::copy("/usr/bin/false", bin.join("chutes-miner")).unwrap();
    let third = build_all(&input(&bin, dir.path().join("c"))).unwrap();
    assert_ne!(third[0].locked.digest, first[0].locked.digest);
    assert_eq!(third[1].locked.digest, first[1].locked.digest, "graval-bootstrap did not change");
}

#[test]
fn the_layer_holds_binary_libraries_certificates_user_and_tmp() {
    let dir = tempfile::tempdir().unwrap();
    let bin = binaries(dir.path());
    build_all(&input(&bin, dir.path().join("out"))).unwrap();
    let archive = std::fs::read(dir.path().join("out/chutes-miner.oci.tar")).unwrap();
    let layer = layer_of(&archive);
    let entries = listing(&layer);
    let find =
        |p: &str| entries.iter().find(|e| e.0 == p).unwrap_or_else(|| panic!("{p} missing: {entries:?}"));
    assert_eq!(find("usr/local/bin/chutes-miner").1, 0o755);
    assert_eq!(find("tmp/").1, 0o1777);
    assert_eq!(find("home/chutes/").2, 65532);
    assert!(find("etc/ssl/certs/ca-certificates.crt").4 > 1000);
    // `true` links libc; the loader comes along.
    let ldd = String::from_utf8(Command::new("ldd").arg("/usr/bin/true").output().unwrap().stdout).unwrap();
    for lib in ldd.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/'))) {
        find(lib.trim_start_matches('/'));
    }
    assert!(entries.iter().any(|e| e.0.contains("ld-linux")), "no loader: {entries:?}");
    let passwd = String::from_utf8(file_in(&layer, "etc/passwd").to_vec()).unwrap();
    assert!(passwd.contains("chutes:x:65532:65532:"), "{passwd}");
    let paths: Vec<&String> = entries.iter().map(|e| &e.0).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "entries in path order");

    let index: serde_json::Value = serde_json::from_slice(file_in(&archive, "index.json")).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = file_in(&archive, &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")));
    assert_eq!(minerctl_images::oci::sha256(manifest), digest, "the blob's name is its digest");
}

#[test]
fn missing_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = build_all(&input(dir.path(), dir.path().join("out"))).unwrap_err().to_string();
    assert!(err.contains("chutes-miner") && err.contains("no such binary"), "{err}");
    assert!(!dir.path().join("out").exists(), "nothing written");

    let bin = binaries(dir.path());
    let mut cuda = input(&bin, dir.path().join("out"));
    let wheels = dir.path().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    cuda.cuda_binary = Some(bin.join("graval-bootstrap"));
    cuda.cuda_wheels = Some(wheels.clone());
    let err = build_all(&cuda).unwrap_err().to_string();
    assert!(err.contains("libcublas.so") && err.contains("pip download"), "{err}");
}

#[test]
fn the_lab_image_is_built_only_when_asked_and_answers_to_chutes() {
    let dir = tempfile::tempdir().unwrap();
    let bin = binaries(dir.path());
    let out = dir.path().join("out");
    build_all(&input(&bin, out.clone())).unwrap();
    let names: Vec<String> = Lock::read(&out.join(LOCK_FILE)).unwrap().images.into_keys().collect();
    assert_eq!(names, ["chutes-miner", "graval-bootstrap"], "a real miner's build is unchanged");

    let mut lab = input(&bin, dir.path().join("lab"));
    lab.lab = true;
    let err = build_all(&lab).unwrap_err().to_string();
    assert!(err.contains("chute-standin") && err.contains("no such binary"), "{err}");
    std::fs::copy("/usr/bin/true", bin.join("chute-standin")).unwrap();
    build_all(&lab).unwrap();
    let lock = Lock::read(&dir.path().join("lab").join(LOCK_FILE)).unwrap();
    let standin = &lock.images["chute-standin"];
    assert!(standin.reference.starts_with("chutes.local/chute-standin@sha256:"), "{standin:?}");
    let layer = layer_of(&std::fs::read(dir.path().join("lab").join(&standin.archive)).unwrap());
    let entries = listing(&layer);
    // Chute Jobs start their container as `chutes run ...`.
    let chutes = entries.iter().find(|e| e.0 == "usr/local/bin/chutes").expect("usr/local/bin/chutes");
    assert_eq!(chutes.3, b'2', "a symlink");
    assert!(entries.iter().any(|e| e.0 == "usr/local/bin/chute-standin"));
}

/// A small wheel in NVIDIA's layout, zipped by Python's zipfile (deflated entries).
fn fake_wheel(dir: &Path, file: &str, member: &str) {
    let script = format!(
        "import zipfile\nwith zipfile.ZipFile({:?}, 'w', zipfile.ZIP_DEFLATED) as z:\n    \
         z.writestr({member:?}, b'ELF-ish ' * 1000)\n    z.writestr('nvidia/__init__.py', b'')\n",
        dir.join(file).to_str().unwrap()
    );
    let status = Command::new("python3").arg("-c").arg(script).status().unwrap();
    assert!(status.success());
}

#[test]
fn the_cuda_variant_carries_the_wheels_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let bin = binaries(dir.path());
    let wheels = dir.path().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    fake_wheel(
        &wheels,
        "nvidia_cublas-13.0.0-py3-none-manylinux_2_27_x86_64.whl",
        "nvidia/cu13/lib/libcublas.so.13",
    );
    fake_wheel(
        &wheels,
        "nvidia_cuda_nvrtc-13.0.0-py3-none-manylinux_2_27_x86_64.whl",
        "nvidia/cu13/lib/libnvrtc.so.13",
    );
    let mut cuda = input(&bin, dir.path().join("out"));
    cuda.cuda_binary = Some(bin.join("graval-bootstrap"));
    cuda.cuda_wheels = Some(wheels);
    let reports = build_all(&cuda).unwrap();
    assert_eq!(reports.len(), 3);
    let archive = std::fs::read(dir.path().join("out/graval-bootstrap-cuda.oci.tar")).unwrap();
    let layer = layer_of(&archive);
    assert_eq!(file_in(&layer, "usr/local/cuda/lib64/libcublas.so.13"), b"ELF-ish ".repeat(1000));
    let entries = listing(&layer);
    let link = entries.iter().find(|e| e.0 == "usr/local/cuda/lib64/libnvrtc.so").unwrap();
    assert_eq!(link.3, b'2', "unversioned name is a symlink");
    let index: serde_json::Value = serde_json::from_slice(file_in(&archive, "index.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(file_in(
        &archive,
        &format!(
            "blobs/sha256/{}",
            index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:")
        ),
    ))
    .unwrap();
    let config: serde_json::Value = serde_json::from_slice(file_in(
        &archive,
        &format!(
            "blobs/sha256/{}",
            manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:")
        ),
    ))
    .unwrap();
    let env = config["config"]["Env"].to_string();
    assert!(
        env.contains("NVIDIA_DRIVER_CAPABILITIES=compute,utility") && env.contains("/usr/local/cuda/lib64"),
        "{env}"
    );
    assert_eq!(config["config"]["User"], "65532:65532");
    let lock = Lock::read(&dir.path().join("out").join(LOCK_FILE)).unwrap();
    assert!(lock.values_overlay(None).contains("graval-bootstrap-cuda@sha256:"));
}

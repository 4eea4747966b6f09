//! What goes into each image, and building them all into an output directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lock::{LOCK_FILE, Lock, LockedImage};
use crate::oci::{self, RunConfig};
use crate::tar::Tree;
use crate::{ImageError, wheel};

/// Repository prefix of every image. Images reach nodes by import, never by pull, so the
/// name only has to be stable and unmistakable; `.local` is never a public registry.
pub const REGISTRY: &str = "chutes.local";
/// The non-root user every image runs as (the `nonroot` id distroless images use).
pub const UID: u32 = 65532;
/// Where the CUDA image keeps the wheels' libraries (first in LD_LIBRARY_PATH).
pub const CUDA_LIB_DIR: &str = "usr/local/cuda/lib64";

/// Inputs of `images build`.
#[derive(Debug, Clone)]
pub struct BuildInput {
    /// Holds `chutes-miner` and `graval-bootstrap` (e.g. `target/release`).
    pub binary_dir: PathBuf,
    /// `graval-bootstrap` built with `--features cuda`; with `cuda_wheels`, the CUDA image.
    pub cuda_binary: Option<PathBuf>,
    /// Directory of downloaded `nvidia-cublas` / `nvidia-cuda-nvrtc` wheels.
    pub cuda_wheels: Option<PathBuf>,
    /// CA bundle copied to /etc/ssl/certs/ca-certificates.crt.
    pub ca_bundle: PathBuf,
    /// Where the archives and the lock file go.
    pub out_dir: PathBuf,
    /// Also the lab-only images ([`LAB_IMAGES`]), from binaries in `binary_dir`. Off for a
    /// real miner: nothing it deploys uses them.
    pub lab: bool,
}

/// Images only `minerctl lab` uses: `chute-standin` runs in chute pods instead of a
/// validator's chute image.
pub const LAB_IMAGES: &[&str] = &["chute-standin"];

/// One image to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Image name without registry: `chutes-miner`, `graval-bootstrap`, `graval-bootstrap-cuda`.
    pub name: String,
    pub binary: PathBuf,
    /// Installed as `/usr/local/bin/<program>`, the entrypoint.
    pub program: String,
    /// Extra libraries (the CUDA wheels'), installed into [`CUDA_LIB_DIR`].
    pub extra_libs: Vec<wheel::Library>,
    pub extra_env: Vec<String>,
    /// More names for the program in `/usr/local/bin` (symlinks), e.g. `chutes` for the
    /// stand-in chute, which chute Jobs start as `chutes run ...`.
    pub aliases: Vec<String>,
}

/// One built image, as reported to the operator.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub locked: LockedImage,
    pub unpacked_size: u64,
}

/// The shared libraries `binary` links and its loader, as `ldd` lists them.
pub fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd").arg(binary).output().map_err(|e| ImageError::Ldd {
        binary: binary.to_path_buf(),
        reason: format!("cannot run ldd: {e}"),
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary needs nothing; glibc's ldd says so and exits 1.
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(ImageError::Ldd {
            binary: binary.to_path_buf(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_ldd(binary, &text)
}

fn parse_ldd(binary: &Path, text: &str) -> Result<Vec<PathBuf>, ImageError> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") || line.starts_with("linux-vdso") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(ImageError::Ldd {
                        binary: binary.to_path_buf(),
                        reason: format!("{} is not found on this machine", name.trim()),
                    });
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            // The loader: `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|e| ImageError::io(path, e))
}

/// The file system of one image.
pub fn tree(spec: &ImageSpec, ca_bundle: &Path) -> Result<Tree, ImageError> {
    let mut t = Tree::new();
    t.file(&format!("usr/local/bin/{}", spec.program), 0o755, read(&spec.binary)?);
    for alias in &spec.aliases {
        t.symlink(&format!("usr/local/bin/{alias}"), &spec.program);
    }
    for lib in linked_libraries(&spec.binary)? {
        // The file ldd resolved, at the path the loader will look for it.
        t.file(&lib.to_string_lossy(), 0o755, read(&lib)?);
    }
    for lib in &spec.extra_libs {
        t.file(&format!("{CUDA_LIB_DIR}/{}", lib.file_name), 0o755, lib.data.clone());
        // dlopen("libcublas.so") must find the versioned file the wheel ships.
        if let Some((base, _)) = lib.file_name.split_once(".so.") {
            let plain = format!("{CUDA_LIB_DIR}/{base}.so");
            if t.get(&plain).is_none() {
                t.symlink(&plain, &lib.file_name);
            }
        }
    }
    t.file("etc/ssl/certs/ca-certificates.crt", 0o644, read(ca_bundle)?);
    t.file(
        "etc/passwd",
        0o644,
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nchutes:x:{UID}:{UID}:chutes:/home/chutes:/sbin/nologin\n"
        )
        .into_bytes(),
    );
    t.file("etc/group", 0o644, format!("root:x:0:\nchutes:x:{UID}:\n").into_bytes());
    t.file("etc/nsswitch.conf", 0o644, b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec());
    t.dir("tmp", 0o1777, 0, 0);
    t.dir("home/chutes", 0o755, UID, UID);
    Ok(t)
}

/// Builds one image into `out_dir` and returns its lock entry.
pub fn build_one(spec: &ImageSpec, ca_bundle: &Path, out_dir: &Path) -> Result<Report, ImageError> {
    let tree = tree(spec, ca_bundle)?;
    let mut env = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_string(),
    ];
    env.extend(spec.extra_env.iter().cloned());
    let run = RunConfig {
        entrypoint: vec![format!("/usr/local/bin/{}", spec.program)],
        env,
        user: format!("{UID}:{UID}"),
        working_dir: "/tmp".into(),
        labels: vec![("org.opencontainers.image.title".into(), spec.name.clone())],
    };
    let repo = format!("{REGISTRY}/{}", spec.name);
    let built = oci::build(&repo, &tree, &run)?;
    let archive = format!("{}.oci.tar", spec.name);
    let path = out_dir.join(&archive);
    std::fs::write(&path, &built.archive).map_err(|e| ImageError::io(&path, e))?;
    Ok(Report {
        name: spec.name.clone(),
        locked: LockedImage {
            reference: format!("{repo}@{}", built.digest),
            tag: oci::tag_of(&repo, &built.digest),
            digest: built.digest,
            archive,
            size: built.size,
        },
        unpacked_size: built.unpacked_size,
    })
}

/// cuBLAS and NVRTC from the wheels in `dir`; both must be there.
pub fn cuda_libraries(dir: &Path) -> Result<Vec<wheel::Library>, ImageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ImageError::io(dir, e))?;
    let mut wheels: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    wheels.sort();
    let mut libs = Vec::new();
    for w in &wheels {
        libs.extend(wheel::shared_libraries(w)?);
    }
    libs.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    libs.dedup_by(|a, b| a.file_name == b.file_name);
    for (lib, wheel_name) in [("libcublas.so", "nvidia-cublas"), ("libnvrtc.so", "nvidia-cuda-nvrtc")] {
        if !libs.iter().any(|l| l.file_name.starts_with(lib)) {
            return Err(ImageError::MissingWheel {
                dir: dir.to_path_buf(),
                library: lib.into(),
                wheel: wheel_name.into(),
            });
        }
    }
    Ok(libs)
}

/// The images `input` asks for: always the runtime and the CPU GraVal image; the CUDA
/// GraVal image when both a CUDA binary and wheels are given; the lab's with `lab`.
pub fn specs(input: &BuildInput) -> Result<Vec<ImageSpec>, ImageError> {
    let bin = |name: &str| -> Result<PathBuf, ImageError> {
        let p = input.binary_dir.join(name);
        if p.is_file() { Ok(p) } else { Err(ImageError::MissingBinary { path: p }) }
    };
    let mut specs = vec![
        ImageSpec {
            name: "chutes-miner".into(),
            binary: bin("chutes-miner")?,
            program: "chutes-miner".into(),
            extra_libs: vec![],
            extra_env: vec![],
            aliases: vec![],
        },
        ImageSpec {
            name: "graval-bootstrap".into(),
            binary: bin("graval-bootstrap")?,
            program: "graval-bootstrap".into(),
            extra_libs: vec![],
            extra_env: vec![],
            aliases: vec![],
        },
    ];
    match (&input.cuda_binary, &input.cuda_wheels) {
        (Some(binary), Some(wheels)) => {
            if !binary.is_file() {
                return Err(ImageError::MissingBinary { path: binary.clone() });
            }
            specs.push(ImageSpec {
                name: "graval-bootstrap-cuda".into(),
                binary: binary.clone(),
                program: "graval-bootstrap".into(),
                extra_libs: cuda_libraries(wheels)?,
                extra_env: vec![
                    // The NVIDIA container runtime mounts libcuda.so.1 and the device nodes
                    // when the image asks for them with these two variables.
                    "NVIDIA_VISIBLE_DEVICES=all".into(),
                    "NVIDIA_DRIVER_CAPABILITIES=compute,utility".into(),
                    format!("LD_LIBRARY_PATH=/{CUDA_LIB_DIR}:/usr/local/nvidia/lib64"),
                ],
                aliases: vec![],
            });
        }
        (None, None) => {}
        _ => return Err(ImageError::CudaInputs),
    }
    if input.lab {
        specs.push(ImageSpec {
            name: "chute-standin".into(),
            binary: bin("chute-standin")?,
            program: "chute-standin".into(),
            extra_libs: vec![],
            extra_env: vec![],
            aliases: vec!["chutes".into()],
        });
    }
    Ok(specs)
}

/// Builds every image of `input` and writes the lock file; returns what was built.
pub fn build_all(input: &BuildInput) -> Result<Vec<Report>, ImageError> {
    let specs = specs(input)?;
    std::fs::create_dir_all(&input.out_dir).map_err(|e| ImageError::io(&input.out_dir, e))?;
    let mut reports = Vec::new();
    let mut lock = Lock::default();
    for spec in &specs {
        let report = build_one(spec, &input.ca_bundle, &input.out_dir)?;
        lock.images.insert(report.name.clone(), report.locked.clone());
        reports.push(report);
    }
    lock.write(&input.out_dir.join(LOCK_FILE))?;
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let libs = parse_ldd(Path::new("b"), text).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let err = parse_ldd(Path::new("b"), "\tlibssl.so.3 => not found\n").unwrap_err().to_string();
        assert!(err.contains("libssl.so.3 is not found"), "{err}");
    }
}

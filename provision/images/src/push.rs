//! `images push`: the archives of the lock into each node's containerd, over the
//! provisioning SSH transport (`provision-ssh`), with `microk8s ctr image import`.
//!
//! Not an engine step: the engine plans hosts from the inventory and roles, while what a
//! push wants is the lock file's digests, read back from containerd on every run. It keeps
//! the engine's promise all the same: a node is first asked what it holds (`ctr images
//! ls`), an image whose digest is there is left alone, and under `check` nothing but that
//! listing runs; the report says what would be imported.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use provision_ssh::{Session, SshError, shell_quote};

use crate::lock::{Lock, LockedImage};

/// Which images a node gets: the runtime everywhere; GraVal (both variants) on GPU nodes,
/// where the API starts its bootstrap Job.
pub fn images_for(lock: &Lock, gpu: bool) -> Vec<(&String, &LockedImage)> {
    lock.images.iter().filter(|(name, _)| name.as_str() == "chutes-miner" || gpu).collect()
}

/// What happened to one image on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node already holds the digest.
    Present,
    Imported,
    /// `check`: it would be imported.
    WouldImport,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{host}: `{command}` failed ({status}): {stderr}")]
    Command { host: String, command: String, status: String, stderr: String },
    #[error("{host}: imported {image} but containerd does not list {reference}")]
    NotListed { host: String, image: String, reference: String },
    #[error("{host}: the copy of {archive} arrived with another sha256; removed it")]
    Corrupt { host: String, archive: std::path::PathBuf },
    #[error(transparent)]
    Image(#[from] crate::ImageError),
}

const LIST: &str = "microk8s ctr images ls";

/// The names containerd lists with their manifest digests (`ctr images ls`: REF TYPE
/// DIGEST SIZE ...).
pub fn listed_names(listing: &str) -> BTreeSet<(String, String)> {
    listing
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let digest = f.nth(1)?;
            digest.starts_with("sha256:").then(|| (name.to_string(), digest.to_string()))
        })
        .collect()
}

/// Whether the kubelet finds `image` on the node: containerd's CRI resolves an image by
/// its exact name, so the digest under another name (`repo:tag`, `import-<date>@...`)
/// is not enough for the `repo@sha256:...` reference the manifests use.
fn holds(listed: &BTreeSet<(String, String)>, image: &LockedImage) -> bool {
    listed.contains(&(image.reference.clone(), image.digest.clone()))
}

/// The import command: `--base-name` with `--digests` names the image `repo@<digest>` as
/// well as `repo:tag` from the archive (without `--base-name` the digest name would be
/// `import-<date>@<digest>`, which nothing references).
fn import_command(image: &LockedImage, quoted_archive: &str) -> String {
    let repo = image.reference.split_once('@').map_or(image.reference.as_str(), |(repo, _)| repo);
    format!(
        "microk8s ctr image import --base-name {} --digests {quoted_archive}; s=$?; rm -f {quoted_archive}; exit $s",
        shell_quote(repo)
    )
}

async fn run(session: &Session, command: &str, stdin: Option<&[u8]>) -> Result<String, PushError> {
    let out = session.exec(command, stdin, Duration::from_secs(600)).await?;
    if !out.success() {
        return Err(PushError::Command {
            host: session.name().to_string(),
            command: command.to_string(),
            status: out.status.map_or_else(|| format!("signal {:?}", out.signal), |s| format!("exit {s}")),
            stderr: out.stderr_str().trim().to_string(),
        });
    }
    Ok(out.stdout_str())
}

/// Bytes sent per command: each piece gets its own timeout, so a slow link moves a CUDA
/// image (hundreds of MB) without one command running for many minutes, and the archive
/// is never held in memory whole.
const CHUNK: usize = 16 << 20;

/// Copies `archive` to the quoted remote path in pieces and checks its sha256 there.
async fn upload(session: &Session, archive: &Path, remote: &str) -> Result<(), PushError> {
    use sha2::Digest;
    use std::io::Read;
    let io = |e| crate::ImageError::io(archive, e);
    let mut file = std::fs::File::open(archive).map_err(io)?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut first = true;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let n = file.read(&mut buf[filled..]).map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 && !first {
            break;
        }
        hash.update(&buf[..filled]);
        let op = if first { ">" } else { ">>" };
        run(session, &format!("umask 077; cat {op} {remote}"), Some(&buf[..filled])).await?;
        first = false;
        if filled < CHUNK {
            break;
        }
    }
    let expected = hex::encode(hash.finalize());
    let got = run(session, &format!("sha256sum {remote}"), None).await?;
    if got.split_whitespace().next() != Some(expected.as_str()) {
        run(session, &format!("rm -f {remote}"), None).await?;
        return Err(PushError::Corrupt { host: session.name().to_string(), archive: archive.to_path_buf() });
    }
    Ok(())
}

/// Pushes `images` (from the lock at `lock_path`) to the node behind `session`.
pub async fn push_host(
    session: &Session,
    lock_path: &Path,
    images: &[(&String, &LockedImage)],
    check: bool,
) -> Result<Vec<(String, Outcome)>, PushError> {
    let present = listed_names(&run(session, LIST, None).await?);
    let mut outcomes = Vec::new();
    for (name, image) in images {
        if holds(&present, image) {
            outcomes.push((name.to_string(), Outcome::Present));
            continue;
        }
        if check {
            outcomes.push((name.to_string(), Outcome::WouldImport));
            continue;
        }
        let archive = Lock::archive_path(lock_path, image);
        let remote = format!("/var/tmp/minerctl-{name}.oci.tar");
        let q = shell_quote(&remote);
        upload(session, &archive, &q).await?;
        // Removed whatever the import's outcome: a failed one must not leave 100s of MB behind.
        run(session, &import_command(image, &q), None).await?;
        if !holds(&listed_names(&run(session, LIST, None).await?), image) {
            return Err(PushError::NotListed {
                host: session.name().to_string(),
                image: name.to_string(),
                reference: image.reference.clone(),
            });
        }
        outcomes.push((name.to_string(), Outcome::Imported));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> LockedImage {
        LockedImage {
            reference: "chutes.local/chutes-miner@sha256:aa".into(),
            tag: "chutes.local/chutes-miner:0123".into(),
            digest: "sha256:aa".into(),
            archive: "chutes-miner.oci.tar".into(),
            size: 1,
        }
    }

    #[test]
    fn an_image_is_held_only_under_the_name_the_manifests_use() {
        let listing = "REF TYPE DIGEST SIZE PLATFORMS LABELS\n\
            chutes.local/chutes-miner:0123 application/vnd.oci.image.manifest.v1+json sha256:aa 20.1 MiB linux/amd64 -\n\
            import-2026-12-07@sha256:aa application/vnd.oci.image.manifest.v1+json sha256:aa 20.1 MiB linux/amd64 -\n\
            docker.io/library/redis:7 application/vnd.oci.image.index.v1+json sha256:bb 40.0 MiB linux/amd64 io.cri-containerd.image=managed\n";
        let listed = listed_names(listing);
        assert!(listed.contains(&("docker.io/library/redis:7".into(), "sha256:bb".into())));
        assert!(!holds(&listed, &image()), "the digest under other names: the kubelet would pull");
        let named = format!(
            "{listing}chutes.local/chutes-miner@sha256:aa application/vnd.oci.image.manifest.v1+json sha256:aa 20.1 MiB linux/amd64 -\n"
        );
        assert!(holds(&listed_names(&named), &image()));
    }

    #[test]
    fn the_import_names_the_image_by_its_digest_reference() {
        let cmd = import_command(&image(), "'/var/tmp/x.tar'");
        assert!(
            cmd.starts_with(
                "microk8s ctr image import --base-name chutes.local/chutes-miner --digests '/var/tmp/x.tar';"
            ),
            "{cmd}"
        );
    }
}

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
    #[error("{host}: imported {image} but containerd does not list digest {digest}")]
    NotListed { host: String, image: String, digest: String },
    #[error("{host}: the copy of {archive} arrived with another sha256; removed it")]
    Corrupt { host: String, archive: std::path::PathBuf },
    #[error(transparent)]
    Image(#[from] crate::ImageError),
}

const LIST: &str = "microk8s ctr images ls";

/// The manifest digests containerd lists (`ctr images ls`: REF TYPE DIGEST SIZE ...).
pub fn listed_digests(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|d| d.starts_with("sha256:"))
        .map(String::from)
        .collect()
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
    let present = listed_digests(&run(session, LIST, None).await?);
    let mut outcomes = Vec::new();
    for (name, image) in images {
        if present.contains(&image.digest) {
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
        run(session, &format!("microk8s ctr image import --digests {q}; s=$?; rm -f {q}; exit $s"), None)
            .await?;
        if !listed_digests(&run(session, LIST, None).await?).contains(&image.digest) {
            return Err(PushError::NotListed {
                host: session.name().to_string(),
                image: name.to_string(),
                digest: image.digest.clone(),
            });
        }
        outcomes.push((name.to_string(), Outcome::Imported));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_come_from_the_third_column() {
        let listing = "REF TYPE DIGEST SIZE PLATFORMS LABELS\n\
            chutes.local/chutes-miner:0123 application/vnd.oci.image.manifest.v1+json sha256:aa 20.1 MiB linux/amd64 -\n\
            docker.io/library/redis:7 application/vnd.oci.image.index.v1+json sha256:bb 40.0 MiB linux/amd64 io.cri-containerd.image=managed\n";
        assert_eq!(
            listed_digests(listing),
            BTreeSet::from(["sha256:aa".to_string(), "sha256:bb".to_string()])
        );
    }
}

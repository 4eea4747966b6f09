//! The SSH client key that every lab host authorizes for root.
//!
//! One key serves every lab host of every test process: it is generated once into the
//! lab state dir and reused, because key generation and file churn per host would cost
//! start-up time and leave files behind. Creation is race-free between processes: each
//! generates into a private temp dir and renames it into place; the first rename wins
//! and the others discard theirs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::error::{LabError, io};
use super::slot::state_dir;

#[derive(Debug)]
pub(crate) struct ClientKey {
    pub(crate) private_key: PathBuf,
    pub(crate) public_key: String,
}

pub(crate) fn client_key() -> Result<&'static ClientKey, LabError> {
    static KEY: OnceLock<ClientKey> = OnceLock::new();
    if let Some(key) = KEY.get() {
        return Ok(key);
    }
    let key = load_or_create(&state_dir()?.join("client-key"))?;
    Ok(KEY.get_or_init(|| key))
}

fn load_or_create(dir: &Path) -> Result<ClientKey, LabError> {
    if !dir.join("id_ed25519").exists() {
        create(dir)?;
    }
    let private_key = dir.join("id_ed25519");
    let public_path = dir.join("id_ed25519.pub");
    let public_key = std::fs::read_to_string(&public_path)
        .map_err(io(format!("read {}", public_path.display())))?
        .trim()
        .to_string();
    Ok(ClientKey { private_key, public_key })
}

fn create(dir: &Path) -> Result<(), LabError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let tmp = tempfile::Builder::new()
        .prefix("client-key.tmp-")
        .tempdir_in(parent)
        .map_err(io(format!("create a temp dir in {}", parent.display())))?;
    let file = tmp.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "lab-harness-client", "-f"])
        .arg(&file)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LabError::MissingProgram {
                program: "ssh-keygen".into(),
                hint: "apt-get install openssh-client".into(),
            },
            _ => io("run ssh-keygen for the lab client key")(e),
        })?;
    if !out.status.success() {
        return Err(LabError::Start {
            host: "(client key)".into(),
            addr: "-".into(),
            detail: format!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    let tmp = tmp.keep();
    if std::fs::rename(&tmp, dir).is_err() {
        // Another process won the race; its key is as good as ours.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("id_ed25519.pub").exists() {
            return Err(LabError::Start {
                host: "(client key)".into(),
                addr: "-".into(),
                detail: format!("could not move the new key into {}", dir.display()),
            });
        }
    }
    Ok(())
}

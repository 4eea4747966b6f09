//! `images.lock.json`: what `images build` produced, read by `render`/`deploy` (values
//! default to these images by digest) and `images push` (which archives to ship).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ImageError;
use crate::registry::RegistryRef;

/// The lock file's name inside the output directory.
pub const LOCK_FILE: &str = "images.lock.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// `repo@sha256:...`: what manifests reference.
    pub reference: String,
    /// `repo:<digest prefix>`: the name the archive gives the image when imported.
    pub tag: String,
    /// Manifest digest.
    pub digest: String,
    /// Archive file, relative to the lock file's directory.
    pub archive: String,
    /// Bytes a node stores (compressed blobs).
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Image name (`chutes-miner`, `graval-bootstrap`, `graval-bootstrap-cuda`) -> image.
    pub images: BTreeMap<String, LockedImage>,
}

impl Lock {
    pub fn read(path: &Path) -> Result<Lock, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|e| ImageError::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| ImageError::Lock { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Reads the lock if the file exists; `Ok(None)` when it does not (no build yet).
    pub fn read_if_present(path: &Path) -> Result<Option<Lock>, ImageError> {
        match path.try_exists() {
            Ok(true) => Lock::read(path).map(Some),
            Ok(false) => Ok(None),
            Err(e) => Err(ImageError::io(path, e)),
        }
    }

    pub fn write(&self, path: &Path) -> Result<(), ImageError> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| ImageError::Lock { path: path.to_path_buf(), reason: e.to_string() })?;
        text.push('\n');
        std::fs::write(path, text).map_err(|e| ImageError::io(path, e))
    }

    /// A values document (JSON, which is YAML) that points the chart at these images:
    /// the runtime image for the API, Gepetto, Porter and the audit exporter, the CUDA
    /// GraVal image for the bootstrap Job. Keys whose image was not built are left out.
    /// With a `registry` (values `images.registry`), the images are named there.
    pub fn values_overlay(&self, registry: Option<&RegistryRef>) -> String {
        let reference = |name: &str| {
            self.images.get(name).map(|i| {
                let image = match registry {
                    Some(r) => r.reference(name, &i.digest),
                    None => i.reference.clone(),
                };
                serde_json::json!({ "image": image })
            })
        };
        let mut doc = serde_json::Map::new();
        if let Some(miner) = reference("chutes-miner") {
            for key in ["minerApi", "gepetto", "porter", "auditExporter"] {
                doc.insert(key.into(), miner.clone());
            }
        }
        if let Some(graval) = reference("graval-bootstrap-cuda") {
            doc.insert("graval".into(), graval);
        }
        serde_json::Value::Object(doc).to_string()
    }

    /// The archive of `image`, resolved against the lock file's directory.
    pub fn archive_path(lock_path: &Path, image: &LockedImage) -> PathBuf {
        lock_path.parent().unwrap_or(Path::new(".")).join(&image.archive)
    }
}

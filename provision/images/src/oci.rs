//! OCI image layout, written as one `oci-archive` tar: `oci-layout`, `index.json` and
//! `blobs/sha256/<digest>` (config, manifest, one gzip layer).
//!
//! Every JSON document is serialized from `serde_json::json!` maps, whose keys serde_json
//! keeps sorted (no `preserve_order` in this workspace's lock), and the gzip header has
//! mtime 0 and a fixed OS byte, so the digests depend only on the files.

use std::io::Write;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ImageError;
use crate::tar::Tree;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// What the container runs: the config's `config` object.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub labels: Vec<(String, String)>,
}

/// A finished image: the archive's bytes and what a reference to it needs.
#[derive(Debug, Clone)]
pub struct Built {
    /// Digest of the manifest: what `name@sha256:...` refers to.
    pub digest: String,
    /// Sum of the blob sizes (config, manifest, compressed layer): what a node stores.
    pub size: u64,
    /// Size of the unpacked file system.
    pub unpacked_size: u64,
    pub archive: Vec<u8>,
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(data.len() / 2), flate2::Compression::new(6));
    enc.write_all(data).map_err(|e| ImageError::Compress(e.to_string()))?;
    enc.finish().map_err(|e| ImageError::Compress(e.to_string()))
}

fn to_json(v: &Value) -> Vec<u8> {
    // Compact: whitespace would not change the meaning but would change the digest.
    v.to_string().into_bytes()
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()})
}

/// Builds the image of `tree` and packs its layout. `name` is the repository
/// (`chutes.local/chutes-miner`); the archive names the image `name:<digest prefix>`.
pub fn build(name: &str, tree: &Tree, run: &RunConfig) -> Result<Built, ImageError> {
    let layer_tar = tree.to_tar()?;
    let diff_id = sha256(&layer_tar);
    let layer = gzip(&layer_tar)?;
    drop(layer_tar);
    let labels: serde_json::Map<String, Value> =
        run.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let config = to_json(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": run.entrypoint,
            "Env": run.env,
            "User": run.user,
            "WorkingDir": run.working_dir,
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "minerctl images build", "comment": "one layer: binary, its libraries, base files"}],
    }));
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer)],
    }));
    let digest = sha256(&manifest);
    let tag = tag_of(name, &digest);
    let index = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": digest,
            "size": manifest.len(),
            // Lets an importer filter by platform without opening the config.
            "platform": {"architecture": "amd64", "os": "linux"},
            // containerd (`ctr image import`) names the image from the first, podman and
            // skopeo from the second.
            "annotations": {"io.containerd.image.name": tag, "org.opencontainers.image.ref.name": tag},
        }],
    }));
    let size = (config.len() + manifest.len() + layer.len()) as u64;
    let mut layout = Tree::new();
    layout.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    layout.file("index.json", 0o644, index);
    for blob in [config, manifest, layer] {
        let hex = sha256(&blob);
        let hex = hex.trim_start_matches("sha256:");
        layout.file(&format!("blobs/sha256/{hex}"), 0o644, blob);
    }
    Ok(Built { digest, size, unpacked_size: tree.content_size(), archive: layout.to_tar()? })
}

/// `repo:<first 12 hex digits of the digest>`: a name unique to this build, so importing a
/// new build never moves a tag that running pods' image still carries.
pub fn tag_of(repo: &str, digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("{repo}:{}", &hex[..hex.len().min(12)])
}

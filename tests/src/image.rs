//! A tiny OCI image built by hand — one gzip'd tar layer, a config, a manifest,
//! `index.json` and `oci-layout`, every blob named by its sha256 — and pushed to a
//! registry with `skopeo copy`.
//!
//! Not here: multi-platform indexes, Docker media types, compression other than gzip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The layout directory.
    pub dir: PathBuf,
    /// The tag inside the layout.
    pub tag: String,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// `sha256:…` of the config blob.
    pub config_digest: String,
    /// `sha256:…` of the (compressed) layer.
    pub layer_digest: String,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A ustar archive of regular files (mode 0644, owner 0, mtime 0).
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], value: u64| {
            let s = format!("{:0width$o}", value, width = field.len() - 1);
            field[..s.len()].copy_from_slice(s.as_bytes());
        };
        octal(&mut header[100..108], 0o644);
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

impl OciImage {
    /// Writes an image with one layer holding `files` to the layout `dir`, tagged `tag`.
    pub fn build(dir: &Path, tag: &str, files: &[(&str, &[u8])]) -> anyhow::Result<Self> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs)?;
        let put = |bytes: &[u8]| -> anyhow::Result<String> {
            let digest = sha256(bytes);
            std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes)?;
            Ok(digest)
        };
        let layer_tar = tar(files);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&layer_tar)?;
        let layer = gz.finish()?;
        let layer_digest = put(&layer)?;
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_tar)]},
            "config": {},
        })
        .to_string();
        let config_digest = put(config.as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        })
        .to_string();
        let manifest_digest = put(manifest.as_bytes())?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        })
        .to_string();
        std::fs::write(dir.join("index.json"), index)?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(OciImage {
            dir: dir.to_path_buf(),
            tag: tag.to_string(),
            manifest_digest,
            config_digest,
            layer_digest,
        })
    }

    /// Pushes the image to `registry` (plain HTTP) as `repo:tag` with skopeo.
    pub fn push(&self, registry: &str, repo: &str, tag: &str) -> anyhow::Result<()> {
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--insecure-policy"])
            .arg(format!("oci:{}:{}", self.dir.display(), self.tag))
            .arg(format!("docker://{registry}/{repo}:{tag}"))
            .output()
            .context("running skopeo")?;
        anyhow::ensure!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

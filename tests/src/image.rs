//! An OCI image built by hand — gzip'd tar layers, a config, a manifest, `index.json`
//! and `oci-layout`, every blob named by its sha256 — and pushed to a registry with
//! `skopeo copy` (plain HTTP, or TLS with a client certificate).
//!
//! [`OciImage::build`] makes a tiny one-layer image; [`OciImage::build_layers`] any
//! number of layers, e.g. a big layer of [`random_bytes`] (incompressible, so every
//! byte of it crosses the network) and a small one.
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
    /// `sha256:…` of the (compressed) layer; the first layer of a multi-layer image.
    pub layer_digest: String,
    /// Every blob a pull fetches by digest through `/blobs/`: the config, then the layers.
    pub blobs: Vec<Blob>,
    /// Size of the manifest in bytes.
    pub manifest_size: u64,
}

/// A blob of an image: what `/v2/<name>/blobs/<digest>` serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:…`.
    pub digest: String,
    /// Size in bytes (compressed, as stored and served).
    pub size: u64,
}

/// `len` pseudo-random bytes from `seed` (xorshift64*): reproducible and incompressible,
/// so a layer made of them is as big on the wire as on disk, and two seeds never share
/// a blob.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
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
        Self::build_layers(dir, tag, &[files])
    }

    /// Writes an image with one layer per entry of `layers` (each the files it holds,
    /// bottom layer first) to the layout `dir`, tagged `tag`.
    ///
    /// Layers of more than 1 MiB are gzip'd at level 0 (stored blocks, still valid
    /// gzip): test data is random, deflate would only burn CPU without shrinking it.
    pub fn build_layers(
        dir: &Path,
        tag: &str,
        layers: &[&[(&str, &[u8])]],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!layers.is_empty(), "an image needs at least one layer");
        let blob_dir = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blob_dir)?;
        let put = |bytes: &[u8]| -> anyhow::Result<String> {
            let digest = sha256(bytes);
            std::fs::write(blob_dir.join(&digest["sha256:".len()..]), bytes)?;
            Ok(digest)
        };
        let mut diff_ids = Vec::new();
        let mut layer_blobs = Vec::new();
        for files in layers {
            let layer_tar = tar(files);
            let level = if layer_tar.len() > 1 << 20 {
                Compression::none()
            } else {
                Compression::default()
            };
            let mut gz = GzEncoder::new(Vec::new(), level);
            gz.write_all(&layer_tar)?;
            let layer = gz.finish()?;
            diff_ids.push(sha256(&layer_tar));
            layer_blobs.push(Blob {
                digest: put(&layer)?,
                size: layer.len() as u64,
            });
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
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
            "layers": layer_blobs.iter().map(|l| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
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
        let mut blobs = vec![Blob {
            digest: config_digest.clone(),
            size: config.len() as u64,
        }];
        blobs.extend(layer_blobs.iter().cloned());
        Ok(OciImage {
            dir: dir.to_path_buf(),
            tag: tag.to_string(),
            manifest_digest,
            config_digest,
            layer_digest: layer_blobs[0].digest.clone(),
            blobs,
            manifest_size: manifest.len() as u64,
        })
    }

    /// Bytes a client downloads to pull the image: the manifest and every blob.
    pub fn size(&self) -> u64 {
        self.manifest_size + self.blobs.iter().map(|b| b.size).sum::<u64>()
    }

    /// Pushes the image to `registry` (plain HTTP) as `repo:tag` with skopeo.
    pub fn push(&self, registry: &str, repo: &str, tag: &str) -> anyhow::Result<()> {
        self.push_with(registry, repo, tag, None)
    }

    /// Pushes the image to `registry` as `repo:tag` with skopeo; with `cert_dir`, over
    /// TLS, verified with the `*.crt` CAs in it and presenting its `client.cert` /
    /// `client.key` (skopeo's `--dest-cert-dir`; [`crate::tls::TestPki`] writes such a
    /// directory), else over plain HTTP.
    pub fn push_with(
        &self,
        registry: &str,
        repo: &str,
        tag: &str,
        cert_dir: Option<&Path>,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--insecure-policy"]);
        match cert_dir {
            Some(dir) => {
                cmd.arg("--dest-cert-dir").arg(dir);
            }
            None => {
                cmd.arg("--dest-tls-verify=false");
            }
        }
        let out = cmd
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

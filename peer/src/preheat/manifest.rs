//! Manifests and indexes as a preheat job reads them: pure parsing (bytes in,
//! the blobs or the platform manifests out) and platform matching.
//!
//! Understood: OCI image manifests and indexes, Docker schema 2 manifests and
//! manifest lists. Not: Docker schema 1 (refused), artifacts' subjects and
//! referrers (ignored).

use serde::Deserialize;
use shoal_proto::Digest;

/// Largest manifest or index accepted (bytes).
pub const MAX_MANIFEST: usize = 4 << 20;

/// Media types asked for, in the `Accept` header.
pub const ACCEPT: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// One blob to fetch: its digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes, as the manifest says.
    pub size: u64,
}

/// What a manifest document is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An index: one manifest per platform.
    Index(Vec<(Digest, Option<Platform>)>),
    /// An image manifest: its config, then its layers.
    Image(Vec<BlobRef>),
}

/// `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub arch: String,
    /// `v8`, when given.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?.to_owned();
        let arch = parts.next().filter(|p| !p.is_empty())?.to_owned();
        let variant = parts.next().map(str::to_owned);
        if parts.next().is_some() || variant.as_deref() == Some("") {
            return None;
        }
        Some(Platform { os, arch, variant })
    }

    /// The platform this binary runs on, in OCI's words (`linux/amd64`).
    pub fn of_node() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            arch: arch.to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry of `self` serves `wanted` (a wanted platform
    /// without a variant takes any variant).
    pub fn serves(&self, wanted: &Platform) -> bool {
        self.os == wanted.os
            && self.arch == wanted.arch
            && (wanted.variant.is_none() || self.variant == wanted.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    platform: Option<DescPlatform>,
}

#[derive(Deserialize)]
struct DescPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// Parses a manifest or index (`content_type`: upstream's `Content-Type`,
/// used when the document names no media type).
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, String> {
    if body.len() > MAX_MANIFEST {
        return Err(format!("manifest larger than {MAX_MANIFEST} bytes"));
    }
    let doc: Document =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not JSON: {e}"))?;
    if doc.schema_version != Some(2) {
        return Err(format!(
            "manifest schemaVersion {:?} is not supported (only 2)",
            doc.schema_version
        ));
    }
    let media_type = doc
        .media_type
        .as_deref()
        .or(content_type)
        .unwrap_or_default();
    let digest = |d: &str| {
        d.parse::<Digest>()
            .map_err(|e| format!("manifest names a bad digest: {e}"))
    };
    if let Some(list) = doc.manifests {
        if media_type.contains("manifest.v1") || media_type.contains("manifest.v2+") {
            return Err("an image manifest with a manifests list".into());
        }
        return list
            .into_iter()
            .map(|m| {
                let platform = m.platform.map(|p| Platform {
                    os: p.os,
                    arch: p.architecture,
                    variant: p.variant.filter(|v| !v.is_empty()),
                });
                Ok((digest(&m.digest)?, platform))
            })
            .collect::<Result<_, String>>()
            .map(Parsed::Index);
    }
    let config = doc
        .config
        .ok_or("manifest has neither manifests (an index) nor a config (an image)")?;
    let mut blobs = vec![BlobRef {
        digest: digest(&config.digest)?,
        size: config.size,
    }];
    for l in doc.layers.unwrap_or_default() {
        let b = BlobRef {
            digest: digest(&l.digest)?,
            size: l.size,
        };
        if !blobs.iter().any(|x| x.digest == b.digest) {
            blobs.push(b);
        }
    }
    Ok(Parsed::Image(blobs))
}

/// The manifests of an index to fetch: one per wanted platform (each must be
/// there), deduplicated.
pub fn choose(
    entries: &[(Digest, Option<Platform>)],
    wanted: &[Platform],
) -> Result<Vec<Digest>, String> {
    let mut out = Vec::new();
    for w in wanted {
        let Some((d, _)) = entries
            .iter()
            .find(|(_, p)| p.as_ref().is_some_and(|p| p.serves(w)))
        else {
            let have: Vec<String> = entries
                .iter()
                .filter_map(|(_, p)| p.as_ref().map(Platform::to_string))
                .collect();
            return Err(format!(
                "the index has no manifest for {w} (it has: {})",
                if have.is_empty() {
                    "none with a platform".to_owned()
                } else {
                    have.join(", ")
                }
            ));
        };
        if !out.contains(d) {
            out.push(*d);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn parses_an_image_manifest_config_first_layers_deduplicated() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": d(1), "size": 10},
            "layers": [{"digest": d(2), "size": 20}, {"digest": d(3), "size": 30}, {"digest": d(2), "size": 20}],
        });
        let Parsed::Image(blobs) = parse(None, body.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        let got: Vec<(String, u64)> = blobs
            .iter()
            .map(|b| (b.digest.to_string(), b.size))
            .collect();
        assert_eq!(got, [(d(1), 10), (d(2), 20), (d(3), 30)]);
    }

    #[test]
    fn picks_the_platforms_of_an_index() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [
                {"digest": d(1), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
                {"digest": d(2), "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": d(3), "size": 1, "platform": {"os": "unknown", "architecture": "unknown"}},
            ],
        });
        let Parsed::Index(entries) = parse(None, body.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        let p = |s| Platform::parse(s).unwrap();
        let pick = |w: &[Platform]| {
            choose(&entries, w).map(|v| v.iter().map(|d| d.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(pick(&[p("linux/amd64")]).unwrap(), [d(1)]);
        assert_eq!(pick(&[p("linux/arm64")]).unwrap(), [d(2)], "any variant");
        assert_eq!(
            pick(&[p("linux/arm64/v8"), p("linux/amd64"), p("linux/amd64")]).unwrap(),
            [d(2), d(1)]
        );
        let e = pick(&[p("linux/s390x")]).unwrap_err();
        assert!(e.contains("linux/amd64, linux/arm64/v8"), "{e}");
        assert!(pick(&[p("linux/arm64/v7")]).is_err());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for (body, says) in [
            (r#"{"schemaVersion": 1, "fsLayers": []}"#.to_owned(), "schemaVersion"),
            ("not json".to_owned(), "JSON"),
            (r#"{"schemaVersion": 2}"#.to_owned(), "neither"),
            (
                serde_json::json!({"schemaVersion": 2, "config": {"digest": "sha256:x", "size": 1}})
                    .to_string(),
                "digest",
            ),
        ] {
            let e = parse(None, body.as_bytes()).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
        let big = vec![b' '; MAX_MANIFEST + 1];
        assert!(parse(None, &big).is_err());
    }

    #[test]
    fn platforms_parse_and_print() {
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap().to_string(),
            "linux/arm/v7"
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/arm/"] {
            assert_eq!(Platform::parse(bad), None, "{bad}");
        }
        assert_eq!(Platform::of_node().os, std::env::consts::OS);
    }
}
